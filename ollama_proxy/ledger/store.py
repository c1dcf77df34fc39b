"""The ledger's database, through :mod:`twisted.enterprise.adbapi`.

Every statement runs on the pool's threads; the reactor only sees Deferreds.
SQLite (the default: one file, in WAL mode so several worker processes write to
it safely, each waiting its turn up to a busy timeout) and PostgreSQL (psycopg,
when replicas on several machines share one ledger) take the same statements.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from ollama_proxy.ledger.query import UsageQuery
from ollama_proxy.ledger.rows import COLUMNS, UsageRow
from ollama_proxy.ledger.schema import POSTGRESQL, SQLITE, Dialect, migrate
from ollama_proxy.ledger.windows import DAY, Period, starts

# (token, period, start) -> (requests, tokens, cost): running totals of a window.
WindowKey = tuple[str, Period, int]
Totals = tuple[int, int, float]
Snapshot = dict[WindowKey, Totals]

# Seconds a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT = 10.0
# How long the limits' window totals are kept after their window ended.
_WINDOW_KEEP: dict[Period, int] = {"minute": 3600, "day": 3 * DAY, "month": 100 * DAY}


class LedgerStore:
    """The ledger's tables behind a connection pool, addressed by ``url``:
    ``sqlite:///path/to/ledger.sqlite3`` or ``postgresql://user@host/db``."""

    def __init__(self, url: str, reactor: Any = None, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> None:
        self.url = url
        self.closed = False
        self.busy_timeout = busy_timeout
        self.dialect, args, kwargs = _connection(url, busy_timeout)
        # One connection per process: the writer runs one transaction at a time anyway,
        # a lost connection is noticed by the next statement and replaced, and a
        # PostgreSQL server sees one connection per worker. Its thread reports to the
        # reactor that runs the sockets.
        self.pool = adbapi.ConnectionPool(
            self.dialect.module,
            *args,
            cp_min=1,
            cp_max=1,
            cp_reconnect=True,
            cp_good_sql="SELECT 1",
            cp_openfun=self._opened,
            cp_reactor=reactor,
            **kwargs,
        )

    def describe(self) -> str:
        """Where the ledger is, without credentials (for the log)."""
        parts = urlsplit(self.url)
        if self.dialect is SQLITE:
            return f"sqlite {parts.path}"
        return f"postgresql {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"

    def _opened(self, connection: Any) -> None:
        cursor = connection.cursor()
        if self.dialect is SQLITE:
            _switch_to_wal(cursor, self.busy_timeout)
            cursor.execute("PRAGMA synchronous=NORMAL")
        else:
            # A hung statement would hold a pool thread, and the stop joins those threads.
            cursor.execute("SET statement_timeout = 30000")
            connection.commit()
        cursor.close()

    # -- operations -----------------------------------------------------------------
    def migrate(self) -> Deferred[int]:
        """Bring the schema up to date; fires with its version."""
        return self.pool.runInteraction(migrate, self.dialect)

    def write(self, rows: Sequence[UsageRow], watch: Iterable[tuple[Period, int]] = ()) -> Deferred[Snapshot]:
        """Insert ``rows`` and add them to their windows' totals in one transaction;
        fires with the totals of every token in the ``watch`` windows as committed."""
        return self.pool.runInteraction(self._write, list(rows), tuple(watch))

    def windows(self, watch: Iterable[tuple[Period, int]]) -> Deferred[Snapshot]:
        """The totals of every token in the ``watch`` windows."""
        return self.pool.runInteraction(self._windows, tuple(watch), True)

    def usage(self, query: UsageQuery) -> Deferred[list[dict[str, Any]]]:
        """The rows ``GET /api/usage`` answers with."""
        return self.pool.runInteraction(self._usage, query)

    def prune(self, before: float | None, now: float) -> Deferred[int]:
        """Delete the rows that arrived before ``before`` (None: keep them) and the
        window totals long over at ``now``; fires with the number of rows deleted."""
        return self.pool.runInteraction(self._prune, before, now)

    def close(self) -> None:
        """Stop the pool's threads and close its connections (once)."""
        if not self.closed:
            self.closed = True
            # At the reactor's shutdown the pool closes itself (a trigger it set); not twice.
            if self.pool.running or self.pool.startID is not None:
                self.pool.close()

    # -- in the pool's threads ------------------------------------------------------
    def _write(self, txn: Any, rows: list[UsageRow], watch: tuple[tuple[Period, int], ...]) -> Snapshot:
        sql = self.dialect.sql
        if not rows:
            # Only the totals to read: no write lock (SQLite workers would queue for it).
            return self._windows(txn, watch, True)
        self.dialect.begin_write(txn)
        if rows:
            marks = ", ".join("?" for _ in COLUMNS)
            txn.executemany(
                sql(f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({marks})"), [r.values() for r in rows]
            )
            txn.executemany(
                sql(
                    "INSERT INTO usage_windows (token, period, start, requests, tokens, cost) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (token, period, start) DO UPDATE SET"
                    " requests = usage_windows.requests + excluded.requests,"
                    " tokens = usage_windows.tokens + excluded.tokens,"
                    " cost = usage_windows.cost + excluded.cost"
                ),
                [(*key, *totals) for key, totals in sorted(window_totals(rows).items())],
            )
        return self._windows(txn, watch, False)

    def _windows(self, txn: Any, watch: tuple[tuple[Period, int], ...], begin: bool) -> Snapshot:
        if not watch:
            return {}
        if begin:
            self.dialect.begin_read(txn)
        clauses = " OR ".join("(period = ? AND start = ?)" for _ in watch)
        txn.execute(
            self.dialect.sql(f"SELECT token, period, start, requests, tokens, cost FROM usage_windows WHERE {clauses}"),
            tuple(value for pair in watch for value in pair),
        )
        return {(t, p, int(s)): (int(r), int(n), float(c)) for t, p, s, r, n, c in txn.fetchall()}

    def _usage(self, txn: Any, query: UsageQuery) -> list[dict[str, Any]]:
        self.dialect.begin_read(txn)
        txn.execute(*query.sql(self.dialect))
        return query.rows(txn.fetchall())

    def _prune(self, txn: Any, before: float | None, now: float) -> int:
        sql = self.dialect.sql
        self.dialect.begin_write(txn)
        deleted = 0
        if before is not None:
            txn.execute(sql("DELETE FROM usage WHERE ts < ?"), (before,))
            deleted = max(0, txn.rowcount)
        for period, keep in _WINDOW_KEEP.items():
            txn.execute(sql("DELETE FROM usage_windows WHERE period = ? AND start < ?"), (period, int(now) - keep))
        return deleted


def window_totals(rows: Iterable[UsageRow]) -> dict[WindowKey, Totals]:
    """What ``rows`` add to each window's totals (unknown costs add nothing)."""
    totals: dict[WindowKey, Totals] = {}
    for row in rows:
        for period, start in starts(row.ts):
            key = (row.token, period, start)
            requests, tokens, cost = totals.get(key, (0, 0, 0.0))
            totals[key] = (requests + 1, tokens + row.tokens, cost + (row.cost or 0.0))
    return totals


def _switch_to_wal(cursor: Any, patience: float) -> None:
    """``PRAGMA journal_mode=WAL``, waiting up to ``patience`` seconds for another
    process that is switching the same new file.

    The switch takes the write lock while its statement already holds a read lock,
    and SQLite never waits in that case (its busy handler could deadlock there): of
    two workers opening a new ledger at once, one got "database is locked" at once,
    whatever the busy timeout (6 pairs in 2000). The other holds the lock for a
    moment only; this waits for it as the busy handler would, in the pool's thread.
    """
    deadline = time.monotonic() + patience
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _connection(url: str, busy_timeout: float) -> tuple[Dialect, tuple[Any, ...], dict[str, Any]]:
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        path = url[len("sqlite://") :] if url.startswith("sqlite://") else url[len("sqlite:") :]
        if not path or path == ":memory:":
            raise ValueError("a sqlite ledger needs a file: sqlite:///path/to/ledger.sqlite3")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # Autocommit: the statements open their transactions themselves (Dialect.begin_*).
        return SQLITE, (path,), {"timeout": busy_timeout, "isolation_level": None, "check_same_thread": False}
    if scheme in ("postgresql", "postgres"):
        return POSTGRESQL, (url,), {"connect_timeout": 10}
    raise ValueError(f"unsupported ledger url {url.split(':', 1)[0]}:... (sqlite:///PATH or postgresql://...)")
