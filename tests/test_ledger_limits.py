"""Per-token rate limits and budgets on a task.Clock: what refuses, for how long,
and when the window frees."""

from __future__ import annotations

import calendar

import pytest
from twisted.internet.task import Clock

from ollama_proxy.ledger.limits import LimitExceeded, Meter, TokenLimits
from ollama_proxy.ledger.windows import window

from .ledger_helpers import NOON, row


def meter_at(when: float, **limits: TokenLimits) -> tuple[Meter, Clock]:
    clock = Clock()
    clock.advance(when)
    default = limits.pop("default", None)
    return Meter(clock, limits, default), clock


def finish(meter: Meter, token: str, clock: Clock, **fields) -> None:
    """One request for ``token`` from admission to its queued row."""
    admission = meter.admit(token)
    meter.release(admission)
    meter.queued(row(admission.ts, token=token, **fields))


def test_requests_per_minute_refuse_until_the_minute_ends():
    meter, clock = meter_at(NOON + 15, ci=TokenLimits(requests_per_minute=2))
    meter.admit("ci")
    meter.admit("ci")  # both still running: they count from their admission
    with pytest.raises(LimitExceeded) as refused:
        meter.admit("ci")
    assert refused.value.status == 429
    assert refused.value.retry_after == 45
    assert refused.value.message == "rate limit exceeded: 2 requests per minute for token 'ci'"
    meter.admit("someone-else")  # no limit of their own, and no default
    clock.advance(44.5)
    with pytest.raises(LimitExceeded) as again:
        meter.admit("ci")
    assert again.value.retry_after == 1
    clock.advance(0.5)
    meter.admit("ci")


def test_tokens_per_minute_count_what_finished_requests_used():
    meter, clock = meter_at(NOON, ci=TokenLimits(tokens_per_minute=100))
    finish(meter, "ci", clock, prompt_tokens=60, completion_tokens=30)
    meter.admit("ci")  # 90 < 100
    finish(meter, "ci", clock, prompt_tokens=5, completion_tokens=5)
    with pytest.raises(LimitExceeded) as refused:
        meter.admit("ci")
    assert refused.value.message == "rate limit exceeded: 100 tokens per minute for token 'ci'"
    assert refused.value.retry_after == 60
    clock.advance(60)
    meter.admit("ci")


def test_a_daily_budget_refuses_until_utc_midnight_and_names_the_limit():
    meter, clock = meter_at(NOON, ci=TokenLimits(budget_per_day=5.0))
    finish(meter, "ci", clock, cost=4.99)
    meter.admit("ci")
    finish(meter, "ci", clock, cost=0.01)
    with pytest.raises(LimitExceeded) as refused:
        meter.admit("ci")
    assert refused.value.message == "budget exceeded: 5.00 USD per day for token 'ci'"
    assert refused.value.retry_after == 12 * 3600
    assert refused.value.limit == "budget_per_day"
    clock.advance(12 * 3600)
    meter.admit("ci")


def test_a_monthly_budget_waits_for_the_first_of_next_month_and_wins_over_a_shorter_wait():
    meter, clock = meter_at(NOON, ci=TokenLimits(requests_per_minute=1, budget_per_month=20.0, budget_per_day=100.0))
    finish(meter, "ci", clock, cost=20.0)
    with pytest.raises(LimitExceeded) as refused:
        meter.admit("ci")
    december = calendar.timegm((2026, 12, 1, 0, 0, 0))
    assert refused.value.retry_after == december - NOON
    assert refused.value.message == "budget exceeded: 20.00 USD per month for token 'ci'"
    clock.advance(december - NOON)
    meter.admit("ci")


def test_unknown_costs_count_as_requests_and_tokens_but_add_nothing_to_a_budget():
    meter, clock = meter_at(NOON, ci=TokenLimits(budget_per_day=1.0))
    finish(meter, "ci", clock, cost=None, prompt_tokens=1000)
    assert meter.usage("ci", "day") == (1, 1005, 0.0)
    meter.admit("ci")


def test_the_default_applies_to_tokens_without_limits_of_their_own():
    meter, clock = meter_at(NOON, default=TokenLimits(requests_per_minute=1), vip=TokenLimits(requests_per_minute=3))
    meter.admit("anonymous")
    with pytest.raises(LimitExceeded, match="1 requests per minute for token 'anonymous'"):
        meter.admit("anonymous")
    for _ in range(3):
        meter.admit("vip")
    with pytest.raises(LimitExceeded):
        meter.admit("vip")


def test_other_workers_usage_arrives_with_the_snapshot_and_own_rows_are_not_counted_twice():
    meter, clock = meter_at(NOON, ci=TokenLimits(budget_per_day=5.0))
    day = window("day", NOON)[0]
    finish(meter, "ci", clock, cost=1.0)
    queued = row(NOON, cost=1.0)
    # The flush commits the queued row; the snapshot read in the same transaction
    # holds it and 3.50 another worker spent.
    meter.committed([queued], {("ci", "day", day): (2, 30, 4.5)})
    assert meter.usage("ci", "day") == (2, 30, 4.5)
    meter.admit("ci")
    meter.committed([], {("ci", "day", day): (3, 45, 5.0)})
    with pytest.raises(LimitExceeded):
        meter.admit("ci")


def test_rows_forgotten_after_an_overflow_leave_no_residue():
    meter, clock = meter_at(NOON, ci=TokenLimits(requests_per_minute=1))
    finish(meter, "ci", clock)
    meter.forget([row(NOON)])
    assert meter.usage("ci", "minute") == (0, 0, 0.0)
    meter.admit("ci")


def test_no_limits_means_no_window_reads():
    meter, _ = meter_at(NOON)
    assert not meter.enabled and meter.watch() == ()
    limited, _ = meter_at(NOON, ci=TokenLimits(budget_per_day=1))
    assert dict(limited.watch()) == {"minute": int(NOON), "day": int(NOON) - 12 * 3600, "month": 1793491200}
    assert not TokenLimits() and TokenLimits(budget_per_day=0)
