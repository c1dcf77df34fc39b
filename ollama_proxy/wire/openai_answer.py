"""Ollama's OpenAI-compatible ``/v1`` answers (pure, no I/O).

Answers are rendered from the same :class:`~ollama_proxy.wire.chunks.Piece` objects
as the native API, in the shape Ollama's ``/v1`` gives them (``system_fingerprint:
fp_ollama``, ``reasoning`` for thinking, tool calls whole with string arguments, a
finish chunk with an empty delta, usage in a chunk of its own when asked for);
also the ``/v1/models`` entries and the ``/v1/embeddings`` list.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ollama_proxy.wire.chunks import ChunkReader, Piece, ReadsChunks, new_call_id
from ollama_proxy.wire.fastjson import dumps_compact_or_none
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.plain_chunk import Frame, TextWriter, text_gatherer, text_writer
from ollama_proxy.wire.timings import Timings
from ollama_proxy.wire.tools import openai_tool_call

SYSTEM_FINGERPRINT = "fp_ollama"
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def model_entry_from_tag(tag: Mapping[str, Any]) -> dict[str, Any]:
    """One ``/v1/models`` entry from an ``/api/tags`` entry: the same names, aliases included."""
    model_id = str(tag["name"])
    namespace = model_id.rsplit("/", 1)[0] if "/" in model_id else "library"
    try:
        created = int(
            datetime.strptime(str(tag.get("modified_at", "")), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        )
    except ValueError:
        created = 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": namespace}


def model_entry(model: UpstreamModel, name: str | None = None) -> dict[str, Any]:
    """One ``/v1/models`` entry; ``owned_by`` is the namespace, as Ollama derives it."""
    model_id = name or model.ollama_name
    namespace = model_id.rsplit("/", 1)[0] if "/" in model_id else "library"
    return {"id": model_id, "object": "model", "created": int(model.created), "owned_by": namespace}


def embedding_list(name: str, vectors: list[list[float]], tokens: int, fmt: str) -> dict[str, Any]:
    """The ``/v1/embeddings`` answer; base64 is little-endian float32, as OpenAI packs it."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "embedding": embedding, "index": index})
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat-style logprobs in the shape ``/v1/completions`` answers carry."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry["token"])
        values.append(entry["logprob"])
        tops.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs", []) if "token" in t})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


