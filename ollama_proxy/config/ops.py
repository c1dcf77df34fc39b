"""The operator's sections of the config file: ``[auth]``, ``[cors]``, ``[limits]``,
``[log]`` and ``[shutdown]``.

Their keys are declared in :mod:`ollama_proxy.config.schema`; ``[limits]``,
``[log]`` and ``[shutdown]`` are used as written, ``[auth]`` and ``[cors]`` are
completed here from the environment and systemd credentials. Everything here is
re-read on SIGHUP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ollama_proxy.config.credentials import ClientToken, parse_token_lines, read_credential, token_from_table
from ollama_proxy.config.schema import (
    AuthTable,
    ConfigError,
    ConfigFile,
    LimitsConfig,
    LogConfig,
    ShutdownConfig,
    TokenLimits,
    as_written,
)

__all__ = ["DEFAULT_ORIGINS", "AuthConfig", "CorsConfig", "LimitsConfig", "LogConfig", "OpsConfig", "ShutdownConfig"]

# Origins Ollama itself allows; OLLAMA_ORIGINS and [cors] origins add to them.
DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
    for scheme in ("http", "https")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# The credential read for client tokens when it exists (LoadCredential=client_tokens:...).
CLIENT_TOKENS_CREDENTIAL = "client_tokens"


@dataclass(frozen=True)
class AuthConfig:
    """Client authentication. ``enabled`` is implied by having tokens."""

    enabled: bool = False
    tokens: tuple[ClientToken, ...] = ()
    default_limits: TokenLimits | None = None  # for tokens without limits of their own


@dataclass(frozen=True)
class CorsConfig:
    """Browser origins allowed to call the API (globs, as in ``OLLAMA_ORIGINS``)."""

    origins: tuple[str, ...] = DEFAULT_ORIGINS


@dataclass(frozen=True)
class OpsConfig:
    """The operator's sections, as the front door and the daemon read them."""

    auth: AuthConfig = field(default_factory=AuthConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)


def _tokens(auth: AuthTable, environ: Mapping[str, str]) -> tuple[ClientToken, ...]:
    tokens = [token_from_table(entry, f"auth.tokens[{index}]", environ) for index, entry in enumerate(auth.tokens)]
    if auth.tokens_file is not None:
        try:
            with open(auth.tokens_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError(f"'auth.tokens_file': cannot read {auth.tokens_file}: {error.strerror}") from None
        tokens.extend(parse_token_lines(text, auth.tokens_file))
    credential = read_credential(environ, CLIENT_TOKENS_CREDENTIAL)
    if credential:
        tokens.extend(parse_token_lines(credential, f"credential {CLIENT_TOKENS_CREDENTIAL}"))
    return tuple(tokens)


def parse_ops(file: ConfigFile, environ: Mapping[str, str]) -> OpsConfig:
    """The operator's sections of a decoded file, with the environment.

    ``OLLAMA_ORIGINS`` (comma-separated) adds origins; a credential named
    ``client_tokens`` adds client tokens (one per line, like a tokens file).
    """
    tokens = _tokens(file.auth, environ)
    enabled = bool(tokens) if file.auth.enabled is None else file.auth.enabled
    if enabled and not tokens:
        raise ConfigError("'auth.enabled' is true but no client token is configured")
    origins = list(DEFAULT_ORIGINS)
    extra = environ.get("OLLAMA_ORIGINS", "").strip().strip("\"'")
    origins.extend(o.strip() for o in extra.split(",") if o.strip())
    origins.extend(file.cors.origins)
    # [limits], [log], [shutdown]: as the file declares them.
    return OpsConfig(
        **as_written(OpsConfig, file),
        auth=AuthConfig(enabled=enabled, tokens=tokens, default_limits=file.auth.default_limits),
        cors=CorsConfig(origins=tuple(dict.fromkeys(origins))),
    )
