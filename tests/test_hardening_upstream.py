"""What a misbehaving upstream may make the proxy hold: one event, one gathered answer (issue 10, item 8)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock

from ollama_proxy.api.relay import ChatRelay
from ollama_proxy.config.ops import LimitsConfig, OpsConfig
from ollama_proxy.config.settings import Timeouts
from ollama_proxy.providers.sse import MAX_EVENT_BYTES, SSEEvent, SSEParser, SSEProtocolError
from ollama_proxy.service import makeService

from .conftest import base_config, http

MIB = 1024 * 1024


def chat(model: str, stream: bool) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream}


def test_an_event_of_many_data_lines_is_bounded_as_a_whole():
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"a" * 40 + b"\n") == []
    assert parser.feed(b"data: " + b"b" * 40 + b"\n") == []
    with pytest.raises(SSEProtocolError, match="an SSE event exceeded 100 bytes"):
        parser.feed(b"data: " + b"c" * 40 + b"\n")


def test_the_line_being_read_counts_with_the_data_before_it():
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"a" * 60 + b"\n")
    with pytest.raises(SSEProtocolError):
        parser.feed(b"data: " + b"b" * 50)  # no line end yet: still held


def test_the_count_starts_again_with_each_event():
    parser = SSEParser(max_event_bytes=100)
    for _ in range(10):
        assert parser.feed(b"data: " + b"a" * 40 + b"\ndata: " + b"b" * 40 + b"\n\n") == [
            SSEEvent("a" * 40 + "\n" + "b" * 40)
        ]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_event_past_the_cap_is_a_502(proxy, simulator, path):
    # Data lines of 1 MiB with no blank line between them: one event growing past the cap.
    line = b"data: " + b"x" * MIB + b"\n"
    simulator.raw_stream = line * (MAX_EVENT_BYTES // MIB + 1)
    r = await http("POST", proxy.url + path, chat("sim/raw", stream=False))
    assert r.code == 502
    assert f"an SSE event exceeded {MAX_EVENT_BYTES} bytes" in json.dumps(r.json())


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_a_gathered_answer_past_the_cap_is_a_502(proxy, simulator, monkeypatch, path):
    monkeypatch.setattr(ChatRelay, "max_answer_chars", 1000)
    event = {"choices": [{"index": 0, "delta": {"content": "y" * 100}, "finish_reason": None}]}
    simulator.raw_stream = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for _ in range(20))
    body = chat("sim/raw", stream=False)
    if path == "/api/generate":
        body = {"model": "sim/raw", "prompt": "x", "stream": False}
    r = await http("POST", proxy.url + path, body)
    assert r.code == 502
    assert "the answer is larger than the limit of 1000 characters" in json.dumps(r.json())
    # Under the cap the same answer is whole.
    simulator.raw_stream = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for _ in range(9))
    simulator.raw_stream += b"data: [DONE]\n\n"
    r = await http("POST", proxy.url + path, body)
    assert r.code == 200


# -- item 10: the stream limits count every generation ------------------------------------
@pytest_twisted.ensureDeferred
async def test_non_streamed_generations_count_against_the_stream_limits(make_proxy, simulator):
    proxy = make_proxy(ops=OpsConfig(limits=LimitsConfig(max_streams_per_client=2)))
    assert (await http("GET", proxy.url + "/api/tags")).code == 200  # the model list is fetched
    before = len(simulator.requests)
    no_stream_field = {"model": "sim/hold", "messages": [{"role": "user", "content": "x"}]}
    held = [
        ensureDeferred(http("POST", proxy.url + "/api/chat", chat("sim/hold", stream=False))),
        ensureDeferred(http("POST", proxy.url + "/v1/chat/completions", no_stream_field)),
    ]
    await simulator.wait_for_requests(before + 2)
    for path, body in [
        ("/api/chat", chat("google/gemini-pro", stream=False)),
        ("/api/generate", {"model": "google/gemini-pro", "prompt": "x", "stream": False}),
        ("/v1/chat/completions", {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}),
        ("/api/chat", chat("google/gemini-pro", stream=True)),
    ]:
        r = await http("POST", proxy.url + path, body)
        assert r.code == 429, path
        assert "too many concurrent streams from this client (limit 2)" in r.body.decode()
    # Loading a model holds no generation: it is not refused.
    load = await http("POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": []})
    assert load.code == 200
    simulator.release_holds()
    assert [r.code for r in await gatherResults(held)] == [200, 200]
    again = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))
    assert again.code == 200
    assert proxy.service.gate.streams.active == 0


# -- item 17: [timeouts] response bounds a whole non-streamed answer ----------------------
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_a_non_streamed_answer_that_trickles_past_the_response_deadline_is_a_504(simulator, path):
    clock = Clock()
    config = base_config(simulator, timeouts=Timeouts(connect=5, response=2, idle=60))
    service = makeService(config, reactor, clock=clock)
    service.startService()
    url = f"http://127.0.0.1:{service.listening_ports()[0].getHost().port}"
    try:
        aborted = simulator.wait_for_abort()
        answer = ensureDeferred(http("POST", url + path, chat("sim/hold", stream=False)))
        await simulator.wait_for_hold()  # headers and a first token sent; the rest is held back
        assert (await http("GET", url + "/api/version")).code == 200  # the proxy has read them by now
        clock.advance(1.9)
        assert not answer.called
        clock.advance(0.2)  # the upstream call is cut here, at the deadline
        assert (await http("GET", url + "/api/version")).code == 200  # and the 504 has reached the client
        if not answer.called:
            simulator.release_holds()  # without a deadline the held answer would end as a 200
        r = await answer
        assert r.code == 504
        assert "no complete answer within 2 seconds" in r.body.decode()
        await aborted  # the upstream connection was closed
        (slot,) = service.router.slots
        assert slot.limiter.in_flight == 0  # and the provider's slot given back
    finally:
        simulator.release_holds()
        await service.stopService()


def test_a_provider_s_own_response_timeout_bounds_its_answers(simulator):
    from ollama_proxy.config.providers import ProviderConfig, ProviderTimeouts

    slow = ProviderConfig(
        name="slow", type="openai", base_url=simulator.base_url, timeouts=ProviderTimeouts(response=7)
    )
    config = base_config(simulator, providers=(slow,), timeouts=Timeouts(connect=5, response=3, idle=60))
    slots = {s.name: s.response_timeout for s in makeService(config, reactor, clock=Clock()).router.slots}
    assert slots == {"openrouter": 3, "slow": 7}
