"""The queue that unwinds a leaving client's request after the closes: order, turns, slices."""

from typing import Any

from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from ollama_proxy.ops.later import Later, after_send, flush, later


class Turns(Clock):
    """A Clock whose ``turn()`` runs only the calls due when it starts, as one reactor turn
    does (``Clock.advance(0)`` also runs those scheduled meanwhile)."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.func(*call.args, **call.kw)


def test_a_queued_call_waits_for_a_poll_between_two_turns():
    clock = Turns()
    queue = Later(clock)
    ran: list[str] = []
    queue.call(ran.append, "a")
    assert ran == []
    clock.turn()  # the turn after: the stopped upstream sockets have not been polled yet
    assert ran == []
    clock.turn()
    assert ran == ["a"]
    assert len(queue) == 0 and clock.getDelayedCalls() == []


def test_a_burst_is_unwound_a_slice_per_turn_in_order():
    clock = Turns()
    ticks = iter(range(1000))
    # Each call "takes" one tick of the fake timer: a budget of 2 lets two run per turn.
    queue = Later(clock, budget=2, timer=lambda: next(ticks))
    ran: list[int] = []
    for i in range(5):
        queue.call(ran.append, i)
    clock.turn()
    seen = []
    for _ in range(4):
        clock.turn()
        seen.append(list(ran))
    assert seen == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert clock.getDelayedCalls() == []


def test_calls_queued_while_unwinding_wait_their_own_two_turns():
    clock = Turns()
    queue = Later(clock)
    ran: list[str] = []
    queue.call(lambda: (ran.append("first"), queue.call(ran.append, "second")))
    clock.turn()
    clock.turn()
    assert ran == ["first"]
    clock.turn()
    assert ran == ["first"]
    clock.turn()
    assert ran == ["first", "second"]


def test_a_failing_call_is_logged_and_the_rest_still_run():
    clock = Turns()
    queue = Later(clock)
    ran: list[str] = []
    events: list[dict] = []
    queue.call(lambda: 1 / 0)
    queue.call(ran.append, "after")
    globalLogPublisher.addObserver(events.append)
    try:
        clock.turn()
        clock.turn()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ran == ["after"]
    [failure] = [e for e in events if "log_failure" in e]
    assert failure["log_failure"].check(ZeroDivisionError)


def test_one_queue_per_clock():
    one, other = Clock(), Clock()
    assert later(one) is later(one)
    assert later(one) is not later(other)


def test_flush_runs_everything_queued_in_order_and_leaves_no_timer():
    clock = Turns()
    queue = Later(clock)
    ran: list[int] = []
    queue.call(ran.append, 1)
    clock.turn()  # 1 is aging now
    queue.call(lambda: (ran.append(2), queue.call(ran.append, 3)))  # queues one more while flushed
    queue.flush()
    assert ran == [1, 2, 3]
    assert len(queue) == 0 and clock.getDelayedCalls() == []


@implementer(IReactorCore)
class StoppableClock(Clock):
    """A Clock that also takes system event triggers, as a reactor does."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.triggers.append((phase, event, fn))
        return len(self.triggers)


def test_what_is_queued_when_the_reactor_stops_runs_before_the_services_stop():
    clock = StoppableClock()
    ran: list[str] = []
    later(clock).call(ran.append, "unwound")
    after_send(clock).call(ran.append, "access line")
    later(clock).call(lambda: after_send(clock).call(ran.append, "its access line"))
    [(phase, event, fn)] = clock.triggers  # one trigger for both queues
    assert (phase, event) == ("after", "shutdown")  # after the services stopped
    fn(clock)
    # Until every queue is empty: what one queue's calls queue in another runs too.
    assert sorted(ran) == ["access line", "its access line", "unwound"]
    assert clock.getDelayedCalls() == []


def test_the_bookkeeping_queue_has_no_budget_so_no_backlog_builds_up():
    clock = Turns()
    queue = after_send(clock)
    assert queue is after_send(clock) and queue is not later(clock)
    ran: list[int] = []
    for i in range(5000):
        queue.call(ran.append, i)
    clock.turn()
    clock.turn()
    assert ran == list(range(5000)) and clock.getDelayedCalls() == []


def test_a_finished_requests_bookkeeping_waits_until_its_answer_is_sent(simulator, access_events):
    from twisted.internet import reactor

    from ollama_proxy.service import makeService

    from .conftest import base_config
    from .test_hardening_connections import connect

    service = makeService(base_config(simulator), reactor)
    channel, transport = connect(service.site)
    channel.dataReceived(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")  # buffered for the next poll to send
    assert access_events == [] and service.lifecycle.in_flight == 1
    flush(reactor)  # what the reactor does two turns on
    assert [(e["status"], e["path"]) for e in access_events] == [(200, "/api/version")]
    assert service.lifecycle.in_flight == 0  # a drain waits for the bookkeeping too
