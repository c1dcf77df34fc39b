"""CORS and Host checks, as Ollama does them: allowed origins are globs (``OLLAMA_ORIGINS``).

A browser request from an origin that is not allowed is refused with 403, the
way Ollama refuses it, so a web page cannot use the proxy's paid keys behind
its user's back. Requests without an ``Origin`` (every non-browser client) and
same-origin requests pass untouched.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from ollama_proxy.errors import BadRequest, ProxyError

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


class HostForbidden(ProxyError):
    status = 403
    type = "host_forbidden"

    def __init__(self, host: str) -> None:
        super().__init__(f"host '{host}' is not allowed on a loopback listener")


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _host_name(header: str) -> str:
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def host_allowed(header: str | None) -> bool:
    """Whether a ``Host`` header names this machine, as Ollama decides it."""
    if not header:
        return True
    host = _host_name(header)
    if host in ("", "localhost") or host.endswith(_LOCAL_SUFFIXES):
        return True
    local = _local_address(host)
    return host == socket.gethostname().lower() if local is None else local


# Both answers depend on the text alone, so they are kept: an address parsed by
# ``ipaddress`` on every request was a tenth of the front door's cost. Bounded, so a
# client sending many different Host headers only churns the cache.
@lru_cache(maxsize=256)
def _local_address(host: str) -> bool | None:
    """Whether ``host`` is an address of this machine's networks; None when no IP address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return address.is_loopback or address.is_private or address.is_unspecified


@lru_cache(maxsize=64)
def _loopback(host: str) -> bool | None:
    """Whether a listener's address ``host`` is a loopback one; None when no IP address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None


def check_host(request: Any) -> None:
    """Refuse DNS rebinding: on a loopback listener, a ``Host`` that names some
    other site means a browser was tricked into calling us (403, as Ollama).
    A request with several ``Host`` headers, or an HTTP/1.1 request with none,
    is refused on any listener (400)."""
    hosts = request.requestHeaders.getRawHeaders(b"host") or ()
    if not hosts and request.clientproto == b"HTTP/1.1":
        # RFC 9112, 3.2: a server MUST answer 400 (Go's server, so Ollama, does).
        raise BadRequest("missing required Host header")
    if len(hosts) > 1:
        # HTTP/1.1 (RFC 9112, 3.2): more than one Host is a bad request; which one
        # would count is exactly what an attacker plays with.
        raise BadRequest("more than one Host header")
    loopback = _loopback(getattr(request.getHost(), "host", ""))
    if loopback is None:
        return  # a unix socket or a systemd-passed one: no address to judge by
    if not loopback:
        return
    raw = request.getHeader(b"host")
    header = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not host_allowed(header):
        raise HostForbidden(_host_name(header or ""))
