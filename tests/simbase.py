"""What the Anthropic and Ollama simulators share: a loopback server that records
requests, counts connections, injects failures and can be told to stall."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from .simulator import RecordedRequest, _CountingSite, abort_all


@dataclass
class Injected:
    status: int
    count: int
    retry_after: str | None = None


class SimulatorBase(Resource):
    """A leaf resource mounted at the root of its own Site on a free port."""

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.open_protocols: set[Any] = set()
        self.port: Any = None
        self.behaviour: str | None = None
        self.streams_aborted = 0
        self._injected: list[Injected] = []
        self._request_waiters: list[Deferred[RecordedRequest]] = []
        self._abort_waiters: list[Deferred[None]] = []
        self.calls: list[Any] = []

    # -- control ------------------------------------------------------------------
    def start(self) -> str:
        self.site = _CountingSite(self, self)  # type: ignore[arg-type]
        self.port = self.reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def stop(self) -> Any:
        for call in self.calls:
            if call.active():
                call.cancel()
        return self.port.stopListening() if self.port is not None else None

    def close_connections(self) -> None:
        abort_all(self.open_protocols)

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``count`` POST requests with ``status``."""
        self._injected.append(Injected(status, count, retry_after))

    def wait_for_request(self) -> Deferred[RecordedRequest]:
        d: Deferred[RecordedRequest] = Deferred()
        self._request_waiters.append(d)
        return d

    def wait_for_abort(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._abort_waiters.append(d)
        return d

    def posts(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    # -- helpers for subclasses -----------------------------------------------------
    def record(self, request: Request) -> RecordedRequest:
        raw = request.content.read() if request.content else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        recorded = RecordedRequest(request.method.decode(), request.path.decode(), headers, body)
        self.requests.append(recorded)
        if request.method == b"POST":
            waiters, self._request_waiters = self._request_waiters, []
            for waiter in waiters:
                waiter.callback(recorded)
        return recorded

    def take_injected(self) -> Injected | None:
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
        self.calls = [c for c in self.calls if c.active()]
        self.calls.append(self.reactor.callLater(delay, fn, *args))

    def aborted(self) -> None:
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
