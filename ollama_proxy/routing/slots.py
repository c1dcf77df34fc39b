"""One configured provider with everything the proxy keeps about it.

A :class:`ProviderSlot` joins the provider (the wire protocol) with its routing
settings, its model list, its circuit breaker, its concurrency limiter, its
measured statistics and what the health check last learned; the
``/api/providers`` reports are read from here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.interfaces import IProvider
from ollama_proxy.routing.breaker import OPEN, CircuitBreaker
from ollama_proxy.routing.catalogue import ModelCatalogue
from ollama_proxy.routing.limiter import ConcurrencyLimiter
from ollama_proxy.wire.models import rfc3339


@dataclass
class ProviderStats:
    """Measured calls to one provider (each attempt counts, retries included)."""

    request_count: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    cancelled_requests: int = 0
    rejected_requests: int = 0  # refused by the concurrency limit: never sent
    retries: int = 0
    fallbacks: int = 0  # times a request moved on from this provider to another
    total_ms: float = 0.0
    min_ms: float | None = None
    max_ms: float = 0.0
    last_error: str | None = None

    def add(self, milliseconds: float, ok: bool | None, error: str | None = None) -> None:
        """``ok`` is ``None`` for a call the client cancelled."""
        self.request_count += 1
        if ok is None:
            self.cancelled_requests += 1
            return
        if ok:
            self.successful_requests += 1
        else:
            self.failed_requests += 1
            self.last_error = error
        self.total_ms += milliseconds
        self.min_ms = milliseconds if self.min_ms is None else min(self.min_ms, milliseconds)
        self.max_ms = max(self.max_ms, milliseconds)

    @property
    def timed(self) -> int:
        return self.successful_requests + self.failed_requests

    @property
    def error_rate(self) -> float:
        return round(self.failed_requests / self.timed, 6) if self.timed else 0.0

    @property
    def avg_ms(self) -> float:
        return round(self.total_ms / self.timed, 3) if self.timed else 0.0


@dataclass
class ProviderHealth:
    """What the last health check of the provider found."""

    last_check: float | None = None
    healthy: bool | None = None
    last_error: str | None = None


# Where the key of a well-known provider comes from (the environment, or the credential of that name in lower case).
KEY_VARIABLES = {"openrouter": "OPENROUTER_API_KEY", "openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass
class ProviderSlot:
    """A provider as the router sees it."""

    provider: IProvider
    priority: int
    enabled: bool
    order: int  # position in the configuration: breaks priority ties
    catalogue: ModelCatalogue
    breaker: CircuitBreaker
    limiter: ConcurrencyLimiter
    stats: ProviderStats = field(default_factory=ProviderStats)
    health: ProviderHealth = field(default_factory=ProviderHealth)
    # [timeouts] response (or the provider's own): its headers, and a whole non-streamed answer.
    response_timeout: float = 120.0

    @property
    def name(self) -> str:
        return str(self.provider.name)

    @property
    def type(self) -> str:
        return str(self.provider.type)

    @property
    def label(self) -> str:
        return str(self.provider.label)

    @property
    def usable(self) -> bool:
        """Enabled and able to work at all (a key where one is needed)."""
        return self.enabled and bool(self.provider.configured)

    @property
    def healthy(self) -> bool:
        return self.usable and self.breaker.state != OPEN and self.health.healthy is not False

    @property
    def missing_key(self) -> str:
        """Why this provider cannot answer, naming the key it lacks and where it goes."""
        variable = KEY_VARIABLES.get(self.name)
        where = f"set {variable}" if variable else f"set 'key', 'key_file' or 'key_env' of provider '{self.name}'"
        return f"no API key is configured for {self.label} ({where})"

    def missing_key_error(self) -> UpstreamError:
        """The 503 a request meets when this provider, which needs a key, has none."""
        return UpstreamError(self.label, self.type, None, self.missing_key, status=503)

    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.order)

    def summary(self, models_available: int) -> dict[str, Any]:
        """The entry of ``/api/providers``."""
        stats = self.stats
        return {
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "enabled": self.enabled,
            "configured": bool(self.provider.configured),
            "healthy": self.healthy,
            "priority": self.priority,
            "request_count": stats.request_count,
            "error_count": stats.failed_requests,
            "error_rate": stats.error_rate,
            "avg_response_time_ms": stats.avg_ms,
            "circuit_breaker_state": self.breaker.state,
            "models_available": models_available,
        }

    def report(self, models_available: int) -> dict[str, Any]:
        """The body of ``/api/providers/{name}/stats``."""
        stats = self.stats
        calls, failures = self.breaker.window_counts()
        return {
            "provider": self.name,
            "provider_type": self.type,
            "label": self.label,
            "enabled": self.enabled,
            "configured": bool(self.provider.configured),
            "healthy": self.healthy,
            "priority": self.priority,
            "request_count": stats.request_count,
            "successful_requests": stats.successful_requests,
            "failed_requests": stats.failed_requests,
            "cancelled_requests": stats.cancelled_requests,
            "rejected_requests": stats.rejected_requests,
            "retries": stats.retries,
            "fallbacks": stats.fallbacks,
            "error_rate": stats.error_rate,
            "avg_response_time_ms": stats.avg_ms,
            "min_response_time_ms": round(stats.min_ms or 0.0, 3),
            "max_response_time_ms": round(stats.max_ms, 3),
            "last_error": stats.last_error,
            "circuit_breaker_state": self.breaker.state,
            "circuit_breaker": {
                "open_remaining_seconds": round(self.breaker.open_remaining(), 3),
                "trips": self.breaker.trips,
                "last_trip_reason": self.breaker.last_trip_reason,
                "window_calls": calls,
                "window_failures": failures,
            },
            "in_flight": self.limiter.in_flight,
            "queued": self.limiter.queued,
            "max_in_flight": self.limiter.max_in_flight,
            "last_health_check": rfc3339(self.health.last_check) if self.health.last_check is not None else None,
            "last_health_error": self.health.last_error,
            "models_available": models_available,
            "last_model_refresh": rfc3339(self.catalogue.last_refresh)
            if self.catalogue.last_refresh is not None
            else None,
        }


def build_slots(
    config: Any, reactor: Any, clock: IReactorTime, rng: random.Random, redactor: Any = None
) -> list[ProviderSlot]:
    """One slot per configured provider (see :func:`~ollama_proxy.providers.registry.provider_configs`)."""
    from ollama_proxy.providers.registry import build_provider, provider_configs, timeouts_for

    slots = []
    for order, settings in enumerate(provider_configs(config)):
        provider = build_provider(settings, config, reactor, clock, redactor)
        slots.append(
            ProviderSlot(
                provider=provider,
                priority=settings.priority,
                enabled=settings.enabled,
                order=order,
                # Each provider keeps its own list; the router filters the merged view.
                catalogue=ModelCatalogue(provider.list_models, clock),
                breaker=CircuitBreaker(config.breaker, clock, rng, name=settings.name),
                limiter=ConcurrencyLimiter(
                    settings.max_in_flight, settings.max_queue, settings.queue_timeout, clock, name=settings.name
                ),
                response_timeout=timeouts_for(settings, config.timeouts).response,
            )
        )
    return slots
