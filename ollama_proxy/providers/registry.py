"""Build the configured providers: one object per ``ProviderConfig``, by wire protocol."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.config.settings import Config, Timeouts
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.providers.anthropic import AnthropicProvider
from ollama_proxy.providers.echo import EchoProvider
from ollama_proxy.providers.interfaces import IProvider
from ollama_proxy.providers.ollama import OllamaProvider
from ollama_proxy.providers.openai_compat import OpenAICompatibleProvider

log = Logger()

LABELS = {
    "openrouter": "OpenRouter",
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "ollama": "Ollama",
    "echo": "Echo (demo)",
}


def provider_configs(config: Config) -> list[ProviderConfig]:
    """Every provider to build, OpenRouter first.

    OpenRouter (from ``config.openrouter``) is included when it has a key, or
    when nothing else is configured: a lone proxy without a key still starts and
    says why it cannot answer. ``--demo`` adds ``echo`` unless one is configured.
    """
    router = config.openrouter
    others = list(config.providers)
    if config.demo and not any(p.type == "echo" for p in others):
        others.append(
            ProviderConfig(
                name="echo" if not any(p.name == "echo" for p in others) else "demo-echo", type="echo", priority=1000
            )
        )
    configs: list[ProviderConfig] = []
    if router.api_key or not others:
        headers: list[tuple[str, str]] = []
        if router.http_referer:
            headers.append(("HTTP-Referer", router.http_referer))
        if router.x_title:
            headers.append(("X-Title", router.x_title))
        configs.append(
            ProviderConfig(
                name="openrouter",
                type="openrouter",
                base_url=router.base_url,
                api_key=router.api_key,
                priority=router.priority,
                enabled=router.enabled,
                max_in_flight=router.max_in_flight,
                max_queue=router.max_queue,
                queue_timeout=router.queue_timeout,
                max_connections=config.max_connections_per_provider,
                headers=tuple(headers),
            )
        )
    return configs + others


def timeouts_for(provider: ProviderConfig, defaults: Timeouts) -> Timeouts:
    own = provider.timeouts
    return Timeouts(
        connect=own.connect if own.connect is not None else defaults.connect,
        response=own.response if own.response is not None else defaults.response,
        idle=own.idle if own.idle is not None else defaults.idle,
    )


def build_provider(
    provider: ProviderConfig,
    config: Config,
    reactor: Any,
    clock: IReactorTime | None = None,
    redactor: Redactor | None = None,
) -> IProvider:
    """The provider object for one configuration entry; ``redactor`` (the server's, which
    knows every configured credential) cleans the upstream's error texts."""
    timeouts = timeouts_for(provider, config.timeouts)
    label = provider.label or LABELS.get(provider.type, provider.name)
    if provider.label == "" and provider.name != provider.type:
        label = f"{label} ({provider.name})"
    headers = dict(provider.headers)
    connections = provider.max_connections or config.max_connections_per_provider
    # What every HTTP provider takes; each type adds its own few settings.
    common: dict[str, Any] = dict(
        name=provider.name,
        label=label,
        base_url=provider.url,
        api_key=provider.api_key,
        reactor=reactor,
        timeouts=timeouts,
        extra_headers=headers,
        max_connections=connections,
        clock=clock,
        redactor=redactor,
    )
    if provider.type in ("openrouter", "openai"):
        return OpenAICompatibleProvider(
            type=provider.type,
            embedding_models_path="embeddings/models" if provider.type == "openrouter" else None,
            # The "openai" type also covers local servers (vLLM, llama.cpp, LM Studio)
            # that want no key; only the real OpenAI and OpenRouter insist on one.
            requires_key=provider.type == "openrouter" or provider.name == "openai",
            strict_openai=provider.type == "openai" and (provider.name == "openai" or "api.openai.com" in provider.url),
            **common,
        )
    if provider.type == "anthropic":
        return AnthropicProvider(default_max_tokens=provider.max_tokens, **common)
    if provider.type == "ollama":
        return OllamaProvider(**common)
    if provider.type == "echo":
        log.info("the demo provider '{name}' is enabled: its models answer with canned text", name=provider.name)
        return EchoProvider(clock if clock is not None else reactor, name=provider.name, label=provider.label)
    raise ValueError(f"unknown provider type {provider.type!r}")
