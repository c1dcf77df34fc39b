"""The service tree: one MultiService holding the listeners and the periodic jobs.

``makeService(config, reactor)`` is the map of the house: ``twistd ollama-proxy``,
``proxy.tac`` and programs that embed the proxy all build the daemon through it.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import endpoints
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .api import HealthState, OllamaAPI
from .config import Config
from .dispatch import Dispatcher
from .healthcheck import HealthChecker
from .interfaces import IProvider
from .modelfilter import ModelFilter
from .retry import RetryPolicy
from .routed import RoutedProvider
from .routing import Router
from .stats import Stats
from .slots import build_slots
from .web import make_site

log = Logger()


class ListenerService(Service):
    """Listens on one endpoint string. A failed bind raises from ``startService``,
    so twistd stops start-up with the reason instead of running deaf."""

    def __init__(self, description: str, factory: Any, reactor: Any) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        outcome: list[Any] = []
        d = endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if not outcome:
            d.addCallback(self._bound)
            return
        if isinstance(outcome[0], Failure):
            self.running = False
            outcome[0].raiseException()
        self._bound(outcome[0])

    def _bound(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        log.info("listening on {host}:{port} ({description})", host=getattr(host, "host", host), port=getattr(host, "port", ""), description=self.description)

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening)


class ProviderPoolService(Service):
    """Closes the provider's persistent connections when the tree stops."""

    def __init__(self, provider: IProvider) -> None:
        self.provider = provider

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return self.provider.close()


class ProxyService(MultiService):
    """The whole daemon. ``api`` is the Klein app, to serve or to mount elsewhere."""

    def __init__(self, config: Config, reactor: Any, clock: Any = None, rng: random.Random | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        # Timers (timeouts, retries, breakers, refresh) run on ``clock``, sockets on
        # ``reactor``: tests drive time with a task.Clock over real connections.
        clock = reactor if clock is None else clock
        self.clock = clock
        rng = rng if rng is not None else random.Random()
        slots = build_slots(config, reactor, clock, rng)
        self.router = Router(slots, ModelFilter(config.filter.allow, config.filter.deny), config.routing, clock)
        self.dispatcher = Dispatcher(RetryPolicy(config.retry, rng), clock)
        self.providers: list[IProvider] = [slot.provider for slot in slots]
        # Code that wants "the provider" gets all of them, routed (see routed.py).
        self.provider: IProvider = RoutedProvider(self.router, self.dispatcher)
        self.catalogue = self.router  # the merged catalogue of every provider
        self.stats = Stats(clock)
        self.health = HealthState()
        self.api = OllamaAPI(config, self.provider, self.catalogue, self.stats, self.health, clock, router=self.router, dispatcher=self.dispatcher)
        self.site = make_site(self.api.resource(), config.max_body_bytes, reactor=reactor)

        for description in config.listen:
            listener = ListenerService(description, self.site, reactor)
            listener.setName(f"listen:{description}")
            listener.setServiceParent(self)

        refresh = TimerService(config.model_refresh_interval, lambda: ensureDeferred(self.router.refresh_quietly()))
        refresh.clock = clock
        refresh.setName("model-refresh")
        refresh.setServiceParent(self)

        self.health_checker = HealthChecker(self.router, self.health, clock)
        health = TimerService(config.health_check_interval, lambda: ensureDeferred(self.health_checker.check()))
        health.clock = clock
        health.setName("health-check")
        health.setServiceParent(self)

        for provider in self.providers:
            ProviderPoolService(provider).setServiceParent(self)

    def listening_ports(self) -> list[Any]:
        """The bound ports (after start), e.g. to learn a port the system chose."""
        return [s.port for s in self if isinstance(s, ListenerService) and s.port is not None]


def makeService(config: Config, reactor: Any = None, clock: Any = None, rng: random.Random | None = None) -> ProxyService:
    """Build the daemon's service tree for ``config`` on ``reactor`` (timers on
    ``clock``, by default the reactor; jitter from ``rng``)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return ProxyService(config, reactor, clock, rng)
