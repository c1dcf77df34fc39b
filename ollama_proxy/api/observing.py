"""``@observed(endpoint)``: the bookkeeping every route shares.

It counts and times the request for ``/health`` and ``/metrics``, names the
endpoint in the request's record (access line, Prometheus), and lets a draining
server cut the handler (a stream ends with an error line, anything else gets 503).
Used by the native API and by the ``/v1`` API alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from ollama_proxy.front.record import record_of

Handler = Callable[..., Any]


def observed(endpoint: str) -> Callable[[Handler], Handler]:
    """Decorate a route of an object that has ``_observe(request, endpoint)`` and ``gate``."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(self: Any, request: IRequest, *args: Any, **kwargs: Any) -> Any:
            self._observe(request, endpoint)
            record_of(request).endpoint = endpoint
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                d = ensureDeferred(result)
                gate = self.gate
                return gate.lifecycle.track_handler(request, d) if gate is not None else d
            return result

        return wrapper

    return decorate
