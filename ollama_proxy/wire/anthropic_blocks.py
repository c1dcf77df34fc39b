"""Anthropic's content blocks as OpenAI chat messages (pure): the conversation of a Messages request.

``system`` (a string or text blocks) becomes a system message, ``tool_use`` blocks
the assistant's ``tool_calls``, ``tool_result`` blocks ``tool`` messages (each must
answer a ``tool_use`` of the turn before, and each ``tool_use`` be answered, as
Anthropic checks), images ``image_url`` parts; ``thinking`` blocks are dropped
(only their own provider can read them back).

What is well formed but has no OpenAI equivalent (a block type, an image source,
a server tool) raises :class:`Untranslatable`: a provider that speaks Messages
itself can still take the request as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.images import decode_base64


class Untranslatable(BadRequest):
    """Valid for Anthropic's API, but not expressible as an OpenAI chat request."""


# How OpenRouter names Claude's reasoning format in reasoning_details.
ANTHROPIC_FORMAT = "anthropic-claude-v1"
# Block types this proxy translates, by role; any other is untranslatable.
BLOCK_TYPES = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}


def text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: Input should be a valid string")
    return value


def blocks_of(content: Any, where: str) -> list[Mapping[str, Any]]:
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
    for i, block in enumerate(blocks_of(value, "system")):
        if block.get("type") != "text":
            raise Untranslatable(f"system.{i}: only text blocks are allowed in system, not '{block.get('type')}'")
        parts.append(text_of(block.get("text"), f"system.{i}.text"))
    return "\n\n".join(parts)


def image_url(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI ``image_url`` part (base64 as a data URL)."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise BadRequest(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        media = text_of(source.get("media_type"), f"{where}.source.media_type")
        data = text_of(source.get("data"), f"{where}.source.data")
        # Checked here: a provider that is sent bad base64 answers a less helpful error, or a 5xx.
        data, _ = decode_base64(data, f"{where}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": text_of(source.get("url"), f"{where}.source.url")}}
    raise Untranslatable(f"{where}.source.type: image source type '{kind}' is not supported (base64 or url)")


def _result_text(block: Mapping[str, Any], where: str, images: list[dict[str, Any]]) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for i, inner in enumerate(blocks_of(content, f"{where}.content")):
            kind = inner.get("type")
            if kind == "text":
                parts.append(text_of(inner.get("text"), f"{where}.content.{i}.text"))
            elif kind == "image":
                images.append(image_url(inner, f"{where}.content.{i}"))
            else:
                raise Untranslatable(f"{where}.content.{i}: block type '{kind}' is not supported in a tool_result")
        text = "\n".join(parts)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise BadRequest(f"{where}.is_error: Input should be a valid boolean")
    # OpenAI's tool message has no error flag: the model reads it in the text.
    return f"Error: {text}" if is_error else text


def _reasoning_detail(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """A signed thinking block as OpenRouter's ``reasoning_details`` entry; unsigned
    thinking (made by another provider) cannot be handed back and is dropped."""
    if block.get("type") == "redacted_thinking":
        data = block.get("data")
        return {"type": "reasoning.encrypted", "data": data, "format": ANTHROPIC_FORMAT} if data else None
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature:
        return None
    thinking = text_of(block.get("thinking", ""), "thinking")
    return {"type": "reasoning.text", "text": thinking, "signature": signature, "format": ANTHROPIC_FORMAT}


class Conversation:
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
                parts.append({"type": "text", "text": text_of(block.get("text"), f"{here}.text")})
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
                raise Untranslatable(f"{here}: content block type '{kind}' is not supported in a user message")
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
        details: list[dict[str, Any]] = []
        ids: set[str] = set()
        for i, block in enumerate(blocks):
            here = f"{where}.content.{i}"
            kind = block.get("type")
            if kind == "text":
                text.append(text_of(block.get("text"), f"{here}.text"))
            elif kind == "tool_use":
                call_id = text_of(block.get("id"), f"{here}.id")
                name = text_of(block.get("name"), f"{here}.name")
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
                detail = _reasoning_detail(block)
                if detail is not None:
                    details.append(detail)
            else:
                raise Untranslatable(f"{here}: content block type '{kind}' is not supported in an assistant message")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if calls:
            message["tool_calls"] = calls
        if details:
            # OpenRouter hands signed reasoning back to Claude this way (which it requires
            # before a tool result when thinking is on); other upstreams drop or ignore it.
            message["reasoning_details"] = details
        if text or calls:
            self.messages.append(message)
        self.pending = ids


def conversation_of(raw: Any) -> Conversation:
    if not isinstance(raw, list):
        raise BadRequest("messages: Input should be a valid list")
    if not raw:
        raise BadRequest("messages: at least one message is required")
    conversation = Conversation()
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise BadRequest(f"{where}: Input should be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{where}.role: Input should be 'user' or 'assistant'")
        blocks = blocks_of(message.get("content"), f"{where}.content")
        for j, block in enumerate(blocks):
            if block["type"] not in BLOCK_TYPES[role]:
                raise Untranslatable(
                    f"{where}.content.{j}: content block type '{block['type']}' is not supported in a {role} message"
                )
        if role == "user":
            conversation.user(blocks, where)
        else:
            conversation.assistant(blocks, where)
    return conversation
