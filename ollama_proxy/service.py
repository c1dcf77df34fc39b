"""The service tree: one MultiService holding the listeners and the periodic jobs.

``makeService(config, reactor)`` is the map of the house: ``twistd ollama-proxy``,
``proxy.tac`` and programs that embed the proxy all build the daemon through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import endpoints
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .api import HealthState, OllamaAPI
from .catalogue import ModelCatalogue
from .config import Config
from .frontdoor import Gate
from .interfaces import IProvider
from .lifecycle import Lifecycle
from .logs import Redactor
from .metrics import Metrics
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
        self._listening = False

    def privilegedStartService(self) -> None:
        # twistd calls this before --uid/--gid shed privileges: a port below 1024 binds here.
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        outcome: list[Any] = []
        d = endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if not outcome:
            d.addCallback(self._bound)
            return
        if isinstance(outcome[0], Failure):
            self.running = False
            self._listening = False
            outcome[0].raiseException()
        self._bound(outcome[0])

    def _bound(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        log.info("listening on {host}:{port} ({description})", host=getattr(host, "host", host), port=getattr(host, "port", ""), description=self.description)

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        self._listening = False
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
    """The whole daemon. ``api`` is the Klein app, to serve or to mount elsewhere.

    Stopping it drains: listeners close first, requests in flight get until the
    drain deadline, then the timers stop and the connection pools close.
    :meth:`reconfigure` applies a new :class:`Config` without dropping anything.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.provider: IProvider = openrouter(config, reactor)
        self.catalogue = ModelCatalogue(
            lambda: self.provider.list_models(),  # late-bound: a reload may swap the provider
            ModelFilter(config.filter.allow, config.filter.deny),
            reactor,
        )
        self.stats = Stats(reactor)
        self.health = HealthState()
        self.redactor = Redactor(config.secrets())
        self.lifecycle = Lifecycle(reactor, config.ops.shutdown.drain_timeout)
        self.metrics = Metrics(
            in_flight=lambda: self.lifecycle.in_flight,
            streams=lambda: self.stats.active_streams,
            draining=lambda: self.lifecycle.draining,
            models=lambda: (self.catalogue.model_count - self.catalogue.filtered_count, self.catalogue.filtered_count),
            breaker_states=self.breaker_states,
        )
        self.gate = Gate(config, self.lifecycle, reactor, self.metrics)
        self.api = OllamaAPI(config, self.provider, self.catalogue, self.stats, self.health, reactor, gate=self.gate, metrics=self.metrics)
        self.site = make_site(self.api.resource(), config.max_body_bytes, config.ops.limits.max_header_bytes, reactor=reactor)

        for index, description in enumerate(config.listen):
            listener = ListenerService(description, self.site, reactor)
            listener.setName(f"listen[{index}]")
            listener.setServiceParent(self)

        self.refresh_timer = TimerService(config.model_refresh_interval, lambda: ensureDeferred(self.catalogue.refresh_quietly()))
        self.refresh_timer.clock = reactor
        self.refresh_timer.setName("model-refresh")
        self.refresh_timer.setServiceParent(self)

        self.checker = HealthChecker(self.provider, self.health, reactor)
        self.health_timer = TimerService(config.health_check_interval, lambda: ensureDeferred(self.checker.check()))
        self.health_timer.clock = reactor
        self.health_timer.setName("health-check")
        self.health_timer.setServiceParent(self)

        self.pools = ProviderPoolService(self.provider)
        self.pools.setServiceParent(self)
        # Providers replaced by a reload: their busy connections return to their
        # pools after the streams end, so the pools are closed again at the stop.
        self._retired: list[IProvider] = []

    def listening_ports(self) -> list[Any]:
        """The bound ports (after start), e.g. to learn a port the system chose."""
        return [s.port for s in self if isinstance(s, ListenerService) and s.port is not None]

    def listeners(self) -> list[ListenerService]:
        return [s for s in self if isinstance(s, ListenerService)]

    def startService(self) -> None:
        self.lifecycle.draining = False
        super().startService()

    # -- stopping: drain first ------------------------------------------------------
    def stopService(self) -> "Deferred[None]":
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # Stop accepting at once (the front door answers 503 on connections still
        # open); the drain deadline counts from now.
        drained = ensureDeferred(self.lifecycle.drain())
        await gatherResults([maybeDeferred(listener.stopService) for listener in self.listeners()], consumeErrors=True)
        await drained
        await MultiService.stopService(self)
        retired, self._retired = self._retired, []
        await gatherResults([maybeDeferred(provider.close) for provider in retired], consumeErrors=True)

    # -- reloading ------------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """Apply ``config`` (already validated) to the running tree; nothing in flight is dropped.

        Filter, limits, auth, CORS, timeouts, intervals and providers change;
        listeners stay as they are (a restart moves them; systemd's socket
        activation keeps the socket across it).
        """
        old, self.config = self.config, config
        if tuple(old.listen) != tuple(config.listen):
            log.warn("the listen endpoints changed; they take effect at the next restart")
        self.redactor.update(config.secrets())
        self.api.config = config
        self.catalogue.filter = ModelFilter(config.filter.allow, config.filter.deny)
        self.site.set_limits(config.max_body_bytes, config.ops.limits.max_header_bytes)
        self.gate.reconfigure(config)
        self.lifecycle.drain_timeout = config.ops.shutdown.drain_timeout
        for timer, step in ((self.refresh_timer, config.model_refresh_interval), (self.health_timer, config.health_check_interval)):
            timer.step = step
            # TimerService copies its step into its LoopingCall when started; the next tick follows the new one.
            loop = getattr(timer, "_loop", None)
            if loop is not None:
                loop.interval = step
        self.reload_providers(old, config)

    def reload_providers(self, old: Config, new: Config) -> None:
        """The provider part of a reload: the one hook a provider router replaces.

        With a single provider: when its settings changed, a new provider takes
        the new requests, and the old one's idle connections are closed; its
        streams in flight go on over the connections they hold.
        """
        if (old.openrouter, old.timeouts, old.max_connections_per_provider) == (new.openrouter, new.timeouts, new.max_connections_per_provider):
            return
        retired = self.provider
        provider = openrouter(new, self.reactor)
        self.provider = self.api.provider = self.checker.provider = self.pools.provider = provider
        self._retired.append(retired)
        retired.close()
        log.info("provider settings reloaded")
        # The model list may differ at the new address; fetch it now rather than at the next tick.
        ensureDeferred(self.catalogue.refresh_quietly())

    def providers(self) -> list[IProvider]:
        """The providers in use (the metrics and the reload read them through here)."""
        return [self.provider]

    def breaker_states(self) -> Mapping[str, str]:
        """Circuit-breaker state per provider, for the metrics: providers that have a
        breaker expose ``breaker_state`` (``closed``, ``half_open`` or ``open``)."""
        states: dict[str, str] = {}
        for provider in self.providers():
            state = getattr(provider, "breaker_state", None)
            if isinstance(state, str):
                states[provider.name] = state
        return states


def makeService(config: Config, reactor: Any = None) -> ProxyService:
    """Build the daemon's service tree for ``config`` on ``reactor``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return ProxyService(config, reactor)
