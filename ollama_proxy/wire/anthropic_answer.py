"""Answers of ``POST /v1/messages``: upstream chunks in, Anthropic's events out (pure).

:class:`MessagesRenderer` reads OpenAI chunks (any provider) and writes the
Messages stream in Anthropic's order: ``message_start`` and a ``ping``, then
each content block opened, filled with deltas (``thinking_delta``,
``text_delta``, ``input_json_delta``) and closed before the next one starts,
then ``message_delta`` (stop reason, usage) and ``message_stop``. Non-streamed,
it assembles the same blocks into one ``message``.

:class:`MessagesPassthrough` does the same for an upstream that speaks Messages
itself: its events go on as they came (only the model is the name the client
asked for), so thinking signatures and cache usage survive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.wire.chunks import CallDelta, ChunkReader, RendersBlocks, ToolCall, new_call_id
from ollama_proxy.wire.jsontext import as_object
from ollama_proxy.wire.plain_chunk import Frame, TextWriter, text_writer
from ollama_proxy.wire.timings import Timings
from ollama_proxy.wire.tools import arguments_object

# The key under which a native upstream's own event travels through the chunk reader.
NATIVE_EVENT = "x-anthropic-event"
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# How a streamed block starts: empty, filled by its deltas.
_EMPTY_BLOCKS = {
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    "text": {"type": "text", "text": ""},
}


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """One Messages stream event (its ``type`` is also its SSE ``event:`` name)."""
    return {"type": kind, **fields}


def error_event(message: str, kind: str = "api_error") -> dict[str, Any]:
    """The event that ends a stream which failed after output began."""
    return event("error", error={"type": kind, "message": message})


@dataclass
class MessagesRenderer(RendersBlocks):
    """Turns upstream OpenAI chunks into one Messages answer (streamed or whole)."""

    model: str
    message_id: str
    clock: Callable[[], float]
    keep_text: bool = False
    show_thinking: bool = False
    new_call_id: Callable[[], str] = new_call_id
    timings: Timings = field(init=False)
    reader: ChunkReader = field(init=False)
    started: bool = False
    blocks: list[dict[str, Any]] = field(default_factory=list)  # the whole answer, when kept
    _open: str | None = None  # the kind of the block being streamed
    _index: int = -1
    _tool_calls: int = 0
    _open_call: str = ""  # the id of the tool call whose block is open
    _streamed: set[str] = field(default_factory=set)  # calls whose arguments went out as they came

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())
        self.reader = ChunkReader(self.new_call_id, stream_calls=not self.keep_text)

    def _start(self) -> list[dict[str, Any]]:
        if self.started or self.keep_text:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [event("message_start", message=message), event("ping")]

    def _thinking(self, text: str) -> list[dict[str, Any]]:
        return self._delta("thinking", {"type": "thinking_delta", "thinking": text})

    def _text(self, text: str) -> list[dict[str, Any]]:
        return self._delta("text", {"type": "text_delta", "text": text})

    def text_writer(self, frame: Frame, write: Callable[[bytes], None], feed: TextWriter) -> TextWriter | None:
        """A function that writes (framed as ``frame`` says, to ``write``) the
        ``content_block_delta`` event :meth:`feed` makes of a chunk holding only the text
        it is given, while a text block is open (see
        :func:`~ollama_proxy.wire.plain_chunk.text_writer`); ``None``: no such events."""
        if self.keep_text:
            return None
        before, after = frame("content_block_delta")
        made: list[Any] = [None, b""]  # the block index the head was made for, and the head

        def head(text: str) -> bytes | None:
            if self._open != "text":
                return None  # a text block opens (and any other closes) through feed
            if made[0] != self._index:
                opening = b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":' % self._index
                made[0], made[1] = self._index, before + opening
            return made[1]

        return text_writer(self, (head, None, b"}}" + after), write, feed, ready=lambda: self.started)

    def _delta(self, kind: str, delta: dict[str, Any]) -> list[dict[str, Any]]:
        if self.keep_text:
            key = "thinking" if kind == "thinking" else "text"
            if self.blocks and self.blocks[-1]["type"] == kind:
                self.blocks[-1][key] += delta[key]
            else:
                self.blocks.append({"type": kind, key: delta[key], **({"signature": ""} if kind == "thinking" else {})})
            return []
        out = []
        if self._open != kind:
            out += self._stop_block()
            self._index += 1
            self._open = kind
            block = dict(_EMPTY_BLOCKS[kind])
            out.append(event("content_block_start", index=self._index, content_block=block))
        out.append(event("content_block_delta", index=self._index, delta=delta))
        return out

    def _signed(self, signature: str) -> list[dict[str, Any]]:
        if self.keep_text:
            thoughts = [b for b in self.blocks if b["type"] == "thinking"]
            if thoughts:
                thoughts[-1]["signature"] = signature
            return []
        if self._open != "thinking":
            return []  # its block is closed: nothing left to seal
        delta = {"type": "signature_delta", "signature": signature}
        return [event("content_block_delta", index=self._index, delta=delta)]

    def _call_delta(self, delta: CallDelta) -> list[dict[str, Any]]:
        out = []
        if delta.first:
            out += self._stop_block()
            self._index += 1
            self._open, self._open_call = "tool_use", delta.id
            self._streamed.add(delta.id)
            block = {"type": "tool_use", "id": delta.id, "name": delta.name, "input": {}}
            out.append(event("content_block_start", index=self._index, content_block=block))
        elif self._open != "tool_use" or self._open_call != delta.id:
            # Blocks follow one another: a call resumed after another began cannot be told.
            raise UpstreamStreamError(f"the upstream interleaved the arguments of '{delta.name}' with another call")
        if delta.fragment:
            partial = {"type": "input_json_delta", "partial_json": delta.fragment}
            out.append(event("content_block_delta", index=self._index, delta=partial))
        return out

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        arguments = arguments_object(call)  # not JSON: an error event, not a broken tool call
        self._tool_calls += 1
        if call.id in self._streamed:
            # Its arguments went out as they came: the call is complete, its block closes.
            return self._stop_block() if self._open == "tool_use" and self._open_call == call.id else []
        if self.keep_text:
            self.blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
            return []
        out = self._stop_block()
        self._index += 1
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        out.append(event("content_block_start", index=self._index, content_block=block))
        if arguments:
            text = json.dumps(arguments, ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": text}
            out.append(event("content_block_delta", index=self._index, delta=delta))
        out.append(event("content_block_stop", index=self._index))
        return out

    def _stop_block(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [event("content_block_stop", index=self._index)]

    def stop_reason(self) -> str:
        if self._tool_calls:
            return "tool_use"
        return _STOP_REASONS.get(self.reader.finish_reason or "stop", "end_turn")

    def usage(self) -> dict[str, int]:
        return {"input_tokens": self.prompt_tokens or 0, "output_tokens": self.completion_tokens or 0}

    def closing(self) -> list[dict[str, Any]]:
        """The stream's end: the open block closed, the stop reason and usage, ``message_stop``."""
        self.timings.finished = self.clock()
        out = self._start() + self._stop_block()
        delta = {"stop_reason": self.stop_reason(), "stop_sequence": None}
        out.append(event("message_delta", delta=delta, usage=self.usage()))
        out.append(event("message_stop"))
        return out

    def failure(self, message: str) -> list[dict[str, Any]]:
        """The end of a stream that broke after output began."""
        return [error_event(message)]

    def final(self) -> dict[str, Any]:
        """The whole non-streamed ``message``."""
        self.timings.finished = self.clock()
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks,
            "stop_reason": self.stop_reason(),
            "stop_sequence": None,
            "usage": self.usage(),
        }


