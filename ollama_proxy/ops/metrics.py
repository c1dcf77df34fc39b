"""Prometheus metrics, in a registry of their own.

Each proxy owns a :class:`prometheus_client.CollectorRegistry`; nothing goes to
the library's global registry, so several proxies in one process (an embedding
program, the test suite) keep separate counts. ``/metrics`` serves the text
format when the scraper asks for it (``Accept: text/plain;version=0.0.4`` or
``application/openmetrics-text``, or ``?format=prometheus``) and the JSON
statistics otherwise.

Samples come from the request records (:mod:`ollama_proxy.front.record`) when each
request finishes; gauges are read when scraped, through small callables, so a
router over several providers only has to hand over its breaker states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from ollama_proxy.front.record import RequestRecord

BREAKER_STATES = ("closed", "half_open", "open")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def wants_prometheus(request: Any) -> bool:
    """True when the client asked for the Prometheus text formats rather than JSON."""
    formats = request.args.get(b"format", []) if getattr(request, "args", None) else []
    if formats:
        return formats[-1].lower() in (b"prometheus", b"openmetrics", b"text")
    accept = (request.getHeader(b"accept") or b"").lower()
    return b"application/openmetrics-text" in accept or b"text/plain" in accept


class _Gauges:
    """Gauges read at scrape time from whoever knows the current value."""

    def __init__(self, gauges: Metrics) -> None:
        self._metrics = gauges

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily; descriptions would need the sources at registration

    def collect(self) -> Iterable[Any]:
        m = self._metrics
        yield _gauge("ollama_proxy_in_flight_requests", "Requests accepted and not yet answered.", m.in_flight())
        yield _gauge("ollama_proxy_streams_in_flight", "Streamed answers being relayed now.", m.streams())
        yield _gauge(
            "ollama_proxy_draining",
            "1 while the proxy is shutting down and refuses new requests.",
            1 if m.draining() else 0,
        )
        offered, filtered = m.models()
        family = GaugeMetricFamily(
            "ollama_proxy_models", "Upstream models by whether the filter offers them.", labels=["state"]
        )
        family.add_metric(["offered"], offered)
        family.add_metric(["filtered"], filtered)
        yield family
        breakers = GaugeMetricFamily(
            "ollama_proxy_breaker_state",
            "Circuit breaker state per provider: 1 for the current state.",
            labels=["provider", "state"],
        )
        for provider, state in sorted(m.breaker_states().items()):
            for candidate in BREAKER_STATES:
                breakers.add_metric([provider, candidate], 1 if state == candidate else 0)
        yield breakers


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _none() -> int:
    return 0


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The proxy's Prometheus metrics. The callables are read at scrape time."""

    def __init__(
        self,
        *,
        in_flight: Callable[[], int] = _none,
        streams: Callable[[], int] = _none,
        draining: Callable[[], bool] = lambda: False,
        models: Callable[[], tuple[int, int]] = lambda: (0, 0),
        breaker_states: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.in_flight = in_flight
        self.streams = streams
        self.draining = draining
        self.models = models
        self.breaker_states = breaker_states
        self._shared: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "ollama_proxy_requests",
            "Requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "ollama_proxy_request_duration_seconds",
            "Time from a request's arrival to its last byte.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ollama_proxy_time_to_first_token_seconds",
            "Time from a request's arrival to the first token from upstream.",
            ["endpoint", "provider"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "ollama_proxy_upstream_duration_seconds",
            "Time spent waiting on the provider for one request.",
            ["provider", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "ollama_proxy_overhead_seconds",
            "The proxy's own time per request: total less upstream time.",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("ollama_proxy_tokens", "Tokens reported by providers.", ["provider", "kind"], registry=r)
        self.stream_errors = Counter(
            "ollama_proxy_stream_errors",
            "Streams that ended with an error line after output began.",
            ["endpoint"],
            registry=r,
        )
        self.reloads = Counter(
            "ollama_proxy_config_reloads", "Configuration reloads (SIGHUP), by result.", ["result"], registry=r
        )
        r.register(_Gauges(self))
        # Each metric's child per label values: prometheus_client's labels() checks and
        # joins the values and takes a lock on every call; the label sets here are few.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe(self, record: RequestRecord) -> None:
        """Account for one finished request."""
        endpoint = record.endpoint
        method = (
            record.method if record.method in _METHODS else "OTHER"
        )  # clients choose methods: keep the label set finite
        self._child(self.requests, endpoint, method, str(record.status or 0)).inc()
        if record.duration is not None:
            self._child(self.duration, endpoint).observe(record.duration)
        provider = record.provider or "none"
        if record.ttft is not None:
            self._child(self.ttft, endpoint, provider).observe(record.ttft)
        if record.upstream_seconds > 0:
            self._child(self.upstream, provider, endpoint).observe(record.upstream_seconds)
        if record.overhead is not None:
            self._child(self.overhead, endpoint).observe(record.overhead)
        if record.tokens_in:
            self._child(self.tokens, provider, "prompt").inc(record.tokens_in)
        if record.tokens_out:
            self._child(self.tokens, provider, "completion").inc(record.tokens_out)
        if record.failed:
            self._child(self.stream_errors, endpoint).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        if self._shared is not None:
            self.refresh_gauges()
            return encoder(self._shared.registry()), content_type
        return encoder(self.registry), content_type

    def share_between_processes(self, directory: str) -> None:
        """Worker mode: every worker's samples, read from ``directory`` (prometheus_client's
        multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR`` before it is imported):
        counters and histograms add up across workers, a dead worker's included; the
        gauges are written by each worker (see :mod:`ollama_proxy.ops.sharedmetrics`)."""
        from ollama_proxy.ops.sharedmetrics import SharedGauges

        self._shared = SharedGauges(directory)

    def refresh_gauges(self) -> None:
        """Write this worker's gauges where the other workers' scrapes read them."""
        if self._shared is not None:
            self._shared.set(self)
