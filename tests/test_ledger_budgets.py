"""Limits and budgets at a real proxy on a task.Clock: refused with 429 and
Retry-After in each surface's shape before anything goes upstream, free again
when the window ends; a running stream is never cut; a database outage fails no
request and loses no row."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from ollama_proxy.config.credentials import ClientToken, token_digest
from ollama_proxy.config.ops import AuthConfig
from ollama_proxy.config.schema import LedgerConfig, TokenLimits

from .conftest import http
from .ledger_helpers import Outage, booked, count_rows
from .multi import multi_config

CI = {"Authorization": "Bearer ci-secret"}
OTHER = {"Authorization": "Bearer other-secret"}
HELLO = [{"role": "user", "content": "hello there"}]
CHAT = {"model": "google/gemini-pro", "messages": HELLO, "stream": False}


@pytest.fixture
def limited(make_multi, tmp_path):
    """``limited(limits, url=None)``: a proxy on a Clock whose token ``ci`` has ``limits``."""

    def make(limits: TokenLimits, url: str | None = None, default: TokenLimits | None = None) -> Any:
        clock = Clock()
        auth = AuthConfig(
            enabled=True,
            tokens=(
                ClientToken(token_digest("ci-secret"), "ci", limits=limits),
                ClientToken(token_digest("other-secret"), "other"),
            ),
            default_limits=default,
        )
        base = multi_config(None, [])
        proxy = make_multi(
            [],
            clock=clock,
            ops=replace(base.ops, auth=auth),
            ledger=LedgerConfig(url=url or f"sqlite://{tmp_path}/ledger.sqlite3", flush_interval=3600),
        )
        proxy.clock = clock
        proxy.ledger = proxy.service.ledger
        return proxy

    return make


@pytest_twisted.ensureDeferred
async def test_requests_per_minute_refuse_before_upstream_in_each_dialect_and_free_at_the_minute(limited, simulator):
    proxy = limited(TokenLimits(requests_per_minute=2))
    proxy.clock.advance(15)
    for _ in range(2):
        assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200
    sent = len(simulator.posts("/api/v1/chat/completions"))
    native = await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)
    assert native.code == 429 and native.header("retry-after") == "45"
    assert native.json() == {
        "error": "rate limit exceeded: 2 requests per minute for token 'ci'",
        "type": "rate_limit_exceeded",
    }
    v1 = await http("POST", proxy.url + "/v1/chat/completions", {**CHAT, "stream": True}, headers=CI)
    assert v1.code == 429 and v1.header("retry-after") == "45"
    assert v1.json()["error"]["message"] == "rate limit exceeded: 2 requests per minute for token 'ci'"
    messages = await http(
        "POST",
        proxy.url + "/v1/messages",
        {"model": "google/gemini-pro", "max_tokens": 10, "messages": HELLO},
        headers={"x-api-key": "ci-secret"},
    )
    assert messages.code == 429 and messages.header("retry-after") == "45"
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["message"] == "rate limit exceeded: 2 requests per minute for token 'ci'"
    embed = await http(
        "POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": "x"}, headers=CI
    )
    assert embed.code == 429
    assert len(simulator.posts("/api/v1/chat/completions")) == sent  # nothing went upstream
    # Another token has its own count; the refusals were not counted as requests.
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=OTHER)).code == 200
    proxy.clock.advance(44)
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).header("retry-after") == "1"
    proxy.clock.advance(1)
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200
    metrics = (await http("GET", proxy.url + "/metrics?format=prometheus", headers=CI)).body.decode()
    assert 'ollama_proxy_limit_refusals_total{limit="requests_per_minute",token="ci"} 5.0' in metrics


@pytest_twisted.ensureDeferred
async def test_a_daily_budget_counts_reported_costs_and_frees_at_utc_midnight(limited):
    proxy = limited(TokenLimits(budget_per_day=0.00001))
    proxy.clock.advance(3600)  # 01:00 UTC
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200  # 0.000008 USD
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200  # under the budget when asked
    refused = await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)
    assert refused.code == 429 and refused.json()["error"] == "budget exceeded: 0.00001 USD per day for token 'ci'"
    assert refused.header("retry-after") == str(23 * 3600)
    # Written or not, the spending counts: after a flush, from the database's totals.
    assert await booked(proxy.ledger.service)
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 429
    proxy.clock.advance(23 * 3600)
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200


@pytest_twisted.ensureDeferred
async def test_the_default_limits_cover_tokens_without_their_own(limited):
    proxy = limited(TokenLimits(requests_per_minute=5), default=TokenLimits(requests_per_minute=1))
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=OTHER)).code == 200
    refused = await http("POST", proxy.url + "/api/chat", CHAT, headers=OTHER)
    assert refused.code == 429 and "1 requests per minute for token 'other'" in refused.json()["error"]
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200


@pytest_twisted.ensureDeferred
async def test_a_running_stream_is_never_cut_by_a_limit(limited, simulator):
    proxy = limited(TokenLimits(requests_per_minute=1))
    streaming = ensureDeferred(
        http("POST", proxy.url + "/api/chat", {"model": "sim/hold", "messages": HELLO}, headers=CI)
    )
    await simulator.wait_for_hold()
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 429
    simulator.release_holds()
    answer = await streaming
    assert answer.code == 200 and answer.lines()[-1]["done"] is True


@pytest_twisted.ensureDeferred
async def test_a_database_outage_fails_no_request_and_the_rows_land_when_it_returns(limited, pg_url):
    proxy = limited(TokenLimits(requests_per_minute=100), url=pg_url)
    writer = proxy.ledger.service.writer
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200
    assert await writer.flush()
    outage = Outage(pg_url)
    outage.begin()
    try:
        for _ in range(3):
            assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200
        assert not await writer.flush()
        usage = await http("GET", proxy.url + "/api/usage", headers=CI)
        assert usage.code == 503 and "usage ledger's database is unavailable" in usage.json()["error"]
    finally:
        outage.end()
    assert await writer.flush()
    assert count_rows(pg_url) == 4
    report = (await http("GET", proxy.url + "/api/usage?group_by=token", headers=CI)).json()
    assert report["usage"][0]["requests"] == 4 and report["pending_rows"] == 0


@pytest_twisted.ensureDeferred
async def test_a_reload_applies_new_limits_to_the_usage_already_counted(limited):
    proxy = limited(TokenLimits())
    assert (await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)).code == 200
    config = proxy.service.config
    tokens = tuple(
        replace(t, limits=TokenLimits(requests_per_minute=1)) if t.name == "ci" else t for t in config.ops.auth.tokens
    )
    proxy.service.reconfigure(replace(config, ops=replace(config.ops, auth=replace(config.ops.auth, tokens=tokens))))
    # Limits that were not there before see the shared totals from the next flush on
    # (the reload starts one).
    assert await booked(proxy.ledger.service)
    refused = await http("POST", proxy.url + "/api/chat", CHAT, headers=CI)
    assert refused.code == 429 and "1 requests per minute" in refused.json()["error"]
