"""Worker mode: a main process (here, in the test's reactor) and real worker processes.

The Supervisor runs in the test's reactor exactly as in ``twistd ollama-proxy
--workers N``; the workers are real ``twistd ollama-proxy --worker I/N`` processes
reaching the test's upstream simulator. Nothing waits on time: every step awaits an
event (a worker ready, reloaded, ended) or an answer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections import defaultdict
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from ollama_proxy.ops.aggregate import merge
from ollama_proxy.ops.workermode import RUNTIME_ENV, for_worker, share
from ollama_proxy.ops.workers import FIRST_BACKOFF, MAX_BACKOFF, Supervisor, twistd_spawner, worker_environment

from .conftest import LineReader, http
from .simulator import API_KEY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Events:
    """Supervisor events as Deferreds: ``wait("ready", 2)`` fires at the second one."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self.waiters: list[tuple[str, int, Deferred[Any]]] = []

    def __call__(self, name: str, worker: Any) -> None:
        self.seen[name].append((worker.index, worker.pid))
        for waiter in list(self.waiters):
            if waiter[0] == name and len(self.seen[name]) >= waiter[1]:
                self.waiters.remove(waiter)
                waiter[2].callback(self.seen[name])

    def wait(self, name: str, count: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if len(self.seen[name]) >= count:
            d.callback(self.seen[name])
        else:
            self.waiters.append((name, count, d))
        return d.addTimeout(60, global_reactor)


def _config(tmp_path: Any, simulator: Any, extra: str = "") -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'[openrouter]\nbase_url = "{simulator.base_url}"\napi_key = "{API_KEY}"\nmax_in_flight = 16\n'
        f"[log]\naccess = false\n{extra}"
    )
    return str(path)


