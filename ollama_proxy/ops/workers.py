"""Worker mode: a main process that supervises N worker processes on one set of ports.

``twistd ollama-proxy --workers N`` (or ``workers = N`` / ``"auto"`` in the file) runs
a :class:`Supervisor` in the main process. It

- opens the listening sockets and hands accepted connections to the workers
  (:mod:`ollama_proxy.ops.listeners` says how and why);
- starts the workers (``twistd ollama-proxy --worker I/N``, each a whole proxy without
  listeners of its own) and restarts one that dies, logging its exit status; a worker
  that dies soon after its start is restarted after a delay that doubles each time
  (0.5 s up to 30 s), reset once it has run for ``STABLE_SECONDS``;
- forwards SIGHUP after checking the file itself: a file the main process refuses is
  refused for all, so every worker reloads or none does;
- on SIGTERM stops accepting, forwards SIGTERM (every worker drains) and exits when the
  last worker has ended; a worker still running ``drain_timeout + 15`` seconds later
  is killed;
- alone talks to systemd: READY once every worker is ready, STOPPING, and WATCHDOG
  pings only while every worker runs.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.front.lifecycle import CUT_GRACE_SECONDS
from ollama_proxy.ops.listeners import Acceptor, describe, open_listener, send_connection

log = Logger()

# A worker's drain can take its deadline, then a grace for the requests it cut and one for
# the connections it then closed (front/lifecycle.py), then writes its last ledger rows and
# lines: killed only past all of that.
STRAGGLER_SECONDS = 2 * CUT_GRACE_SECONDS + 5.0

STABLE_SECONDS = 10.0  # a worker that ran this long was not crash-looping
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
_PENDING_LIMIT = 1024  # connections held while no worker is ready, then refused
# What a worker writes on its channel: one byte a message.
_MESSAGES = {b"R": "ready", b"L": "reloaded", b"F": "reload refused"}
# What the main process keeps from its environment for itself.
_MAIN_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def worker_count(value: int | str | None, cpus: int | None = None) -> int:
    """``auto`` is the number of CPUs; anything below 1 is 1."""
    if value in (None, "", 0):
        return 1
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return max(1, cpus if cpus is not None else (os.cpu_count() or 1))
        value = int(value)
    return max(1, int(value))


class Spawner(Protocol):
    """Starts worker ``index``; its channel end is to be the worker's fd 3."""

    def __call__(self, index: int, channel: socket.socket, ended: Callable[[int, str], None]) -> int: ...


@dataclass
class Worker:
    """What the main process knows of one worker slot."""

    index: int
    pid: int = 0
    channel: socket.socket | None = None
    ready: bool = False
    running: bool = False
    started_at: float = 0.0
    failures: int = 0
    restart: IDelayedCall | None = None
    restarts: int = 0
    exits: list[str] = field(default_factory=list)


class _WorkerProcess(ProcessProtocol):
    def __init__(self, index: int, ended: Callable[[int, str], None]) -> None:
        self.index = index
        self.ended = ended

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        status = f"signal {signal.Signals(sig).name}" if sig else f"exit status {code}"
        self.ended(self.index, status)


def twistd_spawner(reactor: Any, argv: Sequence[str], env: dict[str, str]) -> Spawner:
    """Workers as ``python -c twistd ... ollama-proxy --worker I/N``, sharing stdout/stderr."""

    def spawn(index: int, channel: socket.socket, ended: Callable[[int, str], None]) -> int:
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv]
        args = [a.replace("{worker}", str(index)) for a in args]
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            process = reactor.spawnProcess(
                _WorkerProcess(index, ended),
                sys.executable,
                args,
                env=env,
                childFDs={0: devnull, 1: 1, 2: 2, 3: channel.fileno()},
            )
        finally:
            os.close(devnull)
        return int(process.pid)

    return spawn


