"""The hot path: relay an upstream stream to the client, one line or event per upstream event.

Nothing is buffered: each upstream event is translated and written as soon as it
is parsed. The client's socket pushes back on the upstream (a registered
producer), and a client that goes away closes the upstream connection at once.
Until the first line is written the answer can still carry an error status;
after that, an error becomes one last line in the relay's error dialect.
:class:`ChatRelay` frames Ollama's NDJSON, :class:`SSERelay` OpenAI's events,
:class:`NamedEventRelay` the named events of ``/v1/messages`` and ``/v1/responses``.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from ollama_proxy.errors import JSON, NATIVE, OPENAI, ErrorDialect, UpstreamError, UpstreamStreamError
from ollama_proxy.front.record import record_of
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.providers.interfaces import IBatchedUpstreamStream, IProvider, IUpstreamStream
from ollama_proxy.wire.framing import EVENT_STREAM, NDJSON, SSE_DONE, dumps, ndjson, sse_event
from ollama_proxy.wire.timings import Timings

log = Logger()

# Secret-looking strings (bearer tokens, sk-... keys), whatever provider sent them.
SECRET_PATTERNS = Redactor(())


class Translator(Protocol):
    """Upstream (OpenAI) chunks in, a surface's objects out; one per attempt."""

    timings: Timings

    @property
    def prompt_tokens(self) -> int | None:
        """The upstream's count of the prompt's tokens, once it said."""
        ...

    @property
    def completion_tokens(self) -> int | None:
        """The upstream's count of the answer's tokens, once it said."""
        ...

    @property
    def answer_size(self) -> int:
        """Characters gathered so far (content, thinking, tool arguments)."""
        ...

    @property
    def tool_call_count(self) -> int:
        """Tool calls gathered so far (content blocks, for a Messages passthrough)."""
        ...

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The objects one upstream chunk becomes (none, while it gathers)."""
        ...

    # Optional: ``text_writer(frame, write, feed)``, a function that writes what ``feed``
    # makes of a chunk holding only the text it is given, each object framed as
    # ``frame(its type)`` says (:meth:`ChatRelay.text_frame`), without an object in
    # between (see :func:`~ollama_proxy.wire.plain_chunk.text_writer`), or None.

    def close(self) -> list[dict[str, Any]]:
        """The objects still owed when the upstream stream ended."""
        ...

    def final(self) -> dict[str, Any]:
        """The whole answer (non-streamed) or the last object of a stream."""
        ...


# The most a non-streamed answer may gather before it is sent (characters of
# content, thinking and tool arguments): a misbehaving upstream must not grow
# the proxy's memory without bound. Past it the request ends with a 502.
MAX_ANSWER_CHARS = 32 * 1024 * 1024
# And the most tool calls it may hold: an empty call costs no characters but a
# few hundred bytes of memory (200,000 of them grew the proxy from 62 to 265 MB).
MAX_TOOL_CALLS = 1024


class ChatRelay:
    """One chat or generate request, from opening the upstream to the last line.

    The framing (NDJSON here) is in :meth:`_encode`, :meth:`_closing` and
    :attr:`dialect`, so a subclass can relay the same way in another format.
    """

    content_type = NDJSON
    dialect: ErrorDialect = NATIVE
    max_answer_chars = MAX_ANSWER_CHARS
    max_tool_calls = MAX_TOOL_CALLS

    def __init__(self, request: IRequest, provider: IProvider, translator: Translator, clock: Any) -> None:
        # Klein hands every route a twisted.web.server.Request: IRequest declares neither its
        # notifyFinish nor the IConsumer methods the relay registers its producer with.
        self.request = cast(Request, request)
        self.provider = provider
        self.translator = translator
        self._clock = clock
        self.started_output = False
        self.client_gone = False
        self.failed = False
        self.error: str | None = None  # why the stream ended early, once ``failed``
        if not record_of(request).when_gone(self._client_left):
            self.request.notifyFinish().addErrback(self._client_left)
        self._upstream: IUpstreamStream | None = None
        # Lines of the events of one upstream read, written together when it ends:
        # one write (and one send) per read instead of one per token.
        self._pending: list[bytes] | None = None

    def _clean(self, message: str) -> str:
        """An upstream's error text with secrets blotted out: some providers echo
        the credentials they were sent, and this text reaches the client."""
        redact = getattr(self.provider, "redact", None)
        return SECRET_PATTERNS.redact(redact(message) if callable(redact) else message)

    def _client_left(self, _: Any = None) -> None:
        self.client_gone = True
        if self._upstream is not None:
            self._upstream.stopProducing()

    @property
    def _connected(self) -> bool:
        # Without the front door, Klein cancels the handler before our own notifyFinish errback runs, so
        # ask the request too: a disconnect takes its channel away.
        return not self.client_gone and self.request.channel is not None

    def _call_upstream(self, body: dict[str, Any]) -> Any:
        """The provider call that opens the stream (a subclass may speak another API)."""
        return self.provider.open_chat(body)

    async def _open(self, body: dict[str, Any]) -> IUpstreamStream:
        upstream = await self._call_upstream(body)
        self.translator.timings.upstream_headers = self._clock.seconds()
        self._upstream = upstream
        if self.client_gone:
            upstream.stopProducing()
            raise CancelledError()
        return upstream

    async def answer(self, body: dict[str, Any], deadline: float | None = None) -> bytes:
        """Non-streamed: gather the stream, answer one JSON object.

        The whole answer must come within ``deadline`` seconds (``[timeouts]
        response``): the upstream is asked for a stream even here, and a provider
        that trickles tokens would otherwise hold the request, its slot and its
        connection for as long as it likes. Past it the upstream call is cancelled
        (the connection closed) and the client gets a 504.
        """
        gathering = ensureDeferred(self._gathered(body))
        if deadline:
            gathering.addTimeout(deadline, self._clock)
        try:
            await gathering
        except UpstreamStreamError as error:
            raise UpstreamError(self.provider.label, self.provider.type, None, self._clean(error.message)) from None
        except DeadlinePassed:
            raise UpstreamError(
                self.provider.label,
                self.provider.type,
                None,
                f"no complete answer within {deadline:g} seconds",
                status=504,
            ) from None
        self.request.setHeader(b"content-type", JSON)
        return dumps(self.translator.final())

    async def _gathered(self, body: dict[str, Any]) -> None:
        upstream = await self._open(body)
        if IBatchedUpstreamStream.providedBy(upstream):
            await upstream.deliver_batched(self._gather, None, self._gather_sink())
        else:
            await upstream.deliver(self._gather)
        self.translator.close()

    async def stream(self, body: dict[str, Any]) -> None:
        """Streamed: one line per upstream event, then the ``done`` line."""
        upstream = await self._open(body)
        self.request.registerProducer(upstream, True)
        try:
            if IBatchedUpstreamStream.providedBy(upstream):
                self._pending = []
                await upstream.deliver_batched(self._write_all, self._flush, self._text_sink())
                self._flush()
            else:
                await upstream.deliver(self._write_all)
            for obj in self.translator.close():
                self._write(self._encode(obj))
        except UpstreamStreamError as error:
            self._flush()  # what was translated was said: an error after it is a last line
            message = self._clean(error.message)
            if not self.started_output:
                # Nothing was sent yet: the client still gets a real status.
                raise UpstreamError(self.provider.label, self.provider.type, None, message) from None
            self._fail()
            self.error = message
            log.warn("stream ended early: {error}", error=message)
            self._write(self._error_line(message))
            return
        except CancelledError:
            self._flush()
            # Cut by a draining server: a stream that began ends with an error line.
            reason = record_of(self.request).cut_reason
            if reason is None or not self._connected or not self.started_output:
                raise
            self._fail()
            log.warn("stream cut: {reason}", reason=reason)
            self._write(self._error_line(reason))
            return
        finally:
            if self._connected:
                self.request.unregisterProducer()
        self._write(self._closing())

    def _gather(self, chunk: dict[str, Any]) -> None:
        self.translator.feed(chunk)
        self._within_limits()

    def _gather_sink(self) -> Any:
        text_writer = getattr(self.translator, "text_writer", None)
        # A translator gathering a whole answer writes nothing: it has no use for write.
        gather = text_writer(self.text_frame, None, self._feed_text) if text_writer is not None else None
        if gather is None:
            return None
        translator, limit = self.translator, self.max_answer_chars

        def gather_text(text: str) -> None:
            gather(text)
            if translator.answer_size > limit:  # text adds no tool calls: only its size is checked
                self._within_limits()

        return gather_text

    def _within_limits(self) -> None:
        if self.translator.answer_size > self.max_answer_chars:
            # Raised inside the upstream reader's sink: it closes the connection.
            raise UpstreamStreamError(f"the answer is larger than the limit of {self.max_answer_chars} characters")
        if self.translator.tool_call_count > self.max_tool_calls:
            raise UpstreamStreamError(f"the answer holds more than the limit of {self.max_tool_calls} tool calls")

    def _fail(self) -> None:
        """The stream ended with an error line after output began (counted as an error)."""
        self.failed = True
        record_of(self.request).failed = True

    # -- framing ------------------------------------------------------------------
    def _encode(self, obj: dict[str, Any]) -> bytes:
        return ndjson(obj)

    def _closing(self) -> bytes:
        return self._encode(self.translator.final())

    def _error_line(self, message: str) -> bytes:
        return self.dialect.stream_line(message)

    def _write_all(self, chunk: dict[str, Any]) -> None:
        pending = self._pending
        for obj in self.translator.feed(chunk):
            if pending is not None:
                pending.append(self._encode(obj))
            else:
                self._write(self._encode(obj))

    def _text_sink(self) -> Any:
        text_writer = getattr(self.translator, "text_writer", None)
        if text_writer is None or self._pending is None:
            return None
        return text_writer(self.text_frame, self._pending.append, self._feed_text)

    def text_frame(self, kind: str) -> tuple[bytes, bytes]:
        """What :meth:`_encode` writes before and after the JSON of an object of type
        ``kind``: for lines a translator's text writer encodes itself."""
        return b"", b"\n"

    def _feed_text(self, text: str) -> None:
        """A plain chunk's text the translator's text writer leaves to the general path."""
        chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        if self._pending is None:
            self._gather(chunk)
        else:
            self._write_all(chunk)

    def _flush(self) -> None:
        pending = self._pending
        if pending:
            data = b"".join(pending)
            pending.clear()  # the same list: the text sink holds it
            self._write(data)

    def _write(self, line: bytes) -> None:
        if not self._connected:
            return
        if not self.started_output:
            self.started_output = True
            self.request.setHeader(b"content-type", self.content_type)
        self.request.write(line)


