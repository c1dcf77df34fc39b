"""A circuit breaker per provider: closed, open, half_open.

Closed lets every call through and watches the outcomes. It opens when the
failure rate over a sliding time window reaches a threshold (once the window
holds a minimum number of calls), or after a run of consecutive failures, which
catches a quiet provider that never reaches the minimum. Open refuses calls for a
wait that doubles with each trip in a row (jittered, capped, never shorter than a
``Retry-After`` the provider sent). When the wait is over the breaker is half
open: a few probe calls go through; a success closes it, a failure opens it
again for longer.

401 and 402 mean the key or the account is refused. A retry will not help, but
OpenRouter has answered 401 during outages, so the breaker opens for a long wait
and then keeps probing instead of giving up on the provider.

Time comes from an injected clock and jitter from an injected ``random.Random``,
so all of this is tested on ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import random
from collections import deque
from enum import Enum

from twisted.internet.interfaces import IReactorTime

from ollama_proxy.config.providers import BreakerConfig

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Outcome(Enum):
    """How a call ended, as far as the breaker cares."""

    SUCCESS = "success"  # the provider answered (a 400 or 404 counts: it is up)
    FAILURE = "failure"  # connection error, timeout, 408, 429, 5xx, broken stream
    AUTH_FAILURE = "auth_failure"  # 401, 402
    IGNORED = "ignored"  # says nothing about the provider (the client went away)


class BreakerCall:
    """A call the breaker let through; report how it ended exactly once."""

    __slots__ = ("_breaker", "probe", "_done")  # held as long as the stream

    def __init__(self, breaker: CircuitBreaker, probe: bool) -> None:
        self._breaker = breaker
        self.probe = probe
        self._done = False

    def finish(self, outcome: Outcome, retry_after: float | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._finished(self, outcome, retry_after)


class CircuitBreaker:
    """The breaker of one provider."""

    def __init__(
        self, settings: BreakerConfig, clock: IReactorTime, rng: random.Random | None = None, name: str = ""
    ) -> None:
        self.settings = settings
        self.name = name
        self._clock = clock
        self._rng = rng or random.Random()
        self._state = CLOSED
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed), closed state only
        self._consecutive = 0
        self._trips_in_a_row = 0
        self._open_until = 0.0
        self._not_before = 0.0  # a Retry-After the provider asked for
        self._auth = False
        self._probes = 0
        self.trips = 0  # over the breaker's life, for the stats
        self.last_trip_reason: str | None = None

    # -- reading ------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock.seconds() >= self._open_until:
            self._state = HALF_OPEN
            self._probes = 0
        return self._state

    def open_remaining(self) -> float:
        """Seconds until an open breaker turns half open (0 when it is not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock.seconds())

    def allows(self) -> bool:
        """Would :meth:`begin` let a call through now?"""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN:
            return self._probes < self.settings.half_open_probes
        return False

    def window_counts(self) -> tuple[int, int]:
        """``(calls, failures)`` in the sliding window."""
        self._expire()
        return len(self._calls), sum(1 for _, failed in self._calls if failed)

    # -- calls --------------------------------------------------------------------
    def begin(self, force: bool = False) -> BreakerCall | None:
        """Let a call through, or ``None`` when the breaker refuses it.

        ``force`` lets one probe through an open breaker: used when every
        candidate provider is open and this one's wait ends first.
        """
        state = self.state
        if state == CLOSED:
            return BreakerCall(self, probe=False)
        if state == OPEN and not force:
            return None
        if state == HALF_OPEN and self._probes >= self.settings.half_open_probes and not force:
            return None
        if state == OPEN:
            self._state = HALF_OPEN
        self._probes += 1
        return BreakerCall(self, probe=True)

    def record(self, outcome: Outcome, retry_after: float | None = None) -> None:
        """An outcome learned outside a call (the health check)."""
        self._finished(None, outcome, retry_after)

    def health(self, outcome: Outcome, retry_after: float | None = None) -> None:
        """What the health check learned. A healthy models endpoint does not prove
        that chat works, so it never closes the breaker; it only ends an open wait
        early (not before a ``Retry-After``, never after a 401/402) so that real
        calls can probe."""
        state = self.state
        if outcome is Outcome.SUCCESS:
            if state == OPEN and not self._auth and self._clock.seconds() >= self._not_before:
                self._state = HALF_OPEN
                self._probes = 0
            return
        if outcome is Outcome.IGNORED:
            return
        if state == OPEN:
            return
        self._finished(None, outcome, retry_after)

    # -- internals ----------------------------------------------------------------
    def _finished(self, call: BreakerCall | None, outcome: Outcome, retry_after: float | None) -> None:
        if call is not None and call.probe and self._probes > 0:
            self._probes -= 1
        state = self.state
        if outcome is Outcome.IGNORED:
            return
        if outcome is Outcome.AUTH_FAILURE:
            self._trip("the provider refused the key (401/402)", retry_after, auth=True)
            return
        if state == OPEN:
            return  # a call that began before the trip: the breaker already knows
        if state == HALF_OPEN:
            if outcome is Outcome.SUCCESS:
                self._close()
            else:
                self._trip("a probe failed", retry_after)
            return
        now = self._clock.seconds()
        failed = outcome is Outcome.FAILURE
        self._calls.append((now, failed))
        self._expire()
        if not failed:
            self._consecutive = 0
            return
        self._consecutive += 1
        settings = self.settings
        if self._consecutive >= settings.consecutive_failures:
            self._trip(f"{self._consecutive} failures in a row", retry_after)
            return
        calls, failures = self.window_counts()
        if calls >= settings.minimum_calls and failures / calls >= settings.failure_rate:
            self._trip(f"{failures} of the last {calls} calls failed", retry_after)

    def _expire(self) -> None:
        horizon = self._clock.seconds() - self.settings.window
        while self._calls and self._calls[0][0] <= horizon:
            self._calls.popleft()

    def _trip(self, reason: str, retry_after: float | None, auth: bool = False) -> None:
        settings = self.settings
        self._trips_in_a_row += 1
        self.trips += 1
        spread = 1 + settings.jitter * (2 * self._rng.random() - 1)
        if auth:
            wait = settings.auth_open_wait * spread
        else:
            wait = min(settings.max_open_wait, settings.open_wait * 2 ** (self._trips_in_a_row - 1) * spread)
        floor = retry_after or 0.0
        wait = max(wait, floor)
        now = self._clock.seconds()
        self._state = OPEN
        self._auth = auth
        self._open_until = now + wait
        self._not_before = now + floor
        self._probes = 0
        self._calls.clear()
        self._consecutive = 0
        self.last_trip_reason = reason

    def _close(self) -> None:
        self._state = CLOSED
        self._auth = False
        self._trips_in_a_row = 0
        self._probes = 0
        self._calls.clear()
        self._consecutive = 0
