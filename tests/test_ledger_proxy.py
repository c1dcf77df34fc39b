"""The ledger behind a real proxy: every surface writes its row (tokens, cost by
source), /api/usage shows each token its own, Prometheus counts cost and tokens."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted

from ollama_proxy.config.credentials import ClientToken, token_digest
from ollama_proxy.config.ops import AuthConfig
from ollama_proxy.config.schema import LedgerConfig, PriceTable

from .conftest import http, in_thread
from .ledger_helpers import booked
from .multi import multi_config, provider
from .simulator import COMPLETION_PRICE, PROMPT_PRICE

CI = {"Authorization": "Bearer ci-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}
HELLO = [{"role": "user", "content": "hello there"}]


def tokens(**limits: Any) -> AuthConfig:
    return AuthConfig(
        enabled=True,
        tokens=(
            ClientToken(token_digest("ci-secret"), "ci", limits=limits.get("ci") or ClientToken.limits),
            ClientToken(token_digest("admin-secret"), "boss", admin=True),
        ),
    )


@pytest.fixture
def ledgered(make_multi, ollama_sim, tmp_path):
    """``ledgered(**config)``: a proxy with OpenRouter, an Ollama upstream and a SQLite ledger."""
    path = tmp_path / "ledger.sqlite3"

    def make(auth: AuthConfig | None = None, **overrides: Any) -> Any:
        base = multi_config(None, [])
        ops = replace(base.ops, auth=auth or tokens())
        proxy = make_multi(
            [provider("local", "ollama", ollama_sim.base_url)],
            ops=ops,
            ledger=LedgerConfig(url=f"sqlite://{path}", flush_interval=3600),
            prices={"qwen3:8b": PriceTable(prompt=1.0, completion=2.0)},
            **overrides,
        )
        proxy.path = path
        proxy.ledger = proxy.service.ledger
        return proxy

    return make


def rows(path: Any) -> dict[str, dict[str, Any]]:
    """The ledger's rows by request id."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in db.execute("SELECT * FROM usage")}


def openrouter_cost(prompt: int, completion: int) -> float:
    return prompt * PROMPT_PRICE + completion * COMPLETION_PRICE


