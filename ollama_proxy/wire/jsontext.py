"""JSON text in and out, read the way Ollama's Go server reads it.

Every request body is parsed by :func:`parse_json` (the native routes, ``/v1``
and the front door's peek alike), so what Go's ``encoding/json`` refuses is
refused once, here, with a 400:

- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (Python's parser takes them);
- a number too large for a float64 (``1e400``) cannot be decoded;
- nesting deeper than :data:`MAX_DEPTH` is refused (Python's parser would raise
  ``RecursionError`` near 1,000 levels, and deep values break the code after it);
- a lone UTF-16 surrogate escape (``"\\ud800"``) becomes U+FFFD, as Go decodes it,
  so no string that cannot be encoded as UTF-8 gets past the door.

The other direction (answers) is :mod:`ollama_proxy.wire.framing`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from ollama_proxy.errors import BadRequest

MAX_DEPTH = 128

_PREFIX = "invalid JSON in request body"
# A JSON escape that decodes to a surrogate; raw UTF-8 bytes cannot encode one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# float64's largest finite value has 309 digits before the point.
_LONGEST_INT = 309


class _Refused(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"number {text} is out of range")
    return value


def _int(text: str) -> int:
    value = int(text)
    if len(text) >= _LONGEST_INT and abs(value) > 1.7976931348623157e308:
        raise _Refused(f"number {text[:24]}... is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float, parse_int=_int)
# The common body goes through msgspec first (a fifth of the stdlib's time with the hooks).
_MSGSPEC = msgspec.json.Decoder()
_NOT_FAST = object()
_FLOAT64_MAX = 1.7976931348623157e308


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _replace_surrogates(value: Any) -> Any:
    # Depth is bounded by now, so recursion is safe.
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _fast(raw: bytes) -> Any:
    """``raw`` decoded by msgspec where it reads what the stdlib decoder above reads alike;
    ``_NOT_FAST`` otherwise. msgspec refuses NaN, infinities, a lone surrogate escape and
    invalid UTF-8 itself (the stdlib path then gives the error its own words); what it
    takes that the hooks above refuse is an integer past float64's range (309 digits)."""
    try:
        value = _MSGSPEC.decode(raw)
    except Exception:  # noqa: BLE001 - anything msgspec will not read, the stdlib says why
        return _NOT_FAST
    if len(raw) >= _LONGEST_INT and _has_huge_int(value):
        return _NOT_FAST
    return value


def _has_huge_int(value: Any) -> bool:
    # A walk of the values, not a scan of the bytes: a long body is mostly one string.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int and abs(item) > _FLOAT64_MAX:
            return True
    return False


def parse_json(raw: bytes | str) -> Any:
    """``raw`` as JSON, as Ollama's decoder reads it; a :class:`BadRequest` otherwise."""
    value = _fast(raw) if isinstance(raw, bytes) else _NOT_FAST
    if value is _NOT_FAST:
        value = _slow(raw)
    if not isinstance(value, (dict, list)):
        return value
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    # Only a body with more brackets than the limit can be nested that deep.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise BadRequest(f"{_PREFIX}: nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(data):
        value = _replace_surrogates(value)
    return value


def _slow(raw: bytes | str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return _DECODER.decode(text)
    except _Refused as error:
        raise BadRequest(f"{_PREFIX}: {error}") from None
    except RecursionError:
        raise BadRequest(f"{_PREFIX}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"{_PREFIX}: {error}") from None


def as_object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: for reading an optional object
    of a parsed body or event without a second ``isinstance`` at every key."""
    return value if isinstance(value, Mapping) else {}