class SSERelay(ChatRelay):
    """The relay with OpenAI's framing: ``data:`` events, ``[DONE]``, errors as events."""

    content_type = EVENT_STREAM
    dialect = OPENAI

    def _encode(self, obj: dict[str, Any]) -> bytes:
        return sse_event(obj)

    def text_frame(self, kind: str) -> tuple[bytes, bytes]:
        return b"data: ", b"\n\n"

    def _closing(self) -> bytes:
        chunks = self.translator.closing_chunks()  # type: ignore[attr-defined]
        return b"".join(sse_event(c) for c in chunks) + SSE_DONE


class NamedEventRelay(ChatRelay):
    """Named events (``event: <type>``), no ``[DONE]``: Anthropic's Messages and OpenAI's
    Responses streams. The translator gives the closing events and those that end a
    stream which broke after output began (``closing()``, ``failure(message)``)."""

    content_type = EVENT_STREAM

    def _encode(self, obj: dict[str, Any]) -> bytes:
        return sse_event(obj, str(obj.get("type", "message")))

    def text_frame(self, kind: str) -> tuple[bytes, bytes]:
        return b"event: " + kind.encode() + b"\ndata: ", b"\n\n"

    def _closing(self) -> bytes:
        return b"".join(self._encode(e) for e in self.translator.closing())  # type: ignore[attr-defined]

    def _error_line(self, message: str) -> bytes:
        return b"".join(self._encode(e) for e in self.translator.failure(message))  # type: ignore[attr-defined]
