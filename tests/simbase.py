"""What every simulator shares: a loopback server that records requests, counts
connections, injects failures and tells a waiting test what happened.

:class:`SimulatorBase` is the one base of the OpenAI/OpenRouter
(:mod:`tests.simulator`), Anthropic (:mod:`tests.anthropic_simulator`) and Ollama
(:mod:`tests.ollama_simulator`) simulators. A subclass implements ``render``,
starting with ``recorded = self.record(request)`` and answering an injected
failure (:meth:`SimulatorBase.take_injected`) in its own error shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


@dataclass
class RecordedRequest:
    """One request as the simulator received it (headers lower-cased, body parsed if JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Injected:
    """A failure :meth:`SimulatorBase.fail_next` queued: ``status`` for the next ``count`` requests."""

    status: int
    count: int
    retry_after: str | None = None


def abort_all(protocols: set[Any]) -> None:
    """Abort every connection of a :class:`CountingSite` (test teardown)."""
    for protocol in list(protocols):
        # Site hands out a wrapper around the HTTPChannel: the transport is the channel's.
        channel = getattr(protocol, "_channel", protocol)
        transport = getattr(channel, "transport", None)
        if transport is not None:
            transport.abortConnection()


class CountingSite(Site):
    """A Site that counts the connections it opened and closed on its simulator."""

    def __init__(self, resource: Resource, simulator: SimulatorBase, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.simulator = simulator

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        simulator = self.simulator
        simulator.connections_opened += 1
        simulator.open_protocols.add(protocol)
        original = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            simulator.connections_closed += 1
            simulator.open_protocols.discard(protocol)
            original(reason)

        protocol.connectionLost = connectionLost
        return protocol


class SimulatorBase(Resource):
    """A leaf resource served by its own Site on a free loopback port."""

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.open_protocols: set[Any] = set()
        self.port: Any = None
        self.prefix = ""
        self.base_url = ""
        # Every stream behaves like this named behaviour (stall, silent, midstream-error, ...).
        self.behaviour: str | None = None
        self.streams_aborted = 0
        self.calls: list[Any] = []
        self._injected: list[Injected] = []
        self._request_waiters: list[Deferred[RecordedRequest]] = []
        self._count_waiters: list[tuple[int, Deferred[None]]] = []
        self._abort_waiters: list[Deferred[None]] = []

    # -- control ------------------------------------------------------------------
    def start(self, prefix: str = "") -> str:
        """Listen on a free loopback port with this resource mounted at ``prefix``
        (the root when empty); returns the base URL, ``http://127.0.0.1:PORT<prefix>``."""
        self.prefix = prefix
        root: Resource = self
        if prefix:
            root = Resource()
            parent = root
            parts = [p.encode() for p in prefix.strip("/").split("/")]
            for part in parts[:-1]:
                child = Resource()
                parent.putChild(part, child)
                parent = child
            parent.putChild(parts[-1], self)
        self.site = CountingSite(root, self)
        self.port = self.reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}{prefix}"

    def stop(self) -> Deferred[Any]:
        """Cancel pending timed writes and stop listening (idempotent)."""
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls = []
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)

    def close_connections(self) -> None:
        """Drop every open connection (test teardown)."""
        abort_all(self.open_protocols)

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``count`` API requests with ``status``."""
        self._injected.append(Injected(status, count, retry_after))

    def wait_for_request(self) -> Deferred[RecordedRequest]:
        """Fires with the next POST request this simulator receives."""
        d: Deferred[RecordedRequest] = Deferred()
        self._request_waiters.append(d)
        return d

    def wait_for_requests(self, count: int) -> Deferred[None]:
        """Fires once ``count`` requests have arrived in all."""
        d: Deferred[None] = Deferred()
        if len(self.requests) >= count:
            d.callback(None)
        else:
            self._count_waiters.append((count, d))
        return d

    def wait_for_abort(self) -> Deferred[None]:
        """Fires when a stream is cut off by the proxy before it ended."""
        d: Deferred[None] = Deferred()
        self._abort_waiters.append(d)
        return d

    def posts(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    # -- helpers for subclasses -----------------------------------------------------
    def record(self, request: Request) -> RecordedRequest:
        """Keep ``request`` in :attr:`requests` and wake the tests waiting for it."""
        raw = request.content.read() if request.content else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        recorded = RecordedRequest(request.method.decode(), request.path.decode(), headers, body)
        self.requests.append(recorded)
        for entry in [w for w in self._count_waiters if len(self.requests) >= w[0]]:
            self._count_waiters.remove(entry)
            entry[1].callback(None)
        if request.method == b"POST":
            waiters, self._request_waiters = self._request_waiters, []
            for waiter in waiters:
                waiter.callback(recorded)
        return recorded

    def take_injected(self) -> Injected | None:
        """The failure to answer this request with, if one was injected."""
        if not self._injected:
            return None
        injected = self._injected[0]
        injected.count -= 1
        if injected.count <= 0:
            self._injected.pop(0)
        return injected

    def json(self, request: Request, obj: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()

    def later(self, delay: float, fn: Any, *args: Any) -> None:
        """Call ``fn`` after ``delay`` seconds, cancelled by :meth:`stop`."""
        self.calls = [c for c in self.calls if c.active()]
        self.calls.append(self.reactor.callLater(delay, fn, *args))

    def aborted(self) -> None:
        """A stream was cut off before its end: count it, wake the waiters."""
        self.streams_aborted += 1
        waiters, self._abort_waiters = self._abort_waiters, []
        for d in waiters:
            d.callback(None)


def last_user_text(messages: list[Any]) -> str:
    """The last user message's text, whatever its shape (string, parts, blocks)."""
    text = ""
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if isinstance(content, str) and content:
            text = content
    return text
