"""Ollama's OpenAI-compatible ``/v1`` surface: requests in, answers out (pure).

A ``/v1`` request is already in the upstream's language, so it is checked the way
Ollama checks it (same 400s) and passed on with the model id swapped; answers are
rendered from the same :class:`~ollama_proxy.wire.chunks.Piece` objects as the native
API, in the shape Ollama's ``/v1`` gives them (``system_fingerprint: fp_ollama``,
``reasoning`` for thinking, tool calls whole with string arguments, a finish
chunk with an empty delta, usage in a chunk of its own when asked for).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.chunks import ChunkReader, Piece, ReadsChunks, new_call_id
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_generate import FIM_INSTRUCTION, fim_message
from ollama_proxy.wire.ollama_request import Timings, field_of, logprob_fields, require_capability
from ollama_proxy.wire.tools import arguments_text, openai_tool_call, tools_request

SYSTEM_FINGERPRINT = "fp_ollama"
_PASSED_FIELDS = (
    "temperature",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "tool_choice",
    "parallel_tool_calls",
)
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
# OpenAI's reasoning_effort on OpenRouter's scale; Ollama clamps the same values.
_EFFORTS = {
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
    "ultra": "xhigh",
}
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


def _number(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadRequest(f"'{key}' must be a number")


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        _number(body, key)
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise BadRequest("'stop' must be a string or a list of strings")
    for key in _PASSED_FIELDS:
        if body.get(key) is not None:
            fields[key] = body[key]
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"'{key}' must be an integer")
            fields[key] = value
    return fields


def reasoning_effort(body: Mapping[str, Any]) -> str | None:
    """``reasoning_effort`` (or ``reasoning.effort``): an OpenRouter effort, ``"none"``, or ``None``."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is None:
        effort = body.get("reasoning_effort")
    if effort in (None, ""):
        return None
    if effort == "none":
        return "none"
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise BadRequest(
            f"invalid reasoning value: {json.dumps(effort)} "
            '(must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")'
        )
    return _EFFORTS[effort]


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("[] is too short - 'messages'")
    messages = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"{where} must be an object with a 'role'")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise BadRequest("invalid message content type: <nil>")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"invalid message content type: {type(content).__name__}")
        kept = {k: message[k] for k in _MESSAGE_FIELDS if message.get(k) is not None}
        if message.get("tool_calls"):
            kept["tool_calls"] = _history_calls(message["tool_calls"], where, i)
        messages.append(kept)
    return messages


def _history_calls(calls: Any, where: str, message_index: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be a list")
    converted = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise BadRequest(f"{where}.tool_calls[{i}] must be an object with a 'function'")
        function = call["function"]
        entry = {
            "id": call.get("id") or f"call_m{message_index}_{i}",
            "type": "function",
            "function": {
                "name": function.get("name"),
                "arguments": arguments_text(function.get("arguments"), f"{where}.tool_calls[{i}]"),
            },
        }
        converted.append(entry)
    return converted


def _has_image_parts(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
        for m in messages
    )


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'response_format' must be an object")
    kind = str(value.get("type") or "").strip().lower()
    if kind in ("", "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict):
            raise BadRequest("'response_format.json_schema' must be an object")
        return {"type": "json_schema", "json_schema": {"name": "response", **schema}}
    raise BadRequest(f"invalid response_format type: {json.dumps(value.get('type'))}")


def _stream_options(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


@dataclass
class OpenAIPlan:
    """A checked ``/v1`` request: the upstream body and how to answer."""

    upstream: dict[str, Any] | None
    stream: bool
    include_usage: bool
    show_thinking: bool = True
    done_reason: str | None = None  # "load": answered at once, as Ollama does for an empty prompt


def _upstream(model: UpstreamModel, messages: list[dict[str, Any]], body: Mapping[str, Any]) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    upstream.update(_sampling(body))
    return upstream


def plan_chat_completion(body: Mapping[str, Any], model: UpstreamModel, name: str) -> OpenAIPlan:
    """Check a ``/v1/chat/completions`` body as Ollama does; plan the upstream request."""
    messages = _messages(body.get("messages"))
    stream = field_of(body, "stream", bool, False)  # OpenAI refuses anything but a boolean
    effort = reasoning_effort(body)
    tools = tools_request(body.get("tools"))
    if tools:
        require_capability(model, name, "tools")
    if effort not in (None, "none"):
        require_capability(model, name, "thinking")
    if _has_image_parts(messages):
        require_capability(model, name, "vision")
    upstream = _upstream(model, messages, body)
    if tools:
        upstream["tools"] = tools
    fmt = _response_format(body.get("response_format"))
    if fmt:
        upstream["response_format"] = fmt
    if effort is not None and "thinking" in model.capabilities():
        upstream["reasoning"] = {"enabled": False, "exclude": True} if effort == "none" else {"effort": effort}
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest("'logprobs' must be a boolean")
    upstream.update(logprob_fields({"logprobs": logprobs, "top_logprobs": body.get("top_logprobs")}))
    return OpenAIPlan(upstream, stream, _stream_options(body), show_thinking=effort != "none")


def plan_completion(body: Mapping[str, Any], model: UpstreamModel, name: str) -> OpenAIPlan:
    """Check a ``/v1/completions`` body as Ollama does; plan the upstream request."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string")
    suffix = body.get("suffix") or ""
    if not isinstance(suffix, str):
        raise BadRequest("'suffix' must be a string")
    stream = field_of(body, "stream", bool, False)  # OpenAI refuses anything but a boolean
    if not prompt:
        return OpenAIPlan(None, stream, _stream_options(body), done_reason="load")
    if suffix:
        messages = [
            {"role": "system", "content": FIM_INSTRUCTION},
            {"role": "user", "content": fim_message(prompt, suffix)},
        ]
    else:
        messages = [{"role": "user", "content": prompt}]
    upstream = _upstream(model, messages, body)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if isinstance(logprobs, bool) or not isinstance(logprobs, int):
            raise BadRequest("'logprobs' must be an integer")
        if logprobs > 0:
            upstream.update(logprob_fields({"logprobs": True, "top_logprobs": logprobs}))
    return OpenAIPlan(upstream, stream, _stream_options(body))


# -- embeddings -----------------------------------------------------------------------
def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """``input`` of ``/v1/embeddings``: a string or a non-empty list of strings."""
    value = body.get("input")
    if value is None or value == []:
        raise BadRequest("invalid input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("invalid input type")


def encoding_format(body: Mapping[str, Any]) -> str:
    value = body.get("encoding_format") or "float"
    if not isinstance(value, str) or value.lower() not in ("float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format' = {value}. Supported values: ['float', 'base64'].")
    return value.lower()


def embedding_list(name: str, vectors: list[list[float]], tokens: int, fmt: str) -> dict[str, Any]:
    """The ``/v1/embeddings`` answer; base64 is little-endian float32, as OpenAI packs it."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "embedding": embedding, "index": index})
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- answers ----------------------------------------------------------------------------
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
