"""The ledger as the request path sees it: admit before dispatch, record at the end.

:meth:`UsageLedger.admit` runs when a route resolves a model (before anything
goes upstream) and raises :class:`~ollama_proxy.ledger.limits.LimitExceeded` for a
token over a limit. :meth:`UsageLedger.observe` runs when the request finished
(the front door calls it with the request's record, after the access line's
data is complete) and queues its row; the writer commits it in the background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ollama_proxy.config.settings import Config
from ollama_proxy.errors import ServiceUnavailable
from ollama_proxy.ledger.interfaces import IUsageLedger
from ollama_proxy.ledger.limits import LimitExceeded, Meter, TokenLimits
from ollama_proxy.ledger.metrics import UsageMetrics
from ollama_proxy.ledger.pricing import Prices
from ollama_proxy.ledger.query import UsageQuery
from ollama_proxy.ledger.rows import ANONYMOUS, UsageRow
from ollama_proxy.ledger.service import LedgerService
from ollama_proxy.ledger.store import LedgerStore

log = Logger()


def token_name(record: Any) -> str:
    """Whom a request counts for: its client token's name, or ``anonymous``."""
    principal = record.principal
    return principal.name if principal is not None else ANONYMOUS


def outcome_of(record: Any) -> str:
    """``ok``, ``error`` (an error answer, or a stream that broke) or ``cancelled``
    (the client left, or the server cut it while stopping)."""
    if record.status == 499 or record.cut_reason is not None:
        return "cancelled"
    if record.failed or (record.status or 0) >= 400:
        return "error"
    return "ok"


@implementer(IUsageLedger)
class UsageLedger:
    """Limits, pricing, metrics and the ledger's service for one proxy."""

    def __init__(self, config: Config, reactor: Any, clock: Any, registry: CollectorRegistry) -> None:
        settings = config.ledger
        if settings is None or not settings.url:
            raise ValueError("the configuration has no [ledger]")
        self.clock = clock
        self.store = LedgerStore(settings.url, reactor)
        self.meter = Meter(clock)
        self.service = LedgerService(
            self.store,
            self.meter,
            clock,
            flush_interval=settings.flush_interval,
            keep_days=settings.keep_days,
            max_queue=settings.max_queue,
        )
        self.metrics = UsageMetrics(registry, settings.currency)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """New limits and prices (SIGHUP); the database stays the one started with."""
        auth = config.ops.auth
        limits = {token.name: token.limits for token in auth.tokens}
        settings = config.ledger
        currency = settings.currency if settings is not None else self.meter.currency
        was_enabled = self.meter.enabled
        self.meter.configure(limits, auth.default_limits or TokenLimits(), currency)
        if self.meter.enabled and not was_enabled and self.service.running:
            # Limits just appeared: read the shared totals now rather than at the next tick.
            self.service.writer.flush()
        self.prices = Prices(config.prices)
        if settings is not None and settings.url != self.store.url:
            log.warn("the ledger's url changed; it takes effect at the next restart")
        if settings is not None:
            self.service.keep_days = settings.keep_days

    # -- the request path -----------------------------------------------------------
    def admit(self, record: Any) -> None:
        """Count the request against its token's limits, or raise :class:`LimitExceeded`."""
        token = token_name(record)
        try:
            record.admission = self.meter.admit(token)
        except LimitExceeded as refused:
            self.metrics.refusals.labels(token, refused.limit).inc()
            raise

    def observe(self, record: Any) -> None:
        """The request finished: queue its row (only for requests :meth:`admit` let in)."""
        admission = record.admission
        if admission is None:
            return
        record.admission = None
        self.meter.release(admission)
        cost, source = self.prices.cost(record)
        row = UsageRow(
            ts=admission.ts,
            token=admission.token,
            model=record.model or "",
            surface=record.endpoint,
            request_id=record.request_id,
            provider=record.provider,
            upstream_model=record.upstream_model,
            status=record.status,
            outcome=outcome_of(record),
            prompt_tokens=record.tokens_in,
            completion_tokens=record.tokens_out,
            cost=cost,
            cost_source=source,
            duration=record.duration or 0.0,
            streamed=record.stream,
        )
        self.metrics.observe(row)
        self.service.record(row)

    # -- reading --------------------------------------------------------------------
    async def report(self, args: Mapping[bytes, Sequence[bytes]], principal: Any) -> dict[str, Any]:
        """``GET /api/usage``: an admin token (or anyone, with auth off) reads every
        token's rows; any other token only its own, whatever ``token`` it asks for."""
        query = UsageQuery.parse(
            {k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs] for k, vs in args.items()}
        )
        if principal is not None and not principal.admin:
            query = query.restricted_to(principal.name)
        try:
            rows = await self.usage(query)
        except Exception as error:  # noqa: BLE001 - the database's own errors are many
            log.warn("GET /api/usage: the ledger's database failed: {error}", error=type(error).__name__)
            raise ServiceUnavailable("the usage ledger's database is unavailable; try again later") from None
        return {
            "currency": self.meter.currency,
            "filters": query.describe(),
            "usage": rows,
            # Rows finished but not yet in the database (it was unreachable): not above.
            "pending_rows": self.service.writer.pending,
        }

    def usage(self, query: UsageQuery) -> Deferred[list[dict[str, Any]]]:
        """The rows of ``GET /api/usage`` (queued rows are written first, so a
        client reads its own requests back)."""
        d: Deferred[Any] = self.service.writer.flush()
        d.addCallback(lambda _: self.store.usage(query))
        return d
