"""A provider that speaks OpenAI's chat-completions wire format (OpenRouter, OpenAI, ...).

One persistent connection pool per provider, shared by every request. Streams are
requested with ``unbuffered=True`` and read event by event (:mod:`ollama_proxy.providers.stream`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ollama_proxy import __version__
from ollama_proxy.config.settings import Timeouts
from ollama_proxy.errors import UpstreamError
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.providers.stream import BodyTimeout, BodyTooLarge, SSEStream, read_body
from ollama_proxy.wire.fastjson import loads
from ollama_proxy.wire.models import UpstreamModel, from_openrouter
from ollama_proxy.wire.ollama_request import NATIVE_KEY

log = Logger()

_MAX_ERROR_BODY = 64 * 1024
_MAX_ERROR_TEXT = 500  # characters of a non-JSON error body passed on
_MAX_BODY = 256 * 1024 * 1024  # a model list or a batch of embeddings, never a stream


def connection_pool(reactor: Any, max_idle: int) -> HTTPConnectionPool:
    """The persistent pool one provider shares across all its requests."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_idle  # idle connections kept, not a concurrency cap
    pool.retryAutomatically = False  # POSTs are not idempotent: retries are the router's call
    return pool


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from APIs; the caller's own backoff applies


@implementer(IProvider)
class OpenAICompatibleProvider:
    """An upstream reached at ``base_url`` with a bearer key, OpenAI-style."""

    def __init__(
        self,
        *,
        name: str,
        type: str,
        label: str,
        base_url: str,
        api_key: str | None,
        reactor: Any,
        timeouts: Timeouts,
        extra_headers: Mapping[str, str] | None = None,
        max_connections: int = 128,
        embedding_models_path: str | None = None,
        requires_key: bool = True,
        clock: IReactorTime | None = None,
        strict_openai: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        self.name = name
        # OpenAI's own API answers 400 to OpenRouter's extra sampling fields.
        self.strict_openai = strict_openai
        self.type = type
        self.label = label
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._reactor = reactor
        # Timers (response and idle timeouts) run on ``clock``; sockets on ``reactor``.
        self._clock: IReactorTime = clock if clock is not None else reactor
        self.timeouts = timeouts
        self._extra_headers = dict(extra_headers or {})
        # The server's redactor knows every configured credential; alone, this provider's own.
        self._redactor = redactor or Redactor([api_key or "", *self._extra_headers.values()])
        self._embedding_models_path = embedding_models_path
        self._requires_key = requires_key
        self._pool = connection_pool(reactor, max_connections)
        agent = Agent(reactor, connectTimeout=timeouts.connect, pool=self._pool)
        self._http = HTTPClient(agent)

    # -- IProvider -----------------------------------------------------------
    @property
    def configured(self) -> bool:
        return bool(self._key) or not self._requires_key

    def redact(self, text: str) -> str:
        """``text`` with every configured credential (key, ``headers`` values) blotted out."""
        return self._redactor.redact(text)

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
        response = await self._request("POST", "chat/completions", body)
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

    models_path = "models"

    async def check_health(self) -> None:
        response = await self._request("GET", self.models_path, None)
        await self._read(response)

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()

    # -- HTTP ------------------------------------------------------------------
    def _require_key(self) -> None:
        if not self.configured:
            raise UpstreamError(self.label, self.type, None, f"no API key is configured for {self.label}", status=503)

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", "User-Agent": f"ollama-proxy/{__version__}"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        headers.update(self._extra_headers)
        return headers

    async def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """Send a request; return the response once its headers arrived with a 2xx status.

        ``headers`` add to (or replace) the provider's own for this one request."""
        url = f"{self.base_url}/{path}"
        if body is not None and NATIVE_KEY in body:
            body = {k: v for k, v in body.items() if k != NATIVE_KEY}
        data = json.dumps(body).encode("utf-8") if body is not None else None
        merged = {**self._headers(data is not None), **(headers or {})}
        sent = Headers({name: [value] for name, value in merged.items()})
        d = self._http.request(method, url, data=data, headers=sent, unbuffered=True)

        def timed_out(result: Any, timeout: float) -> Any:
            # However the cancelled request failed, the reason is the deadline.
            if not isinstance(result, Failure):
                return result
            return Failure(
                UpstreamError(self.label, self.type, None, f"no response within {timeout:g} seconds", status=504)
            )

        d.addTimeout(self.timeouts.response, self._clock, onTimeoutCancel=timed_out)
        try:
            response = await d
        except UpstreamError:
            raise
        except Exception as error:  # noqa: BLE001 - every way of not reaching it becomes one error
            if _cancelled(error):
                # Our caller gave up (client gone, drain deadline): not the provider's fault.
                raise CancelledError() from None
            raise UpstreamError(
                self.label, self.type, None, f"cannot reach {self.label}: {self._describe(error)}"
            ) from None
        if 200 <= response.code < 300:
            return response
        raise await self._error_from(response)

    async def _error_from(self, response: Any) -> UpstreamError:
        detail = ""
        try:
            raw = await read_body(response, self._clock, self.timeouts.response, _MAX_ERROR_BODY, truncate=True)
        except CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the status alone is still worth reporting
            raw = b""
        try:
            parsed = loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("error") is not None:
            error = parsed["error"]
            detail = self.redact(str(error.get("message") or "") if isinstance(error, dict) else str(error))
        elif raw:
            # Redact, then cut: a key that straddles the cut must not leave its first half.
            detail = self.redact(raw.decode("utf-8", errors="replace").strip())[:_MAX_ERROR_TEXT]
        retry_after = _retry_after(response.headers.getRawHeaders(b"retry-after", [b""])[0].decode("latin-1"))
        return UpstreamError(self.label, self.type, response.code, detail, retry_after=retry_after)

    async def _get_json(self, path: str) -> Any:
        response = await self._request("GET", path, None)
        return await self._json(response)

    async def _read(self, response: Any) -> bytes:
        """A whole body (model lists, embeddings), bounded in time and size."""
        try:
            return await read_body(response, self._clock, self.timeouts.response, _MAX_BODY)
        except BodyTimeout as error:
            raise UpstreamError(self.label, self.type, None, str(error), status=504) from None
        except BodyTooLarge as error:
            raise UpstreamError(self.label, self.type, None, str(error)) from None
        except (ResponseFailed, ConnectError) as error:
            raise UpstreamError(
                self.label, self.type, None, f"the answer was cut short: {self._describe(error)}"
            ) from None

    async def _json(self, response: Any) -> Any:
        raw = await self._read(response)
        try:
            return loads(raw)
        except ValueError:
            raise UpstreamError(self.label, self.type, None, "answered with a body that is not JSON") from None

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, (ResponseNeverReceived, ResponseFailed)):
            reasons = [self._describe(r.value) for r in error.reasons]
            return "; ".join(reasons) or "connection lost"
        if isinstance(error, ConnectTimeout):
            return f"connection timed out after {self.timeouts.connect:g} seconds"
        if isinstance(error, (ConnectError, DNSLookupError)):
            os_error = getattr(error, "osError", None)  # a ConnectError's; a DNSLookupError has none
            return self.redact(error.__class__.__name__ + (f": {os_error}" if os_error else ""))
        return self.redact(str(error) or error.__class__.__name__)


_NOT_OPENAI = ("top_k", "min_p", "repetition_penalty", "reasoning")


def openai_dialect(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat body as OpenAI's own API takes it: OpenRouter's extra sampling
    fields dropped, ``reasoning.effort`` as ``reasoning_effort``, and the cap as
    ``max_completion_tokens`` (reasoning models refuse ``max_tokens``)."""
    adapted = {k: v for k, v in body.items() if k not in _NOT_OPENAI}
    if "max_tokens" in adapted:
        cap = adapted.pop("max_tokens")
        adapted.setdefault("max_completion_tokens", cap)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") and "reasoning_effort" not in adapted:
        adapted["reasoning_effort"] = reasoning["effort"]
    return adapted


def _cancelled(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation, perhaps wrapped by Twisted's HTTP client."""
    if isinstance(error, CancelledError):
        return True
    if isinstance(error, (ResponseNeverReceived, ResponseFailed)):
        return any(_cancelled(reason.value) for reason in error.reasons)
    return False


def _entries(listing: Any) -> list[dict[str, Any]]:
    data = listing.get("data") if isinstance(listing, dict) else listing
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
