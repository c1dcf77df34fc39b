"""The one error funnel: the error types, and how each surface's dialect renders them.

Routes raise a :class:`ProxyError` (each carries its HTTP status and ``type``) and
read as the happy path; the front door raises them too. Whatever is raised ends in
:func:`error_response` (a Klein app's error handler) or :func:`render_error` (the
front door, the drain), which answer in the request's :class:`ErrorDialect`:

- native (``/api``): ``{"error": message, "type": ...}``; a stream that began ends
  with the NDJSON line ``{"error": message}``;
- OpenAI (``/v1``): ``{"error": {"message", "type", "param", "code"}}``; a stream
  ends with that object as a Server-Sent Event (a Responses stream with its
  ``error`` event);
- Anthropic (``/v1/messages``): ``{"type": "error", "error": {"type", "message"}}``;
  a stream ends with that object as the ``error`` event.

A new surface adds one dialect (an object with ``body`` and ``stream_line``) and
its path prefix in :data:`DIALECTS`; the status, content type, ``Retry-After``,
``WWW-Authenticate`` and ``Allow`` headers are written here, once.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.wire.framing import NonFiniteNumber, dumps, ndjson, sse_event

log = Logger()

JSON = b"application/json; charset=utf-8"


class ProxyError(Exception):
    """An error that becomes an HTTP response with a JSON body."""

    status: int = 500
    type: str = "internal_error"
    # Seconds after which the client may try again (the Retry-After header), if known.
    retry_after: float | None = None

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    type = "unauthorized"


class ModelNotFound(ProxyError):
    status = 404
    type = "model_not_found"

    def __init__(self, name: str) -> None:
        # Ollama's own wording: clients and people both recognise it.
        super().__init__(f"model '{name}' not found")
        self.model = name


class ModelForbidden(ProxyError):
    status = 403
    type = "model_forbidden"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not allowed by the filter")
        self.model = name


class ModelNotAllowed(ProxyError):
    """The client's token may not use the model it asked for (or one its name leads to)."""

    status = 403
    type = "forbidden"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not allowed for this client token")
        self.model = name


class RouteNotFound(ProxyError):
    status = 404
    type = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "method_not_allowed"


class RequestTooLarge(ProxyError):
    status = 413
    type = "request_too_large"


class NotImplementedByProxy(ProxyError):
    status = 501
    type = "not_implemented"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"


class InternalError(ProxyError):
    status = 500
    type = "internal_error"

    def __init__(self) -> None:
        super().__init__("Internal server error")


# Upstream statuses whose meaning survives the hop unchanged: the client can act
# on them (fix the request, back off, try later). Everything else is the
# gateway's problem with its upstream, which HTTP calls 502.
_PASSED_THROUGH = {400, 404, 413, 429, 503, 504}
# 529 is Anthropic's "overloaded": clients know it as 503 (Anthropic's SDK: overloaded_error).
_RENAMED = {408: 504, 422: 400, 529: 503}


