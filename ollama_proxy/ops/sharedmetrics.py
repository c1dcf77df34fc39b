"""The gauges of worker mode, in prometheus_client's multiprocess files.

Counters and histograms need nothing more than ``PROMETHEUS_MULTIPROC_DIR``: each
worker's values go to its own files, and a scrape on any worker reads all of them.
Gauges read at scrape time (in flight, streams, draining, models, breakers) only know
the worker asked, so each worker writes them into its files (every second, and when
it is scraped) and the scrape combines them: in-flight requests and streams summed
over the live workers, ``draining`` and the model counts their maximum, and the
breaker gauge counts the workers whose breaker for a provider is in each state.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.multiprocess import MultiProcessCollector

BREAKER_STATES = ("closed", "half_open", "open")


class SharedGauges:
    """Multiprocess gauges mirroring :class:`~ollama_proxy.ops.metrics.Metrics`' callables."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        own = CollectorRegistry()  # never scraped itself: the files are
        self.in_flight = Gauge(
            "ollama_proxy_in_flight_requests",
            "Requests accepted and not yet answered.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.streams = Gauge(
            "ollama_proxy_streams_in_flight",
            "Streamed answers being relayed now.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.draining = Gauge(
            "ollama_proxy_draining",
            "1 while the proxy is shutting down and refuses new requests.",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.models = Gauge(
            "ollama_proxy_models",
            "Upstream models by whether the filter offers them.",
            ["state"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.breakers = Gauge(
            "ollama_proxy_breaker_state",
            "Workers whose circuit breaker for a provider is in each state.",
            ["provider", "state"],
            registry=own,
            multiprocess_mode="livesum",
        )

    def set(self, metrics: Any) -> None:
        self.in_flight.set(metrics.in_flight())
        self.streams.set(metrics.streams())
        self.draining.set(1 if metrics.draining() else 0)
        offered, filtered = metrics.models()
        self.models.labels("offered").set(offered)
        self.models.labels("filtered").set(filtered)
        for provider, state in metrics.breaker_states().items():
            for candidate in BREAKER_STATES:
                self.breakers.labels(provider, candidate).set(1 if state == candidate else 0)

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        return registry
