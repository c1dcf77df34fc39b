"""The health-check job: probes every provider, records what it found, feeds the breakers."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from ollama_proxy.config.providers import BreakerConfig

from .conftest import http
from .multi import provider, turn


@pytest_twisted.ensureDeferred
async def test_failed_probes_open_the_breaker_and_a_good_one_lets_calls_probe(make_multi, openai_sim):
    clock = Clock()
    breaker = BreakerConfig(consecutive_failures=2, open_wait=120, jitter=0)
    proxy = make_multi(
        [provider("backup", "openai", openai_sim.base_url, "sk-openai-simulator-key")],
        openrouter=False,
        clock=clock,
        breaker=breaker,
        health_check_interval=60,
    )
    service = proxy.service
    timer = service.getServiceNamed("health-check")
    assert timer.step == 60 and timer.clock is clock
    slot = service.router.slot("backup")
    while slot.health.last_check is None:
        await turn()  # the check the timer ran at start-up
    assert slot.health.healthy is True
    openai_sim.models_status = 503
    await service.health_checker.check()
    assert slot.health.healthy is False and slot.breaker.state == "closed"
    await service.health_checker.check()
    assert slot.breaker.state == "open" and "2 failures in a row" in slot.breaker.last_trip_reason
    stats = (await http("GET", proxy.url + "/api/providers/backup/stats")).json()
    assert (
        stats["healthy"] is False
        and "503" in stats["last_health_error"]
        and stats["last_health_check"].startswith("1970-01-01T00:00:00")
    )
    openai_sim.models_status = None
    clock.advance(1)
    await service.health_checker.check()
    assert slot.health.healthy is True and slot.breaker.state == "half_open"  # calls may probe now, long before 120s
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "backup"
    assert slot.breaker.state == "closed"
    assert service.health.healthy is True and service.health.last_check == 1


@pytest_twisted.ensureDeferred
async def test_a_refused_key_opens_the_breaker_for_long(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, "sk-ant-revoked")])
    service = proxy.service
    await service.health_checker.check()
    slot = service.router.slot("claude")
    assert slot.breaker.state == "open" and slot.breaker.open_remaining() > 400
    assert service.router.slot("openrouter").health.healthy is True
    health = (await http("GET", proxy.url + "/health")).json()
    assert health["status"] == "degraded" and health["providers"] == {"openrouter": "healthy", "claude": "unhealthy"}


@pytest_twisted.ensureDeferred
async def test_a_provider_down_at_start_gets_its_models_once_it_answers(make_multi, openai_sim):
    openai_sim.models_status = 500
    proxy = make_multi([provider("backup", "openai", openai_sim.base_url, "sk-openai-simulator-key")])
    service = proxy.service
    await service.router.refresh_quietly()
    slot = service.router.slot("backup")
    assert not slot.catalogue.loaded
    r = await http("GET", proxy.url + "/api/tags/backup")
    assert r.json()["models"] == []
    openai_sim.models_status = None
    await service.health_checker.check()
    assert slot.catalogue.loaded
    r = await http("GET", proxy.url + "/api/tags/backup")
    assert len(r.json()["models"]) > 5
