"""Measured counts and latencies behind ``/health`` and ``/metrics`` (JSON).

Fed by :meth:`Stats.observe` with each finished request's record, the same
observation the Prometheus metrics get; requests in flight and streams are read
from the lifecycle, which counts them once.

An *error* is an answer the proxy or its upstream failed to give: a 5xx status,
or a stream that ended with an error line. A 4xx is the client's mistake and is
counted apart (``client_error_count``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ollama_proxy.front.record import RequestRecord

_RECENT = 1024  # latencies kept per endpoint for percentiles


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


@dataclass
class EndpointStats:
    method: str
    endpoint: str
    count: int = 0
    errors: int = 0
    client_errors: int = 0
    total_ms: float = 0.0
    min_ms: float | None = None
    max_ms: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))

    def add(self, status: int, milliseconds: float, failed: bool) -> None:
        self.count += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if failed or status >= 500:
            self.errors += 1
        elif status >= 400:
            self.client_errors += 1
        self.total_ms += milliseconds
        self.min_ms = milliseconds if self.min_ms is None else min(self.min_ms, milliseconds)
        self.max_ms = max(self.max_ms, milliseconds)
        self.recent.append(milliseconds)

    def as_dict(self) -> dict[str, Any]:
        recent = list(self.recent)
        return {
            "method": self.method,
            "endpoint": self.endpoint,
            "count": self.count,
            "error_count": self.errors,
            "client_error_count": self.client_errors,
            "status_counts": {str(k): v for k, v in sorted(self.statuses.items())},
            "avg_ms": round(self.total_ms / self.count, 3) if self.count else 0.0,
            "min_ms": round(self.min_ms or 0.0, 3),
            "max_ms": round(self.max_ms, 3),
            "p50_ms": round(_percentile(recent, 0.50), 3),
            "p95_ms": round(_percentile(recent, 0.95), 3),
            "p99_ms": round(_percentile(recent, 0.99), 3),
        }


class Stats:
    """Counters for the whole proxy, on the injected clock."""

    def __init__(
        self,
        clock: IReactorTime,
        in_flight: Callable[[], int] = lambda: 0,
        streams: Callable[[], int] = lambda: 0,
    ) -> None:
        self._clock = clock
        self.started = clock.seconds()
        self._endpoints: dict[tuple[str, str], EndpointStats] = {}
        self._in_flight = in_flight
        self._streams = streams
        self.tokens_in = 0
        self.tokens_out = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight()

    @property
    def active_streams(self) -> int:
        return self._streams()

    def observe(self, record: RequestRecord) -> None:
        """Account for one finished request. Only what a route took counts here (the
        door's refusals and unknown paths are the Prometheus metrics' alone)."""
        if record.surface is None:
            return
        self.record(record.method, record.endpoint, record.status or 0, record.duration or 0.0, record.failed)
        self.tokens_in += record.tokens_in or 0
        self.tokens_out += record.tokens_out or 0

    def record(self, method: str, endpoint: str, status: int, seconds: float, failed: bool = False) -> None:
        key = (method, endpoint)
        entry = self._endpoints.get(key)
        if entry is None:
            entry = self._endpoints[key] = EndpointStats(method, endpoint)
        entry.add(status, seconds * 1000.0, failed)

    @property
    def uptime(self) -> float:
        return self._clock.seconds() - self.started

    @property
    def request_count(self) -> int:
        return sum(e.count for e in self._endpoints.values())

    @property
    def error_count(self) -> int:
        return sum(e.errors for e in self._endpoints.values())

    @property
    def error_rate(self) -> float:
        count = self.request_count
        return round(self.error_count / count, 6) if count else 0.0

    def metrics(self) -> list[dict[str, Any]]:
        return [e.as_dict() for _, e in sorted(self._endpoints.items())]

    def statistics(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(self.uptime, 3),
            "request_count": self.request_count,
            "error_count": self.error_count,
            "client_error_count": sum(e.client_errors for e in self._endpoints.values()),
            "error_rate": self.error_rate,
            "in_flight_requests": self.in_flight,
            "active_streams": self.active_streams,
            "prompt_tokens": self.tokens_in,
            "completion_tokens": self.tokens_out,
        }
