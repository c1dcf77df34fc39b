"""The lean HTTP/1.1 client of the chat path, against raw servers on loopback.

Each server here writes canned bytes, so every way an upstream can frame (or break) an
answer is exercised exactly: Content-Length, chunked, close-delimited, ``Connection:
close``, cut bodies, garbage, silence, TLS with and without a trusted certificate.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed, ResponseNeverReceived
from zope.interface import implementer

from ollama_proxy.config.settings import Timeouts
from ollama_proxy.providers.http1 import (
    IDLE_SECONDS,
    MAX_HEAD_BYTES,
    RACE_SECONDS,
    HTTP1Pool,
    UpstreamProtocolError,
    render_headers,
)
from ollama_proxy.providers.openai_compat import OpenAICompatibleProvider

from .conftest import http
from .multi import provider

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n"


class CannedServer(Protocol):
    """Answers each request (a head ending in a blank line; bodies are ignored) with
    the server's next canned answer; ``None`` answers nothing; ``b"CLOSE"`` closes;
    ``b"CUT:" + bytes`` writes the bytes, then closes."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        factory: Any = self.factory
        factory.heads.append(data)
        answer = factory.answers.pop(0) if factory.answers else OK
        if answer == b"CLOSE":
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif answer is not None and answer.startswith(b"CUT:"):
            self.transport.write(answer[4:])  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif answer is not None:
            self.transport.write(answer)  # type: ignore[union-attr]
            if factory.close_after:
                self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class Server:
    def __init__(
        self, *answers: bytes | None, close_after: bool = False, context: Any = None, interface: str = "127.0.0.1"
    ) -> None:
        factory: Any = Factory.forProtocol(CannedServer)
        factory.answers = list(answers)
        factory.connections = []
        factory.heads = []
        factory.close_after = close_after
        self.factory = factory
        if context is None:
            self.port = reactor.listenTCP(0, factory, interface=interface)
        else:
            self.port = reactor.listenSSL(0, factory, context, interface=interface)
        host = f"[{interface}]" if ":" in interface else interface
        self.url = f"http://{host}:{self.port.getHost().port}"

    @property
    def connections(self) -> list[CannedServer]:
        return self.factory.connections  # type: ignore[no-any-return]

    @property
    def heads(self) -> list[bytes]:
        return self.factory.heads  # type: ignore[no-any-return]


@pytest.fixture
def servers():
    started: list[Server] = []
    pools: list[HTTP1Pool] = []

    def make(*answers: bytes | None, **options: Any) -> tuple[Server, HTTP1Pool]:
        server = Server(*answers, **options)
        started.append(server)
        pool = HTTP1Pool(reactor, server.url, connect_timeout=5, max_idle=4)
        pools.append(pool)
        return server, pool

    yield make
    for pool in pools:
        pool.close()
    for server in started:
        for connection in server.connections:
            if not connection.lost.called:
                connection.transport.abortConnection()  # type: ignore[union-attr]
        server.port.stopListening()


class Body(Protocol):
    """Collects a body: each ``dataReceived`` as it came, and how it ended."""

    def __init__(self, pause_on_data: bool = False) -> None:
        self.reads: list[bytes] = []
        self.ended: Deferred[list[Failure]] = Deferred()  # [reason]: a bare Failure would be an errback
        self.pause_on_data = pause_on_data

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)
        if self.pause_on_data:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback([reason])


async def fetch(pool: HTTP1Pool, head: bytes = b"") -> tuple[Any, Body, Failure]:
    response = await pool.request(b"POST", b"/v1/chat/completions", head, b"{}")
    body = Body()
    response.deliverBody(body)
    reason = (await body.ended)[0]
    return response, body, reason


