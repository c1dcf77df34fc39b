"""The queue that unwinds a leaving client's request after the closes: order, turns, slices."""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from ollama_proxy.ops.later import Later, later


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
