"""``anthropic``: Anthropic's own Messages API, behind ``IProvider``.

Requests arrive as OpenAI chat bodies (the proxy's lingua franca) and leave as
Messages API bodies; the answer is Anthropic's SSE, turned back into OpenAI
``chat.completion.chunk`` dicts event by event, so the one translator serves it
like any other provider. The translation, both ways, is pure and lives in
:mod:`ollama_proxy.wire.anthropic_upstream`; this module is the HTTP side
(``x-api-key``, ``anthropic-version``, the paged model list).

A ``/v1/messages`` request routed here goes as the client sent it (only the model
id is the provider's): no round trip through the OpenAI shape, so thinking blocks
keep their signatures and ``cache_control`` its effect; ``count_tokens`` asks
Anthropic's own counter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ollama_proxy import __version__
from ollama_proxy.errors import BadRequest, UpstreamError
from ollama_proxy.providers.http import HTTPProvider
from ollama_proxy.providers.interfaces import IMessagesProvider, IUpstreamStream
from ollama_proxy.providers.stream import SSEStream
from ollama_proxy.wire.anthropic_answer import native_decoder
from ollama_proxy.wire.anthropic_upstream import AnthropicDecoder, messages_request, model_from
from ollama_proxy.wire.models import UpstreamModel

log = Logger()

API_VERSION = "2023-06-01"
# What count_tokens takes of a Messages request (it refuses the rest).
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def _beta(beta: str | None) -> dict[str, str]:
    return {"anthropic-beta": beta} if beta else {}


@implementer(IMessagesProvider)
class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API: ``x-api-key`` auth, ``messages`` and ``models``."""

    models_path = "models?limit=1"
    _MAX_PAGES = 20

    def __init__(self, *, label: str = "", default_max_tokens: int = 4096, **settings: Any) -> None:
        """``settings`` as for :class:`~ollama_proxy.providers.http.HTTPProvider` (name, base_url, api_key, ...)."""
        super().__init__(type="anthropic", label=label or "Anthropic", **settings)
        self.default_max_tokens = default_max_tokens

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "User-Agent": f"ollama-proxy/{__version__}",
            "anthropic-version": API_VERSION,
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["x-api-key"] = self._key
        headers.update(self._extra_headers)
        return headers

    async def list_models(self) -> list[UpstreamModel]:
        models: list[UpstreamModel] = []
        after = ""
        for _ in range(self._MAX_PAGES):
            listing = await self._get_json("models?limit=1000" + (f"&after_id={after}" if after else ""))
            entries = listing.get("data") if isinstance(listing, dict) else None
            for entry in entries if isinstance(entries, list) else ():
                model = model_from(entry, self.name) if isinstance(entry, dict) else None
                if model is not None:
                    models.append(model)
            if not (isinstance(listing, dict) and listing.get("has_more") and listing.get("last_id")):
                break
            after = str(listing["last_id"])
        return models

    async def open_chat(self, body: Mapping[str, Any]) -> IUpstreamStream:
        self._require_key()
        request = messages_request(body, self.default_max_tokens)
        response = await self._request("POST", "messages", request, lean=True)
        return SSEStream(response, self._clock, self.timeouts.idle, self.label, decode=AnthropicDecoder(self.label))

    async def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        raise BadRequest(f"{self.label} offers no embeddings")

    async def open_messages(self, body: Mapping[str, Any], beta: str | None = None) -> IUpstreamStream:
        """POST the Messages request as given (streamed); the events come through whole."""
        self._require_key()
        response = await self._request("POST", "messages", {**body, "stream": True}, _beta(beta), lean=True)
        return SSEStream(response, self._clock, self.timeouts.idle, self.label, decode=native_decoder(self.label))

    async def count_tokens(self, body: Mapping[str, Any], beta: str | None = None) -> int:
        """Anthropic's own count of the request's input tokens."""
        self._require_key()
        request = {k: body[k] for k in _COUNTED if body.get(k) is not None}
        response = await self._request("POST", "messages/count_tokens", request, _beta(beta))
        raw = await self._read(response)
        try:
            count = json.loads(raw).get("input_tokens")
        except (ValueError, AttributeError):
            count = None
        if not isinstance(count, int):
            raise UpstreamError(self.label, self.type, None, "the token count answer has no input_tokens")
        return count