def usage_counts(usage: Any) -> tuple[int, int | None]:
    """Input tokens (cache writes and reads included) and output tokens of a Messages ``usage``."""
    if not isinstance(usage, Mapping):
        return 0, None
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    prompt = sum(int(usage.get(k) or 0) for k in keys)
    output = usage.get("output_tokens")
    return prompt, output if isinstance(output, int) and not isinstance(output, bool) else None


def native_decoder(label: str) -> Callable[[Mapping[str, Any]], list[dict[str, Any]]]:
    """For an upstream speaking Messages: each event carried whole under :data:`NATIVE_EVENT`.

    A stop reason also counts as a finish (the stream reader then knows the answer
    is complete); an ``error`` event ends the stream as an upstream failure.
    """

    def decode(upstream_event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = upstream_event.get("type")
        if kind == "error":
            error = as_object(upstream_event.get("error"))
            message = error.get("message", "") if isinstance(error, Mapping) else ""
            raise UpstreamStreamError(f"{label} stream error: {error.get('type', 'error')}: {message}".rstrip(": "))
        chunk: dict[str, Any] = {NATIVE_EVENT: dict(upstream_event)}
        delta = upstream_event.get("delta")
        if kind == "message_delta" and isinstance(delta, Mapping) and delta.get("stop_reason"):
            chunk["choices"] = [{"index": 0, "delta": {}, "finish_reason": str(delta["stop_reason"])}]
        return [chunk]

    return decode


@dataclass
class MessagesPassthrough:
    """Relays a native Messages stream, or gathers it into one ``message``."""

    model: str
    clock: Callable[[], float]
    keep_text: bool = False
    timings: Timings = field(init=False)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    answer_size: int = 0  # characters of deltas read (a gathered answer has a cap)
    tool_call_count: int = 0  # content blocks begun (so is their number)
    message: dict[str, Any] = field(default_factory=dict)
    _json: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        upstream_event = chunk.get(NATIVE_EVENT)
        if not isinstance(upstream_event, dict):
            return []
        kind = upstream_event.get("type")
        if kind == "message_start" and isinstance(upstream_event.get("message"), Mapping):
            upstream_event = {**upstream_event, "message": {**upstream_event["message"], "model": self.model}}
            self.message = json.loads(json.dumps(upstream_event["message"]))
            self._usage(self.message.get("usage"))
        elif kind == "message_delta":
            self._usage(upstream_event.get("usage"))
        elif kind in ("content_block_start", "content_block_delta"):
            self.tool_call_count += kind == "content_block_start"
            if self.timings.first_token is None:
                self.timings.first_token = self.clock()
            delta = upstream_event.get("delta")
            if isinstance(delta, Mapping):
                self.answer_size += sum(len(v) for v in delta.values() if isinstance(v, str))
        if self.keep_text:
            self._gather(upstream_event)
            return []
        return [upstream_event]

    def close(self) -> list[dict[str, Any]]:
        self.timings.finished = self.clock()
        return []

    def closing(self) -> list[dict[str, Any]]:
        return []  # message_stop came from upstream

    def failure(self, message: str) -> list[dict[str, Any]]:
        return [error_event(message)]

    def final(self) -> dict[str, Any]:
        self.timings.finished = self.clock()
        return self.message

    def _usage(self, usage: Any) -> None:
        prompt, output = usage_counts(usage)
        if prompt:
            self.prompt_tokens = prompt
        if output is not None:
            self.completion_tokens = output

    def _gather(self, upstream_event: Mapping[str, Any]) -> None:
        """Apply one event to the message being gathered (as Anthropic's SDKs do)."""
        kind = upstream_event.get("type")
        content = self.message.setdefault("content", [])
        index = upstream_event.get("index")
        if kind == "content_block_start" and isinstance(upstream_event.get("content_block"), Mapping):
            content.append(dict(upstream_event["content_block"]))
        elif kind == "content_block_delta" and isinstance(index, int) and 0 <= index < len(content):
            block, delta = content[index], upstream_event.get("delta") or {}
            kind = delta.get("type")
            if kind == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif kind == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif kind == "signature_delta":
                block["signature"] = str(delta.get("signature", ""))
            elif kind == "input_json_delta":
                self._json.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif kind == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
        elif kind == "content_block_stop" and isinstance(index, int) and index in self._json:
            text = "".join(self._json.pop(index)).strip()
            try:
                content[index]["input"] = json.loads(text) if text else {}
            except ValueError:
                raise UpstreamStreamError("the model's tool input is not valid JSON") from None
        elif kind == "message_delta":
            delta = upstream_event.get("delta") or {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self.message[key] = delta[key]
            usage = upstream_event.get("usage")
            if isinstance(usage, Mapping):
                self.message.setdefault("usage", {}).update({k: v for k, v in usage.items() if v is not None})
