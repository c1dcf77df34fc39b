"""Answers of ``POST /v1/responses``: upstream chunks in, a ``response`` out (pure).

:class:`ResponsesRenderer` reads OpenAI chunks (any provider) and writes the
Responses stream: ``response.created`` and ``response.in_progress``, then each
output item added, filled and done before the next one (a ``reasoning`` item
with its summary, a ``message`` with one ``output_text`` part, ``function_call``
items with their arguments), then ``response.completed`` (or
``response.incomplete`` when the token cap cut it). Every event carries its
``sequence_number``. A failure after output began ends with ``response.failed``.
Non-streamed, the same items make up one ``response`` object.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.wire.chunks import CallDelta, ChunkReader, RendersBlocks, ToolCall, new_call_id
from ollama_proxy.wire.plain_chunk import Frame, TextWriter, json_string, text_writer
from ollama_proxy.wire.timings import Timings


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_...``, ``msg_...``, ``fc_...``, ``rs_...``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponsesRenderer(RendersBlocks):
    """Turns upstream OpenAI chunks into one Responses answer (streamed or whole)."""

    model: str
    clock: Callable[[], float]
    echo: dict[str, Any] = field(default_factory=dict)
    keep_text: bool = False
    show_thinking: bool = True
    encrypted: bool = False  # put the reasoning's signature in encrypted_content (as include asked)
    make_id: Callable[[str], str] = new_id
    new_call_id: Callable[[], str] = new_call_id
    timings: Timings = field(init=False)
    reader: ChunkReader = field(init=False)
    response_id: str = field(init=False)
    created_at: int = field(init=False)
    output: list[dict[str, Any]] = field(default_factory=list)  # items done so far
    started: bool = False
    _sequence: int = 0
    _open: dict[str, Any] | None = None  # the item being streamed
    _streamed: set[str] = field(default_factory=set)  # calls whose arguments went out as they came

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())
        self.reader = ChunkReader(self.new_call_id, stream_calls=not self.keep_text)
        self.response_id = self.make_id("resp")
        self.created_at = int(self.timings.started)

    # -- the response object --------------------------------------------------------
    def response(self, status: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``response`` object as it stands, with ``status``."""
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": self.model,
            "output": list(self.output) if output is None else output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": None,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }
        body.update(self.echo)
        if status in ("completed", "incomplete"):
            body["usage"] = self.usage()
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        return body

    def usage(self) -> dict[str, Any]:
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens or 0
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }

    def status(self) -> str:
        return "incomplete" if self.reader.finish_reason == "length" else "completed"

    # -- events ----------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        obj = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return obj

    def _start(self) -> list[dict[str, Any]]:
        if self.started or self.keep_text:
            return []
        self.started = True
        return [
            self._event("response.created", response=self.response("in_progress")),
            self._event("response.in_progress", response=self.response("in_progress")),
        ]

    def _index(self) -> int:
        return len(self.output)

    def _begin(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._finish_open()
        self._open = item
        if self.keep_text:
            return out
        added = {k: (list(v) if isinstance(v, list) else v) for k, v in item.items()}
        added["status"] = "in_progress"
        out.append(self._event("response.output_item.added", output_index=self._index(), item=added))
        return out

    def _thinking(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != "reasoning":
            item = {"type": "reasoning", "id": self.make_id("rs"), "summary": []}
            out += self._begin({**item})
            self._open["summary_text"] = []  # type: ignore[index]
            if not self.keep_text:
                part = {"type": "summary_text", "text": ""}
                out.append(self._located("response.reasoning_summary_part.added", summary_index=0, part=part))
        assert self._open is not None
        self._open["summary_text"].append(text)
        if not self.keep_text:
            out.append(self._located("response.reasoning_summary_text.delta", summary_index=0, delta=text))
        return out

    def _text(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != "message":
            item = {"type": "message", "id": self.make_id("msg"), "status": "completed", "role": "assistant"}
            out += self._begin({**item, "content": []})
            self._open["text"] = []  # type: ignore[index]
            if not self.keep_text:
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out.append(self._located("response.content_part.added", content_index=0, part=part))
        assert self._open is not None
        self._open["text"].append(text)
        if not self.keep_text:
            out.append(self._located("response.output_text.delta", content_index=0, delta=text, logprobs=[]))
        return out

    def _signed(self, signature: str) -> list[dict[str, Any]]:
        # Sealed reasoning goes back to the client opaque, as OpenAI's own does.
        if self.encrypted and self._open is not None and self._open["type"] == "reasoning":
            self._open["encrypted_content"] = signature
        return []

    def _call_delta(self, delta: CallDelta) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if delta.first:
            self._streamed.add(delta.id)
            item = self._call_item(delta.id, delta.name)
            out += self._begin(item)
            item["fragments"] = []
        elif self._open is None or self._open.get("call_id") != delta.id:
            # Items follow one another: a call resumed after another began cannot be told.
            raise UpstreamStreamError(f"the upstream interleaved the arguments of '{delta.name}' with another call")
        if delta.fragment:
            assert self._open is not None
            self._open["fragments"].append(delta.fragment)
            out.append(self._located("response.function_call_arguments.delta", delta=delta.fragment))
        return out

    def _call_item(self, call_id: str, name: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": self.make_id("fc"),
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "completed",
        }

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        if call.id in self._streamed:
            # Its arguments went out as they came: the call is complete, its item is done.
            open_here = self._open is not None and self._open.get("call_id") == call.id
            return self._finish_open() if open_here else []
        item = self._call_item(call.id, call.name)
        out = self._begin(item)
        arguments = call.arguments or "{}"
        item["arguments"] = arguments
        if not self.keep_text:
            out.append(self._located("response.function_call_arguments.delta", delta=arguments))
        out += self._finish_open()
        return out

    def text_writer(self, frame: Frame, write: Callable[[bytes], None], feed: TextWriter) -> TextWriter | None:
        """A function that writes (framed as ``frame`` says, to ``write``) the
        ``response.output_text.delta`` event :meth:`feed` makes of a chunk holding only
        the text it is given, while a message item is open (see
        :func:`~ollama_proxy.wire.plain_chunk.text_writer`); ``None``: no such events."""
        if self.keep_text:
            return None
        before, after = frame("response.output_text.delta")
        opening = before + b'{"type":"response.output_text.delta","sequence_number":'
        made: list[Any] = [None, b""]  # the item the head's rest was made for, and that rest

        def head(text: str) -> bytes | None:
            item = self._open
            if item is None or item["type"] != "message":
                return None  # a message item opens (and any other closes) through feed
            if made[0] is not item:
                item_id = json_string(item["id"])
                if item_id is None:
                    return None
                rest = b',"item_id":%s,"output_index":%d,"content_index":0,"delta":' % (item_id, self._index())
                made[0], made[1] = item, rest
            sequence = self._sequence
            self._sequence += 1
            item["text"].append(text)
            return b"%s%d%s" % (opening, sequence, made[1])

        return text_writer(self, (head, None, b',"logprobs":[]}' + after), write, feed, ready=lambda: self.started)

    def _located(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert self._open is not None
        return self._event(kind, item_id=self._open["id"], output_index=self._index(), **fields)

    def _finish_open(self) -> list[dict[str, Any]]:
        """Close the item being streamed: its ``.done`` events, then it joins the output."""
        item = self._open
        out: list[dict[str, Any]] = []
        if item is None:
            return out
        streaming = not self.keep_text
        if item["type"] == "reasoning":
            text = "".join(item.pop("summary_text"))
            part: dict[str, Any] = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            if streaming:
                out.append(self._located("response.reasoning_summary_text.done", summary_index=0, text=text))
                out.append(self._located("response.reasoning_summary_part.done", summary_index=0, part=part))
        elif item["type"] == "message":
            text = "".join(item.pop("text"))
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            if streaming:
                out.append(self._located("response.output_text.done", content_index=0, text=text, logprobs=[]))
                out.append(self._located("response.content_part.done", content_index=0, part=part))
        elif streaming:
            if "fragments" in item:
                item["arguments"] = "".join(item.pop("fragments")) or "{}"
            done = self._located("response.function_call_arguments.done", arguments=item["arguments"])
            out.append({**done, "name": item["name"]})
        if streaming:
            out.append(self._event("response.output_item.done", output_index=self._index(), item=item))
        self.output.append(item)
        self._open = None
        return out

    def closing(self) -> list[dict[str, Any]]:
        """The stream's end: the open item done, then ``response.completed`` (or ``.incomplete``)."""
        self.timings.finished = self.clock()
        out = self._start() + self._finish_open()
        status = self.status()
        out.append(self._event(f"response.{status}", response=self.response(status)))
        return out

    def failure(self, message: str) -> list[dict[str, Any]]:
        """The end of a stream that broke after output began: ``response.failed``."""
        response = self.response("failed")
        response["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=response)]

    def final(self) -> dict[str, Any]:
        """The whole non-streamed ``response``."""
        self.timings.finished = self.clock()
        self._finish_open()
        return self.response(self.status())
