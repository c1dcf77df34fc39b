"""Anthropic's Messages API requests (``POST /v1/messages``) checked and planned (pure).

A Messages body becomes the OpenAI chat body every provider takes (its
conversation by :mod:`~ollama_proxy.wire.anthropic_blocks`; tools as functions,
``thinking`` a reasoning effort). For a provider that speaks Messages itself,
:attr:`MessagesPlan.native` keeps the request as sent, so thinking signatures,
``cache_control``, server tools and newer block types reach it untouched; a
request only such a provider can take has :attr:`MessagesPlan.untranslatable`.

Errors are :class:`~ollama_proxy.errors.BadRequest`, answered in Anthropic's shape
(:class:`~ollama_proxy.errors.AnthropicDialect`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.anthropic_blocks import Untranslatable, conversation_of, system_text, text_of
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.request_body import MAX_TOKEN_CAP, require_capability


def effort_for_budget(budget: int) -> str:
    """A thinking budget on the effort scale every other provider takes."""
    if budget < 4096:
        return "low"
    return "medium" if budget < 16384 else "high"


@dataclass
class MessagesPlan:
    """A checked Messages request: the OpenAI body, the native body, and how to answer."""

    upstream: dict[str, Any]
    native: dict[str, Any]
    stream: bool
    show_thinking: bool = False
    beta: str | None = None  # the client's anthropic-beta header, for a native upstream
    # Why ``upstream`` is empty: the request is valid, but only a provider speaking Messages can take it.
    untranslatable: Untranslatable | None = None


def _number(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        word = "an integer" if kind is int else "a number"
        raise BadRequest(f"{key}: Input should be {word}")
    return value


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools: Input should be a valid list")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise BadRequest(f"{where}: Input should be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Untranslatable(f"{where}: tool type '{kind}' is not supported by this server (only custom tools)")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise BadRequest(f"{where}.input_schema: Field required")
        function: dict[str, Any] = {"name": name, "parameters": dict(schema)}
        description = tool.get("description")
        if description is not None:
            function["description"] = text_of(description, f"{where}.description")
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any, names: list[str]) -> tuple[Any, bool | None]:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` for Anthropic's ``tool_choice``."""
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise BadRequest("tool_choice: Input should be an object")
    kind = raw.get("type")
    parallel = False if raw.get("disable_parallel_tool_use") is True else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str) or name not in names:
            raise BadRequest(f"tool_choice.name: no tool named {json.dumps(name)} in tools")
        return {"type": "function", "function": {"name": name}}, parallel
    raise BadRequest(f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', not {json.dumps(kind)}")


def _thinking(raw: Any, max_tokens: int) -> bool | int | None:
    """``thinking``: its budget when enabled, False when disabled, None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise BadRequest("thinking: Input should be an object")
    kind = raw.get("type")
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return max(1024, max_tokens // 2)
    if kind != "enabled":
        raise BadRequest(f"thinking.type: Input should be 'enabled' or 'disabled', not {json.dumps(kind)}")
    budget = _number(raw, "budget_tokens", int)
    if budget is None:
        raise BadRequest("thinking.enabled.budget_tokens: Field required")
    if budget < 1024:
        raise BadRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    return int(budget)


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            fields[key] = value
    top_k = _number(body, "top_k", int)
    if top_k is not None:
        fields["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: Input should be a list of strings")
        if stops:
            fields["stop"] = list(stops)
    return fields


def _translated(
    body: Mapping[str, Any], model: UpstreamModel, name: str, max_tokens: int, thinking: bool | int | None
) -> dict[str, Any]:
    """The OpenAI chat body; raises :class:`Untranslatable` for what only Anthropic can take."""
    system = system_text(body.get("system"))
    conversation = conversation_of(body.get("messages"))
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), [t["function"]["name"] for t in tools])
    if tools:
        require_capability(model, name, "tools")
    if conversation.has_images:
        require_capability(model, name, "vision")
    messages = conversation.messages
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    upstream: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        **_sampling(body),
    }
    if tools:
        upstream["tools"] = tools
        if choice is not None:
            upstream["tool_choice"] = choice
        if parallel is not None:
            upstream["parallel_tool_calls"] = parallel
    thinks = "thinking" in model.capabilities()
    if thinks and isinstance(thinking, int) and not isinstance(thinking, bool):
        upstream["reasoning"] = {"effort": effort_for_budget(thinking)}
    elif thinks and thinking is False:
        upstream["reasoning"] = {"enabled": False, "exclude": True}
    return upstream


def _without_unsigned_thinking(message: Any) -> Any:
    """An assistant turn without thinking that has no signature: another provider's
    reasoning, shown through this proxy, which Anthropic would refuse to read back."""
    if not isinstance(message, Mapping) or message.get("role") != "assistant":
        return message
    content = message.get("content")
    if not isinstance(content, list):
        return message
    kept = [
        b for b in content if not (isinstance(b, Mapping) and b.get("type") == "thinking" and not b.get("signature"))
    ]
    return {**message, "content": kept} if len(kept) != len(content) else message


def plan_messages(body: Mapping[str, Any], model: UpstreamModel, name: str, beta: str | None = None) -> MessagesPlan:
    """Check a Messages request as Anthropic does; plan the OpenAI and the native bodies."""
    max_tokens = _number(body, "max_tokens", int)
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if max_tokens < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    if max_tokens > MAX_TOKEN_CAP:
        raise BadRequest(f"max_tokens: Input should be less than or equal to {MAX_TOKEN_CAP}")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean")
    thinking = _thinking(body.get("thinking"), max_tokens)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise BadRequest("metadata: Input should be an object")
    _sampling(body)  # checked whichever way the request goes
    # A native upstream gets all the client sent: fields this proxy does not know
    # (newer API features) mean something to it.
    native = {**body, "model": model.id, "stream": True}
    if isinstance(body.get("messages"), list):
        native["messages"] = [_without_unsigned_thinking(m) for m in body["messages"]]
    plan = MessagesPlan({}, native, stream, show_thinking=thinking not in (None, False), beta=beta)
    try:
        plan.upstream = _translated(body, model, name, max_tokens, thinking)
    except Untranslatable as error:
        plan.untranslatable = error
    return plan


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of the input tokens: one per four characters of the system prompt,
    the messages and the tool definitions as JSON (generous rather than short, so a
    client that manages its context window errs on the safe side)."""
    counted = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k) is not None}
    characters = len(json.dumps(counted, ensure_ascii=False, separators=(",", ":")))
    return max(1, -(-characters // 4))
