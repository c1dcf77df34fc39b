"""The ledger in the real daemon: SIGTERM flushes the queued rows; two daemons
(as two workers would) share one SQLite ledger without losing a row."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from . import daemon
from .conftest import http
from .ledger_helpers import count_rows
from .simulator import API_KEY

LOOPBACK = "tcp:0:interface=127.0.0.1"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def running():
    started: list[daemon.Daemon] = []
    yield started
    for proc in started:
        proc.kill()


def ledger_config(tmp_path, path) -> str:
    config = tmp_path / "config.toml"
    # The timer would write every hour: what lands before that is the stop's flush.
    config.write_text(f'[ledger]\nurl = "sqlite://{path}"\nflush_interval = 3600\n')
    return str(config)


@pytest_twisted.ensureDeferred
async def test_sigterm_flushes_the_rows_still_queued(simulator, running, tmp_path):
    path = tmp_path / "ledger.sqlite3"
    env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url}
    proc = daemon.start(["ollama-proxy", "--listen", LOOPBACK, "--config", ledger_config(tmp_path, path)], env=env)
    running.append(proc)
    url = f"http://127.0.0.1:{await proc.port()}"
    await proc.wait_for_output("ledger ready")  # migrated by the first tick; the next is an hour away
    for _ in range(3):
        r = await http("POST", url + "/api/chat", {"model": "google/gemini-pro", "messages": HELLO, "stream": False})
        assert r.code == 200
    assert count_rows(f"sqlite://{path}") == 0  # queued, not written
    proc.signal("TERM")
    assert await proc.wait_ended() == 0
    assert count_rows(f"sqlite://{path}") == 3


@pytest_twisted.ensureDeferred
async def test_two_daemons_share_one_sqlite_ledger(simulator, running, tmp_path):
    path = tmp_path / "ledger.sqlite3"
    env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url}
    config = ledger_config(tmp_path, path)
    procs = [daemon.start(["ollama-proxy", "--listen", LOOPBACK, "--config", config], env=env) for _ in range(2)]
    running.extend(procs)
    urls = [f"http://127.0.0.1:{await proc.port()}" for proc in procs]
    body = {"model": "google/gemini-pro", "messages": HELLO, "stream": False}
    answers = await gatherResults(
        [ensureDeferred(http("POST", u + "/api/chat", body)) for u in urls for _ in range(10)]
    )
    assert [a.code for a in answers] == [200] * 20
    for proc in procs:
        proc.signal("TERM")
    assert await gatherResults([proc.wait_ended() for proc in procs]) == [0, 0]
    assert count_rows(f"sqlite://{path}") == 20


@pytest_twisted.ensureDeferred
async def test_worker_mode_writes_every_row_to_the_one_ledger(simulator, running, tmp_path):
    path = tmp_path / "ledger.sqlite3"
    env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url}
    args = ["ollama-proxy", "--workers", "2", "--listen", LOOPBACK, "--config", ledger_config(tmp_path, path)]
    proc = daemon.start(args, env=env)
    running.append(proc)
    ready = await proc.wait_for(rb"ready: 2 workers listening on [\d.]+:(\d+)")
    url = f"http://127.0.0.1:{int(ready.group(1))}"
    body = {"model": "google/gemini-pro", "messages": HELLO, "stream": False}
    answers = await gatherResults([ensureDeferred(http("POST", url + "/api/chat", body)) for _ in range(20)])
    assert [a.code for a in answers] == [200] * 20
    # The ledger's counters are summed over the workers like every other counter.
    metrics = (await http("GET", url + "/metrics?format=prometheus")).body.decode()
    prompt = sum(a.json()["prompt_eval_count"] for a in answers)
    labels = '{kind="prompt",model="google/gemini-pro",token="anonymous"}'
    assert f"ollama_proxy_usage_tokens_total{labels} {float(prompt)}" in metrics
    proc.signal("TERM")
    assert await proc.wait_ended() == 0
    assert count_rows(f"sqlite://{path}") == 20
