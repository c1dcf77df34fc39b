"""What an independent re-run of the attack (issue #10) still found open.

Each test here failed before its fix: unbounded embedding ``dimensions``, ...
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from ollama_proxy.config.ops import LimitsConfig, OpsConfig
from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.errors import BadRequest
from ollama_proxy.providers.echo import embed_text
from ollama_proxy.service import makeService
from ollama_proxy.wire.request_body import MAX_EMBEDDING_DIMENSIONS

from .conftest import base_config, http
from .multi import ANTHROPIC_KEY, provider
from .test_hardening_connections import answer, connect


# -- embedding dimensions ----------------------------------------------------------------------
def test_the_demo_never_allocates_from_an_unchecked_dimension():
    for size in (0, -1, MAX_EMBEDDING_DIMENSIONS + 1, 2**70):
        with pytest.raises(BadRequest):
            embed_text("a b", size)
    assert len(embed_text("a b", MAX_EMBEDDING_DIMENSIONS)) == MAX_EMBEDDING_DIMENSIONS


@pytest_twisted.ensureDeferred
async def test_embedding_dimensions_are_bounded_on_every_surface(make_multi, simulator):
    proxy = make_multi([ProviderConfig(name="demo", type="echo", priority=50)])
    for size in (MAX_EMBEDDING_DIMENSIONS + 1, 2**70):
        for model in ("demo/echo-embed", "openai/text-embedding-3-small"):
            native = await http("POST", proxy.url + "/api/embed", {"model": model, "input": "hi", "dimensions": size})
            assert native.code == 400, native.body
            assert native.json()["error"] == f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}"
            v1 = await http("POST", proxy.url + "/v1/embeddings", {"model": model, "input": "hi", "dimensions": size})
            assert v1.code == 400, v1.body
            assert v1.json()["error"]["message"] == f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}"
    # Refused before anything went upstream.
    assert [r.path for r in simulator.requests if r.method == "POST"] == []
    fine = await http("POST", proxy.url + "/api/embed", {"model": "demo/echo-embed", "input": "hi", "dimensions": 32})
    assert fine.code == 200 and len(fine.json()["embeddings"][0]) == 32


# -- Anthropic's 529 -----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_overloaded_anthropic_is_503_overloaded_error_as_the_readme_says(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], openrouter=False)
    anthropic_sim.behaviour = "overloaded"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    messages = await http("POST", proxy.url + "/v1/messages", body)
    assert messages.code == 503, messages.body
    assert messages.json()["error"]["type"] == "overloaded_error"
    native = await http("POST", proxy.url + "/api/chat", {**body, "stream": False})
    assert native.code == 503 and "529" in native.json()["error"]
    assert len(anthropic_sim.posts("/v1/messages")) >= 2  # still retried as an overload


# -- non-finite numbers from an upstream ---------------------------------------------------------
def strict_json(text: str | bytes):
    """JSON as a strict client reads it: ``NaN`` and ``Infinity`` are not JSON."""

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest_twisted.ensureDeferred
async def test_an_upstreams_non_finite_numbers_become_a_502_not_invalid_json(proxy):
    model = "openai/text-embedding-3-small"
    for path, body in [
        ("/api/embed", {"model": model, "input": "non-finite"}),
        ("/api/embeddings", {"model": model, "prompt": "non-finite"}),
        ("/v1/embeddings", {"model": model, "input": "non-finite"}),
        (
            "/api/chat",
            {
                "model": "google/gemini-pro",
                "messages": [{"role": "user", "content": "impossible"}],
                "stream": False,
                "logprobs": True,
            },
        ),
    ]:
        r = await http("POST", proxy.url + path, body)
        assert r.code == 502, (path, r.body)
        answer = strict_json(r.body)
        message = answer["error"]["message"] if path.startswith("/v1/") else answer["error"]
        assert message == "the upstream sent a number JSON cannot carry (NaN or Infinity)"
    fine = await http("POST", proxy.url + "/api/embed", {"model": model, "input": "finite"})
    assert fine.code == 200 and len(strict_json(fine.body)["embeddings"][0]) == 8


@pytest_twisted.ensureDeferred
async def test_a_stream_that_meets_a_non_finite_number_ends_with_an_error_line(proxy):
    body = {
        "model": "google/gemini-pro",
        "messages": [{"role": "user", "content": "quite impossible"}],
        "logprobs": True,
    }
    native = await http("POST", proxy.url + "/api/chat", {**body, "stream": True})
    lines = [strict_json(line) for line in native.body.splitlines()]
    assert lines[-1] == {"error": "the upstream sent a number JSON cannot carry (NaN or Infinity)"}
    v1 = await http("POST", proxy.url + "/v1/chat/completions", {**body, "stream": True})
    events = [strict_json(line[6:]) for line in v1.body.splitlines() if line.startswith(b"data: {")]
    assert events[-1]["error"]["message"] == "the upstream sent a number JSON cannot carry (NaN or Infinity)"


# -- the front of the channel --------------------------------------------------------------------
@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def site(simulator: Any, clock: Clock) -> Any:
    """The Site of a proxy on a Clock, not started: its channels are driven by hand."""
    limits = LimitsConfig(header_timeout=5, max_connections=50)
    return makeService(replace(base_config(simulator), ops=OpsConfig(limits=limits)), reactor, clock=clock).site


def test_an_http_1_1_request_without_host_is_a_400(site, access_events):
    channel, transport = connect(site)
    channel.dataReceived(b"GET /api/version HTTP/1.1\r\n\r\n")
    status, _, body = answer(transport)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body == {"error": "missing required Host header", "type": "invalid_request"}
    assert [(e["status"], e["path"]) for e in access_events] == [(400, "/api/version")]
    old, transport = connect(site)
    old.dataReceived(b"GET /api/version HTTP/1.0\r\n\r\n")  # HTTP/1.0 has no Host to require
    assert answer(transport)[0] == b"HTTP/1.0 200 OK"
