"""Secrets from outside the configuration file: systemd credentials and client tokens.

systemd hands a service its secrets as files in ``$CREDENTIALS_DIRECTORY``
(``LoadCredential=``), so a key never appears in the unit, the environment of
other processes or the config file. Client tokens are kept only as SHA-256
digests: a token read in plain text (from a credential or a tokens file) is
hashed at once and the text dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from ollama_proxy.config.schema import ConfigError, TokenLimits, TokenTable

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ClientToken:
    """A client's bearer token, known only by its SHA-256 digest.

    ``models`` are globs the token may use (empty: every model); ``name`` is
    what access logs, the usage ledger and per-client limits call its holder;
    ``limits`` are its rate limits and budgets; an ``admin`` token reads every
    token's usage.
    """

    sha256: str
    name: str
    models: tuple[str, ...] = ()
    limits: TokenLimits = TokenLimits()
    admin: bool = False


def token_digest(token: str) -> str:
    """The hex SHA-256 digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_credential(environ: Mapping[str, str], name: str) -> str | None:
    """The credential ``name`` from ``$CREDENTIALS_DIRECTORY``, or None.

    Trailing newlines are dropped: files written with ``echo`` end in one.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory or "/" in name:
        return None
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().rstrip("\r\n")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"cannot read credential {name}: {error.strerror}") from None
    return value or None


def digest_of(value: str, where: str) -> str:
    """``sha256:HEX`` (or a bare 64-hex digest) -> HEX; anything else is a plain token, hashed."""
    if value.startswith("sha256:"):
        digest = value[len("sha256:") :].lower()
        if not _HEX64.match(digest):
            raise ConfigError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return digest
    return token_digest(value)


def parse_token_lines(text: str, source: str) -> list[ClientToken]:
    """Tokens from a tokens file or credential, one per line.

    A line is ``TOKEN`` or ``sha256:HEX``, optionally followed by
    ``name=NAME``, ``models=GLOB,GLOB``, ``admin=true`` and limits
    (``requests_per_minute=60``, ``tokens_per_minute=``, ``budget_per_day=5.00``,
    ``budget_per_month=``);
    ``#`` starts a comment.
    """
    tokens: list[ClientToken] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        where = f"{source} line {number}"
        secret, *options = line.split()
        name = None
        models: tuple[str, ...] = ()
        limits: dict[str, str] = {}
        admin = False
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not value:
                raise ConfigError(f"{where}: expected name=NAME or models=GLOB,..., not '{option}'")
            if key == "name":
                name = value
            elif key == "models":
                models = tuple(g for g in value.split(",") if g)
            elif key in TokenLimits.__struct_fields__:
                limits[key] = value
            elif key == "admin" and value in ("true", "false"):
                admin = value == "true"
            else:
                raise ConfigError(f"{where}: unknown option '{key}'")
        digest = digest_of(secret, where)
        tokens.append(ClientToken(digest, name or f"token-{digest[:8]}", models, _limits(limits, where), admin))
    return tokens


def token_from_table(table: TokenTable, where: str, environ: Mapping[str, str]) -> ClientToken:
    """One ``[[auth.tokens]]`` table: ``sha256`` or ``credential``, ``name``, ``models``.

    A plain-text token is refused (the schema has no key for one): the config
    file is not a secret store.
    """
    if (table.sha256 is None) == (table.credential is None):
        raise ConfigError(f"{where} needs exactly one of 'sha256' or 'credential'")
    if table.sha256 is not None:
        digest = table.sha256.lower().removeprefix("sha256:")
        if not _HEX64.match(digest):
            raise ConfigError(f"{where}.sha256 must be 64 hex digits (the SHA-256 of the token)")
    else:
        secret = read_credential(environ, str(table.credential))
        if secret is None:
            raise ConfigError(f"{where}: credential '{table.credential}' not found in $CREDENTIALS_DIRECTORY")
        digest = token_digest(secret)
    own = {field: getattr(table, field) for field in TokenLimits.__struct_fields__}
    return ClientToken(digest, table.name or f"token-{digest[:8]}", table.models, TokenLimits(**own), table.admin)


def _limits(options: Mapping[str, str], where: str) -> TokenLimits:
    """A tokens-file line's limits, checked as the schema checks the file's."""
    try:
        return msgspec.convert(dict(options), TokenLimits, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{where}: {error}") from None


def with_credentials(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``environ`` plus API keys from systemd credentials, the environment winning.

    A credential named like an API-key variable in lower case
    (``openrouter_api_key`` -> ``OPENROUTER_API_KEY``) stands in for that
    variable, so every provider's key can come from ``LoadCredential=``.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return environ
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return environ
    merged = dict(environ)
    for name in names:
        if not re.fullmatch(r"[a-z0-9_]+_api_key", name):
            continue
        variable = name.upper()
        if not merged.get(variable):
            value = read_credential(environ, name)
            if value:
                merged[variable] = value
    return merged
