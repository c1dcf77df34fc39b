"""What an independent re-run of the attack (issue #10) still found open.

Each test here failed before its fix: unbounded embedding ``dimensions``, ...
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from ollama_proxy.api.relay import MAX_TOOL_CALLS
from ollama_proxy.config.credentials import ClientToken
from ollama_proxy.config.ops import AuthConfig, LimitsConfig, OpsConfig
from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.errors import BadRequest
from ollama_proxy.ops.later import flush
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
        # Paced: the first word is relayed (output began) before the bad number arrives.
        "model": "sim/slow",
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


@pytest.fixture
def guarded_site(simulator: Any, clock: Clock) -> Any:
    """The same with client tokens required."""
    auth = AuthConfig(enabled=True, tokens=(ClientToken(hashlib.sha256(b"s3cret").hexdigest(), "dev"),))
    ops = OpsConfig(limits=LimitsConfig(header_timeout=5, max_connections=50), auth=auth)
    return makeService(replace(base_config(simulator), ops=ops), reactor, clock=clock).site


SLOW_UPLOAD = b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"


def test_a_body_trickled_a_byte_every_two_seconds_is_cut_at_the_request_deadline(site, clock, access_events):
    channel, transport = connect(site)
    channel.dataReceived(SLOW_UPLOAD + b"\r\n")
    for _ in range(29):
        clock.advance(2)
        channel.dataReceived(b" ")  # each byte within the idle timeout; the deadline holds
    assert not transport.disconnecting
    clock.advance(2)  # 60 s after the connection opened
    assert transport.disconnecting
    status, headers, body = answer(transport)
    assert status == b"HTTP/1.1 408 Request Timeout" and headers["connection"] == "close"
    assert body == {"error": "the request did not arrive within 60 seconds", "type": "request_timeout"}
    assert [(e["status"], e["method"], e["path"]) for e in access_events] == [(408, "POST", "/api/show")]


def test_headers_then_nothing_get_a_408_and_an_access_line(site, clock, access_events):
    channel, transport = connect(site)
    channel.dataReceived(SLOW_UPLOAD + b"\r\n{")
    clock.advance(59.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert answer(transport)[0] == b"HTTP/1.1 408 Request Timeout"
    assert [e["status"] for e in access_events] == [408]


def test_a_whole_request_in_time_is_served_and_the_next_one_has_its_own_deadline(site, clock):
    channel, transport = connect(site)
    channel.dataReceived(b"POST /api/version HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{")
    clock.advance(59)
    channel.dataReceived(b"}")
    assert transport.value().startswith(b"HTTP/1.1 405 ")  # read whole and answered, not cut
    clock.advance(2)
    assert not transport.disconnecting  # the next request's headers are due 5 s after the answer
    clock.advance(3)
    assert transport.disconnecting and transport.value().count(b"HTTP/1.1 ") == 1


def test_an_unauthenticated_upload_is_refused_at_its_headers(guarded_site, clock, access_events):
    for token in (b"", b"Authorization: Bearer wrong\r\n"):
        channel, transport = connect(guarded_site)
        channel.dataReceived(SLOW_UPLOAD + token + b"Expect: 100-continue\r\n\r\n")
        status, headers, body = answer(transport)  # at once: no byte of the body was sent
        assert status == b"HTTP/1.1 401 Unauthorized", transport.value()[:200]
        assert b"100 Continue" not in transport.value()
        assert headers["connection"] == "close" and body["type"] == "unauthorized"
    flush(reactor)  # the access lines are written once the answers are sent (a reactor turn on)
    assert [(e["status"], e["path"]) for e in access_events] == [(401, "/api/show"), (401, "/api/show")]
    # With its token, the same upload is read and served.
    channel, transport = connect(guarded_site)
    upload = SLOW_UPLOAD.replace(b"100000", b"2").replace(b"/api/show", b"/api/version")
    channel.dataReceived(upload + b"Authorization: Bearer s3cret\r\n\r\n{}")
    assert transport.value().startswith(b"HTTP/1.1 405 ")  # past the token check, read and routed


def test_a_client_that_hangs_up_in_the_middle_of_its_body_gets_an_access_line(site, access_events):
    channel, transport = connect(site)
    channel.dataReceived(SLOW_UPLOAD + b'\r\n{"mo')
    channel.connectionLost(None)
    flush(reactor)
    assert [(e["status"], e["method"], e["path"]) for e in access_events] == [(499, "POST", "/api/show")]
    idle, _ = connect(site)
    idle.connectionLost(None)  # a connection that sent nothing is no request
    assert len(access_events) == 1


def test_an_http_1_1_request_without_host_is_a_400(site, access_events):
    channel, transport = connect(site)
    channel.dataReceived(b"GET /api/version HTTP/1.1\r\n\r\n")
    status, _, body = answer(transport)
    flush(reactor)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body == {"error": "missing required Host header", "type": "invalid_request"}
    assert [(e["status"], e["path"]) for e in access_events] == [(400, "/api/version")]
    old, transport = connect(site)
    old.dataReceived(b"GET /api/version HTTP/1.0\r\n\r\n")  # HTTP/1.0 has no Host to require
    assert answer(transport)[0] == b"HTTP/1.0 200 OK"


# -- the number of tool calls in a gathered answer ------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_gathered_answer_holds_at_most_1024_tool_calls(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], openrouter=False)
    tools = [{"name": "look", "description": "d", "input_schema": {"type": "object"}}]
    ask = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    native_tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    anthropic_sim.tool_uses = MAX_TOOL_CALLS
    r = await http("POST", proxy.url + "/api/chat", {**ask, "tools": native_tools, "stream": False})
    assert r.code == 200 and len(r.json()["message"]["tool_calls"]) == MAX_TOOL_CALLS
    anthropic_sim.tool_uses = MAX_TOOL_CALLS + 1
    limit = f"the answer holds more than the limit of {MAX_TOOL_CALLS} tool calls"
    r = await http("POST", proxy.url + "/api/chat", {**ask, "tools": native_tools, "stream": False})
    assert r.code == 502 and limit in r.json()["error"], r.body[:300]
    r = await http("POST", proxy.url + "/v1/messages", {**ask, "tools": tools})
    assert r.code == 502 and limit in r.json()["error"]["message"], r.body[:300]


# -- what Twisted would refuse with a bare 400 -----------------------------------------------------
@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"GET /api/version HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", "malformed header line"),
        (b"GARBAGE\r\n\r\n", "malformed request line: expected 'METHOD target HTTP/1.1'"),
        (b"GET /api/version HTTP/9.9\r\n\r\n", "unsupported HTTP version: HTTP/1.0 and HTTP/1.1 are served"),
        (
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "Content-Length must be a number of bytes",
        ),
        (
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            "Content-Length must be a number of bytes",
        ),
        (
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "a request declares its length once (Content-Length or Transfer-Encoding, not both)",
        ),
        (
            b"GET /api/tags?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            "the request target must be printable ASCII (percent-encode other bytes)",
        ),
        (
            b"GET /api/version HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "obsolete line folding in the headers is not accepted",
        ),
    ],
)
def test_a_malformed_head_gets_a_json_400_and_an_access_line(site, access_events, head, message):
    channel, transport = connect(site)
    channel.dataReceived(head)
    status, headers, body = answer(transport)
    assert status == b"HTTP/1.1 400 Bad Request", transport.value()[:200]
    assert headers["content-type"] == "application/json; charset=utf-8" and transport.disconnecting
    assert body == {"error": message, "type": "invalid_request"}
    assert [e["status"] for e in access_events] == [400]


def test_a_malformed_chunk_still_gets_its_access_line(site, access_events):
    # Only Twisted's private chunked decoder sees this one: its bare 400 stays (see README).
    channel, transport = connect(site)
    channel.dataReceived(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request") and transport.disconnecting
    assert [(e["status"], e["method"], e["path"]) for e in access_events] == [(400, "POST", "/api/chat")]
    channel.connectionLost(None)
    assert len(access_events) == 1
