"""Anthropic's Messages API requests (``POST /v1/messages``) checked and planned (pure).

A Messages body becomes the OpenAI chat body every provider takes: ``system``
(a string or text blocks) a system message, ``tool_use`` blocks the assistant's
``tool_calls``, ``tool_result`` blocks ``tool`` messages (which must answer a
``tool_use`` of the turn before, as Anthropic checks), images ``image_url``
parts, ``thinking`` a reasoning effort. For a provider that speaks Messages
itself, :attr:`MessagesPlan.native` keeps the request as sent (known fields only),
so thinking signatures and ``cache_control`` reach it untouched.

Errors are :class:`~ollama_proxy.errors.BadRequest`, answered in Anthropic's shape
(:class:`~ollama_proxy.errors.AnthropicDialect`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.request_body import require_capability

# Block types a client may send that this proxy cannot translate: refused by name.
_BLOCK_TYPES = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}


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


def _number(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        word = "an integer" if kind is int else "a number"
        raise BadRequest(f"{key}: Input should be {word}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: Input should be a valid string")
    return value


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    """``content`` as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}: Input should be a valid string or a list of content blocks")
    for i, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise BadRequest(f"{where}.{i}: a content block must be an object with a 'type'")
    return content


def system_text(value: Any) -> str:
    """``system``: a string, or text blocks joined (``cache_control`` ignored)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    parts = []
    for i, block in enumerate(_blocks(value, "system")):
        if block.get("type") != "text":
            raise BadRequest(f"system.{i}: only text blocks are allowed in system, not '{block.get('type')}'")
        parts.append(_text(block.get("text"), f"system.{i}.text"))
    return "\n\n".join(parts)


def image_url(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI ``image_url`` part (base64 as a data URL)."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise BadRequest(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        media = _text(source.get("media_type"), f"{where}.source.media_type")
        data = _text(source.get("data"), f"{where}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": _text(source.get("url"), f"{where}.source.url")}}
    raise BadRequest(f"{where}.source.type: image source type '{kind}' is not supported (base64 or url)")


def _result_text(block: Mapping[str, Any], where: str, images: list[dict[str, Any]]) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for i, inner in enumerate(_blocks(content, f"{where}.content")):
            kind = inner.get("type")
            if kind == "text":
                parts.append(_text(inner.get("text"), f"{where}.content.{i}.text"))
            elif kind == "image":
                images.append(image_url(inner, f"{where}.content.{i}"))
            else:
                raise BadRequest(f"{where}.content.{i}: block type '{kind}' is not supported in a tool_result")
        text = "\n".join(parts)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise BadRequest(f"{where}.is_error: Input should be a valid boolean")
    # OpenAI's tool message has no error flag: the model reads it in the text.
    return f"Error: {text}" if is_error else text


class _Conversation:
    """Builds the OpenAI messages turn by turn, checking tool results against calls."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pending: set[str] = set()  # tool_use ids of the last assistant turn
        self.has_images = False

    def user(self, blocks: list[Mapping[str, Any]], where: str) -> None:
        results: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        answered: set[str] = set()
        for i, block in enumerate(blocks):
            here = f"{where}.content.{i}"
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": _text(block.get("text"), f"{here}.text")})
            elif kind == "image":
                parts.append(image_url(block, here))
            elif kind == "tool_result":
                call_id = block.get("tool_use_id")
                if not isinstance(call_id, str) or call_id not in self.pending:
                    raise BadRequest(
                        f"{here}: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )
                answered.add(call_id)
                results.append({"role": "tool", "tool_call_id": call_id, "content": _result_text(block, here, parts)})
            else:
                raise BadRequest(f"{here}: content block type '{kind}' is not supported in a user message")
        missing = self.pending - answered
        if missing:
            raise BadRequest(
                f"{where}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding `tool_result` block "
                "in the next message."
            )
        self.pending = set()
        self.messages.extend(results)
        if any(p["type"] == "image_url" for p in parts):
            self.has_images = True
        if parts:
            simple = all(p["type"] == "text" for p in parts)
            content: Any = "".join(p["text"] for p in parts) if simple and len(parts) == 1 else parts
            self.messages.append({"role": "user", "content": content})

    def assistant(self, blocks: list[Mapping[str, Any]], where: str) -> None:
        if self.pending:
            raise BadRequest(f"{where}: the tool_use blocks of the previous assistant turn have no tool_result")
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        ids: set[str] = set()
        for i, block in enumerate(blocks):
            here = f"{where}.content.{i}"
            kind = block.get("type")
            if kind == "text":
                text.append(_text(block.get("text"), f"{here}.text"))
            elif kind == "tool_use":
                call_id = _text(block.get("id"), f"{here}.id")
                name = _text(block.get("name"), f"{here}.name")
                given = block.get("input", {})
                if not isinstance(given, Mapping):
                    raise BadRequest(f"{here}.input: Input should be a valid dictionary")
                ids.add(call_id)
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(given, ensure_ascii=False)},
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # signed reasoning only its own provider can read back
            else:
                raise BadRequest(f"{here}: content block type '{kind}' is not supported in an assistant message")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if calls:
            message["tool_calls"] = calls
        if text or calls:
            self.messages.append(message)
        self.pending = ids


