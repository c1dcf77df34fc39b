"""The front door: what every request meets before a route sees it.

In order: a request id (the client's ``X-Request-Id`` or a new one, echoed in the
response), CORS (a foreign origin is refused, a preflight answered), the drain
(a stopping proxy answers 503), authentication (401 without a valid token),
the token's model list (403) and the stream limits (429/503). When the request
finishes, its record becomes one access-log line and the Prometheus samples.

It wraps the Klein resource (:meth:`ollama_proxy.api.native.OllamaAPI.resource`), so a
program that mounts the API under a path of its own Site gets all of it too;
paths are seen relative to the mount point.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ollama_proxy.config.settings import Config
from ollama_proxy.errors import (
    BadRequest,
    InternalError,
    ModelNotAllowed,
    ProxyError,
    RequestTooLarge,
    ServiceUnavailable,
    Unauthorized,
    render_error,
)
from ollama_proxy.front.auth import (
    PUBLIC_PATHS,
    Authenticator,
    OperatorOnly,
    operator_path,
    presented_token,
)
from ollama_proxy.front.cors import OriginPolicy, check_host
from ollama_proxy.front.lifecycle import SHUTTING_DOWN, Lifecycle
from ollama_proxy.front.record import RequestRecord, attach, record_of
from ollama_proxy.front.request import LimitedRequest
from ollama_proxy.front.stream_limits import STREAMING_ENDPOINTS, StreamLimiter
from ollama_proxy.ops.later import after_send
from ollama_proxy.ops.logs import log_access
from ollama_proxy.ops.metrics import Metrics
from ollama_proxy.ops.sendnow import answering
from ollama_proxy.wire.jsontext import parse_json

log = Logger()

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
# A random (version 4) UUID's bits: the version and variant fields cleared, then set.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


# Request ids need to be unique, not unpredictable: drawn from a generator seeded from the
# system's randomness (again in a forked child, so workers never share a sequence) instead
# of a getrandom() call per request.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def random_request_id() -> str:
    """A random (version 4) UUID's 32 hex digits, as ``uuid.uuid4().hex`` writes them."""
    return "%032x" % (_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)


# Known paths keep their name as the metrics label before a route claims them;
# anything else is "other", so scanners cannot blow up the label set.
_KNOWN_PATHS = frozenset(
    {
        "/",
        "/api/version",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/health",
        "/metrics",
        "/v1/messages/count_tokens",
    }
) | frozenset(STREAMING_ENDPOINTS)


def relative_path(request: Any) -> str:
    """The request's path below the mount point of the resource serving it."""
    segments = [s.decode("utf-8", "replace") for s in request.postpath]
    return "/" + "/".join(segments)


def _check_url(request: Any) -> None:
    """Klein would answer a URL that is not UTF-8 with a plain-text 400; say it in JSON."""
    try:
        request.path.decode("utf-8")
        for segment in request.postpath:
            segment.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the URL is not valid UTF-8") from None


def _peek_body(request: Any) -> dict[str, Any] | None:
    """The request body as a JSON object, leaving it in place for the route; None if it is not one."""
    content = getattr(request, "content", None)
    if content is None or getattr(request, "body_too_large", False):
        return None
    try:
        content.seek(0)
        raw = content.read()
        content.seek(0)
        body = parse_json(raw) if raw.strip() else None
    except (BadRequest, OSError):
        return None
    return body if isinstance(body, dict) else None


