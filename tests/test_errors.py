"""Bad input and bad upstreams: always a clear JSON error with the right status."""

import ollama
import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from ollama_proxy.config.settings import FilterConfig, OpenRouterConfig

from .conftest import http, in_thread
from .simulator import API_KEY

CHAT = "/api/chat"


def chat(model, stream=False, content="hi"):
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 12}', "'model' must be a string"),
        (b'{"model": "google/gemini-pro", "stream": "yes"}', "'stream'"),
        (b'{"model": "google/gemini-pro", "messages": "hi"}', "'messages' must be an array"),
        (b'{"model": "google/gemini-pro", "messages": [{"role": "user", "content": 1}]}', "content must be a string"),
        (
            b'{"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], '
            b'"options": {"temperature": "hot"}}',
            "option 'temperature'",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_requests_are_400(proxy, raw, words):
    r = await http("POST", proxy.url + CHAT, raw=raw)
    assert r.code == 400
    body = r.json()
    assert words in body["error"] and body["type"] == "invalid_request"
    assert r.header("content-type") == "application/json; charset=utf-8"


@pytest.mark.parametrize("path", ["/api/generate", "/api/show", "/api/embed", "/api/embeddings"])
@pytest_twisted.ensureDeferred
async def test_model_required_everywhere(proxy, path):
    r = await http("POST", proxy.url + path, {})
    assert (r.code, r.json()["error"]) == (400, "model is required")


@pytest_twisted.ensureDeferred
async def test_unknown_model_is_404_for_the_client(proxy):
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(
            ollama.Client(host=proxy.url).chat, model="no/such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'no/such-model' not found"
    r = await http("POST", proxy.url + "/api/show", {"model": "no/such-model"})
    assert r.code == 404 and r.json()["type"] == "model_not_found"


@pytest_twisted.ensureDeferred
async def test_filtered_model_is_403(make_proxy):
    proxy = make_proxy(filter=FilterConfig(deny=["google/*"]))
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro"))
    assert r.code == 403 and r.json()["type"] == "model_forbidden"
    assert "google/gemini-pro" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_embedding_model_cannot_chat(proxy):
    r = await http("POST", proxy.url + CHAT, chat("openai/text-embedding-3-small"))
    assert r.code == 400 and "does not support chat" in r.json()["error"]


@pytest.mark.parametrize(
    "model, status, mentions",
    [
        ("sim/fail-401", 502, "401 Unauthorized"),
        ("sim/fail-500", 502, "500 Internal Server Error"),
        ("sim/fail-503", 503, "503 Service Unavailable"),
        ("sim/fail-429", 429, "429 Too Many Requests"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_upstream_errors_before_the_first_byte_keep_their_meaning(proxy, model, status, mentions, stream):
    r = await http("POST", proxy.url + CHAT, chat(model, stream=stream))
    assert r.code == status
    body = r.json()
    assert body["type"] == "openrouter_error"
    assert body["error"].startswith("OpenRouter API error: ") and mentions in body["error"]
    if status == 429:
        assert r.header("retry-after") == "7"


@pytest_twisted.ensureDeferred
async def test_error_event_before_any_token_is_still_a_status(proxy):
    r = await http("POST", proxy.url + CHAT, chat("sim/error-first", stream=True))
    assert r.code == 502 and "Provider returned error" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_mid_stream_error_ends_the_stream_with_an_error_line(proxy):
    r = await http("POST", proxy.url + CHAT, chat("sim/midstream-error", stream=True, content="a b c"))
    assert r.code == 200
    lines = r.lines()
    assert [entry["message"]["content"] for entry in lines[:-1]] == ["Echo:", " a"]
    assert lines[-1] == {"error": "Upstream provider crashed mid-stream (code 502)"}
    health = (await http("GET", proxy.url + "/health")).json()
    assert health["error_count"] == 1


@pytest_twisted.ensureDeferred
async def test_mid_stream_error_raises_in_the_ollama_client(proxy):
    def run():
        return list(
            ollama.Client(host=proxy.url).chat(
                model="sim/midstream-error", messages=[{"role": "user", "content": "a b"}], stream=True
            )
        )

    with pytest.raises(ollama.ResponseError, match="crashed mid-stream"):
        await in_thread(run)


@pytest_twisted.ensureDeferred
async def test_mid_stream_error_without_streaming_is_502(proxy):
    r = await http("POST", proxy.url + CHAT, chat("sim/midstream-error", stream=False))
    assert r.code == 502 and "crashed mid-stream" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_upstream_cut_mid_stream_ends_with_an_error_line(proxy):
    r = await http("POST", proxy.url + CHAT, chat("sim/disconnect", stream=True, content="a b c"))
    assert r.code == 200
    lines = r.lines()
    assert lines[0]["message"]["content"] == "Echo:"
    assert "closed the stream before it was complete" in lines[-1]["error"]


@pytest_twisted.ensureDeferred
async def test_stalled_stream_is_ended_by_the_idle_timer(make_proxy, simulator):
    from ollama_proxy.config.settings import Timeouts

    proxy = make_proxy(timeouts=Timeouts(connect=5, response=10, idle=0.2))
    r = await http("POST", proxy.url + CHAT, chat("sim/stall", stream=True))
    lines = r.lines()
    assert lines[0]["message"]["content"] == "Echo:"
    assert lines[-1] == {"error": "OpenRouter stream stalled: no data for 0.2 seconds"}
    assert simulator.streams_aborted == 1


@pytest_twisted.ensureDeferred
async def test_upstream_that_never_answers_is_504(make_proxy):
    from ollama_proxy.config.settings import Timeouts

    proxy = make_proxy(timeouts=Timeouts(connect=5, response=0.2, idle=10))
    r = await http("POST", proxy.url + CHAT, chat("sim/no-headers", stream=True))
    assert r.code == 504 and "no response within 0.2 seconds" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_dead_upstream_is_502(make_proxy, simulator):
    proxy = make_proxy()
    await http("GET", proxy.url + "/api/tags")  # catalogue loaded while the upstream was alive
    await simulator.stop()
    simulator.close_connections()
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro"))
    assert r.code == 502 and "cannot reach OpenRouter" in r.json()["error"]
    assert r.json()["type"] == "openrouter_error"


@pytest_twisted.ensureDeferred
async def test_no_catalogue_and_dead_upstream_is_502_not_404(make_proxy, simulator):
    await simulator.stop()
    proxy = make_proxy()
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro"))
    assert r.code == 502 and r.json()["type"] == "openrouter_error"


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413(make_proxy):
    proxy = make_proxy(max_body_bytes=1000)
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro", content="x" * 5000))
    assert r.code == 413 and r.json()["type"] == "request_too_large"
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro", content="small"))
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_unknown_route_and_wrong_method_are_json(proxy):
    r = await http("GET", proxy.url + "/api/nothing")
    assert r.code == 404 and r.json()["type"] == "not_found"
    r = await http("GET", proxy.url + "/api/chat")
    assert r.code == 405 and r.json()["type"] == "method_not_allowed"
    assert "POST" in r.header("allow")


@pytest_twisted.ensureDeferred
async def test_without_a_key_health_is_degraded_and_inference_says_why(make_proxy, simulator):
    proxy = make_proxy(openrouter=OpenRouterConfig(api_key=None, base_url=simulator.base_url))
    health = (await http("GET", proxy.url + "/health")).json()
    assert health["status"] == "degraded"
    assert any("OPENROUTER_API_KEY" in reason for reason in health["reasons"])
    r = await http("POST", proxy.url + CHAT, chat("google/gemini-pro"))
    assert r.code == 503 and "no API key is configured" in r.json()["error"]
    assert (await http("GET", proxy.url + "/api/tags")).code == 200  # the catalogue is public


@pytest_twisted.ensureDeferred
async def test_the_key_never_reaches_a_response_or_a_log_line(proxy):
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        responses = [
            await http("POST", proxy.url + CHAT, chat("sim/leaky-error")),
            await http("POST", proxy.url + CHAT, chat("sim/fail-401")),
            await http("POST", proxy.url + CHAT, chat("sim/midstream-error", stream=True)),
        ]
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert responses[0].code == 400 and "[REDACTED]" in responses[0].json()["error"]
    for r in responses:
        assert API_KEY.encode() not in r.body
    from twisted.logger import formatEvent

    for event in seen:
        assert API_KEY not in formatEvent(event)
        assert API_KEY not in repr(event)


@pytest.mark.parametrize(
    "path, stream",
    [("/api/chat", True), ("/api/chat", False), ("/v1/chat/completions", True), ("/v1/chat/completions", False)],
)
@pytest_twisted.ensureDeferred
async def test_a_key_echoed_in_a_mid_stream_error_never_reaches_the_client(proxy, path, stream):
    r = await http("POST", proxy.url + path, chat("sim/midstream-leak", stream=stream, content="a b c"))
    assert API_KEY.encode() not in r.body
    assert b"[REDACTED]" in r.body and b"internal error for" in r.body
