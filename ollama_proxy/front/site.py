"""The HTTP server side: a Site that bounds what one request may make it hold.

Twisted reads a request body whole before dispatching it. This request class stops
keeping the bytes once the configured limit is passed (so a huge upload cannot
exhaust memory) and marks itself; the API then answers 413. Request headers are
bounded too: past ``max_header_bytes`` the channel answers 431 with a JSON body
and closes. When the resource is mounted in someone else's Site, the API still
checks the body length itself, and the header limit is that Site's.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

DEFAULT_MAX_HEADER_BYTES = 16384


class LimitedRequest(Request):
    """A request that keeps at most ``max_body_bytes`` of its body."""

    max_body_bytes: int = 32 * 1024 * 1024
    body_too_large: bool = False

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


class LimitedChannel(HTTPChannel):
    """An HTTP channel whose header limit comes from its site, answered with JSON."""

    def connectionMade(self) -> None:
        limit = getattr(self.site, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
        self.totalHeadersSize = limit
        # A single header line may be as long as all of them together.
        self.MAX_LENGTH = limit + 2
        super().connectionMade()

    def lineReceived(self, line: bytes) -> None:
        # The same sum HTTPChannel keeps; checked first to answer 431 rather than a bare 400.
        if getattr(self, "_receivedHeaderSize", 0) + len(line) > self.totalHeadersSize:
            self._refuse_headers()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_headers()

    def _refuse_headers(self) -> None:
        body = json.dumps(
            {
                "error": f"request headers are larger than the limit of {self.totalHeadersSize} bytes",
                "type": "headers_too_large",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]
        self.loseConnection()


class ProxySite(Site):
    """The daemon's Site: bounded requests, and no access log of its own (the front
    door writes a richer one)."""

    protocol = LimitedChannel  # type: ignore[assignment]
    max_header_bytes = DEFAULT_MAX_HEADER_BYTES

    def log(self, request: Any) -> None:
        pass

    def set_limits(self, max_body_bytes: int, max_header_bytes: int) -> None:
        """New limits for requests and connections to come (a reload)."""
        self.requestFactory.max_body_bytes = max_body_bytes  # type: ignore[attr-defined]
        self.max_header_bytes = max_header_bytes


def make_site(
    resource: IResource, max_body_bytes: int, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, **kwargs: Any
) -> ProxySite:
    """A Site for ``resource`` whose requests stop storing bodies past the limit."""
    limited = type("LimitedRequest", (LimitedRequest,), {"max_body_bytes": max_body_bytes})
    site = ProxySite(resource, requestFactory=limited, **kwargs)
    site.displayTracebacks = False
    site.max_header_bytes = max_header_bytes
    return site
