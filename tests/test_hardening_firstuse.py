"""A first-time user's way in: no key, the demo (issue 10, items 18, 19 and 21)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import ollama
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from ollama_proxy.config.settings import OpenRouterConfig, load_config
from ollama_proxy.providers import demo
from ollama_proxy.service import makeService

from .conftest import base_config, http, in_thread


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_no_key_is_a_503_naming_it_even_when_the_model_list_needs_the_key(make_proxy, simulator, path):
    # A compatible server whose /models wants the key too (OpenRouter's does not).
    simulator.models_status = 401
    proxy = make_proxy(openrouter=OpenRouterConfig(api_key=None, base_url=simulator.base_url))
    r = await http(
        "POST", proxy.url + path, {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 503
    message = r.json()["error"] if path.startswith("/api") else r.json()["error"]["message"]
    assert "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)" in message
    health = (await http("GET", proxy.url + "/health")).json()
    assert "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)" in health["reasons"]


@pytest_twisted.ensureDeferred
async def test_no_key_with_a_public_model_list_is_a_503_too(make_proxy, simulator):
    proxy = make_proxy(openrouter=OpenRouterConfig(api_key=None, base_url=simulator.base_url))
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 503 and "set OPENROUTER_API_KEY" in r.json()["error"]


def _warnings_until(count: int) -> tuple[list[str], Deferred[None]]:
    """The start-up explanations logged, and a Deferred that fires once ``count`` came."""
    seen: list[str] = []
    done: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "inference will fail" in text or "--demo" in text:
            seen.append(text)
            if len(seen) == count and not done.called:
                done.callback(None)

    globalLogPublisher.addObserver(observe)
    done.addBoth(lambda result: (globalLogPublisher.removeObserver(observe), result)[1])
    return seen, done


@pytest.mark.parametrize(
    ("api_key", "base_url", "reason"),
    [
        (None, None, "no API key is configured for OpenRouter (set OPENROUTER_API_KEY)"),
        ("sk-or-anything", "http://127.0.0.1:1/api/v1", "OpenRouter cannot be reached: "),
    ],
)
@pytest_twisted.ensureDeferred
async def test_start_up_says_once_why_inference_will_fail(simulator, api_key, base_url, reason):
    seen, logged = _warnings_until(2)
    clock = Clock()
    config = base_config(
        simulator, openrouter=OpenRouterConfig(api_key=api_key, base_url=base_url or simulator.base_url)
    )
    service = makeService(config, reactor, clock=clock)
    service.startService()
    try:
        await logged
        assert reason in seen[0] and "--demo" in seen[1]
        clock.advance(config.model_refresh_interval)  # the next refresh does not repeat it
        await service.router.refresh_quietly()
        assert len(seen) == 2
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_working_provider_is_no_blocker(proxy):
    await proxy.service.router.refresh()
    assert proxy.service.router.blockers() == []


# -- the demo: tools, thinking, vision (item 21) -----------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "days", "unit"],
        },
    },
}
# Tools a chat front end offers with every message (Open WebUI sends its built-in ones).
BUILT_IN = [
    {"type": "function", "function": {"name": "search_web", "parameters": {"type": "object", "properties": {}}}},
    {
        "type": "function",
        "function": {
            "name": "query_memory",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
]
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()


def test_demo_answers_are_pure_and_deterministic():
    plain = demo.echo({"messages": [{"role": "user", "content": "hello there"}], "tools": BUILT_IN})
    assert plain.deltas == [{"content": "hello"}, {"content": " there"}] and plain.finish == "stop"
    call = demo.echo({"messages": [{"role": "user", "content": "get_weather Paris in 3 days"}], "tools": [WEATHER]})
    assert call.finish == "tool_calls"
    function = call.deltas[0]["tool_calls"][0]["function"]
    assert function["name"] == "get_weather"
    assert json.loads(function["arguments"]) == {"city": "Paris in 3 days", "days": 3, "unit": "c"}
    refused = {"messages": [{"role": "user", "content": "get_weather x"}], "tools": [WEATHER], "tool_choice": "none"}
    assert demo.echo(refused).finish == "stop"
    after = demo.echo(
        {
            "messages": [
                {"role": "user", "content": "get_weather Paris"},
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "get_weather"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny, 21 C"},
            ],
            "tools": [WEATHER],
        }
    )
    assert after.deltas == [{"content": "sunny,"}, {"content": " 21"}, {"content": " C"}]
    thought = demo.think({"messages": [{"role": "user", "content": "a b"}]})
    assert [list(d) for d in thought.deltas][:2] == [["reasoning"], ["reasoning"]]
    assert thought.deltas[-2:] == [{"content": "a"}, {"content": " b"}]
    quiet = demo.think({"messages": [{"role": "user", "content": "a b"}], "reasoning": {"enabled": False}})
    assert quiet.deltas == [{"content": "a"}, {"content": " b"}]


@pytest.fixture
def demo_url() -> Any:
    config = load_config(environ={}, listen=["tcp:0:interface=127.0.0.1"], demo=True)
    service = makeService(config, reactor)
    service.startService()
    yield f"http://127.0.0.1:{service.listening_ports()[0].getHost().port}"
    pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
async def test_the_demo_shows_tools_thinking_and_vision_to_the_ollama_client(demo_url):
    client = ollama.Client(host=demo_url)
    shown = {m: (await in_thread(client.show, m)).capabilities for m in ("echo", "echo-think", "echo-vision")}
    assert shown == {
        "echo": ["completion", "tools"],
        "echo-think": ["completion", "thinking"],
        "echo-vision": ["completion", "vision"],
    }
    # Tools sent with every chat: the first message is a plain echo, not an error.
    hello = await in_thread(client.chat, model="echo", messages=[{"role": "user", "content": "hello"}], tools=BUILT_IN)
    assert hello.message.content == "hello" and not hello.message.tool_calls
    asked = [{"role": "user", "content": "get_weather Oslo for 2 days"}]
    called = await in_thread(client.chat, model="echo", messages=asked, tools=[WEATHER, *BUILT_IN])
    (call,) = called.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Oslo for 2 days", "days": 2, "unit": "c"}
    answered = [*asked, called.message, {"role": "tool", "content": "snow", "tool_name": "get_weather"}]
    final = await in_thread(client.chat, model="echo", messages=answered, tools=[WEATHER])
    assert final.message.content == "snow"
    thought = await in_thread(
        client.chat, model="echo-think", messages=[{"role": "user", "content": "x y"}], think=True
    )
    assert thought.message.thinking == "The user wrote 2 words. I will repeat them, word by word."
    assert thought.message.content == "x y"
    unthought = await in_thread(
        client.chat, model="echo-think", messages=[{"role": "user", "content": "x"}], think=False
    )
    assert not unthought.message.thinking and unthought.message.content == "x"
    seen = await in_thread(
        client.chat, model="echo-vision", messages=[{"role": "user", "content": "what is it?", "images": [PNG]}]
    )
    size = len(base64.b64decode(PNG))
    assert seen.message.content == f"I see 1 image (image 1: image/png, {size} bytes). what is it?"


@pytest_twisted.ensureDeferred
async def test_the_demo_tool_call_streams_on_v1(demo_url):
    body = {
        "model": "echo",
        "stream": True,
        "messages": [{"role": "user", "content": "please get_weather Rome"}],
        "tools": [WEATHER],
    }
    r = await http("POST", demo_url + "/v1/chat/completions", body)
    events = [json.loads(line[6:]) for line in r.body.decode().splitlines() if line.startswith("data: {")]
    calls = [c for e in events for choice in e["choices"] for c in choice["delta"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"])["city"] == "please Rome"
    assert [choice["finish_reason"] for e in events for choice in e["choices"] if choice["finish_reason"]] == [
        "tool_calls"
    ]


def test_the_quick_start_begins_with_the_demo():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = quick_start.split("```sh\n")[1:]
    assert "ollama-proxy --demo" in blocks[0].split("```")[0]
    tried = blocks[1].split("```")[0]
    assert "curl http://127.0.0.1:11434/api/chat" in tried and "import ollama" in tried
