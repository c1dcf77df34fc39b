"""Slow and many connections, and bodies declared too large (issue 10, items 9 and 11).

The channel is driven byte by byte over a ``StringTransport``, and the header
deadline on a ``task.Clock``: nothing here waits for real time.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from ollama_proxy.config.ops import LimitsConfig, OpsConfig
from ollama_proxy.service import makeService

from .conftest import base_config, connect
from .test_limits import raw


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def site(simulator: Any, clock: Clock) -> Any:
    """The Site of a proxy built on a Clock (not started: the channels are driven by hand)."""
    config = replace(base_config(simulator), ops=OpsConfig(limits=LimitsConfig(header_timeout=10, max_connections=2)))
    return makeService(config, reactor, clock=clock).site


def answer(transport: StringTransport) -> tuple[bytes, dict[str, str], Any]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, json.loads(body) if body else None


def test_headers_trickled_a_byte_every_two_seconds_are_cut_at_the_deadline(site, clock):
    channel, transport = connect(site)
    request = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
    for byte in request[:5]:
        channel.dataReceived(bytes([byte]))  # each byte would restart an idle timeout; the deadline holds
        clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.6)
    assert transport.disconnecting
    status, headers, body = answer(transport)
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert headers["connection"] == "close"
    assert body == {"error": "the request headers did not arrive within 10 seconds", "type": "request_timeout"}


def test_a_connection_that_sends_nothing_is_closed_quietly(site, clock):
    _, transport = connect(site)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and transport.value() == b""


def test_headers_in_time_are_served_and_a_kept_alive_connection_waits_again(site, clock):
    channel, transport = connect(site)
    clock.advance(9)
    channel.dataReceived(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(9)
    assert not transport.disconnecting  # the next request's deadline counts from the answer
    transport.clear()
    channel.dataReceived(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(10.1)
    assert transport.disconnecting and transport.value().count(b"HTTP/1.1") == 1


def test_a_body_slower_than_the_deadline_is_not_cut_by_it(site, clock):
    channel, transport = connect(site)
    channel.dataReceived(b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n{")
    clock.advance(59)  # the whole request's own deadline (60 s) is tested in test_hardening_rerun
    assert not transport.disconnecting


def test_connections_past_the_cap_get_a_503_and_the_count_comes_back(site):
    first, _ = connect(site)
    connect(site)
    third, refused = connect(site)
    status, headers, body = answer(refused)
    assert status == b"HTTP/1.1 503 Service Unavailable" and refused.disconnecting
    assert headers["retry-after"] == "1"
    assert body == {
        "error": "the proxy is serving its maximum of 2 connections; try again shortly",
        "type": "service_unavailable",
    }
    third.connectionLost(None)
    assert site.connections == 2  # a refused connection never counted
    first.connectionLost(None)
    assert site.connections == 1
    _, accepted = connect(site)
    accepted.clear()
    assert not accepted.disconnecting and site.connections == 2


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/api/chat", "native"), ("/v1/chat/completions", "openai"), ("/api/tags", "native")],
)
def test_a_declared_body_over_the_limit_is_refused_at_the_headers(site, path, shape):
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 10737418240\r\n\r\n"
    )
    # Answered with no byte of the body sent, and no "100 Continue" inviting it.
    status, headers, body = answer(transport)
    assert status.startswith(b"HTTP/1.1 413 "), transport.value()[:200]
    assert headers["connection"] == "close"
    message = body["error"] if shape == "native" else body["error"]["message"]
    assert message == f"request body is larger than the limit of {32 * 1024 * 1024} bytes"
    assert transport.disconnecting  # closed after the answer: what the client still sends is not read
    assert b"100 Continue" not in transport.value()


@pytest_twisted.ensureDeferred
async def test_a_connection_past_the_cap_is_refused_on_the_wire(make_proxy):
    proxy = make_proxy(ops=OpsConfig(limits=LimitsConfig(max_connections=1)))
    held = await raw(proxy.port, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await held.wait_received(1)  # the first connection is open and served
    refused = await raw(proxy.port, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await refused.closed
    assert refused.received.startswith(b"HTTP/1.1 503 Service Unavailable")
    held.transport.loseConnection()
    await held.closed
