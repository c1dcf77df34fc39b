"""Ollama's HTTP API as a Klein app whose state lives on the instance.

``OllamaAPI(...).resource()`` is an ordinary Twisted Web resource: the daemon
serves it at the root, and another program can mount it in its own Site.
Routes raise :class:`~ollama_proxy.errors.ProxyError`; one handler writes the
JSON error body.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from .catalogue import ModelCatalogue
from .config import Config
from .dispatch import AnsweredWithError, Dispatcher
from .errors import (
    InternalError,
    MethodNotAllowed,
    NotImplementedByProxy,
    ProxyError,
    RequestTooLarge,
    RouteNotFound,
)
from .interfaces import IProvider
from .models import show_response
from .relay import JSON, ChatRelay
from .retry import RetryPolicy
from .routing import Route, Router, Target
from .stats import Stats
from .translate import (
    ChatTranslator,
    chat_request,
    embed_inputs,
    field_of,
    generate_request,
    model_name,
    parse_body,
    wants_stream,
)

log = Logger()

Handler = Callable[..., Any]


def observed(endpoint: str) -> Callable[[Handler], Handler]:
    """Count the request under ``endpoint`` and time it until its last byte."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(self: "OllamaAPI", request: IRequest, *args: Any, **kwargs: Any) -> Any:
            self._observe(request, endpoint)
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                return ensureDeferred(result)
            return result

        return wrapper

    return decorate


