"""Translation between Ollama's wire format and OpenAI's (pure functions, no I/O).

Requests go Ollama -> OpenAI (:func:`chat_request`, :func:`generate_request`);
answers come back OpenAI -> Ollama one streamed chunk at a time through a
:class:`ChatTranslator`, which also assembles the non-streamed answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest, UpstreamStreamError
from .models import rfc3339

# Ollama option -> OpenAI/OpenRouter request field.
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
_INTEGER_OPTIONS = {"top_k", "seed", "num_predict"}


# -- reading request bodies ----------------------------------------------------
def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"invalid JSON in request body: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def field_of(body: Mapping[str, Any], key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[key]`` if present and of the right type, ``default`` if absent or null."""
    value = body.get(key)
    if value is None:
        return default
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise BadRequest(f"'{key}' has the wrong type: {json.dumps(value)}")
    if not isinstance(value, allowed):
        names = " or ".join(_type_name(t) for t in allowed)
        raise BadRequest(f"'{key}' must be {names}")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object", list: "an array"}.get(kind, kind.__name__)


def model_name(body: Mapping[str, Any]) -> str:
    """``model`` (or the legacy ``name``), required and a non-empty string."""
    value = body.get("model")
    if value in (None, ""):
        value = body.get("name")
    if value in (None, ""):
        raise BadRequest("model is required")
    if not isinstance(value, str):
        raise BadRequest("'model' must be a string")
    return value


def wants_stream(body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told not to (the Python client always says)."""
    return bool(field_of(body, "stream", bool, True))


def sampling_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Map Ollama ``options`` to OpenAI request fields; load-time options are ignored."""
    options = field_of(body, "options", dict, {})
    mapped: dict[str, Any] = {}
    for name, target in OPTION_FIELDS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadRequest("option 'stop' must be a string or a list of strings")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"option '{name}' must be a number")
        elif name in _INTEGER_OPTIONS:
            if value != int(value):
                raise BadRequest(f"option '{name}' must be an integer")
            value = int(value)
        if name == "num_predict" and value < 0:
            continue  # -1 (infinite) and -2 (fill context): no cap upstream
        mapped[target] = value
    return mapped


# -- Ollama -> OpenAI -------------------------------------------------------------
def _message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise BadRequest(f"messages[{index}] must be an object")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise BadRequest(f"messages[{index}].role must be a non-empty string")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"messages[{index}].content must be a string")
    return {"role": role, "content": content or ""}


def chat_request(body: Mapping[str, Any], upstream_model: str) -> dict[str, Any]:
    """An Ollama ``/api/chat`` body as an OpenAI chat-completions body (streamed)."""
    messages = field_of(body, "messages", list, [])
    converted = [_message(m, i) for i, m in enumerate(messages)]
    return _completion(body, upstream_model, converted)


def generate_request(body: Mapping[str, Any], upstream_model: str) -> dict[str, Any]:
    """An Ollama ``/api/generate`` body as an OpenAI chat-completions body (streamed)."""
    prompt = field_of(body, "prompt", str, "")
    system = field_of(body, "system", str, None)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return _completion(body, upstream_model, messages)


def _completion(body: Mapping[str, Any], upstream_model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        # OpenRouter always sends usage; OpenAI only when asked.
        "stream_options": {"include_usage": True},
    }
    request.update(sampling_options(body))
    return request


# -- OpenAI -> Ollama -------------------------------------------------------------
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop", "content_filter": "stop", "eos": "stop"}


@dataclass
class Timings:
    """Seconds on the reactor's clock, filled in as the request goes."""

    started: float
    upstream_headers: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def nanoseconds(self) -> dict[str, int]:
        def ns(a: float | None, b: float | None) -> int:
            if a is None or b is None:
                return 0
            return max(0, int(round((b - a) * 1e9)))

        end = self.finished if self.finished is not None else self.started
        headers = self.upstream_headers if self.upstream_headers is not None else self.started
        first = self.first_token if self.first_token is not None else end
        return {
            "total_duration": ns(self.started, end),
            "load_duration": ns(self.started, headers),
            "prompt_eval_duration": ns(headers, first),
            "eval_duration": ns(first, end),
        }


@dataclass
class ChatTranslator:
    """Turns OpenAI stream chunks into Ollama objects for one request.

    ``kind`` is ``chat`` (answers carry ``message``) or ``generate`` (answers carry
    ``response``). It keeps the whole text only when asked to (non-streamed answers).
    """

    model: str
    kind: str
    clock: Callable[[], float]
    keep_text: bool = False
    timings: Timings = field(init=False)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    pieces: list[str] = field(default_factory=list)
    chunks_seen: int = 0

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())

    def _stamp(self) -> str:
        return rfc3339(self.clock())

    def _piece(self, text: str) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model, "created_at": self._stamp()}
        if self.kind == "chat":
            head["message"] = {"role": "assistant", "content": text}
        else:
            head["response"] = text
        head["done"] = False
        return head

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One upstream chunk in; the Ollama objects to send now out (maybe none)."""
        self.chunks_seen += 1
        error = chunk.get("error")
        if error:
            raise UpstreamStreamError(_error_text(error))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            reason = choice.get("finish_reason")
            if reason == "error":
                raise UpstreamStreamError(_error_text(choice.get("error") or "the upstream stream failed"))
            if reason:
                self.finish_reason = reason
            if isinstance(text, str) and text:
                if self.timings.first_token is None:
                    self.timings.first_token = self.clock()
                if self.keep_text:
                    self.pieces.append(text)
                else:
                    out.append(self._piece(text))
        return out

    def _usage(self, usage: Mapping[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def final(self) -> dict[str, Any]:
        """The closing object (``done: true``); with ``keep_text`` it carries the whole answer."""
        self.timings.finished = self.clock()
        answer: dict[str, Any] = {"model": self.model, "created_at": self._stamp()}
        text = self.text if self.keep_text else ""
        if self.kind == "chat":
            answer["message"] = {"role": "assistant", "content": text}
        else:
            answer["response"] = text
        answer["done"] = True
        answer["done_reason"] = FINISH_REASONS.get(self.finish_reason or "stop", "stop")
        if self.kind == "generate":
            answer["context"] = []
        answer.update(self.timings.nanoseconds())
        answer["prompt_eval_count"] = self.prompt_tokens or 0
        answer["eval_count"] = self.completion_tokens if self.completion_tokens is not None else 0
        return answer


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error)
        code = error.get("code")
        return f"{message} (code {code})" if code not in (None, "") else str(message)
    return str(error)


def ndjson(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON object and a newline: never a blank line."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


# -- embeddings -------------------------------------------------------------------
def embed_inputs(body: Mapping[str, Any]) -> list[str]:
    """``input`` of ``/api/embed``: a string or a list of strings."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("'input' must be a string or a list of strings")
