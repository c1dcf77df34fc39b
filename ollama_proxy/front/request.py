"""The request class of the proxy's Site: a bounded body, standard reason phrases, JSON failures."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ollama_proxy.errors import InternalError, dialect_for, render_error
from ollama_proxy.front.record import record_of
from ollama_proxy.ops.sendnow import write_now

log = Logger()


class LimitedRequest(Request):
    """A request that keeps at most ``max_body_bytes`` of its body, sends the standard
    reason phrase with every status, and answers a failure Twisted would show as an
    HTML "Processing Failed" page with a JSON 500 in the route's dialect."""

    # Every name a request sets lives in a slot, so a request has no __dict__ at all. Python
    # shares one table of names among a class's instance dicts for up to 29 names; a streamed
    # request had 34, so each __dict__ was a table of its own (1.5 KB); with the later names in
    # slots its 25 remaining ones still took a 1.6 KB table of their own (tracemalloc, 1,000
    # open streams) once other requests had put more names in the shared one.
    __slots__ = (
        # Twisted's names set in __init__ (twisted.web.http.Request, Componentized)
        "notifications",
        "channel",
        "client",
        "host",
        "requestHeaders",
        "received_cookies",
        "responseHeaders",
        "cookies",
        "transport",
        "queued",
        "_parsePOSTFormSubmission",
        "_adapterCache",
        # Twisted's names set later, most with a class default (set in __init__ below)
        "method",
        "uri",
        "clientproto",
        "path",
        "args",
        "content",
        "site",
        "prepath",
        "postpath",
        "sitepath",
        "startedWriting",
        "chunked",
        "sentLength",
        "etag",
        "lastModified",
        "_forceSSL",
        "_encoder",
        "_inFakeHead",
        "appRootURL",
        "producer",
        "streamingProducer",
        "code",
        "code_message",
        "finished",
        "_disconnected",
        # ours
        "body_too_large",
        "_ollama_proxy_record",
    )
    max_body_bytes: int = 32 * 1024 * 1024

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        # A slot has no class default to fall back on: Twisted's class defaults, set here.
        self.body_too_large = False
        self._ollama_proxy_record = None
        self.method, self.uri, self.clientproto = Request.method, Request.uri, Request.clientproto
        self.path = self.args = None  # type: ignore[assignment]  # Twisted's defaults before the request line
        self.content = self.site = self.prepath = self.postpath = None
        self.startedWriting = self.chunked = self.sentLength = self._forceSSL = 0
        self.etag = self.lastModified = self._encoder = self.appRootURL = None
        self._inFakeHead = False
        self.producer = None
        self.streamingProducer = False
        self.code, self.code_message = Request.code, Request.code_message
        self.finished = 0
        self._disconnected = False
        # No route reads form arguments, and parsing every POST's Content-Type with the
        # stdlib's email package cost a tenth of a non-streamed request's CPU.
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:  # noqa: N802 - Twisted's name
        if message is None:
            # Twisted's table lacks some (429 went out as "429 Unknown Status").
            try:
                message = HTTPStatus(code).phrase.encode("ascii")
            except ValueError:
                message = None
        super().setResponseCode(code, message)

    def processingFailed(self, reason: Failure) -> Failure:  # noqa: N802 - Twisted's name
        log.failure("answering {path} failed", reason, path=self.path.decode("utf-8", "replace"))
        if self.finished or self.channel is None:  # answered already, or the client left
            return reason
        record = record_of(self)
        # Without the front door (a Site of one's own) the record knows no path.
        dialect = record.error_dialect() if record.path else dialect_for(self.path.decode("utf-8", "replace"))
        if self.startedWriting:
            self.write(dialect.stream_line(InternalError().message))
        else:
            body = render_error(self, InternalError(), dialect)
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
        self.finish()
        return reason

    def write(self, data: bytes) -> None:
        # A whole answer (its length known) goes out as one piece: its head and body, gathered
        # by the channel, written at once while the proxy is nearly idle (ops/sendnow.py). A
        # chunked answer, a later write and someone else's channel are written as Twisted does.
        channel = self.channel
        gather = getattr(channel, "gather_writes", None)
        if self.startedWriting or gather is None or self.responseHeaders.getRawHeaders(b"content-length") is None:
            return super().write(data)
        gathered = gather()
        try:
            super().write(data)
        finally:
            whole = gathered()
            if whole:
                write_now(channel.transport, whole)
        return None

    def let_go(self) -> None:
        """Drop what a finished request holds, once nothing reads it again (the front door
        calls this when the request's bookkeeping is done).

        Klein's renderer leaves every request in a reference cycle (its error handler is a
        closure that refers to itself and to the request), so the request's headers, its
        record and Klein's own state for it (the URL map's adapter) lived until the garbage
        collector found them: some thirty objects a request that every young collection
        walked again. Let go here, they are freed at once; the collector's time halved
        (0.80 to 0.40 s over 25,000 non-streamed requests at c64) and a request's CPU fell
        by about 7 % (three pairs side by side)."""
        self.requestHeaders = Headers()
        self.responseHeaders = Headers()
        self._ollama_proxy_record = None
        self.args = self.prepath = self.postpath = None  # type: ignore[assignment]
        self.cookies = []
        self.received_cookies = {}
        self._adapterCache = {}  # Componentized's cache: Klein's request state

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > self.max_body_bytes:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)
