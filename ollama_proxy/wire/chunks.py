"""Reading upstream OpenAI ``chat.completion.chunk`` events into plain pieces (pure).

Every provider delivers OpenAI chunks; both faces of the proxy (Ollama's native
API and its ``/v1``) render the same :class:`Piece` objects. Here live the wire
details that are easy to get wrong:

- tool calls arrive as deltas (an id and name first, then the argument string in
  fragments across events, several calls told apart by ``index``); a call is
  handed on whole, once the upstream says the turn is finished;
- reasoning arrives as ``delta.reasoning`` (OpenRouter), ``reasoning_content``
  (DeepSeek-style) or only as ``reasoning_details``; OpenRouter sends both the
  string and the details in one event, so the details count only when no string
  came with them;
- usage comes in a chunk of its own after the finish chunk; an error can arrive
  as an event after output started.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.wire.jsontext import as_object


def new_call_id() -> str:
    """An id for a tool call the upstream sent without one (Ollama's shape)."""
    return "call_" + uuid.uuid4().hex[:8]


@dataclass
class ToolCall:
    """One tool call, assembled; ``arguments`` is the JSON text the model wrote."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass
class CallDelta:
    """A tool call's arguments as they stream (only from a reader asked to stream calls):
    ``first`` when the call starts here, with what its arguments held so far."""

    id: str
    name: str
    fragment: str
    first: bool = False


@dataclass
class Piece:
    """What one upstream event added to the answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_deltas: list[CallDelta] = field(default_factory=list)
    # The signature that seals the reasoning so far (OpenRouter passes Anthropic's on in
    # reasoning_details); not output on its own, so not part of the piece's truth value.
    signature: str = ""

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls or self.logprobs or self.call_deltas)


@dataclass
class _CallBuilder:
    index: int
    id: str = ""
    name: str = ""
    fragments: list[str] = field(default_factory=list)
    announced: bool = False


def error_text(error: Any) -> str:
    """An upstream error object as one line of text."""
    if isinstance(error, dict):
        message = error.get("message") or str(error)
        code = error.get("code")
        return f"{message} (code {code})" if code not in (None, "") else str(message)
    return str(error)


def _reasoning_text(delta: Mapping[str, Any]) -> str:
    for key in ("reasoning", "reasoning_content"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    details = delta.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    texts = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        if detail.get("type") == "reasoning.summary" and isinstance(detail.get("summary"), str):
            texts.append(detail["summary"])
        elif isinstance(detail.get("text"), str):
            texts.append(detail["text"])
    return "".join(texts)


def _signature(delta: Mapping[str, Any]) -> str:
    details = delta.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    signed = [d["signature"] for d in details if isinstance(d, dict) and isinstance(d.get("signature"), str)]
    return signed[-1] if signed else ""


def _logprobs(choice: Mapping[str, Any]) -> list[dict[str, Any]]:
    block = choice.get("logprobs")
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list):
        return []
    entries = []
    for item in content:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            continue
        entry: dict[str, Any] = {"token": item["token"], "logprob": item.get("logprob", 0.0)}
        if isinstance(item.get("bytes"), list):
            entry["bytes"] = item["bytes"]
        top = item.get("top_logprobs")
        if isinstance(top, list) and top:
            entry["top_logprobs"] = [
                {k: v for k, v in t.items() if k in ("token", "logprob", "bytes")} for t in top if isinstance(t, dict)
            ]
        entries.append(entry)
    return entries


