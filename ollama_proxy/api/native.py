"""Ollama's HTTP API as a Klein app whose state lives on the instance.

``OllamaAPI(...).resource()`` is an ordinary Twisted Web resource: the daemon
serves it at the root, and another program can mount it in its own Site.
Routes raise :class:`~ollama_proxy.errors.ProxyError`; one handler writes the
JSON error body.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from ollama_proxy.api.pipeline import ChatCall, Pipeline
from ollama_proxy.api.routes import Routes, klein_app
from ollama_proxy.api.v1 import OpenAICompatAPI
from ollama_proxy.config.settings import Config
from ollama_proxy.errors import NATIVE, NotImplementedByProxy, RouteNotFound, dialect_for, json_response
from ollama_proxy.front.door import Gate, relative_path, token_models, visible_to
from ollama_proxy.front.record import record_of
from ollama_proxy.ops.metrics import Metrics, wants_prometheus
from ollama_proxy.ops.stats import Stats
from ollama_proxy.routing.dispatch import Dispatcher
from ollama_proxy.routing.retry import RetryPolicy
from ollama_proxy.routing.router import Route, Router
from ollama_proxy.wire.models import show_response
from ollama_proxy.wire.ollama_answer import ChatTranslator, instant_answer
from ollama_proxy.wire.ollama_request import ChatPlan, embed_inputs, plan_chat, plan_generate
from ollama_proxy.wire.request_body import embedding_dimensions, field_of, keep_alive_of, model_name, wants_stream

log = Logger()


class HealthState:
    """What the health-check service last learned about the upstream."""

    def __init__(self) -> None:
        self.last_check: float | None = None
        self.healthy: bool | None = None
        self.last_error: str | None = None


class OllamaAPI:
    """The routes. One instance per server; nothing is kept in module globals."""

    app = klein_app()
    route = Routes(app, dialect=NATIVE)

    def __init__(
        self,
        config: Config,
        router: Router,
        stats: Stats,
        health: HealthState,
        clock: Any,
        gate: Gate | None = None,
        metrics: Metrics | None = None,
        *,
        dispatcher: Dispatcher | None = None,
        ledger: Any = None,
    ) -> None:
        self.pipeline = Pipeline(
            config, router, dispatcher or Dispatcher(RetryPolicy(config.retry), clock), clock, gate, ledger
        )
        self.stats = stats
        self.health = health
        self.clock = clock
        self.openai = OpenAICompatAPI(self.pipeline)
        self.gate = gate
        self.prometheus = metrics  # not "metrics": that name is the /metrics route

    @property
    def config(self) -> Config:
        return self.pipeline.config

    @property
    def router(self) -> Router:
        return self.pipeline.router

    @property
    def running(self) -> Any:
        return self.pipeline.running

    def resource(self) -> IResource:
        """The resource to serve or to mount under a path of another Site.

        With a :class:`~ollama_proxy.front.door.Gate` (as the service tree builds it)
        every request passes the front door first: request id, CORS, drain, auth,
        limits, access log and metrics.
        """
        resource: IResource = _V1Beside(self.app.resource(), self.openai.resource())
        return self.gate.wrap(resource) if self.gate is not None else resource

    # -- errors: the one funnel -------------------------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | None:
        # A /v1 path the /v1 app did not take (e.g. one with a line feed, which the
        # branch route does not match) still answers in OpenAI's shape.
        return self.pipeline.fail(request, failure, dialect_for(relative_path(request)))

    # -- liveness and version -----------------------------------------------------
    @route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Ollama is running"

    @route("/api/version", methods=["GET"])
    def version(self, request: IRequest) -> bytes:
        return json_response(request, {"version": self.config.ollama_version})

    @route("/health", methods=["GET"])
    def health_report(self, request: IRequest) -> bytes:
        router = self.router
        reasons = router.problems()
        stats = self.stats
        return json_response(
            request,
            {
                "status": "degraded" if reasons else "healthy",
                "reasons": reasons,
                "uptime_seconds": round(stats.uptime, 3),
                "model_count": router.model_count,
                "filtered_model_count": router.filtered_count,
                "request_count": stats.request_count,
                "error_count": stats.error_count,
                "error_rate": stats.error_rate,
                "last_model_refresh": router.last_refresh,
                "last_health_check": self.health.last_check,
                "environment": self.config.environment,
                "version": self.config.ollama_version,
                "providers": {
                    s.name: ("healthy" if s.healthy else "unhealthy" if s.enabled else "disabled") for s in router.slots
                },
            },
        )

    @route("/metrics", methods=["GET"])
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
    @route("/api/tags", methods=["GET"])
    async def tags(self, request: IRequest) -> bytes:
        await self.router.ensure_loaded()
        return json_response(request, {"models": self.router.tag_entries(allowed=token_models(request))})

    @route("/api/tags/<provider>", methods=["GET"])
    async def provider_tags(self, request: IRequest, provider: str) -> bytes:
        self.router.slot(provider)
        await self.router.ensure_loaded()
        return json_response(request, {"models": self.router.tag_entries(provider, token_models(request))})

    # -- providers ----------------------------------------------------------------
    @route("/api/providers", methods=["GET"])
    def providers(self, request: IRequest) -> bytes:
        router = self.router
        return json_response(request, {"providers": [s.summary(router.models_available(s)) for s in router.slots]})

    @route("/api/providers/<provider>", methods=["GET"])
    def provider_summary(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return json_response(request, slot.summary(self.router.models_available(slot)))

    @route("/api/providers/<provider>/stats", methods=["GET"])
    def provider_stats(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return json_response(request, slot.report(self.router.models_available(slot)))

    @route("/api/show", methods=["POST"])
    async def show(self, request: IRequest) -> bytes:
        body = self.pipeline.body(request)
        name = model_name(body)
        record_of(request).model = name
        model = await self.router.resolve(name)
        return json_response(request, show_response(model))

    @route("/api/ps", methods=["GET"])
    def ps(self, request: IRequest) -> bytes:
        # A token limited to some models sees only those, whoever else used what.
        return json_response(request, {"models": [e for e in self.running.listing() if visible_to(request, e["name"])]})

    # -- usage (the ledger) ---------------------------------------------------------
    @route("/api/usage", methods=["GET"])
    async def usage(self, request: IRequest) -> bytes:
        ledger = self.pipeline.ledger
        if ledger is None:
            raise RouteNotFound("the usage ledger is off: add a [ledger] table to the configuration")
        return json_response(request, await ledger.report(request.args, record_of(request).principal))

    # -- Ollama's OpenAI-compatible API ---------------------------------------------------
    @app.route("/v1", branch=True)
    def openai_compatible(self, request: IRequest) -> IResource:
        return self.openai.resource()

    # -- inference ----------------------------------------------------------------
    @route("/api/chat", methods=["POST"])
    async def chat(self, request: IRequest) -> bytes | None:
        body = self.pipeline.body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.pipeline.route(request, name, "chat")
        plan = plan_chat(body, route.model, name)
        del body  # the plan holds what goes upstream; the parsed request need not stay as long as the answer
        return await self._answer(request, route, name, "chat", plan, stream)

    @route("/api/generate", methods=["POST"])
    async def generate(self, request: IRequest) -> bytes | None:
        body = self.pipeline.body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.pipeline.route(request, name, "generate")
        plan = plan_generate(body, route.model, name)
        del body  # the plan holds what goes upstream; the parsed request need not stay as long as the answer
        return await self._answer(request, route, name, "generate", plan, stream)

    def _answer(
        self, request: IRequest, route: Route, name: str, kind: str, plan: ChatPlan, stream: bool
    ) -> Awaitable[bytes | None]:
        # Not a coroutine itself: it hands back the pipeline's, so an open stream does not
        # hold one more suspended frame (with its locals) for its whole life.
        model = route.model
        if plan.upstream is None:
            # An empty prompt loads the model (or, with keep_alive 0, unloads it): nothing to ask.
            if plan.done_reason == "unload":
                self.running.unload(model)
            else:
                self.running.use(model, plan.keep_alive)
            return succeed(
                json_response(request, instant_answer(kind, name, plan.done_reason or "load", self.clock.seconds()))
            )
        clock = self.clock
        call = ChatCall(
            plan.upstream,
            stream,
            lambda: ChatTranslator.for_plan(plan, name, kind, clock.seconds, keep_text=not stream),
            keep_alive=plan.keep_alive,
        )
        return self.pipeline.chat(request, route, call)

    @route("/api/embed", methods=["POST"])
    async def embed(self, request: IRequest) -> bytes:
        body = self.pipeline.body(request)
        name = model_name(body)
        inputs = embed_inputs(body)
        dimensions = embedding_dimensions(body)
        truncate = field_of(body, "truncate", bool, True)
        keep_alive = keep_alive_of(body)
        route = await self.pipeline.route(request, name, "embed")
        done = await self.pipeline.embed(request, route, inputs, dimensions, truncate, keep_alive)
        return json_response(
            request,
            {
                "model": name,
                "embeddings": done.vectors,
                "total_duration": int(done.seconds * 1e9),
                "load_duration": 0,
                "prompt_eval_count": done.tokens,
            },
        )

    @route("/api/embeddings", methods=["POST"])
    async def embeddings(self, request: IRequest) -> bytes:
        body = self.pipeline.body(request)
        name = model_name(body)
        prompt = field_of(body, "prompt", str, "")
        keep_alive = keep_alive_of(body)
        route = await self.pipeline.route(request, name, "embed")
        if not prompt:
            self.running.use(route.model, keep_alive)
            return json_response(request, {"embedding": []})
        done = await self.pipeline.embed(request, route, [prompt], None, keep_alive=keep_alive)
        return json_response(request, {"embedding": done.vectors[0] if done.vectors else []})

    # -- local model management: not for a cloud proxy --------------------------------
    @route("/api/create", "/api/copy", "/api/pull", "/api/push", methods=["POST"], endpoint="unsupported")
    def unsupported(self, request: IRequest) -> bytes:
        raise _unsupported(request)

    @route("/api/delete", methods=["DELETE"], endpoint="unsupported")
    def delete(self, request: IRequest) -> bytes:
        raise _unsupported(request)

    @route("/api/blobs/<digest>", methods=["POST", "HEAD"], endpoint="unsupported")
    def blobs(self, request: IRequest, digest: str) -> bytes:
        raise _unsupported(request)


def _unsupported(request: IRequest) -> NotImplementedByProxy:
    path = request.path.decode("utf-8", "replace")
    return NotImplementedByProxy(f"{path} is not supported: ollama-proxy serves cloud models and manages no local ones")


@implementer(IResource)
class _V1Beside:
    """The native app, with the /v1 app beside it: a ``/v1/...`` request goes straight to
    the /v1 app, as the native app's ``/v1`` branch route would send it (the ``v1``
    segment moved to ``prepath``), without being routed twice (two Werkzeug matches,
    two Klein renders: a tenth of a /v1 request's CPU). Everything else, ``/v1`` alone
    included, is the native app's, whose branch route stays for what this does not take."""

    isLeaf = True

    def __init__(self, native: IResource, v1: IResource) -> None:
        self._native = native
        self._v1 = v1

    def render(self, request: Any) -> Any:
        postpath = request.postpath
        if len(postpath) > 1 and postpath[0] == b"v1" and postpath[1]:
            request.prepath.append(postpath.pop(0))
            return self._v1.render(request)
        return self._native.render(request)

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:  # noqa: N802 - Twisted's name
        return self  # a leaf: never asked

    def putChild(self, path: bytes, child: IResource) -> None:  # noqa: N802 - Twisted's name
        raise NotImplementedError("the proxy's resource takes no children")
