"""Tools and tool calls between Ollama's shape and OpenAI's (pure functions).

The difference that breaks the second turn of tool use: Ollama's
``function.arguments`` is a JSON *object*, OpenAI's a JSON *string*. And Ollama
clients drop ids: the Python client sends a tool result as ``{"role": "tool",
"content", "tool_name"}`` and the assistant's calls without ``id``, while OpenAI
requires every tool message to name the ``tool_call_id`` of a call before it.
:class:`CallLedger` gives calls ids and pairs results with them.
"""

from __future__ import annotations

import json
from typing import Any

from ollama_proxy.errors import BadRequest, UpstreamStreamError
from ollama_proxy.wire.chunks import ToolCall


def tools_request(value: Any) -> list[dict[str, Any]] | None:
    """Ollama ``tools`` (already OpenAI-shaped) checked and passed on; ``None`` if none."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise BadRequest(f"tools[{i}] must be an object with a 'function'")
        function = dict(tool["function"])
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise BadRequest(f"tools[{i}].function.name must be a non-empty string")
        if not isinstance(function.get("parameters"), dict):
            # OpenAI wants a parameters schema even for a function that takes none.
            function["parameters"] = {"type": "object", "properties": {}}
        tools.append({"type": tool.get("type") or "function", "function": function})
    return tools


def arguments_text(arguments: Any, where: str) -> str:
    """Ollama's arguments (an object, or a string some clients send) as OpenAI's JSON string."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments or "{}"
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    raise BadRequest(f"{where}.function.arguments must be an object")


def arguments_object(call: ToolCall) -> dict[str, Any]:
    """The arguments of an assembled call as the JSON object Ollama's clients expect."""
    text = call.arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise UpstreamStreamError(
            f"the model called '{call.name}' with arguments that are not JSON: {text[:200]}"
        ) from None
    if not isinstance(value, dict):
        raise UpstreamStreamError(f"the model called '{call.name}' with arguments that are not a JSON object")
    return value


def ollama_tool_call(call: ToolCall) -> dict[str, Any]:
    """An assembled call in Ollama's native shape (arguments object, id, index)."""
    return {"id": call.id, "function": {"index": call.index, "name": call.name, "arguments": arguments_object(call)}}


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    """An assembled call in OpenAI's shape (arguments string), as Ollama's ``/v1`` sends it."""
    return {
        "id": call.id,
        "index": call.index,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


class CallLedger:
    """Ids for a conversation's tool calls, and which calls still await a result."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, str]] = []  # (id, name), oldest first

    def assistant_calls(self, calls: Any, where: str, message_index: int) -> list[dict[str, Any]]:
        """An assistant message's Ollama ``tool_calls`` as OpenAI's, each with an id."""
        if not isinstance(calls, list):
            raise BadRequest(f"{where}.tool_calls must be a list")
        converted = []
        # A new assistant turn: results to older calls can no longer follow.
        self._pending = []
        for i, call in enumerate(calls):
            here = f"{where}.tool_calls[{i}]"
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                raise BadRequest(f"{here} must be an object with a 'function'")
            function = call["function"]
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{here}.function.name must be a non-empty string")
            given = call.get("id")
            # Ids only need to be consistent within this one request.
            call_id = given if isinstance(given, str) and given else f"call_m{message_index}_{i}"
            self._pending.append((call_id, name))
            converted.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments_text(function.get("arguments"), here)},
                }
            )
        return converted

    def result_id(self, tool_call_id: Any, tool_name: Any) -> str | None:
        """The id a tool result answers: its own, else the oldest pending call of that name."""
        if isinstance(tool_call_id, str) and tool_call_id:
            self._pending = [p for p in self._pending if p[0] != tool_call_id]
            return tool_call_id
        for position, (call_id, name) in enumerate(self._pending):
            if not tool_name or name == tool_name:
                del self._pending[position]
                return call_id
        return None
