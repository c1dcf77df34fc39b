"""The HTTP server side: a Site whose requests refuse to store oversized bodies.

Twisted reads a request body whole before dispatching it. This request class stops
keeping the bytes once the configured limit is passed (so a huge upload cannot
exhaust memory) and marks itself; the API then answers 413. When the resource is
mounted in someone else's Site, the API still checks the body length itself.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site


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


def make_site(resource: IResource, max_body_bytes: int, **kwargs: Any) -> Site:
    """A Site for ``resource`` whose requests stop storing bodies past the limit."""
    limited = type("LimitedRequest", (LimitedRequest,), {"max_body_bytes": max_body_bytes})
    site = Site(resource, requestFactory=limited, **kwargs)
    site.displayTracebacks = False
    return site
