"""A route is declared once: its path, methods and its bookkeeping in one decorator.

``route = Routes(app)`` in a Klein app's class body, then ``@route("/api/chat",
methods=["POST"])`` on a handler registers the path with Klein and wraps the
handler so that every call is counted under its endpoint label (for ``/health``,
``/metrics``, the access line), and a draining server can cut it (a stream ends
with an error line, anything else gets 503). The handler's object has a
``pipeline`` (:class:`~ollama_proxy.api.pipeline.Pipeline`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from klein import Klein
from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from ollama_proxy.errors import ErrorDialect
from ollama_proxy.front.record import record_of

Handler = Callable[..., Any]

_VARIABLE = re.compile(r"<(?:[a-z]+:)?(\w+)>")


def label_of(path: str) -> str:
    """The endpoint label of a Klein path: ``/api/tags/<provider>`` -> ``/api/tags/{provider}``."""
    return _VARIABLE.sub(r"{\1}", path)


def klein_app() -> Klein:
    """A Klein app for one API surface, matching paths as Ollama's router does.

    Werkzeug merges ``//`` and answers with a redirect (which escaped as a 500);
    Ollama's router knows no ``/api//tags``, so neither does this: it is a 404.
    """
    app = Klein()
    app.url_map.merge_slashes = False
    return app


class Routes:
    """Declares the routes of one Klein app: ``prefix`` is where the app is mounted (for
    the labels), ``dialect`` the one its errors are answered in."""

    def __init__(self, app: Klein, prefix: str = "", dialect: ErrorDialect | None = None) -> None:
        self.app = app
        self.prefix = prefix
        self.dialect = dialect

    def __call__(
        self,
        *paths: str,
        methods: Sequence[str],
        endpoint: str | None = None,
        dialect: ErrorDialect | None = None,
    ) -> Callable[[Handler], Handler]:
        """Serve the handler at ``paths``, counted under ``endpoint`` (by default the
        first path's label below the prefix); its errors in ``dialect`` (by default the app's)."""
        label = endpoint or self.prefix + label_of(paths[0])

        def decorate(handler: Handler) -> Handler:
            wrapped = observed(label, dialect or self.dialect)(handler)
            for path in paths:
                self.app.route(path, methods=list(methods))(wrapped)
            return wrapped

        return decorate


def sized(body: Any, request: Any) -> Any:
    """A whole answer (bytes a route returns for Klein to write) goes with its
    Content-Length, as Ollama's Go server sends one: not chunked, so a client reads it
    in one piece and Twisted writes no last chunk."""
    if isinstance(body, bytes) and not request.startedWriting:
        request.setHeader(b"content-length", b"%d" % len(body))
    return body


def observed(endpoint: str, dialect: ErrorDialect | None = None) -> Callable[[Handler], Handler]:
    """Wrap a route of an object with a ``pipeline``: count it, and make it cuttable."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(self: Any, request: IRequest, *args: Any, **kwargs: Any) -> Any:
            if dialect is not None:
                record_of(request).dialect = dialect
            self.pipeline.observe(request, endpoint)
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                return self.pipeline.track(request, ensureDeferred(result)).addCallback(sized, request)
            return sized(result, request)

        return wrapper

    return decorate
