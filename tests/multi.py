"""Helpers for proxies with several providers (the fixtures are in conftest.py).

The ``make_multi(providers=[...], clock=..., **config)`` fixture starts a proxy
whose OpenRouter is the ``simulator`` fixture (unless told otherwise) and whose
other providers are :func:`provider` entries, typically pointing at the
``openai_sim``, ``anthropic_sim`` and ``ollama_sim`` fixtures. ``pump(clock, d)``
drives a fake clock while real sockets run, until ``d`` fires: timeouts, backoffs
and breaker waits then pass in an instant.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater

from ollama_proxy.config.providers import BreakerConfig, ProviderConfig, ProviderTimeouts, RetryConfig
from ollama_proxy.config.settings import Config, OpenRouterConfig, Timeouts, load_config

from .anthropic_simulator import API_KEY as ANTHROPIC_KEY
from .simulator import API_KEY

# Retries without waiting and breakers that stay closed unless a test wants them.
FAST_RETRY = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, max_retry_after=0.5, deadline=60)
QUIET_BREAKER = BreakerConfig(consecutive_failures=1000, minimum_calls=1000)


def provider(name: str, type: str, url: str, key: str | None = None, **settings: Any) -> ProviderConfig:
    timeouts = settings.pop("timeouts", None)
    return ProviderConfig(
        name=name, type=type, base_url=url, api_key=key, timeouts=timeouts or ProviderTimeouts(), **settings
    )


def multi_config(openrouter_url: str | None, providers: list[ProviderConfig], **overrides: Any) -> Config:
    config = load_config(environ={}, listen=["tcp:0:interface=127.0.0.1"])
    config = replace(
        config,
        openrouter=OpenRouterConfig(
            api_key=API_KEY if openrouter_url else None, base_url=openrouter_url or "http://127.0.0.1:9/api/v1"
        ),
        timeouts=Timeouts(connect=5, response=10, idle=10),
        providers=tuple(providers),
        retry=FAST_RETRY,
        breaker=QUIET_BREAKER,
    )
    return replace(config, **overrides)


def closed_port_url(path: str = "/v1") -> str:
    """A loopback URL where nothing listens: connections are refused."""
    port = global_reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = port.getHost().port
    port.stopListening()
    return f"http://127.0.0.1:{number}{path}"


async def turn() -> None:
    """Let the real reactor run once (I/O included)."""
    await deferLater(global_reactor, 0, lambda: None)


async def pump(clock: Clock, d: Deferred[Any], step: float = 0.25, limit: int = 20000) -> Any:
    """Advance ``clock`` by ``step`` on each reactor turn until ``d`` fires (at most
    ``limit`` times).

    The clock stands still while the reactor's thread pool is busy: connecting to
    127.0.0.1 resolves the name in a thread (getaddrinfo), and on a loaded machine that
    took up to 240 turns, so the clock ran 60 s ahead before the request reached the
    proxy and the proxy's periodic model checks ran in the middle of the test.
    """
    threads = global_reactor.getThreadPool()
    advanced = 0
    while advanced < limit and not d.called:
        if not threads.working:
            clock.advance(step)
            advanced += 1
        await turn()
    return await d


__all__ = [
    "ANTHROPIC_KEY",
    "API_KEY",
    "FAST_RETRY",
    "QUIET_BREAKER",
    "closed_port_url",
    "multi_config",
    "provider",
    "pump",
    "turn",
]
