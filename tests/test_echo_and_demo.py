"""The built-in echo provider and ``--demo``: offline, deterministic, never on by itself."""

from __future__ import annotations

import ollama
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.config.settings import load_config
from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.echo import EchoProvider, echo_words, embed_text
from ollama_proxy.providers.registry import provider_configs
from ollama_proxy.service import makeService
from ollama_proxy.tap import Options

from .conftest import http, in_thread


def test_echo_words_and_vectors_are_deterministic():
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "the  last one"}]},
    ]
    assert echo_words(messages) == ["the", " last", " one"]
    assert echo_words([]) == []
    a, b = embed_text("red apple"), embed_text("red apple")
    assert a == b and len(a) == 16 and abs(sum(v * v for v in a) - 1) < 1e-4
    assert embed_text("red apple", 4) != embed_text("green pear", 4)
    assert embed_text("") == [0.0] * 16

    # texts sharing words point more the same way than texts sharing none
    def cosine(x, y):
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cosine(embed_text("red apple pie"), embed_text("red apple tart")) > cosine(
        embed_text("red apple pie"), embed_text("blue ocean wave")
    )


def test_echo_stream_is_paced_by_the_clock_and_can_be_stopped():
    clock = Clock()
    provider = EchoProvider(clock, delay=1.0)
    stream = provider.open_chat(
        {"model": "echo", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 2}
    ).result
    chunks = []
    done = stream.deliver(chunks.append)
    texts = lambda: [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]  # noqa: E731
    assert texts() == ["a"]
    clock.advance(1)
    assert texts() == ["a", " b"]
    stream.pauseProducing()
    clock.advance(5)  # the finish chunk is due, but a paused stream sends nothing
    assert texts() == ["a", " b"] and not done.called
    stream.resumeProducing()
    assert texts() == ["a", " b", None]  # the finish chunk at once; the usage one a pace later
    clock.advance(1)
    assert done.called and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    endless = provider.open_chat({"model": "echo", "messages": [{"role": "user", "content": "x y"}]}).result
    cut = endless.deliver(lambda chunk: None)
    endless.stopProducing()
    failures = []
    cut.addErrback(failures.append)
    assert failures[0].check(CancelledError) and not clock.getDelayedCalls()


def test_echo_refuses_other_models():
    provider = EchoProvider(Clock())
    failures = []
    provider.open_chat({"model": "gpt-4", "messages": []}).addErrback(failures.append)
    provider.embed("echo", ["x"]).addErrback(failures.append)
    assert failures[0].check(UpstreamError) and failures[0].value.upstream_status == 404
    assert failures[1].value.status == 400


def test_echo_is_never_on_by_itself(tmp_path):
    assert [p.type for p in provider_configs(load_config(environ={}))] == ["openrouter"]
    assert [p.type for p in provider_configs(load_config(environ={"OPENROUTER_API_KEY": "k"}))] == ["openrouter"]
    demo = provider_configs(load_config(environ={}, demo=True))
    assert [p.type for p in demo] == ["echo"]  # no key and a demo: OpenRouter stays out of the way
    assert [p.type for p in provider_configs(load_config(environ={"OPENROUTER_API_KEY": "k"}, demo=True))] == [
        "openrouter",
        "echo",
    ]
    path = tmp_path / "p.toml"
    path.write_text('[[providers]]\nname = "canned"\ntype = "echo"\n')
    assert [p.name for p in provider_configs(load_config(environ={}, config_file=str(path), demo=True))] == ["canned"]


def test_demo_command_line_flag():
    options = Options()
    options.parseOptions(["--demo", "--listen", "tcp:0"])
    assert options["demo"] and options["listen"] == ["tcp:0"]
    plain = Options()
    plain.parseOptions([])
    assert not plain["demo"]


@pytest_twisted.ensureDeferred
async def test_demo_proxy_works_offline_with_the_ollama_client():
    config = load_config(environ={}, listen=["tcp:0:interface=127.0.0.1"], demo=True)
    service = makeService(config, global_reactor)
    service.startService()
    try:
        url = f"http://127.0.0.1:{service.listening_ports()[0].getHost().port}"
        client = ollama.Client(host=url)
        listing = await in_thread(client.list)
        assert sorted(m.model for m in listing.models) == [
            "echo-embed:latest",
            "echo-think:latest",
            "echo-vision:latest",
            "echo:latest",
        ]
        answer = await in_thread(
            client.chat, model="echo", messages=[{"role": "user", "content": "hello offline world"}]
        )
        assert answer.message.content == "hello offline world"
        words = await in_thread(
            lambda: [c.response for c in client.generate(model="echo", prompt="one two three", stream=True)]
        )
        assert "".join(w or "" for w in words) == "one two three"
        vectors = await in_thread(client.embed, model="echo-embed", input="hello")
        assert vectors.embeddings[0] == embed_text("hello")
        health = (await http("GET", url + "/health")).json()
        assert health["status"] == "healthy" and health["providers"] == {"echo": "healthy"}
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_echo_beside_other_providers_via_config(make_multi):
    proxy = make_multi([ProviderConfig(name="canned", type="echo", priority=50)])
    r = await http("GET", proxy.url + "/api/tags/canned")
    assert sorted(e["name"] for e in r.json()["models"]) == [
        "echo-embed:latest",
        "echo-think:latest",
        "echo-vision:latest",
        "echo:latest",
    ]
    r = await http("POST", proxy.url + "/api/generate", {"model": "canned/echo", "prompt": "by name", "stream": False})
    assert r.code == 200 and r.json()["response"] == "by name"


@pytest_twisted.ensureDeferred
async def test_the_api_mounted_alone_over_one_provider():
    """An embedding program may hand OllamaAPI a router over one provider."""
    from twisted.web.server import Site

    from ollama_proxy.api.native import HealthState, OllamaAPI
    from ollama_proxy.ops.stats import Stats
    from ollama_proxy.routing.modelfilter import ModelFilter
    from ollama_proxy.routing.router import Router

    config = load_config(environ={})
    echo = EchoProvider(global_reactor)
    router = Router.single(echo, config, global_reactor, ModelFilter(deny=["echo-embed"]))
    api = OllamaAPI(config, router, Stats(global_reactor), HealthState(), global_reactor)
    port = global_reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        r = await http(
            "POST",
            url + "/api/chat",
            {"model": "echo", "messages": [{"role": "user", "content": "just one"}], "stream": False},
        )
        assert r.code == 200 and r.json()["message"]["content"] == "just one"
        assert [e["name"] for e in (await http("GET", url + "/api/tags")).json()["models"]] == [
            "echo-think:latest",
            "echo-vision:latest",
            "echo:latest",
        ]
        r = await http("POST", url + "/api/embed", {"model": "echo-embed", "input": "x"})
        assert r.code == 403
        assert [p["name"] for p in (await http("GET", url + "/api/providers")).json()["providers"]] == ["echo"]
    finally:
        await port.stopListening()
