"""The real daemon, as systemd runs it: ``twistd ... ollama-proxy`` in a child process.

A fake ``$NOTIFY_SOCKET`` tells the test when the daemon is ready, reloading or
stopping; the upstream simulator runs in the test's reactor. Nothing sleeps:
every wait is on a notification, a line of output, a stream line or the exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error, reactor, threads
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from .conftest import http
from .daemon import ROOT, Daemon, NotifySocket, StreamClient, first_of, port_from_status, twistd_command
from .simulator import API_KEY

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def workdir() -> Any:
    # Short and world-readable: a unix socket path has ~100 bytes, and a daemon
    # that dropped privileges must still reach it.
    path = Path(tempfile.mkdtemp(prefix="opd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify(workdir: Path) -> Any:
    sock = NotifySocket(workdir / "notify")
    yield sock
    pytest_twisted.blockon(sock.close())


@pytest.fixture
def daemons() -> Any:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.running:
            daemon.kill()
            pytest_twisted.blockon(daemon.wait_ended())


async def start(
    daemons: list[Daemon],
    simulator: Any,
    notify: NotifySocket,
    workdir: Path,
    *,
    config: str = "",
    args: tuple[str, ...] = (),
    twistd_args: tuple[str, ...] = ("-n", "--pidfile="),
    env: dict[str, str] | None = None,
    listen: str = "tcp:0:interface=127.0.0.1",
    command: list[str] | None = None,
) -> tuple[Daemon, int, dict[str, str]]:
    config_file = workdir / "proxy.toml"
    config_file.write_text(config)
    environment = {
        "OPENROUTER_API_KEY": API_KEY,
        "OPENROUTER_BASE_URL": simulator.base_url,
        "NOTIFY_SOCKET": str(notify.path),
        **(env or {}),
    }
    argv = [*twistd_args, "ollama-proxy", "--listen", listen, "-c", str(config_file), *args]
    daemon = Daemon.spawn(argv, environment, workdir, command=command)
    daemons.append(daemon)
    daemonizes = "-n" not in twistd_args  # then the process we started exits once the daemon forked
    ready = await (
        notify.wait_for("READY", "1") if daemonizes else first_of(notify.wait_for("READY", "1"), _died(daemon))
    )
    return daemon, port_from_status(ready), ready


def _died(daemon: Daemon) -> Any:
    """Fails as soon as ``daemon`` exits (so a crashed start fails fast, with its output)."""
    d: Deferred[Any] = Deferred()

    def ended(code: Any) -> None:
        if not d.called:
            d.errback(AssertionError(f"the daemon exited ({code}) before it was ready:\n{daemon.text()}"))

    daemon.when_ended().addBoth(ended)
    return d


def chat_body(model: str, text: str = "one two three", stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


# -- readiness, watchdog, access log, SIGTERM ------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_ready_watchdog_request_id_and_clean_exit(simulator, notify, workdir, daemons):
    daemon, port, ready = await start(daemons, simulator, notify, workdir, env={"WATCHDOG_USEC": "200000"})
    assert ready["MAINPID"] == str(daemon.pid)
    assert ready["STATUS"] == f"listening on 127.0.0.1:{port}"

    # WatchdogSec=0.2s: pings come every 0.1 s, and keep coming.
    first = await notify.wait_for("WATCHDOG", "1")
    await notify.wait_for("WATCHDOG", "1", after=notify.messages.index(first) + 1)

    r = await http("GET", f"http://127.0.0.1:{port}/api/version", headers={"X-Request-Id": "req-abc.123"})
    assert r.code == 200 and r.header("x-request-id") == "req-abc.123"
    await daemon.wait_for_output("id=req-abc.123")
    line = next(text for text in daemon.text().splitlines() if "id=req-abc.123" in text)
    assert "GET /api/version 200" in line and "client=127.0.0.1" in line

    daemon.signal(signal.SIGTERM)
    await notify.wait_for("STOPPING", "1")
    assert await daemon.wait_ended() == 0
    assert daemon.exit_signal is None
    assert API_KEY not in daemon.text()


# -- SIGHUP ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_sighup_reloads_without_dropping_a_stream_and_refuses_a_broken_file(simulator, notify, workdir, daemons):
    daemon, port, _ = await start(daemons, simulator, notify, workdir, config='[filter]\ndeny = ["google/*"]\n')
    url = f"http://127.0.0.1:{port}"
    names = [m["name"] for m in (await http("GET", url + "/api/tags")).json()["models"]]
    assert "google/gemini-pro:latest" not in names and "openai/gpt-4o-mini:latest" in names

    stream = await StreamClient.open(url + "/api/chat", chat_body("sim/hold", "kept alive across reloads"))
    await stream.wait_lines(1)

    # A valid new file: the filter changes, auth comes on, the stream lives on.
    digest = hashlib.sha256(b"test").hexdigest()
    (workdir / "proxy.toml").write_text(f'[filter]\ndeny = ["openai/*"]\n[[auth.tokens]]\nsha256 = "{digest}"\n')
    mark = len(notify.messages)
    daemon.signal(signal.SIGHUP)
    await notify.wait_for("RELOADING", "1", after=mark)
    reloaded = await notify.wait_for("READY", "1", after=mark)
    assert reloaded["STATUS"] == "configuration reloaded"
    assert (await http("GET", url + "/api/tags")).code == 401
    names = [
        m["name"]
        for m in (await http("GET", url + "/api/tags", headers={"Authorization": "Bearer test"})).json()["models"]
    ]
    assert "google/gemini-pro:latest" in names and "openai/gpt-4o-mini:latest" not in names

    # A broken file is refused; the running configuration stays.
    (workdir / "proxy.toml").write_text("[filter]\ndeny = 3\n")
    mark = len(notify.messages)
    daemon.signal(signal.SIGHUP)
    refused = await notify.wait_for("READY", "1", after=mark)
    assert refused["STATUS"].startswith("reload refused")
    await daemon.wait_for_output("configuration reload refused")
    assert (await http("GET", url + "/api/tags")).code == 401

    simulator.release_holds()
    await stream.wait_done()
    objects = stream.objects()
    assert "".join(o["message"]["content"] for o in objects) == "Echo: kept alive across reloads"
    assert objects[-1]["done"] is True
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_ended() == 0


# -- SIGTERM drains ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_stream_finish_and_refuses_new_requests(simulator, notify, workdir, daemons):
    daemon, port, _ = await start(daemons, simulator, notify, workdir)
    url = f"http://127.0.0.1:{port}"
    # One kept-alive connection, opened before the shutdown.
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    try:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        client = HTTPClient(Agent(reactor, pool=pool))
        first = await client.get(url + "/api/version")
        assert first.code == 200
        await first.content()

        stream = await StreamClient.open(url + "/api/chat", chat_body("sim/hold", "finish me please"))
        await stream.wait_lines(1)
        daemon.signal(signal.SIGTERM)
        stopping = await notify.wait_for("STOPPING", "1")
        assert stopping["STATUS"] == "draining 1 requests"

        # The kept-alive connection is answered 503 and closed; nothing new connects.
        refused = await client.get(url + "/api/version")
        body = json.loads(await refused.content())
        assert refused.code == 503 and body == {"error": "the server is shutting down", "type": "service_unavailable"}
        with pytest.raises(error.ConnectionRefusedError):
            await http("GET", url + "/api/version")

        simulator.release_holds()
        await stream.wait_done()
        objects = stream.objects()
        assert "".join(o["message"]["content"] for o in objects) == "Echo: finish me please"
        assert objects[-1]["done"] is True and "error" not in objects[-1]
        assert await daemon.wait_ended() == 0
        assert "all requests finished" in daemon.text()
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_drain_deadline_ends_a_stream_with_an_error_line(simulator, notify, workdir, daemons):
    daemon, port, _ = await start(daemons, simulator, notify, workdir, config="[shutdown]\ndrain_timeout = 0.3\n")
    stream = await StreamClient.open(f"http://127.0.0.1:{port}/api/chat", chat_body("sim/hold"))
    await stream.wait_lines(1)
    aborted = simulator.wait_for_abort()
    daemon.signal(signal.SIGTERM)
    await stream.wait_done()
    last = stream.objects()[-1]
    assert last == {"error": "the server is shutting down: drain deadline of 0.3 s passed"}
    await aborted  # the upstream stream was closed, not left running
    assert await daemon.wait_ended() == 0


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_cuts_the_drain_short(simulator, notify, workdir, daemons):
    daemon, port, _ = await start(daemons, simulator, notify, workdir)  # the default 30 s deadline
    stream = await StreamClient.open(f"http://127.0.0.1:{port}/api/chat", chat_body("sim/hold"))
    await stream.wait_lines(1)
    daemon.signal(signal.SIGTERM)
    await notify.wait_for("STOPPING", "1")
    daemon.signal(signal.SIGTERM)
    await stream.wait_done()
    assert stream.objects()[-1] == {"error": "the server is shutting down now"}
    assert await daemon.wait_ended() == 0


# -- twistd's own options -------------------------------------------------------------------------
def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Block (in a thread) until ``pid`` exits: a pidfd becomes readable then."""
    fd = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


