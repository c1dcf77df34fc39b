"""Ollama's OpenAI-compatible API under ``/v1``, as its own Klein app.

:class:`~ollama_proxy.api.native.OllamaAPI` mounts it at ``/v1``; both receive the
same :class:`~ollama_proxy.api.pipeline.Pipeline`, so the same model names,
filter, routing and bookkeeping apply. Errors come out in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``, the OpenAI dialect of
:mod:`ollama_proxy.errors`). Streams are relayed event by event as Server-Sent
Events ending in ``data: [DONE]``.
"""

from __future__ import annotations

import random

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from ollama_proxy.api.messages import Messages
from ollama_proxy.api.pipeline import ChatCall, Pipeline
from ollama_proxy.api.relay import ChatRelay, SSERelay
from ollama_proxy.api.responses import Responses
from ollama_proxy.api.routes import Routes, klein_app
from ollama_proxy.errors import (
    ANTHROPIC,
    OPENAI,
    RESPONSES,
    ModelNotAllowed,
    ModelNotFound,
    NotImplementedByProxy,
    dialect_for,
    json_response,
)
from ollama_proxy.front.door import token_models
from ollama_proxy.front.record import record_of
from ollama_proxy.routing.router import Route
from ollama_proxy.wire.framing import EVENT_STREAM, SSE_DONE, sse_event
from ollama_proxy.wire.openai_answer import (
    OpenAIRenderer,
    embedding_list,
    loaded_answer,
    model_entry,
    model_entry_from_tag,
)
from ollama_proxy.wire.openai_request import (
    OpenAIPlan,
    embedding_inputs,
    encoding_format,
    plan_chat_completion,
    plan_completion,
)
from ollama_proxy.wire.request_body import embedding_dimensions, model_name


class OpenAICompatAPI:
    """The ``/v1`` routes; state lives on the instance and on the shared pipeline."""

    app = klein_app()
    route = Routes(app, prefix="/v1", dialect=OPENAI)

    def __init__(self, pipeline: Pipeline, rng: random.Random | None = None) -> None:
        self.pipeline = pipeline
        self._rng = rng or random.Random()
        self.anthropic = Messages(pipeline)
        self.openai_responses = Responses(pipeline)
        self._resource: IResource | None = None

    def resource(self) -> IResource:
        """The Klein resource of these routes, made once: ``/v1`` is a branch of the native
        app, which asked for a new one (and bound the app anew) on every request."""
        if self._resource is None:
            self._resource = self.app.resource()
        return self._resource

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self._rng.randrange(1000)}"

    # -- errors: the one funnel, in OpenAI's dialect ---------------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | None:
        # No route took it (404, 405): the path says the dialect (/v1/messages is Anthropic's).
        path = record_of(request).path
        return self.pipeline.fail(request, failure, dialect_for(path) if path.startswith("/v1/") else OPENAI)

    # -- models -------------------------------------------------------------------------
    @route("/models", methods=["GET"])
    async def models(self, request: IRequest) -> bytes:
        router = self.pipeline.router
        await router.ensure_loaded()
        tags = router.tag_entries(allowed=token_models(request))
        return json_response(request, {"object": "list", "data": [model_entry_from_tag(t) for t in tags]})

    @route("/models/<path:name>", methods=["GET"], endpoint="/v1/models/{model}")
    async def model(self, request: IRequest, name: str) -> bytes:
        try:
            model = await self.pipeline.router.resolve(name, token_models(request))
        except ModelNotAllowed:
            raise ModelNotFound(name) from None  # what a token may not use, it does not see
        return json_response(request, model_entry(model, name))

    # -- inference ------------------------------------------------------------------------
    @route("/chat/completions", methods=["POST"])
    async def chat_completions(self, request: IRequest) -> bytes | None:
        body = self.pipeline.body(request)
        name = model_name(body)
        route = await self.pipeline.route(request, name, "chat")
        plan = plan_chat_completion(body, route.model, name)
        return await self._complete(request, route, name, "chat", plan, self._id("chatcmpl"))

    @route("/completions", methods=["POST"])
    async def completions(self, request: IRequest) -> bytes | None:
        body = self.pipeline.body(request)
        name = model_name(body)
        route = await self.pipeline.route(request, name, "generate")
        plan = plan_completion(body, route.model, name)
        response_id = self._id("cmpl")
        if plan.upstream is None:
            self.pipeline.running.use(route.model)
            answers = loaded_answer("completion", name, response_id, int(self.pipeline.clock.seconds()), plan.stream)
            if plan.stream:
                request.setHeader(b"content-type", EVENT_STREAM)
                return b"".join(sse_event(a) for a in answers) + SSE_DONE
            return json_response(request, answers[0])
        return await self._complete(request, route, name, "completion", plan, response_id)

    async def _complete(
        self, request: IRequest, route: Route, name: str, kind: str, plan: OpenAIPlan, response_id: str
    ) -> bytes | None:
        assert plan.upstream is not None
        clock = self.pipeline.clock

        def renderer() -> OpenAIRenderer:
            return OpenAIRenderer(
                kind=kind,
                model=name,
                response_id=response_id,
                clock=clock.seconds,
                keep_text=not plan.stream,
                include_usage=plan.include_usage,
                show_thinking=plan.show_thinking,
            )

        if plan.stream:
            request.setHeader(b"cache-control", b"no-cache")
        relay = SSERelay if plan.stream else ChatRelay
        return await self.pipeline.chat(request, route, ChatCall(plan.upstream, plan.stream, renderer, relay))

    @route("/embeddings", methods=["POST"])
    async def embeddings(self, request: IRequest) -> bytes:
        body = self.pipeline.body(request)
        name = model_name(body)
        fmt = encoding_format(body)
        inputs = embedding_inputs(body)
        dimensions = embedding_dimensions(body)
        route = await self.pipeline.route(request, name, "embed")
        done = await self.pipeline.embed(request, route, inputs, dimensions)
        return json_response(request, embedding_list(name, done.vectors, done.tokens, fmt))

    # -- the coding agents' APIs, each in its own error dialect ------------------------------
    @route("/messages", methods=["POST"], dialect=ANTHROPIC)
    async def messages(self, request: IRequest) -> bytes | None:
        return await self.anthropic.create(request)

    @route("/messages/count_tokens", methods=["POST"], dialect=ANTHROPIC)
    async def count_tokens(self, request: IRequest) -> bytes:
        return await self.anthropic.count_tokens(request)

    @route("/responses", methods=["POST"], dialect=RESPONSES)
    async def responses(self, request: IRequest) -> bytes | None:
        return await self.openai_responses.create(request)

    # -- what Ollama's /v1 has and this proxy does not ------------------------------------
    @route("/audio/transcriptions", methods=["POST"], endpoint="unsupported")
    def unsupported(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")
        raise NotImplementedByProxy(f"{path} is not supported by ollama-proxy; use /v1/chat/completions")