def _messages(raw: Any) -> _Conversation:
    if not isinstance(raw, list):
        raise BadRequest("messages: Input should be a valid list")
    if not raw:
        raise BadRequest("messages: at least one message is required")
    conversation = _Conversation()
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise BadRequest(f"{where}: Input should be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{where}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(message.get("content"), f"{where}.content")
        for j, block in enumerate(blocks):
            if block["type"] not in _BLOCK_TYPES[role]:
                raise BadRequest(
                    f"{where}.content.{j}: content block type '{block['type']}' is not supported in a {role} message"
                )
        if role == "user":
            conversation.user(blocks, where)
        else:
            conversation.assistant(blocks, where)
    return conversation


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
            raise BadRequest(f"{where}: tool type '{kind}' is not supported by this server (only custom tools)")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise BadRequest(f"{where}.input_schema: Field required")
        function: dict[str, Any] = {"name": name, "parameters": dict(schema)}
        description = tool.get("description")
        if description is not None:
            function["description"] = _text(description, f"{where}.description")
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


def plan_messages(body: Mapping[str, Any], model: UpstreamModel, name: str, beta: str | None = None) -> MessagesPlan:
    """Check a Messages request as Anthropic does; plan the OpenAI and the native bodies."""
    max_tokens = _number(body, "max_tokens", int)
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if max_tokens < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean")
    system = system_text(body.get("system"))
    conversation = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    names = [t["function"]["name"] for t in tools]
    choice, parallel = _tool_choice(body.get("tool_choice"), names)
    thinking = _thinking(body.get("thinking"), max_tokens)
    if tools:
        require_capability(model, name, "tools")
    if conversation.has_images:
        require_capability(model, name, "vision")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise BadRequest("metadata: Input should be an object")

    messages = conversation.messages
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    upstream: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
    }
    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            upstream[key] = value
    top_k = _number(body, "top_k", int)
    if top_k is not None:
        upstream["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: Input should be a list of strings")
        if stops:
            upstream["stop"] = list(stops)
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
    # A native upstream gets all the client sent: fields this proxy does not know
    # (newer API features) mean something to it.
    native = {**body, "model": model.id}
    native["stream"] = True
    return MessagesPlan(
        upstream=upstream,
        native=native,
        stream=stream,
        show_thinking=thinking not in (None, False),
        beta=beta,
    )


def check_count_request(body: Mapping[str, Any]) -> None:
    """A ``count_tokens`` body checked as a Messages request (``max_tokens`` not needed)."""
    system_text(body.get("system"))
    _messages(body.get("messages"))
    names = [t["function"]["name"] for t in _tools(body.get("tools"))]
    _tool_choice(body.get("tool_choice"), names)


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of the input tokens: one per four characters of the system prompt,
    the messages and the tool definitions as JSON (generous rather than short, so a
    client that manages its context window errs on the safe side)."""
    counted = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k) is not None}
    characters = len(json.dumps(counted, ensure_ascii=False, separators=(",", ":")))
    return max(1, -(-characters // 4))
