"""A per-provider limit on requests in flight, with a bounded, timed wait queue.

Over the limit a request waits its turn (first come, first served). When the
queue is full, or the wait lasts longer than the queue timeout, the request is
refused with :class:`Busy`: the 503 Ollama itself answers when it is busy.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ollama_proxy.errors import ServiceUnavailable

# Ollama's own words (server/sched.go ErrMaxQueue), which clients may look for.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Busy(ServiceUnavailable):
    """No room: every slot is taken and the queue is full or the wait ran out."""

    type = "server_busy"

    def __init__(self, provider: str = "") -> None:
        super().__init__(BUSY_MESSAGE)
        self.provider = provider


class _Waiter:
    def __init__(self, deferred: Deferred[None], timer: IDelayedCall | None) -> None:
        self.deferred = deferred
        self.timer = timer


class ConcurrencyLimiter:
    """At most ``max_in_flight`` holders; at most ``max_queue`` waiting, each for
    at most ``queue_timeout`` seconds on ``clock``."""

    def __init__(
        self, max_in_flight: int, max_queue: int, queue_timeout: float, clock: IReactorTime, name: str = ""
    ) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.max_queue = max(0, max_queue)
        self.queue_timeout = queue_timeout
        self.name = name
        self._clock = clock
        self.in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self.rejected = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def has_room(self) -> bool:
        """Would :meth:`acquire` succeed at once?"""
        return self.in_flight < self.max_in_flight

    def queue_has_room(self) -> bool:
        return self.has_room() or len(self._queue) < self.max_queue

    def acquire(self) -> Deferred[None]:
        """Fires once a slot is held (call :meth:`release` after); fails with :class:`Busy`.

        Cancelling the Deferred (the client went away) leaves the queue."""
        if self.in_flight < self.max_in_flight:
            self.in_flight += 1
            return succeed(None)
        if len(self._queue) >= self.max_queue:
            self.rejected += 1
            return fail(Busy(self.name))
        waiter = _Waiter(Deferred(canceller=lambda d: self._leave(waiter)), None)
        waiter.timer = self._clock.callLater(self.queue_timeout, self._timed_out, waiter)
        self._queue.append(waiter)
        return waiter.deferred

    def release(self) -> None:
        """Give the slot back; the longest waiter gets it."""
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            if not waiter.deferred.called:
                waiter.deferred.callback(None)  # the slot passes on: in_flight is unchanged
                return
        self.in_flight = max(0, self.in_flight - 1)

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _timed_out(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if waiter in self._queue:
            self._queue.remove(waiter)
            self.rejected += 1
            waiter.deferred.errback(Busy(self.name))
