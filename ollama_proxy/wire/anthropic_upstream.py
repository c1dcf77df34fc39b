"""OpenAI chat bodies to Anthropic's Messages API requests, and its stream back (pure, no I/O).

Requests: system messages become ``system``, content parts become content blocks,
assistant ``tool_calls`` become ``tool_use`` blocks, ``tool`` messages become
``tool_result`` blocks in a user turn, and a reasoning request becomes ``thinking``.
Answers: Anthropic's SSE events (``message_start``, ``content_block_start`` /
``_delta`` / ``_stop``, ``message_delta``, ``message_stop``, ``ping``, ``error``)
become OpenAI ``chat.completion.chunk`` dicts in one small state machine,
:class:`AnthropicDecoder`. Also: a model of Anthropic's ``GET /v1/models`` listing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import msgspec

from ollama_proxy.errors import BadRequest, UpstreamStreamError
from ollama_proxy.wire.anthropic_answer import usage_counts
from ollama_proxy.wire.jsontext import as_object
from ollama_proxy.wire.models import UpstreamModel

DEFAULT_CONTEXT = 200_000
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_THINKING_MODELS = re.compile(r"claude-(3-7|(opus|sonnet|haiku)-4|4)")
_DATA_URL = re.compile(r"^data:(?P<type>[\w/+.-]+);base64,(?P<data>.*)$", re.DOTALL)


# -- OpenAI request -> Messages API request -----------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _image_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        return None
    match = _DATA_URL.match(url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match["type"], "data": match["data"]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": str(part["text"])})
        elif part.get("type") == "image_url":
            block = _image_block(part)
            if block is not None:
                blocks.append(block)
    return blocks


def _arguments(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
        except ValueError:
            raise BadRequest("tool call arguments are not valid JSON") from None
        return value if isinstance(value, dict) else {"value": value}
    return {}


def _assistant_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for index, call in enumerate(message.get("tool_calls") or ()):
        if not isinstance(call, Mapping):
            continue
        function = as_object(call.get("function"))
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_{index}"),
                "name": str(function.get("name") or ""),
                "input": _arguments(function.get("arguments")),
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": str(message.get("tool_call_id") or ""),
        "content": _text_of(message.get("content")),
    }
    return block


def _thinking_budget(body: Mapping[str, Any]) -> int | None:
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort")
    if isinstance(reasoning, Mapping):
        if reasoning.get("enabled") is False:
            return None
        if isinstance(reasoning.get("max_tokens"), int):
            return max(1024, int(reasoning["max_tokens"]))
        effort = reasoning.get("effort") or effort or "medium"
    if isinstance(effort, str) and effort in THINKING_BUDGETS:
        return THINKING_BUDGETS[effort]
    return None


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and function.get("name"):
            return {"type": "tool", "name": str(function["name"])}
    return None


def messages_request(body: Mapping[str, Any], default_max_tokens: int = 4096) -> dict[str, Any]:
    """An OpenAI chat-completions body as an Anthropic Messages API body (streamed)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic wants the roles to alternate
        else:
            turns.append({"role": role, "content": list(blocks)})

    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append(text)
        elif role == "assistant":
            add("assistant", _assistant_blocks(message))
        elif role == "tool":
            add("user", [_tool_result(message)])
        else:
            add("user", _user_blocks(message.get("content")))

    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens
    request: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": int(max_tokens),
        "messages": turns,
        "stream": True,
    }
    if system:
        request["system"] = "\n\n".join(system)
    budget = _thinking_budget(body)
    if budget is not None:
        if request["max_tokens"] <= budget:
            request["max_tokens"] = budget + default_max_tokens
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None and not (budget is not None and name in ("temperature", "top_k")):
            request[name] = body[name]  # extended thinking refuses temperature and top_k
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name"):
            continue
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        tools.append(entry)
    if tools:
        request["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            request["tool_choice"] = choice
    return request


# -- Anthropic SSE -> OpenAI chunks ---------------------------------------------------
class _TextDelta(msgspec.Struct, gc=False):
    type: Literal["text_delta"]
    text: str


class _TextDeltaEvent(msgspec.Struct, gc=False):
    # The decoder reads only these fields of such an event, and keeps no state for it.
    type: Literal["content_block_delta"]
    delta: _TextDelta
    index: int = 0


_decode_text_delta = msgspec.json.Decoder(_TextDeltaEvent).decode


def plain_text_delta(data: str) -> str | None:
    """The text of a ``text_delta`` event (what :class:`AnthropicDecoder` makes a plain
    content chunk of), or ``None`` for any other event, which is decoded whole."""
    try:
        text = _decode_text_delta(data).delta.text
    except msgspec.DecodeError:
        return None
    return text or None  # an empty delta is no chunk at all


class AnthropicDecoder:
    """Turns Messages API stream events into OpenAI chunks, keeping the little
    state that needs: which content block is which tool call, the usage."""

    def __init__(self, label: str = "Anthropic") -> None:
        self.label = label
        self.model = ""
        self.id = "msg"
        self._tool_index: dict[int, int] = {}
        self._input_tokens = 0
        self._output_tokens = 0

    # Most events of a stream, read without decoding them whole (see SSEStream).
    plain = staticmethod(plain_text_delta)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def __call__(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = as_object(event.get("message"))
            self.model = str(message.get("model") or "")
            self.id = str(message.get("id") or "msg")
            self._usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(event.get("index", 0)), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(event.get("index", 0)), event.get("delta") or {})
        if kind == "message_delta":
            self._usage(event.get("usage"))
            delta = as_object(event.get("delta"))
            reason = delta.get("stop_reason")
            out = []
            if reason:
                out.append(self._chunk({}, STOP_REASONS.get(str(reason), "stop")))
            out.append({**self._chunk({}), "choices": [], "usage": self.usage()})
            return out
        if kind == "error":
            error = as_object(event.get("error"))
            raise UpstreamStreamError(
                f"{self.label} stream error: {error.get('type', 'error')}: {error.get('message', '')}".rstrip(": ")
            )
        return []  # ping, content_block_stop, message_stop, and kinds added later

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self._input_tokens,
            "completion_tokens": self._output_tokens,
            "total_tokens": self._input_tokens + self._output_tokens,
        }

    def _usage(self, usage: Any) -> None:
        prompt, output = usage_counts(usage)
        if prompt:
            self._input_tokens = prompt
        if output is not None:
            self._output_tokens = output

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": str(block["text"])})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning": str(block["thinking"])})]
        if kind == "tool_use":
            position = len(self._tool_index)
            self._tool_index[index] = position
            given = block.get("input")
            arguments = json.dumps(given) if isinstance(given, Mapping) and given else ""
            call = {
                "index": position,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": arguments},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": str(delta["text"])})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning": str(delta["thinking"])})]
        if kind == "input_json_delta" and index in self._tool_index:
            partial = str(delta.get("partial_json") or "")
            return (
                [self._chunk({"tool_calls": [{"index": self._tool_index[index], "function": {"arguments": partial}}]})]
                if partial
                else []
            )
        return []  # signature_delta, citations_delta


def model_from(entry: Mapping[str, Any], provider: str) -> UpstreamModel | None:
    """One entry of ``GET /v1/models``."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    created = 0
    stamp = entry.get("created_at")
    if isinstance(stamp, str):
        try:
            created = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
        except ValueError:
            created = 0
    params = ["tools", "tool_choice", "temperature", "top_p", "top_k", "max_tokens", "stop"]
    if _THINKING_MODELS.search(model_id):
        params.append("reasoning")
    context = entry.get("max_input_tokens") or entry.get("context_window")
    return UpstreamModel(
        id=model_id,
        provider=provider,
        created=created,
        context_length=int(context) if isinstance(context, int) else DEFAULT_CONTEXT,
        input_modalities=("text", "image"),
        supported_parameters=tuple(params),
        name=str(entry.get("display_name") or ""),
    )
