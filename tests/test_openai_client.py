"""Ollama's ``/v1`` through the official ``openai`` Python client."""

from __future__ import annotations

import base64
import json
import struct

import openai
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from .conftest import http, in_thread
from .wire import PNG, WEATHER_TOOL, b64, last_chat


def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)


@pytest_twisted.ensureDeferred
async def test_models_list_and_retrieve(proxy):
    c = client(proxy)
    listing = await in_thread(c.models.list)
    by_id = {m.id: m for m in listing.data}
    assert (
        by_id["openai/gpt-4o-mini:latest"].owned_by == "openai"
        and by_id["openai/gpt-4o-mini:latest"].created == 1721260800
    )
    assert "openai/text-embedding-3-small:latest" in by_id
    model = await in_thread(c.models.retrieve, "openai/gpt-4o-mini")
    assert model.id == "openai/gpt-4o-mini" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as missing:
        await in_thread(c.models.retrieve, "no/such-model")
    assert missing.value.body == {
        "message": "model 'no/such-model' not found",
        "type": "not_found_error",
        "param": None,
        "code": "model_not_found",
    }


@pytest_twisted.ensureDeferred
async def test_chat_completions_streamed_and_not(proxy, simulator):
    c = client(proxy)
    answer = await in_thread(
        c.chat.completions.create,
        model="google/gemini-pro",
        messages=[{"role": "user", "content": "one two"}],
        temperature=0.3,
        max_tokens=50,
    )
    assert answer.choices[0].message.content == "Echo: one two" and answer.choices[0].finish_reason == "stop"
    assert (
        answer.object == "chat.completion"
        and answer.id.startswith("chatcmpl-")
        and answer.system_fingerprint == "fp_ollama"
    )
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (2, 3, 5)
    sent = last_chat(simulator)
    assert sent["model"] == "google/gemini-pro" and sent["temperature"] == 0.3 and sent["max_tokens"] == 50

    def stream():
        return list(
            c.chat.completions.create(
                model="google/gemini-pro:latest",
                messages=[{"role": "user", "content": "a b"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    chunks = await in_thread(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: a b"
    assert (
        chunks[-2].choices[0].finish_reason == "stop"
        and chunks[-1].choices == []
        and chunks[-1].usage.total_tokens == 5
    )
    assert len({ch.id for ch in chunks}) == 1 and all(ch.model == "google/gemini-pro:latest" for ch in chunks)
    plain = await in_thread(
        lambda: list(
            c.chat.completions.create(
                model="google/gemini-pro", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    )
    assert all(ch.usage is None for ch in plain)


@pytest_twisted.ensureDeferred
async def test_streams_are_relayed_event_by_event(proxy):
    r = await http(
        "POST",
        proxy.url + "/v1/chat/completions",
        {"model": "google/gemini-pro", "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
    )
    assert r.code == 200 and r.header("content-type") == "text/event-stream"
    events = r.body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert contents == ["Echo:", " a", " b", " c", None]  # one event per upstream token, then the finish chunk


@pytest_twisted.ensureDeferred
async def test_tools_with_string_arguments_over_two_turns(proxy, simulator):
    c = client(proxy)
    messages = [{"role": "user", "content": 'call get_weather {"city": "Paris"} call get_weather {"city": "Lyon"}'}]
    first = await in_thread(
        c.chat.completions.create, model="openai/gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [json.loads(t.function.arguments) for t in calls] == [{"city": "Paris"}, {"city": "Lyon"}]
    assert all(isinstance(t.function.arguments, str) and t.id.startswith("call_sim_") for t in calls)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": t.id, "content": f"sunny in {i}"} for i, t in enumerate(calls)]
    second = await in_thread(
        c.chat.completions.create, model="openai/gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "Tool said: sunny in 1"
    assert [m["tool_call_id"] for m in last_chat(simulator)["messages"][2:]] == [t.id for t in calls]

    def stream():
        return list(
            c.chat.completions.create(
                model="openai/gpt-4o-mini", messages=messages[:1], tools=[WEATHER_TOOL], stream=True
            )
        )

    chunks = await in_thread(stream)
    deltas = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.type, d.function.name) for d in deltas] == [
        (0, "function", "get_weather"),
        (1, "function", "get_weather"),
    ]
    assert json.loads(deltas[1].function.arguments) == {"city": "Lyon"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest_twisted.ensureDeferred
async def test_reasoning_effort_and_reasoning_out(proxy, simulator):
    c = client(proxy)
    answer = await in_thread(
        c.chat.completions.create,
        model="deepseek/deepseek-r1",
        messages=[{"role": "user", "content": "why"}],
        reasoning_effort="high",
    )
    message = answer.choices[0].message
    assert message.content == "Echo: why" and message.model_extra["reasoning"] == "Thinking about: why"
    assert last_chat(simulator)["reasoning"] == {"effort": "high"}
    await in_thread(
        c.chat.completions.create,
        model="deepseek/deepseek-r1",
        messages=[{"role": "user", "content": "why"}],
        reasoning_effort="minimal",
    )
    assert last_chat(simulator)["reasoning"] == {"effort": "minimal"}
    quiet = await in_thread(
        c.chat.completions.create,
        model="deepseek/deepseek-r1",
        messages=[{"role": "user", "content": "why"}],
        reasoning_effort="none",
    )
    assert "reasoning" not in (quiet.choices[0].message.model_extra or {})
    with pytest.raises(openai.BadRequestError) as refused:
        await in_thread(
            c.chat.completions.create,
            model="google/gemini-pro",
            messages=[{"role": "user", "content": "x"}],
            reasoning_effort="low",
        )
    assert refused.value.body["message"] == '"google/gemini-pro" does not support thinking'
    with pytest.raises(openai.BadRequestError) as invalid:
        await in_thread(
            c.chat.completions.create,
            model="deepseek/deepseek-r1",
            messages=[{"role": "user", "content": "x"}],
            reasoning_effort="extreme",
        )
    assert invalid.value.body["message"].startswith('invalid reasoning value: "extreme"')


@pytest_twisted.ensureDeferred
async def test_response_format_and_images(proxy, simulator):
    c = client(proxy)
    answer = await in_thread(
        c.chat.completions.create,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(answer.choices[0].message.content) == {"echo": "Echo: hi"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    structured = await in_thread(
        c.chat.completions.create,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}},
    )
    assert json.loads(structured.choices[0].message.content) == {"n": 1}
    assert last_chat(simulator)["response_format"]["json_schema"] == {"name": "count", "schema": schema}
    content = [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}},
    ]
    seen = await in_thread(
        c.chat.completions.create, model="openai/gpt-4o-mini", messages=[{"role": "user", "content": content}]
    )
    assert seen.choices[0].message.content == "Echo: see [image/png]"


@pytest_twisted.ensureDeferred
async def test_logprobs(proxy):
    answer = await in_thread(
        client(proxy).chat.completions.create,
        model="google/gemini-pro",
        messages=[{"role": "user", "content": "a"}],
        logprobs=True,
        top_logprobs=1,
    )
    tokens = answer.choices[0].logprobs.content
    assert [t.token for t in tokens] == ["Echo:", " a"] and len(tokens[0].top_logprobs) == 1


@pytest_twisted.ensureDeferred
async def test_completions(proxy, simulator):
    c = client(proxy)
    done = await in_thread(c.completions.create, model="google/gemini-pro", prompt="say this", max_tokens=10)
    assert (
        done.object == "text_completion"
        and done.choices[0].text == "Echo: say this"
        and done.choices[0].finish_reason == "stop"
    )
    assert done.usage.completion_tokens == 3
    chunks = await in_thread(
        lambda: list(
            c.completions.create(
                model="google/gemini-pro", prompt="a b", stream=True, stream_options={"include_usage": True}
            )
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Echo: a b"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens == 5
    filled = await in_thread(c.completions.create, model="google/gemini-pro", prompt="def f():", suffix="return x")
    assert (
        filled.choices[0].text
        and last_chat(simulator)["messages"][1]["content"] == "<prefix>def f():</prefix><suffix>return x</suffix>"
    )
    with_logprobs = await in_thread(c.completions.create, model="google/gemini-pro", prompt="a", logprobs=2)
    assert with_logprobs.choices[0].logprobs.tokens == ["Echo:", " a"] and with_logprobs.choices[
        0
    ].logprobs.text_offset == [0, 5]
    loaded = await in_thread(c.completions.create, model="google/gemini-pro", prompt="")
    assert loaded.choices[0].finish_reason == "load"  # what Ollama's /v1 answers for an empty prompt


@pytest_twisted.ensureDeferred
async def test_embeddings(proxy, simulator):
    c = client(proxy)
    floats = await in_thread(
        c.embeddings.create, model="openai/text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert (
        [d.index for d in floats.data] == [0, 1]
        and len(floats.data[0].embedding) == 8
        and floats.usage.prompt_tokens == 3
    )
    assert floats.model == "openai/text-embedding-3-small"
    packed = await http(
        "POST",
        proxy.url + "/v1/embeddings",
        {"model": "openai/text-embedding-3-small", "input": "a b", "encoding_format": "base64", "dimensions": 4},
    )
    vector = struct.unpack("<4f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert vector == pytest.approx(floats.data[0].embedding[:4], abs=1e-6)
    assert simulator.requests[-1].body["dimensions"] == 4
    # The client asks for base64 by default and decodes it itself.
    default = await in_thread(c.embeddings.create, model="openai/text-embedding-3-small", input="a b")
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as refused:
        await in_thread(c.embeddings.create, model="openai/text-embedding-3-small", input=[])
    assert refused.value.body["message"] == "invalid input"


@pytest_twisted.ensureDeferred
async def test_errors_in_openai_shape(proxy, simulator):
    c = client(proxy)
    with pytest.raises(openai.NotFoundError) as missing:
        await in_thread(c.chat.completions.create, model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as empty:
        await in_thread(c.chat.completions.create, model="google/gemini-pro", messages=[])
    assert empty.value.body == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    with pytest.raises(openai.RateLimitError) as limited:
        await in_thread(c.chat.completions.create, model="sim/fail-429", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "7" and limited.value.body["type"] == "api_error"

    def broken_stream():
        return [
            ch.choices[0].delta.content
            for ch in c.chat.completions.create(
                model="sim/midstream-error", messages=[{"role": "user", "content": "x y z"}], stream=True
            )
        ]

    with pytest.raises(openai.APIError, match="crashed mid-stream"):
        await in_thread(broken_stream)
    r = await http("POST", proxy.url + "/v1/audio/transcriptions", {"model": "google/gemini-pro"})
    assert r.code == 501 and r.json()["error"]["type"] == "api_error"
    r = await http("GET", proxy.url + "/v1/chat/completions")
    assert r.code == 405 and "error" in r.json()


@pytest_twisted.ensureDeferred
async def test_v1_use_shows_in_ps(proxy):
    await in_thread(
        client(proxy).chat.completions.create, model="google/gemini-pro", messages=[{"role": "user", "content": "x"}]
    )
    r = await http("GET", proxy.url + "/api/ps")
    assert [m["name"] for m in r.json()["models"]] == ["google/gemini-pro:latest"]


class _HangUpAfterFirstEvent(Protocol):
    """Sends one request, and closes the connection once the first SSE event arrived."""

    def __init__(self, request: bytes, received: Deferred) -> None:
        self.request = request
        self.received = received
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"data: " in self.data and not self.received.called:
            self.received.callback(self.data)
            self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_closes_the_upstream_stream(proxy, simulator):
    aborted = simulator.wait_for_abort()
    body = json.dumps(
        {"model": "sim/endless", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    received: Deferred = Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port)
    await connectProtocol(endpoint, _HangUpAfterFirstEvent(request, received))
    first = await received
    assert b"text/event-stream" in first and b'"content":" tick"' in first
    await aborted  # the proxy closed its upstream connection: the provider stops generating
    assert simulator.streams_aborted == 1
