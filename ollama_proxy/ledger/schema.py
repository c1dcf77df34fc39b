"""The ledger's tables, the same on SQLite and PostgreSQL, and their migrations.

``usage`` holds one row per finished request (:mod:`ollama_proxy.ledger.rows`).
``usage_windows`` holds running totals per client token and fixed window (minute,
UTC day, UTC month), added to in the same transaction as the rows: every worker
and replica reads the limits' current totals from it without scanning ``usage``.
``ledger_migrations`` records which migrations ran; they run at start-up, under a
lock (SQLite's write lock, a PostgreSQL advisory lock), so workers starting
together apply each one once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Any constant works: it names the lock the migrations of every process take.
_ADVISORY_LOCK = 0x6F6C6C616D61


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases: the DB-API module, placeholders,
    the column types and how a writing transaction begins."""

    name: str
    module: str
    serial: str
    double: str

    def sql(self, text: str) -> str:
        """``text`` written with ``?`` placeholders, in this database's paramstyle."""
        return text if self.name == "sqlite" else text.replace("?", "%s")

    def begin_write(self, txn: Any) -> None:
        """Open a transaction that will write. SQLite connections run in autocommit
        mode so that this takes the write lock at once: a reader upgrading later
        could fail with "database is locked" whatever the busy timeout."""
        if self.name == "sqlite":
            txn.execute("BEGIN IMMEDIATE")

    def begin_read(self, txn: Any) -> None:
        """Open a transaction that reads a consistent snapshot."""
        if self.name == "sqlite":
            txn.execute("BEGIN")


SQLITE = Dialect("sqlite", "sqlite3", "INTEGER PRIMARY KEY", "REAL")
POSTGRESQL = Dialect("postgresql", "psycopg", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "DOUBLE PRECISION")


def _v1(d: Dialect) -> list[str]:
    return [
        f"""CREATE TABLE usage (
            id {d.serial},
            ts {d.double} NOT NULL,
            day TEXT NOT NULL,
            request_id TEXT NOT NULL,
            token TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT,
            upstream_model TEXT,
            surface TEXT NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost {d.double},
            cost_source TEXT,
            duration {d.double} NOT NULL,
            streamed INTEGER NOT NULL
        )""",
        "CREATE INDEX usage_ts ON usage (ts)",
        "CREATE INDEX usage_token_ts ON usage (token, ts)",
        f"""CREATE TABLE usage_windows (
            token TEXT NOT NULL,
            period TEXT NOT NULL,
            start BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            tokens BIGINT NOT NULL,
            cost {d.double} NOT NULL,
            PRIMARY KEY (token, period, start)
        )""",
    ]


# Append only: a migration that shipped is never edited, a new one follows it.
MIGRATIONS: Sequence[Callable[[Dialect], list[str]]] = (_v1,)


def migrate(txn: Any, dialect: Dialect) -> int:
    """Apply the migrations this database lacks (inside ``txn``); the schema version after."""
    dialect.begin_write(txn)
    if dialect.name == "postgresql":
        txn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
    txn.execute(f"CREATE TABLE IF NOT EXISTS ledger_migrations (version INTEGER PRIMARY KEY, applied {dialect.double})")
    txn.execute("SELECT COALESCE(MAX(version), 0) FROM ledger_migrations")
    current = int(txn.fetchone()[0])
    for version, steps in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        for statement in steps(dialect):
            txn.execute(statement)
        txn.execute(
            dialect.sql("INSERT INTO ledger_migrations (version, applied) VALUES (?, ?)"),
            (version, time.time()),
        )
        current = version
    return current
