"""The pure pieces of wire fidelity, on their own: durations, running models, chunks, images."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.task import Clock

from ollama_proxy.errors import BadRequest, UpstreamStreamError
from ollama_proxy.routing.running import RunningModels
from ollama_proxy.wire.chunks import ChunkReader
from ollama_proxy.wire.images import image_data_uri, sniff_media_type
from ollama_proxy.wire.keep_alive import FOREVER, parse_keep_alive
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_answer import ChatTranslator
from ollama_proxy.wire.ollama_generate import decode_context, encode_context
from ollama_proxy.wire.ollama_options import response_format
from ollama_proxy.wire.ollama_request import chat_messages, plan_chat, plan_generate

from .wire import JPEG, PNG, b64

MODEL = UpstreamModel(
    id="acme/model",
    context_length=4096,
    supported_parameters=("tools", "reasoning"),
    input_modalities=("text", "image"),
)
PLAIN = UpstreamModel(id="acme/plain")


@pytest.mark.parametrize(
    "value,seconds",
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        (-1, FOREVER),
        ("0", 0.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2us", 2e-6),
        ("-5m", FOREVER),
        ("+10s", 10.0),
    ],
)
def test_keep_alive_accepts_what_ollama_accepts(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds) if seconds is not None else parse_keep_alive(value) is None


@pytest.mark.parametrize(
    "value,message",
    [
        ("10", 'time: missing unit in duration "10"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("m", 'time: invalid duration "m"'),
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_refuses_in_gos_words(value, message):
    with pytest.raises(BadRequest) as refused:
        parse_keep_alive(value)
    assert refused.value.message == message


def test_running_models_expire_on_the_clock():
    clock = Clock()
    clock.advance(1000)
    running = RunningModels(clock)
    running.use(MODEL)  # default five minutes
    running.use(PLAIN, 60)
    listing = running.listing()
    assert [m["name"] for m in listing] == ["acme/model:latest", "acme/plain:latest"]
    assert (
        listing[0]["expires_at"] == "1970-01-01T00:21:40.000000Z"
        and listing[0]["context_length"] == 4096
        and listing[0]["size_vram"] == 0
    )
    clock.advance(61)
    assert [m["name"] for m in running.listing()] == ["acme/model:latest"]
    running.use(MODEL, FOREVER)
    clock.advance(10**9)
    assert running.listing()[0]["expires_at"].startswith("2262-")  # 1970 + Go's longest duration
    running.use(MODEL, 0)
    assert running.listing() == []


def test_tool_call_deltas_assembled_across_events():
    reader = ChunkReader(new_id=lambda: "generated")

    def chunk(delta, finish=None):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    assert reader.feed(chunk({"role": "assistant", "content": "Let me look."}))[0].content == "Let me look."
    for delta in (
        {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]},
        {"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": '{"y"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]},
    ):
        assert reader.feed(chunk(delta)) == []  # nothing leaves before the turn is finished
    pieces = reader.feed(chunk({}, "tool_calls"))
    calls = pieces[0].tool_calls
    assert [(c.index, c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        (0, "call_a", "f", {"x": 1}),
        (1, "call_b", "g", {"y": 2}),
    ]
    assert reader.finish_reason == "tool_calls" and reader.close() == []


def test_calls_without_ids_or_index_and_calls_left_open_at_the_end():
    reader = ChunkReader(new_id=iter(["id1", "id2"]).__next__)
    reader.feed(
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"function": {"name": "f", "arguments": "{}"}},
                            {"id": "x", "function": {"name": "g", "arguments": {"a": 1}}},
                        ]
                    }
                }
            ]
        }
    )
    calls = reader.close()[0].tool_calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [("id1", "f", "{}"), ("x", "g", '{"a": 1}')]


def test_reasoning_string_wins_over_details_and_details_alone_count():
    reader = ChunkReader()
    both = reader.feed(
        {"choices": [{"delta": {"reasoning": "abc", "reasoning_details": [{"type": "reasoning.text", "text": "abc"}]}}]}
    )
    assert both[0].thinking == "abc"
    alone = reader.feed(
        {
            "choices": [
                {
                    "delta": {
                        "reasoning_details": [
                            {"type": "reasoning.summary", "summary": "sum"},
                            {"type": "reasoning.encrypted", "data": "xx"},
                        ]
                    }
                }
            ]
        }
    )
    assert alone[0].thinking == "sum"
    assert reader.feed({"choices": [{"delta": {"reasoning_content": "deep"}}]})[0].thinking == "deep"


def test_usage_and_error_events():
    reader = ChunkReader()
    reader.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert (reader.prompt_tokens, reader.completion_tokens) == (3, 5)
    with pytest.raises(UpstreamStreamError, match="crashed"):
        reader.feed(
            {"error": {"message": "crashed", "code": 502}, "choices": [{"delta": {}, "finish_reason": "error"}]}
        )


def test_arguments_that_are_not_json_end_the_stream():
    translator = ChatTranslator(model="m", kind="chat", clock=lambda: 0.0)
    translator.feed(
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}]}}
            ]
        }
    )
    with pytest.raises(UpstreamStreamError, match="not JSON"):
        translator.feed({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})


def test_images_sniffed_from_their_bytes():
    assert sniff_media_type(PNG) == "image/png"
    assert sniff_media_type(JPEG) == "image/jpeg"
    assert sniff_media_type(b"GIF89a....") == "image/gif"
    assert sniff_media_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_media_type(b"hello") is None
    assert image_data_uri(b64(PNG), "images[0]") == "data:image/png;base64," + b64(PNG)
    assert image_data_uri("data:image/jpeg;base64," + b64(PNG), "images[0]").startswith("data:image/png;")
    with pytest.raises(BadRequest, match="not valid base64"):
        image_data_uri("!!!", "images[0]")
    with pytest.raises(BadRequest, match="invalid image input"):
        image_data_uri(base64.b64encode(b"just text").decode(), "images[0]")


def test_history_pairs_results_with_calls_and_keeps_ids():
    messages = chat_messages(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "f", "arguments": {"a": 1}}},
                    {"id": "kept", "function": {"name": "g", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "G", "tool_name": "g"},
            {"role": "tool", "content": "F", "tool_name": "f"},
            {"role": "tool", "content": "late", "tool_name": "h"},
            {"role": "Tool", "content": "by id", "tool_call_id": "explicit"},
        ]
    )
    calls = messages[1]["tool_calls"]
    assert (
        calls[0] == {"id": "call_m1_0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        and calls[1]["id"] == "kept"
    )
    assert messages[1]["content"] is None
    assert [m.get("tool_call_id") for m in messages[2:4]] == ["kept", "call_m1_0"]
    assert messages[4] == {"role": "user", "content": "Result of h: late"}
    assert messages[5] == {"role": "tool", "tool_call_id": "explicit", "content": "by id"}


def test_plans_follow_ollamas_order_of_checks():
    assert plan_chat({"messages": [], "keep_alive": 0, "think": True}, PLAIN, "p").done_reason == "unload"
    with pytest.raises(BadRequest, match='"p" does not support thinking'):
        plan_chat({"messages": [], "think": True}, PLAIN, "p")
    assert plan_chat({"messages": []}, PLAIN, "p").done_reason == "load"
    with pytest.raises(BadRequest, match="invalid think value"):
        plan_chat({"messages": [], "think": "extreme"}, MODEL, "m")
    with pytest.raises(BadRequest, match="raw mode does not support"):
        plan_generate({"prompt": "x", "raw": True, "context": [1]}, PLAIN, "p")
    assert (
        plan_generate({"prompt": "", "raw": True, "system": "s", "keep_alive": "0s"}, PLAIN, "p").done_reason
        == "unload"
    )
    plan = plan_chat(
        {
            "messages": [{"role": "user", "content": "q"}],
            "think": "max",
            "options": {"num_ctx": 8192, "temperature": 0.2},
        },
        MODEL,
        "m",
    )
    assert (
        plan.upstream["reasoning"] == {"effort": "xhigh"}
        and plan.upstream["temperature"] == 0.2
        and "num_ctx" not in plan.upstream
    )


def test_format_values():
    assert response_format("") is None and response_format(None) is None
    assert response_format("json") == {"type": "json_object"}
    assert response_format({"type": "object"}) == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    for bad in ("yaml", 3, ["json"]):
        with pytest.raises(BadRequest, match="invalid format"):
            response_format(bad)


def test_context_round_trip():
    history = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]
    context = encode_context(history)
    assert all(isinstance(v, int) and 0 <= v < 256 for v in context)
    assert decode_context(context) == history
    assert decode_context([1, 2, 3]) == [] and decode_context([100000] * 40) == []


def test_the_stamp_of_a_streamed_line_is_rfc3339s_text():
    import random

    from ollama_proxy.wire.models import rfc3339, rfc3339_bytes

    rng = random.Random(7)  # the same times every run
    times = [rng.uniform(-1e6, 4e9) for _ in range(20000)]
    # Half a microsecond either side of rounding, and the carry into the next second.
    times += [1.7e9 + k / 1e6 + d for k in range(0, 10**6, 9973) for d in (0, 4.999e-7, 5e-7, 5.001e-7)]
    times += [0.0, 1.9999996, 1e9 + 0.9999995, 1e9 + 0.9999994, -1.5, -2.0]
    assert [rfc3339_bytes(t) for t in times] == [rfc3339(t).encode() for t in times]
