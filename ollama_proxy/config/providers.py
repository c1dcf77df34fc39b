"""The multi-provider parts of the configuration: providers, routing, retries, breakers.

:mod:`ollama_proxy.config.settings` hands the TOML sections it does not read itself
(``[[providers]]``, ``[openai]``, ``[anthropic]``, ``[aliases]``, ``[pins]``,
``[fallbacks]``, ``[retry]``, ``[breaker]``) to :func:`parse_sections`, which
checks every key as strictly as the rest of the file and reads the provider keys
from the environment or from files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

PROVIDER_TYPES = ("openrouter", "openai", "anthropic", "ollama", "echo")
DEFAULT_BASE_URLS = {
    "openrouter": "https://openrouter.ai/api/v1",
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "ollama": "http://127.0.0.1:11434",
    "echo": "",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ProviderConfigError(ValueError):
    """Raised for a bad provider section; :mod:`config` turns it into ``ConfigError``."""


@dataclass(frozen=True)
class ProviderTimeouts:
    """Per-provider overrides of the global ``[timeouts]``; ``None`` keeps the global value."""

    connect: float | None = None
    response: float | None = None
    idle: float | None = None


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream as the operator configured it."""

    name: str
    type: str
    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    # Where the key came from ("environment variable GROQ_API_KEY"), for messages: never the key.
    key_source: str = ""
    priority: int = 100
    enabled: bool = True
    timeouts: ProviderTimeouts = field(default_factory=ProviderTimeouts)
    max_in_flight: int = 512
    max_queue: int = 512
    queue_timeout: float = 30.0
    max_connections: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    label: str = ""
    max_tokens: int = 4096  # Anthropic requires max_tokens; used when the client sets none.

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.type, "")).rstrip("/")


@dataclass(frozen=True)
class RetryConfig:
    """Retries before the first byte reached the client. Seconds."""

    max_retries: int = 2  # per provider, after the first attempt
    base_delay: float = 0.5  # first backoff; doubles each retry, with jitter
    max_delay: float = 8.0
    max_retry_after: float = 30.0  # a Retry-After longer than this skips to the next provider
    deadline: float = 60.0  # no retry on the same provider starts later than this after the request arrived


@dataclass(frozen=True)
class BreakerConfig:
    """One circuit breaker per provider."""

    failure_rate: float = 0.5  # open when failures / calls in the window reach this...
    window: float = 60.0  # ...over this many seconds...
    minimum_calls: int = 10  # ...once at least this many calls were made
    consecutive_failures: int = 5  # or after this many failures in a row (quiet providers)
    open_wait: float = 5.0  # first open period; doubles with each trip in a row
    max_open_wait: float = 300.0
    auth_open_wait: float = 600.0  # after 401/402: a long wait, then keep probing
    half_open_probes: int = 1  # calls let through at once while half open
    jitter: float = 0.2  # open periods vary by up to this fraction


@dataclass(frozen=True)
class RoutingConfig:
    """Aliases, pins and fallbacks, as ordered pairs (the TOML tables' order)."""

    aliases: tuple[tuple[str, str], ...] = ()
    pins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()


# -- parsing ---------------------------------------------------------------------
_POSITIVE = "a number greater than 0"
_PROVIDER_KEYS: dict[str, str] = {
    "name": "string",
    "type": "string",
    "base_url": "string",
    "key": "string",
    "api_key": "string",
    "key_env": "string",
    "key_file": "string",
    "priority": "integer",
    "enabled": "boolean",
    "timeouts": "table",
    "max_in_flight": "count",
    "max_queue": "integer",
    "queue_timeout": "number",
    "max_connections": "count",
    "headers": "table",
    "label": "string",
    "max_tokens": "count",
}


def _typed(value: Any, kind: str, where: str) -> Any:
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "count": isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "boolean": isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        "fraction": isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1,
        "table": isinstance(value, dict),
    }[kind]
    if not ok:
        names = {
            "string": "a string",
            "integer": "an integer",
            "count": "an integer greater than 0",
            "boolean": "true or false",
            "number": _POSITIVE,
            "fraction": "a number in (0, 1]",
            "table": "a table",
        }
        raise ProviderConfigError(f"'{where}' must be {names[kind]}")
    return value


def _read_key(table: Mapping[str, Any], env: Mapping[str, str], where: str) -> tuple[str | None, str]:
    given = [k for k in ("key", "api_key", "key_env", "key_file") if k in table]
    if len(given) > 1:
        raise ProviderConfigError(f"'{where}': give only one of {', '.join(given)}")
    if not given:
        return None, ""
    kind = given[0]
    value = table[kind]
    if kind in ("key", "api_key"):
        return value or None, f"'{where}.{kind}'"
    if kind == "key_env":
        return env.get(value) or None, f"environment variable {value}"
    try:
        with open(value, encoding="utf-8") as handle:
            return handle.read().strip() or None, f"file {value}"
    except OSError as error:
        raise ProviderConfigError(f"'{where}.key_file': cannot read {value}: {error.strerror}") from None


