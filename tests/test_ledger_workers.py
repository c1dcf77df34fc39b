"""Several processes share one ledger: worker processes on one SQLite file, or
replicas on one PostgreSQL database. No row and no window total is lost."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol

from ollama_proxy.ledger.store import LedgerStore
from ollama_proxy.ledger.windows import window

from .ledger_helpers import NOON, count_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 200


class Worker(ProcessProtocol):
    """One ``tests.ledger_worker`` process: ``ready`` when it said so, ``ended`` with its exit code."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.errors = b""

    def outReceived(self, data: bytes) -> None:
        if b"ready" in data and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.errors.decode(errors="replace")))
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_two_processes_write_one_ledger_without_losing_rows(ledger_url):
    workers = []
    for name in ("alpha", "beta"):
        worker = Worker()
        args = [sys.executable, "-m", "tests.ledger_worker", ledger_url, name, str(ROWS)]
        worker.transport = reactor.spawnProcess(worker, sys.executable, args, env=dict(os.environ), path=ROOT)
        workers.append(worker)
    await gatherResults([w.ready for w in workers])
    for worker in workers:
        worker.transport.write(b"go\n")
    codes = await gatherResults([w.ended for w in workers])
    assert codes == [0, 0], [w.errors.decode(errors="replace") for w in workers]
    assert count_rows(ledger_url) == 2 * ROWS
    store = LedgerStore(ledger_url, reactor)
    try:
        totals = await store.windows([("day", window("day", NOON)[0])])
    finally:
        store.close()
    day = window("day", NOON)[0]
    assert totals[("alpha", "day", day)][0] == ROWS
    assert totals[("beta", "day", day)][0] == ROWS
