"""Ollama's OpenAI-compatible API under ``/v1``, as its own Klein app.

:class:`~ollama_proxy.api.native.OllamaAPI` mounts it at ``/v1`` and lends it its
catalogue, providers, running-model list and statistics, so the same model names,
filter and routing apply. Errors come out in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) from one funnel here.
Streams are relayed event by event as Server-Sent Events ending in
``data: [DONE]``.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from ollama_proxy.api.funnel import error_response, json_response
from ollama_proxy.api.observing import observed
from ollama_proxy.api.relay import ChatRelay
from ollama_proxy.errors import BadRequest, ModelNotFound, NotImplementedByProxy
from ollama_proxy.front.door import visible_to
from ollama_proxy.front.record import record_of
from ollama_proxy.routing.router import Route
from ollama_proxy.wire.ollama_chat import model_name
from ollama_proxy.wire.openai_chat import (
    OpenAIPlan,
    OpenAIRenderer,
    embedding_inputs,
    embedding_list,
    encoding_format,
    error_body,
    loaded_answer,
    model_entry,
    model_entry_from_tag,
    plan_chat_completion,
    plan_completion,
)

if TYPE_CHECKING:
    from ollama_proxy.api.native import OllamaAPI

log = Logger()

EVENT_STREAM = b"text/event-stream"


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


class SSERelay(ChatRelay):
    """The relay with OpenAI's framing: ``data:`` events, ``[DONE]``, errors as events."""

    content_type = EVENT_STREAM

    def _encode(self, obj: dict[str, Any]) -> bytes:
        return _event(obj)

    def _closing(self) -> bytes:
        chunks = self.translator.closing_chunks()  # type: ignore[attr-defined]
        return b"".join(_event(c) for c in chunks) + b"data: [DONE]\n\n"

    def _error_line(self, message: str) -> bytes:
        # The openai clients raise APIError on an event that carries "error".
        return _event({"error": {"message": message, "type": "api_error", "param": None, "code": None}})


class OpenAICompatAPI:
    """The ``/v1`` routes; state lives on the instance and on the native API it serves beside."""

    app = Klein()

    def __init__(self, native: OllamaAPI, rng: random.Random | None = None) -> None:
        self.native = native
        self._rng = rng or random.Random()

    def resource(self) -> IResource:
        return self.app.resource()

    # What @observed needs: the native API's bookkeeping and front door.
    @property
    def gate(self) -> Any:
        return self.native.gate

    def _observe(self, request: IRequest, endpoint: str) -> None:
        self.native._observe(request, endpoint)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self._rng.randrange(1000)}"

    # -- errors: the one funnel for /v1 ------------------------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | None:
        return error_response(
            request,
            failure,
            error_body,
            lambda message: _event({"error": {"message": message, "type": "api_error", "param": None, "code": None}}),
        )

    # -- models -------------------------------------------------------------------------
    @app.route("/models", methods=["GET"])
    @observed("/v1/models")
    async def models(self, request: IRequest) -> bytes:
        router = self.native.router
        await router.ensure_loaded()
        tags = [t for t in router.tag_entries() if visible_to(request, t["name"])]
        return json_response(request, {"object": "list", "data": [model_entry_from_tag(t) for t in tags]})

    @app.route("/models/<path:name>", methods=["GET"])
    @observed("/v1/models/{model}")
    async def model(self, request: IRequest, name: str) -> bytes:
        if not visible_to(request, name):
            raise ModelNotFound(name)  # what a token may not use, it does not see
        model = await self.native.catalogue.resolve(name)
        return json_response(request, model_entry(model, name))

    # -- inference ------------------------------------------------------------------------
    @app.route("/chat/completions", methods=["POST"])
    @observed("/v1/chat/completions")
    async def chat_completions(self, request: IRequest) -> bytes | None:
        body = self.native._body(request)
        name = model_name(body)
        route = await self.native.route(name, "chat", request)
        plan = plan_chat_completion(body, route.model, name)
        return await self._complete(request, route, name, "chat", plan, self._id("chatcmpl"))

    @app.route("/completions", methods=["POST"])
    @observed("/v1/completions")
    async def completions(self, request: IRequest) -> bytes | None:
        body = self.native._body(request)
        name = model_name(body)
        route = await self.native.route(name, "generate", request)
        plan = plan_completion(body, route.model, name)
        response_id = self._id("cmpl")
        if plan.upstream is None:
            self.native.running.use(route.model)
            answers = loaded_answer("completion", name, response_id, int(self.native.clock.seconds()), plan.stream)
            if plan.stream:
                request.setHeader(b"content-type", EVENT_STREAM)
                return b"".join(_event(a) for a in answers) + b"data: [DONE]\n\n"
            return json_response(request, answers[0])
        return await self._complete(request, route, name, "completion", plan, response_id)

    async def _complete(
        self, request: IRequest, route: Route, name: str, kind: str, plan: OpenAIPlan, response_id: str
    ) -> bytes | None:
        native = self.native
        assert plan.upstream is not None

        def renderer() -> OpenAIRenderer:
            return OpenAIRenderer(
                kind=kind,
                model=name,
                response_id=response_id,
                clock=native.clock.seconds,
                keep_text=not plan.stream,
                include_usage=plan.include_usage,
                show_thinking=plan.show_thinking,
            )

        if plan.stream:
            request.setHeader(b"cache-control", b"no-cache")
        native.running.use(route.model)
        try:
            return await native.dispatch_chat(
                request, route, plan.upstream, plan.stream, renderer, SSERelay if plan.stream else ChatRelay
            )
        finally:
            native.running.use(route.model)

    @app.route("/embeddings", methods=["POST"])
    @observed("/v1/embeddings")
    async def embeddings(self, request: IRequest) -> bytes:
        body = self.native._body(request)
        name = model_name(body)
        fmt = encoding_format(body)
        inputs = embedding_inputs(body)
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise BadRequest("'dimensions' must be an integer")
        route = await self.native.route(name, "embed", request)
        self.native.running.use(route.model)
        started = self.native.clock.seconds()
        vectors, tokens = await self.native.dispatch_embed(request, route, inputs, dimensions)
        record_of(request).upstream_seconds += self.native.clock.seconds() - started
        record_of(request).add_tokens(tokens, None)
        self.native.stats.add_tokens(tokens, 0)
        return json_response(request, embedding_list(name, vectors, tokens, fmt))

    # -- what Ollama's /v1 has and this proxy does not ------------------------------------
    @app.route("/responses", methods=["POST"])
    @app.route("/messages", methods=["POST"])
    @app.route("/audio/transcriptions", methods=["POST"])
    @observed("unsupported")
    def unsupported(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")
        raise NotImplementedByProxy(f"{path} is not supported by ollama-proxy; use /v1/chat/completions")
