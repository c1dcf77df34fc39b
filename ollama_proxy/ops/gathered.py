"""The daemon's log lines, written once per reactor turn instead of once per line.

Twisted's :class:`~twisted.logger.FileLogObserver` writes and flushes every event: one
``write`` system call per access line. With ``--workers N`` the workers share one
standard output (a file, or journald's socket) and each call contends for it: in a
worker at c64 the write was 7 % of the CPU, and without access lines a request cost
3-6 % less. Here a turn's lines are gathered and written in one call at the start of
the next turn, before the reactor polls again. A warning, an error or a failure is
written at once, with whatever was gathered before it (so nothing a crash explains is
held back), and so is everything while the reactor is not running (start-up, the last
lines after it stopped); the reactor's shutdown writes what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import ILogObserver, LogLevel
from zope.interface import implementer

_AT_ONCE = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class GatheredFileLogObserver:
    """Like ``FileLogObserver(out, format_event)``, its lines written once per turn of ``clock``."""

    def __init__(self, out: IO[str], format_event: Callable[[dict[str, Any]], str | None], clock: IReactorTime) -> None:
        self._out = out
        self._format = format_event
        self._clock = clock
        self._lines: list[str] = []
        self._call: IDelayedCall | None = None
        if IReactorCore.providedBy(clock):
            clock.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if not text:
            return
        self._lines.append(text)
        if event.get("log_level") in _AT_ONCE or "log_failure" in event or not getattr(self._clock, "running", True):
            self.flush()
        elif self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write what was gathered, now."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._out.write(text)
            self._out.flush()
