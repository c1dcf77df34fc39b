"""Work that may wait for the sockets being closed now: a client's leaving, unwound later;
a finished request's bookkeeping, done once its answer has been sent.

A client that leaves mid-stream costs two things: closing its upstream connection
(cheap, and what stops the provider generating) and unwinding its request (the
handler's coroutines cancelled, the access line, the counters: most of a
millisecond). When thousands leave at once and each does both in turn, the last
upstream is closed seconds after its client left. Here the unwinding is queued:
it runs two reactor turns after it was queued at the earliest (after the poll
that closes the upstream sockets stopped in the meantime), and at most
``budget`` seconds of it per turn, so the reactor keeps polling, and closing,
while a burst is unwound.

A finished request's bookkeeping (its record completed, the access line, the
metrics and ledger observers, and its release from what a drain waits for) waits
the same two turns, in a queue of its own with no budget (:func:`after_send`):
the answer was only buffered when the request finished and is sent in the next
poll, so work done before that poll is latency the client waits for, like nginx's
log phase after the response. No budget, because what finishes in a turn is
bounded by that turn's I/O, and a budget would let a backlog grow under load.

What is still queued when a stop has drained the requests runs at once: the proxy's
service flushes the queues before it stops the ledger (every finished request's row is
written), and the reactor's shutdown runs what was queued after that (the 503s of a
drain) once the services have stopped.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger

log = Logger()

DEFAULT_BUDGET = 0.005  # seconds of queued work per reactor turn


class Later:
    """A queue of calls run after the next poll, a slice of them per reactor turn."""

    __slots__ = ("_clock", "_budget", "_timer", "_incoming", "_aging", "_ready", "_tick", "__weakref__")

    def __init__(
        self, clock: IReactorTime, budget: float = DEFAULT_BUDGET, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._clock = clock
        self._budget = budget
        self._timer = timer
        self._incoming: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []  # queued this turn
        self._aging: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []  # queued the turn before
        self._ready: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._tick: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._incoming) + len(self._aging) + len(self._ready)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` two reactor turns from now or later (an exception is logged)."""
        self._incoming.append((fn, args))
        if self._tick is None:
            self._tick = self._clock.callLater(0, self._run)

    def flush(self) -> None:
        """Run everything queued now, in order (the reactor is shutting down), and
        what that queues meanwhile."""
        while self._ready or self._aging or self._incoming:
            pending = [*self._ready, *self._aging, *self._incoming]
            self._ready.clear()
            self._aging, self._incoming = [], []
            for fn, args in pending:
                _call(fn, args)
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None

    def _run(self) -> None:
        # self._tick stays set while this runs: a call queued meanwhile schedules no second run.
        ready = self._ready
        ready.extend(self._aging)
        self._aging, self._incoming = self._incoming, []
        deadline = self._timer() + self._budget
        while ready:
            _call(*ready.popleft())
            if self._timer() >= deadline:
                break
        self._tick = self._clock.callLater(0, self._run) if ready or self._aging or self._incoming else None


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - one failed call must not keep the others queued
        log.failure("deferred cleanup {fn!r} failed", fn=fn)


_QUEUES: weakref.WeakKeyDictionary[Any, dict[float, Later]] = weakref.WeakKeyDictionary()


def _queue(clock: IReactorTime, budget: float) -> Later:
    queues = _QUEUES.get(clock)
    if queues is None:
        queues = _QUEUES[clock] = {}
        if IReactorCore.providedBy(clock):
            clock.addSystemEventTrigger("after", "shutdown", flush, clock)
    queue = queues.get(budget)
    if queue is None:
        queue = queues[budget] = Later(clock, budget)
    return queue


def later(clock: IReactorTime) -> Later:
    """The one unwinding queue of ``clock`` (the reactor's is shared by everything running
    on it, so its budget holds for all of them together)."""
    return _queue(clock, DEFAULT_BUDGET)


def after_send(clock: IReactorTime) -> Later:
    """The bookkeeping queue of ``clock``: two turns on, everything ready each turn."""
    return _queue(clock, math.inf)


def flush(clock: IReactorTime) -> None:
    """Run what every queue of ``clock`` holds, now, and what that queues meanwhile in
    any of them (a stop; a test's end)."""
    queues = _QUEUES.get(clock, {})
    while any(len(queue) for queue in list(queues.values())):
        for queue in list(queues.values()):
            queue.flush()
