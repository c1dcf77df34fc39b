"""Domain errors: each carries the HTTP status and the ``type`` of its JSON body.

Routes raise these; one handler in :mod:`ollama_proxy.api.native` turns them into
``{"error": ..., "type": ...}`` responses, so the routes read as the happy path.
"""

from __future__ import annotations

from http import HTTPStatus


class ProxyError(Exception):
    """An error that becomes an HTTP response with a JSON body."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def body(self) -> dict[str, str]:
        return {"error": self.message, "type": self.type}


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
_RENAMED = {408: 504, 422: 400}


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
