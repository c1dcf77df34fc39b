"""``ollama``: a real Ollama server as an upstream, on its native API.

Local models then sit beside cloud ones in one ``/api/tags``. Requests go to
``/api/chat`` (NDJSON stream) and ``/api/embed``; the model list comes from
``/api/tags`` with its real sizes, digests and details, and ``/api/show`` per model.
Like every provider it speaks OpenAI chunks inward; the translation both ways is
pure and lives in :mod:`ollama_proxy.wire.ollama_upstream`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.logger import Logger
from zope.interface import implementer

from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.http import HTTPProvider
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.providers.stream import NDJSONParser, SSEStream
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_upstream import OllamaDecoder, chat_body, model_from, with_show

log = Logger()


@implementer(IProvider)
class OllamaProvider(HTTPProvider):
    """An Ollama server reached at ``base_url`` (``http://host:11434``), optionally
    behind a bearer key (an authenticating reverse proxy)."""

    models_path = "api/tags"

    def __init__(self, *, label: str = "", **settings: Any) -> None:
        """``settings`` as for :class:`~ollama_proxy.providers.http.HTTPProvider`; no key is required
        (a bearer key is sent if given, for an authenticating reverse proxy)."""
        super().__init__(type="ollama", label=label or "Ollama", requires_key=False, **settings)

    async def list_models(self) -> list[UpstreamModel]:
        listing = await self._get_json("api/tags")
        entries = listing.get("models") if isinstance(listing, dict) else None
        models = [model_from(e, self.name) for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        found = [m for m in models if m is not None]
        # /api/tags says nothing of what a model can do; /api/show does (tools,
        # thinking, vision, context length), and the proxy checks those before asking.
        shown = await gatherResults([ensureDeferred(self._show(m)) for m in found])
        return list(shown)

    async def _show(self, model: UpstreamModel) -> UpstreamModel:
        try:
            answer = await self._json(await self._request("POST", "api/show", {"model": model.name or model.id}))
        except UpstreamError as error:
            log.info(
                "{provider}: no details for {model}: {error}", provider=self.name, model=model.id, error=error.message
            )
            return model
        return with_show(model, answer) if isinstance(answer, dict) else model

    async def open_chat(self, body: Mapping[str, Any]) -> IUpstreamStream:
        response = await self._request("POST", "api/chat", chat_body(body), lean=True)
        return SSEStream(
            response,
            self._clock,
            self.timeouts.idle,
            self.label,
            parser=NDJSONParser(),
            decode=OllamaDecoder(self.label),
        )

    async def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        request: dict[str, Any] = {"model": model, "input": list(inputs)}
        if dimensions:
            request["dimensions"] = dimensions
        response = await self._request("POST", "api/embed", request)
        answer = await self._json(response)
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
            raise UpstreamError(self.label, self.type, None, "embedding answer without 'embeddings'")
        tokens = answer.get("prompt_eval_count")
        return vectors, tokens if isinstance(tokens, int) else 0
