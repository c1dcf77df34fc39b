"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The ``/v1`` app declares the routes (in Anthropic's error dialect) and hands them
here. A request goes through the one :class:`~ollama_proxy.api.pipeline.Pipeline`
(routing, retries, fallback, breakers, limits, records) as an OpenAI chat body;
a target that speaks Messages itself (:class:`IMessagesProvider`) is sent the
request as the client wrote it instead, and its events are relayed as they come.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.iweb import IRequest

from ollama_proxy.api.pipeline import ChatCall, Pipeline
from ollama_proxy.api.relay import ChatRelay, NamedEventRelay
from ollama_proxy.errors import ANTHROPIC, BadRequest, json_response
from ollama_proxy.providers.interfaces import IMessagesProvider
from ollama_proxy.routing.router import Target
from ollama_proxy.wire.anthropic_answer import MessagesPassthrough, MessagesRenderer
from ollama_proxy.wire.anthropic_request import estimate_tokens, plan_messages

# Carries the client's anthropic-beta header beside a native body, to the relay.
_BETA_KEY = "x-anthropic-beta"
# Seconds of silence in a started stream before a ping event is sent.
PING_INTERVAL = 10.0


class _Native:
    """Opens the upstream with the provider's own Messages call, not ``open_chat``."""

    provider: Any

    def _call_upstream(self, body: dict[str, Any]) -> Any:
        beta = body.pop(_BETA_KEY, None)
        return self.provider.open_messages(body, beta)


class MessagesEventRelay(NamedEventRelay):
    """The Messages stream, in Anthropic's error dialect, with a ``ping`` whenever it has
    been silent for :attr:`ping_interval` seconds (as Anthropic's API sends them): a
    long silent thought upstream must not look like a dead connection to the client or
    to a reverse proxy between them."""

    dialect = ANTHROPIC
    ping_interval = PING_INTERVAL
    _ping: IDelayedCall | None = None

    async def stream(self, body: dict[str, Any]) -> None:
        try:
            await super().stream(body)
        finally:
            if self._ping is not None and self._ping.active():
                self._ping.cancel()
            self._ping = None

    def _write(self, line: bytes) -> None:
        super()._write(line)
        if not (self.started_output and self._connected):
            return
        if self._ping is not None and self._ping.active():
            self._ping.reset(self.ping_interval)
        else:
            self._ping = self._clock.callLater(self.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        self._write(self._encode({"type": "ping"}))


class NativeAnswerRelay(_Native, ChatRelay):
    """A non-streamed Messages answer gathered from a native upstream."""


class NativeStreamRelay(_Native, MessagesEventRelay):
    """A Messages stream relayed from a native upstream."""


def _model(body: dict[str, Any]) -> str:
    name = body.get("model")
    if name in (None, ""):
        raise BadRequest("model: Field required")
    if not isinstance(name, str):
        raise BadRequest("model: Input should be a valid string")
    return name


def _beta(request: IRequest) -> str | None:
    value = request.getHeader(b"anthropic-beta")
    return value.decode("latin-1") if value else None


class Messages:
    """The handlers behind ``/v1/messages``; one per server, sharing the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def create(self, request: IRequest) -> bytes | None:
        """``POST /v1/messages``: streamed or not, over any provider."""
        pipeline = self.pipeline
        body = pipeline.body(request)
        name = _model(body)
        route = await pipeline.route(request, name, "chat")
        plan = plan_messages(body, route.model, name, _beta(request))
        stream = plan.stream
        message_id = "msg_" + uuid.uuid4().hex[:24]
        clock = pipeline.clock.seconds

        def renderer() -> MessagesRenderer:
            return MessagesRenderer(
                model=name, message_id=message_id, clock=clock, keep_text=not stream, show_thinking=plan.show_thinking
            )

        def passthrough() -> MessagesPassthrough:
            return MessagesPassthrough(name, clock, keep_text=not stream)

        native = ChatCall(
            {**plan.native, _BETA_KEY: plan.beta},
            stream,
            passthrough,
            NativeStreamRelay if stream else NativeAnswerRelay,
        )

        def for_target(target: Target) -> ChatCall | None:
            if IMessagesProvider.providedBy(target.provider):
                return native
            if plan.untranslatable is not None:
                raise plan.untranslatable  # this target cannot take it; a 400 naming what
            return None

        if plan.untranslatable is not None and not any(IMessagesProvider.providedBy(t.provider) for t in route.targets):
            raise plan.untranslatable

        if stream:
            request.setHeader(b"cache-control", b"no-cache")
        relay = MessagesEventRelay if stream else ChatRelay
        return await pipeline.chat(
            request, route, ChatCall(plan.upstream, stream, renderer, relay, for_target=for_target)
        )

    async def count_tokens(self, request: IRequest) -> bytes:
        """``POST /v1/messages/count_tokens``: Anthropic's own count where Anthropic serves
        the model, an estimate otherwise (never a 404: Claude Code calls it). The body is
        checked exactly as ``/v1/messages`` checks it (``max_tokens`` aside, which a count
        does not take): what only Anthropic can take passes only where Anthropic serves it."""
        pipeline = self.pipeline
        body = pipeline.body(request)
        name = _model(body)
        route = await pipeline.route(request, name, "chat")
        plan = plan_messages({**body, "max_tokens": 1, "stream": False}, route.model, name)
        untranslatable = plan.untranslatable
        if not route.targets or not IMessagesProvider.providedBy(route.targets[0].provider):
            if untranslatable is not None:
                raise untranslatable  # /v1/messages refuses it on this first target
            return json_response(request, {"input_tokens": estimate_tokens(body)})
        beta = _beta(request)

        async def count(target: Target) -> int:
            if not IMessagesProvider.providedBy(target.provider):
                if untranslatable is not None:
                    raise untranslatable  # as /v1/messages refuses it on this fallback
                return estimate_tokens(body)  # a fallback that cannot count: estimate
            return int(await target.provider.count_tokens({**body, "model": target.model.id}, beta))

        return json_response(request, {"input_tokens": await pipeline.dispatcher.run(route, count)})
