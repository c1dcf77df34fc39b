"""The operator's sections of the config file: ``[auth]``, ``[cors]``, ``[limits]``,
``[log]`` and ``[shutdown]``.

They are parsed here, apart from the core keys, with the same strictness: an
unknown key or a value of the wrong type is refused with a message naming it.
Everything here is re-read on SIGHUP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.config.credentials import ClientToken, parse_token_lines, read_credential, token_from_table

SECTIONS = frozenset({"auth", "cors", "limits", "log", "shutdown"})

# Origins Ollama itself allows; OLLAMA_ORIGINS and [cors] origins add to them.
DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
    for scheme in ("http", "https")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# The credential read for client tokens when it exists (LoadCredential=client_tokens:...).
CLIENT_TOKENS_CREDENTIAL = "client_tokens"


class OpsConfigError(ValueError):
    """A section of the file cannot be used; the message names the key."""


@dataclass(frozen=True)
class AuthConfig:
    """Client authentication. ``enabled`` is implied by having tokens."""

    enabled: bool = False
    tokens: tuple[ClientToken, ...] = ()


@dataclass(frozen=True)
class CorsConfig:
    """Browser origins allowed to call the API (globs, as in ``OLLAMA_ORIGINS``)."""

    origins: tuple[str, ...] = DEFAULT_ORIGINS


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on what one client may ask of the proxy. 0 means no limit."""

    max_header_bytes: int = 16384
    max_streams_per_client: int = 0
    max_streams: int = 0
    # Seconds a connection has to send a request's headers (not reset by each byte).
    header_timeout: float = 30.0
    # Open client connections; past it a new one gets 503 and is closed.
    max_connections: int = 4096


@dataclass(frozen=True)
class LogConfig:
    """``format`` is ``text`` or ``json``; ``access`` writes one line per request."""

    format: str = "text"
    access: bool = True


@dataclass(frozen=True)
class ShutdownConfig:
    """Seconds in-flight requests may take to finish after SIGTERM."""

    drain_timeout: float = 30.0


@dataclass(frozen=True)
class OpsConfig:
    auth: AuthConfig = field(default_factory=AuthConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)


def _section(table: Mapping[str, Any], name: str, keys: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    section = table.get(name, {})
    if not isinstance(section, dict):
        raise OpsConfigError(f"'{name}' must be a table")
    for key, value in section.items():
        if key not in keys:
            raise OpsConfigError(f"unknown key '{name}.{key}'")
        types = keys[key]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise OpsConfigError(f"'{name}.{key}' has the wrong type ({type(value).__name__})")
    return section


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise OpsConfigError(f"'{key}' must be a list of strings")
    return tuple(value)


def _count(section: Mapping[str, Any], name: str, key: str, default: int, minimum: int = 0) -> int:
    value = section.get(key, default)
    if value < minimum:
        raise OpsConfigError(f"'{name}.{key}' must be at least {minimum}")
    return int(value)


def parse_ops(table: Mapping[str, Any], environ: Mapping[str, str]) -> OpsConfig:
    """The operator's sections of a parsed TOML table, with the environment.

    ``OLLAMA_ORIGINS`` (comma-separated) adds origins; a credential named
    ``client_tokens`` adds client tokens (one per line, like a tokens file).
    """
    auth = _section(table, "auth", {"enabled": (bool,), "tokens": (list,), "tokens_file": (str,)})
    cors = _section(table, "cors", {"origins": (list,)})
    limits = _section(
        table,
        "limits",
        {
            "max_header_bytes": (int,),
            "max_streams_per_client": (int,),
            "max_streams": (int,),
            "header_timeout": (int, float),
            "max_connections": (int,),
        },
    )
    log = _section(table, "log", {"format": (str,), "access": (bool,)})
    shutdown = _section(table, "shutdown", {"drain_timeout": (int, float)})

    tokens: list[ClientToken] = []
    try:
        for index, entry in enumerate(auth.get("tokens", [])):
            tokens.append(token_from_table(entry, f"auth.tokens[{index}]", environ))
        if "tokens_file" in auth:
            path = auth["tokens_file"]
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as error:
                raise OpsConfigError(f"'auth.tokens_file': cannot read {path}: {error.strerror}") from None
            tokens.extend(parse_token_lines(text, path))
        credential = read_credential(environ, CLIENT_TOKENS_CREDENTIAL)
        if credential:
            tokens.extend(parse_token_lines(credential, f"credential {CLIENT_TOKENS_CREDENTIAL}"))
    except OpsConfigError:
        raise
    except ValueError as error:
        raise OpsConfigError(str(error)) from None
    enabled = auth.get("enabled", bool(tokens))
    if enabled and not tokens:
        raise OpsConfigError("'auth.enabled' is true but no client token is configured")

    origins = list(DEFAULT_ORIGINS)
    extra = environ.get("OLLAMA_ORIGINS", "").strip().strip("\"'")
    origins.extend(o.strip() for o in extra.split(",") if o.strip())
    origins.extend(_strings(cors.get("origins", []), "cors.origins"))

    log_format = log.get("format", "text")
    if log_format not in ("text", "json"):
        raise OpsConfigError('\'log.format\' must be "text" or "json"')
    header_timeout = float(limits.get("header_timeout", LimitsConfig.header_timeout))
    if header_timeout <= 0:
        raise OpsConfigError("'limits.header_timeout' must be positive")
    drain = float(shutdown.get("drain_timeout", ShutdownConfig.drain_timeout))
    if drain < 0:
        raise OpsConfigError("'shutdown.drain_timeout' must not be negative")

    return OpsConfig(
        auth=AuthConfig(enabled=enabled, tokens=tuple(tokens)),
        cors=CorsConfig(origins=tuple(dict.fromkeys(origins))),
        limits=LimitsConfig(
            max_header_bytes=_count(limits, "limits", "max_header_bytes", LimitsConfig.max_header_bytes, minimum=1024),
            max_streams_per_client=_count(limits, "limits", "max_streams_per_client", 0),
            max_streams=_count(limits, "limits", "max_streams", 0),
            header_timeout=header_timeout,
            max_connections=_count(limits, "limits", "max_connections", LimitsConfig.max_connections, minimum=1),
        ),
        log=LogConfig(format=log_format, access=log.get("access", True)),
        shutdown=ShutdownConfig(drain_timeout=drain),
    )
