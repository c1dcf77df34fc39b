"""The main process's listening sockets, and handing accepted connections to workers.

In worker mode (``--workers N``) the main process owns every listening socket and
accepts; each accepted connection goes to the next live worker, round robin, as a
file descriptor over a Unix socket (``SCM_RIGHTS``), and the worker adopts it with
``adoptStreamConnection``. Why not one ``SO_REUSEPORT`` socket per worker:

- it spreads keep-alive clients exactly evenly (the kernel's hash spreads them only
  roughly, and a busy worker keeps its share);
- it works the same for the sockets systemd passes (socket activation hands over one
  socket, created by PID 1, to which a service running as another user cannot add
  ``SO_REUSEPORT`` siblings) and for Unix sockets;
- a worker that dies or restarts loses no queued connection: the socket stays with
  the main process, which hands the next connections to the workers still running.

The cost is one ``accept`` and one ``sendmsg`` in the main process per *connection*
(not per request): nothing for keep-alive clients.

Listen descriptions are the ones ``--listen`` takes: ``tcp:PORT[:interface=ADDR]``,
``tcp6:...``, ``unix:PATH`` and ``systemd:domain=INET:index=N`` (or ``name=``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# The one byte sent with each descriptor: the worker adopts it with this family.
FAMILY_TAGS = {socket.AF_INET: b"4", socket.AF_INET6: b"6", socket.AF_UNIX: b"u"}
TAG_FAMILIES = {tag: family for family, tag in FAMILY_TAGS.items()}
_SYSTEMD_FIRST_FD = 3


class ListenError(ValueError):
    """A listen description worker mode cannot open."""


def _split(description: str) -> tuple[str, list[str], dict[str, str]]:
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, rest = parts[0], parts[1:]
    positional = [p for p in rest if "=" not in p]
    named = dict(p.split("=", 1) for p in rest if "=" in p)
    return kind, positional, named


def open_listener(description: str, environ: Mapping[str, str] | None = None) -> socket.socket:
    """A listening, non-blocking socket for ``description``."""
    env = os.environ if environ is None else environ
    kind, positional, named = _split(description)
    backlog = int(named.get("backlog", 1024))
    if kind in ("tcp", "tcp6"):
        port = int(positional[0] if positional else named.get("port", "0"))
        family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
        host = named.get("interface", "::" if kind == "tcp6" else "")
        if ":" in host:
            family = socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    elif kind == "unix":
        path = positional[0] if positional else named["address"]
        if os.path.exists(path) and not os.path.isdir(path):
            os.unlink(path)  # a stale socket from a previous run, as Twisted's unix: does
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        if "mode" in named:
            os.chmod(path, int(named["mode"], 8))
    elif kind == "systemd":
        index = _systemd_index(named, env)
        count = int(env.get("LISTEN_FDS", "0") or 0)
        if index >= count:
            raise ListenError(f"{description}: systemd passed {count} sockets")
        domain = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}[
            named.get("domain", "INET").upper()
        ]
        sock = socket.socket(domain, socket.SOCK_STREAM, fileno=_SYSTEMD_FIRST_FD + index)
        sock.setblocking(False)
        return sock  # already listening
    else:
        raise ListenError(f"{description}: worker mode listens on tcp:, tcp6:, unix: and systemd: only")
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _systemd_index(named: Mapping[str, str], env: Mapping[str, str]) -> int:
    if "index" in named:
        return int(named["index"])
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if named.get("name") in names:
        return names.index(named["name"])
    raise ListenError(f"systemd socket {named.get('name')!r} not among LISTEN_FDNAMES {names}")


def describe(sock: socket.socket) -> str:
    address = sock.getsockname()
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


@implementer(IReadDescriptor)
class Acceptor:
    """Accepts on one listening socket and hands every connection to ``hand_over``."""

    def __init__(self, sock: socket.socket, hand_over: Callable[[socket.socket], None]) -> None:
        self.sock = sock
        self.hand_over = hand_over

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        for _ in range(64):  # a burst at a time, then let the reactor serve the rest
            try:
                connection, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno == errno.ECONNABORTED:
                    continue
                log.error("accept failed on {address}: {error}", address=describe(self.sock), error=error)
                return
            self.hand_over(connection)

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "acceptor"


def send_connection(channel: socket.socket, connection: socket.socket) -> None:
    """Send ``connection``'s descriptor with its family tag; raises ``OSError`` if the
    worker's channel is full or gone."""
    socket.send_fds(channel, [FAMILY_TAGS.get(connection.family, b"4")], [connection.fileno()])
