"""Which models count as "running", for ``/api/ps``, and Ollama's ``keep_alive``.

A cloud model is never loaded, but Ollama's clients poll ``/api/ps`` to learn
what is warm and when it will be unloaded (Open WebUI shows it). So a model counts
as running from its first use until its ``keep_alive`` window after the last use
runs out, on the injected clock. ``keep_alive: 0`` unloads it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.wire.keep_alive import FOREVER
from ollama_proxy.wire.models import UpstreamModel, details, rfc3339

log = Logger()

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes


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
