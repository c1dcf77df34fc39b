"""The ledger in the service tree: the writer's timer, retention, the final flush."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from ollama_proxy.ledger.limits import Meter
from ollama_proxy.ledger.rows import UsageRow
from ollama_proxy.ledger.store import LedgerStore
from ollama_proxy.ledger.windows import DAY
from ollama_proxy.ledger.writer import DEFAULT_MAX_QUEUE, LedgerWriter

log = Logger()

PRUNE_INTERVAL = 3600.0


class LedgerService(MultiService):
    """Owns the store, the meter and the writer.

    Timers run on ``clock``: the writer flushes every ``flush_interval`` seconds
    (which also refreshes the limits' view of the other workers' usage), and rows
    older than ``keep_days`` (0: keep everything) are deleted every hour. Stopping
    flushes the queue (after the proxy drained its requests, so their rows are in
    it), then closes the pool.
    """

    def __init__(
        self,
        store: LedgerStore,
        meter: Meter,
        clock: Any,
        *,
        flush_interval: float = 1.0,
        keep_days: float = 0,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        super().__init__()
        self.store = store
        self.meter = meter
        self.clock = clock
        self.keep_days = keep_days
        # The retention run under way, if any (the stop and the tests wait for it).
        self.pruning: Deferred[int] | None = None
        self.writer = LedgerWriter(store, meter, max_queue=max_queue)
        self.flush_timer = TimerService(flush_interval, self.writer.flush)
        self.flush_timer.clock = clock
        self.flush_timer.setName("ledger-flush")
        self.flush_timer.setServiceParent(self)
        self.prune_timer = TimerService(PRUNE_INTERVAL, self.prune)
        self.prune_timer.clock = clock
        self.prune_timer.setName("ledger-retention")
        self.prune_timer.setServiceParent(self)

    def record(self, row: UsageRow) -> None:
        """Add ``row`` to the ledger (queued; written on the next flush)."""
        self.writer.add(row)

    def prune(self) -> Deferred[int]:
        """Delete rows older than ``keep_days``; fires with how many (0 on failure)."""
        now = self.clock.seconds()
        before = now - self.keep_days * DAY if self.keep_days > 0 else None
        if not self.writer.migrated:
            return succeed(0)  # no tables yet; the next tick tries again
        d = self.store.prune(before, now)

        def done(count: int) -> int:
            if count:
                log.info(
                    "ledger retention: deleted {count} rows older than {days} days", count=count, days=self.keep_days
                )
            return count

        def failed(failure: Any) -> int:
            log.warn("ledger retention skipped: {error}", error=_first_line(failure.value))
            return 0

        d.addCallbacks(done, failed)
        self.pruning = d
        return d

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # The timers first (each waits for its run under way), then the last rows.
        await MultiService.stopService(self)
        try:
            await self.writer.drain()
        finally:
            self.store.close()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
