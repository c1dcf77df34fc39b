"""Ollama's OpenAI-compatible ``/v1`` requests, checked and planned (pure, no I/O).

A ``/v1`` request is already in the upstream's language, so it is checked the way
Ollama checks it (same 400s) and passed on with the model id swapped and the
fields an upstream needs (usage in the stream, reasoning, response format). The
answers are rendered by :mod:`ollama_proxy.wire.openai_answer`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_generate import FIM_INSTRUCTION, fim_message
from ollama_proxy.wire.request_body import field_of, logprob_fields, require_capability
from ollama_proxy.wire.tools import arguments_text, tools_request

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
