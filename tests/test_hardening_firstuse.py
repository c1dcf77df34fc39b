"""A first-time user's way in: no key, the demo (issue 10, items 18, 19 and 21)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from ollama_proxy.config.settings import OpenRouterConfig
from ollama_proxy.service import makeService

from .conftest import base_config, http


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_no_key_is_a_503_naming_it_even_when_the_model_list_needs_the_key(make_proxy, simulator, path):
    # A compatible server whose /models wants the key too (OpenRouter's does not).
    simulator.models_status = 401
    proxy = make_proxy(openrouter=OpenRouterConfig(api_key=None, base_url=simulator.base_url))
    r = await http(
        "POST", proxy.url + path, {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 503
    message = r.json()["error"] if path.startswith("/api") else r.json()["error"]["message"]
    assert "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)" in message
    health = (await http("GET", proxy.url + "/health")).json()
    assert "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)" in health["reasons"]


@pytest_twisted.ensureDeferred
async def test_no_key_with_a_public_model_list_is_a_503_too(make_proxy, simulator):
    proxy = make_proxy(openrouter=OpenRouterConfig(api_key=None, base_url=simulator.base_url))
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 503 and "set OPENROUTER_API_KEY" in r.json()["error"]


def _warnings_until(count: int) -> tuple[list[str], Deferred[None]]:
    """The start-up explanations logged, and a Deferred that fires once ``count`` came."""
    seen: list[str] = []
    done: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "inference will fail" in text or "--demo" in text:
            seen.append(text)
            if len(seen) == count and not done.called:
                done.callback(None)

    globalLogPublisher.addObserver(observe)
    done.addBoth(lambda result: (globalLogPublisher.removeObserver(observe), result)[1])
    return seen, done


@pytest.mark.parametrize(
    ("api_key", "base_url", "reason"),
    [
        (None, None, "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)"),
        ("sk-or-anything", "http://127.0.0.1:1/api/v1", "OpenRouter cannot be reached: "),
    ],
)
@pytest_twisted.ensureDeferred
async def test_start_up_says_once_why_inference_will_fail(simulator, api_key, base_url, reason):
    seen, logged = _warnings_until(2)
    clock = Clock()
    config = base_config(
        simulator, openrouter=OpenRouterConfig(api_key=api_key, base_url=base_url or simulator.base_url)
    )
    service = makeService(config, reactor, clock=clock)
    service.startService()
    try:
        await logged
        assert reason in seen[0] and "--demo" in seen[1]
        clock.advance(config.model_refresh_interval)  # the next refresh does not repeat it
        await service.router.refresh_quietly()
        assert len(seen) == 2
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_working_provider_is_no_blocker(proxy):
    await proxy.service.router.refresh()
    assert proxy.service.router.blockers() == []
