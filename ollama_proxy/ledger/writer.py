"""Rows reach the database in batches, off the hot path.

A finished request only appends its row to an in-memory queue. The writer
commits the queue in batches on its timer (or sooner when a batch is full). When
the database is unreachable the rows wait, up to ``max_queue`` of them; past that
the oldest are dropped and counted. A client request never waits for the
database and never fails because of it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.ledger.limits import Meter
from ollama_proxy.ledger.rows import UsageRow
from ollama_proxy.ledger.store import LedgerStore, Snapshot

log = Logger()

DEFAULT_MAX_QUEUE = 100_000
DEFAULT_BATCH = 500


class LedgerWriter:
    """Queues rows and writes them; one database transaction at a time."""

    def __init__(
        self,
        store: LedgerStore,
        meter: Meter,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        self.store = store
        self.meter = meter
        self.max_queue = max(1, max_queue)
        self.batch_size = max(1, batch_size)
        self.queue: deque[UsageRow] = deque()
        self.written = 0
        self.dropped = 0
        self.migrated = False
        self.available = True
        self._batch: list[UsageRow] = []
        self._busy: Deferred[Any] | None = None
        self._dropped_in_outage = 0

    @property
    def pending(self) -> int:
        """Rows not yet committed (queued, or in the transaction under way)."""
        return len(self.queue) + len(self._batch)

    def add(self, row: UsageRow) -> None:
        """Queue ``row`` (never blocks, never raises)."""
        if self.pending >= self.max_queue and self.queue:
            oldest = self.queue.popleft()
            self.meter.forget((oldest,))
            self.dropped += 1
            self._dropped_in_outage += 1
            if self._dropped_in_outage == 1:
                log.error(
                    "ledger queue full ({limit} rows): dropping the oldest rows until the database answers",
                    limit=self.max_queue,
                )
        self.queue.append(row)
        self.meter.queued(row)
        if len(self.queue) >= self.batch_size and self._busy is None and self.available:
            self.flush()

    def flush(self) -> Deferred[bool]:
        """Write one batch (or, with nothing queued, read the limits' totals back).
        Fires True when the database took it, False when it failed (rows kept).
        With a transaction under way, the batch goes after it: rows queued by now
        were not in that one."""
        if self._busy is not None:
            after = _chain(self._busy)
            after.addCallback(lambda ok: self.flush() if ok else False)
            return after
        if self.migrated and not self.queue and not self.meter.enabled:
            return succeed(True)  # nothing to write, no limits to read totals for
        d: Deferred[Any] = succeed(None)
        if not self.migrated:
            d = self.store.migrate()
            d.addCallback(self._migrated)
        # Busy before the callbacks run: they may run at once and end the busy spell.
        self._busy = d
        d.addCallback(lambda _: self._write())
        d.addErrback(self._failed)
        d.addBoth(self._idle)
        return _chain(d)

    async def drain(self) -> bool:
        """Write everything queued (at shutdown); False if the database failed first."""
        while self.pending:
            if not await self.flush():
                log.error("ledger: {count} rows could not be written before the stop", count=self.pending)
                return False
        return True

    # -- one transaction ------------------------------------------------------------
    def _migrated(self, version: int) -> None:
        self.migrated = True
        log.info("ledger ready: {where} (schema version {version})", where=self.store.describe(), version=version)

    def _write(self) -> Deferred[Any]:
        size = min(self.batch_size, len(self.queue))
        self._batch = [self.queue.popleft() for _ in range(size)]
        d = self.store.write(self._batch, self.meter.watch())
        d.addCallback(self._committed)
        return d

    def _committed(self, snapshot: Snapshot) -> bool:
        batch, self._batch = self._batch, []
        self.meter.committed(batch, snapshot)
        self.written += len(batch)
        if not self.available:
            self.available = True
            log.info(
                "ledger database available again; {pending} queued rows being written, {dropped} dropped meanwhile",
                pending=self.pending + len(batch),
                dropped=self._dropped_in_outage,
            )
            self._dropped_in_outage = 0
        return True

    def _failed(self, failure: Failure) -> bool:
        # The batch goes back to the front, in order; the next tick tries again.
        self.queue.extendleft(reversed(self._batch))
        self._batch = []
        if self.available:
            self.available = False
            log.error(
                "ledger database unavailable ({error}); keeping up to {limit} rows in memory until it answers",
                error=_reason(failure),
                limit=self.max_queue,
            )
        return False

    def _idle(self, result: Any) -> Any:
        self._busy = None
        # A full batch waiting behind this one goes at once.
        if result is True and len(self.queue) >= self.batch_size:
            self.flush()
        return result


def _chain(d: Deferred[Any]) -> Deferred[bool]:
    """A Deferred that fires with ``d``'s result without taking it from ``d``."""
    out: Deferred[bool] = Deferred()

    def relay(result: Any) -> Any:
        out.callback(result)
        return result

    d.addBoth(relay)
    return out


def _reason(failure: Failure) -> str:
    text = str(failure.value).strip().splitlines()
    return f"{type(failure.value).__name__}: {text[0] if text else ''}"
