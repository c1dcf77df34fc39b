"""Regressions on the streaming hot path, found in review."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from ollama_proxy.config import Timeouts

from .conftest import LineReader
from .multi import make_multi  # noqa: F401
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
    request = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
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
