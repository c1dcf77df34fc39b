"""The HTTP server side: a Site that bounds what one request and one client may make it hold.

Twisted reads a request body whole before dispatching it. This request class stops
keeping the bytes once the configured limit is passed (so a huge upload cannot
exhaust memory) and marks itself; the API then answers 413. A declared
``Content-Length`` over the limit is answered at once, before any of the body is
read, and the connection closed. Request headers are bounded in size (past
``max_header_bytes`` the channel answers 431 with a JSON body and closes) and in
time: they must be complete within ``header_timeout`` seconds of the connection
opening (or of the previous answer on a kept-alive connection), however slowly
the bytes trickle in; and the whole request, body included, within
``request_read_timeout`` (past either, 408 JSON). A request whose token the front
door will refuse is answered 401 at its headers, its body never read. The Site
refuses connections past ``max_connections`` with a 503. When the resource is
mounted in someone else's Site, the API still checks the body length itself, and
the other limits are that Site's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from ollama_proxy.front.gathered_writes import GatheredWrites
from ollama_proxy.front.request import LimitedRequest
from ollama_proxy.front.slots import TWISTED_CHANNEL_NAMES, set_twisted_channel_defaults
from ollama_proxy.front.syntax import HeadCheck, json_answer, request_line_problem, target_path
from ollama_proxy.ops.later import later

log = Logger()

DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_REQUEST_READ_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 4096


class LimitedChannel(GatheredWrites):
    """An HTTP channel whose header limits (size and time) come from its site, answered with JSON."""

    # Every name a channel sets lives in a slot, for the reason LimitedRequest's do: with them
    # in the __dict__ each channel had 39 names, a 1.5 KB table of its own; with ours in slots
    # Twisted's 18 still took a 0.5 KB one per open stream (tracemalloc, 1,000 open streams).
    __slots__ = (
        # Protocol's, LineReceiver's and HTTPChannel's public names too: the channels'
        # dicts saw more than 29 other names over the paths a connection can take.
        "transport",
        "connected",
        "factory",
        "line_mode",
        "requestFactory",
        "persistent",
        "site",  # set by the site that built the channel
        "MAX_LENGTH",
        "totalHeadersSize",
        "_header_timer",
        "_request_timer",
        "_reading",  # a request is being read (headers or body), not yet handed on
        "_request_line",  # the first line of the request being read
        "_head",  # its header lines so far
        "_partial_request",  # bytes of a request whose headers are not complete yet
        "_silenced",  # answered and closing: whatever else the client sends is ignored
        "_header_bytes",  # header bytes of the request being read
        "_host",  # the connection's local address, asked once (every request object asks)
    ) + TWISTED_CHANNEL_NAMES
    site: ProxySite

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A slot has no class default to fall back on: the base classes' defaults, set here.
        self.transport, self.connected, self.factory = None, 0, None
        self.line_mode, self.requestFactory, self.persistent = HTTPChannel.line_mode, HTTPChannel.requestFactory, 1
        self.MAX_LENGTH, self.totalHeadersSize = HTTPChannel.MAX_LENGTH, HTTPChannel.totalHeadersSize
        self._header_timer: IDelayedCall | None = None
        self._request_timer: IDelayedCall | None = None
        self._reading = False
        self._request_line: bytes | None = None
        self._head: HeadCheck | None = None
        self._partial_request = False
        self._silenced = False
        self._header_bytes = 0
        self._host: Any = None
        set_twisted_channel_defaults(self)
        super().__init__(*args, **kwargs)

    def getHost(self) -> Any:
        # Twisted's Request asks for it as it is built, a getsockname() call per request;
        # a connection's local address does not change.
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def connectionMade(self) -> None:
        limit = getattr(self.site, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
        self.totalHeadersSize = limit
        # A single header line may be as long as all of them together.
        self.MAX_LENGTH = limit + 2
        super().connectionMade()
        self.site.connection_opened()
        self._await_headers()

    def connectionLost(self, reason: Any = None) -> None:
        self._headers_arrived()
        self._stop_request_timer()
        if self._reading and self._partial_request and not self._silenced:
            # The client hung up in the middle of its request: no request object
            # will ever finish, so its access line is written here (499, as for
            # a client that leaves before its answer).
            self._refused(499)
        self.site.connection_closed()
        if not self.requests:
            return super().connectionLost(reason)
        # Left mid-answer: its upstream (our producer, stopped) closes at the next poll, but the
        # request's loss (unwinding the handler, access line) costs ~1 ms: in a burst of 10,000,
        # upstreams would close one by one for seconds. Queued, it runs after that poll, a slice
        # per reactor turn, so the closes of those leaving meanwhile are not kept waiting either.
        later(self.site.reactor).call(super().connectionLost, reason)

    # -- the header deadline: it does not restart with each byte, as the idle timeout does --
    def _await_headers(self) -> None:
        self._headers_arrived()
        self._stop_request_timer()
        self._partial_request = False
        self._reading = True
        self._request_line = None
        self._head = HeadCheck(self.maxHeaders)
        timeout = getattr(self.site, "header_timeout", DEFAULT_HEADER_TIMEOUT)
        if timeout:
            self._header_timer = self.site.clock.callLater(timeout, self._headers_too_slow)
        # The whole request (a body trickled a byte at a time too) has a deadline of its own.
        whole = getattr(self.site, "request_read_timeout", DEFAULT_REQUEST_READ_TIMEOUT)
        if whole:
            self._request_timer = self.site.clock.callLater(whole, self._request_too_slow)

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None and self._request_timer.active():
            self._request_timer.cancel()
        self._request_timer = None

    def _refused(self, status: int) -> None:
        """The access line of a request answered (or abandoned) before it became a request object."""
        method, path = b"-", b"-"
        if self._request_line:
            method, _, rest = self._request_line.partition(b" ")
            path = rest.partition(b" ")[0] or b"-"
        assert self.transport is not None
        self.site.refused(status, self.transport.getPeer(), method.decode("latin-1"), path.decode("latin-1"))

    def _headers_arrived(self) -> None:
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._too_slow(f"the request headers did not arrive within {self.site.header_timeout:g} seconds")

    def _request_too_slow(self) -> None:
        self._request_timer = None
        self._too_slow(f"the request did not arrive within {self.site.request_read_timeout:g} seconds")

    def _too_slow(self, message: str) -> None:
        if self._partial_request:
            self._answer_and_close(b"408 Request Timeout", message, "request_timeout")
            return
        # Nothing of a next request came: an idle kept-alive connection, closed quietly.
        self._headers_arrived()
        self._stop_request_timer()
        self._silenced = True
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._silenced:
            return
        if self._reading:
            self._partial_request = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._headers_arrived()
        request = self.requests[-1]
        declared = self.length
        too_large = declared is not None and declared > getattr(request, "max_body_bytes", declared)
        refused = too_large or (declared != 0 and self._refused_at_headers(request))
        if refused:
            # Do not invite the body: no "100 Continue" for it.
            request.requestHeaders.removeHeader(b"expect")
        super().allHeadersReceived()
        if refused:
            # Refuse at the headers: the request is answered now (413 by the API,
            # 401 by the front door) as if its body had come, and the connection
            # closes after the answer instead of reading what the client still sends.
            self.persistent = False
            request.setHeader(b"connection", b"close")
            self.length = 0

    def _refused_at_headers(self, request: Any) -> bool:
        """Whether ``refuses_at_headers`` (the token check) refuses this request whatever its body."""
        check = getattr(self.site, "refuses_at_headers", None)
        if check is None or not self._request_line:
            return False
        return bool(check(request, target_path(self._request_line)))

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # The next request's headers are due from now (set before the base
            # class replays pipelined bytes, which may complete them at once).
            self._await_headers()
        super().requestDone(request)

    def lineReceived(self, line: bytes) -> None:
        if self._silenced:
            return
        # The same sum HTTPChannel keeps (privately), kept here: checked first to answer
        # 431 rather than a bare 400.
        self._header_bytes += len(line)
        if self._header_bytes > self.totalHeadersSize:
            self._refuse_headers()
            return
        problem = None
        if self._request_line is None:
            if line:
                self._request_line = line
                problem = request_line_problem(line)
        elif line and self._head is not None:
            problem = self._head.problem(line)
        if problem is not None:
            self._answer_and_close(b"400 Bad Request", problem, "invalid_request")
            return
        super().lineReceived(line)

    def loseConnection(self) -> None:
        if self._reading and self._partial_request and not self._silenced:
            # Twisted refused what it was reading (a malformed chunk: its decoder is
            # private) with its own bare 400; the request still gets its access line.
            self._silenced = True
            self._refused(400)
        super().loseConnection()

    def allContentReceived(self) -> None:
        self._header_bytes = 0  # the next request's headers count from nothing
        self._reading = False
        # Only a request still being read is refused or abandoned with them: an open stream
        # need not keep its request line and header check.
        self._request_line = self._head = None
        self._stop_request_timer()
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_headers()

    def _refuse_headers(self) -> None:
        self._answer_and_close(
            b"431 Request Header Fields Too Large",
            f"request headers are larger than the limit of {self.totalHeadersSize} bytes",
            "headers_too_large",
        )

    def _answer_and_close(self, status: bytes, message: str, kind: str) -> None:
        """Answer the request being read with a JSON error, write its access line, close."""
        self._headers_arrived()
        self._stop_request_timer()
        assert self.transport is not None
        self._silenced = True
        self._refused(int(status[:3]))
        self.transport.write(json_answer(status, {"error": message, "type": kind}))
        self.loseConnection()


class _Refused(Protocol):
    """What a connection past ``max_connections`` gets: a 503 it can read, then the close."""

    def __init__(self, limit: int, site: ProxySite) -> None:
        self.limit, self.site = limit, site

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.site.refused(503, self.transport.getPeer())
        self.transport.write(
            json_answer(
                b"503 Service Unavailable",
                {
                    "error": f"the proxy is serving its maximum of {self.limit} connections; try again shortly",
                    "type": "service_unavailable",
                },
                b"retry-after: 1\r\n",
            )
        )
        self.transport.loseConnection()


class ProxySite(Site):
    """The daemon's Site: bounded requests and connections, and no access log of its
    own (the front door writes a richer one)."""

    protocol = LimitedChannel  # type: ignore[assignment]
    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    header_timeout = DEFAULT_HEADER_TIMEOUT
    request_read_timeout = DEFAULT_REQUEST_READ_TIMEOUT
    max_connections = DEFAULT_MAX_CONNECTIONS
    connections = 0
    _refusals_logged = 0
    on_refusal: Callable[[int, Any, str, str], None] | None = None
    # Given a request whose headers came and its path: whether it will be refused
    # whatever its body (then the body is not read). The front door's token check.
    refuses_at_headers: Callable[[Any, str], bool] | None = None

    def __init__(self, *args: Any, clock: IReactorTime | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The header deadline runs on ``clock`` (tests drive it), sockets on the reactor.
        self.clock: IReactorTime = clock if clock is not None else self.reactor

    def buildProtocol(self, addr: Any) -> Any:
        if self.max_connections and self.connections >= self.max_connections:
            if not self._refusals_logged:
                log.warn(
                    "connection refused: {count} connections are open, the limit is {limit}",
                    count=self.connections,
                    limit=self.max_connections,
                )
            self._refusals_logged += 1
            return _Refused(self.max_connections, self)
        return super().buildProtocol(addr)

    def refused(self, status: int, peer: Any, method: str = "-", path: str = "-") -> None:
        """A request refused before it became one (431, 408, 503 at the connection cap,
        499 for one the client abandoned): ``on_refusal`` (the front door's) still gives
        it its access line."""
        if self.on_refusal is None:
            return
        try:
            self.on_refusal(status, peer, method, path)
        except Exception:  # noqa: BLE001 - bookkeeping must never stop the refusal
            log.failure("recording a refused request failed")

    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections -= 1
        if self.connections < self.max_connections:
            self._refusals_logged = 0

    def log(self, request: Any) -> None:
        pass

    def set_limits(
        self,
        max_body_bytes: int,
        max_header_bytes: int,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT,
    ) -> None:
        """New limits for requests and connections to come (a reload)."""
        self.requestFactory.max_body_bytes = max_body_bytes  # type: ignore[attr-defined]
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.request_read_timeout = request_read_timeout


def make_site(
    resource: IResource,
    max_body_bytes: int,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT,
    **kwargs: Any,
) -> ProxySite:
    """A Site for ``resource`` whose requests stop storing bodies past the limit."""
    limited = type("LimitedRequest", (LimitedRequest,), {"max_body_bytes": max_body_bytes})
    site = ProxySite(resource, requestFactory=limited, **kwargs)
    site.displayTracebacks = False
    site.set_limits(max_body_bytes, max_header_bytes, header_timeout, max_connections, request_read_timeout)
    return site
