"""A lean HTTP/1.1 client for the per-request upstream calls (chat), beneath treq.

Why it exists: measured on the project machine (wrk, 64 keep-alive clients, an nginx
upstream, proxy CPU per request), a bare ``twisted.web`` resource relaying one upstream
answer costs 0.18 ms with a raw client protocol, 0.50 ms through
``twisted.web.client.Agent`` and 0.86 ms through treq over that Agent (treq wraps every
request in cookie, redirect and gzip agents; the Agent builds a request object, a
parser and a chain of Deferreds per call). On the chat path that difference was most
of what the proxy's own work could not remove, so chat requests go through this
client; model lists, health checks and embeddings still go through treq.
What it does, and no more: one persistent pool of connections per upstream (TCP, or TLS checked by
``service_identity`` through :func:`optionsForClientTLS`); a request is written in one piece (head
and body), sent at once; the response is parsed by ``httptools`` (the llhttp parser: status,
headers, Content-Length, chunked and close-delimited bodies) and handed over as an
:class:`~twisted.web.iweb.IResponse` whose body is delivered to an ``IProtocol`` exactly as
Twisted's own client does (``ResponseDone``, ``PotentialDataLoss`` or ``ResponseFailed`` at the end,
the response itself as the body's push producer), so the stream readers work over either client. The
pieces of one TCP read are handed on as one ``dataReceived`` (one relay write per read). Retries are
the router's call (a POST is not idempotent), but for one: a pooled connection the upstream closed
as a request was written on it (its keep-alive time ran out), without a byte of answer within
:data:`RACE_SECONDS`, gets the request again on a new connection: a server giving up an idle
connection, not an answer (left to the router, a failed attempt against the provider's breaker).
Asked for none (identity), a content coding is refused.
"""

from __future__ import annotations

from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from hyperlink import EncodedURL
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import URI, PotentialDataLoss, ResponseDone, ResponseFailed, ResponseNeverReceived

from ollama_proxy.ops.sendnow import write_now
from ollama_proxy.providers.http1_response import UpstreamResponse

