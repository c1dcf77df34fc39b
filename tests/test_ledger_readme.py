"""README.md's example queries of the ledger run as written, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import shlex
import sqlite3
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from ollama_proxy.ledger.store import LedgerStore

from .ledger_helpers import NOON, row

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_queries() -> dict[str, str]:
    """The SQL that README's ``sqlite3`` and ``psql`` examples pass on their command lines."""
    section = README.read_text(encoding="utf-8").split("### Usage and budgets", 1)[1]
    block = re.search(r"```sh\n(sqlite3 .*?)```", section, re.S)
    assert block, "README's Usage and budgets section lost its sqlite3/psql example"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    # sqlite3 FILE "SQL"; psql URL -c "SQL"
    return {"sqlite3": words[words.index("sqlite3") + 2], "psql": words[words.index("-c") + 1]}


@pytest_twisted.ensureDeferred
async def test_the_readme_queries_run_on_both_databases(tmp_path, pg_url):
    # The sqlite3 example looks at the last 7 days of the real calendar; the psql one
    # groups by month (two days of one month here).
    now = time.time()
    recent = [row(now, cost=0.5), row(now, token="bob", cost=None), row(now - 86400, cost=0.25)]
    november = [row(NOON, cost=0.5), row(NOON, token="bob", cost=None), row(NOON - 86400, cost=0.25)]
    for url, rows in ((f"sqlite://{tmp_path}/ledger.sqlite3", recent), (pg_url, november)):
        store = LedgerStore(url, reactor)
        try:
            await store.migrate()
            await store.write(rows)
        finally:
            store.close()
    queries = readme_queries()
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as db:
        by_day = db.execute(queries["sqlite3"]).fetchall()
    assert sorted((token, count, cost) for _, token, _, count, _, cost in by_day) == [
        ("bob", 1, None),
        ("ci", 1, 0.25),
        ("ci", 1, 0.5),
    ]
    import psycopg

    with psycopg.connect(pg_url) as db:
        by_month = db.execute(queries["psql"]).fetchall()
    assert [(token, month.strftime("%Y-%m"), spent, unpriced) for token, month, spent, unpriced in by_month] == [
        ("ci", "2026-11", 0.75, 0),
        ("bob", "2026-11", None, 1),
    ]
