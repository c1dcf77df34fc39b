"""Embedding: the proxy mounted under a path of someone else's Site, its services
in their MultiService, on their reactor, started and stopped with their program."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import ollama
import pytest_twisted
from twisted.application.service import MultiService, Service
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from ollama_proxy.service import makeService

from .conftest import base_config, http, in_thread
from .daemon import StreamClient


class HostListener(Service):
    """The host program's own listener (the proxy brings none)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_mounted_under_a_prefix_next_to_another_resource(simulator):
    # The host program: its Site, its resource tree, its MultiService.
    root = Resource()
    root.putChild(b"status", Data(b"host is fine", "text/plain"))
    host = MultiService()
    site = Site(root)
    HostListener(site).setServiceParent(host)

    # The proxy: no listeners of its own, the host's reactor, mounted at /ollama.
    proxy = makeService(replace(base_config(simulator), listen=()), reactor)
    root.putChild(b"ollama", proxy.api.resource())
    proxy.setServiceParent(host)

    host.startService()
    try:
        port = next(s for s in host if isinstance(s, HostListener)).port.getHost().port
        base = f"http://127.0.0.1:{port}"
        assert proxy.listening_ports() == []
        other = await http("GET", base + "/status")
        assert other.code == 200 and other.body == b"host is fine"
        assert (await http("GET", base + "/ollama/")).body == b"Ollama is running"
        assert (await http("GET", base + "/ollama/api/version")).json() == {"version": "0.14.3"}
        missing = await http("GET", base + "/ollama/api/nothing")
        assert missing.code == 404 and missing.json()["error"] == "no such endpoint: /ollama/api/nothing"

        client = ollama.Client(host=base + "/ollama")
        listing = await in_thread(client.list)
        assert "google/gemini-pro:latest" in [m.model for m in listing.models]
        parts = await in_thread(
            lambda: [
                c.message.content
                for c in client.chat(
                    model="google/gemini-pro", messages=[{"role": "user", "content": "mounted"}], stream=True
                )
            ]
        )
        assert "".join(parts) == "Echo: mounted"

        metrics = await http("GET", base + "/ollama/metrics?format=prometheus", headers={"X-Request-Id": "host-1"})
        assert metrics.header("x-request-id") == "host-1"
        assert (
            'ollama_proxy_requests_total{endpoint="/api/chat",method="POST",status="200"} 1.0' in metrics.body.decode()
        )

        # Stopping the host's tree drains the proxy's streams, then stops its timers and pools.
        stream = await StreamClient.open(
            base + "/ollama/api/chat", {"model": "sim/hold", "messages": [{"role": "user", "content": "bye now"}]}
        )
        await stream.wait_lines(1)
        stopped = host.stopService()
        assert not stopped.called and proxy.lifecycle.draining
        simulator.release_holds()
        await stream.wait_done()
        await stopped
        assert stream.objects()[-1]["done"] is True
        assert not proxy.running and not proxy.refresh_timer.running and not proxy.health_timer.running
    finally:
        if host.running:
            await host.stopService()
