"""Regressions on the streaming hot path, found in review."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from ollama_proxy.config.settings import Timeouts

from .conftest import LineReader
from .daemon import within
from .multi import turn
from .test_limits import _reading, raw


def chat(model: str, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "a b c"}], "stream": stream}


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_is_a_cancellation_not_a_provider_failure(proxy, simulator):
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        aborted = simulator.wait_for_abort()
        reader = LineReader()
        await reader.connect(proxy.port, "/api/chat", chat("sim/endless"))
        await reader.wait_for_lines(3)
        reader.hang_up()
        await aborted
    finally:
        globalLogPublisher.removeObserver(observe)
    stats = proxy.service.router.slot("openrouter").stats
    assert (stats.cancelled_requests, stats.failed_requests) == (1, 0)
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_a_stream_paused_by_a_slow_client_is_not_called_stalled(make_multi, simulator):
    clock = Clock()
    proxy = make_multi([], clock=clock, timeouts=Timeouts(connect=5, response=10, idle=1))
    body = json.dumps(chat("sim/flood")).encode()
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    client = await raw(proxy.port, request, read=False)
    # Wait until the proxy stops reading the upstream because its client reads nothing.
    while True:
        await simulator.wait_for_flood_pause()
        [upstream] = simulator.flood_connections
        if not _reading(upstream.getPeer().port):
            break
    clock.advance(30)  # far past the idle timeout, while paused
    stats = proxy.service.router.slot("openrouter").stats
    assert stats.failed_requests == 0, "a paused stream was ended as stalled"
    more = client.wait_received(len(client.received) + 1024 * 1024)
    client.transport.resumeProducing()
    await more
    assert b"stalled" not in client.received
    aborted = simulator.wait_for_abort()
    client.transport.abortConnection()
    await aborted


@pytest_twisted.ensureDeferred
async def test_a_body_that_stalls_after_its_headers_is_a_504_within_the_response_timeout(simulator):
    from twisted.internet import reactor as real_reactor

    from ollama_proxy.errors import UpstreamError
    from ollama_proxy.providers.openai_compat import OpenAICompatibleProvider

    clock = Clock()
    provider = OpenAICompatibleProvider(
        name="openrouter",
        type="openrouter",
        label="OpenRouter",
        base_url=simulator.base_url,
        api_key=None,
        reactor=real_reactor,
        timeouts=Timeouts(connect=5, response=3, idle=10),
        requires_key=False,
        clock=clock,
    )
    simulator.models_behaviour = "stall-body"
    try:
        response = await provider._request("GET", "models", None)  # the headers came: 200
        body = ensureDeferred(provider._json(response))
        clock.advance(2.9)
        assert not body.called
        clock.advance(0.1)
        with pytest.raises(UpstreamError) as caught:
            await body
        assert caught.value.status == 504 and "did not arrive within 3 seconds" in caught.value.message
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_stopping_does_not_wait_for_a_health_check_or_refresh_in_flight(make_multi, simulator):
    clock = Clock()  # the response timeout would never fire by itself
    simulator.models_behaviour = "no-headers"
    proxy = make_multi([], clock=clock)
    await simulator.wait_for_requests(2)  # the first refresh and the first health check
    await turn()  # the simulator finishes holding them
    assert len(simulator.held_model_requests) == 2
    await within(proxy.service.stopService(), "the stop", timeout=10)
    assert not proxy.service.refresh_timer.running and not proxy.service.health_timer.running


def test_a_connection_asks_for_its_local_address_once(simulator):
    # Twisted's Request asks for the channel's local address as it is built: a
    # getsockname() call per request, for an address a connection never changes.
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from ollama_proxy.service import makeService

    from .conftest import base_config

    class Counting(StringTransport):
        asked = 0

        def getHost(self) -> Any:
            self.asked += 1
            return super().getHost()

    site = makeService(base_config(simulator), reactor).site
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Counting(hostAddress=IPv4Address("TCP", "127.0.0.1", 11434))
    channel.makeConnection(transport)
    try:
        for _ in range(3):
            channel.dataReceived(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert transport.value().count(b"HTTP/1.1 200 OK") == 3
        assert transport.asked == 1
        assert channel.getHost() == IPv4Address("TCP", "127.0.0.1", 11434)
    finally:
        channel.setTimeout(None)
        channel.connectionLost(None)
