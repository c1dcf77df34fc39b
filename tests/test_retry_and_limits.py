"""Backoff, error classification and the concurrency limiter, on a fake clock."""

from __future__ import annotations

import random

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from ollama_proxy.config.providers import RetryConfig
from ollama_proxy.errors import BadRequest, UpstreamError, UpstreamStreamError
from ollama_proxy.routing.breaker import Outcome
from ollama_proxy.routing.limiter import BUSY_MESSAGE, Busy, ConcurrencyLimiter
from ollama_proxy.routing.retry import RetryPolicy, classify


def upstream(status: int | None, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("Sim", "sim", status, "boom", retry_after=retry_after)


@pytest.mark.parametrize(
    "error, outcome, retry, fail_over",
    [
        (upstream(None), Outcome.FAILURE, True, True),  # connection refused, timeout, broken stream
        (upstream(408), Outcome.FAILURE, True, True),
        (upstream(429, 3), Outcome.FAILURE, True, True),
        (upstream(500), Outcome.FAILURE, True, True),
        (upstream(502), Outcome.FAILURE, True, True),
        (upstream(503), Outcome.FAILURE, True, True),
        (upstream(529), Outcome.FAILURE, True, True),  # Anthropic's "overloaded"
        (UpstreamStreamError("cut"), Outcome.FAILURE, True, True),
        (upstream(401), Outcome.AUTH_FAILURE, False, True),
        (upstream(402), Outcome.AUTH_FAILURE, False, True),
        (upstream(403), Outcome.IGNORED, False, True),
        (upstream(404), Outcome.SUCCESS, False, True),
        (upstream(400), Outcome.SUCCESS, False, False),  # context length and other request faults
        (upstream(413), Outcome.SUCCESS, False, False),
        (upstream(422), Outcome.SUCCESS, False, False),
        (BadRequest("no"), Outcome.IGNORED, False, False),
        (ValueError("bug"), Outcome.IGNORED, False, False),
    ],
)
def test_classify(error, outcome, retry, fail_over):
    verdict = classify(error)
    assert (verdict.outcome, verdict.retry, verdict.fail_over) == (outcome, retry, fail_over)


def test_retry_after_travels_with_the_verdict():
    assert classify(upstream(429, 3.0)).retry_after == 3.0


def test_backoff_grows_with_jitter_and_is_capped():
    policy = RetryPolicy(RetryConfig(max_retries=6, base_delay=1, max_delay=5), random.Random(1))
    delays = [policy.delay(n) for n in range(1, 7)]
    ceilings = [1, 2, 4, 5, 5, 5]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert policy.delay(7) is None  # out of retries


def test_backoff_is_deterministic_for_a_seed():
    def series(seed: int) -> list[float | None]:
        policy = RetryPolicy(RetryConfig(max_retries=3), random.Random(seed))
        return [policy.delay(n) for n in (1, 2, 3)]

    assert series(3) == series(3)
    assert series(3) != series(4)


def test_retry_after_is_honoured_within_its_cap():
    policy = RetryPolicy(RetryConfig(max_retries=2, base_delay=0.5, max_retry_after=10), random.Random(0))
    assert policy.delay(1, retry_after=7) == 7
    assert policy.delay(1, retry_after=0) <= 0.5
    assert policy.delay(1, retry_after=11) is None  # longer than the cap: let another provider answer


def test_no_retries_configured():
    assert RetryPolicy(RetryConfig(max_retries=0)).delay(1) is None


# -- the limiter ------------------------------------------------------------------------
def test_limiter_queues_then_hands_slots_on_in_order():
    clock = Clock()
    limiter = ConcurrencyLimiter(2, 2, 10, clock)
    first, second = limiter.acquire(), limiter.acquire()
    assert first.called and second.called and limiter.in_flight == 2
    third, fourth = limiter.acquire(), limiter.acquire()
    assert not third.called and not fourth.called and limiter.queued == 2
    fifth = limiter.acquire()
    failures = []
    fifth.addErrback(failures.append)
    assert failures and failures[0].check(Busy) and failures[0].value.status == 503
    assert failures[0].value.message == BUSY_MESSAGE and limiter.rejected == 1
    limiter.release()
    assert third.called and not fourth.called and limiter.in_flight == 2
    limiter.release()
    assert fourth.called
    limiter.release()
    limiter.release()
    assert limiter.in_flight == 0 and limiter.has_room()


def test_limiter_takes_a_free_slot_at_once_and_never_ahead_of_a_waiter():
    limiter = ConcurrencyLimiter(2, 2, 10, Clock())
    assert limiter.try_acquire() and limiter.in_flight == 1
    assert limiter.try_acquire() and limiter.in_flight == 2
    assert not limiter.try_acquire() and limiter.in_flight == 2 and limiter.queued == 0
    waiting = limiter.acquire()
    assert not waiting.called and limiter.queued == 1
    limiter.release()  # the waiter gets the slot: none is left to take
    assert waiting.called and not limiter.try_acquire() and limiter.in_flight == 2
    limiter.release()
    limiter.release()
    assert limiter.in_flight == 0 and limiter.try_acquire() and limiter.in_flight == 1


def test_limiter_wait_times_out_with_busy():
    clock = Clock()
    limiter = ConcurrencyLimiter(1, 5, 3, clock)
    limiter.acquire()
    waiting = limiter.acquire()
    failures = []
    waiting.addErrback(failures.append)
    clock.advance(2.9)
    assert not failures
    clock.advance(0.1)
    assert failures and failures[0].check(Busy)
    assert limiter.queued == 0 and limiter.rejected == 1
    limiter.release()
    assert limiter.in_flight == 0


def test_cancelled_waiter_leaves_the_queue():
    clock = Clock()
    limiter = ConcurrencyLimiter(1, 5, 30, clock)
    limiter.acquire()
    waiting = limiter.acquire()
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()
    assert limiter.queued == 0 and not clock.getDelayedCalls()
    limiter.release()
    assert limiter.in_flight == 0


def test_zero_queue_refuses_at_once():
    limiter = ConcurrencyLimiter(1, 0, 30, Clock())
    limiter.acquire()
    failures = []
    limiter.acquire().addErrback(failures.append)
    assert failures and failures[0].check(Busy)
