"""The request pipeline: what every surface shares between parsing a request and writing its answer.

Both Klein apps (native ``/api`` in :mod:`~ollama_proxy.api.native`, OpenAI's
``/v1`` in :mod:`~ollama_proxy.api.v1`) receive the one :class:`Pipeline` of the
server. It reads the body (with its size limit), resolves the model to a route
(:class:`~ollama_proxy.routing.router.Router`), runs chat and embedding calls
along it (:class:`~ollama_proxy.routing.dispatch.Dispatcher`: retries, failover,
breakers, concurrency limits), keeps ``/api/ps`` (:attr:`Pipeline.running`) and
notes what happened on the request's record (:mod:`ollama_proxy.front.record`),
which the front door hands to the statistics, metrics, ledger and access log when
the request finishes. Auth, CORS, stream limits and the drain happened before, in
the front door (:mod:`ollama_proxy.front.door`).

Adding a surface is three pieces, none of them a copy of routing, retries, limits,
auth or bookkeeping (:mod:`~ollama_proxy.api.responses` is a short worked example,
:mod:`~ollama_proxy.api.messages` one with a provider that speaks the surface's API):

1. **Parse** its body into the internal chat request: an OpenAI chat-completions
   body (``upstream``) plus whether to stream, in a pure function in ``wire/``.
2. **Render**: a translator class that turns upstream chunks into the surface's
   objects (``feed``/``close``/``final``, tokens and timings: see
   :class:`~ollama_proxy.api.relay.Translator`), and a relay subclass for the
   framing (:class:`~ollama_proxy.api.relay.SSERelay` is OpenAI's) whose
   ``dialect`` renders errors (add one to :mod:`ollama_proxy.errors`, with its
   path prefix in ``DIALECTS`` so the front door answers in it too).
3. **Declare** the Klein route with :class:`~ollama_proxy.api.routes.Routes` (path,
   methods and the endpoint label for the statistics, once), and in it::

       body = self.pipeline.body(request)
       route = await self.pipeline.route(request, model_name(body), "chat")
       return await self.pipeline.chat(request, route, ChatCall(upstream, stream, new_translator, MyRelay))
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from ollama_proxy.api.relay import ChatRelay, Translator
from ollama_proxy.api.routes import sized
from ollama_proxy.config.settings import Config
from ollama_proxy.errors import BadRequest, ErrorDialect, RequestTooLarge, error_response
from ollama_proxy.front.door import token_models
from ollama_proxy.front.record import record_of, record_translation
from ollama_proxy.ledger.interfaces import IUsageLedger
from ollama_proxy.routing.dispatch import AnsweredWithError, Dispatcher
from ollama_proxy.routing.embeddings import embed
from ollama_proxy.routing.router import Route, Router, Target
from ollama_proxy.routing.running import RunningModels
from ollama_proxy.wire.request_body import parse_body


@dataclass(slots=True)  # slots: held as long as the stream
class ChatCall:
    """One chat as a surface asks for it: the internal request, and how to render the answer.

    ``upstream`` is the OpenAI chat-completions body (its ``model`` is set per
    target); ``new_translator`` makes a fresh translator for each attempt, so one
    that fails before any output leaves no trace in the next one's answer;
    ``relay`` frames the stream (and its errors) on the wire.
    """

    upstream: dict[str, Any]
    stream: bool
    new_translator: Callable[[], Translator]
    relay: type[ChatRelay] = ChatRelay
    keep_alive: float | None = None  # how long /api/ps lists the model afterwards
    # Another call for a target that speaks the surface's own API (``/v1/messages`` to
    # Anthropic): its body goes natively, its own translator and relay answer; None: this one.
    for_target: Callable[[Target], ChatCall | None] | None = None


@dataclass
class Embedded:
    """An embedding call's result and how long the upstream took."""

    vectors: list[list[float]]
    tokens: int
    seconds: float


