"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from ollama_proxy.config.providers import BreakerConfig
from ollama_proxy.routing.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Outcome

S, F = Outcome.SUCCESS, Outcome.FAILURE


def make(**settings) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    defaults = dict(jitter=0.0)
    defaults.update(settings)
    return CircuitBreaker(BreakerConfig(**defaults), clock, random.Random(7), name="p"), clock


def call(breaker: CircuitBreaker, outcome: Outcome, retry_after: float | None = None) -> bool:
    handle = breaker.begin()
    if handle is None:
        return False
    handle.finish(outcome, retry_after)
    return True


def test_consecutive_failures_open_it():
    breaker, clock = make(consecutive_failures=3, minimum_calls=100)
    for _ in range(2):
        call(breaker, F)
    assert breaker.state == CLOSED
    call(breaker, S)  # a success ends the run
    call(breaker, F)
    call(breaker, F)
    assert breaker.state == CLOSED
    call(breaker, F)
    assert breaker.state == OPEN and breaker.trips == 1
    assert "3 failures in a row" in breaker.last_trip_reason
    assert breaker.begin() is None and not breaker.allows()


def test_failure_rate_over_the_window_with_a_minimum_of_calls():
    breaker, clock = make(failure_rate=0.5, minimum_calls=6, window=10, consecutive_failures=100)
    for outcome in (F, S, F, S, F):
        call(breaker, outcome)
        clock.advance(1)
    assert breaker.state == CLOSED  # 3 of 5: under the minimum number of calls
    call(breaker, S)
    assert breaker.state == CLOSED  # 3 of 6 = 0.5, but the last call succeeded: checked on failures
    call(breaker, F)
    assert breaker.state == OPEN and "4 of the last 7 calls failed" in breaker.last_trip_reason


def test_old_calls_leave_the_window():
    breaker, clock = make(failure_rate=0.5, minimum_calls=4, window=10, consecutive_failures=100)
    for outcome in (F, F, S):
        call(breaker, outcome)
    clock.advance(11)  # those three are forgotten
    for outcome in (S, S, S):
        call(breaker, outcome)
    call(breaker, F)
    assert breaker.window_counts() == (4, 1)
    assert breaker.state == CLOSED


def test_open_wait_then_half_open_probe_closes_it():
    breaker, clock = make(consecutive_failures=1, open_wait=5, half_open_probes=1)
    call(breaker, F)
    assert breaker.state == OPEN and breaker.open_remaining() == 5
    clock.advance(4.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN
    probe = breaker.begin()
    assert probe is not None and probe.probe
    assert breaker.begin() is None  # one probe at a time
    probe.finish(S)
    assert breaker.state == CLOSED and breaker.begin() is not None


def test_wait_doubles_with_each_trip_in_a_row_and_is_capped():
    breaker, clock = make(consecutive_failures=1, open_wait=5, max_open_wait=12)
    waits = []
    for _ in range(4):
        call(breaker, F) if breaker.state == CLOSED else breaker.begin().finish(F)
        waits.append(breaker.open_remaining())
        clock.advance(breaker.open_remaining())
        assert breaker.state == HALF_OPEN
    assert waits == [5, 10, 12, 12]
    breaker.begin().finish(S)  # closing resets the growth
    call(breaker, F)
    assert breaker.open_remaining() == 5


def test_jitter_spreads_the_wait_within_bounds():
    clock = Clock()
    waits = set()
    for seed in range(20):
        breaker = CircuitBreaker(
            BreakerConfig(consecutive_failures=1, open_wait=10, jitter=0.2), clock, random.Random(seed)
        )
        call(breaker, F)
        waits.add(round(breaker.open_remaining(), 6))
    assert len(waits) > 10
    assert all(8 <= w <= 12 for w in waits)


def test_retry_after_is_the_least_wait():
    breaker, clock = make(consecutive_failures=1, open_wait=1, max_open_wait=5)
    call(breaker, F, retry_after=42)
    assert breaker.open_remaining() == 42
    # a healthy health check cannot end the wait before Retry-After
    breaker.health(Outcome.SUCCESS)
    assert breaker.state == OPEN
    clock.advance(42)
    assert breaker.state == HALF_OPEN


def test_health_check_success_ends_an_open_wait_early_but_never_closes():
    breaker, clock = make(consecutive_failures=1, open_wait=60)
    call(breaker, F)
    clock.advance(1)
    breaker.health(Outcome.SUCCESS)
    assert breaker.state == HALF_OPEN
    breaker.health(Outcome.SUCCESS)
    assert breaker.state == HALF_OPEN  # only a real call closes it
    breaker.begin().finish(S)
    assert breaker.state == CLOSED


def test_health_check_failures_count_and_trip_a_half_open_breaker():
    breaker, clock = make(consecutive_failures=2, open_wait=1)
    breaker.health(F)
    assert breaker.state == CLOSED
    breaker.health(F)
    assert breaker.state == OPEN
    clock.advance(1)
    assert breaker.state == HALF_OPEN
    breaker.health(F)
    assert breaker.state == OPEN and breaker.open_remaining() == 2  # second trip in a row


def test_probe_failure_reopens_for_longer():
    breaker, clock = make(consecutive_failures=1, open_wait=2)
    call(breaker, F)
    clock.advance(2)
    breaker.begin().finish(F)
    assert breaker.state == OPEN and breaker.open_remaining() == 4


def test_auth_failures_open_it_long_and_keep_probing():
    breaker, clock = make(auth_open_wait=600, consecutive_failures=5)
    call(breaker, Outcome.AUTH_FAILURE)
    assert breaker.state == OPEN and breaker.open_remaining() == 600
    breaker.health(Outcome.SUCCESS)  # a public models endpoint proves nothing about the key
    assert breaker.state == OPEN
    clock.advance(600)
    assert breaker.state == HALF_OPEN
    breaker.begin().finish(Outcome.AUTH_FAILURE)
    assert breaker.state == OPEN and breaker.open_remaining() == 600
    clock.advance(600)
    breaker.begin().finish(S)  # the outage is over: the key works again
    assert breaker.state == CLOSED


def test_ignored_outcomes_count_for_nothing_and_free_the_probe():
    breaker, clock = make(consecutive_failures=1, open_wait=1)
    for _ in range(10):
        call(breaker, Outcome.IGNORED)
    assert breaker.state == CLOSED and breaker.window_counts() == (0, 0)
    call(breaker, F)
    clock.advance(1)
    probe = breaker.begin()
    probe.finish(Outcome.IGNORED)
    assert breaker.state == HALF_OPEN and breaker.begin() is not None


def test_forced_call_through_an_open_breaker():
    breaker, clock = make(consecutive_failures=1, open_wait=100)
    call(breaker, F)
    assert breaker.begin() is None
    forced = breaker.begin(force=True)
    assert forced is not None and forced.probe and breaker.state == HALF_OPEN
    forced.finish(S)
    assert breaker.state == CLOSED


def test_results_of_calls_begun_before_a_trip_change_nothing():
    breaker, clock = make(consecutive_failures=2, open_wait=10)
    early = breaker.begin()
    call(breaker, F)
    call(breaker, F)
    assert breaker.state == OPEN
    early.finish(S)
    early.finish(F)  # reported twice: the second report is ignored
    assert breaker.state == OPEN and breaker.open_remaining() == 10
