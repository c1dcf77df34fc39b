"""Concurrent streams: per client and in total.

A stream holds an upstream connection (and spends money) for as long as it
runs, so one client must not be able to open them without bound. A client is
its token's name when auth is on, else its address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ollama_proxy.errors import ProxyError, ServiceUnavailable

# Endpoints that may stream, and whether they stream when the body does not say.
STREAMING_ENDPOINTS: Mapping[str, bool] = {
    "/api/chat": True,
    "/api/generate": True,
    "/v1/chat/completions": False,
    "/v1/completions": False,
}


class TooManyStreams(ProxyError):
    status = 429
    type = "rate_limited"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after = 1.0


def wants_stream(path: str, body: Mapping[str, Any]) -> bool:
    """Whether a request body for ``path`` asks for a stream."""
    default = STREAMING_ENDPOINTS.get(path)
    if default is None:
        return False
    value = body.get("stream")
    return default if value is None else value is True


class StreamLimiter:
    """Counts open streams; ``acquire`` refuses past a limit (0: no limit)."""

    def __init__(self, per_client: int = 0, total: int = 0) -> None:
        self.per_client = per_client
        self.total = total
        self.active = 0
        self._by_client: dict[str, int] = {}

    def reconfigure(self, per_client: int, total: int) -> None:
        """New limits apply to new streams; open ones keep their slots."""
        self.per_client = per_client
        self.total = total

    @property
    def active_limits(self) -> bool:
        return bool(self.per_client or self.total)

    def acquire(self, client: str) -> Callable[[], None]:
        """Take a slot for ``client``; returns the function that gives it back."""
        if self.total and self.active >= self.total:
            error = ServiceUnavailable(f"the proxy is serving its maximum of {self.total} streams; try again shortly")
            error.retry_after = 1.0
            raise error
        held = self._by_client.get(client, 0)
        if self.per_client and held >= self.per_client:
            raise TooManyStreams(f"too many concurrent streams from this client (limit {self.per_client})")
        self._by_client[client] = held + 1
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.active -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)

        return release

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)
