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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ollama_proxy.config.credentials import with_credentials
from ollama_proxy.config.ops import SECTIONS as OPS_SECTIONS
from ollama_proxy.config.ops import OpsConfig, OpsConfigError, parse_ops
from ollama_proxy.config.providers import (
    SECTIONS,
    BreakerConfig,
    ProviderConfig,
    ProviderConfigError,
    RetryConfig,
    RoutingConfig,
    parse_sections,
)
from ollama_proxy.errors import BadRequest
from ollama_proxy.routing.modelfilter import parse_filter_file
from ollama_proxy.routing.running import parse_keep_alive

DEFAULT_LISTEN = "tcp:11434:interface=127.0.0.1"
DEFAULT_OPENROUTER_URL = "https://openrouter.ai/api/v1"
# VS Code Copilot refuses servers below 0.6.4; Open WebUI and others compare too.
DEFAULT_OLLAMA_VERSION = "0.12.6"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``connect`` bounds reaching the provider, ``response`` waiting for
    its status line and headers, ``idle`` the silence allowed inside a stream."""

    connect: float = 10.0
    response: float = 120.0
    idle: float = 120.0


@dataclass(frozen=True)
class FilterConfig:
    """Globs matched against upstream model ids (``file`` lines already merged in)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    file: str | None = None


@dataclass(frozen=True)
class OpenRouterConfig:
    api_key: str | None = None
    base_url: str = DEFAULT_OPENROUTER_URL
    http_referer: str | None = None
    x_title: str | None = None
    priority: int = 1
    enabled: bool = True
    max_in_flight: int = 512
    max_queue: int = 512
    queue_timeout: float = 30.0


@dataclass(frozen=True)
class Config:
    """Everything the service tree needs, immutable once loaded."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
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

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a response or a log line."""
        keys = (self.openrouter.api_key,) + tuple(p.api_key for p in self.providers)
        return tuple(s for s in keys if s)


# The file's schema: dotted key -> (accepted types, human name of the type).
_NUMBER = ((int, float), "a number")
_STRING = ((str,), "a string")
_STRINGS = ((list,), "a list of strings")
_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "environment": _STRING,
    "keep_alive": ((str, int, float), 'a duration (seconds or a string such as "5m")'),
    "ollama_version": _STRING,
    "max_body_bytes": ((int,), "an integer"),
    "listen": _STRINGS,
    "timeouts.connect": _NUMBER,
    "timeouts.response": _NUMBER,
    "timeouts.idle": _NUMBER,
    "refresh.models_interval": _NUMBER,
    "refresh.health_interval": _NUMBER,
    "filter.allow": _STRINGS,
    "filter.deny": _STRINGS,
    "filter.file": _STRING,
    "openrouter.api_key": _STRING,
    "openrouter.base_url": _STRING,
    "openrouter.http_referer": _STRING,
    "openrouter.x_title": _STRING,
    "openrouter.max_connections": ((int,), "an integer"),
    "openrouter.priority": ((int,), "an integer"),
    "openrouter.enabled": ((bool,), "true or false"),
    "openrouter.max_in_flight": ((int,), "an integer"),
    "openrouter.max_queue": ((int,), "an integer"),
    "openrouter.queue_timeout": _NUMBER,
}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and any(k.startswith(path + ".") for k in _SCHEMA):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _check(flat: Mapping[str, Any], source: str) -> None:
    for key, value in flat.items():
        if key not in _SCHEMA:
            raise ConfigError(f"{source}: unknown key '{key}'")
        types, name = _SCHEMA[key]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise ConfigError(f"{source}: '{key}' must be {name}, not {type(value).__name__}")
        if name == "a list of strings" and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: '{key}' must be {name}")
        if name == "a number" and value <= 0:
            raise ConfigError(f"{source}: '{key}' must be greater than 0")
    if flat.get("max_body_bytes", 1) <= 0:
        raise ConfigError(f"{source}: 'max_body_bytes' must be greater than 0")


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
    listen: list[str] | tuple[str, ...] | None = None,
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


