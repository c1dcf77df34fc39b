"""Shared material for the wire-fidelity tests: images and small helpers."""

from __future__ import annotations

import base64
from typing import Any

# A real 1x1 PNG, and the first bytes of a JPEG (the simulator checks magic bytes only).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 16

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}, "24h": {"type": "boolean"}}},
    },
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def last_chat(simulator: Any) -> dict[str, Any]:
    """The body of the last chat request the simulator received."""
    return simulator.chat_requests()[-1].body