@pytest_twisted.ensureDeferred
async def test_daemonizes_with_pidfile_and_json_logfile(simulator, notify, workdir, daemons):
    pidfile, logfile = workdir / "proxy.pid", workdir / "proxy.log"
    launcher, port, ready = await start(
        daemons,
        simulator,
        notify,
        workdir,
        twistd_args=(f"--pidfile={pidfile}", f"--logfile={logfile}"),
        args=("--log-format", "json"),
    )
    pid = int(ready["MAINPID"])
    assert pid != launcher.pid  # it forked away from the process we started
    assert await launcher.wait_ended() == 0
    assert int(pidfile.read_text()) == pid

    r = await http(
        "POST", f"http://127.0.0.1:{port}/api/chat", chat_body("openai/gpt-4o-mini", "count these words", stream=False)
    )
    assert r.code == 200
    bad = await http("POST", f"http://127.0.0.1:{port}/api/chat", chat_body("sim/fail-401", stream=False))
    assert bad.code == 502 and API_KEY not in bad.body.decode()

    os.kill(pid, signal.SIGTERM)
    assert await threads.deferToThread(_wait_for_exit, pid, 30)
    assert not pidfile.exists()
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    access = [
        entry for entry in lines if entry.get("namespace") == "ollama_proxy.access" and entry.get("path") == "/api/chat"
    ]
    assert access[0]["status"] == 200 and access[0]["model"] == "openai/gpt-4o-mini"
    assert access[0]["provider"] == "openrouter" and access[0]["tokens_in"] == 3 and access[0]["tokens_out"] == 4
    assert access[0]["duration_ms"] > 0 and access[0]["ttft_ms"] is not None and len(access[0]["request_id"]) == 32
    assert access[1]["status"] == 502
    assert API_KEY not in logfile.read_text()
    assert not any("Starting factory _HTTP11ClientFactory" in entry["message"] for entry in lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid/gid needs root")
@pytest_twisted.ensureDeferred
async def test_drops_privileges_after_binding_a_privileged_port(simulator, notify, workdir, daemons):
    nobody = pwd.getpwnam("nobody")
    port = _free_privileged_port()
    args: tuple[str, ...] = ("-n", "--pidfile=", f"--gid={nobody.pw_gid}")
    # The interpreter must stay readable once the uid is gone (a pyenv under /root is not).
    if _world_readable(Path(os.path.realpath(twistd_command()[0]))) and _world_readable(
        Path(os.path.realpath(sys.executable))
    ):
        args += (f"--uid={nobody.pw_uid}",)
    daemon, bound, _ = await start(
        daemons, simulator, notify, workdir, twistd_args=args, listen=f"tcp:{port}:interface=127.0.0.1"
    )
    assert bound == port
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    gids = next(text for text in status.splitlines() if text.startswith("Gid:")).split()[1:]
    assert set(gids) == {str(nobody.pw_gid)}
    if any(a.startswith("--uid") for a in args):
        uids = next(text for text in status.splitlines() if text.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(nobody.pw_uid)}
    assert (await http("GET", f"http://127.0.0.1:{port}/api/version")).code == 200
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_ended() == 0


def _world_readable(path: Path) -> bool:
    return all(part.stat().st_mode & 0o001 for part in [path, *path.parents])


def _free_privileged_port() -> int:
    for port in range(1023, 600, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


# -- socket activation -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_socket_activation_uses_the_inherited_listener(simulator, notify, workdir, daemons):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    (workdir / "proxy.toml").write_text("")
    # What systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_FDNAMES and LISTEN_PID naming the service.
    inner = " ".join(
        f"'{a}'"
        for a in [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "ollama-proxy",
            "--listen",
            "systemd:domain=INET:index=0",
            "-c",
            str(workdir / "proxy.toml"),
        ]
    )
    script = f"export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=ollama-proxy.socket; exec {inner} 3<&0 </dev/null"
    env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": simulator.base_url, "NOTIFY_SOCKET": str(notify.path)}
    daemon = Daemon()
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    daemon.process = reactor.spawnProcess(
        daemon,
        "/bin/sh",
        ["/bin/sh", "-c", script],
        env=full_env,
        path=str(workdir),
        childFDs={0: listener.fileno(), 1: "r", 2: "r"},
    )
    daemon.pid = daemon.process.pid
    daemons.append(daemon)
    listener.close()  # the daemon holds it now
    ready = await first_of(notify.wait_for("READY", "1"), _died(daemon))
    assert ready["STATUS"] == f"listening on 127.0.0.1:{port}"
    assert (await http("GET", f"http://127.0.0.1:{port}/api/version")).json() == {"version": "0.14.3"}
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_ended() == 0


def test_a_broken_config_stops_start_up_with_one_clear_line(tmp_path):
    (tmp_path / "bad.toml").write_text("[limits]\nmax_streams = -1\n")
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "ollama-proxy", "-c", str(tmp_path / "bad.toml")],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "configuration error" in result.stderr and "'limits.max_streams' must be at least 0" in result.stderr
    assert "Traceback" not in result.stderr
