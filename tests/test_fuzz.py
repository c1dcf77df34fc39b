"""Fuzzing: whatever a client sends or an upstream streams, the answer is JSON and never a 500.

Hypothesis drives a real proxy over loopback. It runs in a worker thread (the
test body itself runs on the reactor's greenlet, which must not block); each
example is one real HTTP exchange made on the reactor with
``blockingCallFromThread``. Example counts stay modest and the runs are
derandomized, so the suite stays fast and a failure reproduces (and shrinks).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import blockingCallFromThread

from ollama_proxy.sse import SSEParser, SSEProtocolError

from .conftest import http
from .daemonproc import within

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
models = st.sampled_from(
    [
        "google/gemini-pro",
        "openai/gpt-4o-mini:latest",
        "openai/text-embedding-3-small",
        "deepseek/deepseek-r1",
        "sim/midstream-error",
        "sim/error-first",
        "sim/crlf-split",
        "sim/fail-429",
        "sim/fail-500",
        "nobody/nothing",
        "",
    ]
)
roles = st.sampled_from(["user", "assistant", "system", "tool", ""]) | json_values
messages = st.lists(st.fixed_dictionaries({}, optional={"role": roles, "content": st.text(max_size=30) | json_values, "images": json_values, "tool_calls": json_values}) | json_values, max_size=3)
options = st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "seed", "num_predict", "stop", "num_ctx", "repeat_penalty", "min_p"]), json_values, max_size=4)
FIELDS: dict[str, Any] = {
    "model": models | json_values,
    "name": models | json_values,
    "messages": messages | json_values,
    "prompt": st.text(max_size=30) | json_values,
    "system": st.text(max_size=10) | json_values,
    "stream": st.booleans() | json_values,
    "options": options | json_values,
    "format": st.sampled_from(["json", ""]) | json_values,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3) | json_values,
    "think": st.booleans() | st.sampled_from(["low", "high"]) | json_values,
    "tools": json_values,
    "keep_alive": json_values,
    "dimensions": json_values,
    "images": json_values,
    "raw": json_values,
    "suffix": json_values,
}
bodies = st.fixed_dictionaries({}, optional=FIELDS)
raw_bodies = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()) | bodies.map(lambda b: json.dumps(b).encode())

ENDPOINTS = [
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/create"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
]


def exchange(method: str, url: str, raw: bytes, headers: dict[str, str] | None = None) -> Any:
    """One real HTTP exchange made on the reactor, from hypothesis's thread; a hang fails it."""
    return blockingCallFromThread(reactor, lambda: within(ensureDeferred(http(method, url, raw=raw, headers=headers)), f"{method} {url}", 30))


def assert_well_formed(response: Any) -> None:
    assert response.code < 500 or response.code in (501, 502, 503, 504), response.body[:300]
    if response.code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        assert response.header("content-type") == "application/json; charset=utf-8"
        return
    content_type = response.header("content-type") or ""
    if content_type.startswith("application/x-ndjson"):
        lines = response.lines()
        assert lines and all(isinstance(line, dict) for line in lines)
        assert lines[-1].get("done") is True or isinstance(lines[-1].get("error"), str), lines[-1]
    else:
        assert isinstance(response.json(), dict)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest_twisted.ensureDeferred
async def test_request_bodies_never_cause_a_500(proxy, method, path):
    @FUZZ
    @given(raw=raw_bodies)
    def fuzz(raw: bytes) -> None:
        assert_well_formed(exchange(method, proxy.url + path, raw, {"Content-Type": "application/json"}))

    await threads.deferToThread(fuzz)


# -- the SSE parser ---------------------------------------------------------------------------
sse_lines = st.lists(
    st.sampled_from([b"data: {}", b"data: [DONE]", b": OPENROUTER PROCESSING", b"event: x", b"id: 1", b"retry: 5", b"", b"data:", b"data:x", b"\xff\xfe"])
    | st.binary(max_size=20),
    max_size=12,
)
endings = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lines=sse_lines, ending=endings, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_the_sse_parser_gives_the_same_events_however_the_bytes_are_split(lines, ending, cuts):
    stream = ending.join(lines) + ending

    def parse(pieces: list[bytes]) -> list[Any]:
        parser = SSEParser(max_line_bytes=1024)
        events: list[Any] = []
        for piece in pieces:
            events.extend(parser.feed(piece))
        return events + parser.close()

    positions = sorted({c for c in cuts if c <= len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)])]
    try:
        whole = parse([stream])
    except SSEProtocolError:
        return
    assert parse(pieces) == whole
    for event in whole:
        assert isinstance(event.data, str) and isinstance(event.event, str)


chunk_objects = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries({}, optional={"delta": st.fixed_dictionaries({}, optional={"content": st.text(max_size=8) | json_values}) | json_values, "finish_reason": st.sampled_from(["stop", "length", None, "error"]) | json_values})
            | json_values,
            max_size=2,
        )
        | json_values,
        "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": json_values, "completion_tokens": json_values}) | json_values,
        "error": json_values,
    },
)
sse_events = st.lists(
    chunk_objects.map(lambda o: b"data: " + json.dumps(o).encode() + b"\n\n")
    | json_values.map(lambda o: b"data: " + json.dumps(o).encode() + b"\n\n")
    | st.sampled_from([b"data: [DONE]\n\n", b": keep-alive\n\n", b"data: {not json\n\n", b"event: ping\n\n"])
    | st.binary(max_size=16),
    max_size=6,
)


@pytest.mark.parametrize("stream", [True, False])
@pytest_twisted.ensureDeferred
async def test_whatever_the_upstream_streams_the_client_gets_json(proxy, simulator, stream):
    body = json.dumps({"model": "sim/raw", "messages": [{"role": "user", "content": "x"}], "stream": stream}).encode()

    @FUZZ
    @given(events=sse_events)
    def fuzz(events: list[bytes]) -> None:
        simulator.raw_stream = b"".join(events)
        assert_well_formed(exchange("POST", proxy.url + "/api/chat", body, {"Content-Type": "application/json"}))

    await threads.deferToThread(fuzz)
