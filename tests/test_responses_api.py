"""``POST /v1/responses`` driven by the official ``openai`` Python SDK (OpenRouter simulator upstream)."""

from __future__ import annotations

import json

import openai
import pytest
import pytest_twisted

from .conftest import http, in_thread
from .simulator import REASONING_SIGNATURE

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)


@pytest_twisted.ensureDeferred
async def test_create_answers_a_response(proxy, simulator):
    response = await in_thread(
        client(proxy).responses.create,
        model="google/gemini-pro",
        instructions="Be brief.",
        input="one two",
        temperature=0.2,
        max_output_tokens=50,
        store=False,
    )
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "Echo: one two" and response.model == "google/gemini-pro"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Be brief." and response.store is False
    sent = simulator.chat_requests()[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2


@pytest_twisted.ensureDeferred
async def test_stream_accumulates_with_the_sdk(proxy):
    c = client(proxy)

    def run():
        with c.responses.stream(model="google/gemini-pro", input="a b c") as stream:
            events = list(stream)
            return events, stream.get_final_response()

    events, final = await in_thread(run)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert final.output_text == "Echo: a b c" and final.status == "completed"


@pytest_twisted.ensureDeferred
async def test_function_call_round_trip(proxy):
    c = client(proxy)

    def run():
        with c.responses.stream(
            model="openai/gpt-4o-mini", input='call get_weather {"city": "Paris"}', tools=[WEATHER]
        ) as stream:
            kinds = [e.type for e in stream]
            return kinds, stream.get_final_response()

    kinds, first = await in_thread(run)
    # The arguments stream as the upstream writes them (the simulator sends them in pieces).
    assert (
        kinds.count("response.function_call_arguments.delta") > 1 and "response.function_call_arguments.done" in kinds
    )
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = await in_thread(
        c.responses.create,
        model="openai/gpt-4o-mini",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": 'call get_weather {"city": "Paris"}'},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "Tool said: sunny"


@pytest_twisted.ensureDeferred
async def test_reasoning_becomes_a_reasoning_item_sealed_when_asked(proxy, simulator):
    c = client(proxy)
    plain = await in_thread(
        c.responses.create, model="deepseek/deepseek-r1", input="why", reasoning={"effort": "high", "summary": "auto"}
    )
    assert [item.type for item in plain.output] == ["reasoning", "message"]
    assert plain.output[0].summary[0].text and plain.output_text and not plain.output[0].encrypted_content
    # As Codex asks (store false, include the encrypted content): the signature comes opaque,
    # and goes back upstream as OpenRouter's reasoning_details when the item is sent back.
    sealed = await in_thread(
        c.responses.create,
        model="deepseek/deepseek-r1",
        input="why",
        reasoning={"effort": "high", "summary": "auto"},
        store=False,
        include=["reasoning.encrypted_content"],
    )
    reasoning = sealed.output[0]
    assert reasoning.encrypted_content == REASONING_SIGNATURE
    await in_thread(
        c.responses.create,
        model="deepseek/deepseek-r1",
        input=[
            {"role": "user", "content": "why"},
            *[item.model_dump(exclude_none=True) for item in sealed.output],
            {"role": "user", "content": "and then?"},
        ],
    )
    handed_back = simulator.chat_requests()[-1].body["messages"][1]
    assert handed_back["role"] == "assistant" and handed_back["content"] == sealed.output_text
    assert handed_back["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "text": reasoning.summary[0].text,
            "signature": REASONING_SIGNATURE,
            "format": "anthropic-claude-v1",
        }
    ]


@pytest_twisted.ensureDeferred
async def test_stateless_and_bad_input_in_openai_shape(proxy):
    c = client(proxy)
    with pytest.raises(openai.BadRequestError) as stateful:
        await in_thread(c.responses.create, model="google/gemini-pro", input="x", previous_response_id="resp_1")
    assert "stateless" in stateful.value.body["message"]
    with pytest.raises(openai.BadRequestError) as typed:
        await in_thread(
            c.responses.create, model="openai/gpt-4o-mini", input="x", tools=[{"type": "web_search_preview"}]
        )
    assert "web_search_preview" in typed.value.body["message"]
    r = await http("POST", proxy.url + "/v1/responses", raw=b"{not json")
    assert r.code == 400 and r.json()["error"]["type"] == "invalid_request_error"
