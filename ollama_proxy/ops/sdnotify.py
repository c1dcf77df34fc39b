"""systemd's readiness protocol (sd_notify) in a few lines of stdlib.

systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket (an abstract one when
it starts with ``@``); the service sends newline-separated ``KEY=VALUE`` lines
to it: ``READY=1`` once it serves, ``RELOADING=1`` and ``READY=1`` around a
reload, ``STOPPING=1`` when it shuts down, ``STATUS=...`` for ``systemctl
status``, and ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when
the unit sets ``WatchdogSec=``. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; True if it was sent.

    Never blocks and never raises: a full or vanished socket costs a log line,
    not the daemon.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as error:
        log.warn("sd_notify to {address} failed: {error}", address=address, error=error)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None when not asked.

    ``$WATCHDOG_PID``, when set, names the process meant; another one stays quiet.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    watched = environ.get("WATCHDOG_PID")
    if watched and watched != str(pid):
        return None
    try:
        microseconds = int(usec)
    except ValueError:
        return None
    return microseconds / 2e6 if microseconds > 0 else None


class SystemdNotifier(Service):
    """Tells systemd how the daemon is doing; pings the watchdog while running."""

    def __init__(
        self,
        clock: IReactorTime,
        environ: Mapping[str, str] | None = None,
        send: Callable[[str, Mapping[str, str]], bool] = notify,
        pid: int | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.clock = clock
        # Worker mode: the main process pings the watchdog only while every worker runs.
        self.alive = alive
        self.environ = dict(os.environ if environ is None else environ)
        self._send = send
        self._pid = pid
        self._watchdog: LoopingCall | None = None

    @property
    def pid(self) -> int:
        # Read when needed: twistd forks (daemonizes) after the service is built.
        return os.getpid() if self._pid is None else self._pid

    @property
    def enabled(self) -> bool:
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> bool:
        return self._send("\n".join(lines), self.environ)

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={self.pid}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) tell this reload from an older one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def startService(self) -> None:
        super().startService()
        interval = watchdog_interval(self.environ, self.pid)
        if interval is not None and self.enabled:
            self._watchdog = LoopingCall(self._ping)
            self._watchdog.clock = self.clock
            self._watchdog.start(interval, now=True)

    def _ping(self) -> None:
        if self.alive is None or self.alive():
            self.send("WATCHDOG=1")

    def stopService(self) -> None:
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