class UpstreamError(ProxyError):
    """A provider answered with an error, or could not be reached."""

    status = 502

    def __init__(
        self,
        provider_label: str,
        provider_type: str,
        upstream_status: int | None,
        detail: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        if upstream_status is None:
            message = f"{provider_label} API error: {detail}"
            status = status or 502
        else:
            try:
                reason = HTTPStatus(upstream_status).phrase
            except ValueError:
                reason = ""
            head = f"{upstream_status} {reason}".strip()
            message = f"{provider_label} API error: {head}" + (f": {detail}" if detail else "")
            if status is None:
                status = upstream_status if upstream_status in _PASSED_THROUGH else _RENAMED.get(upstream_status, 502)
        super().__init__(message, status=status, type=f"{provider_type}_error")
        self.upstream_status = upstream_status
        self.provider_type = provider_type
        self.detail = detail
        self.retry_after = retry_after


class UpstreamStreamError(Exception):
    """A stream that had begun ended in an error (mid-stream error event, stall, cut)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- dialects: the shape of an error on each surface ----------------------------------
class ErrorDialect(Protocol):
    """How one surface shapes an error: as a JSON body, and as the line that ends a stream."""

    name: str  # the surface, as the request's record names it

    def body(self, error: ProxyError) -> Any:
        """The JSON body of an error answered before any output."""
        ...

    def stream_line(self, message: str) -> bytes:
        """The bytes that end a stream which already began, in the stream's own framing."""
        ...


class NativeDialect:
    """Ollama's own shape."""

    name = "native"

    def body(self, error: ProxyError) -> Any:
        return {"error": error.message, "type": error.type}

    def stream_line(self, message: str) -> bytes:
        return ndjson({"error": message})


class OpenAIDialect:
    """OpenAI's (and Ollama's ``/v1``) shape; ``code`` names the proxy's type."""

    name = "openai"

    def body(self, error: ProxyError) -> Any:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(error.status, "api_error")
        return {"error": {"message": error.message, "type": kind, "param": None, "code": error.type}}

    def stream_line(self, message: str) -> bytes:
        # The openai clients raise APIError on an event that carries "error".
        return sse_event({"error": {"message": message, "type": "api_error", "param": None, "code": None}})


class ResponsesDialect(OpenAIDialect):
    """OpenAI's shape; a Responses stream that began ends with its own ``error`` event."""

    name = "responses"

    def stream_line(self, message: str) -> bytes:
        return sse_event({"type": "error", "code": "server_error", "message": message, "param": None}, "error")


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class AnthropicDialect:
    """Anthropic's shape (``/v1/messages``): ``{"type": "error", "error": {"type", "message"}}``."""

    name = "anthropic"

    @staticmethod
    def error_type(status: int) -> str:
        """Anthropic's error ``type`` for an HTTP status."""
        return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")

    def body(self, error: ProxyError) -> Any:
        return {"type": "error", "error": {"type": self.error_type(error.status), "message": error.message}}

    def stream_line(self, message: str) -> bytes:
        return sse_event({"type": "error", "error": {"type": "api_error", "message": message}}, "error")


NATIVE = NativeDialect()
OPENAI = OpenAIDialect()
RESPONSES = ResponsesDialect()
ANTHROPIC = AnthropicDialect()

# Path prefixes (below the API's mount point) and their dialect, most specific first;
# everything else speaks Ollama's.
DIALECTS: list[tuple[str, ErrorDialect]] = [
    ("/v1/messages", ANTHROPIC),
    ("/v1/responses", RESPONSES),
    ("/v1/", OPENAI),
]


def dialect_for(path: str) -> ErrorDialect:
    """The dialect of a request for ``path``."""
    path = "/" + path.lstrip("/")  # "//v1//models" is still a /v1 request
    for prefix, dialect in DIALECTS:
        if path.startswith(prefix):
            return dialect
    return NATIVE


# -- rendering ------------------------------------------------------------------------
def json_response(request: Any, obj: Any, status: int = 200) -> bytes:
    """``obj`` as the JSON body of the answer, with ``status``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return dumps(obj)


def render_error(request: Any, error: ProxyError, dialect: ErrorDialect) -> bytes:
    """Set the status and headers for ``error``; return its body in ``dialect``."""
    if error.status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="ollama-proxy"')
    # The proxy's own refusals say when to come back; of an upstream's errors only a
    # 429 passes its wait on (a 503's wait was the upstream's, and another provider
    # or a retry may answer sooner).
    if error.retry_after and (error.status == 429 or not isinstance(error, UpstreamError)):
        request.setHeader(b"retry-after", str(int(error.retry_after + 0.999)).encode())
    return json_response(request, dialect.body(error), error.status)


def _path(request: Any) -> str:
    return request.path.decode("utf-8", "replace")


def client_error(request: Any, failure: Failure) -> ProxyError | None:
    """The :class:`ProxyError` a failure means for the client (``None``: it left).

    Unexpected exceptions are logged with their traceback and become a bare 500:
    the detail stays in the log.
    """
    value = failure.value
    if failure.check(CancelledError):
        return None
    if isinstance(value, ProxyError):
        if value.status >= 500:
            log.warn(
                "{method} {path}: {status} {message}",
                method=request.method.decode(),
                path=_path(request),
                status=value.status,
                message=value.message,
            )
        return value
    if isinstance(value, NonFiniteNumber):
        return ProxyError(str(value), status=502, type="upstream_error")
    # Imported here: configuration (and the main process of workers) needs this module, not Klein's.
    from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
    from werkzeug.exceptions import NotFound as WerkzeugNotFound
    from werkzeug.routing import RequestRedirect

    # Werkzeug would redirect "/api//tags" to "/api/tags"; Ollama's router answers 404.
    if isinstance(value, (WerkzeugNotFound, RequestRedirect)):
        return RouteNotFound(f"no such endpoint: {_path(request)}")
    if isinstance(value, WerkzeugMethodNotAllowed):
        allowed = ", ".join(getattr(value, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"allow", allowed.encode())
        return MethodNotAllowed(f"method {request.method.decode('ascii', 'replace')} not allowed here")
    log.failure("unexpected error answering {path}", failure, path=_path(request))
    return InternalError()


def error_response(request: Any, failure: Failure, dialect: ErrorDialect) -> bytes | None:
    """The answer for ``failure`` in ``dialect``.

    After output began the status is sent already: a stream then ends with the
    dialect's stream line, never with a JSON body glued on.
    """
    error = client_error(request, failure)
    if error is None:
        return None  # the client went away; nothing to answer
    if getattr(request, "startedWriting", False):
        request.write(dialect.stream_line(error.message))
        return None
    return render_error(request, error, dialect)
