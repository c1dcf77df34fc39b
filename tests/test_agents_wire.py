"""The pure translation of /v1/messages and /v1/responses (wire/), without any I/O."""

from __future__ import annotations

import pytest

from ollama_proxy.errors import BadRequest, UpstreamStreamError
from ollama_proxy.wire.anthropic_answer import MessagesPassthrough, MessagesRenderer, native_decoder
from ollama_proxy.wire.anthropic_request import estimate_tokens, plan_messages
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.responses_answer import ResponsesRenderer
from ollama_proxy.wire.responses_request import plan_responses

SMART = UpstreamModel(id="up/smart", supported_parameters=("tools", "reasoning"), input_modalities=("text", "image"))
PLAIN = UpstreamModel(id="up/plain")


def chunk(delta=None, finish=None, usage=None):
    out = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if delta or finish else []}
    if usage:
        out["usage"] = usage
    return out


def call_chunk(index, call_id, name, arguments):
    fn = {"name": name, "arguments": arguments} if name else {"arguments": arguments}
    return chunk({"tool_calls": [{"index": index, "id": call_id, "function": fn}]})


# -- Messages requests ------------------------------------------------------------------------
def messages(**body):
    return {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **body}


def test_system_blocks_tools_and_results_become_the_chat_body():
    body = messages(
        system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}],
        tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        stop_sequences=["X"],
        top_k=5,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "bad"}],
                        "is_error": True,
                    },
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
        ],
    )
    plan = plan_messages(body, SMART, "claude-x")
    up = plan.upstream
    assert up["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert up["messages"][2] == {
        "role": "assistant",
        "content": "calling",
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
        # Signed thinking goes back as OpenRouter takes it (Claude wants it before a tool result).
        "reasoning_details": [
            {"type": "reasoning.text", "text": "hm", "signature": "sig", "format": "anthropic-claude-v1"}
        ],
    }
    assert up["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: bad"}
    assert up["messages"][4]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert up["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}
    ]
    assert up["tool_choice"] == {"type": "function", "function": {"name": "f"}} and up["parallel_tool_calls"] is False
    assert up["stop"] == ["X"] and up["top_k"] == 5 and up["max_tokens"] == 64 and up["stream"] is True
    # The native body keeps what the client sent (signatures, cache_control) with the upstream's id.
    assert plan.native["system"][0]["cache_control"] == {"type": "ephemeral"} and plan.native["model"] == "up/smart"


def test_the_native_body_drops_only_unsigned_thinking():
    history = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "another provider's", "signature": ""},
                {"type": "thinking", "thinking": "Claude's", "signature": "sig"},
                {"type": "text", "text": "done"},
            ],
        },
        {"role": "user", "content": "next"},
    ]
    plan = plan_messages(messages(messages=history), SMART, "c")
    assert [b.get("signature") for b in plan.native["messages"][1]["content"]] == ["sig", None]
    assert plan.native["messages"][0] == history[0] and plan.native["messages"][2] == history[2]


def test_thinking_asks_for_reasoning_only_where_the_model_can_reason():
    enabled = {"type": "enabled", "budget_tokens": 10000}
    assert plan_messages(messages(thinking=enabled), SMART, "c").upstream["reasoning"] == {"effort": "medium"}
    assert plan_messages(messages(thinking=enabled), SMART, "c").show_thinking is True
    assert "reasoning" not in plan_messages(messages(thinking=enabled), PLAIN, "c").upstream
    off = plan_messages(messages(thinking={"type": "disabled"}), SMART, "c")
    assert off.upstream["reasoning"] == {"enabled": False, "exclude": True} and off.show_thinking is False


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": "9"}, "max_tokens: Input should be an integer"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": "hi"}, "messages: Input should be a valid list"),
        ({"messages": [1, "x"]}, "messages.0: Input should be an object"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]}, "nope"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "1024"),
        ({"tool_choice": {"type": "sometimes"}}, "sometimes"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_messages_requests_are_400_saying_what(body, words):
    with pytest.raises(BadRequest, match=words):
        plan_messages(messages(**body), SMART, "c")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document'"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"system": [{"type": "image"}]}, "system.0"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "'file'",
        ),
    ],
)
def test_what_only_anthropic_takes_is_planned_natively(body, words):
    plan = plan_messages(messages(**body), SMART, "c")
    assert plan.upstream == {} and plan.native["model"] == "up/smart"
    assert isinstance(plan.untranslatable, BadRequest) and words in plan.untranslatable.message


