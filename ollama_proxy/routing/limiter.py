"""A per-provider limit on requests in flight, with a bounded, timed wait queue.

Over the limit a request waits its turn (first come, first served). When the
queue is full, or the wait lasts longer than the queue timeout, the request is
refused with :class:`Busy`: the 503 Ollama itself answers when it is busy.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ollama_proxy.errors import ServiceUnavailable

# Ollama's own words (server/sched.go ErrMaxQueue), which clients may look for.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Busy(ServiceUnavailable):
    """No room: every slot is taken and the queue is full or the wait ran out."""

    type = "server_busy"

    def __init__(self, provider: str = "") -> None:
        super().__init__(BUSY_MESSAGE)
        self.provider = provider


class ConcurrencyLimiter:
    """At most ``max_in_flight`` holders; at most ``max_queue`` waiting, each for
    at most ``queue_timeout`` seconds on ``clock``.

    Twisted's :class:`~twisted.internet.defer.DeferredSemaphore` holds the slots and
    the first-come-first-served queue; this class bounds the queue and times the wait.
    """

    def __init__(
        self, max_in_flight: int, max_queue: int, queue_timeout: float, clock: IReactorTime, name: str = ""
    ) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.max_queue = max(0, max_queue)
        self.queue_timeout = queue_timeout
        self.name = name
        self._clock = clock
        self._slots = DeferredSemaphore(self.max_in_flight)
        self.rejected = 0

    @property
    def in_flight(self) -> int:
        return self._slots.limit - self._slots.tokens

    @property
    def queued(self) -> int:
        return len(self._slots.waiting)

    def has_room(self) -> bool:
        """Would :meth:`acquire` succeed at once?"""
        return self._slots.tokens > 0

    def queue_has_room(self) -> bool:
        return self.has_room() or self.queued < self.max_queue

    def try_acquire(self) -> bool:
        """Take a slot if one is free now: True when taken (call :meth:`release` after).

        Nothing to wait for and no Deferred to await, as nearly every request finds it;
        otherwise :meth:`acquire` queues. A free slot means nobody waits (the semaphore
        hands a released slot to the first waiter), so this jumps no queue."""
        if not self.has_room():
            return False
        self._slots.acquire()  # fires at once
        return True

    def acquire(self) -> Deferred[None]:
        """Fires once a slot is held (call :meth:`release` after); fails with :class:`Busy`.

        Cancelling the Deferred (the client went away) leaves the queue."""
        if not self.has_room() and self.queued >= self.max_queue:
            self.rejected += 1
            return fail(Busy(self.name))
        waiter = self._slots.acquire()
        if not waiter.called:
            waiter.addTimeout(self.queue_timeout, self._clock, onTimeoutCancel=self._timed_out)
        return waiter.addCallback(lambda _: None)

    def release(self) -> None:
        """Give the slot back; the longest waiter gets it."""
        if self.in_flight > 0:
            self._slots.release()

    def _timed_out(self, result: Any, timeout: float) -> Any:
        if not isinstance(result, Failure):
            return result  # the slot came just as the wait ran out
        self.rejected += 1
        return Failure(Busy(self.name))
