"""The one harness for running the real daemon in a child process: ``twistd ... ollama-proxy``.

:class:`Daemon` spawns twistd on the test's reactor, keeps its output, fires when a
pattern appears in it and when the process exits (:func:`start` for the usual
``twistd -n --pidfile= ARGS``). :class:`NotifySocket` is a fake systemd: a unix
datagram socket the daemon's ``$NOTIFY_SOCKET`` points at; the test waits on what
it hears (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``...) instead of sleeping.
Every wait gives up after :data:`WAIT` seconds with the output so far, so a hung
daemon fails its test instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds before a wait gives up: a hung daemon fails the test, never blocks it


def twistd_command() -> list[str]:
    """twistd from the running interpreter's environment."""
    beside = Path(sys.executable).parent / "twistd"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def within(d: Deferred[Any], what: str | Callable[[], str], timeout: float = WAIT) -> Deferred[Any]:
    """``d``, failed with an AssertionError naming ``what`` if it has not fired after ``timeout`` s."""

    def expire() -> None:
        if not d.called:
            described = what() if callable(what) else what
            d.errback(AssertionError(f"timed out after {timeout:g} s waiting for {described}"))

    call = reactor.callLater(timeout, expire)
    d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
    return d


class NotifySocket(DatagramProtocol):
    """A fake ``$NOTIFY_SOCKET``: collects the daemon's sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._waiters: list[tuple[Callable[[dict[str, str]], bool], Deferred[dict[str, str]]]] = []
        self.port = reactor.listenUNIXDatagram(str(path), self)
        os.chmod(path, 0o777)  # a daemon that dropped privileges still reaches it

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(message)
        for entry in list(self._waiters):
            match, d = entry
            if match(message):
                self._waiters.remove(entry)
                d.callback(message)

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0) -> Deferred[dict[str, str]]:
        """The first message (from index ``after`` on) that has ``key`` (= ``value``)."""

        def match(message: dict[str, str]) -> bool:
            return key in message and (value is None or message[key] == value)

        for message in self.messages[after:]:
            if match(message):
                d: Deferred[dict[str, str]] = Deferred()
                d.callback(message)
                return d
        d = Deferred()
        self._waiters.append((match, d))
        return within(d, f"{key}={value or '*'} on the notify socket")

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def close(self) -> Any:
        return self.port.stopListening()


class Daemon(ProcessProtocol):
    """One twistd process: its output, its pid and its exit."""

    def __init__(self) -> None:
        self.output = b""
        self.finished = False
        self._end_waiters: list[Deferred[int | None]] = []
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self._pattern_waiters: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    @classmethod
    def spawn(cls, args: list[str], env: dict[str, str], cwd: Path, command: list[str] | None = None) -> Daemon:
        """Run ``twistd ARGS`` (or ``command ARGS``) in ``cwd`` with the checkout on the Python path."""
        daemon = cls()
        argv = (command or twistd_command()) + args
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        daemon.process = reactor.spawnProcess(daemon, argv[0], argv, env=full_env, path=str(cwd))
        daemon.pid = daemon.process.pid
        return daemon

    def outReceived(self, data: bytes) -> None:
        self._more(data)

    def errReceived(self, data: bytes) -> None:
        self._more(data)

    def _more(self, data: bytes) -> None:
        self.output += data
        for entry in list(self._pattern_waiters):
            pattern, d = entry
            match = pattern.search(self.output)
            if match:
                self._pattern_waiters.remove(entry)
                d.callback(match)

    def wait_for(self, pattern: bytes) -> Deferred[re.Match[bytes]]:
        """Fires with the match once the regular expression ``pattern`` appears in the
        output; fails at once if the process ended without it."""
        d: Deferred[re.Match[bytes]] = Deferred()
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        if match:
            d.callback(match)
            return d
        if self.finished:
            d.errback(AssertionError(f"{pattern!r} is not in the output of the ended daemon:\n{self.text()}"))
            return d
        self._pattern_waiters.append((compiled, d))
        return within(d, lambda: f"{pattern!r} in the daemon's output:\n{self.text()}")

    def wait_for_output(self, needle: str) -> Deferred[re.Match[bytes]]:
        """Fires once the text ``needle`` appears in the output."""
        return self.wait_for(re.escape(needle.encode()))

    async def port(self) -> int:
        """The first port of the ``ready: listening on HOST:PORT`` line."""
        match = await self.wait_for(rb"ready: listening on [\d.]+:(\d+)")
        return int(match.group(1))

    def processEnded(self, reason: Any) -> None:
        if reason.check(ProcessDone):
            self.exit_code = 0
        elif reason.check(ProcessTerminated):
            self.exit_code = reason.value.exitCode
            self.exit_signal = reason.value.signal
        self.finished = True
        waiting, self._pattern_waiters = self._pattern_waiters, []
        for pattern, d in waiting:
            d.errback(AssertionError(f"the daemon ended ({self.exit_code}) before {pattern.pattern!r}:\n{self.text()}"))
        waiters, self._end_waiters = self._end_waiters, []
        for end in waiters:
            end.callback(self.exit_code)

    def when_ended(self) -> Deferred[int | None]:
        """A new Deferred firing with the exit code (None when killed by a signal)."""
        d: Deferred[int | None] = Deferred()
        if self.finished:
            d.callback(self.exit_code)
        else:
            self._end_waiters.append(d)
        return d

    def wait_ended(self) -> Deferred[int | None]:
        """:meth:`when_ended`, failing the test if the daemon does not exit in time."""
        return within(self.when_ended(), "the daemon to exit")

    @property
    def running(self) -> bool:
        return not self.finished

    def signal(self, signum: int | str) -> None:
        """Send ``signum`` (``signal.SIGTERM`` or ``"TERM"``)."""
        self.process.signalProcess(signum)

    def kill(self) -> None:
        """SIGKILL, unless it already ended (test teardown)."""
        if self.running:
            with contextlib.suppress(ProcessExitedAlready):  # it ended meanwhile
                self.process.signalProcess(signal.SIGKILL)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def start(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Daemon:
    """``twistd -n --pidfile= ARGS`` in the foreground, from ``cwd`` (the checkout)."""
    return Daemon.spawn(["-n", "--pidfile=", *args], env or {}, cwd)


def port_from_status(message: dict[str, str]) -> int:
    """The port in ``STATUS=listening on 127.0.0.1:PORT``."""
    status = message.get("STATUS", "")
    return int(status.rsplit(":", 1)[1].split(",")[0])


def first_of(*ds: Deferred[Any]) -> Deferred[Any]:
    """Fires with the first of ``ds`` to fire (result or failure)."""
    out: Deferred[Any] = Deferred()

    def fire(result: Any) -> Any:
        if not out.called:
            out.callback(result) if not hasattr(result, "raiseException") else out.errback(result)
        return None

    for d in ds:
        d.addBoth(fire)
    return out


class StreamClient:
    """A streamed HTTP answer read line by line as it arrives (treq, unbuffered)."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.headers: Any = None
        self.buffer = b""
        self.lines: list[bytes] = []
        self.done: Deferred[None] = Deferred()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    @classmethod
    async def open(
        cls, url: str, body: Any, *, pool: Any = None, headers: dict[str, str] | None = None
    ) -> StreamClient:
        import json

        import treq
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        client_pool = pool or HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=client_pool))
        stream = cls()
        response = await http.request(
            "POST",
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            unbuffered=True,
        )
        stream.code = response.code
        stream.headers = response.headers
        treq.collect(response, stream._data).addBoth(stream._end)
        return stream

    def _data(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(line)
        for entry in list(self._waiters):
            if len(self.lines) >= entry[0]:
                self._waiters.remove(entry)
                entry[1].callback(None)

    def _end(self, result: Any) -> None:
        if not self.done.called:
            self.done.callback(None)

    def wait_lines(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.lines) >= count:
            d.callback(None)
            return d
        self._waiters.append((count, d))
        return within(d, f"{count} lines of the stream")

    def wait_done(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.done.addBoth(lambda r: d.callback(None) if not d.called else None)
        return within(d, "the end of the stream")

    def objects(self) -> list[Any]:
        import json

        return [json.loads(line) for line in self.lines]