@pytest_twisted.async_yield_fixture()
async def running(tmp_path: Any, simulator: Any) -> Any:
    runtime = tmp_path / "run"
    (runtime / "metrics").mkdir(parents=True)
    config = _config(tmp_path, simulator)
    env = worker_environment(
        {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER", "OLLAMA"))}, str(runtime / "metrics")
    )
    env[RUNTIME_ENV] = str(runtime)
    env["PYTHONPATH"] = REPO
    argv = ["-n", "--pidfile=", "ollama-proxy", "--worker", "{worker}/2", "--config", config]
    events = Events()
    supervisor = Supervisor(
        2, ["tcp:0:interface=127.0.0.1"], twistd_spawner(global_reactor, argv, env), global_reactor, on_event=events
    )
    supervisor.startService()
    await events.wait("ready", 2)
    port = supervisor.sockets[0].getsockname()[1]
    yield supervisor, events, f"http://127.0.0.1:{port}", port, config
    if supervisor.running:
        await supervisor.stopService()


async def _keep_alive_requests(port: int, connections: int) -> list[bytes]:
    """``connections`` persistent connections, each opened and used for one request,
    all held open until every one has been answered."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Client(Protocol):
        def __init__(self) -> None:
            self.answer: Deferred[bytes] = Deferred()
            self.data = b""

        def dataReceived(self, data: bytes) -> None:
            self.data += data
            # The status and headers are what is checked; the body may be chunked.
            if b"\r\n\r\n" in self.data and not self.answer.called:
                self.answer.callback(self.data)

    clients = []
    for _ in range(connections):
        client = Client()
        await connectProtocol(TCP4ClientEndpoint(global_reactor, "127.0.0.1", port), client)
        client.transport.write(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        clients.append(client)
    answers = await gatherResults([c.answer for c in clients])
    for client in clients:
        client.transport.loseConnection()
    return answers


@pytest_twisted.ensureDeferred
async def test_keep_alive_connections_spread_and_counters_add_up(running: Any) -> None:
    supervisor, events, url, port, _ = running
    answers = await _keep_alive_requests(port, 8)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert supervisor.handed_over == [4, 4]  # round robin, whatever the clients' ports

    chat = {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    for _ in range(6):
        response = await http("POST", url + "/api/chat", chat)
        assert response.code == 200
    # The http() helper opens a connection per request: they alternate between workers.
    stats = (await http("GET", url + "/metrics")).json()
    assert stats["workers"] == {"count": 2, "answered": 2}
    chats = await http("GET", url + "/metrics?format=prometheus")
    samples = [
        line
        for line in chats.body.decode().splitlines()
        if line.startswith('ollama_proxy_requests_total{endpoint="/api/chat"')
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) == 6.0
    providers = (await http("GET", url + "/api/providers")).json()["providers"]
    openrouter = next(p for p in providers if p["name"] == "openrouter")
    assert openrouter["request_count"] == 6
    detail = (await http("GET", url + "/api/providers/openrouter/stats")).json()
    assert detail["max_in_flight"] == 16  # 8 + 8: the configured limit holds for the whole
    ps = (await http("GET", url + "/api/ps")).json()
    assert [m["name"] for m in ps["models"]] == ["google/gemini-pro:latest"]


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_restarted_and_reported(running: Any) -> None:
    supervisor, events, url, _, _ = running
    old = supervisor.workers[0].pid
    os.kill(old, signal.SIGKILL)
    await events.wait("ready", 3)
    worker = supervisor.workers[0]
    assert worker.pid != old and worker.ready
    assert worker.exits == ["signal SIGKILL"]
    assert (await http("GET", url + "/api/version")).code == 200


@pytest_twisted.ensureDeferred
async def test_reload_reaches_every_worker_or_none(running: Any, tmp_path: Any) -> None:
    from ollama_proxy.config.settings import load_config
    from ollama_proxy.ops.workermode import MainService

    supervisor, events, url, _, config = running
    main = MainService.__new__(MainService)  # only its reload, around the running supervisor
    main.supervisor = supervisor
    main.notifier = type("Quiet", (), {"reloading": lambda self: None, "ready": lambda self, s=None: None})()
    main._load_config = lambda: load_config(environ={}, config_file=config)

    with open(config, "a") as f:
        f.write("[limits]\nmax_streams = 7\n")
    assert main.reload()
    reloaded = await events.wait("reloaded", 2)
    assert sorted(index for index, _ in reloaded) == [0, 1]

    with open(config, "a") as f:
        f.write("this is not toml =\n")
    assert not main.reload()  # refused once, in the main process: no worker is asked
    assert supervisor.reloads == {"reloaded": 2, "reload refused": 0}


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_every_worker_before_the_main_process_ends(running: Any) -> None:
    supervisor, events, url, port, _ = running
    words = " ".join(["word"] * 100)  # sim/slow: a token every 0.02 s, so the stream is in flight
    reader = LineReader()
    await reader.connect(port, "/api/chat", {"model": "sim/slow", "messages": [{"role": "user", "content": words}]})
    await reader.wait_for_lines(1)
    await supervisor.stopService()  # SIGTERM to both; fires once both have ended
    await reader.closed
    last = json.loads(reader.lines[-1])
    assert last["done"] is True and "error" not in last
    assert sorted(w.exits[-1] for w in supervisor.workers) == ["exit status 0", "exit status 0"]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the main process no longer listens


def test_a_crash_loop_backs_off_and_a_stable_worker_restarts_at_once() -> None:
    clock = Clock()
    spawned: list[int] = []
    ended: list[Any] = []

    class Reactor:
        def addReader(self, reader: Any) -> None:
            pass

        def removeReader(self, reader: Any) -> None:
            pass

        def getReaders(self) -> list[Any]:
            return []

    def spawn(index: int, channel: socket.socket, on_end: Any) -> int:
        spawned.append(index)
        ended.append(on_end)
        return 1000 + len(spawned)

    supervisor = Supervisor(1, [], spawn, Reactor(), clock)
    supervisor.startService()
    delays = []
    for _ in range(8):
        ended[-1](0, "exit status 1")  # dies at once, again and again
        delays.append(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [FIRST_BACKOFF * 2**i for i in range(6)] + [MAX_BACKOFF, MAX_BACKOFF]
    clock.advance(60)  # this one runs a while: the next death restarts it at once
    ended[-1](0, "exit status 1")
    assert clock.getDelayedCalls()[0].getTime() == clock.seconds()
    assert len(spawned) == 9


def test_limits_are_split_so_that_the_workers_together_keep_them() -> None:
    for limit in (1, 2, 7, 16, 512):
        for count in (1, 2, 3, 4):
            parts = [share(limit, i, count) for i in range(count)]
            assert sum(parts) == max(limit, count if limit else 0) or limit == 0
    assert [share(0, i, 3) for i in range(3)] == [0, 0, 0]  # no limit stays no limit

    from ollama_proxy.config.settings import load_config

    config = load_config(environ={"OPENROUTER_API_KEY": "k"})
    halves = [for_worker(config, i, 2) for i in range(2)]
    assert sum(h.openrouter.max_in_flight for h in halves) == config.openrouter.max_in_flight
    assert all(h.listen == () for h in halves)


def test_merged_views_add_counts_and_recompute_rates() -> None:
    a = {"request_count": 3, "error_count": 1, "error_rate": 0.3333, "avg_response_time_ms": 10.0, "uptime_seconds": 5}
    b = {"request_count": 1, "error_count": 1, "error_rate": 1.0, "avg_response_time_ms": 30.0, "uptime_seconds": 7}
    merged = merge([a, b])
    assert merged == {
        "request_count": 4,
        "error_count": 2,
        "error_rate": 0.5,
        "avg_response_time_ms": 15.0,
        "uptime_seconds": 7,
    }
    ps = merge(
        [
            {"models": [{"name": "m", "expires_at": "2026-01-01T00:00:01Z"}]},
            {"models": [{"name": "m", "expires_at": "2026-01-01T00:00:09Z"}, {"name": "n", "expires_at": "x"}]},
        ]
    )
    assert ps == {"models": [{"name": "m", "expires_at": "2026-01-01T00:00:09Z"}, {"name": "n", "expires_at": "x"}]}
    endpoints = merge(
        [
            {"metrics": [{"method": "GET", "endpoint": "/x", "count": 1, "avg_ms": 2.0, "p99_ms": 2.0}]},
            {"metrics": [{"method": "GET", "endpoint": "/x", "count": 3, "avg_ms": 6.0, "p99_ms": 9.0}]},
        ]
    )
    assert endpoints == {"metrics": [{"method": "GET", "endpoint": "/x", "count": 4, "avg_ms": 5.0, "p99_ms": 9.0}]}
    health = merge(
        [
            {"status": "healthy", "circuit_breaker_state": "closed"},
            {"status": "degraded", "circuit_breaker_state": "open"},
        ]
    )
    assert health == {"status": "degraded", "circuit_breaker_state": "open"}


@pytest_twisted.ensureDeferred
async def test_a_socket_passed_by_systemd_is_shared_by_the_workers(tmp_path: Any, simulator: Any) -> None:
    # As systemd passes it: already listening, at fd 3 + index, counted in LISTEN_FDS.
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inherited.bind(("127.0.0.1", 0))
    inherited.listen(16)
    index = 600
    os.dup2(inherited.fileno(), 3 + index)
    inherited.close()
    probe = socket.socket(fileno=os.dup(3 + index))
    port = probe.getsockname()[1]
    probe.close()
    runtime = tmp_path / "run"
    (runtime / "metrics").mkdir(parents=True)
    env = worker_environment(
        {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER", "OLLAMA"))}, str(runtime / "metrics")
    )
    env[RUNTIME_ENV] = str(runtime)
    env["PYTHONPATH"] = REPO
    argv = ["-n", "--pidfile=", "ollama-proxy", "--worker", "{worker}/2", "--config", _config(tmp_path, simulator)]
    events = Events()
    os.environ["LISTEN_FDS"] = str(index + 1)
    try:
        supervisor = Supervisor(
            2,
            [f"systemd:domain=INET:index={index}"],
            twistd_spawner(global_reactor, argv, env),
            global_reactor,
            on_event=events,
        )
        supervisor.startService()
    finally:
        del os.environ["LISTEN_FDS"]
    try:
        await events.wait("ready", 2)
        answers = await _keep_alive_requests(port, 4)
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        assert supervisor.handed_over == [2, 2]
    finally:
        await supervisor.stopService()


def test_workers_get_the_main_process_options_less_listeners_and_a_log_file_each() -> None:
    from ollama_proxy.ops.workermode import worker_argv

    class Options(dict):  # type: ignore[type-arg]
        parent: dict[str, Any] = {"logfile": "/var/log/ollama-proxy.log", "nodaemon": False}

    options = Options(config="proxy.toml", listen=["tcp:11434"], demo=True, workers="2", **{"log-format": "json"})
    argv = worker_argv(options, 2)
    assert argv[:3] == ["-n", "--pidfile=", "--logfile=/var/log/ollama-proxy.log.worker-{worker}"]
    assert argv[3:] == [
        "ollama-proxy",
        "--worker",
        "{worker}/2",
        "--config",
        os.path.abspath("proxy.toml"),
        "--log-format",
        "json",
        "--demo",
    ]
