"""The service tree: one MultiService holding the listeners and the periodic jobs.

``makeService(config, reactor)`` is the map of the house: ``twistd ollama-proxy``,
``proxy.tac`` and programs that embed the proxy all build the daemon through it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.api.native import HealthState, OllamaAPI
from ollama_proxy.config.settings import Config
from ollama_proxy.front.door import Gate
from ollama_proxy.front.lifecycle import Lifecycle
from ollama_proxy.front.listener import ListenerService
from ollama_proxy.front.site import make_site
from ollama_proxy.ledger.usage import UsageLedger
from ollama_proxy.ops.later import flush
from ollama_proxy.ops.metrics import Metrics
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.ops.stats import Stats
from ollama_proxy.providers.interfaces import IProvider
from ollama_proxy.routing.dispatch import Dispatcher
from ollama_proxy.routing.healthcheck import HealthChecker
from ollama_proxy.routing.modelfilter import ModelFilter
from ollama_proxy.routing.retry import RetryPolicy
from ollama_proxy.routing.router import Router
from ollama_proxy.routing.slots import build_slots

log = Logger()


class ProxyService(MultiService):
    """The whole daemon. ``api`` is the Klein app, to serve or to mount elsewhere.

    Stopping it drains: listeners close first, requests in flight get until the
    drain deadline, then the timers stop and the connection pools close.
    :meth:`reconfigure` applies a new :class:`Config` without dropping anything.
    """

    def __init__(self, config: Config, reactor: Any, clock: Any = None, rng: random.Random | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        # Timers (timeouts, retries, breakers, refresh, drain) run on ``clock``, sockets
        # on ``reactor``: tests drive time with a task.Clock over real connections.
        self.clock = clock = reactor if clock is None else clock
        self.rng = rng if rng is not None else random.Random()
        self.lifecycle = lifecycle = Lifecycle(clock, config.ops.shutdown.drain_timeout)
        self.stats = Stats(clock, in_flight=lambda: lifecycle.in_flight, streams=lifecycle.streams)
        self.health = HealthState()
        self.redactor = Redactor(config.secrets())
        self._build_routing(config)
        self.metrics = Metrics(
            in_flight=lambda: lifecycle.in_flight,
            streams=lifecycle.streams,
            draining=lambda: self.lifecycle.draining,
            models=lambda: (self.catalogue.model_count - self.catalogue.filtered_count, self.catalogue.filtered_count),
            breaker_states=self.breaker_states,
        )
        self.gate = Gate(config, self.lifecycle, reactor, self.metrics)
        self.gate.observers.append(self.stats.observe)
        # The usage ledger: limits before dispatch, one row per finished request.
        self.ledger = UsageLedger(config, reactor, clock, self.metrics.registry) if config.ledger else None
        if self.ledger is not None:
            self.gate.observers.append(self.ledger.observe)
        self.api = OllamaAPI(
            config,
            self.router,
            self.stats,
            self.health,
            clock,
            gate=self.gate,
            metrics=self.metrics,
            dispatcher=self.dispatcher,
            ledger=self.ledger,
        )
        limits = config.ops.limits
        self.site = make_site(
            self.api.resource(),
            config.max_body_bytes,
            limits.max_header_bytes,
            header_timeout=limits.header_timeout,
            max_connections=limits.max_connections,
            request_read_timeout=limits.request_read_timeout,
            reactor=reactor,
            clock=clock,
        )
        self.site.on_refusal = self.gate.refused
        self.site.refuses_at_headers = self.gate.refuses_at_headers

        for index, description in enumerate(config.listen):
            listener = ListenerService(description, self.site, reactor)
            listener.setName(f"listen[{index}]")
            listener.setServiceParent(self)

        # Late-bound lambdas: a reload may replace the router.
        self._periodic: set[Deferred[Any]] = set()
        self._explained = False
        self.health_checker = HealthChecker(self.router, self.health, clock)
        self._jobs = {"model-refresh": self._refresh, "health-check": lambda: self.health_checker.check()}
        self.refresh_timer = self._timer("model-refresh", config.model_refresh_interval)
        self.health_timer = self._timer("health-check", config.health_check_interval)

        if self.ledger is not None:
            # Stopped after the drain (see _stop): the requests' rows are queued by then.
            self.ledger.service.setName("ledger")
            self.ledger.service.setServiceParent(self)

        # One service closes every provider's pool at the stop, including pools of
        # providers a reload replaced (their streams in flight finish first).
        self.pools = ProviderPoolsService(self)
        self.pools.setServiceParent(self)
        self._retired: list[IProvider] = []

    def _build_routing(self, config: Config) -> None:
        """Providers, their slots (breaker, limiter, stats), the router and dispatcher."""
        slots = build_slots(config, self.reactor, self.clock, self.rng, self.redactor)
        self.router = Router(slots, ModelFilter(config.filter.allow, config.filter.deny), config.routing, self.clock)
        self.dispatcher = Dispatcher(RetryPolicy(config.retry, self.rng), self.clock)
        self.providers: list[IProvider] = [slot.provider for slot in slots]
        self.catalogue = self.router  # the merged catalogue of every provider

    def _timer(self, name: str, step: float) -> TimerService:
        """The periodic job ``name`` every ``step`` seconds on the service's clock."""
        timer = TimerService(step, self._tracked(name))
        timer.clock = self.clock
        timer.setName(name)
        timer.setServiceParent(self)
        return timer

    def _tracked(self, name: str) -> Any:
        """A timer's call that logs its own failure (a TimerService whose call fails
        stops for good) and whose run in progress the stop can cancel (a TimerService
        waits for it, and a provider that never answers would hold the stop)."""
        job = self._jobs[name]

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                log.failure("periodic job {name} failed; it runs again at its next tick", failure, name=name)

        def call() -> Deferred[Any]:
            d: Deferred[Any] = maybeDeferred(job)  # a coroutine, or a job that raised at once
            self._periodic.add(d)

            def forget(result: Any) -> Any:
                self._periodic.discard(d)
                return result

            return d.addErrback(failed).addBoth(forget)

        return call

    async def _refresh(self) -> None:
        await self.router.refresh_quietly()
        if not self._explained:
            # Once, after the first refresh: a newcomer reads why nothing will answer.
            self._explained = True
            blockers = self.router.blockers()
            for reason in blockers:
                log.warn("inference will fail: {reason}", reason=reason)
            if blockers and len(blockers) == len(self.router.enabled_slots()):
                log.warn("to try the proxy offline, without a key: twistd -n ollama-proxy --demo")

    def listening_ports(self) -> list[Any]:
        """The bound ports (after start), e.g. to learn a port the system chose."""
        return [s.port for s in self if isinstance(s, ListenerService) and s.port is not None]

    def listeners(self) -> list[ListenerService]:
        return [s for s in self if isinstance(s, ListenerService)]

    def startService(self) -> None:
        self.lifecycle.draining = False
        super().startService()

    # -- stopping: drain first ------------------------------------------------------
    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # Stop accepting at once (the front door answers 503 on connections still
        # open); the drain deadline counts from now.
        drained = ensureDeferred(self.lifecycle.drain())
        await gatherResults([maybeDeferred(listener.stopService) for listener in self.listeners()], consumeErrors=True)
        await drained
        # The drained requests' bookkeeping (ops/later.py) is done before the ledger stops.
        flush(self.reactor)
        for job in list(self._periodic):
            job.cancel()
        await MultiService.stopService(self)

    # -- reloading ------------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """Apply ``config`` (already validated) to the running tree; nothing in flight is dropped.

        Filter, limits, auth, CORS, timeouts, intervals, providers and routing
        change; listeners stay as they are (a restart moves them; systemd's socket
        activation keeps the socket across it).
        """
        old, self.config = self.config, config
        if tuple(old.listen) != tuple(config.listen):
            log.warn("the listen endpoints changed; they take effect at the next restart")
        self.redactor.update(config.secrets())
        self.api.pipeline.config = config
        self.api.running.default_keep_alive = config.default_keep_alive
        self.router.filter = ModelFilter(config.filter.allow, config.filter.deny)
        limits = config.ops.limits
        self.site.set_limits(
            config.max_body_bytes,
            limits.max_header_bytes,
            limits.header_timeout,
            limits.max_connections,
            limits.request_read_timeout,
        )
        self.gate.reconfigure(config)
        if self.ledger is not None:
            self.ledger.reconfigure(config)
        elif config.ledger is not None:
            log.warn("the [ledger] table was added; the ledger starts at the next restart")
        self.lifecycle.drain_timeout = config.ops.shutdown.drain_timeout
        # A new interval means a new timer (TimerService fixes its step when it starts);
        # the new one runs its job at once, then every new interval.
        if self.refresh_timer.step != config.model_refresh_interval:
            self.refresh_timer.disownServiceParent()
            self.refresh_timer = self._timer("model-refresh", config.model_refresh_interval)
        if self.health_timer.step != config.health_check_interval:
            self.health_timer.disownServiceParent()
            self.health_timer = self._timer("health-check", config.health_check_interval)
        self.reload_providers(old, config)

    def reload_providers(self, old: Config, new: Config) -> None:
        """The provider part of a reload.

        When provider or routing settings changed, new providers, router and
        dispatcher take the new requests; the old providers' idle connections are
        closed now, and their streams in flight go on over the connections they hold.
        """

        def provider_settings(c: Config) -> tuple[Any, ...]:
            return (
                c.openrouter,
                c.providers,
                c.routing,
                c.retry,
                c.breaker,
                c.timeouts,
                c.max_connections_per_provider,
                c.demo,
            )

        if provider_settings(old) == provider_settings(new):
            return
        retired = self.providers
        self._build_routing(new)
        pipeline = self.api.pipeline
        pipeline.router, pipeline.dispatcher = self.router, self.dispatcher
        self.health_checker.router = self.router
        self._retired.extend(retired)
        for provider in retired:
            provider.close()
        log.info("provider settings reloaded: {names}", names=", ".join(str(p.name) for p in self.providers))
        # The model lists may differ now; fetch them rather than wait for the next tick.
        ensureDeferred(self.router.refresh_quietly())

    def all_providers(self) -> list[IProvider]:
        """Providers in use and those a reload retired (their pools close at the stop)."""
        return list(self.providers) + self._retired

    def breaker_states(self) -> Mapping[str, str]:
        """Circuit-breaker state per provider, for the metrics."""
        return {slot.name: slot.breaker.state for slot in self.router.slots}


class ProviderPoolsService(Service):
    """Closes every provider's persistent connections when the tree stops."""

    def __init__(self, tree: ProxyService) -> None:
        self.tree = tree

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return gatherResults([maybeDeferred(p.close) for p in self.tree.all_providers()], consumeErrors=True)


def makeService(
    config: Config, reactor: Any = None, clock: Any = None, rng: random.Random | None = None
) -> ProxyService:
    """Build the daemon's service tree for ``config`` on ``reactor`` (timers on
    ``clock``, by default the reactor; jitter from ``rng``)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return ProxyService(config, reactor, clock, rng)
