"""What one open stream holds: its request's attributes share their names with every other request's."""

import gc
import os
import sys
import types
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

import ollama_proxy
from ollama_proxy.ops.later import flush

from .conftest import LineReader, connect, http

PACKAGE = os.path.dirname(ollama_proxy.__file__)


@pytest_twisted.ensureDeferred
async def test_a_held_stream_request_keeps_a_compact_attribute_dict(proxy, simulator):
    # Python shares one table of attribute names among a class's instances for up to 29
    # names in all; past it (Twisted's own, the record, the producer: 34 over a stream and
    # other requests) each request's __dict__ was a 1.5 KB table of its own, 10,000 open
    # streams 15 MB. Other kinds of requests go first, as on a running server.
    assert (await http("GET", proxy.url + "/api/tags")).code == 200
    assert (await http("POST", proxy.url + "/api/show", {"model": "google/gemini-pro"})).code == 200
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", body)
    await reader.wait_for_lines(1)
    [request] = proxy.service.lifecycle.requests()
    assert request.producer is not None  # the upstream, registered: all of a stream's names are set
    assert sys.getsizeof(vars(request)) < 600
    # Every name Twisted and the proxy set lives in a slot: no table of names per stream at all.
    assert vars(request) == {} and vars(request.channel) == {}
    # What only a request still being read needs is not kept for the stream's life.
    assert request.channel._request_line is None and request.channel._head is None
    # Three waiters on its end, the front door's and Klein's two: the relay learns of a
    # client leaving through the door's (no fourth Deferred, 0.56 KB, per open stream).
    assert len(request.notifications) == 3
    aborted = simulator.wait_for_abort()
    reader.hang_up()
    await aborted


@pytest.mark.parametrize("client_leaves", [False, True], ids=["answered", "client-left"])
@pytest_twisted.ensureDeferred
async def test_a_finished_request_lets_go_of_what_it_held(proxy, simulator, client_leaves):
    # Klein's renderer leaves each request in a reference cycle. Once its bookkeeping is
    # done the request lets go of its headers, its record and Klein's state, so those are
    # freed at once instead of by the collector (whose walks of them were 6 % of a request).
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "hi"}], "stream": client_leaves}
    reader = LineReader()
    answered = None
    if client_leaves:
        await reader.connect(proxy.port, "/api/chat", body)
    else:
        answered = defer.ensureDeferred(http("POST", proxy.url + "/api/chat", body))
    await simulator.wait_for_hold()
    gc.collect()
    gc.disable()
    try:
        if client_leaves:
            aborted = simulator.wait_for_abort()
            reader.hang_up()
            await aborted
        else:
            simulator.release_holds()
            assert (await answered).code == 200
        flush(reactor)  # the bookkeeping, then the letting go
        assert proxy.service.lifecycle.requests() == []
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        unreachable = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # The cycle still holds the request itself (so this sees what it holds)...
    [request] = [o for o in unreachable if type(o).__name__ == "LimitedRequest"]
    # ... but nothing of it: no headers, no record, no Klein request state.
    assert list(request.requestHeaders.getAllRawHeaders()) == []
    assert list(request.responseHeaders.getAllRawHeaders()) == []
    assert request._ollama_proxy_record is None
    assert not [o for o in unreachable if type(o).__name__ in ("KleinRequest", "MapAdapter")]
    if not client_leaves:
        # (A cancelled handler's frames and its failure are a cycle of their own, which
        # holds its record: a client leaving mid-answer is not the hot path.)
        assert not [o for o in unreachable if type(o).__name__ == "RequestRecord"]


@pytest_twisted.ensureDeferred
async def test_a_streaming_request_does_not_keep_its_body_bytes(proxy, simulator):
    # Twisted keeps a request's body for the request's life; parsed once, the proxy lets
    # the bytes go, so a long conversation is not held twice by every open stream.
    history = [{"role": "user", "content": "x" * 1000} for _ in range(80)]
    body = {"model": "sim/hold", "messages": history, "stream": True}
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", body)
    await reader.wait_for_lines(1)
    [request] = proxy.service.lifecycle.requests()
    assert request.content.seek(0, 2) == 0  # its size: 80 kB before
    assert len(simulator.chat_requests()[-1].body["messages"]) == 80  # all of it went upstream
    aborted = simulator.wait_for_abort()
    reader.hang_up()
    await aborted


