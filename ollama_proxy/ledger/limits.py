"""Per-token rate limits and budgets, checked before anything goes upstream.

A :class:`Meter` knows each token's totals in the current windows: the
database's totals as of this process's last flush (which includes every other
worker's and replica's committed rows), plus what this process admitted or
queued since. Over a limit, :meth:`Meter.admit` raises :class:`LimitExceeded`
(429, ``Retry-After`` = the window's end). Nothing is ever cut once admitted: a
stream's tokens and cost count when it ends.
"""

# TokenLimits (re-exported here) is declared with the configuration's schema.

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ollama_proxy.config.schema import TokenLimits
from ollama_proxy.errors import ProxyError
from ollama_proxy.ledger.rows import UsageRow
from ollama_proxy.ledger.store import Snapshot, WindowKey, window_totals
from ollama_proxy.ledger.windows import PERIODS, Period, starts, window


class LimitExceeded(ProxyError):
    """A client token is over one of its limits until ``retry_after`` seconds pass."""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int, limit: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit


@dataclass(frozen=True)
class Admission:
    """A request counted against its token's request limit until it is released."""

    token: str
    ts: float


class Meter:
    """Usage per token and window as this process knows it, and the limits on it."""

    def __init__(
        self,
        clock: Any,
        limits: Mapping[str, TokenLimits] | None = None,
        default: TokenLimits | None = None,
        currency: str = "USD",
    ) -> None:
        self.clock = clock
        self.snapshot: Snapshot = {}
        # What this process added since the snapshot: admitted requests still running,
        # and finished rows not yet committed. Entries at zero are removed.
        self._pending: dict[WindowKey, list[float]] = {}
        self.configure(limits or {}, default, currency)

    def configure(self, limits: Mapping[str, TokenLimits], default: TokenLimits | None, currency: str) -> None:
        """New limits (a reload); the usage counted so far stays."""
        self.limits = {name: policy for name, policy in limits.items() if policy}
        self.default = default if default else None
        self.currency = currency

    @property
    def enabled(self) -> bool:
        """Whether any token has a limit (else nothing needs the window totals)."""
        return bool(self.limits) or self.default is not None

    def limits_for(self, token: str) -> TokenLimits | None:
        return self.limits.get(token, self.default)

    def watch(self) -> tuple[tuple[Period, int], ...]:
        """The windows whose totals the next flush should read back."""
        if not self.enabled:
            return ()
        now = self.clock.seconds()
        return tuple((period, window(period, now)[0]) for period in PERIODS)

    # -- the hot path ---------------------------------------------------------------
    def admit(self, token: str, ts: float | None = None) -> Admission:
        """Count a request arriving at ``ts`` (default: now) for ``token``, or raise
        :class:`LimitExceeded` naming the limit that refuses it."""
        now = self.clock.seconds() if ts is None else ts
        policy = self.limits_for(token)
        if policy is not None:
            self._check(token, policy, now)
        self._add(((token, period, start) for period, start in starts(now)), 1, 0, 0.0)
        return Admission(token, now)

    def release(self, admission: Admission) -> None:
        """The admitted request finished; its row (:meth:`queued`) counts it from now on."""
        self._add(((admission.token, period, start) for period, start in starts(admission.ts)), -1, 0, 0.0)

    def usage(self, token: str, period: Period, now: float | None = None) -> tuple[int, int, float]:
        """``(requests, tokens, cost)`` of ``token`` in the ``period`` window holding ``now``."""
        at = self.clock.seconds() if now is None else now
        key = (token, period, window(period, at)[0])
        requests, tokens, cost = self.snapshot.get(key, (0, 0, 0.0))
        extra = self._pending.get(key)
        if extra is not None:
            requests, tokens, cost = requests + int(extra[0]), tokens + int(extra[1]), cost + extra[2]
        return requests, tokens, cost

    def _check(self, token: str, policy: TokenLimits, now: float) -> None:
        refusals: list[tuple[float, str, str]] = []
        minute = self.usage(token, "minute", now)
        if policy.requests_per_minute is not None and minute[0] >= policy.requests_per_minute:
            message = f"rate limit exceeded: {policy.requests_per_minute} requests per minute for token '{token}'"
            refusals.append((window("minute", now)[1] - now, message, "requests_per_minute"))
        if policy.tokens_per_minute is not None and minute[1] >= policy.tokens_per_minute:
            message = f"rate limit exceeded: {policy.tokens_per_minute} tokens per minute for token '{token}'"
            refusals.append((window("minute", now)[1] - now, message, "tokens_per_minute"))
        budgets: tuple[tuple[Period, float | None, str], ...] = (
            ("day", policy.budget_per_day, "budget_per_day"),
            ("month", policy.budget_per_month, "budget_per_month"),
        )
        for period, budget, name in budgets:
            if budget is not None and self.usage(token, period, now)[2] >= budget:
                message = f"budget exceeded: {_money(budget)} {self.currency} per {period} for token '{token}'"
                refusals.append((window(period, now)[1] - now, message, name))
        if refusals:
            # The longest wait: retrying before it ends would be refused again.
            wait, message, name = max(refusals)
            raise LimitExceeded(message, max(1, math.ceil(wait)), name)

    # -- the writer's side ----------------------------------------------------------
    def queued(self, row: UsageRow) -> None:
        """A finished request's row waits for the database: count it meanwhile."""
        self._apply(window_totals((row,)), 1)

    def forget(self, rows: Iterable[UsageRow]) -> None:
        """Rows that will never reach the database (the queue overflowed)."""
        self._apply(window_totals(rows), -1)

    def committed(self, rows: Iterable[UsageRow], snapshot: Snapshot) -> None:
        """``rows`` are in the database, and ``snapshot`` (read in the same
        transaction) has their totals and everyone else's."""
        self._apply(window_totals(rows), -1)
        if self.enabled:
            self.snapshot = snapshot

    def _apply(self, totals: Mapping[WindowKey, tuple[int, int, float]], sign: int) -> None:
        for key, (requests, tokens, cost) in totals.items():
            self._add((key,), sign * requests, sign * tokens, sign * cost)

    def _add(self, keys: Iterable[WindowKey], requests: int, tokens: int, cost: float) -> None:
        pending = self._pending
        for key in keys:
            entry = pending.get(key)
            if entry is None:
                entry = pending[key] = [0, 0, 0.0]
            entry[0] += requests
            entry[1] += tokens
            entry[2] += cost
            if entry[0] == 0:
                del pending[key]


def _money(amount: float) -> str:
    """``5.00``; a budget below a cent keeps its digits (``0.00001``)."""
    text = f"{amount:.2f}"
    return text if float(text) == amount else f"{amount:.10f}".rstrip("0")
