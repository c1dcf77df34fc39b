"""Fixtures: real upstream simulators and real proxies, all on loopback port 0.

``simulator`` is the OpenRouter upstream; ``openai_sim``, ``anthropic_sim`` and
``ollama_sim`` are more upstreams of each kind. ``proxy``/``make_proxy`` start a
proxy on ``simulator``; ``make_multi`` one with several providers (see multi.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import TimeoutMixin

from ollama_proxy.config.providers import RetryConfig
from ollama_proxy.config.settings import Config, OpenRouterConfig, Timeouts, load_config
from ollama_proxy.ops.later import flush
from ollama_proxy.ops.sendnow import answering
from ollama_proxy.service import ProxyService, makeService

from .anthropic_simulator import AnthropicSimulator
from .multi import multi_config
from .ollama_simulator import OllamaSimulator
from .simbase import SimulatorBase
from .simulator import API_KEY, UpstreamSimulator


class RunningProxy:
    """A started proxy: its URL and its service tree."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        port = service.listening_ports()[0].getHost().port
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def stop(self) -> Deferred[Any]:
        return self.service.stopService()


def base_config(simulator: UpstreamSimulator, **overrides: Any) -> Config:
    config = load_config(environ={}, listen=["tcp:0:interface=127.0.0.1"])
    config = replace(
        config,
        openrouter=OpenRouterConfig(api_key=API_KEY, base_url=simulator.base_url),
        timeouts=Timeouts(connect=5, response=10, idle=10),
        # One attempt: these tests check how one upstream answer is relayed. Retries
        # are tested on a task.Clock (test_dispatch.py, test_failover.py).
        retry=RetryConfig(max_retries=0),
    )
    return replace(config, **overrides)


def serving(sim: SimulatorBase, *args: Any) -> Any:
    """Start ``sim`` (``args`` go to its ``start``), yield it, stop it after the test."""
    sim.base_url = sim.start(*args)
    yield sim
    sim.close_connections()
    pytest_twisted.blockon(sim.stop())


@pytest.fixture
def simulator() -> Any:
    """The OpenRouter upstream (at ``/api/v1``)."""
    yield from serving(UpstreamSimulator(global_reactor))


@pytest.fixture
def openai_sim() -> Any:
    """A second OpenAI-style upstream at ``/v1``, with the same models as OpenRouter's."""
    yield from serving(UpstreamSimulator(global_reactor, api_key="sk-openai-simulator-key"), "/v1")


@pytest.fixture
def anthropic_sim() -> Any:
    yield from serving(AnthropicSimulator(global_reactor))


@pytest.fixture
def ollama_sim() -> Any:
    yield from serving(OllamaSimulator(global_reactor))


def starting(build: Callable[..., ProxyService]) -> Any:
    """Yield ``make(...)``, which starts and returns ``RunningProxy(build(...))``; after the
    test, stop every proxy it started."""
    started: list[RunningProxy] = []

    def make(*args: Any, **kwargs: Any) -> RunningProxy:
        service = build(*args, **kwargs)
        service.startService()
        proxy = RunningProxy(service)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        pytest_twisted.blockon(proxy.stop())


@pytest.fixture
def make_proxy(simulator: UpstreamSimulator) -> Any:
    """``make_proxy(**config_overrides)`` starts a proxy; all are stopped after the test."""

    def build(**overrides: Any) -> ProxyService:
        return makeService(base_config(simulator, **overrides), global_reactor)

    yield from starting(build)


@pytest.fixture
def make_multi(simulator: UpstreamSimulator) -> Any:
    """``make_multi(providers, openrouter=True, clock=None, seed=0, **config)`` starts a proxy
    with several providers; all are stopped after the test."""

    def build(
        providers: list[Any], openrouter: bool = True, clock: Any = None, seed: int = 0, **overrides: Any
    ) -> ProxyService:
        config = multi_config(simulator.base_url if openrouter else None, providers, **overrides)
        return makeService(config, global_reactor, clock=clock, rng=random.Random(seed))

    yield from starting(build)


@pytest.fixture
def proxy(make_proxy: Any) -> RunningProxy:
    return make_proxy()


class AccessEvents(list):  # type: ignore[type-arg]
    """The access-log events emitted during a test. A request's access line is written after
    its answer was sent (``ollama_proxy.ops.later``), so a client can read the answer first:
    reading this list (iterating, indexing, ``len``) runs the bookkeeping still queued, and it
    holds the line of every request whose answer the test has read; ``==`` compares what was
    written so far, without running it (a test of what waits for the answer's send)."""

    def __iter__(self) -> Any:
        flush(global_reactor)
        return super().__iter__()

    def __len__(self) -> int:
        flush(global_reactor)
        return super().__len__()

    def __getitem__(self, index: Any) -> Any:
        flush(global_reactor)
        return super().__getitem__(index)