def test_slotted_requests_and_channels_start_with_twisteds_class_defaults(proxy):
    # A slot hides the base class's default: each one is set in __init__, and must be the
    # value Twisted's own class would have read (checked against Twisted's classes, so an
    # upgrade that changes one shows here).
    from twisted.web.http import HTTPChannel
    from twisted.web.server import Request

    from ollama_proxy.front.request import LimitedRequest
    from ollama_proxy.front.site import LimitedChannel

    def compare(ours, theirs, names):
        checked = 0
        for name in names:
            if name == "callLater" or not hasattr(theirs, name):
                continue
            assert getattr(ours, name) == getattr(theirs, name), name
            checked += 1
        return checked

    assert compare(LimitedChannel(), HTTPChannel(), LimitedChannel.__slots__) >= 20
    channel, _ = connect(proxy.service.site)
    theirs = Request(channel, parsePOSTFormSubmission=False)
    names = [n for n in LimitedRequest.__slots__ if n not in ("notifications", "requestHeaders", "responseHeaders")]
    assert compare(LimitedRequest(channel), theirs, names) >= 30


def _suspended_coroutines() -> list[str]:
    """The proxy's coroutines waiting somewhere (each holds its frame and locals)."""
    return [
        c.__qualname__
        for c in gc.get_objects()
        if isinstance(c, types.CoroutineType) and c.cr_frame is not None and c.cr_code.co_filename.startswith(PACKAGE)
    ]


@pytest_twisted.ensureDeferred
async def test_a_held_native_stream_waits_in_few_coroutine_frames(proxy, simulator):
    # A coroutine that only hands on another one's result is a frame held for the
    # stream's whole life: /api/chat waited in eight (the route handler, _answer, the
    # pipeline, _dispatch_chat, the attempt, the dispatcher twice, the relay).
    before = _suspended_coroutines()
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", body)
    await reader.wait_for_lines(1)
    held = list((Counter(_suspended_coroutines()) - Counter(before)).elements())
    assert "ChatRelay.stream" in held
    assert "OllamaAPI._answer" not in held and "Pipeline._dispatch_chat" not in held
    assert len(held) <= 6, held
    aborted = simulator.wait_for_abort()
    reader.hang_up()
    await aborted


@pytest_twisted.ensureDeferred
async def test_a_held_stream_keeps_no_per_attempt_closure_or_empty_bookkeeping(proxy, simulator):
    # The dispatcher waits as long as the stream: a closure made per attempt (its
    # function, defaults and cell) and an empty set and list made per request, for
    # targets that only a full or broken provider puts there, were held all along.
    body = {"model": "sim/hold", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", body)
    await reader.wait_for_lines(1)
    [run] = [
        c.cr_frame.f_locals
        for c in gc.get_objects()
        if isinstance(c, types.CoroutineType) and c.__qualname__ == "Dispatcher.run" and c.cr_frame is not None
    ]
    assert run["deferred"] is None and run["open_targets"] is None
    closures = [
        f for f in gc.get_objects() if isinstance(f, types.FunctionType) and f.__qualname__.startswith("Dispatcher.")
    ]
    assert [f for f in closures if "<locals>" in f.__qualname__] == []
    aborted = simulator.wait_for_abort()
    reader.hang_up()
    await aborted


def test_what_a_stream_holds_per_request_has_no_instance_dict():
    # Each is made per request and held as long as its stream: a dict of its own costs
    # more than its few fields.
    from ollama_proxy.api.pipeline import ChatCall, _LastAttempt
    from ollama_proxy.routing.breaker import BreakerCall
    from ollama_proxy.routing.dispatch import _Run
    from ollama_proxy.routing.router import Route, Target

    with_dict = [c.__name__ for c in (ChatCall, _LastAttempt, BreakerCall, _Run, Route, Target) if c.__dictoffset__]
    assert with_dict == []


@pytest_twisted.ensureDeferred
async def test_a_finished_requests_record_lets_its_relay_go(proxy, simulator):
    # The relay's hook on the front door's watch (when_gone) is let go when the request
    # finishes, whether its client stayed or left: the record holding the relay, and the
    # relay the request, was a reference cycle more per request.
    from twisted.internet import reactor

    from ollama_proxy.ops.later import flush

    records: list = []
    proxy.service.gate.observers.append(records.append)
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert (await http("POST", proxy.url + "/api/chat", body)).code == 200
    reader = LineReader()
    aborted = simulator.wait_for_abort()
    await reader.connect(proxy.port, "/api/chat", {**body, "model": "sim/hold", "stream": True})
    await reader.wait_for_lines(1)
    reader.hang_up()
    await aborted
    await proxy.service.lifecycle.when_idle()
    flush(reactor)
    assert [r.status for r in records] == [200, 499]
    assert all(r.watched and r._on_gone is None for r in records)
