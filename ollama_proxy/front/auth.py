"""Client authentication: bearer tokens, compared by digest in constant time.

Tokens are stored as SHA-256 digests (:mod:`ollama_proxy.config.credentials`). The
presented token is hashed and compared with *every* stored digest through
:func:`hmac.compare_digest`, so neither the comparison nor the number of
comparisons tells an attacker how close a guess was or which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ollama_proxy.config.credentials import ClientToken
from ollama_proxy.config.ops import AuthConfig
from ollama_proxy.errors import ProxyError, Unauthorized

# Liveness probes (load balancers, VS Code's version check) work without a token.
PUBLIC_PATHS = frozenset({"/", "/api/version"})


# The provider views show every provider's models, traffic and last errors: an
# operator's view, closed to a token limited to some models.
OPERATOR_PREFIX = "/api/providers"


def operator_path(path: str) -> bool:
    """Whether ``path`` is one of the operator's provider views."""
    return path == OPERATOR_PREFIX or path.startswith(OPERATOR_PREFIX + "/")


class OperatorOnly(ProxyError):
    """A token limited to some models asked for an operator's view."""

    status = 403
    type = "forbidden"

    def __init__(self) -> None:
        super().__init__("the provider views are for operators: this client token is limited to some models")


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to, and which models it may use (globs; none: all)."""

    name: str
    models: tuple[str, ...] = ()
    admin: bool = False  # reads every token's usage (GET /api/usage)

    def may_use(self, model: str) -> bool:
        """Globs match the name the client uses, with or without ``:latest``."""
        if not self.models:
            return True
        names = {model, model.removesuffix(":latest")}
        return any(fnmatchcase(name, glob) for name in names for glob in self.models)


class Authenticator:
    """Checks ``Authorization: Bearer ...`` against the configured token digests."""

    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._tokens: tuple[tuple[bytes, ClientToken], ...] = tuple((bytes.fromhex(t.sha256), t) for t in config.tokens)

    def authenticate(self, authorization: bytes | None) -> Principal | None:
        """The caller's principal; None when auth is off. Raises :class:`Unauthorized`."""
        if not self.enabled:
            return None
        token = _bearer(authorization)
        if token is None:
            raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        digest = hashlib.sha256(token).digest()
        match: ClientToken | None = None
        for stored, entry in self._tokens:
            # No early exit: every request costs the same number of comparisons.
            if hmac.compare_digest(digest, stored) and match is None:
                match = entry
        if match is None:
            raise Unauthorized("invalid bearer token")
        return Principal(match.name, match.models, match.admin)


def presented_token(request: Any, path: str) -> bytes | None:
    """The ``Authorization`` header; on ``/v1/messages`` an ``x-api-key`` header counts as
    a bearer token too, since that is how Anthropic's clients send their key."""
    authorization = request.getHeader(b"authorization")
    if not authorization and path.startswith("/v1/messages"):
        key = request.getHeader(b"x-api-key")
        if key:
            return b"Bearer " + key.strip()
    return authorization


def _bearer(header: bytes | None) -> bytes | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
