"""Graceful shutdown: requests in flight are tracked, and a stopping proxy drains them.

Twisted's ``MultiService.stopService`` stops everything at once; a proxy in the
middle of paid streams must not. On shutdown the front door refuses new
requests (503), the requests already accepted get until the drain deadline to
finish, and whatever is still running then is cut: a stream gets a last
``{"error": ...}`` line, a request that has not answered yet gets a 503. Nothing
accepted is dropped without an answer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.errors import ServiceUnavailable, render_error
from ollama_proxy.front.record import RequestRecord, record_of

log = Logger()

SHUTTING_DOWN = "the server is shutting down"
# After the deadline, cut requests get this long to write their last line.
CUT_GRACE_SECONDS = 5.0


class Lifecycle:
    """Requests in flight, and whether the proxy still takes new ones."""

    def __init__(self, clock: IReactorTime, drain_timeout: float = 30.0) -> None:
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.draining = False
        self._in_flight: dict[int, tuple[Any, RequestRecord]] = {}
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def streams(self, client: str | None = None) -> int:
        """Streamed answers in flight (of ``client``, when given): the one count of them."""
        return sum(
            1
            for _, record in self._in_flight.values()
            if record.stream and (client is None or record.client_key == client)
        )

    def generations(self, client: str | None = None) -> int:
        """Requests in flight that hold an upstream generation, streamed or not (of ``client``, when given)."""
        return sum(
            1
            for _, record in self._in_flight.values()
            if record.generating and (client is None or record.client_key == client)
        )

    def records(self) -> list[RequestRecord]:
        return [record for _, record in self._in_flight.values()]

    def requests(self) -> list[Any]:
        """The requests in flight (diagnostics: what a slow client makes the proxy hold)."""
        return [request for request, _ in self._in_flight.values()]

    # -- tracking ------------------------------------------------------------------
    def admit(self, request: Any, record: RequestRecord) -> None:
        """Count ``request`` as in flight until :meth:`release` (the front door's, when it
        finishes or its client leaves: one finish callback per request, not one here too)."""
        self._in_flight[id(record)] = (request, record)

    def release(self, record: RequestRecord) -> None:
        """``record``'s request finished (or was never admitted)."""
        if self._in_flight.pop(id(record), None) is None:
            return
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def track_handler(self, request: Any, handler: Deferred[Any]) -> Deferred[Any]:
        """Make a route's Deferred cuttable; a cut before any output becomes a 503."""
        record = record_of(request)
        record.on_cut(handler.cancel)

        def cut_to_503(failure: Failure) -> Failure:
            # Once cut, whatever the handler failed with (a cancelled upstream call
            # surfaces as CancelledError or as a lost connection) is the cut's doing.
            if record.cut_reason:
                return Failure(ServiceUnavailable(record.cut_reason))
            return failure

        return handler.addErrback(cut_to_503)

    # -- draining ------------------------------------------------------------------
    def when_idle(self) -> Deferred[None]:
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    async def drain(self) -> None:
        """Refuse new requests, wait for those in flight up to the deadline, cut the rest."""
        self.draining = True
        if not self._in_flight:
            return
        log.info(
            "draining {count} requests in flight (deadline {deadline:g} s)",
            count=self.in_flight,
            deadline=self.drain_timeout,
        )
        if await self._wait(self.drain_timeout):
            log.info("all requests finished; shutting down")
            return
        self.cut_all(f"{SHUTTING_DOWN}: drain deadline of {self.drain_timeout:g} s passed")
        if await self._wait(CUT_GRACE_SECONDS):
            return
        log.warn("{count} requests did not end after being cut; closing their connections", count=self.in_flight)
        for request, _ in list(self._in_flight.values()):
            transport = getattr(getattr(request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()
        # An aborted connection is lost a reactor turn later, and its request's bookkeeping
        # (the ledger row of what its stream used) runs after that: the stop waits for it,
        # or the ledger would close first and lose the row.
        if not await self._wait(CUT_GRACE_SECONDS):
            log.warn("{count} requests still in flight after their connections were closed", count=self.in_flight)

    async def _wait(self, seconds: float) -> bool:
        """True when nothing is in flight any more, False when ``seconds`` passed first."""
        try:
            await self.when_idle().addTimeout(seconds, self.clock)
        except defer.TimeoutError:
            return False
        return True

    def cut_all(self, reason: str = SHUTTING_DOWN) -> int:
        """Cut every request in flight now; returns how many there were."""
        # A finished request whose bookkeeping is still queued (ops/later.py) is not cut.
        entries = [entry for entry in self._in_flight.values() if entry[1].finished is None]
        if entries:
            log.warn("cutting {count} requests: {reason}", count=len(entries), reason=reason)
        for request, record in entries:
            if not record.cut(reason):
                _answer_unavailable(request, record, reason)
        return len(entries)


def _answer_unavailable(request: Any, record: RequestRecord, reason: str) -> None:
    """A request with no handler to cut: answer 503 if nothing was sent, else hang up."""
    if getattr(request, "finished", False):
        return
    if not getattr(request, "startedWriting", False):
        body = render_error(request, ServiceUnavailable(reason), record.error_dialect())
        request.setHeader(b"content-length", b"%d" % len(body))  # a whole answer, as every other
        request.write(body)
        request.finish()
    else:
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if transport is not None:
            transport.loseConnection()
