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
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import blockingCallFromThread

from ollama_proxy.providers.sse import SSEParser, SSEProtocolError

from .conftest import http
from .daemon import within

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
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
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": roles,
            "content": st.text(max_size=30) | json_values,
            "images": json_values,
            "tool_calls": json_values,
        },
    )
    | json_values,
    max_size=3,
)
options = st.dictionaries(
    st.sampled_from(
        ["temperature", "top_p", "top_k", "seed", "num_predict", "stop", "num_ctx", "repeat_penalty", "min_p"]
    ),
    json_values,
    max_size=4,
)
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
# What Go's decoder refuses or repairs and Python's takes: non-finite and huge numbers,
# nesting past any sane depth, and lone UTF-16 surrogates (json.dumps escapes them).
with_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters()
hostile_tokens = (
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 400])
    | st.integers(100, 3000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(100, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth)
    | st.text(with_surrogates, min_size=1, max_size=6).map(lambda t: json.dumps(t).encode())
)
hostile_bodies = st.builds(
    lambda field, token, model: (
        b'{"model": ' + json.dumps(model).encode() + b', "messages": [{"role": "user", "content": "x"}],'
        b' "prompt": "x", "input": "x", ' + json.dumps(field).encode() + b": " + token + b"}"
    ),
    st.sampled_from(["model", "options", "temperature", "keep_alive", "messages", "seed", "max_tokens", "format"]),
    hostile_tokens,
    st.sampled_from(["google/gemini-pro", "openai/text-embedding-3-small"]) | st.text(with_surrogates, max_size=6),
)
raw_bodies = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | bodies.map(lambda b: json.dumps(b).encode())
    | hostile_bodies
)

ENDPOINTS = [
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("DELETE", "/api/delete"),
]
# Local model management: refused with 501 whatever the body (see the blob test too).
UNSUPPORTED = {"/api/create", "/api/copy", "/api/pull", "/api/push", "/api/delete"}


def exchange(method: str, url: str, raw: bytes, headers: dict[str, str] | None = None) -> Any:
    """One real HTTP exchange made on the reactor, from hypothesis's thread; a hang fails it."""
    return blockingCallFromThread(
        reactor, lambda: within(ensureDeferred(http(method, url, raw=raw, headers=headers)), f"{method} {url}", 30)
    )


JSON = "application/json; charset=utf-8"


def assert_no_500(response: Any) -> None:
    assert response.code < 500 or response.code in (501, 502, 503, 504), response.body[:300]


