"""Which models count as "running", for ``/api/ps``, and Ollama's ``keep_alive``.

A cloud model is never loaded, but Ollama's clients poll ``/api/ps`` to learn
what is warm and when it will be unloaded (Open WebUI shows it). So a model counts
as running from its first use until its ``keep_alive`` window after the last use
runs out, on the injected clock. ``keep_alive: 0`` unloads it at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.models import UpstreamModel, details, rfc3339

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes
# A negative keep_alive means "forever": Go's largest Duration, as Ollama stores it.
FOREVER = (2**63 - 1) / 1e9

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_COMPONENT = re.compile(r"([0-9]*\.?[0-9]*)([^0-9.]*)")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``), as
    ``time.ParseDuration`` reads it; a :class:`BadRequest` in its words otherwise."""
    rest = text
    sign = 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise BadRequest(f"time: invalid duration {_go_quote(text)}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _COMPONENT.match(rest, position)
        assert match is not None  # the pattern also matches the empty string
        number, unit = match.group(1), match.group(2)
        if not number or number == ".":
            raise BadRequest(f"time: invalid duration {_go_quote(text)}")
        if not unit:
            raise BadRequest(f"time: missing unit in duration {_go_quote(text)}")
        if unit not in _UNITS:
            # Go's unit is the run of non-digits; a stray sign or space ends up here.
            raise BadRequest(f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(text)}")
        total += float(number) * _UNITS[unit]
        position = match.end()
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """``keep_alive`` in seconds, ``None`` when absent; negative means forever.

    Ollama accepts a number of seconds or a Go duration string; anything else is a
    400 with Go's wording.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        seconds = float(value)
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
        return [_ps_entry(entry) for entry in ordered]


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