@pytest_twisted.ensureDeferred
async def test_a_content_length_answer_is_read_and_its_connection_reused(servers):
    server, pool = servers(OK, OK)
    first, body, reason = await fetch(pool)
    assert first.code == 200 and first.length == 5 and b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
    _, again, reason = await fetch(pool)
    assert b"".join(again.reads) == b"hello" and reason.check(ResponseDone)
    assert len(server.connections) == 1 and len(server.heads) == 2


@pytest_twisted.ensureDeferred
async def test_the_request_is_sent_as_one_http11_message(servers):
    server, pool = servers(OK)
    await fetch(pool, render_headers({"Authorization": "Bearer k", "Content-Type": "application/json"}))
    port = server.port.getHost().port
    assert server.heads[0] == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Authorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % port
    )


@pytest_twisted.ensureDeferred
async def test_a_line_break_in_a_header_value_cannot_start_a_header_of_its_own(servers):
    server, pool = servers(OK)
    await fetch(pool, render_headers({"X-Title": "a\r\nEvil: 1", "X-Other": "b\nc"}))
    lines = server.heads[0].split(b"\r\n")
    assert b"X-Title: a Evil: 1" in lines and b"X-Other: b c" in lines
    assert not any(line.startswith(b"Evil") for line in lines)


def test_a_header_named_twice_in_two_spellings_is_sent_once_with_the_later_value():
    head = render_headers({"User-Agent": "ollama-proxy/1", "Accept": "*/*", "user-agent": "operator/2"})
    assert head == b"user-agent: operator/2\r\nAccept: */*\r\n"


@pytest_twisted.ensureDeferred
async def test_the_chunks_of_one_read_reach_the_reader_as_one_piece(servers):
    server, pool = servers(CHUNKED, OK)
    response, body, reason = await fetch(pool)
    assert body.reads == [b"onetwothree"] and reason.check(ResponseDone)
    await fetch(pool)
    assert len(server.connections) == 1  # chunked framing ends the answer: the connection goes on


@pytest_twisted.ensureDeferred
async def test_an_answer_ended_by_the_close_is_complete_but_flagged(servers):
    server, pool = servers(b"HTTP/1.1 200 OK\r\n\r\nno length", OK, close_after=True)
    _, body, reason = await fetch(pool)
    assert b"".join(body.reads) == b"no length" and reason.check(PotentialDataLoss)


@pytest_twisted.ensureDeferred
async def test_connection_close_is_honoured(servers):
    server, pool = servers(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", OK)
    _, body, reason = await fetch(pool)
    assert body.reads == [b"ok"] and reason.check(ResponseDone)
    await server.connections[0].lost  # we closed it: it said so
    await fetch(pool)
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_body_cut_short_fails(servers):
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n"
    server, pool = servers(cut, close_after=True)
    _, body, reason = await fetch(pool)
    assert body.reads == [b"one"] and reason.check(ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_a_close_before_any_answer_is_response_never_received(servers):
    server, pool = servers(b"CLOSE")
    with pytest.raises(ResponseNeverReceived):
        await pool.request(b"POST", b"/x", b"", b"{}")
    assert len(server.connections) == 1  # a new connection's close is an answer of sorts: not retried


@pytest_twisted.ensureDeferred
async def test_a_chunked_bodys_trailers_are_ignored(servers):
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"v" * 100) for i in range(2000))  # 230 KB of them
    server, pool = servers(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + trailers + b"\r\n"
    )
    response, body, reason = await fetch(pool)
    assert b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
    assert [name for name, _ in response.headers.getAllRawHeaders()] == [b"Transfer-Encoding"]
    await fetch(pool)  # and the connection is reused
    assert len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_a_reused_connection_closed_as_the_request_came_is_retried_once_on_a_new_one(servers):
    # The upstream's keep-alive time ran out just as the pool reused the connection: the
    # server closes it without reading the request. Sent again on a new connection.
    server, pool = servers(OK, b"CLOSE", OK)
    await fetch(pool)
    response, body, reason = await fetch(pool)
    assert response.code == 200 and b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
    assert len(server.connections) == 2 and len(server.heads) == 3
    assert server.heads[1] == server.heads[2]  # the same request, whole, again


