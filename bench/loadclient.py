"""The benchmark's load client: Twisted's Agent on one persistent connection pool.

Kept deliberately lean so that the client is not what is measured: a request body is
written together with its headers in one go (treq's default body producer writes it
a reactor turn later), answers are read with ``readBody``, and streamed answers are
not parsed but only counted, one delimiter per event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesBody:
    """A request body written at once, in the same reactor turn as the headers."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class EventCounter(Protocol):
    """Counts the events of a streamed body by their delimiter, without parsing them.

    ``opened`` fires at the first event (or at the end of a body without any),
    ``finished`` when the body ends, whether the server finished it or we closed it;
    both with this counter.
    """

    def __init__(self, marker: bytes, clock: Any) -> None:
        self.marker = marker
        self.clock = clock
        self.events = 0
        self.nbytes = 0
        self.tail = b""  # the last bytes seen: a marker split across reads, the end check
        self.first_event_at: float | None = None
        self.ended_at: float | None = None
        self.clean = False
        self.opened: Deferred[EventCounter] = Deferred()
        self.finished: Deferred[EventCounter] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.nbytes += len(data)
        joined = self.tail + data
        before = self.events
        # The marker does not overlap itself, and the carried tail is shorter than it,
        # so no marker is counted twice.
        self.events += joined.count(self.marker) - self.tail.count(self.marker)
        self.tail = joined[-512:]
        if before == 0 and self.events and self.first_event_at is None:
            self.first_event_at = time.perf_counter()
            self.opened.callback(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended_at = time.perf_counter()
        self.clean = reason is None or bool(reason.check(ResponseDone))
        if not self.opened.called:
            self.opened.callback(self)
        self.finished.callback(self)

    def close(self) -> None:
        """Hang up, the way a client that stops listening does."""
        if self.transport is not None:
            self.transport.stopProducing()


@dataclass
class LatencyResult:
    """Latencies in seconds of the successful requests of one run."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
        return ordered[index]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else float("nan")


class LoadClient:
    """HTTP on loopback with one persistent pool, shared by every run."""

    def __init__(self, reactor: Any, max_connections: int) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_connections
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=10)

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()

    def request_within(
        self, timeout: float, method: str, url: str, body: bytes | None = None
    ) -> Deferred[tuple[int, bytes]]:
        """:meth:`request`, cancelled after ``timeout`` seconds (for control calls)."""
        d = Deferred.fromCoroutine(self.request(method, url, body))
        return d.addTimeout(timeout, self.reactor)

    async def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        hdrs = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        producer = BytesBody(body) if body is not None else None
        response = await self.agent.request(method.encode(), url.encode(), hdrs, producer)
        content = await readBody(response)
        return response.code, content

    async def get_json(self, url: str) -> Any:
        code, content = await self.request_within(10.0, "GET", url)
        if code != 200:
            raise RuntimeError(f"GET {url}: status {code}: {content[:200]!r}")
        return json.loads(content)

    async def open_stream(self, url: str, body: bytes, headers: dict[str, str], marker: bytes) -> EventCounter:
        """POST ``body``; returns the counter reading the streamed answer (status 200 checked)."""
        hdrs = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        response = await self.agent.request(b"POST", url.encode(), hdrs, BytesBody(body))
        if response.code != 200:
            content = await readBody(response)
            raise RuntimeError(f"POST {url}: status {response.code}: {content[:200]!r}")
        counter = EventCounter(marker, self.reactor)
        response.deliverBody(counter)
        return counter

    async def latency_run(
        self, url: str, body: bytes, headers: dict[str, str], expect: bytes, concurrency: int, per_worker: int
    ) -> LatencyResult:
        """``concurrency`` workers, each sending ``per_worker`` requests one after the other."""
        result = LatencyResult(concurrency)

        async def worker() -> None:
            for _ in range(per_worker):
                started = time.perf_counter()
                try:
                    code, content = await self.request("POST", url, body, headers)
                except Exception:  # noqa: BLE001 - a failed request is counted, not fatal
                    result.errors += 1
                    continue
                elapsed = time.perf_counter() - started
                if code == 200 and expect in content:
                    result.latencies.append(elapsed)
                else:
                    result.errors += 1

        started = time.perf_counter()
        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)], consumeErrors=True)
        result.wall = time.perf_counter() - started
        return result
