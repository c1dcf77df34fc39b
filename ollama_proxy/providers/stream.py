"""Reading a streamed upstream answer: SSE bytes in, JSON events out, as they arrive.

The body is never buffered: each TCP read is parsed at once and each complete
event handed on. An idle timer ends a stream that goes silent; cancelling the
result closes the connection so the provider stops generating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.ops.later import later
from ollama_proxy.providers.interfaces import IBatchedUpstreamStream
from ollama_proxy.providers.sse import MAX_EVENT_BYTES, SSEEvent, SSEParser, SSEProtocolError
from ollama_proxy.wire.fastjson import loads
from ollama_proxy.wire.plain_chunk import plain_content

EventSink = Callable[[dict[str, Any]], None]
TextSink = Callable[[str], None]
# Turns one upstream JSON object into the OpenAI chunks it means (maybe none):
# how providers with another wire format (Anthropic, Ollama) reuse this reader.
Decoder = Callable[[dict[str, Any]], Sequence[dict[str, Any]]]


class BodyParser(TypingProtocol):
    """Bytes in, each record's ``data`` string out (SSE events, NDJSON lines)."""

    def feed_data(self, chunk: bytes) -> Sequence[str]: ...

    def close(self) -> Sequence[SSEEvent]: ...


class _Discarding(Protocol):
    """A body nobody will read: stopped as soon as it is handed over (the connection closes)."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        IPushProducer(transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass


class _SSEBodyReader(Protocol):
    """Receives the response body from Twisted's HTTP client."""

    def __init__(self, stream: SSEStream) -> None:
        self._stream: SSEStream | None = stream

    def dataReceived(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream._data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        stream, self._stream = self._stream, None
        if stream is not None:
            stream._lost(reason)


@implementer(IBatchedUpstreamStream)
class SSEStream:
    """An upstream response whose body is an SSE stream of JSON events."""

    def __init__(
        self,
        response: IResponse,
        clock: IReactorTime,
        idle_timeout: float,
        label: str,
        *,
        parser: BodyParser | None = None,
        decode: Decoder | None = None,
    ) -> None:
        self._response = response
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._label = label
        self._parser: BodyParser = parser if parser is not None else SSEParser()
        self._decode = decode
        self._sink: EventSink | None = None
        self._batch_end: Callable[[], None] | None = None
        self._text: TextSink | None = None
        self._plain: Callable[[str], str | None] = plain_content
        self._deadline = 0.0
        self._reader: _SSEBodyReader | None = None
        self._idle: IDelayedCall | None = None
        self._finished: Deferred[None] | None = None
        self._saw_done = False
        self._saw_finish = False
        self._stopped = False
        self._paused = False
        self._pending: list[bytes] = []

    # -- IUpstreamStream ----------------------------------------------------
    def deliver(self, on_event: EventSink) -> Deferred[None]:
        return self.deliver_batched(on_event, None)

    def deliver_batched(
        self, on_event: EventSink, on_batch_end: Callable[[], None] | None, on_text: TextSink | None = None
    ) -> Deferred[None]:
        self._sink = on_event
        self._batch_end = on_batch_end
        # OpenAI's chunks are read by plain_content; another wire format's decoder may
        # know its own plain events (its ``plain``: the text, or None), or have it all decoded.
        plain = plain_content if self._decode is None else getattr(self._decode, "plain", None)
        if plain is not None:
            self._plain = plain
        self._text = on_text if plain is not None else None
        self._finished = Deferred(canceller=lambda _: self.stopProducing())
        self._reader = _SSEBodyReader(self)
        self._arm()
        self._response.deliverBody(self._reader)
        return self._finished

    def pauseProducing(self) -> None:
        if self._transport is not None and not self._stopped:
            # A slow client, not a stalled provider: no idle clock while paused.
            self._paused = True
            self._disarm()
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._transport is not None and not self._stopped:
            self._paused = False
            self._arm()
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """Close the connection: it will not go back to the pool."""
        if self._stopped:
            return
        self._stopped = True
        self._disarm()
        if self._transport is not None:
            self._transport.stopProducing()
        elif self._reader is None:
            # Stopped before anyone read it (its client left while the headers came): the
            # body would pile up unread for as long as the upstream generates.
            self._response.deliverBody(_Discarding())

    # -- internals ------------------------------------------------------------
    @property
    def _transport(self) -> Any:
        return getattr(self._reader, "transport", None)

    def _arm(self) -> None:
        # Every read moves the deadline; the timer itself is only rescheduled when it
        # fires early (cancelling and re-creating it per read cost more than the read).
        self._deadline = self._clock.seconds() + self._idle_timeout
        if self._idle is None:
            self._idle = self._clock.callLater(self._idle_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timed_out(self) -> None:
        self._idle = None
        remaining = self._deadline - self._clock.seconds()
        if remaining > 0:
            self._idle = self._clock.callLater(remaining, self._timed_out)
            return
        self._fail(UpstreamStreamError(f"{self._label} stream stalled: no data for {self._idle_timeout:g} seconds"))

    def _fail(self, error: Exception) -> None:
        finished = self._finished
        self.stopProducing()
        if finished is not None and not finished.called:
            finished.errback(Failure(error))

    def _data(self, received: bytes) -> None:
        if self._stopped or (self._finished is not None and self._finished.called):
            return  # cut, or complete at [DONE]: whatever trails is not ours to time
        if not self._paused:
            self._arm()
        try:
            events = self._parser.feed_data(received)
        except SSEProtocolError as error:
            self._fail(UpstreamStreamError(f"{self._label} sent an unreadable stream: {error}"))
            return
        text_sink, plain = self._text, self._plain
        for data in events:
            if self._stopped:
                return
            if text_sink is not None:
                # Most events: a plain chunk's text, straight to the sink.
                text = plain(data)
                if text is not None:
                    try:
                        text_sink(text)
                    except Exception as error:  # noqa: BLE001 - the sink failed: end the stream, keep the cause
                        self._fail(error)
                    continue
            self._event(data)
        if events and self._batch_end is not None and not self._stopped:
            self._batch_end()

    def _event(self, data: str) -> None:
        if data.strip() == "[DONE]":
            # The answer is complete even if the server keeps the body open a while.
            self._saw_done = True
            self._disarm()
            if self._finished is not None and not self._finished.called:
                self._finished.callback(None)
            return
        try:
            obj = loads(data)
        except ValueError:
            self._fail(UpstreamStreamError(f"{self._label} sent an event that is not JSON"))
            return
        if not isinstance(obj, dict):
            return
        try:
            chunks = self._decode(obj) if self._decode is not None else (obj,)
        except UpstreamStreamError as error:
            self._fail(error)
            return
        for chunk in chunks:
            if self._stopped:
                return
            self._emit(chunk)

    def _emit(self, obj: dict[str, Any]) -> None:
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._saw_finish = True
        assert self._sink is not None
        try:
            self._sink(obj)
        except UpstreamStreamError as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001 - the sink failed: end the stream, keep the cause
            self._fail(error)

    def _cancelled(self) -> None:
        if self._finished is not None and not self._finished.called:
            self._finished.errback(Failure(CancelledError()))

    def _lost(self, reason: Failure | None) -> None:
        try:
            self._end(reason)
        finally:
            # The body is over: nothing more comes for the sinks. Let go of them (and the
            # reader let go of this stream), so the relay, this stream and its reader are
            # freed by reference counting as the request ends, not by the cyclic garbage
            # collector (each request left this cycle behind; collecting them was a tenth
            # of the daemon's CPU with the request's other cycles).
            self._sink = self._text = self._batch_end = None

    def _end(self, reason: Failure | None) -> None:
        self._disarm()
        finished = self._finished
        if finished is None or finished.called:
            return
        clean = reason is None or reason.check(ResponseDone, PotentialDataLoss)
        if self._stopped and not clean:
            # Stopped by us (its client left, a cancel): whoever stopped it cancels
            # what waits on it, and unwinding that is costly. Done here, a burst of
            # such closes would each wait for the one before's unwinding; queued,
            # all of them are closed first. What is left in the parser is
            # half an event cut by our own close, not the upstream's error.
            later(self._clock).call(self._cancelled)
            return
        for event in self._parser.close():
            if finished.called:
                return
            self._event(event.data)
        if finished.called:
            return
        if clean and (self._saw_done or self._saw_finish):
            finished.callback(None)
        else:
            finished.errback(Failure(UpstreamStreamError(f"{self._label} closed the stream before it was complete")))


class NDJSONParser:
    """Newline-delimited JSON (Ollama's stream format) as records for :class:`SSEStream`."""

    def __init__(self, max_line_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        self._max_line = max_line_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The lines ``chunk`` completed, as events."""
        return [SSEEvent(line) for line in self.feed_data(chunk)]

    def feed_data(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completed (blank ones left out)."""
        buffer = self._buffer
        buffer += chunk
        events: list[str] = []
        start = 0
        while True:
            end = buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                events.append(line.decode("utf-8", errors="replace"))
        if start:
            del buffer[:start]
        self._scanned = len(buffer)  # searched already: a long line is not searched again
        if len(buffer) > self._max_line:
            raise SSEProtocolError(f"a line exceeded {self._max_line} bytes")
        return events

    def close(self) -> list[SSEEvent]:
        rest, self._buffer, self._scanned = bytes(self._buffer), bytearray(), 0
        return [SSEEvent(rest.decode("utf-8", errors="replace"))] if rest.strip() else []


class BodyTimeout(Exception):
    """A whole (non-streamed) body did not arrive in time."""


class BodyTooLarge(Exception):
    """A body passed the size it may have."""


class _BodyReader(Protocol):
    def __init__(self, limit: int, truncate: bool) -> None:
        self.finished: Deferred[bytes] = Deferred(canceller=lambda _: self.abort())
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._truncate = truncate

    def abort(self) -> None:
        if self.transport is not None:
            # A response body's transport is a push producer: stopping it closes the connection.
            IPushProducer(self.transport).stopProducing()

    def fail(self, error: Exception) -> None:
        if not self.finished.called:
            self.finished.errback(Failure(error))
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size > self._limit:
            if self._truncate:
                self.finished.callback(b"".join(self._parts)[: self._limit])
                self.abort()
            else:
                self.fail(BodyTooLarge(f"the answer is larger than {self._limit} bytes"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._parts))
        else:
            self.finished.errback(reason)


def read_body(
    response: IResponse, clock: IReactorTime, timeout: float, limit: int, truncate: bool = False
) -> Deferred[bytes]:
    """A whole response body, within ``timeout`` seconds and ``limit`` bytes.

    Unlike ``treq.content`` it can be cancelled, and it gives up on a body that
    stalls (closing the connection) instead of waiting for ever. With
    ``truncate`` a longer body is cut at ``limit`` rather than refused.
    """
    reader = _BodyReader(limit, truncate)
    response.deliverBody(reader)

    def timed_out(result: Any, timeout: float) -> Any:
        # Cancelling closed the connection; the reason is the deadline.
        if not isinstance(result, Failure):
            return result
        return Failure(BodyTimeout(f"the answer did not arrive within {timeout:g} seconds"))

    return reader.finished.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
