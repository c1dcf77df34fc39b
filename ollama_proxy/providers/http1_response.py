"""The answer the lean HTTP/1.1 client (:mod:`.http1`) hands over: an ``IResponse``
whose body goes to an ``IProtocol`` as Twisted's own client delivers it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

if TYPE_CHECKING:
    from ollama_proxy.providers.http1 import _Connection


@implementer(IResponse, IPushProducer)
class UpstreamResponse:
    """One response: status and headers at once, the body to whoever ``deliverBody`` names.

    It is also the push producer the body's protocol gets as its transport: pausing it
    pauses the connection's reads, stopping it closes the connection."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, connection: _Connection, code: int, phrase: bytes, raw: list[tuple[bytes, bytes]]) -> None:
        self.code = code
        self.phrase = phrase
        self._raw = raw
        self._headers: Headers | None = None
        self.length: Any = UNKNOWN_LENGTH
        self._connection: _Connection | None = connection
        self._protocol: Any = None
        self._pending: list[bytes] = []
        self._end: Failure | None = None  # how the body ended, once it has

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers()
            for name, value in self._raw:
                self._headers.addRawHeader(name, value)
        return self._headers

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        protocol.makeConnection(self)
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            protocol.dataReceived(data)
        if self._end is not None:
            self._protocol = None
            protocol.connectionLost(self._end)

    # -- from the connection ---------------------------------------------------
    def _data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._pending.append(data)

    def _ended(self, reason: Failure) -> None:
        if self._end is not None:
            return
        self._end = reason
        self._connection = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)

    # -- IPushProducer (for the body's protocol) ---------------------------------
    def pauseProducing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def stopProducing(self) -> None:
        """The reader gave up: close the connection (the upstream stops generating)."""
        if self._connection is not None:
            self._connection.stop()

    def abortConnection(self) -> None:
        """As :meth:`stopProducing`, at once (what ``readBody`` calls when it is cancelled)."""
        if self._connection is not None:
            self._connection.abort()