@pytest_twisted.ensureDeferred
async def test_a_close_long_after_the_request_is_not_a_race_and_not_retried(servers):
    # A reused connection closed well after the request was written (a middlebox's idle
    # timeout amid a long generation, an upstream that crashed on it) may have been worked
    # on: the router decides, the pool does not send the POST again.
    server = Server(OK, b"CLOSE")
    clock = Clock()
    pool = HTTP1Pool(reactor, server.url, connect_timeout=5, max_idle=4, clock=clock)
    try:
        await fetch(pool)
        answer = pool.request(b"POST", b"/x", b"", b"{}")
        clock.advance(RACE_SECONDS + 0.01)  # before the close reaches the pool
        with pytest.raises(ResponseNeverReceived):
            await answer
        assert len(server.connections) == 1
    finally:
        await pool.close()
        server.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_retry_is_made_once(servers):
    server, pool = servers(OK, b"CLOSE", b"CLOSE")
    await fetch(pool)
    with pytest.raises(ResponseNeverReceived):
        await pool.request(b"POST", b"/x", b"", b"{}")
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_reused_connection_closed_amid_an_answer_is_not_retried(servers):
    server, pool = servers(OK, b"CUT:HTTP/1.1 200 OK\r\nContent-")
    await fetch(pool)
    with pytest.raises(ResponseNeverReceived):
        await pool.request(b"POST", b"/x", b"", b"{}")
    assert len(server.connections) == 1  # an upstream that began to answer may have done the work


@pytest.mark.parametrize(
    "answer, why",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "unreadable HTTP response"),  # bytes that are not HTTP
        # Compressed though asked for identity: refused, not handed to the event parser as garbage.
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
            "compressed its answer (gzip)",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_answer_the_client_cannot_read_fails_the_request(servers, answer, why):
    server, pool = servers(answer)
    with pytest.raises(ResponseNeverReceived) as caught:
        await pool.request(b"POST", b"/x", b"Accept-Encoding: identity\r\n", b"{}")
    assert caught.value.reasons[0].check(UpstreamProtocolError)
    assert why in str(caught.value.reasons[0].value)
    await server.connections[0].lost  # and the connection is given up


@pytest_twisted.ensureDeferred
async def test_a_compressed_error_answer_keeps_its_status_and_loses_its_detail(servers):
    # A 429's Retry-After, a 401: what the router needs is in the status and headers.
    server, pool = servers(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
        OK,
    )
    response, body, reason = await fetch(pool)
    assert response.code == 429 and response.headers.getRawHeaders(b"retry-after") == [b"3"]
    assert body.reads == [] and reason.check(ResponseDone)
    response, body, _ = await fetch(pool)  # the next answer on the same connection is read whole
    assert response.code == 200 and b"".join(body.reads) == b"hello" and len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_fails_the_request(servers):
    server, pool = servers()
    await server.port.stopListening()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any ConnectError subclass
        await pool.request(b"POST", b"/x", b"", b"{}")
    assert "refused" in type(caught.value).__name__.lower() or "refused" in str(caught.value).lower()