@pytest.fixture
def access_events() -> Any:
    """The access-log events emitted during the test (see :class:`AccessEvents`)."""
    events = AccessEvents()

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "ollama_proxy.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# Channels built by hand over a StringTransport (``connect``), stopped after their test.
_hand_driven: list[Any] = []


def connect(site: Any) -> tuple[Any, StringTransport]:
    """A channel of ``site`` on a StringTransport, as if a client had connected (the
    test drives it byte by byte, its timers on the site's Clock)."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    _hand_driven.append(protocol)
    return protocol, transport


@pytest.fixture(autouse=True)
def _hand_driven_channels_stop() -> Any:
    """Twisted's idle timeout of a channel (60 s) runs on the real reactor, not on the
    site's Clock: a hand-driven channel left with it would time out a minute later inside
    whichever test runs then, and log an error there ('Cannot unregister a producer' from
    the StringTransport). Stopping it is what the close of a real socket would do."""
    yield
    while _hand_driven:
        channel = _hand_driven.pop()
        if isinstance(channel, TimeoutMixin):
            channel.setTimeout(None)


@pytest.fixture(autouse=True)
def _requests_being_answered_restored() -> Any:
    """The count of requests being answered (``ollama_proxy.ops.sendnow``) is the process's:
    a test that fails between counting a request and finishing it does not leave it to the next."""
    before = answering.count
    yield
    answering.count = before


@pytest.fixture(autouse=True)
def _bookkeeping_done_within_its_test() -> Any:
    """A finished request's bookkeeping (access line, metrics, ledger row) is queued on the
    reactor until its answer has been sent (``ollama_proxy.ops.later``): what a test left
    queued is done when the test ends, not inside whichever test spins the reactor next."""
    yield
    flush(global_reactor)


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client (ollama, openai) off the reactor thread."""
    return threads.deferToThread(fn, *args, **kwargs)


class RawResponse:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        assert not [line for line in self.body.split(b"\n")[:-1] if not line.strip()], "blank line in NDJSON"
        return [json.loads(line) for line in self.body.splitlines()]


async def http(
    method: str, url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> RawResponse:
    """A plain HTTP exchange (treq on a non-persistent pool), for statuses and headers."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(global_reactor, persistent=False)
    client = HTTPClient(Agent(global_reactor, pool=pool))
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    response = await client.request(method, url, data=data, headers=hdrs)
    content = await treq.content(response)
    return RawResponse(response.code, response.headers, content)


class LineReader:
    """A raw HTTP/1.1 client on a TCP connection: send one request, read NDJSON
    lines as they arrive, hang up whenever the test says so."""

    def __init__(self) -> None:
        from twisted.internet.protocol import Protocol

        reader = self

        class _Protocol(Protocol):
            def dataReceived(self, data: bytes) -> None:
                reader._received(data)

            def connectionLost(self, reason: Any = None) -> None:
                reader._closed()

        self.protocol = _Protocol()
        self.buffer = b""
        self.head: bytes | None = None
        self.lines: list[bytes] = []
        self._waiters: list[tuple[int, Deferred[Any]]] = []
        self.closed: Deferred[None] = Deferred()

    async def connect(self, port: int, path: str, body: Any) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        await connectProtocol(TCP4ClientEndpoint(global_reactor, "127.0.0.1", port), self.protocol)
        payload = json.dumps(body).encode()
        self.protocol.transport.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )

    def _received(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None and b"\r\n\r\n" in self.buffer:
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if self.head is None:
            return
        # Chunked transfer encoding: take whole chunks, split their payload into lines.
        while True:
            size_line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            chunk, self.buffer = rest[:size], rest[size + 2 :]
            self.lines.extend(line for line in chunk.split(b"\n") if line)
        for count, waiter in list(self._waiters):
            if len(self.lines) >= count:
                self._waiters.remove((count, waiter))
                waiter.callback(self.lines[:count])

    def _closed(self) -> None:
        for _, waiter in self._waiters:
            waiter.errback(ConnectionError("closed"))
        self._waiters = []
        if not self.closed.called:
            self.closed.callback(None)

    def wait_for_lines(self, count: int) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        if len(self.lines) >= count:
            d.callback(self.lines[:count])
        else:
            self._waiters.append((count, d))
        return d

    def hang_up(self) -> None:
        self.protocol.transport.loseConnection()


# The ledger's databases: a session's PostgreSQL server (tests/pgserver.py) and a
# store on SQLite or PostgreSQL (tests/ledger_helpers.py).
from .ledger_helpers import ledger_url, stores  # noqa: E402, F401
from .pgserver import pg_url, postgresql  # noqa: E402, F401