def parse_provider(
    table: Mapping[str, Any],
    env: Mapping[str, str],
    where: str,
    *,
    name: str | None = None,
    type: str | None = None,
    priority: int = 100,
) -> ProviderConfig:
    """One provider table (``[[providers]]`` entry or ``[openai]``) as a :class:`ProviderConfig`."""
    for key, value in table.items():
        if key not in _PROVIDER_KEYS or (name is not None and key in ("name", "type")):
            raise ProviderConfigError(f"unknown key '{where}.{key}'")
        _typed(value, _PROVIDER_KEYS[key], f"{where}.{key}")
    name = name or table.get("name")
    kind = type or table.get("type")
    if not name:
        raise ProviderConfigError(f"'{where}' needs a name")
    if not _NAME.match(name):
        raise ProviderConfigError(f"'{where}.name': '{name}' may hold only letters, digits, '.', '_' and '-'")
    if kind not in PROVIDER_TYPES:
        raise ProviderConfigError(f"'{where}.type' must be one of {', '.join(PROVIDER_TYPES)}")
    timeouts_table = table.get("timeouts", {})
    for key, value in timeouts_table.items():
        if key not in ("connect", "response", "idle"):
            raise ProviderConfigError(f"unknown key '{where}.timeouts.{key}'")
        _typed(value, "number", f"{where}.timeouts.{key}")
    headers = table.get("headers", {})
    for key, value in headers.items():
        _typed(value, "string", f"{where}.headers.{key}")
    api_key, source = _read_key(table, env, where)
    return ProviderConfig(
        name=name,
        type=kind,
        base_url=table.get("base_url", ""),
        api_key=api_key,
        key_source=source,
        priority=table.get("priority", priority),
        enabled=table.get("enabled", True),
        timeouts=ProviderTimeouts(**{k: float(v) for k, v in timeouts_table.items()}),
        max_in_flight=table.get("max_in_flight", 512),
        max_queue=max(0, table.get("max_queue", 512)),
        queue_timeout=float(table.get("queue_timeout", 30.0)),
        max_connections=table.get("max_connections"),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        label=table.get("label", ""),
        max_tokens=table.get("max_tokens", 4096),
    )


def _settings(cls: type, table: Mapping[str, Any], section: str, kinds: Mapping[str, str]) -> Any:
    for key, value in table.items():
        if key not in kinds:
            raise ProviderConfigError(f"unknown key '{section}.{key}'")
        _typed(value, kinds[key], f"{section}.{key}")
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in table.items() if k in known})


_RETRY_KINDS = {
    "max_retries": "integer",
    "base_delay": "number",
    "max_delay": "number",
    "max_retry_after": "number",
    "deadline": "number",
}
_BREAKER_KINDS = {
    "failure_rate": "fraction",
    "window": "number",
    "minimum_calls": "count",
    "consecutive_failures": "count",
    "open_wait": "number",
    "max_open_wait": "number",
    "auth_open_wait": "number",
    "half_open_probes": "count",
    "jitter": "fraction",
}


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ProviderConfigError(f"'{where}' must be a name or a list of names")
    return tuple(value)


@dataclass(frozen=True)
class Sections:
    """What :func:`parse_sections` read."""

    providers: tuple[ProviderConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


SECTIONS = ("providers", "openai", "anthropic", "aliases", "pins", "fallbacks", "retry", "breaker")


def parse_sections(table: Mapping[str, Any], env: Mapping[str, str]) -> Sections:
    """Read the multi-provider sections of a parsed TOML file plus the environment.

    ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` and ``ANTHROPIC_API_KEY`` /
    ``ANTHROPIC_BASE_URL`` add (or complete) the ``openai`` and ``anthropic``
    providers; the environment wins over the file.
    """
    providers: list[ProviderConfig] = []
    for priority, builtin in ((2, "openai"), (3, "anthropic")):
        section = table.get(builtin)
        prefix = builtin.upper()
        env_key, env_url = env.get(f"{prefix}_API_KEY"), env.get(f"{prefix}_BASE_URL")
        if section is None and not env_key:
            continue
        if section is not None and not isinstance(section, dict):
            raise ProviderConfigError(f"'{builtin}' must be a table")
        provider = parse_provider(section or {}, env, builtin, name=builtin, type=builtin, priority=priority)
        changes: dict[str, Any] = {}
        if env_key:
            changes.update(api_key=env_key, key_source=f"environment variable {prefix}_API_KEY")
        if env_url:
            changes["base_url"] = env_url
        providers.append(replace(provider, **changes))

    listed = table.get("providers", [])
    if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
        raise ProviderConfigError("'providers' must be an array of tables ([[providers]])")
    for index, entry in enumerate(listed):
        providers.append(parse_provider(entry, env, f"providers[{index}]", priority=10 + index))
    seen: set[str] = {"openrouter"}
    for provider in providers:
        if provider.name in seen:
            raise ProviderConfigError(f"provider name '{provider.name}' is used twice")
        seen.add(provider.name)

    aliases = table.get("aliases", {})
    pins = table.get("pins", {})
    fallbacks = table.get("fallbacks", {})
    for section_name, section in (("aliases", aliases), ("pins", pins), ("fallbacks", fallbacks)):
        if not isinstance(section, dict):
            raise ProviderConfigError(f"'{section_name}' must be a table")
    for alias, target in aliases.items():
        if not isinstance(target, str) or not target:
            raise ProviderConfigError(f"'aliases.{alias}' must be a model name")
    routing = RoutingConfig(
        aliases=tuple(aliases.items()),
        pins=tuple((name, _names(value, f"pins.{name}")) for name, value in pins.items()),
        fallbacks=tuple((name, _names(value, f"fallbacks.{name}")) for name, value in fallbacks.items()),
    )
    retry = table.get("retry", {})
    breaker = table.get("breaker", {})
    for section_name, section in (("retry", retry), ("breaker", breaker)):
        if not isinstance(section, dict):
            raise ProviderConfigError(f"'{section_name}' must be a table")
    retry_settings = _settings(RetryConfig, retry, "retry", _RETRY_KINDS)
    if retry_settings.max_retries < 0:
        raise ProviderConfigError("'retry.max_retries' must be 0 or more")
    return Sections(
        providers=tuple(providers),
        routing=routing,
        retry=retry_settings,
        breaker=_settings(BreakerConfig, breaker, "breaker", _BREAKER_KINDS),
    )
