"""Ollama's HTTP API as a Klein app whose state lives on the instance.

``OllamaAPI(...).resource()`` is an ordinary Twisted Web resource: the daemon
serves it at the root, and another program can mount it in its own Site.
Routes raise :class:`~ollama_proxy.errors.ProxyError`; one handler writes the
JSON error body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from ollama_proxy.api.funnel import error_response, json_response
from ollama_proxy.api.observing import observed
from ollama_proxy.api.relay import ChatRelay
from ollama_proxy.api.v1 import OpenAICompatAPI
from ollama_proxy.config.settings import Config
from ollama_proxy.errors import BadRequest, NotImplementedByProxy, ProxyError, RequestTooLarge
from ollama_proxy.front.door import Gate, relative_path, visible_to
from ollama_proxy.front.record import record_of, record_translation
from ollama_proxy.ops.metrics import Metrics, wants_prometheus
from ollama_proxy.ops.stats import Stats
from ollama_proxy.providers.interfaces import IProvider
from ollama_proxy.routing.catalogue import ModelCatalogue
from ollama_proxy.routing.dispatch import AnsweredWithError, Dispatcher
from ollama_proxy.routing.embeddings import embed
from ollama_proxy.routing.retry import RetryPolicy
from ollama_proxy.routing.router import Route, Router, Target
from ollama_proxy.routing.running import RunningModels
from ollama_proxy.wire.models import show_response
from ollama_proxy.wire.ollama_chat import (
    ChatPlan,
    ChatTranslator,
    embed_inputs,
    field_of,
    instant_answer,
    keep_alive_of,
    model_name,
    ndjson,
    parse_body,
    plan_chat,
    plan_generate,
    wants_stream,
)
from ollama_proxy.wire.openai_chat import error_body

log = Logger()


class HealthState:
    """What the health-check service last learned about the upstream."""

    def __init__(self) -> None:
        self.last_check: float | None = None
        self.healthy: bool | None = None
        self.last_error: str | None = None


class OllamaAPI:
    """The routes. One instance per server; nothing is kept in module globals."""

    app = Klein()

    def __init__(
        self,
        config: Config,
        provider: IProvider,
        catalogue: ModelCatalogue,
        stats: Stats,
        health: HealthState,
        clock: Any,
        gate: Gate | None = None,
        metrics: Metrics | None = None,
        *,
        router: Router | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.stats = stats
        self.health = health
        self.clock = clock
        # Without a router (one provider and its catalogue, as an embedding program
        # may pass them), route over that one provider.
        self.router = router if router is not None else Router.single(provider, catalogue, config, clock)
        self.catalogue = self.router
        self.dispatcher = dispatcher or Dispatcher(RetryPolicy(config.retry), clock)
        self.running = RunningModels(clock, config.default_keep_alive)
        self.openai = OpenAICompatAPI(self)
        self.gate = gate
        self.prometheus = metrics  # not "metrics": that name is the /metrics route

    def resource(self) -> IResource:
        """The resource to serve or to mount under a path of another Site.

        With a :class:`~ollama_proxy.front.door.Gate` (as the service tree builds it)
        every request passes the front door first: request id, CORS, drain, auth,
        limits, access log and metrics.
        """
        resource = self.app.resource()
        return self.gate.wrap(resource) if self.gate is not None else resource

    # -- bookkeeping ------------------------------------------------------------
    def _observe(self, request: IRequest, endpoint: str) -> None:
        started = self.clock.seconds()
        self.stats.in_flight += 1
        method = request.method.decode("ascii", "replace")

        def done(result: Any) -> None:
            self.stats.in_flight -= 1
            status = 499 if isinstance(result, Failure) else (request.code or 200)
            failed = bool(getattr(request, "proxy_stream_failed", False))
            self.stats.record(method, endpoint, status, self.clock.seconds() - started, failed)

        request.notifyFinish().addBoth(done)

    def _body(self, request: IRequest) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        content = request.content
        if getattr(request, "body_too_large", False):
            raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes")
        raw = content.read() if content is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes")
        return parse_body(raw)

    # -- errors: the one funnel -------------------------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | None:
        # A /v1 path the /v1 app did not take (e.g. one with a line feed, which the
        # branch route does not match) still answers in OpenAI's shape.
        render = error_body if relative_path(request).startswith("/v1/") else ProxyError.body
        return error_response(request, failure, render, lambda message: ndjson({"error": message}))

    # -- liveness and version -----------------------------------------------------
    @app.route("/", methods=["GET"])
    @observed("/")
    def root(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Ollama is running"

    @app.route("/api/version", methods=["GET"])
    @observed("/api/version")
    def version(self, request: IRequest) -> bytes:
        return json_response(request, {"version": self.config.ollama_version})

    @app.route("/health", methods=["GET"])
    @observed("/health")
    def health_report(self, request: IRequest) -> bytes:
        reasons = self.router.problems()
        stats = self.stats
        return json_response(
            request,
            {
                "status": "degraded" if reasons else "healthy",
                "reasons": reasons,
                "uptime_seconds": round(stats.uptime, 3),
                "model_count": self.catalogue.model_count,
                "filtered_model_count": self.catalogue.filtered_count,
                "request_count": stats.request_count,
                "error_count": stats.error_count,
                "error_rate": stats.error_rate,
                "last_model_refresh": self.catalogue.last_refresh,
                "last_health_check": self.health.last_check,
                "environment": self.config.environment,
                "version": self.config.ollama_version,
                "providers": {
                    s.name: ("healthy" if s.healthy else "unhealthy" if s.enabled else "disabled")
                    for s in self.router.slots
                },
            },
        )

    @app.route("/metrics", methods=["GET"])
    @observed("/metrics")
    def metrics(self, request: IRequest) -> bytes:
        if self.prometheus is not None and wants_prometheus(request):
            accept = request.getHeader(b"accept")
            body, content_type = self.prometheus.exposition(accept.decode("latin-1") if accept else None)
            request.setHeader(b"content-type", content_type.encode("ascii"))
            return body
        return json_response(
            request,
            {"metrics": self.stats.metrics(), "statistics": self.stats.statistics(), "timestamp": self.clock.seconds()},
        )

    # -- models -------------------------------------------------------------------
    @app.route("/api/tags", methods=["GET"])
    @observed("/api/tags")
    async def tags(self, request: IRequest) -> bytes:
        await self.router.ensure_loaded()
        return json_response(
            request, {"models": [e for e in self.router.tag_entries() if visible_to(request, e["name"])]}
        )

    @app.route("/api/tags/<provider>", methods=["GET"])
    @observed("/api/tags/{provider}")
    async def provider_tags(self, request: IRequest, provider: str) -> bytes:
        self.router.slot(provider)
        await self.router.ensure_loaded()
        return json_response(
            request, {"models": [e for e in self.router.tag_entries(provider) if visible_to(request, e["name"])]}
        )

    # -- providers ----------------------------------------------------------------
    @app.route("/api/providers", methods=["GET"])
    @observed("/api/providers")
    def providers(self, request: IRequest) -> bytes:
        router = self.router
        return json_response(request, {"providers": [s.summary(router.models_available(s)) for s in router.slots]})

    @app.route("/api/providers/<provider>", methods=["GET"])
    @observed("/api/providers/{provider}")
    def provider_summary(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return json_response(request, slot.summary(self.router.models_available(slot)))

    @app.route("/api/providers/<provider>/stats", methods=["GET"])
    @observed("/api/providers/{provider}/stats")
    def provider_stats(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return json_response(request, slot.report(self.router.models_available(slot)))

    @app.route("/api/show", methods=["POST"])
    @observed("/api/show")
    async def show(self, request: IRequest) -> bytes:
        body = self._body(request)
        name = model_name(body)
        record_of(request).model = name
        model = await self.catalogue.resolve(name)
        return json_response(request, show_response(model))

    @app.route("/api/ps", methods=["GET"])
    @observed("/api/ps")
    def ps(self, request: IRequest) -> bytes:
        return json_response(request, {"models": self.running.listing()})

    # -- Ollama's OpenAI-compatible API ---------------------------------------------------
    @app.route("/v1", branch=True)
    def openai_compatible(self, request: IRequest) -> IResource:
        return self.openai.resource()

    # -- inference ----------------------------------------------------------------
    async def route(self, name: str, purpose: str, request: IRequest) -> Route:
        """Where a request for ``name`` goes; the request's record learns the model."""
        record_of(request).model = name
        route = await self.router.route(name, purpose)
        record_of(request).provider = route.targets[0].slot.name if route.targets else None
        if purpose == "embed" and not route.model.embedding:
            raise BadRequest(f'"{name}" does not support embeddings')
        return route

    @app.route("/api/chat", methods=["POST"])
    @observed("/api/chat")
    async def chat(self, request: IRequest) -> bytes | None:
        body = self._body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.route(name, "chat", request)
        plan = plan_chat(body, route.model, name)
        return await self._answer(request, route, name, "chat", plan, stream)

    @app.route("/api/generate", methods=["POST"])
    @observed("/api/generate")
    async def generate(self, request: IRequest) -> bytes | None:
        body = self._body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.route(name, "generate", request)
        plan = plan_generate(body, route.model, name)
        return await self._answer(request, route, name, "generate", plan, stream)

    async def _answer(
        self, request: IRequest, route: Route, name: str, kind: str, plan: ChatPlan, stream: bool
    ) -> bytes | None:
        model = route.model
        if plan.upstream is None:
            # An empty prompt loads the model (or, with keep_alive 0, unloads it): nothing to ask.
            if plan.done_reason == "unload":
                self.running.unload(model)
            else:
                self.running.use(model, plan.keep_alive)
            return json_response(request, instant_answer(kind, name, plan.done_reason or "load", self.clock.seconds()))
        self.running.use(model, plan.keep_alive)
        try:
            return await self.dispatch_chat(
                request,
                route,
                plan.upstream,
                stream,
                lambda: ChatTranslator.for_plan(plan, name, kind, self.clock.seconds, keep_text=not stream),
            )
        finally:
            self.running.use(model, plan.keep_alive)

    async def dispatch_chat(
        self,
        request: IRequest,
        route: Route,
        upstream_body: dict[str, Any],
        stream: bool,
        new_translator: Callable[[], Any],
        relay_class: type[ChatRelay] = ChatRelay,
    ) -> bytes | None:
        """Answer along ``route`` (retries, fallback, breakers: the dispatcher's job).

        Each attempt gets a fresh translator and relay, so one that fails before any
        output leaves no trace in the next one's answer. Shared by the native and
        the ``/v1`` APIs; ``new_translator`` and ``relay_class`` make the difference.
        """
        started = self.clock.seconds()
        translators: list[Any] = []

        async def attempt(target: Target) -> bytes | None:
            translator = new_translator()
            translator.timings.started = started
            if not translators:
                # The access line and metrics take tokens and timings from the last attempt.
                record_translation(request, _LastAttempt(translators), self.clock, stream)
            translators.append(translator)
            relay = relay_class(request, target.provider, translator, self.clock)
            _mark(request, target)
            body = {**upstream_body, "model": target.model.id}
            if not stream:
                return await relay.answer(body)
            try:
                await relay.stream(body)
            finally:
                request.proxy_stream_failed = relay.failed  # type: ignore[attr-defined]
            if relay.failed:
                raise AnsweredWithError(relay.error or "the stream broke after output began")
            return None

        if stream:
            self.stats.active_streams += 1
        try:
            result = await self.dispatcher.run(route, attempt)
        finally:
            if stream:
                self.stats.active_streams -= 1
        if translators:
            self.stats.add_tokens(translators[-1].prompt_tokens, translators[-1].completion_tokens)
        return result

    @app.route("/api/embed", methods=["POST"])
    @observed("/api/embed")
    async def embed(self, request: IRequest) -> bytes:
        body = self._body(request)
        name = model_name(body)
        inputs = embed_inputs(body)
        dimensions = field_of(body, "dimensions", int, None)
        truncate = field_of(body, "truncate", bool, True)
        keep_alive = keep_alive_of(body)
        route = await self.route(name, "embed", request)
        started = self.clock.seconds()
        self.running.use(route.model, keep_alive)
        vectors, tokens = await self.dispatch_embed(request, route, inputs, dimensions, truncate) if inputs else ([], 0)
        elapsed = int((self.clock.seconds() - started) * 1e9)
        record_of(request).upstream_seconds += elapsed / 1e9
        record_of(request).add_tokens(tokens, None)
        self.stats.add_tokens(tokens, 0)
        return json_response(
            request,
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": elapsed,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            },
        )

    @app.route("/api/embeddings", methods=["POST"])
    @observed("/api/embeddings")
    async def embeddings(self, request: IRequest) -> bytes:
        body = self._body(request)
        name = model_name(body)
        prompt = field_of(body, "prompt", str, "")
        keep_alive = keep_alive_of(body)
        route = await self.route(name, "embed", request)
        self.running.use(route.model, keep_alive)
        if not prompt:
            return json_response(request, {"embedding": []})
        started = self.clock.seconds()
        vectors, tokens = await self.dispatch_embed(request, route, [prompt], None)
        record_of(request).upstream_seconds += self.clock.seconds() - started
        record_of(request).add_tokens(tokens, None)
        self.stats.add_tokens(tokens, 0)
        return json_response(request, {"embedding": vectors[0] if vectors else []})

    async def dispatch_embed(
        self, request: IRequest, route: Route, inputs: list[str], dimensions: int | None, truncate: bool = True
    ) -> tuple[list[list[float]], int]:
        """Embeddings along ``route``, with the same retries and fallback as chat."""

        async def attempt(target: Target) -> tuple[list[list[float]], int]:
            _mark(request, target)
            return await embed(target.provider, target.model, inputs, dimensions, truncate)

        return await self.dispatcher.run(route, attempt)

    # -- local model management: not for a cloud proxy --------------------------------
    def _unsupported(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")
        raise NotImplementedByProxy(
            f"{path} is not supported: ollama-proxy serves cloud models and manages no local ones"
        )

    @app.route("/api/create", methods=["POST"])
    @app.route("/api/copy", methods=["POST"])
    @app.route("/api/pull", methods=["POST"])
    @app.route("/api/push", methods=["POST"])
    @app.route("/api/delete", methods=["DELETE"])
    @observed("unsupported")
    def unsupported(self, request: IRequest) -> bytes:
        return self._unsupported(request)

    @app.route("/api/blobs/<digest>", methods=["POST", "HEAD"])
    @observed("unsupported")
    def blobs(self, request: IRequest, digest: str) -> bytes:
        return self._unsupported(request)


class _LastAttempt:
    """Reads as the translator of the latest attempt (retries make several)."""

    def __init__(self, translators: list[Any]) -> None:
        self._translators = translators

    def __getattr__(self, name: str) -> Any:
        return getattr(self._translators[-1], name)


def _mark(request: IRequest, target: Target) -> None:
    """Say which provider and upstream model answer (set before the first byte)."""
    record_of(request).provider = target.slot.name
    request.setHeader(b"x-ollama-proxy-provider", target.slot.name.encode("utf-8"))
    request.setHeader(b"x-ollama-proxy-model", target.model.id.encode("utf-8"))