def assert_native_error(response: Any) -> None:
    """Ollama's shape: ``{"error": "<message>", "type": "<kind>"}``."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert response.header("content-type") == JSON


def assert_well_formed(response: Any) -> None:
    assert_no_500(response)
    if response.code >= 400:
        assert_native_error(response)
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
        response = exchange(method, proxy.url + path, raw, {"Content-Type": "application/json"})
        assert_well_formed(response)
        if path in UNSUPPORTED:
            assert response.code == 501 and response.json()["type"] == "not_implemented", response.body[:300]

    await threads.deferToThread(fuzz)


digests = st.builds(lambda hexes: "sha256:" + hexes, st.text("0123456789abcdef", min_size=64, max_size=64))


@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_blob_uploads_are_501_whatever_the_digest_or_body(proxy, method):
    @FUZZ
    @given(digest=digests | st.text(max_size=80), raw=st.binary(max_size=64) | raw_bodies)
    @example(digest="/", raw=b"")
    @example(digest="a/b", raw=b"")
    def fuzz(digest: str, raw: bytes) -> None:
        # Every character quoted, "/" too; but the server routes the decoded path (Twisted
        # unquotes each segment, as Ollama's router does), so "%2F" still splits the digest.
        response = exchange(
            method, proxy.url + "/api/blobs/" + quote(digest, safe=""), b"" if method == "HEAD" else raw
        )
        assert_no_500(response)
        assert response.header("content-type") == JSON
        # An empty digest, or one the decoded "/" splits, leaves no single segment to match:
        # no such endpoint.
        assert response.code == (501 if digest and "/" not in digest else 404), (digest, response.code)
        if method == "HEAD":
            assert response.body == b""  # a HEAD answer has a status and headers only
        else:
            assert_native_error(response)

    await threads.deferToThread(fuzz)


# -- the OpenAI-compatible surface (/v1) --------------------------------------------------------
PNG_URI = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
content_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio"]) | json_values},
        optional={
            "text": st.text(max_size=10) | json_values,
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.sampled_from([PNG_URI, "http://127.0.0.1:9/x.png", "data:image/png;base64,!!", ""])
                    | json_values
                }
            )
            | json_values,
        },
    )
    | json_values,
    max_size=2,
)
v1_messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": roles,
            "content": st.text(max_size=30) | content_parts | json_values,
            "tool_calls": json_values,
            "tool_call_id": json_values,
            "name": json_values,
        },
    )
    | json_values,
    max_size=3,
)
# What each field should be (typed, though not always valid); V1_FIELDS adds any JSON at all.
V1_TYPED: dict[str, Any] = {
    "model": models,
    "messages": v1_messages,
    "prompt": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3),
    "suffix": st.text(max_size=10),
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "max_tokens": st.integers(-2, 40),
    "max_completion_tokens": st.integers(-2, 40),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "n": st.integers(0, 3),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5),
    "seed": st.integers(-1, 2**40),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "tools": st.lists(
        st.fixed_dictionaries(
            {
                "type": st.just("function"),
                "function": st.fixed_dictionaries({"name": st.text(max_size=8)}, optional={"parameters": json_values}),
            }
        ),
        max_size=2,
    ),
    "tool_choice": st.sampled_from(["auto", "none", "required"]),
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema"])},
        optional={
            "json_schema": st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={"schema": json_values})
        },
    ),
    "logprobs": st.booleans() | st.integers(-1, 6),
    "top_logprobs": st.integers(-1, 25),
    "reasoning_effort": st.sampled_from(["low", "medium", "high", "none", "max"]),
    "encoding_format": st.sampled_from(["float", "base64"]),
    "dimensions": st.integers(-2, 16),
    "echo": st.booleans(),
    "user": st.text(max_size=8),
}
V1_FIELDS: dict[str, Any] = {k: v | json_values for k, v in V1_TYPED.items()}


def _requests_mostly_valid(required: dict[str, Any]) -> Any:
    """Bodies that pass the first checks (a real model, a real message, typed fields), fuzzed
    in their values: with any JSON anywhere nearly every example stops at the first 400."""
    return st.fixed_dictionaries(required, optional={k: v for k, v in V1_TYPED.items() if k not in required}).map(
        lambda b: json.dumps(b).encode()
    )


V1_CHAT_MODELS = st.sampled_from(
    [
        "google/gemini-pro",
        "openai/gpt-4o-mini",
        "deepseek/deepseek-r1",
        "sim/midstream-error",
        "sim/error-first",
        "sim/crlf-split",
        "sim/fail-429",
    ]
)
HELLO_V1 = [{"role": "user", "content": "hello there"}]
good_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=30) | content_parts}
    ),
    min_size=1,
    max_size=3,
)
V1_ENDPOINTS: dict[str, Any] = {
    "/v1/chat/completions": _requests_mostly_valid(
        {"model": V1_CHAT_MODELS, "messages": good_messages, "stream": st.sampled_from([True, False])}
    ),
    "/v1/completions": _requests_mostly_valid(
        {"model": V1_CHAT_MODELS, "prompt": st.text(max_size=20), "stream": st.sampled_from([True, False])}
    ),
    "/v1/embeddings": _requests_mostly_valid(
        {"model": st.sampled_from(["openai/text-embedding-3-small", "google/gemini-pro"]), "input": V1_TYPED["input"]}
    ),
}
# Always tried (besides hypothesis's own examples): one good streamed and one good plain
# request per endpoint, so the SSE and JSON success paths are checked whatever is drawn.
V1_GOOD: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {"model": "google/gemini-pro", "messages": HELLO_V1, "stream": s, "stream_options": {"include_usage": True}}
        for s in (True, False)
    ],
    "/v1/completions": [{"model": "google/gemini-pro", "prompt": "hello there", "stream": s} for s in (True, False)],
    "/v1/embeddings": [{"model": "openai/text-embedding-3-small", "input": i} for i in ("hello", ["a", "b c"])],
}
v1_bodies = st.fixed_dictionaries({}, optional=V1_FIELDS).map(lambda b: json.dumps(b).encode())


def assert_openai_error(response: Any) -> None:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, nothing else."""
    assert response.header("content-type") == JSON, response.header("content-type")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], (str, int)), error


