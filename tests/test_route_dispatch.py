"""The router and the dispatcher over real providers: failover, aliases, slots held while a
stream is read, freed when it breaks or its client leaves; embeddings fail over too."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from ollama_proxy.config.providers import RoutingConfig

from .conftest import LineReader, http
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


async def dispatch_chat(service: Any, name: str, text: str = "hi there", seen: list | None = None) -> str:
    """Route ``name`` and run it through the dispatcher; each attempt opens and reads a stream
    (``seen`` gets the slot's in-flight count and request count while the stream is read)."""
    route = await service.router.route(name, "chat")

    async def attempt(target: Any) -> str:
        stream = await target.provider.open_chat({**body(name, text), "model": target.model.id})
        if seen is not None:
            seen.append((target.slot.name, target.slot.limiter.in_flight, target.slot.stats.request_count))
        return await read(stream)

    return await service.dispatcher.run(route, attempt)


@pytest_twisted.ensureDeferred
async def test_dispatch_fails_over_and_holds_the_slot_until_the_stream_ends(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    service = proxy.service
    await service.router.ensure_loaded()
    assert [m.provider for m in service.router.allowed_models()][:1] == ["primary"]
    primary_sim.fail_next(500, count=10)
    seen: list = []
    assert await dispatch_chat(service, "google/gemini-pro", seen=seen) == "Echo: hi there"
    backup = service.router.slot("backup")
    assert seen == [("backup", 1, 0)]  # still streaming
    assert backup.limiter.in_flight == 0 and backup.stats.successful_requests == 1
    assert service.router.slot("primary").stats.failed_requests == 2
    assert openai_sim.chat_requests()[-1].body["model"] == "google/gemini-pro"


@pytest_twisted.ensureDeferred
async def test_aliases_and_explicit_names_work_through_it(make_multi, primary_sim, openai_sim):
    routing = RoutingConfig(aliases=(("gem", "backup/google/gemini-pro"),))
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False, routing=routing)
    await proxy.service.router.ensure_loaded()
    assert await dispatch_chat(proxy.service, "gem") == "Echo: hi there"
    assert len(openai_sim.chat_requests()) == 1 and not primary_sim.chat_requests()


@pytest_twisted.ensureDeferred
async def test_a_stream_broken_mid_way_counts_against_its_provider(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    primary_sim.behaviour = "midstream-error"
    r = await http("POST", proxy.url + "/api/chat", body(text="a b c"))
    assert "".join(line.get("message", {}).get("content", "") for line in r.lines()) == "Echo: a"
    primary = proxy.service.router.slot("primary")
    assert primary.stats.failed_requests == 1 and primary.limiter.in_flight == 0
    assert primary.breaker.window_counts() == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_stream_dropped_unread_frees_its_slot(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    aborted = primary_sim.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", body("sim/endless"))
    await reader.wait_for_lines(1)
    reader.hang_up()
    await aborted
    primary = proxy.service.router.slot("primary")
    assert primary.limiter.in_flight == 0 and primary.stats.cancelled_requests == 1


@pytest_twisted.ensureDeferred
async def test_embeddings_fail_over_through_it(make_multi, primary_sim, openai_sim):
    from .simulator import EMBEDDING_MODELS

    for sim in (primary_sim, openai_sim):
        sim.chat_models = sim.chat_models + EMBEDDING_MODELS
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    primary_sim.fail_next(502, count=10)
    r = await http("POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": ["one two"]})
    vectors, tokens = r.json()["embeddings"], r.json()["prompt_eval_count"]
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