def test_a_tool_use_left_without_its_result_is_refused():
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": "never mind"},
    ]
    with pytest.raises(BadRequest, match="t1"):
        plan_messages(messages(messages=history), SMART, "c")


def test_token_estimate_grows_with_the_input():
    small = estimate_tokens(messages())
    assert small >= 1 and estimate_tokens(messages(system="x" * 400)) >= small + 100


# -- Messages answers -------------------------------------------------------------------------
def run(renderer, chunks):
    out = []
    for c in chunks:
        out += renderer.feed(c)
    out += renderer.close()
    return out + renderer.closing()


def test_stream_events_come_in_anthropics_order():
    r = MessagesRenderer(model="claude-x", message_id="msg_1", clock=lambda: 5.0, show_thinking=True)
    events = run(
        r,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning": "think"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            call_chunk(0, "c1", "f", '{"a":'),
            call_chunk(0, None, None, " 1}"),
            chunk(finish="tool_calls"),
            chunk(usage={"prompt_tokens": 7, "completion_tokens": 3}),
        ],
    )
    assert [(e["type"], e.get("index"), (e.get("delta") or {}).get("type")) for e in events] == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert events[0]["message"]["model"] == "claude-x" and events[0]["message"]["id"] == "msg_1"
    assert events[9]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    # The arguments stream as the upstream writes them.
    assert [events[10]["delta"]["partial_json"], events[11]["delta"]["partial_json"]] == ['{"a":', " 1}"]
    assert events[13]["delta"]["stop_reason"] == "tool_use"
    assert events[13]["usage"] == {"input_tokens": 7, "output_tokens": 3}


def test_streamed_calls_keep_one_id_and_refuse_interleaving():
    ids = iter(["gen_1", "gen_2"])
    r = MessagesRenderer(model="m", message_id="x", clock=lambda: 0.0, new_call_id=lambda: next(ids))
    # A call without an id (some providers) gets one when it starts, and finishes under it.
    events = run(r, [call_chunk(0, None, "f", '{"a"'), call_chunk(0, None, None, ": 2}"), chunk(finish="tool_calls")])
    [start] = [e for e in events if e["type"] == "content_block_start"]
    assert start["content_block"]["id"] == "gen_1" and r.stop_reason() == "tool_use"
    for renderer in (
        MessagesRenderer(model="m", message_id="x", clock=lambda: 0.0),
        ResponsesRenderer(model="m", clock=lambda: 0.0),
    ):
        with pytest.raises(UpstreamStreamError, match="interleaved"):
            run(renderer, [call_chunk(0, "a", "f", "{"), call_chunk(1, "b", "g", "{"), call_chunk(0, None, None, "}")])


def test_whole_message_and_stop_reasons():
    r = MessagesRenderer(model="m", message_id="msg_2", clock=lambda: 0.0, keep_text=True)
    assert run(
        r, [chunk({"reasoning": "hidden"}), chunk({"content": "a"}), chunk({"content": "b"}), chunk(finish="length")]
    )
    message = r.final()
    assert message["content"] == [{"type": "text", "text": "ab"}] and message["stop_reason"] == "max_tokens"
    broken = MessagesRenderer(model="m", message_id="x", clock=lambda: 0.0)
    with pytest.raises(UpstreamStreamError, match="not JSON"):
        run(broken, [call_chunk(0, "c", "f", "{oops"), chunk(finish="tool_calls")])