def sse_payloads(response: Any) -> list[Any]:
    """The data of every event of an SSE answer: JSON objects, then ``[DONE]`` unless an error
    event ended the stream early (the openai clients raise on an event carrying ``error``)."""
    parser = SSEParser(max_event_bytes=len(response.body) + 1)
    events = parser.feed(response.body) + parser.close()
    assert response.body.endswith(b"\n\n"), response.body[-80:]  # the last event is complete
    data = [event.data for event in events]
    assert data and all(event.event == "message" for event in events), response.body[:300]
    assert "[DONE]" not in data[:-1], data
    objects = [json.loads(d) for d in data if d != "[DONE]"]
    assert all(isinstance(o, dict) for o in objects), objects
    for chunk in objects[:-1]:
        assert "error" not in chunk, chunk  # an error event is the last word
    if data[-1] != "[DONE]":
        error = objects[-1].get("error")
        assert isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"], objects[-1]
    return objects


def assert_v1_well_formed(response: Any) -> str:
    """The answer is OpenAI-shaped; returns what it was: ``error``, ``sse`` or ``json``."""
    assert_no_500(response)
    content_type = response.header("content-type") or ""
    if response.code >= 400:
        assert_openai_error(response)
        return "error"
    assert response.code == 200, response.code
    if content_type.startswith("text/event-stream"):
        for chunk in sse_payloads(response):
            assert "error" in chunk or chunk.get("object") in ("chat.completion.chunk", "text_completion"), chunk
        return "sse"
    assert content_type == JSON, content_type
    body = response.json()
    assert isinstance(body, dict) and body.get("object") in ("chat.completion", "text_completion", "list", "model"), (
        body
    )
    return "json"


@pytest.mark.parametrize("path", list(V1_ENDPOINTS))
@pytest_twisted.ensureDeferred
async def test_v1_request_bodies_never_cause_a_500(proxy, path):
    seen: set[str] = set()

    @FUZZ
    # Half the examples near-valid (they reach translation and the upstream), half anything.
    @given(
        raw=st.integers(0, 3).flatmap(lambda i: V1_ENDPOINTS[path] if i < 2 else raw_bodies if i == 2 else v1_bodies)
    )
    def fuzz(raw: bytes) -> None:
        seen.add(assert_v1_well_formed(exchange("POST", proxy.url + path, raw, {"Content-Type": "application/json"})))

    for good in V1_GOOD[path]:
        fuzz = example(raw=json.dumps(good).encode())(fuzz)
    await threads.deferToThread(fuzz)
    # The good examples ran: both success paths were checked, and what was drawn reached the errors.
    assert seen >= ({"error", "json"} | ({"sse"} if path != "/v1/embeddings" else set())), seen


# Any text, line feeds included (a /v1 path with one misses the /v1 branch route, and the
# native app then answers in OpenAI's shape: see the test below); "/" too.
name_text = st.text(max_size=24)
model_names = models | name_text | st.builds(lambda a, b: f"{a}/{b}", name_text, name_text)


@pytest_twisted.ensureDeferred
async def test_v1_model_lookups_never_cause_a_500(proxy):
    seen: set[int] = set()

    @FUZZ
    @example(name="google/gemini-pro")
    @example(name="nobody/nothing")
    @given(name=model_names)
    def fuzz(name: str) -> None:
        # "/" stays (model ids have one); neither client nor server resolves "." or ".." segments.
        response = exchange("GET", proxy.url + "/v1/models/" + quote(name, safe="/:"), b"")
        assert_no_500(response)
        seen.add(response.code)
        if response.code >= 400:
            assert_openai_error(response)
        else:
            assert response.code == 200 and response.header("content-type") == JSON
            body = response.json()
            assert body["object"] == "model" and isinstance(body["id"], str) and body["id"], body

    await threads.deferToThread(fuzz)
    assert {200, 404} <= seen, seen


@pytest.mark.parametrize("path", ["/v1/models/a%0Ab", "/v1/chat/completions%0A"])
@pytest_twisted.ensureDeferred
async def test_v1_paths_with_a_line_feed_get_openai_errors(proxy, path):
    response = await http("GET", proxy.url + path)
    assert response.code == 404
    assert_openai_error(response)


# Every route's path with empty segments put in: Ollama's router has no "/api//tags".
ROUTE_PATHS = [
    "/",
    "/api/tags",
    "/api/ps",
    "/api/chat",
    "/api/version",
    "/api/providers/openrouter/stats",
    "/api/tags/openrouter",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/models/google/gemini-pro",
    "/health",
]