class Gate:
    """The front door's policies; :meth:`reconfigure` swaps them without dropping requests."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        new_request_id: Callable[[], str] | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.clock = clock
        self._bookkeeping = after_send(clock)  # looked up once, not per finished request
        self.metrics = metrics
        self._new_id = new_request_id or random_request_id
        self.streams = StreamLimiter(lifecycle.generations)
        # Whoever wants every finished request's record (metrics, statistics, the ledger).
        self.observers: list[Callable[[RequestRecord], None]] = [metrics.observe] if metrics is not None else []
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        ops = config.ops
        self.authenticator = Authenticator(ops.auth)
        self.origins = OriginPolicy(ops.cors.origins)
        self.streams.reconfigure(ops.limits.max_streams_per_client, ops.limits.max_streams)
        self.access_log = ops.log.access

    def wrap(self, resource: IResource) -> FrontDoor:
        return FrontDoor(self, resource)

    # -- one request ---------------------------------------------------------------
    def _open(self, request: Any) -> RequestRecord:
        asked = request.getHeader(b"x-request-id")
        asked = asked.decode("latin-1") if isinstance(asked, bytes) else asked
        request_id = asked if asked and _REQUEST_ID.match(asked) else self._new_id()
        address = request.getClientAddress()
        path = relative_path(request)
        record = attach(
            request,
            RequestRecord(
                request_id=request_id,
                method=request.method.decode("ascii", "replace"),
                path=path,
                client=getattr(address, "host", None) or type(address).__name__.replace("Address", "").lower() or "-",
                started=self.clock.seconds(),
                endpoint=path if path in _KNOWN_PATHS else "other",
            ),
        )
        request.setHeader(b"x-request-id", request_id.encode("latin-1"))
        # Twisted names itself and its version in a Server header; Ollama's server sends none,
        # and a scanner reads the version as a lead.
        request.responseHeaders.removeHeader(b"server")
        record.watched = True
        request.notifyFinish().addBoth(self.finished, request, record)
        answering.count += 1  # until it finishes: whether a complete answer is sent at once
        return record

    def finished(self, result: Any, request: Any, record: RequestRecord) -> None:
        """The one place a finished request is observed. Its end and status are taken
        now; the rest waits until the answer has been sent (see :mod:`ollama_proxy.ops.later`)."""
        answering.count -= 1
        try:
            record.finished = self.clock.seconds()
            # 499: the client closed the connection before the answer was complete.
            left = isinstance(result, Failure)
            record.status = 499 if left else (request.code or 200)
            # First: the relay stops its upstream before anything else runs (or, when the
            # answer is complete, its hook is let go: it held the relay, a reference cycle).
            record.client_gone(call=left)
            # The stream limits count it no longer, now, not once the bookkeeping is done.
            record.generating = False
        finally:
            self._bookkeeping.call(self._observe, record, request)

    def _observe(self, record: RequestRecord, request: Any) -> None:
        """The record is completed, then each observer (and the access log) gets it; then
        the request lets go of what it held (see :meth:`LimitedRequest.let_go`)."""
        try:
            record.run_finish_callbacks()
            observers = [*self.observers, log_access] if self.access_log else self.observers
            for observe in observers:
                try:
                    observe(record)
                except Exception:  # noqa: BLE001 - bookkeeping must never break a response
                    log.failure("recording request {request_id} failed", request_id=record.request_id)
        finally:
            # No longer in flight (what a drain waits for), whatever the bookkeeping did.
            self.lifecycle.release(record)
            if isinstance(request, LimitedRequest):  # not a request class of someone else's Site
                request.let_go()

    def refused(self, status: int, peer: Any, method: str = "-", path: str = "-") -> None:
        """The access line (and metrics) of a request the channel refused before it was
        parsed (431, 408, 503 at the connection cap, 499 abandoned by its client): its
        method and path as far as they came (``-`` when unknown)."""
        now = self.clock.seconds()
        record = RequestRecord(
            request_id=self._new_id(),
            method=method,
            path=path,
            client=getattr(peer, "host", None) or "-",
            started=now,
            finished=now,
            status=status,
        )
        if self.metrics is not None:
            self.metrics.observe(record)
        if self.access_log:
            log_access(record)

    def refuses_at_headers(self, request: Any, path: str) -> bool:
        """Whether a request whose headers just came will be refused 401 whatever its
        body (the channel then answers it without reading the body)."""
        if path in PUBLIC_PATHS or not self.authenticator.enabled:
            return False
        try:
            self.authenticator.authenticate(presented_token(request, path))
        except Unauthorized:
            return True
        return False

    def render(self, request: Any, inner: IResource) -> Any:
        record = self._open(request)
        try:
            _check_url(request)
            check_host(request)
            if self.origins.apply(request):
                request.setResponseCode(204)
                return b""
            if self.lifecycle.draining:
                request.setHeader(b"connection", b"close")
                raise ServiceUnavailable(SHUTTING_DOWN)
            if getattr(request, "body_too_large", False):
                # Whatever the route: a body it would not have kept (a declared
                # length over the limit is answered before the body is read).
                limit = getattr(request, "max_body_bytes", None)
                raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes")
            if record.path not in PUBLIC_PATHS:
                record.principal = self.authenticator.authenticate(presented_token(request, record.path))
            if record.principal is not None and record.principal.models and operator_path(record.path):
                raise OperatorOnly()
            self._check_body(request, record)
        except ProxyError as error:
            return render_error(request, error, record.error_dialect())
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.failure("front door failed for {path}", path=record.path)
            return render_error(request, InternalError(), record.error_dialect())
        self.lifecycle.admit(request, record)
        try:
            return inner.render(request)
        except Exception:  # noqa: BLE001 - Twisted would answer an HTML error page
            log.failure("rendering {path} failed", path=record.path)
            if getattr(request, "startedWriting", False):
                request.finish()
                return NOT_DONE_YET
            return render_error(request, InternalError(), record.error_dialect())

    def _check_body(self, request: Any, record: RequestRecord) -> None:
        """The token's model list, which needs the body. (The stream limits are
        applied by the pipeline, once a request is about to hold a generation.)"""
        restricted = record.principal is not None and bool(record.principal.models)
        if request.method != b"POST" or not restricted:
            return
        body = _peek_body(request)
        if body is None:
            return  # the route answers 400 for a body it cannot read
        name = body.get("model") or body.get("name")
        if isinstance(name, str) and name:
            record.model = name
            if not record.principal.may_use(name):
                raise ModelNotAllowed(name)


class FrontDoor(Resource):
    """A resource that puts the :class:`Gate` in front of another one."""

    isLeaf = True

    def __init__(self, gate: Gate, inner: IResource) -> None:
        super().__init__()
        self.gate = gate
        self.inner = inner

    def render(self, request: Any) -> Any:
        return self.gate.render(request, self.inner)


def token_models(request: Any) -> Callable[[str], bool] | None:
    """The client's token's model list as a test of a name; None when it may use every model."""
    principal = record_of(request).principal
    return principal.may_use if principal is not None and principal.models else None


def visible_to(request: Any, name: str) -> bool:
    """Whether the client's token may see model ``name`` (True without auth)."""
    allowed = token_models(request)
    return allowed is None or allowed(name)