def test_native_events_pass_through_with_the_asked_model_and_signatures():
    decode = native_decoder("Anthropic")
    upstream = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_u",
                "model": "claude-real",
                "content": [],
                "usage": {"input_tokens": 9, "cache_read_input_tokens": 3},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a"'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ": 2}"}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 4},
        },
        {"type": "message_stop"},
    ]
    streamed = MessagesPassthrough("alias", lambda: 0.0)
    relayed = [e for u in upstream for c in decode(u) for e in streamed.feed(c)]
    assert relayed[0]["message"]["model"] == "alias" and relayed[1:] == upstream[1:]
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (12, 4)
    whole = MessagesPassthrough("alias", lambda: 0.0, keep_text=True)
    for u in upstream:
        for c in decode(u):
            whole.feed(c)
    message = whole.final()
    assert message["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": "SIG"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 2}},
    ]
    assert message["stop_reason"] == "tool_use" and message["usage"]["output_tokens"] == 4
    with pytest.raises(UpstreamStreamError, match="overloaded_error: busy"):
        decode({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})


# -- Responses ------------------------------------------------------------------------------------
def responses(**body):
    return {"model": "gpt-x", "input": "hi", **body}


def test_input_items_become_chat_messages():
    plan = plan_responses(
        responses(
            instructions="Be kind.",
            input=[
                {"type": "message", "role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": '{"a":2}'},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            ],
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            tool_choice={"type": "function", "name": "f"},
            text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
            max_output_tokens=99,
            reasoning={"effort": "low", "summary": "auto"},
            store=False,
            include=["reasoning.encrypted_content"],
        ),
        SMART,
        "gpt-x",
    )
    m = plan.upstream["messages"]
    assert m[0] == {"role": "system", "content": "Be kind."} and m[1] == {"role": "system", "content": "rules"}
    assert m[2]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    assert [c["id"] for c in m[3]["tool_calls"]] == ["c1", "c2"]
    assert m[4:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    up = plan.upstream
    assert up["tool_choice"] == {"type": "function", "function": {"name": "f"}} and up["max_tokens"] == 99
    assert up["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert up["reasoning"] == {"effort": "low"} and plan.echo["store"] is False


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"previous_response_id": "resp_1"}, "stateless"),
        ({"conversation": "conv_1"}, "stateless"),
        ({"input": [{"type": "function_call_output", "call_id": "ghost", "output": "x"}]}, "ghost"),
        ({"tools": [{"type": "local_shell"}]}, "local_shell"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "'custom'"),
        ({"input": [{"type": "computer_call"}]}, "computer_call"),
        ({"input": 5}, "input"),
        ({"text": {"format": {"type": "yaml"}}}, "yaml"),
        ({"reasoning": {"effort": "enormous"}}, "enormous"),
        ({"stream": "true"}, "stream"),
        ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ],
)
def test_bad_responses_requests_are_400_saying_what(body, words):
    with pytest.raises(BadRequest, match=words):
        plan_responses(responses(**body), SMART, "gpt-x")


def test_responses_stream_events_and_numbers():
    ids = iter(range(100))
    r = ResponsesRenderer(model="gpt-x", clock=lambda: 1.0, make_id=lambda p: f"{p}_{next(ids)}")
    events = run(
        r,
        [
            chunk({"reasoning": "hm"}),
            chunk({"content": "Hi"}),
            call_chunk(0, "c1", "f", "{}"),
            chunk(finish="length"),
            chunk(usage={"prompt_tokens": 2, "completion_tokens": 3}),
        ],
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    last = events[-1]["response"]
    assert last["status"] == "incomplete" and last["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["type"] for i in last["output"]] == ["reasoning", "message", "function_call"]
    assert last["usage"]["total_tokens"] == 5 and last["id"] == events[0]["response"]["id"]
    failed = r.failure("boom")[0]
    assert failed["type"] == "response.failed" and failed["response"]["error"]["message"] == "boom"
