"""Ollama's native requests (``/api/chat``, ``/api/generate``) as OpenAI ones (pure, no I/O).

:func:`plan_chat` and :func:`plan_generate` check a body the way Ollama does
(same statuses, same wording where clients match on it) and give either the
upstream body or an answer to give at once (``load`` / ``unload``). The answers
come back through :class:`~ollama_proxy.wire.ollama_answer.ChatTranslator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.images import image_parts
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_generate import FIM_INSTRUCTION, context_list, decode_context, fim_message
from ollama_proxy.wire.ollama_options import reasoning_request, response_format, sampling_options, think_value
from ollama_proxy.wire.request_body import field_of, keep_alive_of, logprob_fields, require_capability
from ollama_proxy.wire.tools import CallLedger, tools_request

# The Ollama request's own fields, carried beside the OpenAI body for Ollama upstreams.
NATIVE_KEY = "x-ollama-native"


def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string")
    return content or ""


def _with_images(text: str, images: list[dict[str, Any]]) -> Any:
    if not images:
        return text
    return ([{"type": "text", "text": text}] if text else []) + images


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones: images as parts, tool calls and results paired by id."""
    ledger = CallLedger()
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}.role must be a non-empty string")
        role = role.lower()  # Ollama lowercases roles
        text = _content(message, where)
        images = image_parts(message.get("images"), f"{where}.images")
        if role == "assistant" and message.get("tool_calls"):
            calls = ledger.assistant_calls(message["tool_calls"], where, index)
            converted.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif role == "tool":
            call_id = ledger.result_id(message.get("tool_call_id"), message.get("tool_name"))
            if call_id is None:
                # A result with no call before it: OpenAI would refuse it, so it goes as text.
                name = message.get("tool_name") or "a tool"
                converted.append({"role": "user", "content": _with_images(f"Result of {name}: {text}", images)})
            else:
                converted.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            converted.append({"role": role, "content": _with_images(text, images)})
    return converted


@dataclass
class ChatPlan:
    """What to do with one chat or generate request.

    ``upstream`` is the OpenAI body to send; when it is ``None`` the answer is given
    at once with ``done_reason`` (``load`` or ``unload``).
    """

    upstream: dict[str, Any] | None
    keep_alive: float | None = None
    done_reason: str | None = None
    show_thinking: bool = True
    history: list[dict[str, str]] | None = None  # generate: the conversation for ``context``
    prompt: str = ""


def _upstream_body(
    body: Mapping[str, Any], model: UpstreamModel, messages: list[dict[str, Any]], think: bool | str | None
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        # OpenRouter always sends usage; OpenAI only when asked.
        "stream_options": {"include_usage": True},
    }
    request.update(sampling_options(body))
    request.update(logprob_fields(body))
    fmt = response_format(body.get("format"))
    if fmt is not None:
        request["response_format"] = fmt
    reasoning = reasoning_request(think, model)
    if reasoning is not None:
        request["reasoning"] = reasoning
    native = {key: body[key] for key in ("options", "keep_alive") if body.get(key) is not None}
    if native:
        # For an Ollama upstream only (load-time options such as num_ctx, keep_alive);
        # every other provider drops this key before sending.
        request[NATIVE_KEY] = native
    return request


def _check_think(think: bool | str | None, model: UpstreamModel, name: str) -> None:
    if think not in (None, False):
        require_capability(model, name, "thinking")


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) for m in messages)


def plan_chat(body: Mapping[str, Any], model: UpstreamModel, name: str) -> ChatPlan:
    """Check an ``/api/chat`` body as Ollama does and plan the upstream request."""
    keep_alive = keep_alive_of(body)
    think = think_value(body)
    raw_messages = field_of(body, "messages", list, [])
    logprob_fields(body)
    if not raw_messages and keep_alive == 0:
        return ChatPlan(None, keep_alive, "unload")
    tools = tools_request(body.get("tools"))
    if tools:
        require_capability(model, name, "tools")
    _check_think(think, model, name)
    if not raw_messages:
        return ChatPlan(None, keep_alive, "load")
    messages = chat_messages(raw_messages)
    if _has_images(messages):
        require_capability(model, name, "vision")
    upstream = _upstream_body(body, model, messages, think)
    if tools:
        upstream["tools"] = tools
    return ChatPlan(upstream, keep_alive, show_thinking=think is not False)


def plan_generate(body: Mapping[str, Any], model: UpstreamModel, name: str) -> ChatPlan:
    """Check an ``/api/generate`` body as Ollama does and plan the upstream request."""
    keep_alive = keep_alive_of(body)
    think = think_value(body)
    prompt = field_of(body, "prompt", str, "")
    suffix = field_of(body, "suffix", str, "")
    system = field_of(body, "system", str, "")
    template = field_of(body, "template", str, "")
    raw = field_of(body, "raw", bool, False)
    context = context_list(body.get("context"))
    logprob_fields(body)
    if not prompt and keep_alive == 0:
        return ChatPlan(None, keep_alive, "unload")
    if raw and (template or system or context):
        raise BadRequest("raw mode does not support template, system, or context")
    _check_think(think, model, name)
    if not prompt:
        return ChatPlan(None, keep_alive, "load")
    images = image_parts(body.get("images"), "images")
    if images:
        require_capability(model, name, "vision")
    history = decode_context(context)
    messages: list[dict[str, Any]] = []
    if suffix:
        # Ollama's insert template takes only the prompt and the suffix.
        messages.append({"role": "system", "content": FIM_INSTRUCTION})
        messages.extend(history)
        messages.append({"role": "user", "content": _with_images(fim_message(prompt, suffix), images)})
    else:
        if system:
            messages.append({"role": "system", "content": system})
        messages.extend(history)
        messages.append({"role": "user", "content": _with_images(prompt, images)})
    upstream = _upstream_body(body, model, messages, think)
    return ChatPlan(upstream, keep_alive, show_thinking=think is not False, history=history, prompt=prompt)


# -- embeddings -------------------------------------------------------------------
def embed_inputs(body: Mapping[str, Any]) -> list[str]:
    """``input`` of ``/api/embed``: a string or a list of strings (Ollama drops an empty string)."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("invalid input type")
