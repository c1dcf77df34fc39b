"""The daemon's log lines, written once per reactor turn instead of once per line.

Twisted's :class:`~twisted.logger.FileLogObserver` writes and flushes every event: one
``write`` system call per access line. With ``--workers N`` the workers share one
standard output (a file, or journald's socket) and each call contends for it: in a
worker at c64 the write was 7 % of the CPU, and without access lines a request cost
3-6 % less. Here a turn's lines are gathered and written at the start of the next turn,
before the reactor polls again, in writes of whole lines of at most ``PIPE_BUF`` bytes
(4 KiB): the most a pipe or socket takes from one writer without another's bytes in
between, so the workers' lines never interleave mid-line (a single longer line is one
write, as before).

Written at once, with whatever was gathered before it: a warning, an error or a failure
(nothing a crash explains is held back), a line logged from another thread (the ledger's
database thread), and every line while the reactor is not running or is shutting down
(start-up, a stop that may block, the last lines after it stopped).
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import ILogObserver, LogLevel
from twisted.python import threadable
from zope.interface import implementer

_AT_ONCE = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


@implementer(ILogObserver)
class GatheredFileLogObserver:
    """Like ``FileLogObserver(out, format_event)``, its lines written once per turn of ``clock``."""

    def __init__(self, out: IO[str], format_event: Callable[[dict[str, Any]], str | None], clock: IReactorTime) -> None:
        self._out = out
        self._format = format_event
        self._clock = clock
        self._lines: list[str] = []
        self._call: IDelayedCall | None = None
        self._lock = threading.Lock()
        self._stopping = False
        if IReactorCore.providedBy(clock):
            clock.addSystemEventTrigger("before", "shutdown", self._stop)
            clock.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if not text:
            return
        at_once = (
            event.get("log_level") in _AT_ONCE
            or "log_failure" in event
            or self._stopping
            or not getattr(self._clock, "running", True)
            or not threadable.isInIOThread()
        )
        with self._lock:
            self._lines.append(text)
            if at_once:
                self._write()
                return
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write what was gathered, now."""
        if self._call is not None and threadable.isInIOThread():
            if self._call.active():
                self._call.cancel()
            self._call = None
        with self._lock:
            self._write()

    def _stop(self) -> None:
        self._stopping = True
        self.flush()

    def _write(self) -> None:
        # Called with the lock held: whole lines, at most PIPE_BUF bytes a write.
        lines, self._lines = self._lines, []
        if not lines:
            return
        piece: list[str] = []
        size = 0
        for line in lines:
            length = len(line.encode("utf-8", "surrogateescape")) if not line.isascii() else len(line)
            if piece and size + length > PIPE_BUF:
                self._out.write("".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += length
        self._out.write("".join(piece))
        self._out.flush()
