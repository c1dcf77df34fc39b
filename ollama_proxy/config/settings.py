"""Configuration: the environment first, then an optional TOML file.

Secrets and endpoints come from the environment (``OPENROUTER_API_KEY``,
``OPENROUTER_BASE_URL``, ``OLLAMA_HOST``, ``OLLAMA_PROXY_CONFIG``); everything else
from the file. API keys may also come from systemd credentials
(``$CREDENTIALS_DIRECTORY/openrouter_api_key``, see :mod:`ollama_proxy.config.credentials`),
and the operator's sections (``[auth]``, ``[cors]``, ``[limits]``, ``[log]``,
``[shutdown]``) are parsed by :mod:`ollama_proxy.config.ops`. Every key of the file
is checked: an unknown key or a value of the wrong type stops start-up with a
:class:`ConfigError` that names the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ollama_proxy.config.credentials import with_credentials
from ollama_proxy.config.ops import OpsConfig, parse_ops
from ollama_proxy.config.providers import (
    BreakerConfig,
    ProviderConfig,
    RetryConfig,
    RoutingConfig,
    check_base_url,
    parse_providers,
    parse_routing,
)
from ollama_proxy.config.schema import (
    DEFAULT_OLLAMA_VERSION,
    DEFAULT_OPENROUTER_URL,
    ConfigError,
    ConfigFile,
    FilterConfig,
    LedgerConfig,
    OpenRouterConfig,
    PriceTable,
    Timeouts,
    Workers,
    as_written,
    decode,
)
from ollama_proxy.errors import BadRequest
from ollama_proxy.routing.modelfilter import parse_filter_file
from ollama_proxy.wire.keep_alive import parse_keep_alive

__all__ = [
    "DEFAULT_LISTEN",
    "Config",
    "ConfigError",
    "FilterConfig",
    "OpenRouterConfig",
    "Timeouts",
    "listen_from_ollama_host",
    "load_config",
]

DEFAULT_LISTEN = "tcp:11434:interface=127.0.0.1"


@dataclass(frozen=True)
class Config:
    """Everything the service tree needs, immutable once loaded."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    # Worker processes (--workers wins): see ollama_proxy.ops.workermode.
    workers: Workers = 1
    openrouter: OpenRouterConfig = field(default_factory=OpenRouterConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    filter: FilterConfig = field(default_factory=FilterConfig)
    ollama_version: str = DEFAULT_OLLAMA_VERSION
    environment: str = "production"
    max_body_bytes: int = 32 * 1024 * 1024
    model_refresh_interval: float = 300.0
    health_check_interval: float = 60.0
    max_connections_per_provider: int = 128
    config_file: str | None = None
    # How long a model stays listed in /api/ps after use (OLLAMA_KEEP_ALIVE, as Ollama reads it).
    default_keep_alive: float = 300.0
    # [auth], [cors], [limits], [log], [shutdown]: see ollama_proxy.config.ops.
    ops: OpsConfig = field(default_factory=OpsConfig)
    # Providers besides OpenRouter ([openai], [anthropic], [[providers]]), routing and resilience.
    providers: tuple[ProviderConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    demo: bool = False  # --demo: add the built-in echo provider
    # [ledger] (None: no ledger) with its url resolved, and [prices] by model.
    ledger: LedgerConfig | None = None
    prices: Mapping[str, PriceTable] = field(default_factory=dict)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a response or a log line: every provider's key
        (however it was given: in the file, ``key_env``, ``key_file``, a systemd
        credential) and every value of its ``headers`` (``api-key`` = ..., Azure's style)."""
        keys = (self.openrouter.api_key,) + tuple(p.api_key for p in self.providers)
        if self.ledger is not None and self.ledger.url:
            keys += (urlsplit(self.ledger.url).password,)
        headers = tuple(value for p in self.providers for _, value in p.headers)
        return tuple(s for s in keys + headers if s)


def listen_from_ollama_host(value: str) -> str:
    """Translate ``OLLAMA_HOST`` (as Ollama reads it) into a Twisted endpoint string."""
    host = value.strip()
    for scheme in ("http://", "https://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.rstrip("/")
    port = "11434"
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        if rest.startswith(":") and rest[1:]:
            port = rest[1:]
        host = address
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host:
        host = "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"OLLAMA_HOST: '{value}' does not name a valid port")
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def load_config(
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    listen: Sequence[str] | None = None,
    demo: bool = False,
) -> Config:
    """Build a :class:`Config` from the environment, a TOML file and ``--listen``.

    Precedence: command line, then environment (secrets and endpoints), then the file.
    Every problem, a file that is not UTF-8 included, is a :class:`ConfigError`.
    """
    try:
        return _load_config(environ, config_file, listen, demo)
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"a configuration, key or filter file is not valid UTF-8: {error.reason} at byte {error.start}"
        ) from None


def _read(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _filter(given: FilterConfig) -> FilterConfig:
    if not given.file:
        return given
    try:
        allow, deny = parse_filter_file(given.file)
    except OSError as error:
        raise ConfigError(f"'filter.file': cannot read {given.file}: {error.strerror}") from None
    return msgspec.structs.replace(given, allow=given.allow + allow, deny=given.deny + deny)


def _openrouter(given: OpenRouterConfig, env: Mapping[str, str]) -> OpenRouterConfig:
    """The environment wins over the file for the key and the URL."""
    env_url = env.get("OPENROUTER_BASE_URL")
    check_base_url(env_url or given.base_url, "OPENROUTER_BASE_URL" if env_url else "openrouter.base_url")
    return msgspec.structs.replace(
        given,
        api_key=env.get("OPENROUTER_API_KEY") or given.api_key,
        base_url=(env.get("OPENROUTER_BASE_URL") or given.base_url or DEFAULT_OPENROUTER_URL).rstrip("/"),
    )


def _keep_alive(env: Mapping[str, str], file: ConfigFile) -> float:
    setting = env.get("OLLAMA_KEEP_ALIVE") or file.keep_alive
    if isinstance(setting, str) and setting.strip().lstrip("-").isdigit():
        setting = int(setting)  # Ollama reads a bare number as seconds
    try:
        seconds = parse_keep_alive(setting)
    except BadRequest as error:
        raise ConfigError(f"OLLAMA_KEEP_ALIVE / keep_alive: {setting!r}: {error.message}") from None
    return 300.0 if seconds is None else seconds


def _listen(listen: Sequence[str] | None, env: Mapping[str, str], file: ConfigFile) -> tuple[str, ...]:
    if listen:
        return tuple(listen)
    if env.get("OLLAMA_HOST"):
        return (listen_from_ollama_host(env["OLLAMA_HOST"]),)
    return file.listen or (DEFAULT_LISTEN,)


def state_directory(env: Mapping[str, str]) -> str:
    """Where the proxy keeps state: systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``),
    else ``$XDG_STATE_HOME/ollama-proxy``, else ``~/.local/state/ollama-proxy``."""
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ollama-proxy")


def _ledger(given: LedgerConfig | None, env: Mapping[str, str]) -> LedgerConfig | None:
    """``[ledger]`` with its url resolved; None when the table is absent or disabled."""
    if given is None or not given.enabled:
        return None
    url = given.url or "sqlite://" + os.path.join(os.path.abspath(state_directory(env)), "ledger.sqlite3")
    scheme = url.partition(":")[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError("'ledger.url' must start with sqlite:/// or postgresql://")
    if scheme == "sqlite" and url.removeprefix("sqlite://").removeprefix("sqlite:") in ("", ":memory:"):
        raise ConfigError("'ledger.url' needs a file: sqlite:///path/to/ledger.sqlite3")
    return msgspec.structs.replace(given, url=url)


def _load_config(
    environ: Mapping[str, str] | None, config_file: str | None, listen: Sequence[str] | None, demo: bool
) -> Config:
    env = with_credentials(os.environ if environ is None else environ)
    path = config_file or env.get("OLLAMA_PROXY_CONFIG") or None
    table = _read(path)
    try:
        file = decode(table)
        providers = parse_providers(file, env)
        known = {"openrouter", *(p.name for p in providers), *(("echo", "demo-echo") if demo else ())}
        routing = parse_routing(file, known)
        ops = parse_ops(file, env)
        model_filter = _filter(file.filter)
        ledger = _ledger(file.ledger, env)
        limited = ops.auth.default_limits or any(t.limits for t in ops.auth.tokens)
        if limited and ledger is None:
            raise ConfigError("per-token limits and budgets need the ledger: add a [ledger] table")
    except ConfigError as error:
        raise ConfigError(f"{path or 'environment'}: {error}") from None
    derived = {
        "listen": _listen(listen, env, file),
        "openrouter": _openrouter(file.openrouter, env),
        "filter": model_filter,
        "environment": file.environment or env.get("OLLAMA_PROXY_ENVIRONMENT", "production"),
        "model_refresh_interval": file.refresh.models_interval,
        "health_check_interval": file.refresh.health_interval,
        "max_connections_per_provider": file.openrouter.max_connections,
        "config_file": path,
        "default_keep_alive": _keep_alive(env, file),
        "ops": ops,
        "providers": providers,
        "routing": routing,
        "demo": demo,
        "ledger": ledger,
        "prices": dict(file.prices),
    }
    # timeouts, retry, breaker, ollama_version, max_body_bytes: as the file declares them.
    return Config(**(as_written(Config, file) | derived))