class Pipeline:
    """Body, route, dispatch, ``/api/ps`` and counting: one per server, shared by every surface."""

    def __init__(
        self,
        config: Config,
        router: Router,
        dispatcher: Dispatcher,
        clock: Any,
        gate: Any = None,
        ledger: IUsageLedger | None = None,
    ) -> None:
        self.config = config
        # The usage ledger (limits and budgets before dispatch); None without one.
        self.ledger = ledger
        self.router = router
        self.dispatcher = dispatcher
        self.clock = clock
        self.gate = gate
        self.running = RunningModels(clock, config.default_keep_alive)

    # -- bookkeeping ------------------------------------------------------------------
    def observe(self, request: IRequest, endpoint: str) -> None:
        """A route took the request: its record is counted under ``endpoint`` when it finishes."""
        record_of(request).endpoint = endpoint

    def track(self, request: IRequest, handler: Deferred[Any]) -> Deferred[Any]:
        """Let a draining server cut the handler (a stream ends with an error line, else 503)."""
        return self.gate.lifecycle.track_handler(request, handler) if self.gate is not None else handler

    def fail(self, request: IRequest, failure: Failure, dialect: ErrorDialect) -> bytes | None:
        """The error answer for whatever a route raised (the Klein apps' one error handler)."""
        return sized(error_response(request, failure, record_of(request).dialect or dialect), request)

    # -- the request ----------------------------------------------------------------
    def body(self, request: IRequest) -> dict[str, Any]:
        """The request's JSON object; 413 past the body limit, 400 when it is not one."""
        limit = self.config.max_body_bytes
        content = request.content
        if getattr(request, "body_too_large", False):
            raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes")
        raw = content.read() if content is not None else b""
        if content is not None:
            # Read once, parsed here: the bytes need not stay for as long as the answer
            # streams (a long conversation's body, held by each of 10,000 open streams).
            content.seek(0)
            content.truncate()
        if len(raw) > limit:
            raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes")
        return parse_body(raw)

    async def route(self, request: IRequest, name: str, purpose: str) -> Route:
        """Where a request for ``name`` goes; the request's record learns the model.

        A request that will use a model (chat, generate, embed) is counted against
        its client token's limits first: over one, it is refused (429) before
        anything goes upstream.
        """
        record = record_of(request)
        record.model = name
        if self.ledger is not None and purpose in _METERED:
            self.ledger.admit(record)
        # A token's model list binds aliases and fallbacks too, not only the name asked for.
        route = await self.router.route(name, purpose, token_models(request))
        record_of(request).provider = route.targets[0].slot.name if route.targets else None
        if purpose == "embed" and not route.model.embedding:
            raise BadRequest(f'"{name}" does not support embeddings')
        return route

    # -- answers --------------------------------------------------------------------
    async def chat(self, request: IRequest, route: Route, call: ChatCall) -> bytes | None:
        """Answer along ``route`` (retries, fallback, breakers: the dispatcher's job).

        The request holds an upstream generation from here until its answer is
        complete, streamed or not: the stream limits count it (429/503 past them).
        """
        if self.gate is not None and self.gate.streams.active_limits:
            self.gate.streams.admit(record_of(request))
        self.running.use(route.model, call.keep_alive)
        try:
            return await self._dispatch_chat(request, route, call)
        finally:
            self.running.use(route.model, call.keep_alive)

    def _dispatch_chat(self, request: IRequest, route: Route, call: ChatCall) -> Coroutine[Any, Any, bytes | None]:
        # Not a coroutine itself: it hands back the dispatcher's, so an open stream does not
        # hold one more suspended frame (with its locals) for its whole life.
        started = self.clock.seconds()
        stream = call.stream
        translators: list[Any] = []

        async def attempt(target: Target) -> bytes | None:
            chosen = (call.for_target(target) if call.for_target is not None else None) or call
            translator = chosen.new_translator()
            translator.timings.started = started
            if not translators:
                # The access line and metrics take tokens and timings from the last attempt.
                record_translation(request, _LastAttempt(translators), self.clock, stream)
            translators.append(translator)
            relay = chosen.relay(request, target.provider, translator, self.clock)
            _mark(request, target)
            body = {**chosen.upstream, "model": target.model.id}
            if not stream:
                return await relay.answer(body, deadline=target.slot.response_timeout)
            await relay.stream(body)
            if relay.failed:
                raise AnsweredWithError(relay.error or "the stream broke after output began")
            return None

        return self.dispatcher.run(route, attempt)

    async def embed(
        self,
        request: IRequest,
        route: Route,
        inputs: list[str],
        dimensions: int | None,
        truncate: bool = True,
        keep_alive: float | None = None,
    ) -> Embedded:
        """Embeddings along ``route``, with the same retries and fallback as chat; counted on the record."""
        started = self.clock.seconds()
        self.running.use(route.model, keep_alive)
        vectors: list[list[float]] = []
        tokens = 0

        async def attempt(target: Target) -> tuple[list[list[float]], int]:
            _mark(request, target)
            return await embed(target.provider, target.model, inputs, dimensions, truncate)

        if inputs:
            vectors, tokens = await self.dispatcher.run(route, attempt)
        seconds = self.clock.seconds() - started
        record_of(request).upstream_seconds += seconds
        record_of(request).add_tokens(tokens, None)
        return Embedded(vectors, tokens, seconds)


# Route purposes that use a model upstream, and so count against limits and budgets.
_METERED = frozenset({"chat", "generate", "embed"})


class _LastAttempt:
    """Reads as the translator of the latest attempt (retries make several)."""

    __slots__ = ("_translators",)

    def __init__(self, translators: list[Any]) -> None:
        self._translators = translators

    # What the record reads at every request's end, found without the failed lookup that
    # precedes every __getattr__ (1.64 -> 0.37 us for the four).
    @property
    def timings(self) -> Any:
        return self._translators[-1].timings

    @property
    def prompt_tokens(self) -> Any:
        return self._translators[-1].prompt_tokens

    @property
    def completion_tokens(self) -> Any:
        return self._translators[-1].completion_tokens

    @property
    def cost(self) -> Any:
        return self._translators[-1].cost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._translators[-1], name)


def _mark(request: IRequest, target: Target) -> None:
    """Say which provider and upstream model answer (set before the first byte)."""
    record = record_of(request)
    record.provider = target.slot.name
    record.upstream_model = target.model.id
    record.pricing = target.model.pricing
    request.setHeader(b"x-ollama-proxy-provider", target.slot.name.encode("utf-8"))
    request.setHeader(b"x-ollama-proxy-model", target.model.id.encode("utf-8"))
