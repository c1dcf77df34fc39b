"""The ledger's database on real SQLite and a real PostgreSQL: schema, rows, totals,
queries, retention."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from ollama_proxy.errors import BadRequest
from ollama_proxy.ledger.query import UsageQuery
from ollama_proxy.ledger.schema import MIGRATIONS
from ollama_proxy.ledger.store import LedgerStore
from ollama_proxy.ledger.windows import window

from .ledger_helpers import NOON, YESTERDAY, row


@pytest_twisted.ensureDeferred
async def test_migrations_run_once_even_when_two_processes_start_together(stores):
    first, second = stores(), stores()
    versions = await gatherResults([first.migrate(), second.migrate()])
    assert versions == [len(MIGRATIONS)] * 2
    assert await first.migrate() == len(MIGRATIONS)
    applied = await first.pool.runQuery("SELECT version FROM ledger_migrations")
    assert [tuple(r) for r in applied] == [(1,)]


@pytest_twisted.ensureDeferred
async def test_rows_and_window_totals_commit_together(stores):
    store: LedgerStore = stores()
    await store.migrate()
    watch = [("minute", window("minute", NOON)[0]), ("day", window("day", NOON)[0])]
    snapshot = await store.write(
        [row(), row(prompt_tokens=100, completion_tokens=20, cost=None), row(token="bob", cost=0.5)], watch
    )
    minute, day = watch[0][1], watch[1][1]
    assert snapshot[("ci", "minute", minute)] == (2, 135, pytest.approx(0.01))
    assert snapshot[("ci", "day", day)] == (2, 135, pytest.approx(0.01))
    assert snapshot[("bob", "minute", minute)] == (1, 15, pytest.approx(0.5))
    # Another writer's rows add to the same windows.
    again = await stores().write([row(cost=0.02)], watch)
    assert again[("ci", "minute", minute)] == (3, 150, pytest.approx(0.03))
    assert await store.windows(watch) == again
    count = await store.pool.runQuery("SELECT COUNT(*) FROM usage")
    assert count[0][0] == 4


@pytest_twisted.ensureDeferred
async def test_usage_groups_and_filters(stores):
    store = stores()
    await store.migrate()
    await store.write(
        [
            row(YESTERDAY, cost=0.25),
            row(NOON, cost=0.5),
            row(NOON + 60, model="llama3", provider="ollama", upstream_model="llama3", cost=None, cost_source=None),
            row(NOON + 120, token="bob", cost=1.0, outcome="error", status=502),
        ]
    )
    by_token = await store.usage(UsageQuery(group_by=("token",)))
    assert by_token == [
        {
            "token": "bob",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cost": 1.0,
            "unpriced_requests": 0,
            "failed_requests": 1,
            "duration_seconds": 0.5,
            "first": "2026-11-30T12:02:00Z",
            "last": "2026-11-30T12:02:00Z",
        },
        {
            "token": "ci",
            "requests": 3,
            "prompt_tokens": 30,
            "completion_tokens": 15,
            "cost": 0.75,
            "unpriced_requests": 1,
            "failed_requests": 0,
            "duration_seconds": 1.5,
            "first": "2026-11-29T12:00:00Z",
            "last": "2026-11-30T12:01:00Z",
        },
    ]
    today = await store.usage(UsageQuery.parse({"since": ["2026-11-30"], "token": ["ci"]}))
    assert [(r["token"], r["model"], r["provider"], r["day"], r["requests"], r["cost"]) for r in today] == [
        ("ci", "gpt-4o", "openrouter", "2026-11-30", 1, 0.5),
        ("ci", "llama3", "ollama", "2026-11-30", 1, None),
    ]
    until = await store.usage(UsageQuery.parse({"until": ["2026-11-30T12:00:00Z"], "group_by": ["day,model"]}))
    assert [(r["day"], r["model"], r["requests"]) for r in until] == [("2026-11-29", "gpt-4o", 1)]
    totals = await store.usage(UsageQuery.parse({"group_by": [""], "model": ["gpt-4o"]}))
    assert [(r["requests"], r["cost"]) for r in totals] == [(3, 1.75)]
    assert await store.usage(UsageQuery.parse({"token": ["nobody"], "group_by": [""]})) == []


@pytest_twisted.ensureDeferred
async def test_retention_deletes_rows_older_than_the_cut_and_spent_window_totals(stores):
    store = stores()
    await store.migrate()
    await store.write([row(YESTERDAY - 86400), row(YESTERDAY), row(NOON)])
    assert await store.prune(YESTERDAY, NOON) == 1
    assert await store.prune(None, NOON) == 0
    remaining = await store.pool.runQuery("SELECT ts FROM usage ORDER BY ts")
    assert [r[0] for r in remaining] == [YESTERDAY, NOON]
    windows = await store.pool.runQuery("SELECT period, start FROM usage_windows WHERE period = 'minute'")
    assert [tuple(w) for w in windows] == [("minute", int(NOON))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"group_by": ["token,secret"]}, "group_by: unknown column 'secret'"),
        ({"since": ["yesterday"]}, "'since' must be a date"),
        ({"since": ["2026-02-30"]}, "'since': '2026-02-30' is not a valid time"),
        ({"since": ["2026-11-30"], "until": ["2026-11-29"]}, "'until' must be after 'since'"),
        ({"format": ["csv"]}, "unknown parameter 'format'"),
    ],
)
def test_bad_usage_parameters_are_refused_by_name(args, message):
    with pytest.raises(BadRequest) as refused:
        UsageQuery.parse(args)
    assert message in refused.value.message


def test_a_client_token_query_is_pinned_to_its_own_name():
    query = UsageQuery.parse({"token": ["someone-else"], "since": ["1764460800"]}).restricted_to("ci")
    assert query.token == "ci" and query.since == 1764460800.0