class ChunkReader:
    """Reads one upstream stream; :meth:`feed` per event, :meth:`close` at its end."""

    def __init__(self, new_id: Callable[[], str] = new_call_id, stream_calls: bool = False) -> None:
        self._new_id = new_id
        # Also hand on each call's arguments as they arrive (CallDelta), for surfaces
        # that stream them (Messages, Responses); the whole call still comes at the end.
        self.stream_calls = stream_calls
        self._calls: dict[int, _CallBuilder] = {}
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        # What the upstream says the call cost (OpenRouter's usage accounting), if it says.
        self.cost: float | None = None
        self.tool_calls_sent = 0
        # Characters of content, thinking and tool arguments read so far: what a
        # renderer that gathers the whole answer holds.
        self.size = 0

    def feed(self, chunk: Mapping[str, Any]) -> list[Piece]:
        """The pieces one upstream chunk adds; raises :class:`UpstreamStreamError` on an error event."""
        error = chunk.get("error")
        if error:
            raise UpstreamStreamError(error_text(error))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        pieces: list[Piece] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # one answer is asked for; other choices are not ours
            reason = choice.get("finish_reason")
            if reason == "error":
                raise UpstreamStreamError(error_text(choice.get("error") or "the upstream stream failed"))
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = as_object(choice.get("message"))
            piece = Piece(
                content=self._content(delta),
                thinking=_reasoning_text(delta),
                logprobs=_logprobs(choice),
            )
            self.size += len(piece.content) + len(piece.thinking)
            calls = delta.get("tool_calls")
            if calls is not None:
                piece.call_deltas = self._collect_calls(calls)
            if reason:
                self.finish_reason = reason
                piece.tool_calls = self._finished_calls()
            if "reasoning_details" in delta:
                piece.signature = _signature(delta)
            if piece or piece.signature:
                pieces.append(piece)
        return pieces

    @property
    def calls_open(self) -> int:
        """Tool calls being assembled (not finished yet)."""
        return len(self._calls)

    def close(self) -> list[Piece]:
        """The stream ended: tool calls still being assembled are complete now."""
        calls = self._finished_calls()
        return [Piece(tool_calls=calls)] if calls else []

    # -- internals ----------------------------------------------------------------
    @staticmethod
    def _content(delta: Mapping[str, Any]) -> str:
        content = delta.get("content")
        if isinstance(content, str):
            return content
        refusal = delta.get("refusal")
        return refusal if isinstance(refusal, str) else ""

    def _collect_calls(self, deltas: Any) -> list[CallDelta]:
        streamed: list[CallDelta] = []
        if not isinstance(deltas, list):
            return streamed
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                # Without an index, an id starts a new call and a fragment continues the last.
                last = max(self._calls, default=-1)
                index = last + 1 if (delta.get("id") or last < 0) else last
            builder = self._calls.setdefault(index, _CallBuilder(index))
            if isinstance(delta.get("id"), str) and delta["id"] and not builder.id:
                builder.id = delta["id"]
            function = as_object(delta.get("function"))
            name = function.get("name")
            if isinstance(name, str) and name and not builder.name:
                builder.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                arguments = json.dumps(arguments, ensure_ascii=False)
            if isinstance(arguments, str):
                builder.fragments.append(arguments)
                self.size += len(arguments)
            if self.stream_calls and builder.name:
                if not builder.announced:
                    # Named at last: it starts now, under the id it will finish with.
                    builder.announced = True
                    builder.id = builder.id or self._new_id()
                    streamed.append(CallDelta(builder.id, builder.name, "".join(builder.fragments), first=True))
                elif isinstance(arguments, str) and arguments:
                    streamed.append(CallDelta(builder.id, builder.name, arguments))
        return streamed

    def _finished_calls(self) -> list[ToolCall]:
        calls = [
            ToolCall(
                index=self.tool_calls_sent + n, id=b.id or self._new_id(), name=b.name, arguments="".join(b.fragments)
            )
            for n, b in enumerate(sorted(self._calls.values(), key=lambda b: b.index))
        ]
        self._calls.clear()
        self.tool_calls_sent += len(calls)
        return calls

    def _usage(self, usage: Mapping[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion
        cost = usage.get("cost")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
            self.cost = float(cost)


class ReadsChunks:
    """What every renderer of upstream chunks shares (mixed into a dataclass that
    has ``reader``, a :class:`ChunkReader`, and renders pieces in ``_render``)."""

    reader: ChunkReader

    @property
    def answer_size(self) -> int:
        """Characters of the answer read so far (content, thinking, tool arguments)."""
        return self.reader.size

    @property
    def tool_call_count(self) -> int:
        """Tool calls read so far, finished or still being assembled."""
        return self.reader.tool_calls_sent + self.reader.calls_open

    @property
    def prompt_tokens(self) -> int | None:
        return self.reader.prompt_tokens

    @property
    def completion_tokens(self) -> int | None:
        return self.reader.completion_tokens

    @property
    def cost(self) -> float | None:
        """The upstream's own figure for what the call cost (None: it gave none)."""
        return self.reader.cost

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One upstream chunk in; the objects to send now out (maybe none)."""
        return self._render(self.reader.feed(chunk))

    def close(self) -> list[dict[str, Any]]:
        """The upstream stream ended: objects still owed (tool calls not yet closed)."""
        return self._render(self.reader.close())

    def _render(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        raise NotImplementedError


class RendersBlocks(ReadsChunks):
    """For renderers that write an answer as blocks in turn (Messages, Responses):
    each piece's reasoning, text and tool calls go to :meth:`_thinking`,
    :meth:`_text` and :meth:`_call`. Mixed into a dataclass with ``clock``,
    ``timings`` and ``show_thinking``."""

    clock: Callable[[], float]
    timings: Any
    show_thinking: bool

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The stream's opening events come with the first upstream chunk, whatever it holds."""
        return self._start() + self._render(self.reader.feed(chunk))

    def _start(self) -> list[dict[str, Any]]:
        return []

    def _render(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for piece in pieces:
            thinking = piece.thinking if self.show_thinking else ""
            signature = piece.signature if self.show_thinking else ""
            if not (thinking or signature or piece.content or piece.tool_calls or piece.call_deltas):
                continue
            if self.timings.first_token is None:
                self.timings.first_token = self.clock()
            if thinking:
                out += self._thinking(thinking)
            if signature:
                out += self._signed(signature)
            if piece.content:
                out += self._text(piece.content)
            for delta in piece.call_deltas:
                out += self._call_delta(delta)
            for call in piece.tool_calls:
                out += self._call(call)
        return out

    def _thinking(self, text: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _text(self, text: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _call_delta(self, delta: CallDelta) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _signed(self, signature: str) -> list[dict[str, Any]]:
        """The reasoning so far is sealed with ``signature`` (only Messages shows it)."""
        return []