def _with_empty_segments(path: str, where: list[int]) -> str:
    segments = path.strip("/").split("/")
    for position in where:
        segments.insert(position % (len(segments) + 1), "")
    return "/" + "/".join(segments) + ("/" if where and where[0] % 3 == 0 else "")


@pytest_twisted.ensureDeferred
async def test_paths_with_empty_segments_never_cause_a_500(proxy):
    @FUZZ
    @given(
        path=st.builds(_with_empty_segments, st.sampled_from(ROUTE_PATHS), st.lists(st.integers(0, 6), max_size=3)),
        method=st.sampled_from(["GET", "POST", "DELETE"]),
    )
    @example(path="/api//tags", method="GET")
    @example(path="/v1//models", method="GET")
    def fuzz(path: str, method: str) -> None:
        response = exchange(method, proxy.url + path, b"{}" if method == "POST" else b"")
        assert_no_500(response)
        assert response.code in (200, 400, 401, 404, 405, 501), (path, response.code)
        if response.code >= 400:
            (assert_openai_error if path.lstrip("/").startswith("v1/") else assert_native_error)(response)
        if "//" in path and not path.startswith("//"):
            assert response.code in (404, 405), (path, response.code)

    await threads.deferToThread(fuzz)


# -- the SSE parser ---------------------------------------------------------------------------
sse_lines = st.lists(
    st.sampled_from(
        [
            b"data: {}",
            b"data: [DONE]",
            b": OPENROUTER PROCESSING",
            b"event: x",
            b"id: 1",
            b"retry: 5",
            b"",
            b"data:",
            b"data:x",
            b"\xff\xfe",
        ]
    )
    | st.binary(max_size=20),
    max_size=12,
)
endings = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lines=sse_lines, ending=endings, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_the_sse_parser_gives_the_same_events_however_the_bytes_are_split(lines, ending, cuts):
    stream = ending.join(lines) + ending

    def parse(pieces: list[bytes]) -> list[Any]:
        parser = SSEParser(max_event_bytes=1024)
        events: list[Any] = []
        for piece in pieces:
            events.extend(parser.feed(piece))
        return events + parser.close()

    positions = sorted({c for c in cuts if c <= len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)], strict=True)]
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
            st.fixed_dictionaries(
                {},
                optional={
                    "delta": st.fixed_dictionaries(
                        {}, optional={"content": st.text(with_surrogates, max_size=8) | json_values}
                    )
                    | json_values,
                    "finish_reason": st.sampled_from(["stop", "length", None, "error"]) | json_values,
                },
            )
            | json_values,
            max_size=2,
        )
        | json_values,
        "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": json_values, "completion_tokens": json_values})
        | json_values,
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


@pytest.mark.parametrize("stream", [True, False])
@pytest_twisted.ensureDeferred
async def test_whatever_the_upstream_streams_a_v1_client_gets_sse_or_json(proxy, simulator, stream):
    body = json.dumps({"model": "sim/raw", "messages": [{"role": "user", "content": "x"}], "stream": stream}).encode()

    @FUZZ
    @given(events=sse_events)
    def fuzz(events: list[bytes]) -> None:
        simulator.raw_stream = b"".join(events)
        kind = assert_v1_well_formed(
            exchange("POST", proxy.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        )
        assert kind in (("sse", "error") if stream else ("json", "error")), kind

    await threads.deferToThread(fuzz)


def _parsed(raw: bytes | str) -> Any:
    from ollama_proxy.errors import BadRequest
    from ollama_proxy.wire.jsontext import parse_json

    try:
        return ("value", parse_json(raw))
    except BadRequest as error:
        return ("refused", error.message)


@settings(max_examples=400, deadline=None)
@given(raw_bodies)
@example(b'{"a": [1, ' + b"1" * 400 + b"]}")
@example(b'{"a": "\\ud800", "b": "\\ud83d\\ude00", "c": 1e-400, "d": -0.0, "e": 18446744073709551616}')
@example(b"\xef\xbb\xbf{}")
def test_a_body_reads_the_same_through_msgspec_as_through_the_stdlib(raw):
    # Bytes take msgspec's path where it reads what the stdlib decoder with Go's rules
    # reads alike; a str always takes the stdlib's. Both must give the same value, or
    # refuse with the same words.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert _parsed(raw)[0] == "refused"
        return
    assert repr(_parsed(raw)) == repr(_parsed(text))
