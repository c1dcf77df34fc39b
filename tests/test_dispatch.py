"""The retry/failover loop on a fake clock: scripted attempts, real breakers and limiters."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock

from ollama_proxy.config.providers import BreakerConfig, RetryConfig
from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.echo import EchoProvider
from ollama_proxy.routing.breaker import CLOSED, OPEN, CircuitBreaker, Outcome
from ollama_proxy.routing.catalogue import ModelCatalogue
from ollama_proxy.routing.dispatch import AnsweredWithError, Dispatcher
from ollama_proxy.routing.limiter import BUSY_MESSAGE, Busy, ConcurrencyLimiter
from ollama_proxy.routing.retry import RetryPolicy
from ollama_proxy.routing.router import Route, Target
from ollama_proxy.routing.slots import ProviderSlot
from ollama_proxy.wire.models import UpstreamModel


def slot(
    name: str,
    clock: Clock,
    *,
    breaker: BreakerConfig | None = None,
    in_flight: int = 8,
    queue: int = 8,
    queue_timeout: float = 30,
) -> ProviderSlot:
    provider = EchoProvider(clock, name=name)
    return ProviderSlot(
        provider=provider,
        priority=1,
        enabled=True,
        order=0,
        catalogue=ModelCatalogue(provider.list_models, clock),
        breaker=CircuitBreaker(breaker or BreakerConfig(jitter=0), clock, random.Random(0), name=name),
        limiter=ConcurrencyLimiter(in_flight, queue, queue_timeout, clock, name=name),
    )


def route(*slots: ProviderSlot) -> Route:
    model = UpstreamModel(id="m")
    return Route(name="m", model=model, targets=[Target(s, model, "m") for s in slots])


def error(status: int | None, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("Sim", "sim", status, f"status {status}", retry_after=retry_after)


class Script:
    """Answers attempts per provider from a list: an exception to raise, a Deferred
    to wait on, or a value to return."""

    def __init__(self, **plans: list[Any]) -> None:
        self.plans = {name: list(plan) for name, plan in plans.items()}
        self.calls: list[str] = []

    async def __call__(self, target: Target) -> Any:
        name = target.slot.name
        self.calls.append(name)
        step = self.plans[name].pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Deferred):
            return await step
        return step


def dispatcher(clock: Clock, **retry: Any) -> Dispatcher:
    settings = dict(max_retries=2, base_delay=1.0, max_delay=8.0, max_retry_after=30.0, deadline=60.0)
    settings.update(retry)
    return Dispatcher(RetryPolicy(RetryConfig(**settings), random.Random(0)), clock)


def run(d: Dispatcher, r: Route, script: Script) -> Deferred[Any]:
    return ensureDeferred(d.run(r, script))


def test_first_success_wins_and_is_measured():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=["ok"], b=["never"])
    result = run(dispatcher(clock), route(a, b), script)
    assert result.result == "ok" and script.calls == ["a"]
    assert a.stats.request_count == 1 and a.stats.successful_requests == 1 and a.limiter.in_flight == 0


def test_retries_back_off_on_the_clock_then_succeed():
    clock = Clock()
    a = slot("a", clock)
    script = Script(a=[error(500), error(503), "ok"])
    result = run(dispatcher(clock), route(a), script)
    assert not result.called and script.calls == ["a"]
    (call,) = clock.getDelayedCalls()
    assert 0.5 <= call.getTime() <= 1.0  # first backoff: base 1s with equal jitter
    clock.advance(call.getTime())
    assert script.calls == ["a", "a"] and not result.called
    (call,) = clock.getDelayedCalls()
    assert 1.0 <= call.getTime() - clock.seconds() <= 2.0  # doubled
    clock.advance(2.0)
    assert result.result == "ok" and script.calls == ["a"] * 3
    assert a.stats.retries == 2 and a.stats.failed_requests == 2 and a.stats.successful_requests == 1


def test_retry_after_is_waited_for():
    clock = Clock()
    a = slot("a", clock)
    script = Script(a=[error(429, retry_after=7), "ok"])
    result = run(dispatcher(clock), route(a), script)
    clock.advance(6.9)
    assert not result.called and script.calls == ["a"]
    clock.advance(0.1)
    assert result.result == "ok"


def test_long_retry_after_moves_on_at_once():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[error(429, retry_after=120)], b=["from b"])
    result = run(dispatcher(clock), route(a, b), script)
    assert result.result == "from b" and script.calls == ["a", "b"]
    assert a.stats.fallbacks == 1 and not clock.getDelayedCalls()


def test_out_of_retries_then_next_provider():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[error(None), error(None), error(None)], b=["from b"])
    result = run(dispatcher(clock, max_retries=2), route(a, b), script)
    clock.advance(1)
    clock.advance(2)
    assert result.result == "from b" and script.calls == ["a", "a", "a", "b"]


def test_the_deadline_stops_retries_but_not_failover():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[error(500), error(500)], b=["from b"])
    result = run(dispatcher(clock, max_retries=5, base_delay=4, max_delay=4, deadline=5), route(a, b), script)
    clock.advance(4)  # second attempt at ~2-4s; the next backoff would end after the 5s deadline
    assert result.result == "from b" and script.calls == ["a", "a", "b"]


def test_request_faults_go_straight_to_the_client():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[error(400)], b=["never"])
    result = run(dispatcher(clock), route(a, b), script)
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.value.upstream_status == 400 and script.calls == ["a"]
    assert a.breaker.state == CLOSED


def test_404_and_401_move_on_without_retry():
    clock = Clock()
    a, b, c = slot("a", clock), slot("b", clock), slot("c", clock)
    script = Script(a=[error(404)], b=[error(401)], c=["from c"])
    result = run(dispatcher(clock), route(a, b, c), script)
    assert result.result == "from c" and script.calls == ["a", "b", "c"]
    assert a.breaker.state == CLOSED and b.breaker.state == OPEN


def test_everything_failed_error_names_what_was_tried():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[error(500)], b=[error(404)])
    result = run(dispatcher(clock, max_retries=0), route(a, b), script)
    failure = result.result
    result.addErrback(lambda f: None)
    # the outage of the first provider tells more than the 404 of the second
    assert failure.value.upstream_status == 500
    assert "tried a: 500; b: 404" in failure.value.message


def test_failure_after_output_is_never_retried():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    script = Script(a=[AnsweredWithError("cut", result="partial")], b=["never"])
    result = run(dispatcher(clock), route(a, b), script)
    assert result.result == "partial" and script.calls == ["a"]
    assert a.stats.failed_requests == 1 and a.breaker.window_counts() == (1, 1)


def test_open_breakers_are_skipped():
    clock = Clock()
    a, b = slot("a", clock, breaker=BreakerConfig(consecutive_failures=1, jitter=0)), slot("b", clock)
    script = Script(a=[error(500)], b=["b1", "b2"])
    assert run(dispatcher(clock, max_retries=0), route(a, b), script).result == "b1"
    assert a.breaker.state == OPEN
    assert run(dispatcher(clock, max_retries=0), route(a, b), script).result == "b2"
    assert script.calls == ["a", "b", "b"]


def test_when_every_breaker_is_open_the_soonest_is_tried():
    clock = Clock()
    a = slot("a", clock, breaker=BreakerConfig(consecutive_failures=1, open_wait=50, jitter=0))
    b = slot("b", clock, breaker=BreakerConfig(consecutive_failures=1, open_wait=10, jitter=0))
    a.breaker.record(Outcome.FAILURE)
    b.breaker.record(Outcome.FAILURE)
    assert a.breaker.state == OPEN and b.breaker.state == OPEN
    script = Script(a=["never"], b=["from b"])
    result = run(dispatcher(clock), route(a, b), script)
    assert result.result == "from b" and script.calls == ["b"]
    assert b.breaker.state == CLOSED and a.breaker.state == OPEN


def test_busy_provider_gives_way_to_a_free_one():
    clock = Clock()
    a, b = slot("a", clock, in_flight=1), slot("b", clock)
    hold: Deferred[str] = Deferred()
    script = Script(a=[hold], b=["from b"])
    first = run(dispatcher(clock), route(a, b), script)
    second = run(dispatcher(clock), route(a, b), script)
    assert second.result == "from b" and script.calls == ["a", "b"]
    hold.callback("from a")
    assert first.result == "from a" and a.limiter.in_flight == 0


def test_busy_everywhere_answers_503_after_the_queue_wait():
    clock = Clock()
    a = slot("a", clock, in_flight=1, queue=1, queue_timeout=5)
    hold: Deferred[str] = Deferred()
    script = Script(a=[hold, "late"])
    first = run(dispatcher(clock), route(a), script)
    queued = run(dispatcher(clock), route(a), script)
    refused = run(dispatcher(clock), route(a), script)
    failure = refused.result
    refused.addErrback(lambda f: None)
    assert failure.check(Busy) and failure.value.status == 503 and failure.value.message == BUSY_MESSAGE
    clock.advance(5)
    failure = queued.result
    queued.addErrback(lambda f: None)
    assert failure.check(Busy) and a.stats.rejected_requests == 2
    hold.callback("done")
    assert first.result == "done" and a.limiter.in_flight == 0


def test_queued_request_gets_the_slot_when_it_frees():
    clock = Clock()
    a = slot("a", clock, in_flight=1, queue=1, queue_timeout=5)
    hold: Deferred[str] = Deferred()
    script = Script(a=[hold, "second"])
    first = run(dispatcher(clock), route(a), script)
    queued = run(dispatcher(clock), route(a), script)
    clock.advance(4)
    hold.callback("first")
    assert first.result == "first" and queued.result == "second"


def test_client_leaving_during_backoff_cancels_cleanly():
    clock = Clock()
    a = slot("a", clock)
    script = Script(a=[error(500), "never"])
    result = run(dispatcher(clock), route(a), script)
    assert clock.getDelayedCalls()
    result.cancel()
    failures = []
    result.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    assert not clock.getDelayedCalls() and a.limiter.in_flight == 0 and script.calls == ["a"]


def test_client_leaving_mid_attempt_counts_as_cancelled():
    clock = Clock()
    a = slot("a", clock)
    hold: Deferred[str] = Deferred()
    script = Script(a=[hold])
    result = run(dispatcher(clock), route(a), script)
    result.cancel()
    result.addErrback(lambda f: f.trap(CancelledError))
    assert a.stats.cancelled_requests == 1 and a.stats.failed_requests == 0
    assert a.limiter.in_flight == 0 and a.breaker.window_counts() == (0, 0)


def test_unconfigured_provider_is_skipped_or_reported():
    clock = Clock()
    a, b = slot("a", clock), slot("b", clock)
    a.provider.configured = False  # as a provider without its key
    script = Script(b=["from b"])
    assert run(dispatcher(clock), route(a, b), script).result == "from b"
    result = run(dispatcher(clock), route(a), script)
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.value.status == 503 and "no API key is configured" in failure.value.message


@pytest.mark.parametrize("seed", [1, 2])
def test_jitter_comes_from_the_injected_random(seed):
    def first_delay(seed: int) -> float:
        clock = Clock()
        a = slot("a", clock)
        d = Dispatcher(RetryPolicy(RetryConfig(max_retries=1, base_delay=1.0), random.Random(seed)), clock)
        ensureDeferred(d.run(route(a), Script(a=[error(500), "ok"])))
        return clock.getDelayedCalls()[0].getTime()

    assert first_delay(seed) == first_delay(seed)
    assert first_delay(seed) != first_delay(seed + 10)


def test_attempts_returning_deferreds_are_awaited():
    clock = Clock()
    a = slot("a", clock)
    assert run(dispatcher(clock), route(a), Script(a=[succeed("x")])).result == "x"
    result = run(dispatcher(clock, max_retries=0), route(a), Script(a=[fail(error(502))]))
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.value.upstream_status == 502 and a.stats.failed_requests == 1
