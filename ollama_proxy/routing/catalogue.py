"""The cached list of models the proxy offers, kept fresh by the refresh service.

A refresh that fails keeps the last good list. A request that arrives before any
refresh succeeded triggers one (single-flight), so the first request after
start-up does not fail just because the timer has not fired yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.errors import ModelNotFound
from ollama_proxy.wire.models import UpstreamModel, candidate_ids

log = Logger()

ModelSource = Callable[[], "Deferred[Sequence[UpstreamModel]]"]


class ModelCatalogue:
    """One provider's models by upstream id, and when they were last fetched.

    The filter is the router's: it applies to the merged view of every provider."""

    def __init__(self, source: ModelSource, clock: IReactorTime) -> None:
        self._source = source
        self._clock = clock
        self._models: dict[str, UpstreamModel] = {}
        self.last_refresh: float | None = None
        self.last_error: str | None = None
        self._waiters: list[Deferred[None]] = []
        self._fetching: Deferred[None] | None = None

    # -- reading -----------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.last_refresh is not None

    def all_models(self) -> list[UpstreamModel]:
        return sorted(self._models.values(), key=lambda m: m.id)

    @property
    def model_count(self) -> int:
        return len(self._models)

    def find(self, name: str) -> UpstreamModel | None:
        """The model a client's name means, or ``None``: the router asks every provider's
        catalogue on every request, and most of them do not hold the name (raising and
        catching a 404 for each was a few percent of a request's CPU)."""
        for candidate in candidate_ids(name):
            model = self._models.get(candidate)
            if model is not None:
                return model
        return None

    def lookup(self, name: str) -> UpstreamModel:
        """The model a client's name means; raises a 404 error."""
        model = self.find(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    async def resolve(self, name: str) -> UpstreamModel:
        """Like :meth:`lookup`, fetching the list first if it was never fetched."""
        if not self.loaded:
            await self.refresh()
        return self.lookup(name)

    # -- updating ----------------------------------------------------------
    def replace(self, models: Iterable[UpstreamModel]) -> None:
        self._models = {m.id: m for m in models}
        self.last_refresh = self._clock.seconds()
        self.last_error = None

    def refresh(self) -> Deferred[None]:
        """Fetch the list once; concurrent callers share one fetch. Fails when the fetch fails.

        Cancelling a caller's Deferred lets that caller go; when none is left
        waiting, the fetch itself is cancelled (the daemon is stopping).
        """
        waiter: Deferred[None] = Deferred(canceller=self._waiter_cancelled)
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._fetching = ensureDeferred(self._fetch())
            self._fetching.addBoth(self._deliver)
        return waiter

    def _waiter_cancelled(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters and self._fetching is not None:
            self._fetching.cancel()

    async def _fetch(self) -> None:
        models = await self._source()
        self.replace(models)
        log.info("model list refreshed: {count} models", count=len(self._models))

    def _deliver(self, result: Any) -> None:
        self._fetching = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.last_error = str(result.value)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def refresh_quietly(self) -> None:
        """For the timer: a failed refresh is logged and the last good list kept."""
        try:
            await self.refresh()
        except CancelledError:
            return  # the daemon is stopping
        except Exception as error:  # noqa: BLE001 - a timer call must never raise
            log.warn(
                "model list refresh failed, keeping {count} cached models: {error}",
                count=len(self._models),
                error=str(error),
            )
