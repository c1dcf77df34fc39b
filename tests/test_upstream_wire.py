"""What reaches the upstream, and what the proxy does with its connections to it.

- OpenRouter's optional attribution headers (``HTTP-Referer``, ``X-Title``) go on
  every request when configured, model lists included, and on none when not.
- The official ``ollama`` client's model-management calls get a 501 it turns
  into ``ResponseError``, and nothing of them goes upstream.
- Once the service has stopped, no connection to an upstream is left open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ollama
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from ollama_proxy.config.settings import OpenRouterConfig

from .conftest import LineReader, http, in_thread
from .multi import provider
from .simulator import API_KEY, UpstreamSimulator

REFERER = "https://gateway.example.org/chat"
TITLE = "Example Gateway"
HELLO = [{"role": "user", "content": "hello there"}]


async def some_traffic(proxy: Any) -> None:
    """A chat (plain and streamed, native and /v1), an embedding, the model list."""
    assert (await http("GET", proxy.url + "/api/tags")).code == 200
    for stream in (False, True):
        r = await http(
            "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": HELLO, "stream": stream}
        )
        assert r.code == 200, r.body
    r = await http(
        "POST", proxy.url + "/v1/chat/completions", {"model": "google/gemini-pro", "messages": HELLO, "stream": True}
    )
    assert r.code == 200 and r.body.endswith(b"data: [DONE]\n\n"), r.body[-200:]
    r = await http("POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": ["a", "b"]})
    assert r.code == 200, r.body


# -- attribution headers ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_attribution_headers_reach_openrouter_on_every_request(make_proxy, simulator):
    router = OpenRouterConfig(api_key=API_KEY, base_url=simulator.base_url, http_referer=REFERER, x_title=TITLE)
    proxy = make_proxy(openrouter=router)
    await some_traffic(proxy)
    client = ollama.Client(host=proxy.url)
    assert (
        await in_thread(client.chat, model="google/gemini-pro", messages=HELLO)
    ).message.content == "Echo: hello there"
    paths = {(r.method, r.path) for r in simulator.requests}
    # Every kind of upstream call happened: both model lists, chats, embeddings.
    assert {
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/embeddings/models"),
        ("POST", "/api/v1/chat/completions"),
        ("POST", "/api/v1/embeddings"),
    } <= paths, paths
    for request in simulator.requests:
        assert request.headers.get("http-referer") == REFERER, (request.method, request.path, request.headers)
        assert request.headers.get("x-title") == TITLE, (request.method, request.path, request.headers)


@pytest_twisted.ensureDeferred
async def test_no_attribution_headers_unless_configured(proxy, simulator):
    await some_traffic(proxy)
    assert {r.path for r in simulator.requests} >= {"/api/v1/models", "/api/v1/chat/completions"}
    for request in simulator.requests:
        assert "http-referer" not in request.headers and "x-title" not in request.headers, (
            request.path,
            request.headers,
        )
        assert request.headers.get("authorization") == f"Bearer {API_KEY}"  # the headers were recorded at all


# -- model management through the official client ---------------------------------------------
MANAGEMENT: dict[str, Callable[[ollama.Client], Any]] = {
    "create": lambda c: c.create(model="mine", from_="google/gemini-pro", system="Be brief."),
    "create-streamed": lambda c: list(c.create(model="mine", from_="google/gemini-pro", stream=True)),
    "copy": lambda c: c.copy("google/gemini-pro", "mine"),
    "delete": lambda c: c.delete("google/gemini-pro"),
    "push": lambda c: c.push("someone/mine"),
    "push-streamed": lambda c: list(c.push("someone/mine", stream=True)),
}


@pytest.mark.parametrize("call", list(MANAGEMENT))
@pytest_twisted.ensureDeferred
async def test_the_client_s_model_management_calls_raise_501(proxy, simulator, call):
    client = ollama.Client(host=proxy.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(MANAGEMENT[call], client)
    assert caught.value.status_code == 501
    assert "is not supported" in caught.value.error and "manages no local ones" in caught.value.error
    assert [r for r in simulator.requests if r.method != "GET"] == []  # nothing of it went upstream


@pytest_twisted.ensureDeferred
async def test_the_client_s_blob_upload_raises_501(proxy, simulator, tmp_path):
    blob = tmp_path / "adapter.bin"
    blob.write_bytes(b"\x00weights\x01" * 64)
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(ollama.Client(host=proxy.url).create_blob, blob)
    assert caught.value.status_code == 501 and "/api/blobs/sha256:" in caught.value.error
    assert [r for r in simulator.requests if r.method != "GET"] == []


# -- connections after the stop -----------------------------------------------------------------
async def all_closed(*sims: UpstreamSimulator, turns: int = 100) -> None:
    """Wait until every connection each simulator accepted is closed again.

    The proxy's stop fires once its own ends of the pooled connections are closed; the
    simulator's ends read that close in a later reactor turn. The simulator counts its
    connections but has no event for a close (and these tests add nothing to it), so
    this polls the counts with zero-delay ``deferLater`` calls: bounded by a number of
    turns, not by a time, so a connection left open fails the test rather than hangs it.
    """
    for _ in range(turns):
        if all(s.connections_closed == s.connections_opened for s in sims):
            return
        await deferLater(global_reactor, 0, lambda: None)
    counts = {s.base_url: (s.connections_opened, s.connections_closed) for s in sims}  # type: ignore[attr-defined]
    raise AssertionError(f"upstream connections still open after {turns} turns (opened, closed): {counts}")


async def streams_at_once(proxy: Any, simulator: UpstreamSimulator, count: int) -> None:
    """``count`` streams at the same time, so each needs an upstream connection of its own."""
    readers = []
    for _ in range(count):
        reader = LineReader()
        await reader.connect(proxy.port, "/api/chat", {"model": "sim/hold", "messages": HELLO, "stream": True})
        # Its first line reached the client: upstream, the stream sent its first token and holds.
        await reader.wait_for_lines(1)
        readers.append(reader)
    assert len(simulator.held) == count
    simulator.release_holds()
    for reader in readers:
        lines = [json.loads(line) for line in await reader.wait_for_lines(4)]
        assert (
            "".join(line["message"]["content"] for line in lines) == "Echo: hello there" and lines[-1]["done"] is True
        ), lines
        reader.hang_up()


@pytest_twisted.ensureDeferred
async def test_stopping_closes_every_upstream_connection(proxy, simulator):
    await some_traffic(proxy)
    await streams_at_once(proxy, simulator, 3)
    # Three connections were needed at once, and the pool keeps them for the next requests.
    assert simulator.connections_opened - simulator.connections_closed >= 3, (
        simulator.connections_opened,
        simulator.connections_closed,
    )
    await proxy.service.stopService()
    await all_closed(simulator)


@pytest_twisted.ensureDeferred
async def test_stopping_closes_the_connections_of_every_provider(make_multi, simulator, openai_sim):
    proxy = make_multi([provider("backup", "openai", openai_sim.base_url, "sk-openai-simulator-key", priority=2)])
    chat = {"model": "google/gemini-pro", "messages": HELLO, "stream": False}
    r = await http("POST", proxy.url + "/api/chat", chat)
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "openrouter"
    simulator.fail_next(503, count=2)  # OpenRouter fails (and its one retry): the backup answers
    r = await http("POST", proxy.url + "/api/chat", chat)
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "backup", (r.code, r.body)
    for sim in (simulator, openai_sim):
        assert sim.connections_opened > sim.connections_closed, (sim.connections_opened, sim.connections_closed)
    await proxy.service.stopService()
    await all_closed(simulator, openai_sim)


@pytest_twisted.ensureDeferred
async def test_chat_requests_ask_for_no_content_coding(proxy, simulator):
    # The lean client reads bodies as they come: it asks for identity (with no
    # Accept-Encoding at all a server may pick any coding, RFC 9110 12.5.3).
    await some_traffic(proxy)
    chats = [r for r in simulator.requests if r.path.endswith("/chat/completions")]
    assert chats and all(r.headers.get("accept-encoding") == "identity" for r in chats)
