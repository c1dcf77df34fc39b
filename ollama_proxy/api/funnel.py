"""The one error funnel: whatever a route raised becomes one JSON error answer.

Routes raise :class:`~ollama_proxy.errors.ProxyError` (or let anything else
escape); each Klein app registers one handler that calls :func:`error_response`
with its own body shape (native ``{"error", "type"}``, or OpenAI's on ``/v1``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from ollama_proxy.errors import InternalError, MethodNotAllowed, ProxyError, RouteNotFound

log = Logger()

JSON = b"application/json; charset=utf-8"


def json_response(request: IRequest, obj: Any, status: int = 200) -> bytes:
    """``obj`` as the JSON body of the answer, with ``status``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _path(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")


def client_error(request: IRequest, failure: Failure) -> ProxyError | None:
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
        retry_after = getattr(value, "retry_after", None)
        if value.status == 429 and retry_after:
            request.setHeader(b"retry-after", str(int(retry_after + 0.999)).encode())
        return value
    if isinstance(value, WerkzeugNotFound):
        return RouteNotFound(f"no such endpoint: {_path(request)}")
    if isinstance(value, WerkzeugMethodNotAllowed):
        allowed = ", ".join(getattr(value, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"allow", allowed.encode())
        return MethodNotAllowed(f"method {request.method.decode('ascii', 'replace')} not allowed here")
    log.failure("unexpected error answering {path}", failure, path=_path(request))
    return InternalError()


def error_response(
    request: IRequest,
    failure: Failure,
    render: Callable[[ProxyError], Any],
    line: Callable[[str], bytes] | None = None,
) -> bytes | None:
    """The answer for ``failure``, its body shaped by ``render``.

    After output began the status is sent already: a stream then ends with
    ``line(message)`` (its own framing), never with a JSON body glued on.
    """
    error = client_error(request, failure)
    if error is None:
        return None  # the client went away; nothing to answer
    if getattr(request, "startedWriting", False):
        if line is not None:
            request.write(line(error.message))
        return None
    return json_response(request, render(error), error.status)
