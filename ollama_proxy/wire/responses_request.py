"""OpenAI's Responses API requests (``POST /v1/responses``) checked and planned (pure).

The server keeps nothing between requests, as Ollama's does: ``previous_response_id``,
``conversation`` and ``background`` are refused with a 400 that says so. The input
items become OpenAI chat messages: ``message`` items (``input_text``,
``input_image``, ``output_text`` parts), ``function_call`` items the assistant's
``tool_calls`` (each must be answered by a ``function_call_output`` naming its
``call_id``), ``reasoning`` items accepted and left out. Only ``function`` tools
can be served; any other tool type is a 400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.anthropic_blocks import ANTHROPIC_FORMAT
from ollama_proxy.wire.images import decode_base64
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.openai_request import reasoning_effort
from ollama_proxy.wire.request_body import MAX_TOKEN_CAP, require_capability

# Request fields the answer's ``response`` object repeats back.
# reasoning.effort as OpenAI's API takes it (none .. xhigh), and Ollama's "max".
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "metadata", "user", "tool_choice", "tools")
STATELESS = "this server is stateless: {field} is not supported; send the whole conversation in 'input'"


@dataclass
class ResponsesPlan:
    """A checked Responses request: the upstream chat body, and what the answer repeats."""

    upstream: dict[str, Any]
    stream: bool
    echo: dict[str, Any] = field(default_factory=dict)
    show_thinking: bool = True
    encrypted: bool = False  # include asks for reasoning.encrypted_content (the signature)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"Invalid type for '{where}': expected a string")
    return value


def _number(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        word = "an integer" if kind is int else "a number"
        raise BadRequest(f"Invalid type for '{key}': expected {word}")
    return value


def _part(part: Any, where: str) -> dict[str, Any]:
    """One content part as an OpenAI chat part."""
    if not isinstance(part, Mapping):
        raise BadRequest(f"Invalid type for '{where}': expected an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _text(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _text(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"'{where}.image_url' is required: images are accepted as URLs or data URLs (no file_id)")
        _check_data_url(url, f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise BadRequest(f"Invalid value for '{where}.type': content part type '{kind}' is not supported")


def _check_data_url(url: str, where: str) -> None:
    """A ``data:`` image URL must carry base64 (OpenAI refuses anything else; a provider
    sent broken bytes answers worse)."""
    if not url.startswith("data:"):
        return
    head, _, payload = url.partition(",")
    if not head.endswith(";base64") or not payload:
        raise BadRequest(_BAD_DATA_URL.format(where=where))
    try:
        decode_base64(payload, where)
    except BadRequest:
        raise BadRequest(_BAD_DATA_URL.format(where=where)) from None


_BAD_DATA_URL = (
    "Invalid '{where}'. Expected a base64-encoded data URL with an image MIME type "
    "(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got a value with an invalid format."
)


def _effort(reasoning: Mapping[str, Any] | None) -> None:
    """``reasoning.effort`` among the values OpenAI's API (and Ollama's) take, named when not."""
    effort = (reasoning or {}).get("effort")
    if effort in (None, "") or effort in EFFORTS:
        return
    supported = ", ".join(f"'{e}'" for e in EFFORTS[:-1]) + f" and '{EFFORTS[-1]}'"
    raise BadRequest(f"Invalid value for 'reasoning.effort': {json.dumps(effort)}. Supported values are: {supported}.")


def _cap(body: Mapping[str, Any]) -> int | None:
    """``max_output_tokens``: a positive integer (OpenAI's bounds checks, in its words)."""
    cap = _number(body, "max_output_tokens", int)
    if cap is None:
        return None
    if cap < 1:
        raise BadRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, but got {cap} instead."
        )
    if cap > MAX_TOKEN_CAP:
        raise BadRequest(
            "Invalid 'max_output_tokens': integer above maximum value. "
            f"Expected a value <= {MAX_TOKEN_CAP}, but got {cap} instead."
        )
    return int(cap)


