"""Two providers, one failing in each way, the other serving: the client still gets
complete answers where a fallback exists, and a clear error where none does.

``primary`` (priority 1) and ``backup`` (priority 2) are two OpenAI-style
simulators offering the same models. Timeouts, backoffs and breaker waits run on
a fake clock driven by :func:`~tests.multi.pump` where a test needs time to pass.
"""

from __future__ import annotations

from typing import Any

import ollama
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.web.client import ResponseNeverReceived

from ollama_proxy.config.providers import BreakerConfig, ProviderTimeouts, RetryConfig
from ollama_proxy.routing.limiter import BUSY_MESSAGE

from .conftest import http, in_thread
from .multi import provider, pump, turn
from .simulator import API_KEY, EMBEDDING_MODELS, UpstreamSimulator

CHAT = "/api/chat"
HELLO = [{"role": "user", "content": "hello there friend"}]
COMPLETE = "Echo: hello there friend"


@pytest.fixture
def primary_sim() -> Any:
    sim = UpstreamSimulator(global_reactor)
    sim.base_url = sim.start("/v1")
    sim.stopped = False
    yield sim
    sim.close_connections()
    if not sim.stopped:
        pytest_twisted.blockon(sim.stop())


async def take_down(sim: UpstreamSimulator) -> None:
    """The provider's server goes away: new connections are refused, open ones are reset."""
    sim.close_connections()
    sim.stopped = True
    await sim.stop()  # fires once the listening socket is closed: connecting is refused from now on
    # An aborted connection is closed (reset, SO_LINGER 0) in a later turn, when its
    # connectionLost runs. The simulator has no event for that and these tests may not add one,
    # so this polls its own count of closed connections, one reactor turn at a time.
    for _ in range(100):
        if sim.connections_closed == sim.connections_opened:
            break
        await turn()
    assert sim.connections_closed == sim.connections_opened, "the simulator's connections did not close"
    # Nothing more to wait for on the proxy's side: on loopback each reset reaches its pooled
    # socket as the simulator's side closes, so the reactor turn in which the proxy accepts its
    # next client also reports the reset, and the pool drops that connection before it could
    # read the request and hand the connection out.


async def hang_up(answer: Deferred[Any]) -> None:
    """The client of ``answer`` goes away before it got a response, and nothing is left unhandled."""
    answer.cancel()
    try:
        await answer
    except ResponseNeverReceived as failure:  # the agent wraps the cancellation of its request
        assert all(reason.check(CancelledError) for reason in failure.reasons), failure.reasons
    else:
        raise AssertionError("the request was answered before its client hung up")


def pair(primary_sim, openai_sim, primary: dict[str, Any] | None = None, with_backup: bool = True) -> list[Any]:
    providers = [provider("primary", "openai", primary_sim.base_url, API_KEY, priority=1, **(primary or {}))]
    if with_backup:
        providers.append(provider("backup", "openai", openai_sim.base_url, "sk-openai-simulator-key", priority=2))
    return providers


def chat_body(stream: bool, model: str = "google/gemini-pro") -> dict[str, Any]:
    return {"model": model, "messages": HELLO, "stream": stream}


def text_of(lines: list[dict[str, Any]]) -> str:
    return "".join(line.get("message", {}).get("content", "") for line in lines)


def send(proxy: Any, body: dict[str, Any]) -> Deferred[Any]:
    """Start a chat request now; its Deferred fires with the response."""
    return ensureDeferred(http("POST", proxy.url + CHAT, body))


async def loaded(proxy: Any) -> None:
    r = await http("GET", proxy.url + "/api/tags")
    assert r.code == 200


# -- refused connections ----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_refused_connections_fall_over_to_the_backup(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)  # the primary's models are known...
    await take_down(primary_sim)  # ...then it goes away
    client = ollama.Client(host=proxy.url)
    parts = await in_thread(
        lambda: [c.message.content for c in client.chat(model="google/gemini-pro", messages=HELLO, stream=True)]
    )
    assert "".join(parts) == COMPLETE
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert (
        r.code == 200 and r.json()["message"]["content"] == COMPLETE and r.header("x-ollama-proxy-provider") == "backup"
    )
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert stats["failed_requests"] >= 2 and "cannot reach" in stats["last_error"]