def _json(request: IRequest, obj: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


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

    def resource(self) -> IResource:
        """The resource to serve or to mount under a path of another Site."""
        return self.app.resource()

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
    @app.handle_errors(ProxyError)
    def _proxy_error(self, request: IRequest, failure: Failure) -> bytes:
        error: ProxyError = failure.value
        if error.status >= 500:
            log.warn("{method} {path}: {status} {message}", method=request.method.decode(), path=request.path.decode("utf-8", "replace"), status=error.status, message=error.message)
        retry_after = getattr(error, "retry_after", None)
        if error.status == 429 and retry_after:
            request.setHeader(b"retry-after", str(int(retry_after + 0.999)).encode())
        return _json(request, error.body(), error.status)

    @app.handle_errors(WerkzeugNotFound)
    def _no_route(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return _json(request, RouteNotFound(f"no such endpoint: {path}").body(), 404)

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def _wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(getattr(failure.value, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"allow", allowed.encode())
        method = request.method.decode("ascii", "replace")
        return _json(request, MethodNotAllowed(f"method {method} not allowed here").body(), 405)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None  # the client went away; nothing to answer
        log.failure("unexpected error answering {path}", failure, path=request.path.decode("utf-8", "replace"))
        return _json(request, InternalError().body(), 500)

    # -- liveness and version -----------------------------------------------------
    @app.route("/", methods=["GET"])
    @observed("/")
    def root(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Ollama is running"

    @app.route("/api/version", methods=["GET"])
    @observed("/api/version")
    def version(self, request: IRequest) -> bytes:
        return _json(request, {"version": self.config.ollama_version})

    @app.route("/health", methods=["GET"])
    @observed("/health")
    def health_report(self, request: IRequest) -> bytes:
        reasons = self.router.problems()
        stats = self.stats
        return _json(
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
                "providers": {s.name: ("healthy" if s.healthy else "unhealthy" if s.enabled else "disabled") for s in self.router.slots},
            },
        )

    @app.route("/metrics", methods=["GET"])
    @observed("/metrics")
    def metrics(self, request: IRequest) -> bytes:
        return _json(
            request,
            {"metrics": self.stats.metrics(), "statistics": self.stats.statistics(), "timestamp": self.clock.seconds()},
        )

    # -- models -------------------------------------------------------------------
    @app.route("/api/tags", methods=["GET"])
    @observed("/api/tags")
    async def tags(self, request: IRequest) -> bytes:
        await self.router.ensure_loaded()
        return _json(request, {"models": self.router.tag_entries()})

    @app.route("/api/tags/<provider>", methods=["GET"])
    @observed("/api/tags/{provider}")
    async def provider_tags(self, request: IRequest, provider: str) -> bytes:
        self.router.slot(provider)
        await self.router.ensure_loaded()
        return _json(request, {"models": self.router.tag_entries(provider)})

    # -- providers ----------------------------------------------------------------
    @app.route("/api/providers", methods=["GET"])
    @observed("/api/providers")
    def providers(self, request: IRequest) -> bytes:
        router = self.router
        return _json(request, {"providers": [s.summary(router.models_available(s)) for s in router.slots]})

    @app.route("/api/providers/<provider>", methods=["GET"])
    @observed("/api/providers/{provider}")
    def provider_summary(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return _json(request, slot.summary(self.router.models_available(slot)))

    @app.route("/api/providers/<provider>/stats", methods=["GET"])
    @observed("/api/providers/{provider}/stats")
    def provider_stats(self, request: IRequest, provider: str) -> bytes:
        slot = self.router.slot(provider)
        return _json(request, slot.report(self.router.models_available(slot)))

    @app.route("/api/show", methods=["POST"])
    @observed("/api/show")
    async def show(self, request: IRequest) -> bytes:
        body = self._body(request)
        model = await self.catalogue.resolve(model_name(body))
        return _json(request, show_response(model))

    @app.route("/api/ps", methods=["GET"])
    @observed("/api/ps")
    def ps(self, request: IRequest) -> bytes:
        return _json(request, {"models": []})

    # -- inference ----------------------------------------------------------------
    @app.route("/api/chat", methods=["POST"])
    @observed("/api/chat")
    async def chat(self, request: IRequest) -> bytes | None:
        body = self._body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.router.route(name, "chat")
        upstream_body = chat_request(body, route.model.id)
        return await self._complete(request, name, "chat", upstream_body, stream, route)

    @app.route("/api/generate", methods=["POST"])
    @observed("/api/generate")
    async def generate(self, request: IRequest) -> bytes | None:
        body = self._body(request)
        name = model_name(body)
        stream = wants_stream(body)
        route = await self.router.route(name, "generate")
        upstream_body = generate_request(body, route.model.id)
        return await self._complete(request, name, "generate", upstream_body, stream, route)

    async def _complete(self, request: IRequest, name: str, kind: str, upstream_body: dict[str, Any], stream: bool, route: Route) -> bytes | None:
        """Answer along ``route``: each attempt gets a fresh translator and relay, so
        one that fails before any output leaves no trace in the next one's answer."""
        started = self.clock.seconds()
        translators: list[ChatTranslator] = []

        async def attempt(target: Target) -> bytes | None:
            translator = ChatTranslator(model=name, kind=kind, clock=self.clock.seconds, keep_text=not stream)
            translator.timings.started = started
            translators.append(translator)
            relay = ChatRelay(request, target.provider, translator, self.clock)
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
        route = await self.router.route(name, "embed")
        started = self.clock.seconds()
        vectors, tokens = await self._embed(request, route, inputs, dimensions) if inputs else ([], 0)
        elapsed = int((self.clock.seconds() - started) * 1e9)
        self.stats.add_tokens(tokens, 0)
        return _json(
            request,
            {"model": name, "embeddings": vectors, "total_duration": elapsed, "load_duration": 0, "prompt_eval_count": tokens},
        )

    @app.route("/api/embeddings", methods=["POST"])
    @observed("/api/embeddings")
    async def embeddings(self, request: IRequest) -> bytes:
        body = self._body(request)
        name = model_name(body)
        prompt = field_of(body, "prompt", str, "")
        route = await self.router.route(name, "embed")
        if not prompt:
            return _json(request, {"embedding": []})
        vectors, tokens = await self._embed(request, route, [prompt], None)
        self.stats.add_tokens(tokens, 0)
        return _json(request, {"embedding": vectors[0] if vectors else []})

    async def _embed(self, request: IRequest, route: Route, inputs: list[str], dimensions: int | None) -> tuple[list[list[float]], int]:
        async def attempt(target: Target) -> tuple[list[list[float]], int]:
            _mark(request, target)
            return await target.provider.embed(target.model.id, inputs, dimensions)  # type: ignore[no-any-return]

        return await self.dispatcher.run(route, attempt)

    # -- local model management: not for a cloud proxy --------------------------------
    def _unsupported(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")
        raise NotImplementedByProxy(f"{path} is not supported: ollama-proxy serves cloud models and manages no local ones")

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


def _mark(request: IRequest, target: Target) -> None:
    """Say which provider and upstream model answer (set before the first byte)."""
    request.setHeader(b"x-ollama-proxy-provider", target.slot.name.encode("utf-8"))
    request.setHeader(b"x-ollama-proxy-model", target.model.id.encode("utf-8"))
