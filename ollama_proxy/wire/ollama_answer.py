"""OpenAI stream chunks as Ollama's native answers (pure, no I/O).

A :class:`ChatTranslator` turns each upstream chunk into the ``/api/chat`` or
``/api/generate`` lines Ollama streams, and assembles the closing object (the
whole answer when not streamed); :func:`instant_answer` is the answer to a
request that only loads or unloads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ollama_proxy.wire.chunks import ChunkReader, Piece, ReadsChunks, new_call_id
from ollama_proxy.wire.models import rfc3339
from ollama_proxy.wire.ollama_generate import encode_context
from ollama_proxy.wire.ollama_request import ChatPlan
from ollama_proxy.wire.plain_chunk import Frame, TextWriter, json_string, text_gatherer, text_writer
from ollama_proxy.wire.timings import Timings
from ollama_proxy.wire.tools import ollama_tool_call


def instant_answer(kind: str, name: str, done_reason: str, now: float) -> dict[str, Any]:
    """The answer to an empty prompt (``load``) or one that also unloads (``unload``)."""
    answer: dict[str, Any] = {"model": name, "created_at": rfc3339(now)}
    if kind == "chat":
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer["done"] = True
    answer["done_reason"] = done_reason
    return answer


@lru_cache(maxsize=1024)
def _text_line(model: str, kind: str, before: bytes, after: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The bytes a streamed line of text encodes to (framed), with only the stamp and the
    text left open; shared by the streams of one model (thousands may be open)."""
    name = json_string(model)
    if name is None:
        return None
    text_field = b'","message":{"role":"assistant","content":' if kind == "chat" else b'","response":'
    tail = b'},"done":false}' if kind == "chat" else b',"done":false}'
    return before + b'{"model":' + name + b',"created_at":"', text_field, tail + after


# Ollama ends a turn that called tools with "stop" too.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "eos": "stop",
}


@dataclass
class ChatTranslator(ReadsChunks):
    """Turns OpenAI stream chunks into Ollama objects for one request.

    ``kind`` is ``chat`` (answers carry ``message``) or ``generate`` (answers carry
    ``response``). With ``keep_text`` (non-streamed answers) the closing object
    carries the whole answer: text, thinking, tool calls and logprobs.
    """

    model: str
    kind: str
    clock: Callable[[], float]
    keep_text: bool = False
    show_thinking: bool = True
    history: list[dict[str, str]] | None = None
    prompt: str = ""
    new_call_id: Callable[[], str] = new_call_id
    timings: Timings = field(init=False)
    reader: ChunkReader = field(init=False)
    pieces: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())
        self.reader = ChunkReader(self.new_call_id)

    @classmethod
    def for_plan(
        cls, plan: ChatPlan, model: str, kind: str, clock: Callable[[], float], keep_text: bool
    ) -> ChatTranslator:
        return cls(
            model=model,
            kind=kind,
            clock=clock,
            keep_text=keep_text,
            show_thinking=plan.show_thinking,
            history=plan.history,
            prompt=plan.prompt,
        )

    @property
    def finish_reason(self) -> str | None:
        return self.reader.finish_reason

    def _stamp(self) -> str:
        return rfc3339(self.clock())

    def _render(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        out = []
        for piece in pieces:
            if not self.show_thinking:
                piece.thinking = ""
            if not piece:
                continue
            if self.timings.first_token is None:
                self.timings.first_token = self.clock()
            calls = [ollama_tool_call(c) for c in piece.tool_calls]
            if self.keep_text or self.kind == "generate":
                # generate keeps its text for the ``context`` it hands back
                self.pieces.append(piece.content)
            if self.keep_text:
                self.thinking.append(piece.thinking)
                self.tool_calls.extend(calls)
                self.logprobs.extend(piece.logprobs)
            else:
                out.append(self._line(piece.content, piece.thinking, calls, piece.logprobs, done=False))
        return out

    def text_writer(self, frame: Frame, write: Callable[[bytes], None], feed: TextWriter) -> TextWriter | None:
        """A function that writes (framed as ``frame`` says, to ``write``) the line :meth:`feed`
        makes of a chunk holding only the text it is given (see
        :func:`~ollama_proxy.wire.plain_chunk.text_writer`), or gathers it for the whole
        answer; ``None``: no such lines."""
        if self.keep_text:
            return text_gatherer(self, self.pieces)
        line = _text_line(self.model, self.kind, *frame(""))
        if line is None:
            return None
        keep = self.pieces if self.kind == "generate" else None  # for the context it hands back
        return text_writer(self, line, write, feed, keep=keep)

    def _line(
        self, text: str, thinking: str, calls: list[dict[str, Any]], logprobs: list[dict[str, Any]], done: bool
    ) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": self._stamp()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = done
        if logprobs:
            line["logprobs"] = logprobs
        return line

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def final(self) -> dict[str, Any]:
        """The closing object (``done: true``); with ``keep_text`` it carries the whole answer."""
        self.timings.finished = self.clock()
        if self.keep_text:
            answer = self._line(self.text, "".join(self.thinking), self.tool_calls, self.logprobs, done=True)
        else:
            answer = self._line("", "", [], [], done=True)
        logprobs = answer.pop("logprobs", None)
        answer["done_reason"] = FINISH_REASONS.get(self.reader.finish_reason or "stop", "stop")
        if self.kind == "generate":
            history = list(self.history or [])
            history += [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.text}]
            answer["context"] = encode_context(history)
        answer.update(self.timings.nanoseconds())
        answer["prompt_eval_count"] = self.prompt_tokens or 0
        answer["eval_count"] = self.completion_tokens if self.completion_tokens is not None else 0
        if logprobs:
            answer["logprobs"] = logprobs
        return answer
