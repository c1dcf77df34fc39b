"""Fuzzing /v1/messages and /v1/responses: whatever a client sends, the answer is in the
surface's own shape (Anthropic's, OpenAI's) and never a 500; plus the plain bad inputs."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet import threads

from ollama_proxy.providers.sse import SSEParser

from .conftest import http
from .test_fuzz import FUZZ, JSON, assert_no_500, assert_openai_error, exchange, json_values, raw_bodies

MODELS = st.sampled_from(
    [
        "google/gemini-pro",
        "openai/gpt-4o-mini",
        "deepseek/deepseek-r1",
        "sim/midstream-error",
        "sim/fail-429",
        "nobody/nothing",
    ]
)
text = st.text(max_size=12)
blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document"]) | json_values},
        optional={
            "text": text | json_values,
            "id": st.sampled_from(["t1", "t2"]) | json_values,
            "tool_use_id": st.sampled_from(["t1", "t2"]) | json_values,
            "name": st.sampled_from(["f", ""]) | json_values,
            "input": st.fixed_dictionaries({}, optional={"a": st.integers()}) | json_values,
            "content": text | json_values,
            "is_error": st.booleans() | json_values,
            "source": st.fixed_dictionaries(
                {"type": st.sampled_from(["base64", "url", "file"])},
                optional={"media_type": text, "data": text, "url": text},
            )
            | json_values,
            "cache_control": st.just({"type": "ephemeral"}),
        },
    )
    | json_values,
    max_size=3,
)
anthropic_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]) | json_values, "content": text | blocks}),
    min_size=1,
    max_size=3,
)
MESSAGES_FIELDS: dict[str, Any] = {
    "max_tokens": st.integers(-1, 50),
    "stream": st.booleans(),
    "system": text | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2),
    "temperature": st.floats(0, 1),
    "top_k": st.integers(0, 5),
    "stop_sequences": st.lists(text, max_size=2),
    "tools": st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["f", ""]), "input_schema": st.just({"type": "object"})},
            optional={"type": st.sampled_from(["custom", "bash_20250124"])},
        ),
        max_size=2,
    ),
    "tool_choice": st.fixed_dictionaries(
        {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])}, optional={"name": st.just("f")}
    ),
    "thinking": st.fixed_dictionaries(
        {"type": st.sampled_from(["enabled", "disabled", "adaptive"])}, optional={"budget_tokens": st.integers(0, 5000)}
    ),
    "metadata": st.fixed_dictionaries({}, optional={"user_id": text}),
}
items = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference"])
            | json_values
        },
        optional={
            "role": st.sampled_from(["user", "assistant", "developer", "system"]) | json_values,
            "content": text
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["input_text", "output_text", "input_image", "input_file"])},
                    optional={"text": text, "image_url": text},
                ),
                max_size=2,
            )
            | json_values,
            "call_id": st.sampled_from(["c1", "c2"]) | json_values,
            "name": st.sampled_from(["f", ""]) | json_values,
            "arguments": st.sampled_from(["{}", '{"a": 1}', "nope"]) | json_values,
            "output": text | json_values,
        },
    )
    | json_values,
    max_size=3,
)
RESPONSES_FIELDS: dict[str, Any] = {
    "stream": st.booleans(),
    "instructions": text,
    "tools": st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "web_search", "custom"]), "name": st.sampled_from(["f", ""])},
            optional={"parameters": json_values},
        ),
        max_size=2,
    ),
    "tool_choice": st.sampled_from(["auto", "none", "required"])
    | st.fixed_dictionaries({"type": st.just("function"), "name": st.just("f")}),
    "max_output_tokens": st.integers(-1, 50),
    "reasoning": st.fixed_dictionaries(
        {}, optional={"effort": st.sampled_from(["low", "high", "none", "x"]), "summary": st.just("auto")}
    ),
    "text": st.fixed_dictionaries(
        {},
        optional={
            "format": st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object", "json_schema", "x"])}, optional={"schema": json_values}
            )
        },
    ),
    "store": st.booleans(),
    "include": st.lists(text, max_size=2),
    "previous_response_id": st.none() | text,
    "parallel_tool_calls": st.booleans(),
}


def _near_valid(required: dict[str, Any], fields: dict[str, Any]) -> Any:
    optional = {k: v | json_values for k, v in fields.items() if k not in required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda b: json.dumps(b).encode())


def named_events(body: bytes) -> list[tuple[str, Any]]:
    parser = SSEParser(max_event_bytes=len(body) + 1)
    events = parser.feed(body) + parser.close()
    assert body.endswith(b"\n\n") and events, body[-120:]
    return [(e.event, json.loads(e.data)) for e in events]


def assert_messages_well_formed(response: Any) -> None:
    assert_no_500(response)
    if response.code >= 400:
        assert response.header("content-type") == JSON
        body = response.json()
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
        return
    if (response.header("content-type") or "").startswith("text/event-stream"):
        events = named_events(response.body)
        assert all(name == data["type"] for name, data in events), events
        assert events[0][0] == "message_start", events
        assert events[-1][0] in ("message_stop", "error"), events[-1]
        return
    message = response.json()
    if "input_tokens" in message:  # count_tokens
        assert set(message) == {"input_tokens"} and message["input_tokens"] > 0, message
        return
    assert message["type"] == "message" and isinstance(message["content"], list), message


def assert_responses_well_formed(response: Any) -> None:
    assert_no_500(response)
    if response.code >= 400:
        assert_openai_error(response)
        return
    if (response.header("content-type") or "").startswith("text/event-stream"):
        events = named_events(response.body)
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        assert events[-1][0] in ("response.completed", "response.incomplete", "response.failed"), events[-1]
        return
    assert response.json()["object"] == "response"


@pytest_twisted.ensureDeferred
async def test_messages_bodies_never_cause_a_500(proxy):
    near = _near_valid(
        {"model": MODELS, "max_tokens": st.integers(1, 50), "messages": anthropic_messages}, MESSAGES_FIELDS
    )
    anything = st.fixed_dictionaries(
        {}, optional={"model": MODELS, "messages": anthropic_messages, **MESSAGES_FIELDS}
    ).map(lambda b: json.dumps(b).encode())

    @FUZZ
    @given(raw=st.integers(0, 3).flatmap(lambda i: near if i < 2 else raw_bodies if i == 2 else anything))
    @example(
        raw=json.dumps(
            {
                "model": "google/gemini-pro",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
        ).encode()
    )
    @example(
        raw=json.dumps(
            {
                "model": "sim/midstream-error",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": "a b c"}],
                "stream": True,
            }
        ).encode()
    )
    def fuzz(raw: bytes) -> None:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            assert_messages_well_formed(exchange("POST", proxy.url + path, raw, {"Content-Type": "application/json"}))

    await threads.deferToThread(fuzz)


@pytest_twisted.ensureDeferred
async def test_responses_bodies_never_cause_a_500(proxy):
    near = _near_valid({"model": MODELS, "input": text | items}, RESPONSES_FIELDS)
    anything = st.fixed_dictionaries({}, optional={"model": MODELS, "input": items, **RESPONSES_FIELDS}).map(
        lambda b: json.dumps(b).encode()
    )

    @FUZZ
    @given(raw=st.integers(0, 3).flatmap(lambda i: near if i < 2 else raw_bodies if i == 2 else anything))
    @example(raw=json.dumps({"model": "google/gemini-pro", "input": "hi", "stream": True}).encode())
    @example(raw=json.dumps({"model": "sim/midstream-error", "input": "a b c", "stream": True}).encode())
    def fuzz(raw: bytes) -> None:
        assert_responses_well_formed(
            exchange("POST", proxy.url + "/v1/responses", raw, {"Content-Type": "application/json"})
        )

    await threads.deferToThread(fuzz)


@pytest_twisted.ensureDeferred
async def test_plain_bad_inputs_are_4xx_in_each_surface_shape(make_proxy):
    proxy = make_proxy(max_body_bytes=4096)
    huge = {"model": "google/gemini-pro", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 10000}]}
    r = await http("POST", proxy.url + "/v1/messages", huge)
    assert r.code == 413 and r.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": r.json()["error"]["message"]},
    }
    r = await http("POST", proxy.url + "/v1/responses", {"model": "google/gemini-pro", "input": "x" * 10000})
    assert r.code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await http("POST", proxy.url + "/v1/messages", raw=b'{"model": ')
    assert r.code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.body
    r = await http("POST", proxy.url + "/v1/messages", [1, 2])
    assert r.code == 400 and r.json()["type"] == "error"
    r = await http("GET", proxy.url + "/v1/messages")
    assert r.code == 405 and r.json()["type"] == "error"
    r = await http("POST", proxy.url + "/v1/messages/batches", {})
    assert r.code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = await http(
        "POST", proxy.url + "/v1/responses", {"model": "google/gemini-pro", "input": "x", "conversation": "c"}
    )
    assert r.code == 400 and "stateless" in r.json()["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_a_failure_after_output_ends_each_stream_in_its_own_way(proxy):
    body = {"model": "sim/midstream-error", "stream": True}
    r = await http(
        "POST",
        proxy.url + "/v1/messages",
        {**body, "max_tokens": 20, "messages": [{"role": "user", "content": "a b c d"}]},
    )
    events = named_events(r.body)
    assert r.code == 200 and events[0][0] == "message_start" and "text_delta" in r.body.decode()
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]
    r = await http("POST", proxy.url + "/v1/responses", {**body, "input": "a b c d"})
    events = named_events(r.body)
    assert r.code == 200 and events[0][0] == "response.created"
    name, last = events[-1]
    assert name == "response.failed" and last["response"]["status"] == "failed" and last["response"]["error"]["message"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