@pytest_twisted.ensureDeferred
async def test_every_surface_writes_one_row_with_its_tokens_and_cost(ledgered):
    proxy = ledgered()
    url = proxy.url
    asked: dict[str, tuple[str, Any]] = {}

    async def call(path: str, body: dict[str, Any]) -> Any:
        r = await http("POST", url + path, body, headers=CI)
        assert r.code == 200, r.body
        asked[r.header("x-request-id")] = (path, body)
        return r

    chat = (await call("/api/chat", {"model": "google/gemini-pro", "messages": HELLO, "stream": False})).json()
    streamed = (await call("/api/chat", {"model": "google/gemini-pro", "messages": HELLO})).lines()[-1]
    generated = (await call("/api/generate", {"model": "google/gemini-pro", "prompt": "hi", "stream": False})).json()
    v1 = (await call("/v1/chat/completions", {"model": "google/gemini-pro", "messages": HELLO})).json()["usage"]
    v1_stream = await call(
        "/v1/chat/completions",
        {"model": "google/gemini-pro", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    completion = (await call("/v1/completions", {"model": "google/gemini-pro", "prompt": "hi"})).json()["usage"]
    embedded = (await call("/api/embed", {"model": "openai/text-embedding-3-small", "input": ["one two"]})).json()
    v1_embedded = (await call("/v1/embeddings", {"model": "openai/text-embedding-3-small", "input": "a b c"})).json()
    local = (await call("/api/chat", {"model": "llama3.2", "messages": HELLO, "stream": False})).json()
    priced = (await call("/api/chat", {"model": "qwen3:8b", "messages": HELLO, "stream": False})).json()
    assert await booked(proxy.ledger.service)

    written = rows(proxy.path)
    assert set(written) == set(asked)  # one row per request, by its request id
    by_surface = {}
    for row in written.values():
        assert row["token"] == "ci" and row["status"] == 200 and row["outcome"] == "ok"
        by_surface.setdefault((row["surface"], row["model"], row["streamed"]), []).append(row)

    def one(surface: str, model: str, streamed: int = 0) -> dict[str, Any]:
        (row,) = by_surface[(surface, model, streamed)]
        return row

    row = one("/api/chat", "google/gemini-pro")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (chat["prompt_eval_count"], chat["eval_count"])
    assert row["cost_source"] == "provider" and row["cost"] == pytest.approx(
        openrouter_cost(chat["prompt_eval_count"], chat["eval_count"])
    )
    assert row["provider"] == "openrouter" and row["upstream_model"] == "google/gemini-pro"
    row = one("/api/chat", "google/gemini-pro", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (streamed["prompt_eval_count"], streamed["eval_count"])
    assert row["cost_source"] == "provider" and row["cost"] > 0
    row = one("/api/generate", "google/gemini-pro")
    assert row["completion_tokens"] == generated["eval_count"] and row["cost_source"] == "provider"
    row = one("/v1/chat/completions", "google/gemini-pro")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (v1["prompt_tokens"], v1["completion_tokens"])
    assert row["cost"] == pytest.approx(openrouter_cost(v1["prompt_tokens"], v1["completion_tokens"]))
    row = one("/v1/chat/completions", "google/gemini-pro", 1)
    assert b'"usage"' in v1_stream.body and row["completion_tokens"] == v1["completion_tokens"]
    row = one("/v1/completions", "google/gemini-pro")
    assert row["completion_tokens"] == completion["completion_tokens"] and row["cost_source"] == "provider"
    # Embeddings: OpenRouter's published price times the tokens.
    row = one("/api/embed", "openai/text-embedding-3-small")
    assert row["prompt_tokens"] == embedded["prompt_eval_count"] and row["cost_source"] == "pricing"
    assert row["cost"] == pytest.approx(embedded["prompt_eval_count"] * PROMPT_PRICE)
    row = one("/v1/embeddings", "openai/text-embedding-3-small")
    assert row["prompt_tokens"] == v1_embedded["usage"]["prompt_tokens"] and row["cost_source"] == "pricing"
    # An Ollama upstream publishes no price: unknown, not zero; [prices] gives one.
    row = one("/api/chat", "llama3.2")
    assert row["provider"] == "local" and row["prompt_tokens"] == local["prompt_eval_count"]
    assert row["cost"] is None and row["cost_source"] is None
    row = one("/api/chat", "qwen3:8b")
    assert row["cost_source"] == "config"
    assert row["cost"] == pytest.approx((priced["prompt_eval_count"] * 1.0 + priced["eval_count"] * 2.0) / 1e6)


@pytest_twisted.ensureDeferred
async def test_a_client_token_reads_only_its_own_usage_and_an_admin_reads_all(ledgered):
    proxy = ledgered()
    for headers in (CI, CI, ADMIN):
        r = await http(
            "POST",
            proxy.url + "/api/chat",
            {"model": "google/gemini-pro", "messages": HELLO, "stream": False},
            headers=headers,
        )
        assert r.code == 200
    own = (await http("GET", proxy.url + "/api/usage?group_by=token&token=boss", headers=CI)).json()
    assert [(u["token"], u["requests"]) for u in own["usage"]] == [("ci", 2)]
    assert own["filters"]["token"] == "ci" and own["currency"] == "USD"
    everyone = (await http("GET", proxy.url + "/api/usage?group_by=token", headers=ADMIN)).json()
    assert [(u["token"], u["requests"]) for u in everyone["usage"]] == [("boss", 1), ("ci", 2)]
    assert everyone["usage"][1]["cost"] > 0 and everyone["usage"][1]["unpriced_requests"] == 0
    detail = (await http("GET", proxy.url + "/api/usage", headers=ADMIN)).json()["usage"]
    assert {(u["token"], u["model"], u["provider"]) for u in detail} == {
        ("boss", "google/gemini-pro", "openrouter"),
        ("ci", "google/gemini-pro", "openrouter"),
    }
    assert all(len(u["day"]) == 10 for u in detail)
    bad = await http("GET", proxy.url + "/api/usage?group_by=secret", headers=ADMIN)
    assert bad.code == 400 and "group_by: unknown column 'secret'" in bad.json()["error"]
    refused = await http("GET", proxy.url + "/api/usage")
    assert refused.code == 401


@pytest_twisted.ensureDeferred
async def test_without_auth_requests_count_as_anonymous_and_without_a_ledger_usage_is_404(ledgered, make_proxy):
    proxy = ledgered(auth=AuthConfig())
    r = await http("POST", proxy.url + "/v1/chat/completions", {"model": "google/gemini-pro", "messages": HELLO})
    assert r.code == 200
    usage = (await http("GET", proxy.url + "/api/usage?group_by=token,model")).json()["usage"]
    assert [(u["token"], u["model"], u["requests"]) for u in usage] == [("anonymous", "google/gemini-pro", 1)]
    plain = make_proxy()
    missing = await http("GET", plain.url + "/api/usage")
    assert missing.code == 404 and "[ledger]" in missing.json()["error"]


@pytest_twisted.ensureDeferred
async def test_failed_and_cancelled_requests_are_recorded_too(ledgered, simulator):
    proxy = ledgered()
    missing = await http("POST", proxy.url + "/api/chat", {"model": "no/such-model", "messages": HELLO}, headers=CI)
    assert missing.code == 404
    simulator.behaviour = "midstream-error"
    broken = await http("POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": HELLO}, headers=CI)
    assert broken.code == 200 and "error" in broken.lines()[-1]
    assert await booked(proxy.ledger.service)
    written = {r["request_id"]: r for r in rows(proxy.path).values()}
    outcome = {(r["model"], r["status"], r["outcome"], r["streamed"]) for r in written.values()}
    assert outcome == {("no/such-model", 404, "error", 0), ("google/gemini-pro", 200, "error", 1)}
    unknown = next(r for r in written.values() if r["model"] == "no/such-model")
    assert unknown["cost"] == 0 and unknown["provider"] is None  # nothing was used


@pytest_twisted.ensureDeferred
async def test_prometheus_counts_cost_and_tokens_by_token_and_model(ledgered):
    proxy = ledgered()
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": HELLO, "stream": False}, headers=CI
    )
    answer = r.json()
    text = (await http("GET", proxy.url + "/metrics?format=prometheus", headers=CI)).body.decode()
    labels = '{kind="prompt",model="google/gemini-pro",token="ci"}'
    assert f"ollama_proxy_usage_tokens_total{labels} {float(answer['prompt_eval_count'])}" in text
    cost = next(line for line in text.splitlines() if line.startswith("ollama_proxy_usage_cost_total{"))
    assert 'token="ci"' in cost and float(cost.split()[-1]) == pytest.approx(
        openrouter_cost(answer["prompt_eval_count"], answer["eval_count"])
    )


@pytest_twisted.ensureDeferred
async def test_the_openai_client_reads_through_a_ledgered_proxy(ledgered):
    import openai

    proxy = ledgered()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="ci-secret")
    answer = await in_thread(
        lambda: client.chat.completions.create(model="google/gemini-pro", messages=HELLO)  # type: ignore[arg-type]
    )
    assert await booked(proxy.ledger.service)
    (row,) = rows(proxy.path).values()
    assert row["completion_tokens"] == answer.usage.completion_tokens and row["token"] == "ci"


