"""The HTTP plumbing every network provider shares; each wire protocol is a sibling module.

:class:`HTTPProvider` holds one persistent connection pool per provider, shared by
every request; sends JSON with the provider's headers (a bearer key by default); puts
the response deadline on each request; maps every way of not getting a 2xx answer to
one :class:`~ollama_proxy.errors.UpstreamError` (the provider's own error message,
redacted; ``Retry-After``; 502/504); and reads whole bodies bounded in time and size.
Streams are requested with ``unbuffered=True`` and read event by event
(:mod:`ollama_proxy.providers.stream`). A wire protocol
(:mod:`~ollama_proxy.providers.openai_compat`, :mod:`~ollama_proxy.providers.anthropic`,
:mod:`~ollama_proxy.providers.ollama`) subclasses it with ``list_models``,
``open_chat`` and ``embed``, and its own headers where they differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from ollama_proxy import __version__
from ollama_proxy.config.settings import Timeouts
from ollama_proxy.errors import UpstreamError
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.providers.http1 import HTTP1Pool, render_headers, uri_form
from ollama_proxy.providers.stream import BodyTimeout, BodyTooLarge, read_body
from ollama_proxy.wire.fastjson import dumps_compact_or_none, loads
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


# What the lean client asks for, over any configured Accept-Encoding (see _lean_head).
IDENTITY = {"Accept-Encoding": "identity"}


class _URI(EncodedURL):
    """An upstream URL already in URI form: treq turns every request's URL into a URI
    (``to_uri``: IDNA for the host, each part re-encoded), 50 us a call for the same few
    URLs; for this one that is itself."""

    def to_uri(self) -> _URI:
        return self


def upstream_url(text: str) -> EncodedURL | str:
    """``text`` as treq would send it, made once; ``text`` itself if that is not the same."""
    uri = uri_form(text)
    ready = _URI.from_text(uri)
    return ready if ready.to_uri().to_text() == uri else text


class HTTPProvider:
    """An upstream reached over HTTP at ``base_url``; the wire protocol is a subclass's."""

    models_path = "models"  # what check_health asks for

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
        requires_key: bool = True,
        clock: IReactorTime | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.name = name
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
        self._requires_key = requires_key
        self._pool = connection_pool(reactor, max_connections)
        agent = Agent(reactor, connectTimeout=timeouts.connect, pool=self._pool)
        self._http = HTTPClient(agent)
        self._urls: dict[str, EncodedURL | str] = {}  # per path without a query: few
        # Chat requests: the lean client (see providers/http1.py for why), its own pool.
        self._lean = HTTP1Pool(reactor, self.base_url, connect_timeout=timeouts.connect, max_idle=max_connections)
        self._targets: dict[str, bytes] = {}  # request targets per path
        self._head: bytes | None = None  # the provider's header lines for a request with a body
        # A configured Host (an upstream reached by address, through a tunnel) is the one sent.
        self._lean_host = not any(name.lower() == "host" for name in self._extra_headers)

    # -- IProvider -----------------------------------------------------------
    @property
    def configured(self) -> bool:
        return bool(self._key) or not self._requires_key

    def redact(self, text: str) -> str:
        """``text`` with every configured credential (key, ``headers`` values) blotted out."""
        return self._redactor.redact(text)

    async def check_health(self) -> None:
        response = await self._request("GET", self.models_path, None)
        await self._read(response)

    def close(self) -> Deferred[Any]:
        return gatherResults([self._pool.closeCachedConnections(), self._lean.close()])

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

    def _target(self, path: str) -> bytes:
        target = self._targets.get(path)
        if target is None:
            uri = uri_form(f"{self.base_url}/{path}")
            target = self._targets[path] = URI.fromBytes(uri.encode("ascii")).originForm
        return target

    def _lean_head(self, headers: Mapping[str, str] | None) -> bytes:
        # The lean client reads bodies as they are: it asks for no content coding, whatever
        # the configured headers say (with no Accept-Encoding at all, RFC 9110 12.5.3 lets a
        # server pick any); treq asked for gzip and decoded it.
        if headers:
            return render_headers({**self._headers(True), **headers, **IDENTITY})
        head = self._head
        if head is None:
            head = self._head = render_headers({**self._headers(True), **IDENTITY})
        return head

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None, lean: bool
    ) -> Deferred[Any]:
        if body is not None and NATIVE_KEY in body:
            body = {k: v for k, v in body.items() if k != NATIVE_KEY}
        # msgspec where it writes what the stdlib would read back alike (compact, UTF-8 as is);
        # a float, a lone surrogate or a key that is no string go through the stdlib as before.
        data = None if body is None else (dumps_compact_or_none(body) or json.dumps(body).encode("utf-8"))
        if lean and data is not None:
            host = self._lean_host and not (headers and any(name.lower() == "host" for name in headers))
            return self._lean.request(method.encode("ascii"), self._target(path), self._lean_head(headers), data, host)
        url = self._urls.get(path)
        if url is None:
            url = f"{self.base_url}/{path}"
            if "?" not in path:
                url = self._urls[path] = upstream_url(url)
        merged = {**self._headers(data is not None), **(headers or {})}
        sent = Headers({name: [value] for name, value in merged.items()})
        return self._http.request(method, url, data=data, headers=sent, unbuffered=True)

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None = None,
        *,
        lean: bool = False,
    ) -> Any:
        """Send a request; return the response once its headers arrived with a 2xx status.

        ``headers`` add to (or replace) the provider's own for this one request. ``lean``
        (a request with a body) goes through the lean client (:mod:`.http1`), not treq."""
        d = self._send(method, path, body, headers, lean)

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


def _cancelled(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation, perhaps wrapped by Twisted's HTTP client."""
    if isinstance(error, CancelledError):
        return True
    if isinstance(error, (ResponseNeverReceived, ResponseFailed)):
        return any(_cancelled(reason.value) for reason in error.reasons)
    return False
