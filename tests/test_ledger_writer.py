"""The batched writer and the ledger service on real databases: outages lose no
request and no row, the queue is bounded, the stop flushes, retention prunes."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from ollama_proxy.ledger.limits import Meter, TokenLimits
from ollama_proxy.ledger.service import PRUNE_INTERVAL, LedgerService
from ollama_proxy.ledger.writer import LedgerWriter

from .ledger_helpers import NOON, Outage, count_rows, row


@pytest.fixture
def logged():
    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace", "").startswith("ollama_proxy.ledger"):
            lines.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def clock_at(when: float) -> Clock:
    clock = Clock()
    clock.advance(when)
    return clock


@pytest_twisted.ensureDeferred
async def test_rows_queued_during_an_outage_land_when_the_database_returns(stores, ledger_url, logged):
    meter = Meter(clock_at(NOON), {"ci": TokenLimits(requests_per_minute=100)})
    writer = LedgerWriter(stores(busy_timeout=0.05), meter)
    for _ in range(3):
        writer.add(row())
    assert await writer.flush() is True
    outage = Outage(ledger_url)
    outage.begin()
    try:
        writer.add(row(cost=0.5))
        writer.add(row(cost=0.25))
        assert await writer.flush() is False
        assert await writer.flush() is False
        assert not writer.available and writer.pending == 2
        # Meanwhile the limits still count the queued rows.
        assert meter.usage("ci", "minute") == (5, 75, pytest.approx(0.78))
    finally:
        outage.end()
    assert await writer.flush() is True
    assert writer.pending == 0 and writer.written == 5 and writer.available
    assert count_rows(ledger_url) == 5
    assert meter.usage("ci", "minute") == (5, 75, pytest.approx(0.78))
    # One line when it went away, one when it came back: not one per attempt.
    assert [line.split(" (")[0].split(";")[0] for line in logged if "database" in line] == [
        "ledger database unavailable",
        "ledger database available again",
    ]


@pytest_twisted.ensureDeferred
async def test_the_queue_is_bounded_and_drops_the_oldest_rows(stores, ledger_url, logged):
    meter = Meter(clock_at(NOON))
    writer = LedgerWriter(stores(busy_timeout=0.05), meter, max_queue=3)
    assert await writer.flush() is True  # migrated
    outage = Outage(ledger_url)
    outage.begin()
    try:
        for index in range(5):
            writer.add(row(request_id=f"r{index}"))
        assert await writer.flush() is False
    finally:
        outage.end()
    assert writer.dropped == 2 and writer.pending == 3
    assert await writer.flush() is True
    ids = await writer.store.pool.runQuery("SELECT request_id FROM usage ORDER BY request_id")
    assert [r[0] for r in ids] == ["r2", "r3", "r4"]
    assert any("ledger queue full" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_a_full_batch_goes_without_waiting_for_the_timer(stores, ledger_url):
    writer = LedgerWriter(stores(), Meter(clock_at(NOON)), batch_size=2)
    writer.add(row())
    assert writer.pending == 1
    writer.add(row())  # the batch is full: written now
    assert await writer.flush() is True
    assert count_rows(ledger_url) == 2


@pytest_twisted.ensureDeferred
async def test_stopping_the_service_flushes_what_is_queued(stores, ledger_url):
    clock = clock_at(NOON)
    service = LedgerService(stores(), Meter(clock), clock, flush_interval=3600)
    service.startService()
    assert await service.writer.flush() is True  # the first tick migrated
    for _ in range(4):
        service.record(row())
    assert count_rows(ledger_url) == 0  # the timer has not ticked again
    await service.stopService()
    assert count_rows(ledger_url) == 4


@pytest_twisted.ensureDeferred
async def test_retention_runs_on_its_timer_and_keeps_the_last_keep_days(stores, ledger_url):
    clock = clock_at(NOON)
    service = LedgerService(stores(), Meter(clock), clock, flush_interval=1, keep_days=2)
    service.startService()
    try:
        assert await service.writer.flush() is True
        for days in (5, 3, 1, 0):
            service.record(row(NOON - days * 86400))
        assert await service.writer.flush() is True
        clock.advance(PRUNE_INTERVAL)
        assert service.pruning is not None
        await service.pruning
        assert count_rows(ledger_url) == 2
    finally:
        await service.stopService()
