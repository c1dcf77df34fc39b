"""CORS, as Ollama does it: allowed origins are globs (``OLLAMA_ORIGINS``).

A browser request from an origin that is not allowed is refused with 403, the
way Ollama refuses it, so a web page cannot use the proxy's paid keys behind
its user's back. Requests without an ``Origin`` (every non-browser client) and
same-origin requests pass untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from .errors import ProxyError

_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_HEADERS = b"Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Request-Id"
_MAX_AGE = b"43200"


class OriginForbidden(ProxyError):
    status = 403
    type = "origin_forbidden"

    def __init__(self, origin: str) -> None:
        super().__init__(f"origin '{origin}' is not allowed (add it to OLLAMA_ORIGINS or [cors] origins)")


class OriginPolicy:
    """Which origins may call, and the headers that tell the browser so."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.patterns = tuple(o.strip().lower() for o in origins if o.strip())

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        return any(fnmatchcase(origin, pattern) for pattern in self.patterns)

    def apply(self, request: Any) -> bool:
        """Set the CORS headers for ``request``.

        Returns True when the request was a preflight, which is then fully
        answered by those headers; raises :class:`OriginForbidden`.
        """
        raw = request.getHeader(b"origin")
        if raw is None:
            return False
        origin = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        host = request.getHeader(b"host")
        host = host.decode("latin-1") if isinstance(host, bytes) else host
        same_origin = bool(host) and origin in (f"http://{host}", f"https://{host}")
        if not same_origin and not self.allows(origin):
            raise OriginForbidden(origin)
        request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        request.setHeader(b"vary", b"Origin")
        request.setHeader(b"access-control-expose-headers", b"X-Request-Id")
        if request.method == b"OPTIONS" and request.getHeader(b"access-control-request-method"):
            request.setHeader(b"access-control-allow-methods", _METHODS)
            asked = request.getHeader(b"access-control-request-headers")
            request.setHeader(b"access-control-allow-headers", asked or _HEADERS)
            request.setHeader(b"access-control-max-age", _MAX_AGE)
            return True
        return False
