"""``POST /v1/messages`` driven by the official ``anthropic`` Python SDK (OpenRouter simulator upstream)."""

from __future__ import annotations

import json

import anthropic
import pytest
import pytest_twisted
from twisted.internet.task import Clock

from ollama_proxy.api.messages import PING_INTERVAL
from ollama_proxy.config.settings import Timeouts

from .conftest import LineReader, http, in_thread
from .multi import turn
from .simulator import REASONING_SIGNATURE

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(proxy, **kwargs):
    return anthropic.Anthropic(base_url=proxy.url, api_key="ollama", max_retries=0, **kwargs)


@pytest_twisted.ensureDeferred
async def test_create_answers_a_message(proxy, simulator):
    c = client(proxy)
    message = await in_thread(
        c.messages.create,
        model="google/gemini-pro",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "one two"}],
        extra_body={"temperature": 0.2},
        stop_sequences=["END"],
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == "google/gemini-pro"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Echo: one two"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    sent = simulator.chat_requests()[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 100 and sent["stop"] == ["END"] and sent["temperature"] == 0.2


@pytest_twisted.ensureDeferred
async def test_stream_accumulates_with_the_sdk(proxy):
    c = client(proxy)

    def run():
        with c.messages.stream(
            model="google/gemini-pro", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]
        ) as stream:
            events = [e.type for e in stream]
            return events, stream.get_final_message()

    events, final = await in_thread(run)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    assert final.content[0].text == "Echo: a b c" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest_twisted.ensureDeferred
async def test_tool_use_round_trip(proxy):
    c = client(proxy)
    first = await in_thread(
        c.messages.create,
        model="openai/gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER],
        messages=[{"role": "user", "content": 'call get_weather {"city": "Paris"}'}],
    )
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    second = await in_thread(
        c.messages.create,
        model="openai/gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": 'call get_weather {"city": "Paris"}'},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].text == "Tool said: sunny" and second.stop_reason == "end_turn"


@pytest_twisted.ensureDeferred
async def test_errors_in_anthropic_shape(proxy):
    c = client(proxy)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await in_thread(c.messages.create, model="no/such", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'no/such' not found"},
    }
    answer = await http("POST", proxy.url + "/v1/messages?beta=true", {"model": "google/gemini-pro", "messages": []})
    assert answer.code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in answer.json()["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_both_surfaces_are_counted_and_logged(proxy, access_events):
    await in_thread(
        client(proxy).messages.create,
        model="google/gemini-pro",
        max_tokens=20,
        messages=[{"role": "user", "content": "count me"}],
    )
    await http("POST", proxy.url + "/v1/responses", {"model": "google/gemini-pro", "input": "me too"})
    lines = {e["path"]: e for e in access_events}
    for path in ("/v1/messages", "/v1/responses"):
        line = lines[path]
        assert line["status"] == 200 and line["model"] == "google/gemini-pro" and line["provider"] == "openrouter"
        assert line["tokens_in"] > 0 and line["tokens_out"] > 0
    metrics = (await http("GET", proxy.url + "/metrics")).json()
    assert "/v1/messages" in json.dumps(metrics) and "/v1/responses" in json.dumps(metrics)


@pytest_twisted.ensureDeferred
async def test_a_silent_stream_gets_pings(make_multi, simulator):
    clock = Clock()
    proxy = make_multi([], clock=clock, timeouts=Timeouts(connect=5, response=10, idle=600))
    reader = LineReader()
    body = {"model": "sim/hold", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    await reader.connect(proxy.port, "/v1/messages", body)
    await simulator.wait_for_hold()
    head = await reader.wait_for_lines(8)  # message_start, ping, the text block's start and first delta
    assert [line.split(b": ", 1)[1] for line in head[::2]] == [
        b"message_start",
        b"ping",
        b"content_block_start",
        b"content_block_delta",
    ]
    clock.advance(PING_INTERVAL - 1)
    assert len(reader.lines) == 8
    clock.advance(1)
    assert (await reader.wait_for_lines(10))[8:] == [b"event: ping", b'data: {"type":"ping"}']
    clock.advance(PING_INTERVAL)
    await reader.wait_for_lines(12)
    simulator.release_holds()
    while reader.lines[-1] != b'data: {"type":"message_stop"}':
        await reader.wait_for_lines(len(reader.lines) + 1)
    count = len(reader.lines)
    clock.advance(PING_INTERVAL * 3)  # the stream is over: no more pings
    await turn()
    assert len(reader.lines) == count
    reader.hang_up()


@pytest_twisted.ensureDeferred
async def test_thinking_keeps_openrouters_signature_across_turns(proxy, simulator):
    c = client(proxy)
    thinking = {"type": "enabled", "budget_tokens": 2048}

    def first_turn():
        with c.messages.stream(
            model="deepseek/deepseek-r1",
            max_tokens=4096,
            thinking=thinking,
            messages=[{"role": "user", "content": "why"}],
        ) as stream:
            kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
            return kinds, stream.get_final_message()

    kinds, first = await in_thread(first_turn)
    assert "thinking_delta" in kinds and "signature_delta" in kinds
    thought, answer = first.content
    assert thought.type == "thinking" and thought.signature == REASONING_SIGNATURE and answer.text == "Echo: why"
    assert simulator.chat_requests()[-1].body["reasoning"] == {"effort": "low"}
    await in_thread(
        c.messages.create,
        model="deepseek/deepseek-r1",
        max_tokens=4096,
        thinking=thinking,
        messages=[
            {"role": "user", "content": "why"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": "and then?"},
        ],
    )
    handed_back = simulator.chat_requests()[-1].body["messages"][1]
    assert handed_back["reasoning_details"][0]["signature"] == REASONING_SIGNATURE
    assert handed_back["reasoning_details"][0]["text"] == thought.thinking
