"""Shared pieces of the ledger's tests: a store on either database, rows, times."""

from __future__ import annotations

import calendar
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import reactor

from ollama_proxy.ledger.rows import UsageRow
from ollama_proxy.ledger.store import SQLITE_BUSY_TIMEOUT, LedgerStore
from ollama_proxy.ops.later import flush

# 2026-11-30 12:00:00 UTC, and the day before.
NOON = float(calendar.timegm((2026, 11, 30, 12, 0, 0)))
YESTERDAY = NOON - 86400


async def booked(ledger_service: Any) -> bool:
    """Every finished request's row written: its bookkeeping runs after its answer was sent
    (``ollama_proxy.ops.later``), so a client may have read the answer first; then the
    writer's queue is written. True when the store took them."""
    flush(reactor)
    return bool(await ledger_service.writer.flush())


def row(ts: float = NOON, **fields: Any) -> UsageRow:
    values: dict[str, Any] = {
        "token": "ci",
        "model": "gpt-4o",
        "surface": "native",
        "provider": "openrouter",
        "upstream_model": "openai/gpt-4o",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost": 0.01,
        "cost_source": "provider",
        "duration": 0.5,
    }
    values.update(fields)
    return UsageRow(ts=ts, **values)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: Any, tmp_path: Any) -> str:
    """The URL of an empty ledger database, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/ledger.sqlite3"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def stores(ledger_url: str) -> Iterator[Any]:
    """``stores(busy_timeout=...)`` opens a store on the test's database; all are closed after."""
    opened: list[LedgerStore] = []

    def open_store(busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> LedgerStore:
        # The outage tests hold SQLite's write lock: they pass a short busy timeout.
        store = LedgerStore(ledger_url, reactor, busy_timeout=busy_timeout)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


class Outage:
    """Makes the ledger's database refuse writers for a while, for real: SQLite by
    another connection holding the write lock, PostgreSQL by refusing connections
    to the database and ending those open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock: Any = None

    def begin(self) -> None:
        if self.url.startswith("sqlite"):
            self._lock = sqlite3.connect(self.url[len("sqlite://") :], isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
            return
        import psycopg

        database = self.url.rsplit("/", 1)[1]
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )

    def end(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
            return
        import psycopg

        database = self.url.rsplit("/", 1)[1]
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")


def count_rows(url: str) -> int:
    """Rows in ``usage``, read with a plain blocking connection (after the fact)."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite://") :])) as db:
            return int(db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    import psycopg

    with psycopg.connect(url) as db:
        return int(db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