@pytest_twisted.ensureDeferred
async def test_the_agent_surfaces_write_their_rows_too(ledgered):
    proxy = ledgered()
    message = await http(
        "POST",
        proxy.url + "/v1/messages",
        {"model": "google/gemini-pro", "max_tokens": 50, "messages": HELLO},
        headers={"x-api-key": "ci-secret", "anthropic-version": "2023-06-01"},
    )
    assert message.code == 200, message.body
    response = await http(
        "POST", proxy.url + "/v1/responses", {"model": "google/gemini-pro", "input": "hi"}, headers=CI
    )
    assert response.code == 200, response.body
    assert await booked(proxy.ledger.service)
    written = {r["surface"]: r for r in rows(proxy.path).values()}
    usage = message.json()["usage"]
    row = written["/v1/messages"]
    assert (row["token"], row["prompt_tokens"], row["completion_tokens"]) == (
        "ci",
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert row["cost_source"] == "provider" and row["cost"] > 0
    row = written["/v1/responses"]
    assert row["completion_tokens"] == response.json()["usage"]["output_tokens"] and row["cost"] > 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_stream_leaves_a_cancelled_row(ledgered, simulator):
    from .conftest import LineReader

    proxy = ledgered(auth=AuthConfig())
    aborted = simulator.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", {"model": "sim/hold", "messages": HELLO})
    await simulator.wait_for_hold()
    await reader.wait_for_lines(1)
    reader.hang_up()
    await aborted  # the proxy noticed and cut the upstream first
    await proxy.service.lifecycle.when_idle()  # the bookkeeping (the row queued) follows
    assert await booked(proxy.ledger.service)
    (row,) = rows(proxy.path).values()
    assert (row["token"], row["model"], row["status"], row["outcome"], row["streamed"]) == (
        "anonymous",
        "sim/hold",
        499,
        "cancelled",
        1,
    )
    assert row["provider"] == "openrouter" and row["cost"] is None  # the usage never came


def test_the_ledger_provides_its_interface(ledgered):
    from zope.interface.verify import verifyObject

    from ollama_proxy.ledger.interfaces import IUsageLedger

    proxy = ledgered()
    assert verifyObject(IUsageLedger, proxy.ledger)
    assert proxy.service.api.pipeline.ledger is proxy.ledger
