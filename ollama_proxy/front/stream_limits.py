"""Concurrent streams: per client and in total.

A generation holds an upstream stream (and spends money) for as long as it
runs, whether the client reads it as a stream or waits for the whole answer
(the proxy asks the upstream for a stream either way), so one client must not be
able to open them without bound. Every chat, generate or completion that reaches
a provider counts, until its answer is complete. A client is its token's name
when auth is on, else its address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ollama_proxy.errors import ProxyError, ServiceUnavailable
from ollama_proxy.front.record import RequestRecord

# Endpoints that may stream, and whether they stream when the body does not say.
STREAMING_ENDPOINTS: Mapping[str, bool] = {
    "/api/chat": True,
    "/api/generate": True,
    "/v1/chat/completions": False,
    "/v1/completions": False,
    "/v1/messages": False,
    "/v1/responses": False,
}


class TooManyStreams(ProxyError):
    status = 429
    type = "rate_limited"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after = 1.0


class StreamLimiter:
    """Refuses a new stream past a limit (0: no limit).

    It keeps no count of its own: ``count(client)`` says how many generations are
    in flight (of ``client``, or in all for ``None``), which the lifecycle knows
    from the records of the requests in flight.
    """

    def __init__(self, count: Callable[[str | None], int], per_client: int = 0, total: int = 0) -> None:
        self._count = count
        self.per_client = per_client
        self.total = total

    def reconfigure(self, per_client: int, total: int) -> None:
        """New limits apply to new streams; open ones keep their slots."""
        self.per_client = per_client
        self.total = total

    @property
    def active_limits(self) -> bool:
        return bool(self.per_client or self.total)

    @property
    def active(self) -> int:
        return self._count(None)

    def admit(self, record: RequestRecord) -> None:
        """Count ``record`` as a generation, or refuse it (429 for the client, 503 for the proxy)."""
        if self.total and self._count(None) >= self.total:
            error = ServiceUnavailable(f"the proxy is serving its maximum of {self.total} streams; try again shortly")
            error.retry_after = 1.0
            raise error
        if self.per_client and self._count(record.client_key) >= self.per_client:
            raise TooManyStreams(f"too many concurrent streams from this client (limit {self.per_client})")
        record.generating = True
