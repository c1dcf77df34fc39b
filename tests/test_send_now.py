"""A complete message goes to the kernel when it is written, not at the reactor's next poll.

Each test reads the peer's socket in the same reactor turn as the write, without
waiting: the bytes are there only if they were sent at once (a control write without
it shows they would not be)."""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.test.proto_helpers import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from ollama_proxy.front.request import LimitedRequest
from ollama_proxy.ops.sendnow import EAGER_WHILE_ANSWERING, answering, send_now

from .conftest import LineReader
from .test_http1 import OK, fetch, servers  # noqa: F401 - the fixture

PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def waiting(sock: socket.socket) -> bytes | None:
    """What ``sock`` has received so far, without taking it; None when nothing."""
    try:
        return sock.recv(65536, PEEK)
    except BlockingIOError:
        return None


def arrived(sock: socket.socket) -> bytes | None:
    """What ``sock`` receives within a second, without taking it. The reactor cannot run
    meanwhile, so bytes that arrive were sent before it returned to its poll (loopback
    delivery may be finished by the kernel's softirq thread just after ``send``)."""
    select.select([sock], [], [], 1.0)
    return waiting(sock)


class Accepted(Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_what_send_now_is_given_is_in_the_peers_socket_at_once():
    factory: Any = Factory.forProtocol(Accepted)
    factory.made = Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        server = await factory.made
        assert answering.count <= EAGER_WHILE_ANSWERING  # no request being answered
        server.transport.write(b"held")  # Twisted's way: sent at the next poll
        assert waiting(client) is None
        send_now(server.transport)
        assert arrived(client) == b"held"
        send_now(StringTransport())  # not a socket: left alone
        # A busy proxy leaves it to the poll, where one pass sends many.
        server.transport.write(b"later")
        idle, answering.count = answering.count, EAGER_WHILE_ANSWERING + 1
        try:
            send_now(server.transport)
            assert waiting(client) == b"held"
        finally:
            answering.count = idle
    finally:
        client.close()
        server.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_lean_client_sends_a_request_as_it_writes_it(servers):  # noqa: F811 - the fixture
    server, pool = servers(OK, OK)
    await fetch(pool)  # a pooled connection to reuse
    upstream = server.connections[0].transport.getHandle()
    assert waiting(upstream) is None
    answered = ensureDeferred(fetch(pool))
    assert (arrived(upstream) or b"").startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    response, body, _ = await answered
    assert response.code == 200 and b"".join(body.reads) == b"hello"


class WholeAnswer(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.client: socket.socket | None = None
        self.seen: Deferred[tuple[bytes | None, bytes | None]] = Deferred()

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-length", b"5")
        request.write(b"whole")
        before = waiting(self.client)  # type: ignore[arg-type]
        request.finish()
        self.seen.callback((before, arrived(self.client)))  # type: ignore[arg-type]
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_whole_answer_is_sent_when_the_request_finishes():
    resource = WholeAnswer()
    site = Site(resource)
    site.requestFactory = LimitedRequest
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    resource.client = client
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        before, after = await resource.seen
        assert before is None  # written, still in Twisted's buffer
        assert after is not None and after.startswith(b"HTTP/1.1 200 OK\r\n") and after.endswith(b"\r\n\r\nwhole")
    finally:
        client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_front_door_counts_the_requests_being_answered(proxy, simulator):
    before = answering.count
    reader = LineReader()
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    await reader.connect(proxy.port, "/api/chat", body)
    await simulator.wait_for_hold()
    assert answering.count == before + 1
    aborted = simulator.wait_for_abort()
    reader.hang_up()  # a client leaving counts as finished too
    await aborted
    assert answering.count == before