IDLE_SECONDS = 240.0  # an unused pooled connection is closed after this (Twisted's pool: the same)
MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers (Twisted's client: 16 KiB a line)
# A close this soon after the write is the FIN of an idle close crossing our request (within
# a round trip), not an upstream that took the request and failed: only then is it resent.
RACE_SECONDS = 0.25


class UpstreamProtocolError(Exception):
    """The upstream's bytes are not an HTTP/1.1 response."""


class ClosedBeforeAnswer(ResponseNeverReceived):
    """The upstream closed (or reset) the connection without a byte of an answer."""


def uri_form(text: str) -> str:
    """``text`` in URI form, as treq sends a URL: an internationalised host by its IDNA
    name, the path percent-encoded; an IPv6 literal as it is (hyperlink's ``to_uri``
    would give it to IDNA, which refuses its colons)."""
    url = EncodedURL.from_text(text)
    if ":" in url.host:
        return url.replace(host="").to_uri().replace(host=url.host).to_text()
    return url.to_uri().to_text()


def _clean(value: bytes) -> bytes:
    # As Twisted's Headers do: a line break in a header would start a header of its own.
    return value.replace(b"\r\n", b" ").replace(b"\r", b" ").replace(b"\n", b" ")


def render_headers(headers: dict[str, str]) -> bytes:
    """``headers`` as the lines of a request head (each ending in CRLF), line breaks blanked;
    names in Latin-1, values in UTF-8, as Twisted's ``Headers`` encodes them.

    Names are case-insensitive: one given twice in two spellings (a configured
    ``user-agent`` over the built-in ``User-Agent``) is sent once, with the later value."""
    last: dict[str, tuple[str, str]] = {}
    for name, value in headers.items():
        last[name.lower()] = (name, value)
    return b"".join(
        _clean(name.encode("latin-1")) + b": " + _clean(value.encode("utf-8")) + b"\r\n"
        for name, value in last.values()
    )


class _Connection(Protocol):
    """One upstream connection: one request at a time, back to the pool when the body ended."""

    def __init__(self, pool: HTTP1Pool) -> None:
        self._pool = pool
        self._parser = HttpResponseParser(self)
        self._waiting: Deferred[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._phrase = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._framed = False  # Content-Length or chunked: the end is known without the close
        self._parts: list[bytes] | None = None
        self._complete = False
        self._interim = False  # a 1xx answer is being parsed: not the one waited for
        self._drop = False  # the answer's body is coded (an error's detail): not handed on
        self._keep = False
        self._closing = False
        self._paused = False  # by the body's reader (backpressure)
        self._head = 0  # bytes of reads that ended inside the answer's head
        self.idle_timer: IDelayedCall | None = None
        self.lost: Deferred[None] | None = None  # made by whoever waits for the close
        self._sent = 0.0  # when the request being answered was written

    # -- the pool's side -----------------------------------------------------------
    def send(self, data: bytes) -> Deferred[UpstreamResponse]:
        self._waiting = Deferred(canceller=self._cancel)
        self._response = None
        self._phrase, self._raw, self._framed, self._complete = b"", [], False, False
        self._head = 0
        self._sent = self._pool._clock.seconds()
        write_now(self.transport, data)
        return self._waiting

    def _cancel(self, waiting: Deferred[UpstreamResponse]) -> None:
        self.abort()  # the Deferred fails with CancelledError; the connection is not reused

    def pause(self) -> None:
        if not self._closing and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if not self._closing and self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stop(self) -> None:
        """A reader's stop: the connection closes, unless the answer is already complete.
        As Twisted's client does it, ``stopProducing`` closes the TCP connection beneath TLS
        too: TLS's own close waits for a close_notify that a paused connection never reads
        and an upstream amid an answer may never send (it went on generating)."""
        if not self._complete and not self._closing:
            self._closing = True
            self.transport.stopProducing()  # type: ignore[union-attr]

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    # -- bytes in --------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._waiting is None and self._response is None:
            self._fail_protocol(UpstreamProtocolError("bytes from the upstream with no request waiting"))
            return
        self._parts = parts = list[bytes]()
        try:
            self._parser.feed_data(data)
        except HttpParserError as error:
            if not self._complete:
                self._parts = None
                ours = error.__context__  # what one of the callbacks below refused
                if not isinstance(ours, UpstreamProtocolError):
                    ours = UpstreamProtocolError(f"unreadable HTTP response: {error}")
                self._fail_protocol(ours)
                return
            # Bytes after the whole answer (on_message_begin refused a second one): the
            # answer stands; the connection, whose next bytes cannot be trusted, is closed.
            self._keep = False
        except HttpParserUpgrade:
            self._parts = None
            self._fail_protocol(UpstreamProtocolError("the upstream switched protocols (101)"))
            return
        self._parts = None
        response = self._response
        if response is None or self._closing:
            if self._waiting is not None and not self._closing:
                # Still in the head (not per read of a body): bounded, as Twisted's client bounds it.
                self._head += len(data)
                if self._head > MAX_HEAD_BYTES:
                    self._fail_protocol(UpstreamProtocolError(f"an answer head over {MAX_HEAD_BYTES} bytes"))
            return  # or aborted during this read (a reader stopped, a cancel): connectionLost ends it
        if parts:
            response._data(parts[0] if len(parts) == 1 else b"".join(parts))
        if self._complete:
            self._response = None
            # A reader that paused it is done with it: the next answer (or a TLS close_notify)
            # must be read. Back in the pool before the reader hears of the end: what it does
            # next (another request) finds the connection free.
            self.resume()
            if self._keep and not self._closing:
                self._pool._release(self)
            else:
                self.close()
            response._ended(Failure(ResponseDone("Response body fully received")))

    def _fail_protocol(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        response, self._response = self._response, None
        self.abort()
        if waiting is not None and not waiting.called:
            waiting.errback(Failure(ResponseNeverReceived([Failure(error)])))
        elif response is not None:
            response._ended(Failure(ResponseFailed([Failure(error)])))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._complete:
            raise UpstreamProtocolError("bytes after the answer")

    def on_status(self, status: bytes) -> None:
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            # A chunked body's trailer: ignored, as Twisted's client ignores it (kept, it went
            # into the answer's headers, without a bound).
            return
        self._raw.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        code = self._parser.get_status_code()
        if code < 200:
            # An interim answer (100, 103; RFC 9110 15.2): a client must accept one it did
            # not ask for, and Twisted's client ignores it; the answer follows it.
            self._interim = True
            self._phrase, self._raw, self._framed = b"", [], False
            return
        if self._head and len(self._phrase) + sum(len(n) + len(v) for n, v in self._raw) > MAX_HEAD_BYTES:
            raise UpstreamProtocolError(f"an answer head over {MAX_HEAD_BYTES} bytes")  # over several reads
        # Asked for identity, a coded body would reach the event parser as garbage: refused, but
        # an error answer keeps its status (429's Retry-After, 401) and loses only its detail.
        coding = next((v for n, v in self._raw if n.lower() == b"content-encoding"), b"").strip().lower()
        self._drop = coding not in (b"", b"identity")
        if self._drop and 200 <= code < 300:
            raise UpstreamProtocolError(f"the upstream compressed its answer ({coding.decode('latin-1')})")
        waiting, self._waiting = self._waiting, None
        if waiting is None or waiting.called:
            return
        # Known here (llhttp forgets it once the message is complete).
        self._keep = self._parser.should_keep_alive()
        response = UpstreamResponse(self, code, self._phrase, self._raw)
        for name, value in self._raw:
            if name.lower() == b"content-length" and value.isdigit():
                response.length = int(value)
        self._response = response
        waiting.callback(response)

    def on_body(self, body: bytes) -> None:
        if self._parts is not None and not self._drop:
            self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True

    # -- the end ---------------------------------------------------------------------------
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self._pool._forget(self)
        if self.lost is not None:
            self.lost.callback(None)
        waiting, self._waiting = self._waiting, None
        response, self._response = self._response, None
        if waiting is not None and not waiting.called:
            if (
                self._head == 0
                and not self._interim
                and reason.check(ConnectionDone, ConnectionLost)
                and self._pool._clock.seconds() - self._sent <= RACE_SECONDS
            ):
                waiting.errback(Failure(ClosedBeforeAnswer([reason])))  # not one byte of an answer, at once
            else:
                waiting.errback(Failure(ResponseNeverReceived([reason])))
        elif response is not None:
            if self._complete:
                response._ended(Failure(ResponseDone("Response body fully received")))
            elif not self._framed:
                # Ends at the close by design (HTTP/1.0 style): complete, as far as anyone can tell.
                response._ended(Failure(PotentialDataLoss()))
            else:
                response._ended(Failure(ResponseFailed([reason])))


class HTTP1Pool:
    """The persistent connections to one upstream origin, and requests over them."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        connect_timeout: float,
        max_idle: int,
        clock: IReactorTime | None = None,
        trust_root: Any = None,
    ) -> None:
        uri = URI.fromBytes(uri_form(url).encode("ascii"))
        self.scheme = uri.scheme
        host = uri.host.decode("ascii")
        endpoint: Any = HostnameEndpoint(reactor, host, uri.port, timeout=connect_timeout)
        if uri.scheme == b"https":
            options = optionsForClientTLS(host, trustRoot=trust_root) if trust_root else optionsForClientTLS(host)
            endpoint = wrapClientTLS(options, endpoint)
        self._endpoint = endpoint
        default_port = 443 if uri.scheme == b"https" else 80
        host_value = uri.host if b":" not in uri.host else b"[" + uri.host + b"]"
        self.host = host_value if uri.port == default_port else host_value + b":%d" % uri.port
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False
        self._factory = Factory.forProtocol(lambda: _Connection(self))

    def request(
        self, method: bytes, target: bytes, head: bytes, body: bytes | None, host: bool = True
    ) -> Deferred[UpstreamResponse]:
        """Send ``method target`` with ``head`` (header lines, CRLF-ended) and ``body``;
        fires with the response once its headers arrived. ``host=False``: ``head`` has
        the Host line (the caller's replaces the pool's, as with Twisted's Agent)."""
        if host:
            data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (method, target, self.host, head)
        else:
            data = b"%s %s HTTP/1.1\r\n%s" % (method, target, head)
        if body is not None:
            data += b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            data += b"\r\n"
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection._closing:
                continue  # closed for idleness, or for bytes nobody asked for: it leaves the pool when lost
            timer = connection.idle_timer
            if timer is not None:
                connection.idle_timer = None
                if timer.active():
                    timer.cancel()
            return connection.send(data).addErrback(self._closed_while_reused, data)
        return self._connect(data)

    def _closed_while_reused(self, failure: Failure, data: bytes) -> Any:
        if failure.check(ClosedBeforeAnswer) and not self._closed:
            return self._connect(data)  # once, on a new connection (see the module's doc)
        return failure

    def _connect(self, data: bytes) -> Deferred[UpstreamResponse]:
        connecting = self._endpoint.connect(self._factory)

        def connected(connection: _Connection) -> Deferred[UpstreamResponse]:
            self._open.add(connection)
            return connection.send(data)

        def not_connected(failure: Failure) -> Failure:
            if failure.check(ConnectingCancelledError):
                return Failure(CancelledError())
            return failure

        return connecting.addCallbacks(connected, not_connected)

    def _release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_timer = self._clock.callLater(IDLE_SECONDS, connection.close)
        self._idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        timer = connection.idle_timer
        if timer is not None:
            connection.idle_timer = None
            if timer.active():
                timer.cancel()
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> Deferred[Any]:
        """Close the idle connections now, and every busy one when its answer ends;
        fires when the idle ones are closed."""
        self._closed = True
        idle, self._idle = self._idle, []
        done = []
        for connection in idle:
            connection.lost = Deferred()
            done.append(connection.lost)
            connection.close()
        return DeferredList(done)