def _content(content: Any, where: str) -> tuple[Any, bool]:
    """A message's content for the chat body, and whether it holds images."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        raise BadRequest(f"Invalid type for '{where}': expected a string or an array of content parts")
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts), False
    return parts, True


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for i, part in enumerate(output):
            converted = _part(part, f"{where}[{i}]")
            if converted["type"] != "text":
                raise BadRequest(f"'{where}[{i}]': only text is supported in a function_call_output")
            texts.append(converted["text"])
        return "".join(texts)
    raise BadRequest(f"Invalid type for '{where}': expected a string")


class _Input:
    """The input items as chat messages; calls and their outputs paired by ``call_id``."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.calls: set[str] = set()
        self.has_images = False
        self.reasoning: list[dict[str, Any]] = []  # signed reasoning awaiting its assistant turn

    def add(self, item: Any, where: str) -> None:
        if not isinstance(item, Mapping):
            raise BadRequest(f"Invalid type for '{where}': expected an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._call(item, where)
        elif kind == "function_call_output":
            call_id = _text(item.get("call_id"), f"{where}.call_id")
            if call_id not in self.calls:
                raise BadRequest(f"No tool call found for function call output with call_id {call_id}.")
            output = _output_text(item.get("output"), f"{where}.output")
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            # Sent back only when sealed (this proxy puts OpenRouter's signature in
            # encrypted_content): Claude wants its signed thinking before a tool result.
            detail = _signed_reasoning(item)
            if detail is not None:
                self.reasoning.append(detail)
        elif kind == "item_reference":
            raise BadRequest(STATELESS.format(field="'item_reference'"))
        else:
            raise BadRequest(f"Invalid value for '{where}.type': input item type '{kind}' is not supported")

    def _message(self, item: Mapping[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise BadRequest(f"Invalid value for '{where}.role': {json.dumps(role)}")
        content, images = _content(item.get("content"), f"{where}.content")
        self.has_images = self.has_images or images
        if role == "assistant":
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content)
            last = self.messages[-1] if self.messages else None
            if last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["content"] += content  # one turn said in several items
                self._seal(last)
                return
        self.messages.append({"role": "system" if role == "developer" else role, "content": content})
        if role == "assistant":
            self._seal(self.messages[-1])
        else:
            self.reasoning = []  # reasoning not followed by the assistant's turn belongs to none

    def _call(self, item: Mapping[str, Any], where: str) -> None:
        call_id = _text(item.get("call_id"), f"{where}.call_id")
        name = _text(item.get("name"), f"{where}.name")
        arguments = item.get("arguments", "")
        if not isinstance(arguments, str):
            raise BadRequest(f"Invalid type for '{where}.arguments': expected a JSON string")
        self.calls.add(call_id)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)  # parallel calls: one assistant turn
        else:
            self.messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        self._seal(self.messages[-1])

    def _seal(self, message: dict[str, Any]) -> None:
        if self.reasoning:
            message.setdefault("reasoning_details", []).extend(self.reasoning)
            self.reasoning = []


def _signed_reasoning(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reasoning item sealed by this proxy, as OpenRouter's ``reasoning_details`` entry."""
    signature = item.get("encrypted_content")
    if not isinstance(signature, str) or not signature:
        return None
    summary = item.get("summary")
    parts = summary if isinstance(summary, list) else []
    text = "".join(p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return {"type": "reasoning.text", "text": text, "signature": signature, "format": ANTHROPIC_FORMAT}


def _input(raw: Any) -> _Input:
    converted = _Input()
    if isinstance(raw, str):
        converted.messages.append({"role": "user", "content": raw})
        return converted
    if not isinstance(raw, list):
        raise BadRequest("Invalid type for 'input': expected a string or an array of input items")
    for i, item in enumerate(raw):
        converted.add(item, f"input[{i}]")
    return converted


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("Invalid type for 'tools': expected an array")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, Mapping):
            raise BadRequest(f"Invalid type for 'tools[{i}]': expected an object")
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(f"tool type '{kind}' is not supported by this server (tools[{i}]): only 'function' tools")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"Missing required parameter: 'tools[{i}].name'")
        parameters = tool.get("parameters")
        function: dict[str, Any] = {
            "name": name,
            "parameters": dict(parameters) if isinstance(parameters, Mapping) else {"type": "object", "properties": {}},
        }
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any, names: list[str]) -> Any:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, Mapping) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str) or name not in names:
            raise BadRequest(f"Invalid value for 'tool_choice.name': no function tool named {json.dumps(name)}")
        return {"type": "function", "function": {"name": name}}
    kind = raw.get("type") if isinstance(raw, Mapping) else raw
    raise BadRequest(f"Invalid value for 'tool_choice': {json.dumps(kind)} is not supported")


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, Mapping):
        raise BadRequest("Invalid type for 'text': expected an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise BadRequest("Invalid type for 'text.format': expected an object")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, Mapping):
            raise BadRequest("Missing required parameter: 'text.format.schema'")
        spec: dict[str, Any] = {"name": str(fmt.get("name") or "response"), "schema": dict(schema)}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest(f"Invalid value for 'text.format.type': {json.dumps(kind)}")


def plan_responses(body: Mapping[str, Any], model: UpstreamModel, name: str) -> ResponsesPlan:
    """Check a Responses request; plan the upstream chat body."""
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise BadRequest(STATELESS.format(field=f"'{key}'"))
    if body.get("background") is True:
        raise BadRequest(STATELESS.format(field="'background'"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("Invalid type for 'stream': expected a boolean")
    converted = _input(body.get("input"))
    instructions = body.get("instructions")
    messages = converted.messages
    if instructions is not None:
        messages = [{"role": "system", "content": _text(instructions, "instructions")}, *messages]
    if not messages:
        raise BadRequest("Missing required parameter: 'input'")
    tools = _tools(body.get("tools"))
    names = [t["function"]["name"] for t in tools]
    choice = _tool_choice(body.get("tool_choice"), names)
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, Mapping):
        raise BadRequest("Invalid type for 'reasoning': expected an object")
    _effort(reasoning)
    effort = reasoning_effort({"reasoning": reasoning} if reasoning else {})
    for key in ("store", "parallel_tool_calls"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise BadRequest(f"Invalid type for '{key}': expected a boolean")
    include = body.get("include")
    if include is not None and not (isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise BadRequest("Invalid type for 'include': expected an array of strings")
    if tools:
        require_capability(model, name, "tools")
    if converted.has_images:
        require_capability(model, name, "vision")

    upstream: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for key in ("temperature", "top_p"):
        if _number(body, key) is not None:
            upstream[key] = body[key]
    cap = _cap(body)
    if cap is not None:
        upstream["max_tokens"] = cap
    if tools:
        upstream["tools"] = tools
        if choice is not None:
            upstream["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            upstream["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _format(body.get("text"))
    if fmt:
        upstream["response_format"] = fmt
    if effort is not None and "thinking" in model.capabilities():
        upstream["reasoning"] = {"enabled": False, "exclude": True} if effort == "none" else {"effort": effort}
    echo = {k: body[k] for k in ECHOED if body.get(k) is not None}
    echo["parallel_tool_calls"] = body.get("parallel_tool_calls", True)
    echo["store"] = False  # whatever was asked: nothing is kept
    echo["text"] = {"format": dict(body["text"]["format"])} if fmt else {"format": {"type": "text"}}
    if isinstance(reasoning, Mapping):
        echo["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    encrypted = "reasoning.encrypted_content" in (include or ())
    return ResponsesPlan(upstream, bool(stream), echo, show_thinking=effort != "none", encrypted=encrypted)
