"""Model naming, the filter, and the cached catalogue on a fake clock."""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from ollama_proxy.config.settings import Config
from ollama_proxy.errors import ModelForbidden, ModelNotFound
from ollama_proxy.providers.echo import EchoProvider
from ollama_proxy.routing.catalogue import ModelCatalogue
from ollama_proxy.routing.modelfilter import ModelFilter
from ollama_proxy.routing.router import Router
from ollama_proxy.wire.models import (
    UpstreamModel,
    candidate_ids,
    family_of,
    from_openrouter,
    ollama_name,
    parameter_size_of,
    show_response,
    tag_entry,
)


def test_names():
    assert ollama_name("google/gemini-pro") == "google/gemini-pro:latest"
    assert ollama_name("meta-llama/x:free") == "meta-llama/x:free"
    assert candidate_ids("a/b:latest") == ["a/b:latest", "a/b"]
    assert candidate_ids("a/b") == ["a/b"]


@pytest.mark.parametrize(
    "model_id, family, size",
    [
        ("google/gemini-pro", "gemini", ""),
        ("openai/gpt-4o", "gpt", ""),
        ("meta-llama/llama-3.1-8b-instruct", "llama", "8B"),
        ("mistralai/mixtral-8x7b", "mixtral", ""),
        ("qwen/qwen-2.5-72b-instruct:free", "qwen", "72B"),
    ],
)
def test_family_and_size(model_id, family, size):
    assert family_of(model_id) == family
    assert parameter_size_of(model_id) == size


def test_tag_entry_has_what_clients_need():
    model = from_openrouter(
        {"id": "google/gemini-pro", "created": 1_700_000_000, "context_length": 32768}, "openrouter"
    )
    entry = tag_entry(model)
    assert entry["name"] == entry["model"] == "google/gemini-pro:latest"
    assert entry["modified_at"] == "2023-11-14T22:13:20.000000Z"
    assert len(entry["digest"]) == 64 and int(entry["digest"], 16) >= 0
    assert entry["digest"] == tag_entry(model)["digest"]  # stable
    assert entry["details"]["family"] == "gemini" and entry["details"]["families"] == ["gemini"]
    assert isinstance(entry["size"], int)


def test_show_capabilities_and_context():
    model = from_openrouter(
        {
            "id": "openai/gpt-4o",
            "context_length": 128000,
            "architecture": {"input_modalities": ["text", "image"]},
            "supported_parameters": ["tools", "reasoning"],
        },
        "openrouter",
    )
    shown = show_response(model)
    assert shown["capabilities"] == ["completion", "tools", "vision", "thinking"]
    assert shown["model_info"]["general.architecture"] == "gpt"
    assert shown["model_info"]["gpt.context_length"] == 128000
    embedding = UpstreamModel(id="openai/text-embedding-3-small", embedding=True)
    assert show_response(embedding)["capabilities"] == ["embedding"]


def test_filter():
    f = ModelFilter(allow=["openai/*", "google/*"], deny=["*:free", "google/gemini-pro"])
    assert f.allows("openai/gpt-4o")
    assert not f.allows("openai/gpt-4o:free")
    assert not f.allows("google/gemini-pro")
    assert not f.allows("meta/llama")
    assert ModelFilter().allows("anything")


def models(*ids):
    return [UpstreamModel(id=i) for i in ids]


def test_lookup_404_and_403():
    provider = EchoProvider(Clock(), name="p")
    provider.list_models = lambda: succeed(models("a/b", "c/d:free"))
    catalogue = Router.single(provider, Config(), Clock(), ModelFilter(deny=["*:free"]))
    catalogue.slots[0].catalogue.refresh()
    assert catalogue.lookup("a/b:latest").id == "a/b"
    assert catalogue.lookup("a/b").id == "a/b"
    with pytest.raises(ModelNotFound, match="model 'x/y' not found"):
        catalogue.lookup("x/y")
    with pytest.raises(ModelForbidden):
        catalogue.lookup("c/d:free")
    assert catalogue.model_count == 2 and catalogue.filtered_count == 1
    assert [m.id for m in catalogue.allowed_models()] == ["a/b"]


@pytest_twisted.ensureDeferred
async def test_failed_refresh_keeps_the_last_good_list():
    clock = Clock()
    answers = [succeed(models("a/b")), fail(RuntimeError("upstream down"))]
    catalogue = ModelCatalogue(lambda: answers.pop(0), clock)
    await catalogue.refresh()
    first = catalogue.last_refresh
    clock.advance(300)
    await catalogue.refresh_quietly()
    assert [m.id for m in catalogue.all_models()] == ["a/b"]
    assert catalogue.last_refresh == first
    assert catalogue.last_error == "upstream down"


def test_concurrent_refreshes_share_one_fetch():
    pending: Deferred = Deferred()
    calls = []

    def source():
        calls.append(1)
        return pending

    catalogue = ModelCatalogue(source, Clock())
    first, second = catalogue.refresh(), catalogue.refresh()
    assert len(calls) == 1
    results = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    pending.callback(models("a/b"))
    assert results == [None, None] and catalogue.loaded


def test_failed_refresh_reaches_every_waiter():
    pending: Deferred = Deferred()
    catalogue = ModelCatalogue(lambda: pending, Clock())
    failures = []
    catalogue.refresh().addErrback(failures.append)
    catalogue.refresh().addErrback(failures.append)
    pending.errback(RuntimeError("no"))
    assert len(failures) == 2 and not catalogue.loaded
