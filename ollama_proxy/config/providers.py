"""The multi-provider parts of the configuration: providers, routing, retries, breakers.

The file's tables are declared in :mod:`ollama_proxy.config.schema`; here they
become what the router reads: :class:`ProviderConfig` per provider (its key read
from the file, the environment or a file of its own) and :class:`RoutingConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ollama_proxy.config.schema import (
    PROVIDER_TYPES,
    BreakerConfig,
    BuiltinProviderTable,
    ConfigError,
    ConfigFile,
    ProviderSettings,
    ProviderTable,
    ProviderTimeouts,
    RetryConfig,
)

DEFAULT_BASE_URLS = {
    "openrouter": "https://openrouter.ai/api/v1",
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "ollama": "http://127.0.0.1:11434",
    "echo": "",
}
# The ways a table may give its key, in the order a message lists them.
_KEY_FIELDS = ("key", "api_key", "key_env", "key_file")

__all__ = [
    "PROVIDER_TYPES",
    "BreakerConfig",
    "ProviderConfig",
    "ProviderTimeouts",
    "RetryConfig",
    "RoutingConfig",
    "parse_providers",
    "parse_routing",
]


class ProviderConfig(ProviderSettings, frozen=True, kw_only=True):
    """One upstream as the operator configured it, its key resolved."""

    name: str
    type: str
    api_key: str | None = None
    # Where the key came from ("environment variable GROQ_API_KEY"), for messages: never the key.
    key_source: str = ""
    priority: int = 100
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.type, "")).rstrip("/")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'[REDACTED]' if name == 'api_key' and value else value!r}"
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        )
        return f"ProviderConfig({shown})"


@dataclass(frozen=True)
class RoutingConfig:
    """Aliases, pins and fallbacks, as ordered pairs (the TOML tables' order)."""

    aliases: tuple[tuple[str, str], ...] = ()
    pins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _read_key(table: BuiltinProviderTable, env: Mapping[str, str], where: str) -> tuple[str | None, str]:
    given = [name for name in _KEY_FIELDS if getattr(table, name) is not None]
    if len(given) > 1:
        raise ConfigError(f"'{where}': give only one of {', '.join(given)}")
    if not given:
        return None, ""
    kind = given[0]
    value = getattr(table, kind)
    if kind in ("key", "api_key"):
        return value or None, f"'{where}.{kind}'"
    if kind == "key_env":
        return env.get(value) or None, f"environment variable {value}"
    try:
        with open(value, encoding="utf-8") as handle:
            return handle.read().strip() or None, f"file {value}"
    except OSError as error:
        raise ConfigError(f"'{where}.key_file': cannot read {value}: {error.strerror}") from None


def check_base_url(url: str, where: str) -> None:
    """An upstream's base URL: http or https, a host, and no credentials in it (they
    would be sent as part of the host and shown wherever the URL is)."""
    if not url:
        return  # the type's default
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ConfigError(f"'{where}' is not a URL") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"'{where}' must not hold credentials (user:password@): give the key as api_key, key_env or"
            " key_file, or an Authorization header in headers"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"'{where}' must be an http:// or https:// URL with a host")


def parse_provider(
    table: BuiltinProviderTable, env: Mapping[str, str], where: str, *, name: str, type: str, priority: int
) -> ProviderConfig:
    """One decoded provider table as a :class:`ProviderConfig`, its key read."""
    api_key, source = _read_key(table, env, where)
    shared: dict[str, Any] = {field: getattr(table, field) for field in ProviderSettings.__struct_fields__}
    shared["priority"] = priority if table.priority is None else table.priority
    return ProviderConfig(
        **shared,
        name=name,
        type=type,
        api_key=api_key,
        key_source=source,
        headers=tuple(table.headers.items()),
    )


def _listed(table: ProviderTable, env: Mapping[str, str], where: str, priority: int) -> ProviderConfig:
    if not table.name:
        raise ConfigError(f"'{where}' needs a name")
    if table.type is None:
        raise ConfigError(f"'{where}.type' must be one of {', '.join(PROVIDER_TYPES)}")
    check_base_url(table.base_url, f"{where}.base_url")
    return parse_provider(table, env, where, name=table.name, type=table.type, priority=priority)


def parse_providers(file: ConfigFile, env: Mapping[str, str]) -> tuple[ProviderConfig, ...]:
    """Every provider besides OpenRouter: ``[openai]``, ``[anthropic]``, then ``[[providers]]``.

    ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` and ``ANTHROPIC_API_KEY`` /
    ``ANTHROPIC_BASE_URL`` add (or complete) the ``openai`` and ``anthropic``
    providers; the environment wins over the file.
    """
    providers: list[ProviderConfig] = []
    for priority, builtin in ((2, "openai"), (3, "anthropic")):
        section: BuiltinProviderTable | None = getattr(file, builtin)
        prefix = builtin.upper()
        env_key, env_url = env.get(f"{prefix}_API_KEY"), env.get(f"{prefix}_BASE_URL")
        if section is None and not env_key:
            continue
        provider = parse_provider(
            section or BuiltinProviderTable(), env, builtin, name=builtin, type=builtin, priority=priority
        )
        changes: dict[str, Any] = {}
        if env_key:
            changes.update(api_key=env_key, key_source=f"environment variable {prefix}_API_KEY")
        if env_url:
            changes["base_url"] = env_url
        check_base_url(env_url or provider.base_url, f"{prefix}_BASE_URL" if env_url else f"{builtin}.base_url")
        providers.append(msgspec.structs.replace(provider, **changes))
    for index, entry in enumerate(file.providers):
        providers.append(_listed(entry, env, f"providers[{index}]", priority=10 + index))
    seen: set[str] = {"openrouter"}
    for provider in providers:
        if provider.name in seen:
            raise ConfigError(f"provider name '{provider.name}' is used twice")
        seen.add(provider.name)
    return tuple(providers)


def parse_routing(file: ConfigFile, providers: set[str]) -> RoutingConfig:
    """``[aliases]``, ``[pins]`` and ``[fallbacks]`` as ordered pairs; a lone name is a list of one.

    A pin may name only one of ``providers`` (the configured ones).
    """

    def names(value: str | tuple[str, ...]) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(value)

    for model, value in file.pins.items():
        unknown = [name for name in names(value) if name not in providers]
        if unknown:
            raise ConfigError(f"'pins.{model}' names no configured provider: {', '.join(unknown)}")
    return RoutingConfig(
        aliases=tuple(file.aliases.items()),
        pins=tuple((model, names(value)) for model, value in file.pins.items()),
        fallbacks=tuple((model, names(value)) for model, value in file.fallbacks.items()),
    )
