"""Which models count as "running", for ``/api/ps``, and Ollama's ``keep_alive``.

A cloud model is never loaded, but Ollama's clients poll ``/api/ps`` to learn
what is warm and when it will be unloaded (Open WebUI shows it). So a model counts
as running from its first use until its ``keep_alive`` window after the last use
runs out, on the injected clock. ``keep_alive: 0`` unloads it at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.models import UpstreamModel, details, rfc3339

log = Logger()

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes
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


@dataclass
class _Loaded:
    model: UpstreamModel
    expires: float


class RunningModels:
    """Models used within their ``keep_alive`` window, on ``clock``."""

    def __init__(self, clock: IReactorTime, default_keep_alive: float = DEFAULT_KEEP_ALIVE) -> None:
        self._clock = clock
        self.default_keep_alive = default_keep_alive
        self._loaded: dict[str, _Loaded] = {}

    def use(self, model: UpstreamModel, keep_alive: float | None = None) -> None:
        """``model`` was just used: it stays listed for ``keep_alive`` seconds (0 unloads)."""
        window = self.default_keep_alive if keep_alive is None else keep_alive
        if not window < FOREVER:  # a caller's huge, infinite or NaN window: forever is the most there is
            window = FOREVER
        if window <= 0:
            self.unload(model)
            return
        self._loaded[model.id] = _Loaded(model, self._clock.seconds() + window)

    def unload(self, model: UpstreamModel) -> None:
        self._loaded.pop(model.id, None)

    def is_loaded(self, model: UpstreamModel) -> bool:
        entry = self._loaded.get(model.id)
        return entry is not None and entry.expires > self._clock.seconds()

    def listing(self) -> list[dict[str, Any]]:
        """``/api/ps`` entries, the longest remaining first (as Ollama sorts them)."""
        now = self._clock.seconds()
        for key in [k for k, v in self._loaded.items() if v.expires <= now]:
            del self._loaded[key]
        ordered = sorted(self._loaded.values(), key=lambda entry: entry.expires, reverse=True)
        entries = []
        for entry in ordered:
            try:
                entries.append(_ps_entry(entry))
            except Exception:  # noqa: BLE001 - one bad entry must not take /api/ps down for everyone
                log.failure("dropping {model} from /api/ps", model=entry.model.id)
                self._loaded.pop(entry.model.id, None)
        return entries


def _ps_entry(entry: _Loaded) -> dict[str, Any]:
    model = entry.model
    name = model.ollama_name
    return {
        "name": name,
        "model": name,
        "size": 0,
        "digest": model.digest,
        "details": details(model),
        "expires_at": rfc3339(entry.expires),
        "size_vram": 0,
        "context_length": model.context_length or 0,
    }
