"""How answers are framed on the wire: NDJSON lines (Ollama) and Server-Sent Events (OpenAI, Anthropic).

Compact JSON, never ASCII-escaped, one object per line or per event: the bytes the
relay writes and the bytes an error ends a stream with come from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

NDJSON = b"application/x-ndjson"
EVENT_STREAM = b"text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"


def compact(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def ndjson(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON object and a newline: never a blank line."""
    return compact(obj) + b"\n"


def sse_event(obj: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying ``obj`` as its data (with an ``event:`` line when named)."""
    head = b"event: " + event.encode("utf-8") + b"\n" if event else b""
    return head + b"data: " + compact(obj) + b"\n\n"
