"""Several processes share one ledger: worker processes on one SQLite file, or
replicas on one PostgreSQL database. No row and no window total is lost."""

from __future__ import annotations

import os
import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from ollama_proxy.ledger.store import LedgerStore
from ollama_proxy.ledger.windows import window

from .daemon import ROOT, Daemon
from .ledger_helpers import NOON, count_rows

ROWS = 200


@pytest_twisted.ensureDeferred
async def test_two_processes_write_one_ledger_without_losing_rows(ledger_url):
    workers = []
    for name in ("alpha", "beta"):
        command = [sys.executable, "-m", "tests.ledger_worker"]
        workers.append(Daemon.spawn([ledger_url, name, str(ROWS)], dict(os.environ), ROOT, command=command))
    await gatherResults([w.wait_for_output("ready") for w in workers])
    for worker in workers:
        worker.process.write(b"go\n")
    codes = await gatherResults([w.wait_ended() for w in workers])
    assert codes == [0, 0], [w.text() for w in workers]
    assert count_rows(ledger_url) == 2 * ROWS
    store = LedgerStore(ledger_url, reactor)
    try:
        totals = await store.windows([("day", window("day", NOON)[0])])
    finally:
        store.close()
    day = window("day", NOON)[0]
    assert totals[("alpha", "day", day)][0] == ROWS
    assert totals[("beta", "day", day)][0] == ROWS
