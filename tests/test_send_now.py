"""A complete message goes to the kernel when it is written, not at the reactor's next poll.

Each test reads the peer's socket in the same reactor turn as the write, without
waiting: the bytes are there only if they were sent at once (a control write through
Twisted's ``transport.write`` shows they would not be)."""

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
from ollama_proxy.front.site import ProxySite
from ollama_proxy.ops.sendnow import EAGER_WHILE_ANSWERING, answering, write_now

from .conftest import LineReader
from .test_http1 import OK, fetch, servers  # noqa: F401 - the fixture

PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def waiting(sock: socket.socket) -> bytes | None:
    """What ``sock`` has received so far, without taking it; None when nothing."""
    try:
        return sock.recv(1 << 20, PEEK)
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


class Connected:
    """A connection accepted by the reactor (``server``, its transport a real socket's)
    and the blocking socket at the other end (``client``)."""

    def __init__(self, server: Any, client: socket.socket, port: Any) -> None:
        self.server, self.client, self.port = server, client, port

    async def close(self) -> None:
        self.client.close()
        self.server.transport.abortConnection()
        await self.port.stopListening()


async def connected() -> Connected:
    factory: Any = Factory.forProtocol(Accepted)
    factory.made = Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    return Connected(await factory.made, client, port)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket (within 10 s each read)."""
    sock.settimeout(10)
    parts, have = [], 0
    try:
        while have < size:
            part = sock.recv(size - have)
            assert part, f"closed after {have} of {size} bytes"
            parts.append(part)
            have += len(part)
    finally:
        sock.settimeout(None)  # blocking again, so that a peek with MSG_DONTWAIT does not wait
    return b"".join(parts)


@pytest_twisted.ensureDeferred
async def test_what_write_now_is_given_is_in_the_peers_socket_at_once():
    c = await connected()
    try:
        assert answering.count <= EAGER_WHILE_ANSWERING  # no request being answered
        c.server.transport.write(b"held")  # Twisted's way: sent at the next poll
        assert waiting(c.client) is None
        write_now(c.server.transport, b"-after")  # queued behind it: the order is kept
        assert waiting(c.client) is None
        assert await _read_off_thread(c.client, 10) == b"held-after"  # sent at the poll, in order
        write_now(c.server.transport, b"now")  # nothing queued: straight to the socket
        assert arrived(c.client) == b"now"
        assert not c.server.transport.dataBuffer and not c.server.transport._tempDataBuffer
        # A busy proxy leaves it to the poll, where one pass sends many.
        assert read_exactly(c.client, 3) == b"now"
        idle, answering.count = answering.count, EAGER_WHILE_ANSWERING + 1
        try:
            write_now(c.server.transport, b"later")
            assert waiting(c.client) is None
        finally:
            answering.count = idle
        assert await _read_off_thread(c.client, 5) == b"later"
    finally:
        await c.close()


def test_a_transport_that_is_not_a_socket_is_written_as_usual():
    transport = StringTransport()
    write_now(transport, b"kept")
    assert transport.value() == b"kept"


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_follows_in_order():
    c = await connected()
    try:
        data = bytes(range(256)) * 131072  # 32 MiB: more than loopback's socket buffers hold
        write_now(c.server.transport, data)
        assert c.server.transport.dataBuffer or c.server.transport._tempDataBuffer  # the rest queued
        got = await _read_off_thread(c.client, len(data))
        assert got == data
    finally:
        await c.close()


async def _read_off_thread(sock: socket.socket, size: int) -> bytes:
    from twisted.internet.threads import deferToThread

    return await deferToThread(read_exactly, sock, size)


@pytest_twisted.ensureDeferred
async def test_a_peer_gone_is_left_to_the_transport_which_closes_the_connection():
    c = await connected()
    lost: Deferred[None] = Deferred()
    c.server.connectionLost = lambda reason: lost.callback(None)
    c.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.client.close()  # a reset, with linger 0
    select.select([c.server.transport.getHandle()], [], [], 1.0)  # the reset has come
    try:
        write_now(c.server.transport, b"to nobody")  # raises nothing
        write_now(c.server.transport, b"again")
        await lost
    finally:
        await c.port.stopListening()


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
    """Answers GET with a body of known length, and notes what the client's socket held right
    after the write (``busy``: with the proxy counted busy, so Twisted's own writes are used)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.client: socket.socket | None = None
        self.seen: Deferred[bytes | None] = Deferred()  # what the socket held after the write
        self.busy = False

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"5")
        idle = answering.count
        if self.busy:
            answering.count = EAGER_WHILE_ANSWERING + 1
        try:
            request.write(b"whole")
            written = arrived(self.client) if not self.busy else waiting(self.client)  # type: ignore[arg-type]
            request.finish()
        finally:
            answering.count = idle
        self.seen.callback(written)
        return NOT_DONE_YET


async def _answer(resource: WholeAnswer, method: bytes = b"GET") -> tuple[bytes | None, bytes]:
    site = ProxySite(resource)
    site.requestFactory = LimitedRequest  # as the daemon's site has it (service.py)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    resource.client = client
    resource.seen = Deferred()
    try:
        client.sendall(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        written = await resource.seen
        whole = await _read_answer(client)
        return written, whole
    finally:
        client.close()
        await port.stopListening()


async def _read_answer(sock: socket.socket) -> bytes:
    """An answer's head and its Content-Length's worth of body, read off the reactor's thread."""
    from twisted.internet.threads import deferToThread

    def read() -> bytes:
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")).split(b":")[1])
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body

    return await deferToThread(read)


def _without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.lower().startswith(b"date:"))


@pytest_twisted.ensureDeferred
async def test_a_whole_answer_goes_out_in_one_piece_when_written_byte_for_byte_as_twisteds():
    resource = WholeAnswer()
    written, eager = await _answer(resource)
    assert written == eager  # all of it was in the client's socket right after the write
    assert eager.startswith(b"HTTP/1.1 200 OK\r\n") and eager.endswith(b"\r\n\r\nwhole")
    resource.busy = True  # Twisted's own writes, at the next poll
    written, plain = await _answer(resource)
    assert written is None
    assert _without_date(eager) == _without_date(plain)


@pytest_twisted.ensureDeferred
async def test_a_whole_answer_through_twisteds_own_channel_is_written_as_usual():
    resource = WholeAnswer()
    site = Site(resource)
    site.requestFactory = LimitedRequest
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    resource.client = client
    resource.busy = True  # only peeks: what the write left
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        written = await resource.seen
        assert written is None  # someone else's channel: Twisted's buffer, the next poll
        answer = await _read_answer(client)
        assert answer.endswith(b"\r\n\r\nwhole")
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
