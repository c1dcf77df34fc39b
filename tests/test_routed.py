"""RoutedProvider: every provider behind one IProvider, for code that wants "the provider"."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from ollama_proxy.config.providers import RoutingConfig

from .conftest import http
from .multi import provider
from .simulator import API_KEY, UpstreamSimulator


@pytest.fixture
def primary_sim() -> Any:
    sim = UpstreamSimulator(global_reactor)
    sim.base_url = sim.start("/v1")
    yield sim
    sim.close_connections()
    pytest_twisted.blockon(sim.stop())


def pair(primary_sim, openai_sim) -> list[Any]:
    return [
        provider("primary", "openai", primary_sim.base_url, API_KEY, priority=1),
        provider("backup", "openai", openai_sim.base_url, "sk-openai-simulator-key", priority=2),
    ]


def body(model: str = "google/gemini-pro", text: str = "hi there") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": True}


async def read(stream) -> str:
    chunks: list[dict[str, Any]] = []
    await stream.deliver(chunks.append)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest_twisted.ensureDeferred
async def test_open_chat_fails_over_and_holds_the_slot_until_the_stream_ends(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    service = proxy.service
    routed = service.provider
    assert routed.configured and [m.provider for m in await routed.list_models()][:1] == ["primary"]
    primary_sim.fail_next(500, count=10)
    stream = await routed.open_chat(body())
    backup = service.router.slot("backup")
    assert backup.limiter.in_flight == 1 and backup.stats.request_count == 0  # still streaming
    assert await read(stream) == "Echo: hi there"
    assert backup.limiter.in_flight == 0 and backup.stats.successful_requests == 1
    assert service.router.slot("primary").stats.failed_requests == 2
    assert openai_sim.chat_requests()[-1].body["model"] == "google/gemini-pro"


@pytest_twisted.ensureDeferred
async def test_aliases_and_explicit_names_work_through_it(make_multi, primary_sim, openai_sim):
    routing = RoutingConfig(aliases=(("gem", "backup/google/gemini-pro"),))
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False, routing=routing)
    routed = proxy.service.provider
    await routed.list_models()
    assert await read(await routed.open_chat(body("gem"))) == "Echo: hi there"
    assert len(openai_sim.chat_requests()) == 1 and not primary_sim.chat_requests()


@pytest_twisted.ensureDeferred
async def test_a_stream_broken_mid_way_counts_against_its_provider(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    routed = proxy.service.provider
    await routed.list_models()
    primary_sim.behaviour = "midstream-error"
    stream = await routed.open_chat(body(text="a b c"))
    assert await read(stream) == "Echo: a"  # the reader sees the error chunk itself
    primary = proxy.service.router.slot("primary")
    assert primary.stats.failed_requests == 1 and primary.limiter.in_flight == 0
    assert primary.breaker.window_counts() == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_stream_dropped_unread_frees_its_slot(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    routed = proxy.service.provider
    await routed.list_models()
    stream = await routed.open_chat(body())
    stream.stopProducing()
    primary = proxy.service.router.slot("primary")
    assert primary.limiter.in_flight == 0 and primary.stats.cancelled_requests == 1


@pytest_twisted.ensureDeferred
async def test_embeddings_fail_over_through_it(make_multi, primary_sim, openai_sim):
    from .simulator import EMBEDDING_MODELS

    for sim in (primary_sim, openai_sim):
        sim.chat_models = sim.chat_models + EMBEDDING_MODELS
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    routed = proxy.service.provider
    await routed.list_models()
    primary_sim.fail_next(502, count=10)
    vectors, tokens = await routed.embed("openai/text-embedding-3-small", ["one two"])
    assert len(vectors) == 1 and tokens == 2 and proxy.service.router.slot("backup").stats.successful_requests == 1


def test_openai_dialect_drops_openrouter_fields():
    from ollama_proxy.providers.openai_compat import openai_dialect

    body = {
        "model": "o3",
        "messages": [],
        "top_k": 40,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "temperature": 0.2,
        "reasoning": {"effort": "low"},
        "max_tokens": 50,
    }
    assert openai_dialect(body) == {
        "model": "o3",
        "messages": [],
        "temperature": 0.2,
        "reasoning_effort": "low",
        "max_completion_tokens": 50,
    }


@pytest_twisted.ensureDeferred
async def test_the_openai_provider_is_sent_openai_fields_only(make_multi, openai_sim):
    proxy = make_multi([provider("openai", "openai", openai_sim.base_url, "sk-openai-simulator-key")], openrouter=False)
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": "google/gemini-pro",
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
            "options": {"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.2, "temperature": 0.3},
        },
    )
    assert r.code == 200
    sent = openai_sim.chat_requests()[-1].body
    assert sent["temperature"] == 0.3
    assert not {"top_k", "min_p", "repetition_penalty"} & set(sent)