@pytest_twisted.ensureDeferred
async def test_cancelling_a_request_awaiting_its_answer_closes_the_connection(servers):
    server, pool = servers(None)
    waiting = pool.request(b"POST", b"/x", b"", b"{}")
    while not server.heads:  # the request has left
        await deferLater0()
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    await server.connections[0].lost


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_closes_the_connection(servers):
    head_and_one = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n"
    server, pool = servers(head_and_one)
    response = await pool.request(b"POST", b"/x", b"", b"{}")
    body = Body()
    response.deliverBody(body)
    body.transport.stopProducing()  # type: ignore[union-attr]
    await server.connections[0].lost  # the upstream stops generating
    reason = (await body.ended)[0]
    assert reason.check(ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_a_connection_a_reader_paused_still_reads_the_next_answer(servers):
    server, pool = servers(OK, OK)
    response = await pool.request(b"POST", b"/x", b"", b"{}")
    paused = Body(pause_on_data=True)  # pauses and never resumes: the answer is complete anyway
    response.deliverBody(paused)
    assert (await paused.ended)[0].check(ResponseDone)
    _, body, reason = await fetch(pool)
    assert b"".join(body.reads) == b"hello" and len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_a_body_delivered_late_is_kept_until_then(servers):
    server, pool = servers(CHUNKED)
    response = await pool.request(b"POST", b"/x", b"", b"{}")
    await deferLater0()
    await deferLater0()
    body = Body()
    response.deliverBody(body)
    assert b"".join(body.reads) == b"onetwothree" and ((await body.ended)[0]).check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_error_statuses_come_with_their_headers(servers):
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
    server, pool = servers(answer)
    response, body, _ = await fetch(pool)
    assert response.code == 429 and response.phrase == b"Too Many Requests"
    assert response.headers.getRawHeaders(b"retry-after") == [b"7"]


@pytest_twisted.ensureDeferred
async def test_close_closes_the_idle_connections(servers):
    server, pool = servers(OK)
    await fetch(pool)
    await pool.close()
    await server.connections[0].lost


# -- answers at the edges of HTTP/1.1 ---------------------------------------------------
@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"],
)
@pytest_twisted.ensureDeferred
async def test_an_interim_answer_is_skipped_for_the_answer_after_it(servers, interim):
    # RFC 9110 15.2: a client must accept 1xx answers it did not ask for; Twisted's own
    # client ignores them. In the same read as the answer, and in a read of its own.
    server, pool = servers(interim + OK, None)
    response, body, reason = await fetch(pool)
    assert (response.code, response.phrase, b"".join(body.reads)) == (200, b"OK", b"hello")
    assert reason.check(ResponseDone) and response.headers.getRawHeaders(b"link") is None
    waiting = pool.request(b"POST", b"/x", b"", b"{}")
    while len(server.heads) < 2:
        await deferLater0()
    server.connections[0].transport.write(interim)
    await deferLater0()
    assert not waiting.called
    server.connections[0].transport.write(OK)
    response = await waiting
    assert response.code == 200 and len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_switching_protocols_is_a_clear_failure(servers):
    server, pool = servers(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n\x00\x00")
    with pytest.raises(ResponseNeverReceived) as caught:
        await pool.request(b"POST", b"/x", b"", b"{}")
    assert caught.value.reasons[0].check(UpstreamProtocolError)
    await server.connections[0].lost


@pytest.mark.parametrize(
    "surplus",
    [b"junk", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"],
    ids=["garbage", "an-answer-nobody-asked-for"],
)
@pytest_twisted.ensureDeferred
async def test_bytes_after_the_answer_leave_it_whole_and_the_connection_unused(servers, surplus):
    # Twisted's client drops what follows the answer in its read. Here the answer is
    # kept, and the connection, whose next bytes can no longer be trusted, is closed:
    # reused, its parser would take the next answer for the rest of this surplus one.
    server, pool = servers(OK + surplus, OK)
    _, body, reason = await fetch(pool)
    assert b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
    await server.connections[0].lost.addTimeout(5, reactor)  # a bound, not a wait
    response = await pool.request(b"POST", b"/x", b"", b"{}").addTimeout(5, reactor)
    assert response.code == 200 and len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_for_idleness_is_not_taken_by_the_next_request(servers):
    # The idle timer closes a connection; until the close is done (a reactor turn for
    # TCP, the upstream's close_notify for TLS) it was still in the pool, and a request
    # then was written on it, its answer ignored, and failed as never received (a 502).
    server, _ = servers(OK, OK)
    clock = Clock()
    pool = HTTP1Pool(reactor, server.url, connect_timeout=5, max_idle=4, clock=clock)
    try:
        await fetch(pool)
        clock.advance(IDLE_SECONDS)
        response = await pool.request(b"POST", b"/x", b"", b"{}")
        assert response.code == 200 and len(server.connections) == 2
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_configured_header_value_beyond_latin1_is_sent_as_utf8(make_multi, openai_sim):
    # An app name in OpenRouter's X-Title, a team in a gateway's header: treq sent a str
    # value as UTF-8 (Twisted's Headers); the lean client's Latin-1 raised
    # UnicodeEncodeError on every chat request: a 500.
    title = "Café ✓ 团队"
    upstream = provider(
        "openai", "openai", openai_sim.base_url, "sk-openai-simulator-key", headers=(("X-Title", title),)
    )
    proxy = make_multi([upstream], openrouter=False)
    url = proxy.url + "/v1/chat/completions"
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    answer = await http("POST", url, body)
    assert answer.code == 200
    assert openai_sim.chat_requests()[-1].headers["x-title"] == title


@pytest_twisted.ensureDeferred
async def test_a_configured_accept_encoding_does_not_replace_identity(make_multi, openai_sim):
    # The lean client reads no coded body: a gzip asked for by configuration would fail
    # every chat; identity is sent whatever the configured headers say.
    upstream = provider(
        "openai", "openai", openai_sim.base_url, "sk-openai-simulator-key", headers=(("accept-encoding", "gzip"),)
    )
    proxy = make_multi([upstream], openrouter=False)
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert (await http("POST", proxy.url + "/v1/chat/completions", body)).code == 200
    assert openai_sim.chat_requests()[-1].headers["accept-encoding"] == "identity"


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Loopback:
    """Resolves every name to 127.0.0.1, and keeps the names it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(  # noqa: N802 - the interface's name
        self,
        receiver: Any,
        hostName: str,
        portNumber: int = 0,
        *args: Any,
        **kwargs: Any,  # noqa: N803
    ) -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(_Resolution(hostName))
        receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        receiver.resolutionComplete()
        return receiver


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
class _ResolvingReactor:
    """The reactor, with :class:`_Loopback` for its name resolver."""

    def __init__(self) -> None:
        self.nameResolver = _Loopback()

    def installNameResolver(self, resolver: Any) -> Any:  # noqa: N802 - the interface's name
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_an_internationalised_host_is_reached_by_its_ascii_name(servers):
    # treq sent requests to such a base URL (the host in IDNA); the lean client's
    # url.encode("ascii") raised when the provider was built: the proxy did not start.
    server, _ = servers(OK)
    port = server.port.getHost().port
    resolving = _ResolvingReactor()
    pool = HTTP1Pool(resolving, f"http://bücher.example:{port}/v1", connect_timeout=5, max_idle=2)
    try:
        _, body, reason = await fetch(pool)
        assert b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
        assert resolving.nameResolver.asked == ["xn--bcher-kva.example"]
        assert b"\r\nHost: xn--bcher-kva.example:%d\r\n" % port in server.heads[0]
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_an_answer_head_past_the_bound_fails_instead_of_filling_memory(servers):
    # Twisted's client drops a connection at a header line over 16 KiB; the lean one
    # held whatever head an upstream (or anything at its address) sent, as fast as it
    # came, for the whole response timeout. A head of ordinary size still passes.
    ordinary = b"HTTP/1.1 200 OK\r\nX-Trace: " + b"t" * 8000 + b"\r\nContent-Length: 2\r\n\r\nok"
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\nContent-Length: 2\r\n\r\nok"
    endless = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (4 * MAX_HEAD_BYTES)  # and never an end
    server, pool = servers(ordinary, huge, endless)
    response, _, _ = await fetch(pool)
    assert len(response.headers.getRawHeaders(b"x-trace")[0]) == 8000
    for _ in ("huge", "endless"):
        with pytest.raises(ResponseNeverReceived) as caught:
            await pool.request(b"POST", b"/x", b"", b"{}").addTimeout(5, reactor)  # a bound, not a wait
        assert caught.value.reasons[0].check(UpstreamProtocolError)


@pytest_twisted.ensureDeferred
async def test_an_ipv6_base_url_is_reached_for_chat_and_for_model_lists(servers):
    # hyperlink's URI form IDNA-encodes the host, and "::1" is no IDNA label: the lean
    # pool raised when the provider was built, and before that every request did.
    try:
        server, _ = servers(OK, OK, interface="::1")
    except CannotListenError:
        pytest.skip("no IPv6 loopback here")
    upstream = OpenAICompatibleProvider(
        name="v6",
        type="openai",
        label="v6",
        base_url=server.url + "/v1",
        api_key="k",
        reactor=reactor,
        timeouts=Timeouts(connect=5, response=5, idle=5),
    )
    try:
        chat = await upstream._request("POST", "chat/completions", {}, lean=True)
        listing = await upstream._request("GET", "models", None)  # through treq
        assert (chat.code, listing.code) == (200, 200)
        port = server.port.getHost().port
        assert server.heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: [::1]:%d\r\n" % port)
        assert server.heads[1].startswith(b"GET /v1/models HTTP/1.1\r\n")
    finally:
        await upstream.close()


@pytest_twisted.ensureDeferred
async def test_a_configured_host_header_is_the_one_host_sent(servers):
    # An upstream reached by address or through a tunnel, named by a configured Host:
    # Twisted's Agent sends the caller's Host instead of its own; the lean client sent
    # both, and an upstream must refuse two (RFC 9112 3.2: 400).
    server, _ = servers(OK, OK)
    upstream = OpenAICompatibleProvider(
        name="tunnel",
        type="openai",
        label="tunnel",
        base_url=server.url + "/v1",
        api_key="k",
        reactor=reactor,
        timeouts=Timeouts(connect=5, response=5, idle=5),
        extra_headers={"host": "llm.internal"},
    )
    try:
        await upstream._request("POST", "chat/completions", {}, lean=True)
        await upstream._request("GET", "models", None)  # through treq, for comparison
        for head in server.heads:
            hosts = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
            assert [line.split(b":", 1)[1].strip() for line in hosts] == [b"llm.internal"]
    finally:
        await upstream.close()


# -- TLS ----------------------------------------------------------------------------------
def _certificate(name: str) -> PrivateCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return PrivateCertificate.loadPEM(pem)


def _tls_pool(servers: Any, *answers: bytes | None) -> tuple[HTTP1Pool, Server]:
    """A canned TLS server for ``localhost`` and a pool that trusts its certificate."""
    private = _certificate("localhost")
    server, _ = servers(*answers, context=private.options())
    port = server.port.getHost().port
    trust = Certificate.loadPEM(private.dumpPEM())
    return HTTP1Pool(reactor, f"https://localhost:{port}", connect_timeout=5, max_idle=2, trust_root=trust), server


@pytest_twisted.ensureDeferred
async def test_tls_to_a_trusted_certificate_for_the_host(servers):
    private = _certificate("localhost")
    server, _ = servers(OK, context=private.options())
    port = server.port.getHost().port
    trust = Certificate.loadPEM(private.dumpPEM())
    pool = HTTP1Pool(reactor, f"https://localhost:{port}", connect_timeout=5, max_idle=2, trust_root=trust)
    try:
        _, body, reason = await fetch(pool)
        assert b"".join(body.reads) == b"hello" and reason.check(ResponseDone)
    finally:
        await pool.close()


@pytest.mark.parametrize(("name", "trusted"), [("localhost", False), ("upstream.example", True)])
@pytest_twisted.ensureDeferred
async def test_tls_refuses_an_untrusted_or_misnamed_certificate(servers, name, trusted):
    private = _certificate(name)
    server, _ = servers(OK, context=private.options())
    port = server.port.getHost().port
    trust = Certificate.loadPEM(private.dumpPEM()) if trusted else None
    pool = HTTP1Pool(reactor, f"https://localhost:{port}", connect_timeout=5, max_idle=2, trust_root=trust)
    try:
        with pytest.raises(ResponseNeverReceived) as caught:
            await pool.request(b"POST", b"/x", b"", b"{}")
        assert not server.heads  # nothing was sent to it
        # Not trusted: OpenSSL's verification; trusted but for another name: service_identity's.
        assert any(reason.check(SSL.Error, VerificationError) for reason in caught.value.reasons)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_reader_that_paused_then_stops_closes_a_tls_connection_at_once(servers):
    # A slow client paused the stream, then left. The TLS close (close_notify, then wait
    # for the upstream's) never finished while reads were paused: the reader never heard
    # of the end, and an upstream that does not answer close_notify mid-answer (nginx
    # does not) went on generating. Twisted's client closes the TCP connection.
    head_and_one = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n"
    pool, server = _tls_pool(servers, head_and_one)
    try:
        response = await pool.request(b"POST", b"/x", b"", b"{}")
        body = Body(pause_on_data=True)
        response.deliverBody(body)
        while not body.reads:
            await deferLater0()
        body.transport.stopProducing()  # type: ignore[union-attr]
        reason = (await body.ended.addTimeout(5, reactor))[0]  # a bound, not a wait
        assert reason.check(ResponseFailed)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_tls_answer_ending_in_a_close_closes_even_if_its_reader_paused(servers):
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    pool, server = _tls_pool(servers, answer)
    try:
        response = await pool.request(b"POST", b"/x", b"", b"{}")
        body = Body(pause_on_data=True)  # paused at the last bytes, never resumed: it has them all
        response.deliverBody(body)
        assert (await body.ended)[0].check(ResponseDone)
        await server.connections[0].lost
        for _ in range(100):  # the upstream's close is on our socket: a few reactor turns read it
            if not pool._open:
                break
            await deferLater0()
        assert not pool._open  # else our socket stays in CLOSE_WAIT for good
    finally:
        await pool.close()


def deferLater0() -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_stream_stopped_before_it_was_read_closes_its_connection(servers):
    # The relay stops a stream whose client left while its headers were on the way,
    # before delivering it: the body must not pile up unread on an open connection.
    from ollama_proxy.providers.stream import SSEStream

    endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n"
    server, pool = servers(endless)
    response = await pool.request(b"POST", b"/x", b"", b"{}")
    SSEStream(response, reactor, 10.0, "upstream").stopProducing()
    # Bounded so that a regression fails here instead of hanging the suite.
    await server.connections[0].lost.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_a_delivered_stream_leaves_no_reference_cycle_behind(servers):
    # A relay holds its stream and the stream the relay's sinks (and its reader, which
    # holds it back): once the body is over the stream lets go of its sinks and the reader
    # of the stream, so all of them go by reference counting as the request ends. Left to
    # the cyclic garbage collector, every request's were about a tenth of the CPU under load.
    import gc
    import weakref

    from ollama_proxy.providers.stream import SSEStream

    event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    _, pool = servers(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(event), event))
    response = await pool.request(b"POST", b"/x", b"", b"{}")

    class Relay:
        def __init__(self) -> None:
            self.chunks: list[Any] = []
            self.upstream = SSEStream(response, reactor, 10.0, "upstream")

        def gather(self, chunk: Any) -> None:
            self.chunks.append(chunk)

    gc.collect()
    gc.disable()
    try:
        relay = Relay()
        await relay.upstream.deliver(relay.gather)  # complete at the body's end (finish_reason, no [DONE])
        await deferLater0()  # past the end of the body's handling
        assert relay.chunks and relay.chunks[0]["choices"][0]["delta"] == {"content": "hi"}
        stream = weakref.ref(relay.upstream)
        del relay
        assert stream() is None
    finally:
        gc.enable()
