"""OpenAI's Responses API, stateless: ``POST /v1/responses``.

The ``/v1`` app declares the route and hands it here. A request goes through the
one :class:`~ollama_proxy.api.pipeline.Pipeline` (routing, retries, fallback,
breakers, limits, records) as an OpenAI chat body, to any provider.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from ollama_proxy.api.pipeline import ChatCall, Pipeline
from ollama_proxy.api.relay import ChatRelay, NamedEventRelay
from ollama_proxy.errors import RESPONSES
from ollama_proxy.wire.request_body import model_name
from ollama_proxy.wire.responses_answer import ResponsesRenderer
from ollama_proxy.wire.responses_request import plan_responses


class ResponsesEventRelay(NamedEventRelay):
    """The Responses stream; an unexpected error after output began is its ``error`` event."""

    dialect = RESPONSES


class Responses:
    """The handler behind ``/v1/responses``; one per server, sharing the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def create(self, request: IRequest) -> bytes | None:
        """``POST /v1/responses``: streamed or not, over any provider."""
        pipeline = self.pipeline
        body = pipeline.body(request)
        name = model_name(body)
        route = await pipeline.route(request, name, "chat")
        plan = plan_responses(body, route.model, name)
        stream = plan.stream

        def renderer() -> ResponsesRenderer:
            return ResponsesRenderer(
                model=name,
                clock=pipeline.clock.seconds,
                echo=plan.echo,
                keep_text=not stream,
                show_thinking=plan.show_thinking,
                encrypted=plan.encrypted,
            )

        if stream:
            request.setHeader(b"cache-control", b"no-cache")
        relay = ResponsesEventRelay if stream else ChatRelay
        return await pipeline.chat(request, route, ChatCall(plan.upstream, stream, renderer, relay))
