"""Limits hold across processes that share one ledger: worker processes on one
SQLite file, replicas on one PostgreSQL database. Each process sees the others'
usage at its next flush (the consistency README.md states)."""

from __future__ import annotations

from dataclasses import replace

import pytest_twisted
from twisted.internet.task import Clock

from ollama_proxy.config.credentials import ClientToken, token_digest
from ollama_proxy.config.ops import AuthConfig
from ollama_proxy.config.schema import LedgerConfig, TokenLimits

from .conftest import http
from .ledger_helpers import booked
from .multi import multi_config

CI = {"Authorization": "Bearer ci-secret"}
CHAT = {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "hello there"}], "stream": False}


def twins(make_multi, url: str, limits: TokenLimits) -> list:
    """Two proxies (as two workers or replicas would be) on one ledger and one clock."""
    clock = Clock()
    clock.advance(3600)
    auth = AuthConfig(enabled=True, tokens=(ClientToken(token_digest("ci-secret"), "ci", limits=limits),))
    ops = replace(multi_config(None, []).ops, auth=auth)
    ledger = LedgerConfig(url=url, flush_interval=3600)
    return [make_multi([], clock=clock, ops=ops, ledger=ledger) for _ in range(2)]


async def flush(proxy) -> None:
    assert await booked(proxy.service.ledger.service)


@pytest_twisted.ensureDeferred
async def test_a_budget_spent_through_one_process_refuses_in_the_other(make_multi, ledger_url):
    first, second = twins(make_multi, ledger_url, TokenLimits(budget_per_day=0.00001))
    await flush(first)
    await flush(second)  # both started and read the (empty) shared totals; the timers wait an hour
    for _ in range(2):
        assert (await http("POST", first.url + "/api/chat", CHAT, headers=CI)).code == 200
    assert (await http("POST", first.url + "/api/chat", CHAT, headers=CI)).code == 429
    await flush(first)
    # The other process has not read the shared totals yet: this one still goes
    # (the documented overshoot), and its next flush brings them.
    assert (await http("POST", second.url + "/api/chat", CHAT, headers=CI)).code == 200
    await flush(second)
    refused = await http("POST", second.url + "/api/chat", CHAT, headers=CI)
    assert refused.code == 429 and refused.json()["error"] == "budget exceeded: 0.00001 USD per day for token 'ci'"
    usage = (await http("GET", second.url + "/api/usage?group_by=token", headers=CI)).json()["usage"]
    assert usage[0]["requests"] == 3  # both processes' rows, one ledger


@pytest_twisted.ensureDeferred
async def test_a_request_limit_counts_the_requests_of_every_process(make_multi, ledger_url):
    first, second = twins(make_multi, ledger_url, TokenLimits(requests_per_minute=3))
    for _ in range(2):
        assert (await http("POST", first.url + "/api/chat", CHAT, headers=CI)).code == 200
    await flush(first)
    await flush(second)
    assert (await http("POST", second.url + "/api/chat", CHAT, headers=CI)).code == 200
    refused = await http("POST", second.url + "/api/chat", CHAT, headers=CI)
    assert refused.code == 429 and "3 requests per minute" in refused.json()["error"]
