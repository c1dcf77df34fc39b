"""/metrics: the JSON statistics stay; Prometheus text when the scraper asks for it."""

from __future__ import annotations

import re

import pytest_twisted

from .conftest import http


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the text format, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return None


def chat(model: str, stream: bool = True, text: str = "one two three") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


@pytest_twisted.ensureDeferred
async def test_json_stays_the_default(proxy):
    for headers in (
        {},
        {"Accept": "application/json"},
        {"Accept": "*/*"},
        {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    ):
        r = await http("GET", proxy.url + "/metrics", headers=headers)
        assert r.code == 200 and r.header("content-type") == "application/json; charset=utf-8"
        assert set(r.json()) == {"metrics", "statistics", "timestamp"}


@pytest_twisted.ensureDeferred
async def test_prometheus_text_counts_requests_latency_ttft_tokens_and_overhead(proxy):
    assert (await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro"))).code == 200
    assert (await http("POST", proxy.url + "/api/chat", chat("openai/gpt-4o-mini", stream=False))).code == 200
    assert (
        await http("POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": ["a b", "c"]})
    ).code == 200
    assert (await http("POST", proxy.url + "/api/chat", chat("nobody/nothing"))).code == 404
    r = await http("GET", proxy.url + "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert r.code == 200 and r.header("content-type").startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    assert sample(text, "ollama_proxy_requests_total", endpoint="/api/chat", method="POST", status="200") == 2
    assert sample(text, "ollama_proxy_requests_total", endpoint="/api/chat", method="POST", status="404") == 1
    assert sample(text, "ollama_proxy_requests_total", endpoint="/api/embed", method="POST", status="200") == 1
    assert sample(text, "ollama_proxy_request_duration_seconds_count", endpoint="/api/chat") == 3
    assert (
        sample(text, "ollama_proxy_time_to_first_token_seconds_count", endpoint="/api/chat", provider="openrouter") == 2
    )
    assert (
        sample(text, "ollama_proxy_upstream_duration_seconds_count", provider="openrouter", endpoint="/api/chat") == 2
    )
    assert (
        sample(text, "ollama_proxy_upstream_duration_seconds_count", provider="openrouter", endpoint="/api/embed") == 1
    )
    assert sample(text, "ollama_proxy_overhead_seconds_count", endpoint="/api/chat") == 3
    # The simulator counts words: 3 prompt tokens and 4 answer tokens per chat, 3 for the embeddings.
    assert sample(text, "ollama_proxy_tokens_total", provider="openrouter", kind="prompt") == 3 + 3 + 3
    assert sample(text, "ollama_proxy_tokens_total", provider="openrouter", kind="completion") == 4 + 4
    assert sample(text, "ollama_proxy_streams_in_flight") == 0
    assert sample(text, "ollama_proxy_in_flight_requests") == 1  # this scrape
    assert sample(text, "ollama_proxy_draining") == 0
    assert sample(text, "ollama_proxy_models", state="offered") > 0


@pytest_twisted.ensureDeferred
async def test_openmetrics_and_the_format_parameter(proxy):
    r = await http(
        "GET",
        proxy.url + "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},
    )
    assert r.header("content-type").startswith("application/openmetrics-text") and r.body.endswith(b"# EOF\n")
    r = await http("GET", proxy.url + "/metrics?format=prometheus")
    assert r.header("content-type").startswith("text/plain") and b"ollama_proxy_requests_total" in r.body


@pytest_twisted.ensureDeferred
async def test_stream_errors_and_breaker_states(proxy):
    r = await http("POST", proxy.url + "/api/chat", chat("sim/midstream-error"))
    assert r.code == 200 and "error" in r.lines()[-1]
    # A 401 opens the provider's breaker (a long wait); the metrics show one-hot states.
    assert (await http("POST", proxy.url + "/api/chat", chat("sim/fail-401"))).code == 502
    text = (await http("GET", proxy.url + "/metrics?format=prometheus")).body.decode()
    assert sample(text, "ollama_proxy_stream_errors_total", endpoint="/api/chat") == 1
    assert sample(text, "ollama_proxy_breaker_state", provider="openrouter", state="open") == 1
    assert sample(text, "ollama_proxy_breaker_state", provider="openrouter", state="closed") == 0


@pytest_twisted.ensureDeferred
async def test_each_proxy_has_its_own_registry(make_proxy):
    first, second = make_proxy(), make_proxy()
    assert (await http("GET", first.url + "/api/tags")).code == 200
    one = (await http("GET", first.url + "/metrics?format=prometheus")).body.decode()
    two = (await http("GET", second.url + "/metrics?format=prometheus")).body.decode()
    assert sample(one, "ollama_proxy_requests_total", endpoint="/api/tags", method="GET", status="200") == 1
    assert sample(two, "ollama_proxy_requests_total", endpoint="/api/tags", method="GET", status="200") is None
    assert first.service.metrics.registry is not second.service.metrics.registry


@pytest_twisted.ensureDeferred
async def test_made_up_methods_share_one_label(proxy):
    for method in ("FOO", "BAR", "BAZ"):
        assert (await http(method, proxy.url + "/api/tags")).code in (404, 405, 501)
    text = (await http("GET", proxy.url + "/metrics?format=prometheus")).body.decode()
    assert "FOO" not in text and "BAR" not in text
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ollama_proxy_requests_total{") and 'method="OTHER"' in line
    )
    assert total == 3


@pytest_twisted.ensureDeferred
async def test_every_surface_is_counted_in_the_json_statistics(proxy):
    # The statistics count what a route took, told by the record's surface (its error dialect's
    # name): a dialect without one made /v1/messages requests fail to be counted.
    body = {"model": "google/gemini-pro", "max_tokens": 20, "messages": [{"role": "user", "content": "a"}]}
    assert (await http("POST", proxy.url + "/v1/messages", body)).code == 200
    assert (await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))).code == 200
    statistics = (await http("GET", proxy.url + "/metrics")).json()["statistics"]
    assert statistics["request_count"] == 2, statistics


def test_each_metric_counts_its_own_label_sets():
    """Children are kept per metric and label values: two metrics with the same values
    (duration and overhead share the endpoint) and two values of one metric stay apart."""
    from types import SimpleNamespace

    from ollama_proxy.ops.metrics import Metrics

    metrics = Metrics()
    base = dict(method="POST", duration=0.5, provider="p", ttft=None, upstream_seconds=0.0, overhead=0.25)
    base |= dict(tokens_in=3, tokens_out=0, failed=False)
    for status in (200, 200, 503):
        metrics.observe(SimpleNamespace(endpoint="/api/chat", status=status, **base))  # type: ignore[arg-type]
    metrics.observe(SimpleNamespace(**{**base, "endpoint": "/api/embed", "status": 200, "provider": "q"}))  # type: ignore[arg-type]
    value = metrics.registry.get_sample_value
    assert value("ollama_proxy_requests_total", {"endpoint": "/api/chat", "method": "POST", "status": "200"}) == 2
    assert value("ollama_proxy_requests_total", {"endpoint": "/api/chat", "method": "POST", "status": "503"}) == 1
    assert value("ollama_proxy_request_duration_seconds_sum", {"endpoint": "/api/chat"}) == 1.5
    assert value("ollama_proxy_overhead_seconds_sum", {"endpoint": "/api/chat"}) == 0.75
    assert value("ollama_proxy_tokens_total", {"provider": "p", "kind": "prompt"}) == 9
    assert value("ollama_proxy_tokens_total", {"provider": "q", "kind": "prompt"}) == 3