def _load_config(
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    listen: list[str] | tuple[str, ...] | None = None,
    demo: bool = False,
) -> Config:
    """Build a :class:`Config` from the environment, a TOML file and ``--listen``.

    Precedence: command line, then environment (secrets and endpoints), then the file.
    """
    env = with_credentials(os.environ if environ is None else environ)
    path = config_file or env.get("OLLAMA_PROXY_CONFIG") or None
    flat: dict[str, Any] = {}
    table: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        flat = _flatten({k: v for k, v in table.items() if k not in OPS_SECTIONS and k not in SECTIONS})
        _check(flat, path)
    try:
        ops = parse_ops(table, env)
    except OpsConfigError as error:
        raise ConfigError(f"{path or 'environment'}: {error}") from None
    try:
        sections = parse_sections(table, env)
    except ProviderConfigError as error:
        raise ConfigError(f"{path or 'environment'}: {error}") from None
    known = {"openrouter", *(p.name for p in sections.providers), *(("echo", "demo-echo") if demo else ())}
    for model, pinned in sections.routing.pins:
        unknown = [name for name in pinned if name not in known]
        if unknown:
            raise ConfigError(f"{path}: 'pins.{model}' names no configured provider: {', '.join(unknown)}")
    allow, deny = tuple(flat.get("filter.allow", ())), tuple(flat.get("filter.deny", ()))
    if flat.get("filter.file"):
        try:
            file_allow, file_deny = parse_filter_file(flat["filter.file"])
        except OSError as error:
            raise ConfigError(f"{path}: 'filter.file': cannot read {flat['filter.file']}: {error.strerror}") from None
        allow, deny = allow + file_allow, deny + file_deny

    keep_alive_setting = env.get("OLLAMA_KEEP_ALIVE") or flat.get("keep_alive")
    if isinstance(keep_alive_setting, str) and keep_alive_setting.strip().lstrip("-").isdigit():
        keep_alive_setting = int(keep_alive_setting)  # Ollama reads a bare number as seconds
    try:
        keep_alive = parse_keep_alive(keep_alive_setting)
    except BadRequest as error:
        raise ConfigError(f"OLLAMA_KEEP_ALIVE / keep_alive: {keep_alive_setting!r}: {error.message}") from None

    openrouter = OpenRouterConfig(
        api_key=env.get("OPENROUTER_API_KEY") or flat.get("openrouter.api_key"),
        base_url=(env.get("OPENROUTER_BASE_URL") or flat.get("openrouter.base_url") or DEFAULT_OPENROUTER_URL).rstrip(
            "/"
        ),
        http_referer=flat.get("openrouter.http_referer"),
        x_title=flat.get("openrouter.x_title"),
        priority=flat.get("openrouter.priority", 1),
        enabled=flat.get("openrouter.enabled", True),
        max_in_flight=max(1, flat.get("openrouter.max_in_flight", 512)),
        max_queue=max(0, flat.get("openrouter.max_queue", 512)),
        queue_timeout=float(flat.get("openrouter.queue_timeout", 30.0)),
    )
    if listen:
        endpoints = tuple(listen)
    elif env.get("OLLAMA_HOST"):
        endpoints = (listen_from_ollama_host(env["OLLAMA_HOST"]),)
    elif flat.get("listen"):
        endpoints = tuple(flat["listen"])
    else:
        endpoints = (DEFAULT_LISTEN,)

    defaults = Config()
    return replace(
        defaults,
        listen=endpoints,
        openrouter=openrouter,
        timeouts=Timeouts(
            connect=float(flat.get("timeouts.connect", defaults.timeouts.connect)),
            response=float(flat.get("timeouts.response", defaults.timeouts.response)),
            idle=float(flat.get("timeouts.idle", defaults.timeouts.idle)),
        ),
        filter=FilterConfig(allow=allow, deny=deny, file=flat.get("filter.file")),
        ollama_version=flat.get("ollama_version", defaults.ollama_version),
        environment=flat.get("environment", env.get("OLLAMA_PROXY_ENVIRONMENT", defaults.environment)),
        max_body_bytes=flat.get("max_body_bytes", defaults.max_body_bytes),
        model_refresh_interval=float(flat.get("refresh.models_interval", defaults.model_refresh_interval)),
        health_check_interval=float(flat.get("refresh.health_interval", defaults.health_check_interval)),
        max_connections_per_provider=flat.get("openrouter.max_connections", defaults.max_connections_per_provider),
        config_file=path,
        default_keep_alive=300.0 if keep_alive is None else keep_alive,
        ops=ops,
        providers=sections.providers,
        routing=sections.routing,
        retry=sections.retry,
        breaker=sections.breaker,
        demo=demo,
    )
