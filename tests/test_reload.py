"""Reload in-process: DaemonService.reload() (what SIGHUP calls) on a running proxy."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from ollama_proxy.config.settings import load_config
from ollama_proxy.ops.daemon import DaemonService
from ollama_proxy.ops.sdnotify import SystemdNotifier
from ollama_proxy.service import makeService

from .conftest import RunningProxy, http
from .daemon import StreamClient
from .simulator import API_KEY, UpstreamSimulator


@pytest.fixture
def second_simulator() -> Any:
    sim = UpstreamSimulator(reactor)
    sim.base_url = sim.start()  # type: ignore[attr-defined]
    yield sim
    sim.close_connections()
    pytest_twisted.blockon(sim.stop())


@pytest.fixture
def daemon(simulator, tmp_path) -> Any:
    """A DaemonService over a file-configured proxy; ``daemon.write(text)`` rewrites the file."""
    config_file = tmp_path / "proxy.toml"
    config_file.write_text("")
    env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url}
    load = functools.partial(
        load_config, environ=env, config_file=str(config_file), listen=["tcp:0:interface=127.0.0.1"]
    )
    sent: list[str] = []
    notifier = SystemdNotifier(
        reactor, {"NOTIFY_SOCKET": "/fake"}, send=lambda message, env: sent.append(message) or True
    )
    service = DaemonService(makeService(load(), reactor), reactor, load, notifier=notifier, handle_signals=False)
    service.startService()
    service.sent = sent  # type: ignore[attr-defined]
    service.write = config_file.write_text  # type: ignore[attr-defined]
    service.url = RunningProxy(service.proxy).url  # type: ignore[attr-defined]
    service.env = env  # type: ignore[attr-defined]
    service.config_path = config_file  # type: ignore[attr-defined]
    yield service
    pytest_twisted.blockon(service.stopService())


async def names(url: str, **headers: str) -> list[str]:
    return [m["name"] for m in (await http("GET", url + "/api/tags", headers=headers)).json()["models"]]


@pytest_twisted.ensureDeferred
async def test_reload_applies_filter_limits_auth_cors_and_timers(daemon):
    url = daemon.url
    assert "google/gemini-pro:latest" in await names(url)
    daemon.write(
        """
max_body_bytes = 2000
[filter]
deny = ["google/*"]
[refresh]
models_interval = 42
[cors]
origins = ["https://chat.example.org"]
[limits]
max_streams_per_client = 3
[shutdown]
drain_timeout = 7
"""
    )
    assert daemon.reload() is True
    assert "google/gemini-pro:latest" not in await names(url)
    big = await http(
        "POST",
        url + "/api/chat",
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 3000}]},
    )
    assert big.code == 413
    assert (await http("GET", url + "/api/version", headers={"Origin": "https://chat.example.org"})).code == 200
    proxy = daemon.proxy
    assert proxy.gate.streams.per_client == 3 and proxy.lifecycle.drain_timeout == 7
    assert proxy.refresh_timer._loop.interval == 42
    assert daemon.sent[-2].startswith("RELOADING=1") and daemon.sent[-1].startswith("READY=1")
    metrics = (await http("GET", url + "/metrics?format=prometheus")).body.decode()
    assert 'ollama_proxy_config_reloads_total{result="ok"} 1.0' in metrics


@pytest_twisted.ensureDeferred
async def test_an_invalid_file_is_refused_and_the_running_config_stays(daemon):
    daemon.write('[filter]\ndeny = ["google/*"]\n')
    assert daemon.reload() is True
    daemon.write('[filter]\ndeny = "not a list"\n')
    assert daemon.reload() is False
    assert "google/gemini-pro:latest" not in await names(daemon.url)
    assert daemon.sent[-1].startswith("READY=1") and "STATUS=reload refused:" in daemon.sent[-1]
    daemon.write("[auth]\nenabled = true\n")
    assert daemon.reload() is False
    assert (await http("GET", daemon.url + "/api/tags")).code == 200


@pytest_twisted.ensureDeferred
async def test_enabling_auth_keeps_a_running_stream(daemon, simulator):
    stream = await StreamClient.open(
        daemon.url + "/api/chat", {"model": "sim/hold", "messages": [{"role": "user", "content": "still here"}]}
    )
    await stream.wait_lines(1)
    daemon.write('[[auth.tokens]]\nsha256 = "' + "ab" * 32 + '"\n')
    assert daemon.reload() is True
    assert (await http("GET", daemon.url + "/api/tags")).code == 401
    simulator.release_holds()
    await stream.wait_done()
    assert "".join(o["message"]["content"] for o in stream.objects()) == "Echo: still here"


@pytest_twisted.ensureDeferred
async def test_provider_settings_move_new_requests_and_keep_old_streams(daemon, simulator, second_simulator):
    stream = await StreamClient.open(
        daemon.url + "/api/chat", {"model": "sim/hold", "messages": [{"role": "user", "content": "old upstream"}]}
    )
    await stream.wait_lines(1)
    [old_provider] = daemon.proxy.providers
    daemon.write(f'[openrouter]\nbase_url = "{second_simulator.base_url}"\n')
    # The environment wins over the file, as at start-up: move it in the environment.
    daemon._load_config = functools.partial(
        load_config,
        environ={"OPENROUTER_API_KEY": API_KEY},
        config_file=str(daemon.config_path),
        listen=["tcp:0:interface=127.0.0.1"],
    )
    assert daemon.reload() is True
    assert old_provider not in daemon.proxy.providers
    r = await http(
        "POST",
        daemon.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "new"}], "stream": False},
    )
    assert r.code == 200
    assert len(second_simulator.chat_requests()) == 1
    simulator.release_holds()
    await stream.wait_done()
    assert stream.objects()[-1]["done"] is True
    assert "".join(o["message"]["content"] for o in stream.objects()) == "Echo: old upstream"


@pytest_twisted.ensureDeferred
async def test_a_value_out_of_its_declared_range_is_refused_on_reload(daemon):
    daemon.write("[breaker]\njitter = 0\n")
    assert daemon.reload() is True and daemon.proxy.config.breaker.jitter == 0
    daemon.write("[breaker]\njitter = 2\n")
    assert daemon.reload() is False
    assert "STATUS=reload refused:" in daemon.sent[-1] and "'breaker.jitter' must be in [0, 1]" in daemon.sent[-1]
    assert daemon.proxy.config.breaker.jitter == 0
    assert (await http("GET", daemon.url + "/api/tags")).code == 200
