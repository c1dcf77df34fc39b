"""Send a request along its route: retries, failover, breakers and concurrency limits.

For each target of a :class:`~ollama_proxy.routing.router.Route` in turn, the
:class:`Dispatcher` waits for a slot under the provider's concurrency limit, asks
its circuit breaker, runs the attempt and sorts the outcome
(:func:`~ollama_proxy.routing.retry.classify`): retry the same provider after a backoff,
move on to the next target (the model's next provider, then the fallback
models), or give the error to the client. All of that happens only before the
first byte reached the client: an attempt that fails after its output began
raises :class:`AnsweredWithError` and is never retried.

A provider whose breaker is open is skipped; when every target's breaker is
open, the one whose wait ends first is tried anyway rather than failing without
trying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ollama_proxy.errors import ProxyError, ServiceUnavailable
from ollama_proxy.routing.breaker import Outcome
from ollama_proxy.routing.limiter import Busy
from ollama_proxy.routing.retry import RetryPolicy, classify
from ollama_proxy.routing.router import Route, Target

log = Logger()

T = TypeVar("T")


class AnsweredWithError(Exception):
    """The attempt failed after its output had begun; the client was told in-band.

    ``result`` is what the request handler returns (nothing more to write)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result


class _Run:
    """The bookkeeping of one request's way along its route."""

    # Held by every open stream: slots, not a dict of its own.
    __slots__ = ("deadline", "error", "tried", "busy", "attempted")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.error: BaseException | None = None  # the most telling error so far
        self.tried: list[str] = []
        self.busy: Busy | None = None
        self.attempted = False

    def failed(self, target: Target, error: BaseException) -> None:
        self.attempted = True
        status = getattr(error, "upstream_status", None)
        label = f"{target.slot.name}" + (f" ({target.model.id})" if target.fallback else "")
        summary = f"{status}" if status else "no answer"
        entry = f"{label}: {summary}"
        if entry not in self.tried:
            self.tried.append(entry)
        # A 403/404 from a later provider says less than an outage of an earlier one.
        if self.error is None or status not in (403, 404):
            self.error = error


class Dispatcher:
    """Runs attempts along routes; one per proxy, shared by every request."""

    def __init__(self, policy: RetryPolicy, clock: IReactorTime) -> None:
        self.policy = policy
        self._clock = clock

    async def run(self, route: Route, attempt: Callable[[Target], Awaitable[T]]) -> T:
        """The result of the first attempt that succeeds (or that failed after its
        output began); otherwise the most telling error, naming what was tried."""
        run = _Run(self._clock.seconds() + self.policy.settings.deadline)
        # What is made here is held by every open stream for its whole life: one list of the
        # targets, and the rarely needed set and list only once something goes in them.
        pending = [t for t in route.targets if t.slot.provider.configured]
        if not pending:
            raise route.targets[0].slot.missing_key_error()

        deferred: set[int] | None = None
        open_targets: list[Target] | None = None
        index = 0
        while index < len(pending):
            target = pending[index]
            index += 1
            slot = target.slot
            if not slot.breaker.allows():
                if open_targets is None:
                    open_targets = []
                open_targets.append(target)
                continue
            if (
                not slot.limiter.has_room()
                and (deferred is None or id(target) not in deferred)
                and self._free_later(pending[index:])
            ):
                # Full here while a later target has room: come back to this one last.
                if deferred is None:
                    deferred = set()
                deferred.add(id(target))
                pending.append(target)
                continue
            found, result = await self._target(target, attempt, run, force=False)
            if found:
                return result
        if not run.attempted and open_targets:
            soonest = min(open_targets, key=lambda t: t.slot.breaker.open_remaining())
            log.info(
                "every provider for {model} has an open breaker; trying {provider}, whose wait ends first",
                model=route.name,
                provider=soonest.slot.name,
            )
            found, result = await self._target(soonest, attempt, run, force=True)
            if found:
                return result
        raise self._final_error(route, run)

    def _ms_since(self, started: float) -> float:
        # A method, not a closure made per attempt: an open stream's attempt is waiting, and
        # a closure (its function, defaults and cell) would be held as long.
        return (self._clock.seconds() - started) * 1000.0

    @staticmethod
    def _free_later(targets: list[Target]) -> bool:
        return any(t.slot.limiter.has_room() and t.slot.breaker.allows() for t in targets)

    async def _target(
        self, target: Target, attempt: Callable[[Target], Awaitable[T]], run: _Run, force: bool
    ) -> tuple[bool, Any]:
        """Try one target, with retries. ``(True, result)`` when it answered."""
        slot = target.slot
        retry = 0
        while True:
            try:
                if not slot.limiter.try_acquire():
                    await slot.limiter.acquire()
            except Busy as busy:
                slot.stats.rejected_requests += 1
                run.busy = busy
                return False, None
            call = slot.breaker.begin(force=force and retry == 0)
            if call is None:
                slot.limiter.release()
                return False, None
            started = self._clock.seconds()
            try:
                result = await attempt(target)
            except AnsweredWithError as error:
                call.finish(Outcome.FAILURE)
                slot.stats.add(self._ms_since(started), False, error.message)
                slot.limiter.release()
                return True, error.result
            except CancelledError:
                call.finish(Outcome.IGNORED)
                slot.stats.add(self._ms_since(started), None)
                slot.limiter.release()
                raise
            except Exception as error:  # noqa: BLE001 - sorted by classify; unknown kinds re-raised
                verdict = classify(error)
                call.finish(verdict.outcome, verdict.retry_after)
                slot.stats.add(self._ms_since(started), False, getattr(error, "message", None) or str(error))
                slot.limiter.release()
                if not verdict.retry and not verdict.fail_over:
                    raise
                run.failed(target, error)
                if verdict.retry:
                    retry += 1
                    delay = self.policy.delay(retry, verdict.retry_after)
                    now = self._clock.seconds()
                    if delay is not None and slot.breaker.allows() and now + delay <= run.deadline:
                        slot.stats.retries += 1
                        log.info(
                            "{provider}: retry {n} in {delay:.2f}s after: {error}",
                            provider=slot.name,
                            n=retry,
                            delay=delay,
                            error=getattr(error, "message", error),
                        )
                        if delay > 0:
                            await deferLater(self._clock, delay, lambda: None)
                        continue
                slot.stats.fallbacks += 1
                return False, None
            else:
                call.finish(Outcome.SUCCESS)
                slot.stats.add(self._ms_since(started), True)
                slot.limiter.release()
                return True, result

    def _final_error(self, route: Route, run: _Run) -> BaseException:
        error = run.error
        if error is None:
            if run.busy is not None:
                return run.busy
            names = ", ".join(dict.fromkeys(t.slot.name for t in route.targets))
            return ServiceUnavailable(
                f"no provider can answer '{route.name}' now: the circuit breaker of {names} is open"
            )
        if isinstance(error, ProxyError) and len(run.tried) > 1:
            error.message = f"{error.message} (tried {'; '.join(run.tried)})"
        return error
