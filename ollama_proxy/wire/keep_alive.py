"""Ollama's ``keep_alive``: seconds or a Go duration string, read as Ollama reads it (pure).

Go's ``time.ParseDuration`` is reproduced exactly (its error wording included,
since clients see it in the 400), so ``"5m"``, ``"-1s"`` and ``300`` mean what they
mean to Ollama; a negative window is :data:`FOREVER`, Go's largest Duration.
"""

from __future__ import annotations

import re
from typing import Any

from ollama_proxy.errors import BadRequest

# A negative keep_alive means "forever": Go's largest Duration, as Ollama stores it.
FOREVER = (2**63 - 1) / 1e9

# Nanoseconds per unit, as Go's time package has them.
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_MAX_NS = 2**63  # one past Go's largest Duration: -2**63 ns is the only value that reaches it
_DIGITS = re.compile(r"[0-9]*")
_UNIT = re.compile(r"[^0-9.]*")


def _go_quote(text: str) -> str:
    """``text`` quoted as Go's time package quotes it: non-ASCII and control
    characters as ``\\xHH`` bytes of their UTF-8 form."""
    out = ['"']
    for char in text:
        if char < " " or char >= "\x80":
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + char if char in '"\\' else char)
    out.append('"')
    return "".join(out)


def _go_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration string, or a :class:`BadRequest` in
    ``time.ParseDuration``'s words (overflow past Go's int64 included)."""
    invalid = BadRequest(f"time: invalid duration {_go_quote(text)}")
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or rest[0].isascii() and rest[0].isdigit()):
            raise invalid
        whole = _DIGITS.match(rest).group()  # type: ignore[union-attr]
        rest = rest[len(whole) :]
        fraction = ""
        if rest[:1] == ".":
            fraction = _DIGITS.match(rest, 1).group()  # type: ignore[union-attr]
            rest = rest[1 + len(fraction) :]
        if not whole and not fraction:
            raise invalid
        unit = _UNIT.match(rest).group()  # type: ignore[union-attr]
        rest = rest[len(unit) :]
        if not unit:
            raise BadRequest(f"time: missing unit in duration {_go_quote(text)}")
        if unit not in _UNITS:
            raise BadRequest(f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(text)}")
        scale = _UNITS[unit]
        value = int(whole or "0")
        if value > _MAX_NS // scale:
            raise invalid
        value *= scale
        if fraction:
            # Go keeps at most the digits that fit; float64 then is nanosecond-accurate.
            value += int(int(fraction[:18]) * (scale / 10 ** len(fraction[:18])))
            if value > _MAX_NS:
                raise invalid
        total += value
        if total > _MAX_NS:
            raise invalid
    if not negative and total > _MAX_NS - 1:
        raise invalid
    return -total if negative else total


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``), as
    ``time.ParseDuration`` reads it; a :class:`BadRequest` in its words otherwise
    (``"99999999h"`` overflows Go's int64 nanoseconds: refused, as Go does)."""
    return _go_duration_ns(text) / 1e9


def parse_keep_alive(value: Any) -> float | None:
    """``keep_alive`` in seconds, ``None`` when absent; negative means forever.

    Ollama accepts a number of seconds or a Go duration string; anything else is a
    400 with Go's wording. A number too large for a Go duration is forever, as a
    negative one is (the parser has refused NaN and the infinities already).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            return FOREVER
        if not seconds * 1e9 < _MAX_NS - 1:  # NaN too
            return FOREVER
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    elif isinstance(value, list):
        raise BadRequest("Unsupported type: '[]interface {}'")
    else:
        raise BadRequest("Unsupported type: 'map[string]interface {}'")
    return FOREVER if seconds < 0 else seconds
