"""The plain-chunk fast path says what the general path says, byte for byte.

A streamed token usually skips :class:`ChunkReader` and the answer's dict: the
upstream chunk is read straight to its text and the line written around it. Here
every shape the general path acts on is shown to be refused by the fast reader,
and what the fast path writes is compared with what the general path writes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ollama_proxy.wire.chunks import ChunkReader, Piece
from ollama_proxy.wire.framing import compact
from ollama_proxy.wire.ollama_answer import ChatTranslator
from ollama_proxy.wire.openai_answer import OpenAIRenderer
from ollama_proxy.wire.plain_chunk import json_string, plain_content


def chunk(delta: Any, finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


PLAIN = [
    chunk({"content": "Hello"}),
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": None}),
    chunk({}),
    chunk({"content": 'a "quoted"\n\ttab \u2028 \x00 \x7f é 😀'}),
    chunk({"content": "x", "reasoning": None, "reasoning_content": None, "refusal": None, "tool_calls": None}),
    chunk({"content": "x"}, usage=None, error=None, system_fingerprint="fp", provider="p"),
    {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None, "native_finish_reason": None}]},
    {"choices": [{"delta": {"content": "no index"}}]},
]

NOT_PLAIN = [
    chunk({"content": "x"}, "stop"),
    chunk({"content": "x"}, "error"),
    chunk({"content": "x"}, usage={"prompt_tokens": 1, "completion_tokens": 2}),
    chunk({"content": "x"}, error={"message": "boom"}),
    chunk({"content": "x"}, error=""),
    chunk({"reasoning": "thinking"}),
    chunk({"reasoning_content": "thinking"}),
    chunk({"content": "", "reasoning_details": [{"type": "reasoning.text", "text": "t"}]}),
    chunk({"refusal": "no"}),
    chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
    chunk({"content": "x", "audio": {"data": "..."}}),
    chunk(None),
    chunk({"content": 5}),
    {"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [{"token": "x", "logprob": -1}]}}]},
    {"choices": [{"index": 1, "delta": {"content": "other answer"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    {"choices": []},
    {"usage": {"prompt_tokens": 1}},
    {"choices": [{"index": 0, "message": {"content": "whole"}}]},
]


@pytest.mark.parametrize("obj", PLAIN)
def test_a_plain_chunk_is_only_its_text_to_the_general_reader(obj: dict[str, Any]) -> None:
    text = plain_content(json.dumps(obj))
    assert text is not None
    reader = ChunkReader()
    assert reader.feed(obj) == ([Piece(content=text)] if text else [])
    assert (reader.finish_reason, reader.prompt_tokens, reader.calls_open) == (None, None, 0)


@pytest.mark.parametrize("obj", NOT_PLAIN)
def test_anything_else_takes_the_general_path(obj: dict[str, Any]) -> None:
    assert plain_content(json.dumps(obj)) is None


@pytest.mark.parametrize("data", ["[DONE]", "", "{", '"text"', "{}", '{"choices":[{"delta":{"content":"\\ud800"}}]}'])
def test_what_is_not_a_chunk_at_all_takes_the_general_path(data: str) -> None:
    assert plain_content(data) is None


def test_json_string_writes_what_the_general_encoder_writes() -> None:
    text = "".join(chr(c) for c in range(0, 0x3000)) + "😀"
    assert json_string(text) == compact(text)
    assert json_string("lone \ud800") is None  # the general path writes U+FFFD


class Ticks:
    """A clock that moves on every reading, as the reactor's does."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.25

    def __call__(self) -> float:
        self.now += 0.001234
        return self.now


TEXTS = ["Hel", "", "lo é", 'a "q" \\ \n', "😀", "end"]


def fast(translator: Any, texts: list[str]) -> list[bytes]:
    """Lines as the relay writes them with the fast path: the text writer's, and what it feeds."""
    out: list[bytes] = []

    def feed(text: str) -> None:
        out.extend(compact(o) + b"\n" for o in translator.feed(chunk({"content": text})))

    write = translator.text_writer(lambda kind: (b"", b"\n"), out.append, feed)
    for text in texts:
        write(text)
    return out


def general(translator: Any, texts: list[str]) -> list[bytes]:
    return [compact(o) + b"\n" for text in texts for o in translator.feed(chunk({"content": text}))]


def fed(translator: Any, text: str) -> bool:
    """Whether the text writer leaves ``text`` to the general path."""
    left: list[str] = []
    translator.text_writer(lambda kind: (b"", b""), lambda line: None, left.append)(text)
    return left == [text]


