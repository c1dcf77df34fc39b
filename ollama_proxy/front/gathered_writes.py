"""An HTTP channel that can gather an answer's head and body into one write.

Twisted's ``Request.write`` hands the channel an answer's head (``writeHeaders``) and then
its body (``write``), and the channel hands each to the transport. For a whole answer
(its length known) the proxy writes both as one piece straight to the socket while it is
nearly idle (``LimitedRequest.write``, ``ops/sendnow.py``): the channel keeps them
between :meth:`GatheredWrites.gather_writes` and the returned ``gathered``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers


class GatheredWrites(HTTPChannel):
    """The gathering, for a subclass of ``HTTPChannel`` (the proxy's ``LimitedChannel``)."""

    __slots__ = ("_gathered",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gathered: list[bytes] | None = None
        super().__init__(*args, **kwargs)

    def gather_writes(self) -> Callable[[], bytes]:
        """Keep what the request writes (its head and body) until the returned
        :meth:`gathered` is called."""
        self._gathered = []
        return self.gathered

    def gathered(self) -> bytes:
        """What was written since :meth:`gather_writes`, as one piece; writes go on as usual."""
        pieces, self._gathered = self._gathered, None
        return b"".join(pieces or ())

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:  # noqa: N802
        gathered = self._gathered
        if gathered is None or not isinstance(headers, Headers):
            return super().writeHeaders(version, code, reason, headers)
        # HTTPChannel.writeHeaders' own layout, kept instead of written to the transport.
        gathered += (version, b" ", code, b" ", reason, b"\r\n")
        for name, values in headers.getAllRawHeaders():
            for value in values:
                gathered += (name, b": ", value, b"\r\n")
        gathered.append(b"\r\n")
        return None

    def write(self, data: bytes) -> None:
        if self._gathered is None:
            return super().write(data)
        self._gathered.append(data)
        return None

    def writeSequence(self, iovec: Any) -> None:  # noqa: N802 - Twisted's name
        if self._gathered is None:
            return super().writeSequence(iovec)
        self._gathered.extend(iovec)
        return None
