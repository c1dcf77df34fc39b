"""Input that once broke the daemon for everyone (issue #10, items 1-5).

Non-finite and huge numbers, deep nesting, keep_alive values a Go duration cannot
hold, ``//`` paths and lone surrogates: each gets a 400/404 in the route's dialect,
never a 500, an HTML page or a broken ``/api/ps``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from ollama_proxy.config.ops import LimitsConfig, OpsConfig
from ollama_proxy.errors import BadRequest
from ollama_proxy.routing.running import RunningModels
from ollama_proxy.wire.framing import utf8
from ollama_proxy.wire.jsontext import MAX_DEPTH, parse_json
from ollama_proxy.wire.keep_alive import FOREVER, parse_keep_alive
from ollama_proxy.wire.models import UpstreamModel

from .conftest import http

NATIVE = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]
OPENAI = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"]
JSON = "application/json; charset=utf-8"


def assert_error_in_dialect(response: Any, path: str, status: int) -> str:
    assert response.code == status, (response.code, response.body[:300])
    assert response.header("content-type") == JSON
    body = response.json()
    if path.startswith("/v1/messages"):  # Anthropic's shape
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        return body["error"]["message"]
    if path.startswith("/v1/"):
        assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
        return body["error"]["message"]
    assert isinstance(body["error"], str), body
    return body["error"]


# -- the parser ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'{"x": NaN}',
        b'{"x": Infinity}',
        b'{"x": -Infinity}',
        b'{"x": 1e400}',
        b'{"x": -1e400}',
        b'{"x": 1' + b"0" * 400 + b"}",
    ],
)
def test_the_parser_refuses_what_go_cannot_decode(raw):
    with pytest.raises(BadRequest) as refused:
        parse_json(raw)
    assert refused.value.message.startswith("invalid JSON in request body")


def test_the_parser_keeps_finite_numbers():
    assert parse_json(b'{"a": 1e308, "b": -2.5, "c": 12345678901234567890}') == {
        "a": 1e308,
        "b": -2.5,
        "c": 12345678901234567890,
    }


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_the_parser_bounds_nesting(depth):
    with pytest.raises(BadRequest) as refused:
        parse_json(b'{"options": ' + b"[" * depth + b"]" * depth + b"}")
    assert f"nested deeper than {MAX_DEPTH} levels" in refused.value.message


def test_the_parser_takes_nesting_up_to_the_bound():
    depth = MAX_DEPTH - 1  # the outer object is one level
    value = parse_json(b'{"o": ' + b"[" * depth + b"]" * depth + b"}")["o"]
    for _ in range(depth - 1):
        (value,) = value
    assert value == []


def test_lone_surrogates_become_the_replacement_character_as_go_decodes_them():
    body = parse_json(b'{"model": "x\\ud800", "\\udfff": ["\\ud83d\\ude00", "a\\uDBFFb"]}')
    assert body == {"model": "x\ufffd", "\ufffd": ["\U0001f600", "a\ufffdb"]}
    assert utf8("x\ud800") == "x\ufffd".encode()


# -- keep_alive, as Ollama reads it -----------------------------------------------------------
@pytest.mark.parametrize("value", [1e300, 1e18, 10**30, 9.3e9])
def test_a_number_too_large_for_a_duration_is_forever(value):
    assert parse_keep_alive(value) == FOREVER


@pytest.mark.parametrize(
    "value,message",
    [
        ("99999999h", 'time: invalid duration "99999999h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("2562048h", 'time: invalid duration "2562048h"'),
        ("\ufffd", 'time: invalid duration "\\xef\\xbf\\xbd"'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
    ],
)
def test_durations_go_refuses_are_refused_in_its_words(value, message):
    with pytest.raises(BadRequest) as refused:
        parse_keep_alive(value)
    assert refused.value.message == message


def test_the_largest_go_durations_are_read():
    assert parse_keep_alive("2562047h") == 2562047 * 3600
    assert parse_keep_alive("-9223372036854775808ns") == FOREVER


def test_ps_lists_a_model_kept_for_an_enormous_window():
    running = RunningModels(Clock())
    running.use(UpstreamModel(id="a/b", provider="p"), 1e300)
    (entry,) = running.listing()
    assert entry["expires_at"].startswith("2262-")  # 292 years after 1970: Go's largest Duration


def test_ps_survives_one_bad_entry():
    clock = Clock()
    running = RunningModels(clock)
    good, bad = UpstreamModel(id="a/good", provider="p"), UpstreamModel(id="a/bad", provider="p")
    running.use(good, 60)
    running.use(bad, 60)
    # What no caller can store any more, as an older version could: a window no date can show.
    running._loaded["a/bad"].expires = 1e300
    assert [e["name"] for e in running.listing()] == ["a/good:latest"]


# -- over the wire, every route ---------------------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("path", NATIVE + OPENAI)
@pytest_twisted.ensureDeferred
async def test_non_finite_numbers_are_a_400_on_every_route(proxy, path, value):
    raw = b'{"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "prompt": "x",'
    raw += b' "input": "x", "options": {"seed": ' + value.encode() + b'}, "temperature": ' + value.encode() + b"}"
    response = await http("POST", proxy.url + path, raw=raw)
    assert "invalid JSON in request body" in assert_error_in_dialect(response, path, 400)


@pytest.mark.parametrize("path", NATIVE + OPENAI)
@pytest_twisted.ensureDeferred
async def test_deep_nesting_is_a_400_on_every_route(proxy, path):
    raw = b'{"model": "google/gemini-pro", "options": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    response = await http("POST", proxy.url + path, raw=raw)
    assert "nested deeper" in assert_error_in_dialect(response, path, 400)


@pytest_twisted.ensureDeferred
async def test_deep_nesting_is_a_400_at_the_front_door_too(make_proxy):
    # With stream limits on, the front door reads the body before the route does.
    proxy = make_proxy(ops=OpsConfig(limits=LimitsConfig(max_streams_per_client=2)))
    raw = b'{"model": "google/gemini-pro", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await http("POST", proxy.url + "/api/chat", raw=raw)
    assert "nested deeper" in assert_error_in_dialect(response, "/api/chat", 400)


@pytest.mark.parametrize("value", [1e300, 1e18, "-5m", -1])
@pytest_twisted.ensureDeferred
async def test_a_huge_keep_alive_does_not_break_ps(proxy, value):
    loaded = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [], "keep_alive": value}
    )
    assert loaded.code == 200 and loaded.json()["done_reason"] == "load"
    ps = await http("GET", proxy.url + "/api/ps")
    assert ps.code == 200, ps.body
    (entry,) = ps.json()["models"]
    assert entry["expires_at"].startswith("23")


@pytest_twisted.ensureDeferred
async def test_an_overflowing_duration_is_a_400_in_gos_words(proxy):
    response = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [], "keep_alive": "99999999h"}
    )
    assert assert_error_in_dialect(response, "/api/chat", 400) == 'time: invalid duration "99999999h"'
    assert (await http("GET", proxy.url + "/api/ps")).json() == {"models": []}


@pytest.mark.parametrize(
    "path",
    ["/api//tags", "/v1//models", "/api/providers//stats", "/api/chat//x", "/api//ps", "/v1//chat/completions"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest_twisted.ensureDeferred
async def test_double_slashes_are_404_json(proxy, path, method):
    response = await http(method, proxy.url + path, {"model": "google/gemini-pro"} if method == "POST" else None)
    assert "no such endpoint" in assert_error_in_dialect(response, path, 404)


@pytest.mark.parametrize(
    "path", ["/api/chat", "/v1/chat/completions", "/api/show", "/v1/embeddings", "/v1/messages", "/v1/responses"]
)
@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_the_body_gets_json_and_an_access_line(proxy, access_events, path):
    raw = b'{"model": "x\\ud800", "messages": [{"role": "user", "content": "hi"}], "input": "a"}'
    response = await http("POST", proxy.url + path, raw=raw)
    assert "x\ufffd" in assert_error_in_dialect(response, path, 404)
    (line,) = [e for e in access_events if e["path"] == path]
    assert line["status"] == 404 and line["model"] == "x\ufffd"


SURFACES = {
    "/api/chat": {"messages": [{"role": "user", "content": "x"}]},
    "/api/generate": {"prompt": "x"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}]},
    "/v1/completions": {"prompt": "x"},
    "/v1/messages": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50},
    "/v1/responses": {"input": "x"},
}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", list(SURFACES))
@pytest_twisted.ensureDeferred
async def test_an_upstream_that_echoes_a_lone_surrogate_gets_valid_utf8(proxy, simulator, access_events, path, stream):
    chunk = {"choices": [{"delta": {"content": "echo \ud800!"}, "finish_reason": None}]}
    done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    simulator.raw_stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in (chunk, done))
    simulator.raw_stream += b"data: [DONE]\n\n"
    body = {"model": "sim/raw", "stream": stream, **SURFACES[path]}
    response = await http("POST", proxy.url + path, body)
    assert response.code == 200, response.body[:300]
    text = response.body.decode("utf-8")  # strict: the answer is valid UTF-8
    assert "echo \ufffd!" in text.replace("\\ufffd", "\ufffd")
    assert "Internal server error" not in text and '"error": {' not in text and '"error":{' not in text
    assert [e["status"] for e in access_events if e["path"] == path] == [200]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_event_nested_too_deeply_is_an_unreadable_event(proxy, simulator, path, stream):
    deep = b"[" * 100_000 + b"]" * 100_000
    simulator.raw_stream = (
        b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: ' + deep + b"\n\ndata: [DONE]\n\n"
    )
    body = {"model": "sim/raw", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    response = await http("POST", proxy.url + path, body)
    # Said as what it is, not as a connection the upstream closed early.
    assert b"sent an event that is not JSON" in response.body, response.body[-300:]
    assert response.code == (200 if stream else 502)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_error_body_nested_too_deeply_is_a_502_with_its_start(proxy, path):
    body = {"model": "sim/deep-error", "messages": [{"role": "user", "content": "x"}], "stream": False}
    response = await http("POST", proxy.url + path, body)
    assert "500 Internal Server Error: [[[[" in assert_error_in_dialect(response, path, 502)
