"""The health-check job: probe every provider's models endpoint, feed the breakers.

Each run asks every enabled provider for its models (``check_health``), records
when and what it found, and tells the provider's circuit breaker: a failed probe
counts like a failed call, a good one may end an open wait early. A provider whose
model list was never fetched gets it fetched as soon as a probe succeeds. The job
never raises: a ``TimerService`` whose call fails stops for good.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, DeferredList, ensureDeferred
from twisted.logger import Logger

from ollama_proxy.routing.breaker import Outcome
from ollama_proxy.routing.retry import classify
from ollama_proxy.routing.router import Router
from ollama_proxy.routing.slots import ProviderSlot

log = Logger()


class HealthChecker:
    """Probes the providers of ``router``; ``state`` (the API's ``HealthState``)
    gets the summary: healthy when every enabled provider answered."""

    def __init__(self, router: Router, state: Any, clock: Any) -> None:
        self.router = router
        self.state = state
        self.clock = clock

    async def check(self) -> None:
        slots = self.router.enabled_slots()
        await DeferredList([ensureDeferred(self.check_one(slot)) for slot in slots], consumeErrors=True)
        failing = [s for s in slots if s.health.healthy is False]
        self.state.last_check = self.clock.seconds()
        self.state.healthy = not failing
        self.state.last_error = "; ".join(f"{s.name}: {s.health.last_error}" for s in failing) or None

    async def check_one(self, slot: ProviderSlot) -> None:
        try:
            await slot.provider.check_health()
        except CancelledError:
            return  # the daemon is stopping: nothing was learned
        except Exception as error:  # noqa: BLE001 - a TimerService call that raises stops for good
            verdict = classify(error)
            slot.health.healthy = False
            slot.health.last_error = getattr(error, "message", None) or str(error) or error.__class__.__name__
            # A 404 from the models endpoint still proves the server is up.
            outcome = verdict.outcome if verdict.outcome is not Outcome.IGNORED else Outcome.FAILURE
            slot.breaker.health(outcome, verdict.retry_after)
            log.warn("health check of {provider} failed: {error}", provider=slot.name, error=slot.health.last_error)
        else:
            slot.health.healthy = True
            slot.health.last_error = None
            slot.breaker.health(Outcome.SUCCESS)
            if not slot.catalogue.loaded:
                await slot.catalogue.refresh_quietly()
        finally:
            slot.health.last_check = self.clock.seconds()