@pytest_twisted.ensureDeferred
async def test_refused_connections_without_a_fallback_are_a_clear_error(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim, with_backup=False), openrouter=False)
    await loaded(proxy)
    await take_down(primary_sim)
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 502
    assert (
        r.json()["type"] == "openai_error"
        and "cannot reach" in r.json()["error"]
        and "ConnectionRefused" in r.json()["error"]
    )
    client = ollama.Client(host=proxy.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(client.chat, model="google/gemini-pro", messages=HELLO)
    assert caught.value.status_code == 502 and "cannot reach" in caught.value.error


# -- 5xx ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_500s_are_retried_then_the_backup_answers(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(500, count=10)
    client = ollama.Client(host=proxy.url)
    parts = await in_thread(
        lambda: [c.message.content for c in client.chat(model="google/gemini-pro", messages=HELLO, stream=True)]
    )
    assert "".join(parts) == COMPLETE
    assert len(primary_sim.chat_requests()) == 2  # the first attempt and one retry (FAST_RETRY)
    assert len(openai_sim.chat_requests()) == 1
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert (stats["failed_requests"], stats["retries"], stats["fallbacks"]) == (2, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_500_then_success_stays_on_the_primary(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(502)
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE and r.lines()[-1]["done"] is True
    assert r.header("x-ollama-proxy-provider") == "primary" and not openai_sim.chat_requests()


@pytest_twisted.ensureDeferred
async def test_every_provider_failing_names_them_all(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(500, count=10)
    openai_sim.fail_next(503, count=10)
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.code == 503  # the last provider's status; the message lists what was tried
    assert "tried primary: 500; backup: 503" in r.json()["error"]


# -- 429 ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_429_with_a_long_retry_after_falls_over_at_once(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(429, count=10, retry_after="30")  # over max_retry_after: no retry
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE
    assert len(primary_sim.chat_requests()) == 1 and r.header("x-ollama-proxy-provider") == "backup"


@pytest_twisted.ensureDeferred
async def test_429_retry_after_is_honoured_before_retrying(make_multi, primary_sim, openai_sim):
    clock = Clock()
    retry = RetryConfig(max_retries=2, base_delay=0.1, max_delay=0.1, max_retry_after=10, deadline=60)
    proxy = make_multi(pair(primary_sim, openai_sim, with_backup=False), openrouter=False, clock=clock, retry=retry)
    await loaded(proxy)
    primary_sim.fail_next(429, count=1, retry_after="3")
    first = primary_sim.wait_for_request()
    answer = send(proxy, chat_body(False))
    await first
    retried_at: list[float] = []
    primary_sim.wait_for_request().addCallback(lambda _: retried_at.append(clock.seconds()))
    r = await pump(clock, answer)
    assert r.code == 200 and r.json()["message"]["content"] == COMPLETE
    assert retried_at and retried_at[0] >= 3.0


@pytest_twisted.ensureDeferred
async def test_429_without_a_fallback_passes_retry_after_on(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim, with_backup=False), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(429, count=10, retry_after="30")
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 429 and r.header("retry-after") == "30" and "429 Too Many Requests" in r.json()["error"]


# -- stalls ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_stall_before_any_token_falls_over(make_multi, primary_sim, openai_sim):
    clock = Clock()
    proxy = make_multi(
        pair(primary_sim, openai_sim, {"timeouts": ProviderTimeouts(idle=5)}),
        openrouter=False,
        clock=clock,
        retry=RetryConfig(max_retries=0),
    )
    await loaded(proxy)
    primary_sim.behaviour = "silent"  # headers and a keep-alive, then nothing
    answer = send(proxy, chat_body(True))
    r = await pump(clock, answer)
    assert r.code == 200 and text_of(r.lines()) == COMPLETE and r.header("x-ollama-proxy-provider") == "backup"
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert "stalled" in stats["last_error"]


@pytest_twisted.ensureDeferred
async def test_no_response_headers_in_time_falls_over(make_multi, primary_sim, openai_sim):
    clock = Clock()
    proxy = make_multi(
        pair(primary_sim, openai_sim, {"timeouts": ProviderTimeouts(response=4)}),
        openrouter=False,
        clock=clock,
        retry=RetryConfig(max_retries=0),
    )
    await loaded(proxy)
    primary_sim.behaviour = "no-headers"
    answer = send(proxy, chat_body(False))
    r = await pump(clock, answer)
    assert r.code == 200 and r.json()["message"]["content"] == COMPLETE
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert "no response within 4 seconds" in stats["last_error"]


@pytest_twisted.ensureDeferred
async def test_stall_after_output_ends_the_stream_with_an_error_line(make_multi, primary_sim, openai_sim):
    clock = Clock()
    proxy = make_multi(
        pair(primary_sim, openai_sim, {"timeouts": ProviderTimeouts(idle=5)}), openrouter=False, clock=clock
    )
    await loaded(proxy)
    primary_sim.behaviour = "stall"  # one token, then silence
    answer = send(proxy, chat_body(True))
    r = await pump(clock, answer)
    lines = r.lines()
    assert r.code == 200 and lines[0]["message"]["content"] == "Echo:"
    assert "stalled" in lines[-1]["error"] and not lines[-1].get("done")
    assert not openai_sim.chat_requests()  # never switched after the first byte


# -- broken streams ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_midstream_error_after_output_is_not_retried(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.behaviour = "midstream-error"
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    lines = r.lines()
    assert r.code == 200 and text_of(lines[:-1]) == "Echo: hello"
    assert lines[-1] == {"error": "Upstream provider crashed mid-stream (code 502)"}
    assert not openai_sim.chat_requests() and len(primary_sim.chat_requests()) == 1
    client = ollama.Client(host=proxy.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(lambda: [c for c in client.chat(model="google/gemini-pro", messages=HELLO, stream=True)])
    assert "crashed mid-stream" in caught.value.error
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert stats["failed_requests"] == 2 and stats["circuit_breaker"]["window_failures"] == 2
    assert stats["last_error"] == "Upstream provider crashed mid-stream (code 502)"


@pytest_twisted.ensureDeferred
async def test_cut_connection_after_output_is_not_retried(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.behaviour = "cut"  # two words reach the client, then the connection drops
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    lines = r.lines()
    assert r.code == 200 and text_of(lines[:-1]) == "Echo: hello"
    assert "closed the stream before it was complete" in lines[-1]["error"]
    assert not openai_sim.chat_requests()


@pytest_twisted.ensureDeferred
async def test_cut_connection_before_any_byte_arrived_falls_over(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False, retry=RetryConfig(max_retries=0))
    await loaded(proxy)
    primary_sim.behaviour = "abort"  # aborted before its first bytes left the simulator
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE and r.header("x-ollama-proxy-provider") == "backup"


@pytest_twisted.ensureDeferred
async def test_broken_stream_of_a_non_streamed_answer_is_retried_elsewhere(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.behaviour = "midstream-error"  # nothing reached the client yet: it may switch
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(client.chat, model="google/gemini-pro", messages=HELLO)
    assert answer.message.content == COMPLETE  # no trace of the broken first attempt
    assert len(openai_sim.chat_requests()) == 1


@pytest_twisted.ensureDeferred
async def test_error_before_the_first_token_falls_over(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.behaviour = "error-first"
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE and r.lines()[-1]["done"]
    assert r.header("x-ollama-proxy-provider") == "backup"


# -- fallback models ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_fallback_model_answers_when_the_model_fails_everywhere(make_multi, primary_sim, openai_sim):
    from ollama_proxy.config.providers import RoutingConfig

    routing = RoutingConfig(fallbacks=(("sim/fail-503", ("sim/fail-500", "google/gemini-pro")),))
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False, routing=routing)
    await loaded(proxy)
    client = ollama.Client(host=proxy.url)
    parts = await in_thread(
        lambda: [c.message.content for c in client.chat(model="sim/fail-503", messages=HELLO, stream=True)]
    )
    assert "".join(parts) == COMPLETE
    r = await http("POST", proxy.url + CHAT, chat_body(False, model="sim/fail-503"))
    assert r.code == 200 and r.json()["model"] == "sim/fail-503"  # the client's name, whoever answered
    assert r.header("x-ollama-proxy-model") == "google/gemini-pro" and r.header("x-ollama-proxy-provider") == "primary"


@pytest_twisted.ensureDeferred
async def test_no_fallback_model_is_a_clear_error(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    client = ollama.Client(host=proxy.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(client.chat, model="sim/fail-503", messages=HELLO)
    assert caught.value.status_code == 503
    assert (
        "503 Service Unavailable: simulated 503" in caught.value.error
        and "tried primary: 503; backup: 503" in caught.value.error
    )


# -- statuses that do not retry ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_400_goes_straight_to_the_client(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(400)
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 400 and not openai_sim.chat_requests() and len(primary_sim.chat_requests()) == 1


@pytest_twisted.ensureDeferred
async def test_404_on_one_provider_tries_the_next(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(404)  # its list is stale: the model is gone there
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "backup"
    breaker = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()["circuit_breaker_state"]
    assert breaker == "closed"


@pytest_twisted.ensureDeferred
async def test_401_opens_the_breaker_for_long_and_falls_over(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(401)
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "backup"
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert stats["circuit_breaker_state"] == "open" and stats["circuit_breaker"]["open_remaining_seconds"] > 400
    assert stats["healthy"] is False
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.header("x-ollama-proxy-provider") == "backup" and len(primary_sim.chat_requests()) == 1


# -- breakers ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_breaker_opens_then_the_failing_provider_is_skipped(make_multi, primary_sim, openai_sim):
    breaker = BreakerConfig(consecutive_failures=2, open_wait=30, jitter=0)
    proxy = make_multi(
        pair(primary_sim, openai_sim), openrouter=False, breaker=breaker, retry=RetryConfig(max_retries=0)
    )
    await loaded(proxy)
    primary_sim.fail_next(500, count=100)
    for _ in range(4):
        r = await http("POST", proxy.url + CHAT, chat_body(False))
        assert r.code == 200 and r.json()["message"]["content"] == COMPLETE
    assert len(primary_sim.chat_requests()) == 2  # open after two failures: not asked again
    listed = {p["name"]: p for p in (await http("GET", proxy.url + "/api/providers")).json()["providers"]}
    assert listed["primary"]["circuit_breaker_state"] == "open" and listed["primary"]["healthy"] is False
    assert listed["backup"]["circuit_breaker_state"] == "closed"
    health = (await http("GET", proxy.url + "/health")).json()
    assert health["status"] == "degraded" and any("circuit breaker of primary is open" in r for r in health["reasons"])


@pytest_twisted.ensureDeferred
async def test_half_open_probe_closes_the_breaker_after_the_wait(make_multi, primary_sim, openai_sim):
    clock = Clock()
    breaker = BreakerConfig(consecutive_failures=1, open_wait=10, jitter=0)
    proxy = make_multi(
        pair(primary_sim, openai_sim), openrouter=False, breaker=breaker, retry=RetryConfig(max_retries=0), clock=clock
    )
    await loaded(proxy)
    primary_sim.fail_next(500)
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.header("x-ollama-proxy-provider") == "backup"
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.header("x-ollama-proxy-provider") == "backup"  # still open
    clock.advance(10)
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.header("x-ollama-proxy-provider") == "primary"  # the probe went through and succeeded
    state = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()["circuit_breaker_state"]
    assert state == "closed"


@pytest_twisted.ensureDeferred
async def test_when_every_breaker_is_open_one_is_tried_anyway(make_multi, primary_sim, openai_sim):
    breaker = BreakerConfig(consecutive_failures=1, open_wait=300, jitter=0)
    proxy = make_multi(
        pair(primary_sim, openai_sim, with_backup=False),
        openrouter=False,
        breaker=breaker,
        retry=RetryConfig(max_retries=0),
    )
    await loaded(proxy)
    primary_sim.fail_next(500)
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.code == 502 and "500 Internal Server Error" in r.json()["error"]
    # the only provider is open for five minutes, but it has recovered: try it rather than fail
    r = await http("POST", proxy.url + CHAT, chat_body(False))
    assert r.code == 200 and r.json()["message"]["content"] == COMPLETE
    state = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()["circuit_breaker_state"]
    assert state == "closed"


# -- concurrency limit ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_busy_provider_answers_503_like_ollama(make_multi, primary_sim, openai_sim):
    proxy = make_multi(
        pair(primary_sim, openai_sim, {"max_in_flight": 1, "max_queue": 0}, with_backup=False), openrouter=False
    )
    await loaded(proxy)
    primary_sim.behaviour = "silent"  # holds its slot
    started = primary_sim.wait_for_request()
    first = send(proxy, chat_body(True))
    await started
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 503 and r.json()["error"] == BUSY_MESSAGE
    client = ollama.Client(host=proxy.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(client.chat, model="google/gemini-pro", messages=HELLO)
    assert caught.value.status_code == 503
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert stats["rejected_requests"] == 2 and stats["in_flight"] == 1
    # The held client goes away: the proxy closes its upstream stream and frees the slot.
    aborted = primary_sim.wait_for_abort()
    await hang_up(first)
    await aborted
    primary_sim.behaviour = None
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE
    stats = (await http("GET", proxy.url + "/api/providers/primary/stats")).json()
    assert stats["in_flight"] == 0 and stats["cancelled_requests"] == 1


@pytest_twisted.ensureDeferred
async def test_busy_provider_gives_way_to_the_backup(make_multi, primary_sim, openai_sim):
    proxy = make_multi(pair(primary_sim, openai_sim, {"max_in_flight": 1, "max_queue": 5}), openrouter=False)
    await loaded(proxy)
    primary_sim.behaviour = "silent"
    started = primary_sim.wait_for_request()
    first = send(proxy, chat_body(True))
    await started
    r = await http("POST", proxy.url + CHAT, chat_body(True))
    assert r.code == 200 and text_of(r.lines()) == COMPLETE and r.header("x-ollama-proxy-provider") == "backup"
    aborted = primary_sim.wait_for_abort()
    await hang_up(first)
    await aborted


# -- embeddings ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_embeddings_fall_over_too(make_multi, primary_sim, openai_sim):
    for sim in (primary_sim, openai_sim):
        sim.chat_models = sim.chat_models + EMBEDDING_MODELS  # OpenAI lists them with the rest
    proxy = make_multi(pair(primary_sim, openai_sim), openrouter=False)
    await loaded(proxy)
    primary_sim.fail_next(503, count=10)
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(client.embed, model="openai/text-embedding-3-small", input=["a", "b"])
    assert len(answer.embeddings) == 2
    assert [r.path for r in openai_sim.requests if r.method == "POST"] == ["/v1/embeddings"]
