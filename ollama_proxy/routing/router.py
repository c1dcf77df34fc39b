"""From a model name to the providers that will answer it, in the order to try them.

The rules, in order (the README's "Providers and routing" section says the same):

1. ``:latest`` is optional: ``name`` and ``name:latest`` mean the same model.
2. An alias (``[aliases]``) replaces the name by its target, once (no chains).
3. A pin (``[pins]``, on the name or on the alias target) limits the providers to
   the pinned ones, in the pin's order.
4. Every enabled provider whose model list holds the id offers it; they are tried
   in priority order (lower first, then configuration order).
5. Only if no provider holds the whole name as an id, ``provider/model`` picks
   that one provider. So an id listed in ``/api/tags`` always means what the
   listing said, even when its first part is also a provider's name
   (``openai/gpt-4o`` on OpenRouter stays on OpenRouter).
6. The filter removes models it does not allow; a name whose every offer is
   filtered answers 403 ``model_forbidden``.
7. After the name's own providers come its fallbacks (``[fallbacks]``, looked up
   by the name, the alias target, then ``"*"``), each resolved by the same rules;
   fallbacks that are unknown, forbidden or of the wrong kind are skipped.

The :class:`Router` is also the model catalogue the API reads: the merged,
filtered model list of every provider (one entry per name, the provider that
would answer first), each provider's own list, and the counts ``/health`` shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.config.providers import RoutingConfig
from ollama_proxy.errors import BadRequest, ModelForbidden, ModelNotAllowed, ModelNotFound, ProxyError
from ollama_proxy.routing.modelfilter import ModelFilter
from ollama_proxy.routing.slots import ProviderSlot
from ollama_proxy.wire.models import UpstreamModel, candidate_ids, ollama_name, tag_entry

log = Logger()

# A provider whose model list could not be fetched is asked again on demand at
# most this often; in between, the refresh and health timers keep trying.
RELOAD_INTERVAL = 30.0


class ProviderNotFound(ProxyError):
    status = 404
    type = "provider_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"provider '{name}' not found")
        self.provider = name


# Whether a client may use a model name (its token's model list).
Allowed = Callable[[str], bool]


@dataclass(frozen=True, slots=True)  # slots: a request's route is held as long as its stream
class Target:
    """One model on one provider: a single thing to try."""

    slot: ProviderSlot
    model: UpstreamModel
    name: str  # the name this target answers for: the request's, or a fallback's
    fallback: bool = False

    @property
    def provider(self) -> Any:
        return self.slot.provider


@dataclass(slots=True)
class Route:
    """Where a request goes: its model and the targets to try, in order."""

    name: str
    model: UpstreamModel
    targets: list[Target] = field(default_factory=list)


class Router:
    """Resolves names to routes over the configured providers; the merged catalogue."""

    def __init__(
        self,
        slots: Sequence[ProviderSlot],
        model_filter: ModelFilter,
        routing: RoutingConfig,
        clock: IReactorTime,
    ) -> None:
        self.slots = sorted(slots, key=lambda s: s.sort_key())
        self.filter = model_filter
        self.aliases = dict(routing.aliases)
        self.pins = {name: tuple(providers) for name, providers in routing.pins}
        self.fallbacks = {name: tuple(models) for name, models in routing.fallbacks}
        self._clock = clock
        self._by_name = {slot.name: slot for slot in self.slots}
        self._load_tried: dict[str, float] = {}

    @classmethod
    def single(cls, provider: Any, config: Any, clock: IReactorTime, model_filter: ModelFilter | None = None) -> Router:
        """A router over one provider (as a program that mounts the API alone may want)."""
        from ollama_proxy.routing.breaker import CircuitBreaker
        from ollama_proxy.routing.catalogue import ModelCatalogue
        from ollama_proxy.routing.limiter import ConcurrencyLimiter

        router = config.openrouter
        slot = ProviderSlot(
            provider=provider,
            priority=1,
            enabled=True,
            order=0,
            catalogue=ModelCatalogue(provider.list_models, clock),
            breaker=CircuitBreaker(config.breaker, clock, name=str(provider.name)),
            limiter=ConcurrencyLimiter(router.max_in_flight, router.max_queue, router.queue_timeout, clock),
        )
        return cls([slot], model_filter or ModelFilter(), config.routing, clock)

    # -- providers ------------------------------------------------------------------
    def slot(self, name: str) -> ProviderSlot:
        """The provider called ``name``; 404 ``provider_not_found`` when there is none."""
        slot = self._by_name.get(name)
        if slot is None:
            raise ProviderNotFound(name)
        return slot

    def enabled_slots(self) -> list[ProviderSlot]:
        return [s for s in self.slots if s.enabled]

    def models_available(self, slot: ProviderSlot) -> int:
        return sum(1 for m in slot.catalogue.all_models() if self.filter.allows_model(m))

    # -- the catalogue interface (what ModelCatalogue offered for one provider) -----
    @property
    def loaded(self) -> bool:
        return any(s.catalogue.loaded for s in self.enabled_slots())

    @property
    def last_refresh(self) -> float | None:
        times = [s.catalogue.last_refresh for s in self.enabled_slots() if s.catalogue.last_refresh is not None]
        return max(times) if times else None

    @property
    def last_error(self) -> str | None:
        errors = [f"{s.name}: {s.catalogue.last_error}" for s in self.enabled_slots() if s.catalogue.last_error]
        return "; ".join(errors) or None

    def all_models(self) -> list[UpstreamModel]:
        """Every model of every enabled provider, filtered or not."""
        return [m for s in self.enabled_slots() for m in s.catalogue.all_models()]

    def allowed_models(self, provider: str | None = None) -> list[UpstreamModel]:
        """The models clients see: one per name, from the provider that answers it
        first; or every allowed model of one ``provider``."""
        slots = [self.slot(provider)] if provider is not None else self.enabled_slots()
        seen: set[str] = set()
        models: list[UpstreamModel] = []
        for slot in slots:
            for model in slot.catalogue.all_models():
                name = model.ollama_name
                if name in seen or not self.filter.allows_model(model):
                    continue
                seen.add(name)
                models.append(model)
        return sorted(models, key=lambda m: m.id)

    @property
    def model_count(self) -> int:
        return len(self.all_models())

    @property
    def filtered_count(self) -> int:
        """How many models the filter keeps from clients."""
        return sum(1 for m in self.all_models() if not self.filter.allows_model(m))

    def tag_entries(self, provider: str | None = None, allowed: Allowed | None = None) -> list[dict[str, Any]]:
        """``/api/tags`` (merged, aliases included) or ``/api/tags/{provider}``; with
        ``allowed`` (a client token's model list) only what the token may use."""
        entries = [_tag(m) for m in self.allowed_models(provider)]
        if allowed is not None:
            entries = [e for e in entries if allowed(e["name"])]
        if provider is not None:
            return entries
        listed = {e["name"] for e in entries}
        for alias in self.aliases:
            name = ollama_name(alias)
            if name in listed:
                continue
            try:
                route = self.route_now(alias, None, allowed)
            except ProxyError:
                continue  # an alias to a model no provider has (yet), a forbidden one, or not the token's
            entry = _tag(route.model)
            entry.update(name=name, model=name, digest=hashlib.sha256(alias.encode("utf-8")).hexdigest())
            entry["details"] = {**entry["details"], "parent_model": route.model.ollama_name}
            entries.append(entry)
            listed.add(name)
        return sorted(entries, key=lambda e: e["name"])

    async def refresh(self) -> None:
        """Fetch every enabled provider's list. Fails only when all of them fail."""
        slots = self.enabled_slots()
        if not slots:
            return
        # Twisted types a failed entry's result as the success type: it is a Failure.
        results: list[tuple[bool, Any]] = await DeferredList([s.catalogue.refresh() for s in slots], consumeErrors=True)
        failures = [result for _, result in results if isinstance(result, Failure)]
        if len(failures) == len(slots):
            failures[0].raiseException()

    async def refresh_quietly(self) -> None:
        """For the timer: every provider refreshed, failures logged, never raises."""
        await DeferredList([ensureDeferred(s.catalogue.refresh_quietly()) for s in self.enabled_slots()])

    async def ensure_loaded(self) -> None:
        """Fetch the lists of providers that have none yet (never more often than
        :data:`RELOAD_INTERVAL` per provider while another one has a list)."""
        now = self._clock.seconds()
        anything = self.loaded
        due = []
        for slot in self.enabled_slots():
            if slot.catalogue.loaded:
                continue
            tried = self._load_tried.get(slot.name)
            if anything and tried is not None and now - tried < RELOAD_INTERVAL:
                continue
            if anything and not slot.breaker.allows():
                continue
            self._load_tried[slot.name] = now
            due.append(slot)
        if not due:
            return
        results: list[tuple[bool, Any]] = await DeferredList([s.catalogue.refresh() for s in due], consumeErrors=True)
        if not self.loaded:
            failed = [
                (slot, result) for slot, (_, result) in zip(due, results, strict=True) if isinstance(result, Failure)
            ]
            for slot, _ in failed:
                if not slot.provider.configured:
                    # Its list may need the key too (a compatible server's /models
                    # often does): the missing key is the reason to give, not the 401.
                    raise slot.missing_key_error()
            if failed:
                failed[0][1].raiseException()

    async def resolve(self, name: str, allowed: Allowed | None = None) -> UpstreamModel:
        """The model a client's name means (the first target's); 404 or 403 errors."""
        return (await self.route(name, None, allowed)).model

    def lookup(self, name: str) -> UpstreamModel:
        return self.route_now(name).model

    # -- routing ------------------------------------------------------------------------
    async def route(self, name: str, purpose: str | None = None, allowed: Allowed | None = None) -> Route:
        """The route for ``name``, fetching model lists first if needed."""
        await self.ensure_loaded()
        return self.route_now(name, purpose, allowed)

    def route_now(self, name: str, purpose: str | None = None, allowed: Allowed | None = None) -> Route:
        """The route for ``name`` from the lists at hand. ``purpose`` is ``chat``,
        ``generate`` or ``embed``: an embedding model cannot chat (400), and
        fallbacks of the wrong kind are left out. ``allowed`` (a client token's
        model list) binds every name the route passes through: an alias target
        outside it is 403, a fallback outside it is skipped."""
        targets = self._targets(name, fallback=False, allowed=allowed)
        model = targets[0].model
        if purpose is not None and purpose != "embed" and model.embedding:
            raise BadRequest(f'"{name}" does not support {purpose}')
        seen = {(t.slot.name, t.model.id) for t in targets}
        for fallback in self._fallbacks_of(name):
            try:
                extra = self._targets(fallback, fallback=True, allowed=allowed)
            except ProxyError as error:
                log.debug(
                    "fallback {fallback} of {name} skipped: {error}", fallback=fallback, name=name, error=error.message
                )
                continue
            for target in extra:
                key = (target.slot.name, target.model.id)
                if key in seen or target.model.embedding != model.embedding:
                    continue
                seen.add(key)
                targets.append(target)
        return Route(name=name, model=model, targets=targets)

    # Without aliases, pins or fallbacks (most configurations) a name's spellings need not be
    # made: a route is looked up on every request.
    def _alias(self, name: str) -> str | None:
        if not self.aliases:
            return None
        for candidate in candidate_ids(name):
            if candidate in self.aliases:
                return self.aliases[candidate]
        return None

    def _pinned(self, *names: str) -> tuple[str, ...] | None:
        if not self.pins:
            return None
        for name in names:
            for candidate in candidate_ids(name):
                if candidate in self.pins:
                    return self.pins[candidate]
        return None

    def _fallbacks_of(self, name: str) -> tuple[str, ...]:
        if not self.fallbacks:
            return ()
        names = [name]
        target = self._alias(name)
        if target:
            names.append(target)
        for each in names:
            for candidate in candidate_ids(each):
                if candidate in self.fallbacks:
                    return self.fallbacks[candidate]
        return self.fallbacks.get("*", ())

    @staticmethod
    def _find(slot: ProviderSlot, name: str) -> UpstreamModel | None:
        return slot.catalogue.find(name)

    def _targets(self, name: str, fallback: bool, allowed: Allowed | None = None) -> list[Target]:
        wanted = self._alias(name) or name
        if allowed is not None:
            for each in dict.fromkeys((name, wanted)):
                if not allowed(each):
                    raise ModelNotAllowed(each)
        pinned = self._pinned(name, wanted)
        if pinned is not None:
            slots = [self._by_name[p] for p in pinned if p in self._by_name and self._by_name[p].enabled]
        else:
            slots = self.enabled_slots()
        offers = [(slot, model) for slot in slots if (model := self._find(slot, wanted)) is not None]
        if not offers:
            prefix, slash, rest = wanted.partition("/")
            slot = self._by_name.get(prefix) if slash else None
            if slot is not None and slot.enabled and (pinned is None or prefix in pinned):
                model = self._find(slot, rest)
                if model is not None:
                    offers = [(slot, model)]
        if not offers:
            raise ModelNotFound(name)
        permitted = [(slot, model) for slot, model in offers if self.filter.allows_model(model)]
        if not permitted:
            raise ModelForbidden(name)
        return [Target(slot, model, name, fallback) for slot, model in permitted]

    # -- health -----------------------------------------------------------------------
    def blockers(self) -> list[str]:
        """Why each enabled provider cannot answer now: no key, or no model list (unreachable)."""
        reasons = []
        for slot in self.enabled_slots():
            if not slot.provider.configured:
                reasons.append(slot.missing_key)
            elif not slot.catalogue.loaded:
                reasons.append(f"{slot.label} cannot be reached: {slot.catalogue.last_error or 'no model list'}")
        return reasons

    def problems(self) -> list[str]:
        """Why ``/health`` should say ``degraded``, one sentence per problem."""
        reasons = []
        for slot in self.enabled_slots():
            label = slot.label
            if not slot.provider.configured:
                reasons.append(slot.missing_key)
            catalogue = slot.catalogue
            if not catalogue.loaded:
                reasons.append(
                    f"the model list has not been fetched yet from {label}"
                    + (f": {catalogue.last_error}" if catalogue.last_error else "")
                )
            elif catalogue.last_error:
                reasons.append(f"the last model refresh failed for {label}: {catalogue.last_error}")
            if slot.health.healthy is False:
                reasons.append(f"the last health check of {label} failed: {slot.health.last_error}")
            if slot.breaker.state == "open":
                reasons.append(f"the circuit breaker of {slot.name} is open: {slot.breaker.last_trip_reason}")
        return reasons


def _tag(model: UpstreamModel) -> dict[str, Any]:
    """A tags entry; a model from an Ollama upstream keeps its real size, digest and details."""
    entry = tag_entry(model)
    real = model.extra.get("ollama_tag")
    if isinstance(real, dict):
        entry.update({k: v for k, v in real.items() if k in ("size", "digest", "details")})
    return entry