@dataclass
class OpenAIRenderer(ReadsChunks):
    """Turns upstream chunks into Ollama's ``/v1`` answers for one request.

    ``kind`` is ``chat`` (``chat.completion``) or ``completion`` (``text_completion``).
    It has the translator's interface, so :class:`~ollama_proxy.api.relay.ChatRelay`
    relays it unchanged.
    """

    kind: str
    model: str
    response_id: str
    clock: Callable[[], float]
    keep_text: bool = False
    include_usage: bool = False
    show_thinking: bool = True
    new_call_id: Callable[[], str] = new_call_id
    timings: Timings = field(init=False)
    reader: ChunkReader = field(init=False)
    created: int = field(init=False)
    role_sent: bool = False
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text_length: int = 0

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())
        self.reader = ChunkReader(self.new_call_id)
        # OpenAI stamps one ``created`` on every chunk of a stream.
        self.created = int(self.timings.started)

    def _head(self) -> dict[str, Any]:
        kind = "chat.completion" if self.kind == "chat" else "text_completion"
        if self.kind == "chat" and not self.keep_text:
            kind = "chat.completion.chunk"
        return {
            "id": self.response_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _render(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        out = []
        for piece in pieces:
            if not self.show_thinking or self.kind == "completion":
                piece.thinking = ""
            if not piece:
                continue
            if self.timings.first_token is None:
                self.timings.first_token = self.clock()
            calls = [openai_tool_call(c) for c in piece.tool_calls]
            if self.keep_text:
                self.text.append(piece.content)
                self.thinking.append(piece.thinking)
                self.tool_calls.extend(calls)
                self.logprobs.extend(piece.logprobs)
                continue
            if self.kind == "chat":
                out.append(self._chat_chunk(piece, calls))
            else:
                choice: dict[str, Any] = {"text": piece.content, "index": 0, "finish_reason": None}
                if piece.logprobs:
                    choice["logprobs"] = _legacy_logprobs(piece.logprobs, self.text_length)
                self.text_length += len(piece.content)
                out.append({**self._head(), "choices": [choice]})
        return out

    def text_writer(self, frame: Frame, write: Callable[[bytes], None], feed: TextWriter) -> TextWriter | None:
        """A function that writes (framed as ``frame`` says, to ``write``) the chunk :meth:`feed`
        makes of an upstream chunk holding only the text it is given, once the role went
        out (see :func:`~ollama_proxy.wire.plain_chunk.text_writer`), or gathers it for the
        whole answer; ``None``: no such chunks."""
        if self.keep_text:
            return text_gatherer(self, self.text)
        head = dumps_compact_or_none(self._head()) if self.kind == "chat" else None
        if head is None:
            return None
        before, after = frame("")
        # The bytes _chat_chunk's object encodes to (once the role went out), the text left open.
        opening = before + head[:-1] + b',"choices":[{"index":0,"delta":{"content":'
        tail = b'},"finish_reason":null}]}' + after
        return text_writer(self, (opening, None, tail), write, feed, ready=lambda: self.role_sent)

    def _chat_chunk(self, piece: Piece, calls: list[dict[str, Any]]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"] = "assistant"
            self.role_sent = True
        delta["content"] = piece.content
        if piece.thinking:
            delta["reasoning"] = piece.thinking
        if calls:
            self.tool_calls.extend(calls)
            delta["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if piece.logprobs:
            choice["logprobs"] = {"content": piece.logprobs}
        return {**self._head(), "choices": [choice]}

    def finish_reason(self) -> str:
        reason = _FINISH.get(self.reader.finish_reason or "stop", "stop")
        if self.kind == "chat" and self.tool_calls and reason == "stop":
            return "tool_calls"
        if self.kind == "completion" and reason == "tool_calls":
            return "stop"
        return reason

    def usage(self) -> dict[str, int]:
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def closing_chunks(self) -> list[dict[str, Any]]:
        """The stream's end: a finish chunk with an empty delta, then usage if asked for."""
        self.timings.finished = self.clock()
        if self.kind == "chat":
            if not self.role_sent:
                # A wholly empty answer still opens with the role, as Ollama's does.
                self.role_sent = True
                first = {
                    **self._head(),
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            else:
                first = None
            finish = {**self._head(), "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason()}]}
            chunks = [c for c in (first, finish) if c is not None]
        else:
            chunks = [{**self._head(), "choices": [{"text": "", "index": 0, "finish_reason": self.finish_reason()}]}]
        if self.include_usage:
            chunks.append({**self._head(), "choices": [], "usage": self.usage()})
        return chunks

    def final(self) -> dict[str, Any]:
        """The whole non-streamed answer."""
        self.timings.finished = self.clock()
        text = "".join(self.text)
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            thinking = "".join(self.thinking)
            if thinking:
                message["reasoning"] = thinking
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": self.finish_reason()}
            if self.logprobs:
                choice["logprobs"] = {"content": self.logprobs}
        else:
            choice = {"text": text, "index": 0, "finish_reason": self.finish_reason()}
            if self.logprobs:
                choice["logprobs"] = _legacy_logprobs(self.logprobs, 0)
        return {**self._head(), "choices": [choice], "usage": self.usage()}


def loaded_answer(kind: str, model: str, response_id: str, created: int, stream: bool) -> list[dict[str, Any]]:
    """What Ollama's ``/v1`` answers for an empty prompt: a finished, empty ``load``."""
    head = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    choice = {"text": "", "index": 0, "finish_reason": "load"}
    if stream:
        return [{**head, "choices": [choice]}]
    return [{**head, "choices": [choice], "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}]
