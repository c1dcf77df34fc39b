"""The same service tree from `twistd ollama-proxy`, from proxy.tac, and in-process."""

import dataclasses
import socket

import ollama
import pytest
import pytest_twisted
from twisted.application.internet import TimerService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from ollama_proxy.config.settings import load_config
from ollama_proxy.service import ListenerService, makeService

from . import daemon
from .conftest import base_config, http, in_thread
from .simulator import API_KEY

LOOPBACK = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def running():
    started = []
    yield started
    for d in started:
        d.kill()


def upstream_env(simulator):
    return {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url}


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_serves_the_api_and_stops_on_sigterm(simulator, running):
    proc = daemon.start(["ollama-proxy", "--listen", LOOPBACK], env=upstream_env(simulator))
    running.append(proc)
    port = await proc.port()
    url = f"http://127.0.0.1:{port}"
    assert (await http("GET", url + "/")).body == b"Ollama is running"
    answer = await in_thread(
        ollama.Client(host=url).chat, model="google/gemini-pro", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.message.content == "Echo: hi"
    proc.signal("TERM")
    assert await proc.wait_ended() == 0
    assert b"Server Shut Down." in proc.output  # a clean stop, not a kill
    assert API_KEY.encode() not in proc.output


@pytest_twisted.ensureDeferred
async def test_several_listen_options(simulator, running):
    proc = daemon.start(["ollama-proxy", "--listen", LOOPBACK, "--listen", LOOPBACK], env=upstream_env(simulator))
    running.append(proc)
    await proc.wait_for(rb"ready: listening on [\d.]+:\d+, [\d.]+:\d+")
    proc.signal("TERM")
    assert await proc.wait_ended() == 0


@pytest_twisted.ensureDeferred
async def test_ollama_host_is_honoured(simulator, running):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = daemon.start(["ollama-proxy"], env={**upstream_env(simulator), "OLLAMA_HOST": f"127.0.0.1:{port}"})
    running.append(proc)
    assert await proc.port() == port
    proc.signal("TERM")
    assert await proc.wait_ended() == 0


@pytest_twisted.ensureDeferred
async def test_tac_file_runs_the_same_tree(simulator, running):
    proc = daemon.start(["-y", "proxy.tac"], env={**upstream_env(simulator), "OLLAMA_PROXY_LISTEN": LOOPBACK})
    running.append(proc)
    port = await proc.port()
    r = await http("GET", f"http://127.0.0.1:{port}/api/tags")
    assert r.code == 200 and any(m["name"] == "google/gemini-pro:latest" for m in r.json()["models"])
    proc.signal("TERM")
    assert await proc.wait_ended() == 0


@pytest_twisted.ensureDeferred
async def test_tac_file_logs_through_the_redacting_observer(simulator, running):
    env = {**upstream_env(simulator), "OLLAMA_PROXY_LISTEN": LOOPBACK, "OLLAMA_PROXY_LOG_FORMAT": "json"}
    proc = daemon.start(["-y", "proxy.tac"], env=env)
    running.append(proc)
    port = await proc.port()
    r = await http(
        "POST",
        f"http://127.0.0.1:{port}/api/chat",
        {"model": "sim/leaky-error", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.code == 400
    await proc.wait_for(rb'"namespace":"ollama_proxy.access"')
    proc.signal("TERM")
    assert await proc.wait_ended() == 0
    lines = [line for line in proc.output.decode().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines)  # the proxy's observer, not twistd's default
    assert API_KEY not in proc.output.decode()


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_stops_start_up(simulator, running):
    taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    try:
        port = taken.getHost().port
        proc = daemon.start(
            ["ollama-proxy", "--listen", f"tcp:{port}:interface=127.0.0.1"], env=upstream_env(simulator)
        )
        running.append(proc)
        assert await proc.wait_ended() == 1
        # One line that names the address and says what to do; no traceback.
        (line,) = [line for line in proc.text().splitlines() if "listen" in line]
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line
        assert "--listen" in line and "OLLAMA_HOST" in line and "#critical]" in line
        assert "Traceback" not in proc.text() and "CannotListenError" not in proc.text()
    finally:
        await taken.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_is_reported_by_a_daemonizing_twistd(simulator, running, tmp_path):
    taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    try:
        port = taken.getHost().port
        args = ["--pidfile", str(tmp_path / "p.pid"), "--logfile", str(tmp_path / "p.log"), "ollama-proxy"]
        proc = daemon.Daemon.spawn(
            [*args, "--listen", f"tcp:{port}:interface=127.0.0.1"], upstream_env(simulator), tmp_path
        )
        running.append(proc)
        assert await proc.wait_ended() == 1
        # twistd's parent shows the start of the child's reason; the log has the whole line.
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.text()
        log = (tmp_path / "p.log").read_text()
        assert "OLLAMA_HOST" in log and "Traceback" not in log  # one line, then the exit
    finally:
        await taken.stopListening()


@pytest.mark.parametrize("foreground", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_port_in_use_stops_proxy_tac_with_its_reason(simulator, running, tmp_path, foreground):
    taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    try:
        port = taken.getHost().port
        env = {**upstream_env(simulator), "OLLAMA_PROXY_LISTEN": f"tcp:{port}:interface=127.0.0.1"}
        where = ["-n", "--pidfile="] if foreground else ["--pidfile", str(tmp_path / "p.pid")]
        proc = daemon.Daemon.spawn(
            [*where, "--logfile", str(tmp_path / "p.log"), "-y", str(daemon.ROOT / "proxy.tac")], env, tmp_path
        )
        running.append(proc)
        assert await proc.wait_ended() == 1
        log = (tmp_path / "p.log").read_text()
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in log and "OLLAMA_HOST" in log
        assert "Traceback" not in log
        if not foreground:  # twistd's parent names the reason, not an empty one
            assert f"cannot listen on 127.0.0.1:{port}" in proc.text()
    finally:
        await taken.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_bad_config_file_stops_start_up_naming_the_key(tmp_path, running):
    bad = tmp_path / "bad.toml"
    bad.write_text("[timeouts]\nidel = 3\n")
    proc = daemon.start(["ollama-proxy", "--config", str(bad), "--listen", LOOPBACK])
    running.append(proc)
    assert await proc.wait_ended() == 1
    assert b"configuration error" in proc.output and b"unknown key 'timeouts.idel'" in proc.output
    assert b"Traceback" not in proc.output


def test_make_service_builds_the_whole_tree():
    memory = MemoryReactorClock()
    config = load_config(environ={}, listen=["tcp:11434:interface=127.0.0.1", "tcp:8080"])
    tree = makeService(config, memory)
    assert isinstance(tree, MultiService) and IServiceCollection.providedBy(tree)
    names = [s.name for s in tree]
    assert names[:2] == ["listen[0]", "listen[1]"]
    assert tree.getServiceNamed("listen[1]").description == "tcp:8080"
    assert isinstance(tree.getServiceNamed("model-refresh"), TimerService)
    assert isinstance(tree.getServiceNamed("health-check"), TimerService)
    assert tree.getServiceNamed("model-refresh").step == 300
    assert tree.getServiceNamed("health-check").step == 60


def test_timers_run_on_the_injected_clock_and_survive_failures():
    memory = MemoryReactorClock()
    config = load_config(environ={}, listen=["tcp:11434:interface=127.0.0.1"])
    tree = makeService(config, memory)
    tree.startService()
    attempts = []
    try:
        assert [p.getHost().port for p in tree.listening_ports()] == [11434]
        for _ in range(301):
            # Every upstream connection attempt is refused at once.
            while len(attempts) < len(memory.tcpClients):
                (_, _, factory, *_), connector = memory.tcpClients[len(attempts)], memory.connectors[len(attempts)]
                attempts.append(memory.seconds())
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            memory.advance(1)
        # Refresh at 0 and 300, health checks every 60 s: failures stop neither.
        assert attempts == [0, 0, 60, 120, 180, 240, 300, 300]
        assert tree.health.healthy is False and "cannot reach OpenRouter" in tree.health.last_error
        assert tree.health.last_check >= 300
        assert "cannot reach OpenRouter" in tree.catalogue.last_error
    finally:
        tree.stopService()


def test_a_periodic_job_that_raises_is_logged_and_runs_again():
    memory = MemoryReactorClock()
    tree = makeService(load_config(environ={}, listen=[]), memory)
    calls: list[float] = []

    def broken() -> None:
        calls.append(memory.seconds())
        raise RuntimeError("a bug in the health check")

    tree.health_checker.check = broken  # type: ignore[method-assign]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    tree.startService()
    try:
        memory.advance(60)
        memory.advance(60)
        assert calls == [0, 60, 120] and tree.health_timer.running
        failures = [e for e in events if "log_failure" in e and e.get("name") == "health-check"]
        assert len(failures) == 3 and failures[0]["log_failure"].check(RuntimeError)
    finally:
        globalLogPublisher.removeObserver(events.append)
        tree.stopService()


def test_a_reload_with_a_new_interval_replaces_the_timer():
    memory = MemoryReactorClock()
    config = load_config(environ={}, listen=[])
    tree = makeService(config, memory)
    tree.startService()
    try:
        old = tree.health_timer
        tree.reconfigure(dataclasses.replace(config, health_check_interval=5))
        assert old.parent is None and old not in list(tree)  # it stops once its run in progress ends
        assert tree.getServiceNamed("health-check") is tree.health_timer and tree.health_timer.step == 5
        assert tree.health_timer.running
    finally:
        tree.stopService()


@pytest_twisted.ensureDeferred
async def test_the_api_mounts_in_another_site(simulator):
    proxy_tree = makeService(base_config(simulator, listen=()), reactor)
    proxy_tree.startService()
    root = Resource()
    root.putChild(b"hello", Data(b"their resource", "text/plain"))
    root.putChild(b"ollama", proxy_tree.api.resource())
    theirs = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{theirs.getHost().port}"
        assert (await http("GET", url + "/hello")).body == b"their resource"
        assert (await http("GET", url + "/ollama/")).body == b"Ollama is running"
        answer = await in_thread(
            ollama.Client(host=url + "/ollama").generate, model="google/gemini-pro", prompt="mounted"
        )
        assert answer.response == "Echo: mounted"
    finally:
        await theirs.stopListening()
        await proxy_tree.stopService()
    assert not [s for s in proxy_tree if isinstance(s, ListenerService)]


def test_the_startup_heap_is_frozen_and_later_garbage_still_collected():
    import gc
    import weakref

    from ollama_proxy.ops.daemon import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap

    class Node:
        pass

    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        assert gc.get_freeze_count() == 0
        freeze_startup_heap()
        assert gc.get_freeze_count() > 1000  # every module, class and function loaded so far
        # The youngest generation waits for more allocations; the older ones keep their ratios.
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:]) != thresholds
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
