"""The hot path: events relayed as they arrive, upstream closed when the client leaves."""

import socket

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from ollama_proxy.config.providers import RetryConfig

from .conftest import LineReader, http


def chat(model, content="a b c", stream=True):
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


@pytest_twisted.ensureDeferred
async def test_tokens_reach_the_client_before_the_upstream_finishes(proxy, simulator):
    # sim/stall sends one token and then never finishes: a proxy that buffered
    # the stream would never show the client anything.
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/stall"))
    [first] = await reader.wait_for_lines(1)
    assert b'"content":"Echo:"' in first and b'"done":false' in first
    assert b"HTTP/1.1 200" in reader.head and b"application/x-ndjson" in reader.head.lower()
    reader.hang_up()
    await simulator.wait_for_abort()


@pytest_twisted.ensureDeferred
async def test_client_disconnect_closes_the_upstream_stream(proxy, simulator):
    # sim/endless streams until its connection is closed: only the proxy closing
    # it ends the simulator's stream (and the provider's billing).
    aborted = simulator.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/endless"))
    await reader.wait_for_lines(3)
    reader.hang_up()
    await aborted
    assert simulator.streams_aborted == 1
    # The proxy is unharmed and the stream counter went back down.
    r = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))
    assert r.code == 200
    assert proxy.service.stats.active_streams == 0


@pytest_twisted.ensureDeferred
async def test_disconnect_during_a_non_streamed_request_closes_the_upstream(proxy, simulator):
    aborted = simulator.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/endless", stream=False))
    # Wait until the upstream stream is really running, then leave.
    while simulator.tokens_sent < 3:
        await simulator.wait_for_token()
    reader.hang_up()
    await aborted
    assert simulator.streams_aborted == 1
    # A non-streamed answer is whole or nothing: the client saw no part of it.
    assert reader.head is None and reader.lines == []
    stats = proxy.service.router.slot("openrouter").stats
    assert stats.cancelled_requests == 1 and stats.failed_requests == 0


@pytest_twisted.ensureDeferred
async def test_events_split_across_reads_with_crlf(proxy):
    r = await http("POST", proxy.url + "/api/generate", {"model": "sim/crlf-split", "prompt": "x y z"})
    lines = r.lines()
    assert "".join(entry["response"] for entry in lines[:-1]) == "Echo: x y z"
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4


@pytest_twisted.ensureDeferred
async def test_comment_lines_never_become_output(proxy):
    r = await http(
        "POST", proxy.url + "/api/chat", chat("google/gemini-pro", content="one two three four five six seven")
    )
    assert b"OPENROUTER" not in r.body
    assert all(line for line in r.body.split(b"\n")[:-1])
    assert len(r.lines()) == 9


@pytest_twisted.ensureDeferred
async def test_connections_to_the_upstream_are_reused(proxy, simulator):
    first = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))
    assert first.code == 200
    opened = simulator.connections_opened
    for _ in range(4):
        r = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro", stream=False))
        assert r.code == 200
    # The first chat's connection went back to the pool; the next four all used it.
    assert simulator.connections_opened == opened and len(simulator.chat_requests()) == 5


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_while_headers_are_awaited_is_not_retried(make_proxy, simulator):
    # With retries on, a cancelled upstream request must not look like a
    # connection failure: it would be sent again (and billed) for nobody.
    proxy = make_proxy(retry=RetryConfig(max_retries=2, base_delay=0.0))
    arrived = simulator.wait_for_request()
    aborted = simulator.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/no-headers", stream=False))
    await arrived
    reader.hang_up()
    await aborted
    stats = proxy.service.router.slot("openrouter").stats
    assert stats.cancelled_requests == 1
    assert stats.failed_requests == 0 and stats.retries == 0
    assert len(simulator.chat_requests()) == 1


@pytest_twisted.ensureDeferred
async def test_the_upstream_is_closed_before_the_leaving_clients_access_line(proxy, simulator):
    # Ten thousand clients leaving at once must not have their upstreams closed one
    # after the other behind each one's bookkeeping (cancelling the handler, the access
    # line): when the access line of a client that left is written, its upstream
    # connection is already closed (the simulator's end of it reads end-of-file).
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/hold"))
    await reader.wait_for_lines(1)
    [held] = simulator.held
    upstream_end = held.request.transport.getHandle()
    seen: list[bytes | None] = []
    logged: Deferred[None] = Deferred()

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "ollama_proxy.access":
            try:
                seen.append(upstream_end.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            except BlockingIOError:
                seen.append(None)  # still open: nothing to read, no end-of-file
            except OSError:
                seen.append(b"")  # the simulator has even closed its end already
            if not logged.called:
                logged.callback(None)

    aborted = simulator.wait_for_abort()
    globalLogPublisher.addObserver(observe)
    try:
        reader.hang_up()
        await aborted
        await logged
    finally:
        globalLogPublisher.removeObserver(observe)
    assert seen == [b""]
    assert simulator.streams_aborted == 1


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_amid_an_upstream_event_is_a_cancel_not_an_upstream_error(proxy, simulator):
    # Streams are mostly read between the parts of an event. When the client leaves,
    # the half event left in the reader is not the upstream's error ("not JSON"): the
    # request is cancelled (499), nothing is blamed on the provider, and its unwinding
    # waits for the turn after the closes as for any client that left.
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("sim/hold-partial"))
    await reader.wait_for_lines(1)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    aborted = simulator.wait_for_abort()
    try:
        reader.hang_up()
        await aborted
        await proxy.service.lifecycle.when_idle()
    finally:
        globalLogPublisher.removeObserver(events.append)
    stats = proxy.service.router.slot("openrouter").stats
    assert stats.cancelled_requests == 1 and stats.failed_requests == 0
    warnings = [e for e in events if e.get("log_level") is not None and e["log_level"].name in ("warn", "error")]
    assert warnings == []
    [access] = [e for e in events if e.get("log_namespace") == "ollama_proxy.access"]
    assert access["status"] == 499
