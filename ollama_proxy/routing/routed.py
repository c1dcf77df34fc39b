"""All the providers behind one :class:`~ollama_proxy.providers.interfaces.IProvider`.

Code that only needs "a provider" (``provider.open_chat(body)``,
``provider.embed(model, inputs, dimensions)``) gets routing, retries, failover,
breakers and concurrency limits from this one object: ``body["model"]`` is
resolved by the :class:`~ollama_proxy.routing.router.Router` (so aliases, pins and the
``provider/model`` form work), and each target is tried by the
:class:`~ollama_proxy.routing.dispatch.Dispatcher` until one opens its stream. The stream
keeps the provider's slot until it ends, and its end is what the breaker and the
statistics record. Failover happens only while opening: once a stream is handed
over, its reader owns it. (The Ollama routes in :mod:`ollama_proxy.api.native` go
further and also retry streams that fail before their first byte.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.python.failure import Failure
from zope.interface import implementer

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.routing.dispatch import Dispatcher, Held
from ollama_proxy.routing.router import Router, Target
from ollama_proxy.wire.models import UpstreamModel


@implementer(IUpstreamStream)
class RoutedStream:
    """A provider's stream that tells the dispatcher when it is over."""

    def __init__(self, inner: IUpstreamStream) -> None:
        self._inner = inner
        self.done: Deferred[None] = Deferred()
        self._delivering = False
        self._error: Any = None

    def deliver(self, on_event: Any) -> Deferred[None]:
        self._delivering = True

        def watch(chunk: dict[str, Any]) -> None:
            # OpenRouter reports a failure inside a 200 stream: an ``error`` chunk.
            if chunk.get("error") or any(
                isinstance(c, dict) and c.get("finish_reason") == "error" for c in chunk.get("choices") or ()
            ):
                self._error = chunk.get("error") or "the stream reported an error"
            on_event(chunk)

        finished = self._inner.deliver(watch)
        finished.addBoth(self._ended)
        return finished

    def _ended(self, outcome: Any) -> Any:
        if not self.done.called:
            if isinstance(outcome, Failure):
                self.done.errback(outcome)
            elif self._error is not None:
                self.done.errback(Failure(UpstreamStreamError(str(self._error))))
            else:
                self.done.callback(None)
        return outcome

    def pauseProducing(self) -> None:
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._inner.stopProducing()
        if not self._delivering and not self.done.called:
            self.done.errback(Failure(CancelledError()))  # dropped unread: free the slot


@implementer(IProvider)
class RoutedProvider:
    """Every configured provider as one."""

    name = "ollama-proxy"
    type = "ollama-proxy"
    label = "ollama-proxy"

    def __init__(self, router: Router, dispatcher: Dispatcher) -> None:
        self.router = router
        self.dispatcher = dispatcher

    @property
    def configured(self) -> bool:
        return any(slot.usable for slot in self.router.enabled_slots())

    async def list_models(self) -> list[UpstreamModel]:
        await self.router.ensure_loaded()
        return self.router.allowed_models()

    async def open_chat(self, body: Mapping[str, Any]) -> IUpstreamStream:
        route = await self.router.route(str(body.get("model") or ""), "chat")

        async def attempt(target: Target) -> Held:
            stream = RoutedStream(await target.provider.open_chat({**body, "model": target.model.id}))
            return Held(stream, stream.done)

        return await self.dispatcher.run(route, attempt)  # type: ignore[no-any-return]

    async def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        route = await self.router.route(model, "embed")

        async def attempt(target: Target) -> tuple[list[list[float]], int]:
            return await target.provider.embed(target.model.id, inputs, dimensions)  # type: ignore[no-any-return]

        return await self.dispatcher.run(route, attempt)

    async def check_health(self) -> None:
        """Fails only when no enabled provider answers."""
        errors = []
        for slot in self.router.enabled_slots():
            try:
                await slot.provider.check_health()
                return
            except Exception as error:  # noqa: BLE001 - the next provider may answer
                errors.append(error)
        if errors:
            raise errors[0]

    def close(self) -> Deferred[Any]:
        """Close every provider's connections (the service tree also does, one by one)."""
        return DeferredList([slot.provider.close() for slot in self.router.slots], consumeErrors=True)
