"""``openrouter`` and ``openai``: OpenAI's chat-completions wire format (OpenRouter, OpenAI, vLLM, ...).

The HTTP side is :class:`~ollama_proxy.providers.http.HTTPProvider`'s; this module is
what OpenAI's protocol adds: the model list (and OpenRouter's separate embedding list),
the streamed ``chat/completions`` request, ``embeddings``, and the fields OpenAI's own
API refuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.http import HTTPProvider
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.providers.stream import SSEStream
from ollama_proxy.wire.models import UpstreamModel, from_openrouter

log = Logger()


@implementer(IProvider)
class OpenAICompatibleProvider(HTTPProvider):
    """An upstream reached at ``base_url`` with a bearer key, OpenAI-style."""

    def __init__(
        self, *, embedding_models_path: str | None = None, strict_openai: bool = False, **settings: Any
    ) -> None:
        """``settings`` as for :class:`~ollama_proxy.providers.http.HTTPProvider`."""
        super().__init__(**settings)
        self._embedding_models_path = embedding_models_path
        # OpenAI's own API answers 400 to OpenRouter's extra sampling fields.
        self.strict_openai = strict_openai

    async def list_models(self) -> list[UpstreamModel]:
        listing = await self._get_json("models")
        models = [m for m in (from_openrouter(e, self.name) for e in _entries(listing)) if m is not None]
        if self._embedding_models_path:
            # OpenRouter lists embedding models apart from chat models.
            try:
                extra = await self._get_json(self._embedding_models_path)
            except UpstreamError as error:
                log.warn(
                    "{provider}: embedding model list unavailable: {error}", provider=self.name, error=error.message
                )
            else:
                known = {m.id for m in models}
                for entry in _entries(extra):
                    model = from_openrouter(entry, self.name, embedding=True)
                    if model is not None and model.id not in known:
                        models.append(model)
        return models

    async def open_chat(self, body: Mapping[str, Any]) -> IUpstreamStream:
        self._require_key()
        if self.strict_openai:
            body = openai_dialect(body)
        elif self.type == "openrouter":
            # OpenRouter's usage accounting: the answer's usage then says what the call cost.
            asked = body.get("usage")
            body = {**body, "usage": {**(asked if isinstance(asked, Mapping) else {}), "include": True}}
        response = await self._request("POST", "chat/completions", body, lean=True)
        return SSEStream(response, self._clock, self.timeouts.idle, self.label)

    async def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        self._require_key()
        body: dict[str, Any] = {"model": model, "input": list(inputs)}
        if dimensions:
            body["dimensions"] = dimensions
        response = await self._request("POST", "embeddings", body)
        answer = await self._json(response)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(self.label, self.type, None, "embedding answer without 'data'")
        ordered = sorted((d for d in data if isinstance(d, dict)), key=lambda d: d.get("index", 0))
        vectors = [d.get("embedding") for d in ordered]
        if not all(isinstance(v, list) for v in vectors):
            raise UpstreamError(self.label, self.type, None, "embedding answer without vectors")
        usage = answer.get("usage") or {}
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return vectors, tokens if isinstance(tokens, int) else 0  # type: ignore[return-value]


_NOT_OPENAI = ("top_k", "min_p", "repetition_penalty", "reasoning")


def openai_dialect(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat body as OpenAI's own API takes it: OpenRouter's extra sampling
    fields dropped (``reasoning_details`` in messages too), ``reasoning.effort`` as
    ``reasoning_effort``, and the cap as ``max_completion_tokens`` (reasoning models
    refuse ``max_tokens``)."""
    adapted = {k: v for k, v in body.items() if k not in _NOT_OPENAI}
    if "max_tokens" in adapted:
        cap = adapted.pop("max_tokens")
        adapted.setdefault("max_completion_tokens", cap)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") and "reasoning_effort" not in adapted:
        adapted["reasoning_effort"] = reasoning["effort"]
    messages = adapted.get("messages")
    if isinstance(messages, list) and any(isinstance(m, Mapping) and "reasoning_details" in m for m in messages):
        # Another provider's signed reasoning (handed back by /v1/messages): OpenAI has no such field.
        adapted["messages"] = [
            {k: v for k, v in m.items() if k != "reasoning_details"} if isinstance(m, Mapping) else m for m in messages
        ]
    return adapted


def _entries(listing: Any) -> list[dict[str, Any]]:
    data = listing.get("data") if isinstance(listing, dict) else listing
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
