"""How answers are framed on the wire: NDJSON lines (Ollama) and Server-Sent Events (OpenAI, Anthropic).

Compact JSON, never ASCII-escaped, one object per line or per event: the bytes the
relay writes and the bytes an error ends a stream with come from here. Every JSON
answer is encoded by :func:`utf8`, so a lone UTF-16 surrogate (which an upstream may
send, and UTF-8 cannot hold) becomes U+FFFD instead of failing the answer. A NaN or
an infinity (which an upstream may send, and JSON cannot hold: Python would write
``NaN``, which no client parses) fails it with :class:`NonFiniteNumber`.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from typing import Any

from ollama_proxy.wire.fastjson import dumps_compact_or_none

NDJSON = b"application/x-ndjson"
EVENT_STREAM = b"text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"


def _to_replacement(error: UnicodeError) -> tuple[bytes, int]:
    # Bytes: the UTF-8 encoder takes only ASCII text from an error handler.
    assert isinstance(error, UnicodeEncodeError)
    return "\ufffd".encode() * (error.end - error.start), error.end


codecs.register_error("ollama_proxy.replace", _to_replacement)


class NonFiniteNumber(ValueError):
    """An answer held NaN or an infinity. Only an upstream can have sent it (the request
    parser refuses them), so the funnel answers 502, or ends a stream with an error line."""

    def __init__(self) -> None:
        super().__init__("the upstream sent a number JSON cannot carry (NaN or Infinity)")


# ``json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=...)``'s encoder, made
# once: json.dumps builds one per call when given options.
_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_text(obj: Any, encoder: json.JSONEncoder = _COMPACT) -> str:
    try:
        return encoder.encode(obj)
    except ValueError as error:
        if "JSON compliant" in str(error):  # the stdlib's wording for NaN and infinities
            raise NonFiniteNumber() from None
        raise


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (which UTF-8 cannot hold) becomes U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "ollama_proxy.replace")


def dumps(obj: Any) -> bytes:
    """``obj`` as a whole answer's UTF-8 JSON: compact, as Ollama's Go server writes it."""
    return compact(obj)


def compact(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON (one line, one event per streamed token: msgspec
    where it writes the stdlib's bytes, see :mod:`ollama_proxy.wire.fastjson`)."""
    fast = dumps_compact_or_none(obj)
    if fast is not None:
        return fast
    return utf8(_json_text(obj, _COMPACT))


def ndjson(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON object and a newline: never a blank line."""
    return compact(obj) + b"\n"


def sse_event(obj: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying ``obj`` as its data (with an ``event:`` line when named)."""
    head = b"event: " + event.encode("utf-8") + b"\n" if event else b""
    return head + b"data: " + compact(obj) + b"\n\n"
