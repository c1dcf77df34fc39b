"""JSON on the hot path: msgspec where it writes the stdlib's bytes, the stdlib elsewhere.

Every streamed token is one upstream event decoded and one line encoded, so the JSON
library is a large share of the cost per token. msgspec is several times faster than
the stdlib; these helpers keep the wire byte for byte what ``json`` wrote:

- strings, integers, booleans and null are written alike (non-ASCII kept, control
  characters as ``\\uXXXX``);
- floats are not (``1e-05`` against ``0.00001``), so an object holding a float (a
  logprob, a tool argument) is written by the stdlib: a scan of the object's types
  is much cheaper than the encoding it saves;
- what msgspec refuses to read (``NaN``, ``Infinity``) is read by the stdlib.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_SCALARS = (str, int, type(None))  # bool is an int


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, faster; the stdlib's ``ValueError`` for what is not JSON."""
    try:
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError:
            return json.loads(data)
    except RecursionError:
        # Nesting no parser here can follow: as unreadable as any other JSON error.
        raise ValueError("nested too deeply") from None


def dumps_compact_or_none(obj: Any) -> bytes | None:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``, faster;
    ``None`` where msgspec would not write those bytes (floats, a lone surrogate, ...)."""
    if _plain(obj):
        try:
            return _encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
            pass  # the stdlib says what is wrong, or writes what msgspec would not
    return None


def _plain(obj: Any) -> bool:
    """Only strings, integers, booleans, null, string-keyed dicts and lists (no float)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) is not str or not (isinstance(value, _SCALARS) or _plain(value)):
                return False
        return True
    if isinstance(obj, list):
        return all(isinstance(value, _SCALARS) or _plain(value) for value in obj)
    return isinstance(obj, _SCALARS)
