"""Graceful stop in-process: the drain deadline runs on a task.Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from ollama_proxy.config.ops import OpsConfig, ShutdownConfig
from ollama_proxy.ops.sendnow import answering

from .conftest import http
from .daemon import StreamClient, within


def drain(seconds: float) -> OpsConfig:
    return OpsConfig(shutdown=ShutdownConfig(drain_timeout=seconds))


def chat(model: str, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "wait for it"}], "stream": stream}


def on_clock(proxy: Any) -> Clock:
    clock = Clock()
    proxy.service.lifecycle.clock = clock
    return clock


@pytest_twisted.ensureDeferred
async def test_stopping_with_nothing_in_flight_is_immediate(make_proxy):
    proxy = make_proxy()
    await within(proxy.service.stopService(), "the stop")
    assert not proxy.service.refresh_timer.running and not proxy.service.health_timer.running
    with pytest.raises(error.ConnectionRefusedError):
        await http("GET", proxy.url + "/api/version")


@pytest_twisted.ensureDeferred
async def test_a_stream_in_flight_finishes_before_the_stop_completes(make_proxy, simulator):
    proxy = make_proxy(ops=drain(30))
    clock = on_clock(proxy)
    stream = await StreamClient.open(proxy.url + "/api/chat", chat("sim/hold"))
    await stream.wait_lines(1)
    stopped = proxy.service.stopService()
    assert not stopped.called and proxy.service.lifecycle.draining
    with pytest.raises(error.ConnectionRefusedError):  # the listener is closed at once
        await http("GET", proxy.url + "/api/version")
    clock.advance(29)
    simulator.release_holds()
    await stream.wait_done()
    await within(stopped, "the stop")
    objects = stream.objects()
    assert objects[-1]["done"] is True and "".join(o["message"]["content"] for o in objects) == "Echo: wait for it"


@pytest_twisted.ensureDeferred
async def test_the_deadline_cuts_streams_with_an_error_line_and_others_with_503(make_proxy, simulator):
    proxy = make_proxy(ops=drain(5))
    clock = on_clock(proxy)
    stream = await StreamClient.open(proxy.url + "/api/chat", chat("sim/hold"))
    await stream.wait_lines(1)
    # An answer still waiting for the provider's headers: nothing sent yet.
    upstream_has_it = simulator.wait_for_request()  # the next POST (not a model-list refresh)
    waiting = http_later(proxy)
    await within(upstream_has_it, "the second request upstream")
    assert proxy.service.lifecycle.in_flight == 2
    aborted = simulator.wait_for_abort()
    stopped = proxy.service.stopService()
    clock.advance(4.9)
    assert not stopped.called and len(stream.lines) == 1
    clock.advance(0.1)
    await stream.wait_done()
    assert stream.objects()[-1] == {"error": "the server is shutting down: drain deadline of 5 s passed"}
    answer = await waiting
    assert answer.code == 503
    assert answer.json() == {
        "error": "the server is shutting down: drain deadline of 5 s passed",
        "type": "service_unavailable",
    }
    await aborted
    await within(stopped, "the stop")
    assert proxy.service.lifecycle.in_flight == 0


def http_later(proxy: Any) -> Any:
    """The request, started now and awaited later."""
    return ensureDeferred(http("POST", proxy.url + "/api/chat", chat("sim/no-headers", stream=False)))


@pytest_twisted.ensureDeferred
async def test_a_cut_v1_stream_ends_with_an_sse_error_event(make_proxy, simulator):
    proxy = make_proxy(ops=drain(5))
    clock = on_clock(proxy)
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "wait for it"}], "stream": True}
    stream = await StreamClient.open(proxy.url + "/v1/chat/completions", body)
    await stream.wait_lines(1)
    stopped = proxy.service.stopService()
    clock.advance(5)
    await stream.wait_done()
    events = [line for line in stream.lines if line.strip()]
    # SSE framing to the end: an OpenAI client raises on an event carrying "error".
    assert all(line.startswith(b"data: ") for line in events)
    last = events[-1][len(b"data: ") :]
    assert json.loads(last)["error"]["message"] == "the server is shutting down: drain deadline of 5 s passed"
    await within(stopped, "the stop")


def test_a_records_gone_callback_runs_once_and_only_when_a_door_watches():
    from ollama_proxy.front.record import RequestRecord

    calls: list[str] = []
    unwatched = RequestRecord()
    assert not unwatched.when_gone(lambda: calls.append("unwatched"))  # the caller watches itself
    unwatched.client_gone()
    watched = RequestRecord(watched=True)
    assert watched.when_gone(lambda: calls.append("first attempt"))
    assert watched.when_gone(lambda: calls.append("retry"))  # a later attempt's relay replaces it
    watched.client_gone()
    watched.client_gone()
    assert calls == ["retry"]


def test_a_finished_request_stops_counting_at_once_and_is_not_cut_while_booked(simulator):
    # Its bookkeeping (and its release from what a drain waits for) waits until its answer
    # was sent; its generation is not counted by the stream limits meanwhile, and a drain
    # that runs out then does not cut it (its access line and ledger row would say "cut").
    from types import SimpleNamespace

    from twisted.internet import reactor

    from ollama_proxy.front.record import RequestRecord
    from ollama_proxy.ops.later import flush
    from ollama_proxy.service import makeService

    from .conftest import base_config

    service = makeService(base_config(simulator), reactor)
    record = RequestRecord(client="127.0.0.1", watched=True, generating=True, stream=True)
    request = SimpleNamespace(code=200)
    service.lifecycle.admit(request, record)
    answering.count += 1  # what the front door's opening of a request counts, its finish uncounts
    service.gate.finished(None, request, record)
    assert service.lifecycle.in_flight == 1 and service.lifecycle.generations("127.0.0.1") == 0
    assert service.lifecycle.cut_all() == 0 and record.cut_reason is None
    flush(reactor)
    assert service.lifecycle.in_flight == 0 and record.status == 200


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_at_the_end_of_the_drain_is_booked_before_the_stop_goes_on(simulator):
    # A cut stream whose client reads nothing cannot close gracefully; its connection is
    # aborted, which Twisted reports a reactor turn later. Its bookkeeping (the ledger row
    # of what it used) must run before the drain ends, or the ledger closes first.
    from types import SimpleNamespace

    from twisted.internet import reactor
    from twisted.python.failure import Failure

    from ollama_proxy.front.lifecycle import CUT_GRACE_SECONDS
    from ollama_proxy.front.record import RequestRecord
    from ollama_proxy.service import makeService

    from .conftest import base_config

    service = makeService(base_config(simulator), reactor)
    lifecycle = service.lifecycle
    clock = lifecycle.clock = Clock()
    booked: list[RequestRecord] = []
    service.gate.observers.append(booked.append)
    record = RequestRecord(client="127.0.0.1", watched=True, generating=True, stream=True)

    class Transport:
        def loseConnection(self) -> None:
            pass  # its answer cannot be flushed to a client that reads nothing

        def abortConnection(self) -> None:
            reactor.callLater(0, service.gate.finished, Failure(error.ConnectionAborted()), request, record)

    request = SimpleNamespace(
        code=200, finished=False, startedWriting=True, channel=SimpleNamespace(transport=Transport())
    )
    lifecycle.admit(request, record)
    answering.count += 1  # what the front door's opening of a request counts, its finish uncounts
    drained = ensureDeferred(lifecycle.drain())
    booked_when_drained: list[list[RequestRecord]] = []
    drained.addCallback(lambda _: booked_when_drained.append(list(booked)))
    clock.advance(lifecycle.drain_timeout)  # the deadline: cut (it cannot close)
    clock.advance(CUT_GRACE_SECONDS)  # its grace: aborted
    await within(drained, "the drain")
    assert booked_when_drained == [[record]] and record.status == 499
    assert lifecycle.in_flight == 0
