"""Limits: header size, body size, concurrent streams, and a slow reader's backpressure."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from ollama_proxy.config.ops import LimitsConfig, OpsConfig

from .conftest import http
from .daemon import StreamClient


def limits(**values: int) -> OpsConfig:
    return OpsConfig(limits=LimitsConfig(**values))


def chat(model: str, stream: bool = True, text: str = "a b") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


class RawClient(Protocol):
    """Sends bytes, collects the answer; may stop reading to play a slow client."""

    def __init__(self, request: bytes, read: bool = True) -> None:
        self.request = request
        self.read = read
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        if not self.read:
            self.transport.pauseProducing()  # stop reading the socket: a slow reader

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._waiters):
            if len(self.received) >= entry[0]:
                self._waiters.remove(entry)
                entry[1].callback(None)

    def wait_received(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiters.append((count, d))
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def raw(port: int, request: bytes, read: bool = True) -> RawClient:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient(request, read))


@pytest_twisted.ensureDeferred
async def test_oversized_headers_get_431_json(make_proxy):
    proxy = make_proxy(ops=limits(max_header_bytes=4096))
    client = await raw(
        proxy.port, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    )
    await client.closed
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body) == {
        "error": "request headers are larger than the limit of 4096 bytes",
        "type": "headers_too_large",
    }
    # Many small headers add up the same way.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
    client = await raw(proxy.port, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
    await client.closed
    assert client.received.startswith(b"HTTP/1.1 431 ")
    ok = await http("GET", proxy.url + "/api/version", headers={"X-Fine": "a" * 1000})
    assert ok.code == 200


@pytest_twisted.ensureDeferred
async def test_the_header_limit_counts_each_request_of_a_connection_anew(make_proxy):
    proxy = make_proxy(ops=limits(max_header_bytes=4096))
    one = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 2000 + b"\r\n"
    pipelined = one + b"\r\n" + one + b"\r\n" + one + b"Connection: close\r\n\r\n"  # 6000 bytes over three
    client = await raw(proxy.port, pipelined)
    await client.closed
    assert client.received.count(b"HTTP/1.1 200 ") == 3 and b" 431 " not in client.received


@pytest_twisted.ensureDeferred
async def test_oversized_bodies_get_413_json(make_proxy):
    proxy = make_proxy(max_body_bytes=1000)
    r = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", text="x" * 2000))
    assert r.code == 413 and r.json()["type"] == "request_too_large"


@pytest_twisted.ensureDeferred
async def test_streams_per_client_are_limited(make_proxy, simulator):
    proxy = make_proxy(ops=limits(max_streams_per_client=1))
    held = await StreamClient.open(proxy.url + "/api/chat", chat("sim/hold"))
    await held.wait_lines(1)
    second = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro"))
    assert second.code == 429 and second.header("retry-after") == "1"
    assert second.json() == {"error": "too many concurrent streams from this client (limit 1)", "type": "rate_limited"}
    generate = await http("POST", proxy.url + "/api/generate", {"model": "google/gemini-pro", "prompt": "x"})
    assert generate.code == 429  # generate streams by default too
    unstreamed = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))
    assert unstreamed.code == 429  # it would hold an upstream stream too
    simulator.release_holds()
    await held.wait_done()
    again = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro"))
    assert again.code == 200 and again.lines()[-1]["done"] is True
    assert proxy.service.gate.streams.active == 0


@pytest_twisted.ensureDeferred
async def test_total_streams_are_limited_with_503(make_proxy, simulator):
    proxy = make_proxy(ops=limits(max_streams=1))
    held = await StreamClient.open(proxy.url + "/api/chat", chat("sim/hold"))
    await held.wait_lines(1)
    busy = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro"))
    assert busy.code == 503 and busy.json()["type"] == "service_unavailable" and busy.header("retry-after") == "1"
    simulator.release_holds()
    await held.wait_done()


def _reading(port: int) -> bool:
    """Whether the reactor still reads the connection whose local port is ``port``."""
    for transport in reactor.getReaders():
        host = getattr(transport, "getHost", None)
        if host is not None and getattr(host(), "port", None) == port:
            return True
    return False


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_pauses_the_upstream_instead_of_filling_memory(make_proxy, simulator):
    proxy = make_proxy()
    body = json.dumps(chat("sim/flood")).encode()
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    client = await raw(proxy.port, request, read=False)
    # The upstream pushes back many times while the buffers between fill up; the
    # question is whether the proxy stops reading it (the reactor no longer reads
    # the proxy's end of the upstream connection), or swallows the whole flood.
    while True:
        await simulator.wait_for_flood_pause()
        assert not simulator.flood_done, "the proxy read the whole flood although its client read nothing"
        [upstream] = simulator.flood_connections
        if not _reading(upstream.getPeer().port):
            break
    [served] = proxy.service.lifecycle.requests()
    transport = served.channel.transport
    buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    # Bounded by the transport's buffer plus one upstream read, not by what the upstream offered.
    assert buffered < 512 * 1024
    # Reading again lets the stream go on.
    more = client.wait_received(len(client.received) + 4 * 1024 * 1024)
    client.transport.resumeProducing()
    await more
    # A client that leaves closes the upstream stream.
    aborted = simulator.wait_for_abort()
    client.transport.abortConnection()
    await aborted
    assert not simulator.flood_done
