"""The service tree: one MultiService holding the listeners and the periodic jobs.

``makeService(config, reactor)`` is the map of the house: ``twistd ollama-proxy``,
``proxy.tac`` and programs that embed the proxy all build the daemon through it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .api import HealthState, OllamaAPI
from .catalogue import ModelCatalogue
from .config import Config
from .interfaces import IProvider
from .modelfilter import ModelFilter
from .providers.openai_compat import openrouter
from .stats import Stats
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


class HealthChecker:
    """The health-check job: probe the provider, remember what it said. Never raises."""

    def __init__(self, provider: IProvider, state: HealthState, clock: Any) -> None:
        self.provider = provider
        self.state = state
        self.clock = clock

    async def check(self) -> None:
        try:
            await self.provider.check_health()
        except Exception as error:  # noqa: BLE001 - a TimerService call that raises stops for good
            self.state.healthy = False
            self.state.last_error = getattr(error, "message", None) or str(error)
            log.warn("health check of {provider} failed: {error}", provider=self.provider.name, error=self.state.last_error)
        else:
            self.state.healthy = True
            self.state.last_error = None
        finally:
            self.state.last_check = self.clock.seconds()


class ProxyService(MultiService):
    """The whole daemon. ``api`` is the Klein app, to serve or to mount elsewhere."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.provider: IProvider = openrouter(config, reactor)
        self.catalogue = ModelCatalogue(
            self.provider.list_models,
            ModelFilter(config.filter.allow, config.filter.deny),
            reactor,
        )
        self.stats = Stats(reactor)
        self.health = HealthState()
        self.api = OllamaAPI(config, self.provider, self.catalogue, self.stats, self.health, reactor)
        self.site = make_site(self.api.resource(), config.max_body_bytes, reactor=reactor)

        for index, description in enumerate(config.listen):
            listener = ListenerService(description, self.site, reactor)
            listener.setName(f"listen[{index}]")
            listener.setServiceParent(self)

        refresh = TimerService(config.model_refresh_interval, lambda: ensureDeferred(self.catalogue.refresh_quietly()))
        refresh.clock = reactor
        refresh.setName("model-refresh")
        refresh.setServiceParent(self)

        checker = HealthChecker(self.provider, self.health, reactor)
        health = TimerService(config.health_check_interval, lambda: ensureDeferred(checker.check()))
        health.clock = reactor
        health.setName("health-check")
        health.setServiceParent(self)

        ProviderPoolService(self.provider).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        # After the reactor runs: listeners are bound and signal handlers installed.
        addresses = []
        for port in self.listening_ports():
            host = port.getHost()
            addresses.append(f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}")
        log.info("ollama-proxy ready, serving on {addresses}", addresses=", ".join(addresses) or "(mounted only)")

    def listening_ports(self) -> list[Any]:
        """The bound ports (after start), e.g. to learn a port the system chose."""
        return [s.port for s in self if isinstance(s, ListenerService) and s.port is not None]


def makeService(config: Config, reactor: Any = None) -> ProxyService:
    """Build the daemon's service tree for ``config`` on ``reactor``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return ProxyService(config, reactor)