class Supervisor(Service):
    """Owns the listeners and the workers. See the module docstring."""

    def __init__(
        self,
        count: int,
        listen: Sequence[str],
        spawn: Spawner,
        reactor: Any,
        clock: IReactorTime | None = None,
        *,
        drain_timeout: float = 30.0,
        on_ready: Callable[[str], Any] = lambda status: None,
        kill: Callable[[int, int], None] = os.kill,
        on_event: Callable[[str, Worker], Any] = lambda event, worker: None,
    ) -> None:
        self.count = count
        self.listen = tuple(listen)
        self.spawn = spawn
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.drain_timeout = drain_timeout
        self.on_ready = on_ready
        self.kill = kill
        # "started", "ready", "reloaded", "reload refused", "ended": for logs and tests.
        self.on_event = on_event
        self.reloads: dict[str, int] = {"reloaded": 0, "reload refused": 0}
        self.workers = [Worker(i) for i in range(count)]
        self.sockets: list[socket.socket] = []
        self.acceptors: list[Acceptor] = []
        self.pending: deque[socket.socket] = deque()
        self.stopping = False
        self.announced = False
        self._next = 0
        self._all_ended: Deferred[None] | None = None
        self._kill_timer: IDelayedCall | None = None
        self.handed_over = [0] * count

    # -- start -----------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges (--uid), so a port below 1024 works.
        if not self.sockets:
            self.sockets = [open_listener(d) for d in self.listen]
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.sockets:
            self.sockets = [open_listener(d) for d in self.listen]
        super().startService()
        self.stopping = False
        for sock in self.sockets:
            acceptor = Acceptor(sock, self.hand_over)
            self.acceptors.append(acceptor)
            self.reactor.addReader(acceptor)
        log.info(
            "main process {pid}: {count} workers on {addresses}",
            pid=os.getpid(),
            count=self.count,
            addresses=", ".join(describe(s) for s in self.sockets),
        )
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: Worker) -> None:
        worker.restart = None
        if self.stopping:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            worker.pid = self.spawn(worker.index, theirs, self._ended)
        except Exception:  # noqa: BLE001 - logged, and retried like a crash
            log.failure("starting worker {index} failed", index=worker.index)
            ours.close()
            theirs.close()
            self._ended(worker.index, "failed to start")
            return
        theirs.close()
        ours.setblocking(False)
        worker.channel = ours
        worker.running = True
        worker.ready = False
        worker.started_at = self.clock.seconds()
        self.reactor.addReader(_ChannelReader(self, worker))
        log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)
        self.on_event("started", worker)

    def _worker_said(self, worker: Worker, data: bytes) -> None:
        for byte in data:
            message = _MESSAGES.get(bytes([byte]))
            if message == "ready":
                self._worker_ready(worker)
            elif message is not None:
                self.reloads[message] += 1
                if message == "reload refused":
                    log.error("worker {index} refused the reload", index=worker.index)
                self.on_event(message, worker)

    def _worker_ready(self, worker: Worker) -> None:
        worker.ready = True
        self.on_event("ready", worker)
        self._flush_pending()
        if not self.announced and all(w.ready for w in self.workers):
            self.announced = True
            addresses = ", ".join(describe(s) for s in self.sockets)
            log.info("ready: {count} workers listening on {addresses}", count=self.count, addresses=addresses)
            self.on_ready(f"{self.count} workers listening on {addresses}")

    @property
    def alive(self) -> bool:
        """Every worker runs and said it is ready (what the watchdog reports)."""
        return not self.stopping and all(w.running and w.ready for w in self.workers)

    # -- connections -----------------------------------------------------------------
    def hand_over(self, connection: socket.socket) -> None:
        """Give ``connection`` to the next ready worker (round robin)."""
        try:
            for _ in range(self.count):
                worker = self.workers[self._next]
                self._next = (self._next + 1) % self.count
                if not (worker.ready and worker.channel is not None):
                    continue
                try:
                    send_connection(worker.channel, connection)
                except OSError:
                    continue  # its channel is full or gone: the next one
                self.handed_over[worker.index] += 1
                return
            if len(self.pending) < _PENDING_LIMIT and not self.stopping:
                self.pending.append(connection.dup())
            else:
                log.warn("no worker ready: a connection was refused")
        finally:
            connection.close()

    def _flush_pending(self) -> None:
        for _ in range(len(self.pending)):  # what cannot be sent now is queued again once
            if not any(w.ready for w in self.workers):
                return
            self.hand_over(self.pending.popleft())

    # -- exits -----------------------------------------------------------------------
    def _ended(self, index: int, status: str) -> None:
        worker = self.workers[index]
        worker.running = False
        worker.ready = False
        worker.exits.append(status)
        if worker.channel is not None:
            self._drop_channel(worker)
        self.on_event("ended", worker)
        if self.stopping:
            log.info("worker {index} (pid {pid}) ended: {status}", index=index, pid=worker.pid, status=status)
            self._check_all_ended()
            return
        ran = self.clock.seconds() - worker.started_at
        worker.failures = 0 if ran >= STABLE_SECONDS else worker.failures + 1
        delay = 0.0 if worker.failures == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (worker.failures - 1))
        log.error(
            "worker {index} (pid {pid}) died: {status}; restarting it in {delay:g}s",
            index=index,
            pid=worker.pid,
            status=status,
            delay=delay,
        )
        worker.restarts += 1
        worker.restart = self.clock.callLater(delay, self._start, worker)

    def _drop_channel(self, worker: Worker) -> None:
        for reader in list(self.reactor.getReaders()):
            if isinstance(reader, _ChannelReader) and reader.worker is worker:
                self.reactor.removeReader(reader)
        assert worker.channel is not None
        worker.channel.close()
        worker.channel = None

    # -- signals ---------------------------------------------------------------------
    def signal_workers(self, signum: int) -> int:
        """Send ``signum`` to every running worker; how many were sent it."""
        sent = 0
        for worker in self.workers:
            if worker.running and worker.pid:
                try:
                    self.kill(worker.pid, signum)
                    sent += 1
                except ProcessLookupError:
                    pass
        return sent

    def stopService(self) -> Deferred[None]:
        """Stop accepting, let every worker drain, and fire when the last has ended."""
        super().stopService()
        self.stopping = True
        for acceptor in self.acceptors:
            self.reactor.removeReader(acceptor)
        self.acceptors = []
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        while self.pending:
            self.pending.popleft().close()
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        self.signal_workers(signal.SIGTERM)
        if not any(w.running for w in self.workers):
            return succeed(None)
        self._all_ended = Deferred()
        self._kill_timer = self.clock.callLater(self.drain_timeout + STRAGGLER_SECONDS, self._kill_stragglers)
        return self._all_ended

    def _kill_stragglers(self) -> None:
        self._kill_timer = None
        for worker in self.workers:
            if worker.running:
                log.error(
                    "worker {index} (pid {pid}) did not finish draining: killed", index=worker.index, pid=worker.pid
                )
        self.signal_workers(signal.SIGKILL)

    def _check_all_ended(self) -> None:
        if any(w.running for w in self.workers) or self._all_ended is None:
            return
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        done, self._all_ended = self._all_ended, None
        log.info("every worker has ended")
        done.callback(None)


class _ChannelReader:
    """Reads a worker's channel: ``R`` once it serves; end of file when it is gone."""

    def __init__(self, supervisor: Supervisor, worker: Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker

    def fileno(self) -> int:
        return self.worker.channel.fileno() if self.worker.channel is not None else -1

    def doRead(self) -> None:
        channel = self.worker.channel
        if channel is None:
            return
        try:
            data = channel.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The worker closed its end (it is ending): no more connections to it.
            self.worker.ready = False
            self.supervisor.reactor.removeReader(self)
            return
        if self.worker.running:
            self.supervisor._worker_said(self.worker, data)

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return f"worker-{self.worker.index}-channel"


def worker_environment(environ: dict[str, str], metrics_dir: str) -> dict[str, str]:
    """The workers' environment: the main process's, less what only it may use."""
    env = {k: v for k, v in environ.items() if k not in _MAIN_ONLY}
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env