@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_native_lines_are_the_general_paths_bytes(kind: str) -> None:
    a = ChatTranslator(model="acme/m ü", kind=kind, clock=Ticks())
    b = ChatTranslator(model="acme/m ü", kind=kind, clock=Ticks())
    assert not fed(a, "x")  # the fast path is taken
    b.feed(chunk({"content": "x"}))
    assert fast(a, TEXTS) == general(b, TEXTS)
    assert (a.answer_size, a.timings, a.pieces) == (b.answer_size, b.timings, b.pieces)
    assert compact(a.final()) == compact(b.final())


def test_native_text_that_the_fast_path_cannot_write_is_fed() -> None:
    translator = ChatTranslator(model="m", kind="chat", clock=Ticks())
    assert fed(translator, "lone \ud800")
    assert translator.answer_size == 0  # nothing counted twice when it is fed
    kept = ChatTranslator(model="m", kind="chat", clock=Ticks(), keep_text=True)
    kept.text_writer(lambda kind: (b"", b""), None, print)("x")  # a whole answer gathers, writes nothing
    assert (kept.pieces, kept.answer_size) == (["x"], 1)


def test_openai_chunks_are_the_general_paths_bytes() -> None:
    def renderer() -> OpenAIRenderer:
        return OpenAIRenderer(kind="chat", model="acme/m", response_id="chatcmpl-1", clock=Ticks())

    a, b = renderer(), renderer()
    assert fed(renderer(), "first")  # the first chunk carries the role: fed
    assert fast(a, ["first", *TEXTS]) == general(b, ["first", *TEXTS])
    assert not fed(a, "x")
    b.feed(chunk({"content": "x"}))
    assert (a.answer_size, a.timings) == (b.answer_size, b.timings)
    assert [compact(c) for c in a.closing_chunks()] == [compact(c) for c in b.closing_chunks()]
    completion = OpenAIRenderer(kind="completion", model="m", response_id="cmpl-1", clock=Ticks())
    assert completion.text_writer(lambda kind: (b"", b""), print, print) is None


# -- every streamed surface, a stream that switches between text, thinking and tools --

STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"content": "", "reasoning": "hmm"}),
    chunk({"content": "after thought"}),
    chunk({"content": ""}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
    chunk({"content": "and text é \ud800 again"}),
    chunk({"content": "more"}),
    chunk({}, "tool_calls"),
    {"id": "gen-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}},
]


def _surfaces() -> dict[str, Any]:
    from ollama_proxy.api.relay import ChatRelay, NamedEventRelay, SSERelay
    from ollama_proxy.wire.anthropic_answer import MessagesRenderer
    from ollama_proxy.wire.framing import ndjson, sse_event
    from ollama_proxy.wire.responses_answer import ResponsesRenderer

    def named(obj: dict[str, Any]) -> bytes:
        return sse_event(obj, obj["type"])

    return {
        "native chat": (lambda: ChatTranslator(model="m", kind="chat", clock=Ticks()), ChatRelay, ndjson),
        "native generate": (lambda: ChatTranslator(model="m", kind="generate", clock=Ticks()), ChatRelay, ndjson),
        "v1 chat": (
            lambda: OpenAIRenderer(kind="chat", model="m", response_id="chatcmpl-1", clock=Ticks()),
            SSERelay,
            sse_event,
        ),
        "messages": (
            lambda: MessagesRenderer(model="m", message_id="msg_1", clock=Ticks(), show_thinking=True),
            NamedEventRelay,
            named,
        ),
        "responses": (
            lambda: ResponsesRenderer(model="m", clock=Ticks(), make_id=lambda prefix: prefix + "_1"),
            NamedEventRelay,
            named,
        ),
    }


def _closing(translator: Any) -> list[dict[str, Any]]:
    for name in ("closing", "closing_chunks"):
        if hasattr(translator, name):
            return getattr(translator, name)()
    return [translator.final()]


@pytest.mark.parametrize("surface", list(_surfaces()))
def test_every_surface_writes_the_general_paths_bytes(surface: str) -> None:
    make, relay, encode = _surfaces()[surface]
    frame = lambda kind: relay.text_frame(None, kind)  # noqa: E731 - the relay's own framing, without a request

    general = make()
    expected = [encode(o) for c in STREAM for o in general.feed(c)] + [encode(o) for o in general.close()]
    expected += [encode(o) for o in _closing(general)]

    fast = make()
    out: list[bytes] = []

    def feed(text: str) -> None:
        out.extend(encode(o) for o in fast.feed(chunk({"content": text})))

    write = fast.text_writer(frame, out.append, feed)
    written = 0
    for c in STREAM:
        text = plain_content(json.dumps(c))
        if text is None:
            out.extend(encode(o) for o in fast.feed(c))
        else:
            before = len(out)
            write(text)
            written += len(out) - before
    out += [encode(o) for o in fast.close()] + [encode(o) for o in _closing(fast)]
    assert b"".join(out) == b"".join(expected)
    assert written >= 4  # the plain text went through the writer
    assert (fast.answer_size, fast.timings) == (general.answer_size, general.timings)


# -- Anthropic's and Ollama's streams: their decoders' plain events --------------------


def text_delta(delta: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": delta, **extra}


ANTHROPIC_PLAIN = [
    text_delta({"type": "text_delta", "text": "Hello"}),
    text_delta({"type": "text_delta", "text": "é 😀 \n"}, index=3),
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "no index", "extra": 1}},
]
ANTHROPIC_NOT_PLAIN = [
    text_delta({"type": "text_delta", "text": ""}),
    text_delta({"type": "text_delta", "text": 5}),
    text_delta({"type": "thinking_delta", "thinking": "hmm"}),
    text_delta({"type": "input_json_delta", "partial_json": '{"a"'}),
    text_delta({"type": "signature_delta", "signature": "sig"}),
    text_delta({"type": "text_delta", "text": "x"}, index="0"),
    text_delta(None),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "x"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    {"delta": {"type": "text_delta", "text": "x"}},
]


