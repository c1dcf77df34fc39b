"""What the proxy learns about one request while answering it.

The front door opens a :class:`RequestRecord` for every request; the route and
the pipeline fill in the surface, the model, the provider and upstream model,
tokens, timings and whether a stream failed, as they learn them. When the request
finishes, the front door (:meth:`~ollama_proxy.front.door.Gate.finished`, the one
place a finished request is observed) hands the record to its observers: the
access line, the Prometheus metrics and the JSON statistics. The record also
carries the hook that lets a draining server cut the request, and is how the
lifecycle counts requests and streams in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import ErrorDialect, dialect_for

_ATTRIBUTE = "_ollama_proxy_record"


@dataclass(slots=True)
class RequestRecord:
    """One request, from arrival to its last byte. Times are reactor seconds.

    Slotted: one is held for every request in flight (10,000 open streams, 10,000 records)."""

    request_id: str = ""
    method: str = ""
    path: str = ""
    client: str = ""
    started: float = 0.0
    endpoint: str = "other"
    model: str | None = None  # the name the client asked for
    provider: str | None = None  # the provider that answered (the last one tried)
    upstream_model: str | None = None  # the model id that provider was asked for
    principal: Any = None
    stream: bool = False
    # Holds an upstream generation (streamed to the client or gathered): what the stream limits count.
    generating: bool = False
    status: int | None = None
    failed: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    first_token: float | None = None
    upstream_seconds: float = 0.0
    finished: float | None = None
    cut_reason: str | None = None
    dialect: ErrorDialect | None = None  # the route's, once one took the request
    # For the usage ledger: the answering model's published price per (prompt,
    # completion) token, the cost the provider reported, and the ledger's admission
    # (set when the request was counted against its token's limits).
    pricing: tuple[float, float] | None = None
    cost: float | None = None
    admission: Any = None
    _cancel: Callable[[], None] | None = field(default=None, repr=False)
    _on_finish: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # Set by the front door, which tells the record when its client left (see when_gone).
    watched: bool = field(default=False, repr=False)
    _on_gone: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else max(0.0, self.finished - self.started)

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first token the upstream produced."""
        return None if self.first_token is None else max(0.0, self.first_token - self.started)

    @property
    def overhead(self) -> float | None:
        """Seconds the proxy itself spent: the whole answer less the upstream's part."""
        duration = self.duration
        return None if duration is None else max(0.0, duration - self.upstream_seconds)

    @property
    def surface(self) -> str | None:
        """Which API took the request (``native``, ``openai``, ...); None when no route did."""
        return None if self.dialect is None else self.dialect.name

    @property
    def client_key(self) -> str:
        """Who the request counts against: its token's name with auth, else its address."""
        return self.principal.name if self.principal is not None else self.client

    def error_dialect(self) -> ErrorDialect:
        """The dialect errors about this request are answered in: the route's, else the path's."""
        return self.dialect or dialect_for(self.path)

    def add_tokens(self, prompt: int | None, completion: int | None) -> None:
        if prompt is not None:
            self.tokens_in = (self.tokens_in or 0) + prompt
        if completion is not None:
            self.tokens_out = (self.tokens_out or 0) + completion

    def on_cut(self, cancel: Callable[[], None]) -> None:
        """How to end this request early (the handler's Deferred's ``cancel``)."""
        self._cancel = cancel

    def cut(self, reason: str) -> bool:
        """End the request early because the server stops; False if it has no handler to cut."""
        if self.cut_reason is None:
            self.cut_reason = reason
        if self._cancel is None:
            return False
        cancel, self._cancel = self._cancel, None
        cancel()
        return True

    def when_gone(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` run as soon as the client leaves before its answer is complete
        (the relay's, which stops the upstream; a later one replaces it). False when no
        front door watches this request: the caller must watch it itself. One callback on
        the door's watch, instead of a Deferred of its own per request (0.56 KB a stream)."""
        if not self.watched:
            return False
        self._on_gone = callback
        return True

    def client_gone(self, call: bool = True) -> None:
        """The request finished (the front door's call): ``call``, its client left before
        its answer was complete, and the callback runs; either way it is let go."""
        callback, self._on_gone = self._on_gone, None
        if call and callback is not None:
            callback()

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the request is finished (slots, counters)."""
        self._on_finish.append(callback)

    def run_finish_callbacks(self) -> None:
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback()


def record_of(request: Any) -> RequestRecord:
    """The request's record; a blank one is attached if the front door did not open one
    (the Klein app served without it), so routes never need to check."""
    record = getattr(request, _ATTRIBUTE, None)
    if record is None:
        record = RequestRecord()
        setattr(request, _ATTRIBUTE, record)
    return record


def record_translation(request: Any, translator: Any, clock: Any, stream: bool) -> None:
    """Have the request's record take tokens and timings from ``translator`` when the
    request ends (the access line and the metrics are written then)."""
    record = record_of(request)
    record.stream = stream

    def note() -> None:
        timings = translator.timings
        end = timings.finished if timings.finished is not None else clock.seconds()
        record.upstream_seconds += max(0.0, end - timings.started)
        record.first_token = timings.first_token
        record.add_tokens(translator.prompt_tokens, translator.completion_tokens)
        cost = getattr(translator, "cost", None)
        if cost is not None:
            record.cost = cost

    record.when_finished(note)


def attach(request: Any, record: RequestRecord) -> RequestRecord:
    setattr(request, _ATTRIBUTE, record)
    return record
