"""Running the real daemon in a child process (twistd), watched without sleeping."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Daemon(ProcessProtocol):
    """A child process whose output is searched as it arrives."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: Deferred[int] = Deferred()
        self._patterns: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, waiter in list(self._patterns):
            match = pattern.search(self.output)
            if match:
                self._patterns.remove((pattern, waiter))
                waiter.callback(match)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        # Twisted re-raises a terminating signal after a clean shutdown: report it as -SIGNAL.
        signal_number = getattr(reason.value, "signal", None)
        code = reason.value.exitCode if reason.value.exitCode is not None else -(signal_number or 0)
        for _, waiter in self._patterns:
            waiter.errback(
                AssertionError(
                    f"process ended ({code}) before the pattern appeared:\n{self.output.decode(errors='replace')}"
                )
            )
        self._patterns = []
        self.exited.callback(code)

    def wait_for(self, pattern: bytes, deadline: float = 30.0) -> Deferred[re.Match[bytes]]:
        """Fires when ``pattern`` appears in the output; fails after ``deadline`` seconds
        (a guard that fails the test cleanly, well before pytest-timeout)."""
        d: Deferred[re.Match[bytes]] = Deferred()
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        if match:
            d.callback(match)
        elif self.exited.called:
            d.errback(AssertionError(self.output.decode(errors="replace")))
        else:
            self._patterns.append((compiled, d))
            guard = reactor.callLater(deadline, self._give_up, compiled, d)
            d.addBoth(lambda result: (guard.cancel() if guard.active() else None, result)[1])
        return d

    def _give_up(self, pattern: re.Pattern[bytes], waiter: Deferred[Any]) -> None:
        if (pattern, waiter) in self._patterns:
            self._patterns.remove((pattern, waiter))
            waiter.errback(
                AssertionError(f"{pattern.pattern!r} did not appear:\n{self.output.decode(errors='replace')}")
            )

    async def port(self) -> int:
        match = await self.wait_for(rb"ready: listening on [\d.]+:(\d+)")
        return int(match.group(1))

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)

    def kill(self) -> None:
        from twisted.internet.error import ProcessExitedAlready

        if not self.exited.called:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass


def start(args: list[str], env: dict[str, str] | None = None, cwd: str = ROOT) -> Daemon:
    """Start ``twistd -n --pidfile= ARGS`` with the checkout on the Python path."""
    daemon = Daemon()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": ROOT,
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    environment.update(env or {})
    reactor.spawnProcess(daemon, TWISTD, [TWISTD, "-n", "--pidfile=", *args], env=environment, path=cwd)
    return daemon


__all__ = ["Daemon", "start", "signal"]