def ollama_line(message: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": "2026-11-30T18:00:00Z", "message": message, "done": False, **extra}


OLLAMA_PLAIN = [
    ollama_line({"role": "assistant", "content": "Hello"}),
    ollama_line({"role": "assistant", "content": "é 😀", "thinking": "", "tool_calls": [], "images": None}),
    {"message": {"content": "bare"}},
]
OLLAMA_NOT_PLAIN = [
    ollama_line({"role": "assistant", "content": ""}),
    ollama_line({"role": "assistant", "content": 5}),
    ollama_line({"role": "assistant", "content": "x", "thinking": "hmm"}),
    ollama_line({"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}),
    ollama_line({"role": "assistant", "content": "x"}, done=True, done_reason="stop", eval_count=3),
    ollama_line({"role": "assistant", "content": "x"}, error=""),
    ollama_line({"role": "assistant", "content": "x"}, error="boom"),
    ollama_line(None),
    {"error": "model not found"},
]


def _decoders() -> tuple[Any, Any]:
    from ollama_proxy.wire.anthropic_upstream import AnthropicDecoder
    from ollama_proxy.wire.ollama_upstream import OllamaDecoder

    return AnthropicDecoder, OllamaDecoder


@pytest.mark.parametrize("which,event", [(0, e) for e in ANTHROPIC_PLAIN] + [(1, line) for line in OLLAMA_PLAIN])
def test_a_plain_event_is_only_its_text_to_its_decoder(which: int, event: dict[str, Any]) -> None:
    decoder = _decoders()[which]()
    text = decoder.plain(json.dumps(event))
    assert text
    assert [c["choices"] for c in decoder(event)] == [[{"index": 0, "delta": {"content": text}, "finish_reason": None}]]
    assert vars(decoder) == vars(_decoders()[which]())  # nothing a later event reads has changed


@pytest.mark.parametrize(
    "which,event", [(0, e) for e in ANTHROPIC_NOT_PLAIN] + [(1, line) for line in OLLAMA_NOT_PLAIN]
)
def test_any_other_event_is_decoded_whole(which: int, event: dict[str, Any]) -> None:
    assert _decoders()[which].plain(json.dumps(event)) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: ChatTranslator(model="m", kind="chat", clock=Ticks(), keep_text=True),
        lambda: ChatTranslator(model="m", kind="generate", clock=Ticks(), keep_text=True),
        lambda: OpenAIRenderer(kind="chat", model="m", response_id="chatcmpl-1", clock=Ticks(), keep_text=True),
        lambda: OpenAIRenderer(kind="completion", model="m", response_id="cmpl-1", clock=Ticks(), keep_text=True),
    ],
)
def test_a_gathered_answer_is_the_general_paths(make: Any) -> None:
    general, fast = make(), make()
    for c in STREAM:
        general.feed(c)
    gather = fast.text_writer(lambda kind: (b"", b""), None, lambda text: fast.feed(chunk({"content": text})))
    for c in STREAM:
        text = plain_content(json.dumps(c))
        if text is None:
            fast.feed(c)
        else:
            gather(text)
    general.close(), fast.close()
    assert compact(fast.final()) == compact(general.final())
    assert (fast.answer_size, fast.timings) == (general.answer_size, general.timings)
