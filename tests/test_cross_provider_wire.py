"""Tools, thinking and vision through the Ollama API when the upstream is not
OpenAI-shaped: Anthropic's Messages API and a real Ollama server. Each provider
speaks OpenAI chunks inward; these tests prove the translation holds end to end
with the official ollama client."""

from __future__ import annotations

import base64

import ollama
import pytest_twisted

from .conftest import http, in_thread
from .multi import ANTHROPIC_KEY, provider

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a thing up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def claude_proxy(make_multi, anthropic_sim):
    return make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], openrouter=False)


@pytest_twisted.ensureDeferred
async def test_anthropic_tool_round_trip_with_the_ollama_client(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    client = ollama.Client(host=proxy.url)
    messages = [{"role": "user", "content": "find cats"}]
    first = await in_thread(client.chat, model="claude-sonnet-4-5", messages=messages, tools=TOOLS)
    [call] = first.message.tool_calls
    assert call.function.name == "lookup" and call.function.arguments == {"query": "find cats"}
    assert first.done_reason == "stop"
    messages += [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_name": "lookup", "content": "three cats"},
    ]
    second = await in_thread(client.chat, model="claude-sonnet-4-5", messages=messages, tools=TOOLS)
    assert second.message.content == "Tool said: three cats"
    sent = anthropic_sim.posts("/v1/messages")[-1].body
    tool_use = sent["messages"][1]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["input"] == {"query": "find cats"}
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"
    assert sent["messages"][2]["content"][0]["tool_use_id"] == tool_use["id"]


@pytest_twisted.ensureDeferred
async def test_anthropic_thinking_streams_as_thinking(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    client = ollama.Client(host=proxy.url)
    parts = await in_thread(
        lambda: list(
            client.chat(
                model="claude-sonnet-4-5", messages=[{"role": "user", "content": "why"}], think=True, stream=True
            )
        )
    )
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content or "" for p in parts)
    assert thinking.strip() == "Thinking about: why" and content == "Echo: why"
    assert "thinking" in anthropic_sim.posts("/v1/messages")[-1].body


@pytest_twisted.ensureDeferred
async def test_anthropic_images_become_image_blocks(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    answer = await in_thread(
        ollama.Client(host=proxy.url).chat,
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "what is this", "images": [PNG]}],
    )
    assert answer.message.content.startswith("Echo: what is this")
    blocks = anthropic_sim.posts("/v1/messages")[-1].body["messages"][0]["content"]
    image = next(b for b in blocks if b["type"] == "image")
    assert image["source"]["media_type"] == "image/png" and image["source"]["data"] == PNG


@pytest_twisted.ensureDeferred
async def test_ollama_upstream_tools_and_thinking_with_the_ollama_client(make_multi, ollama_sim):
    proxy = make_multi([provider("local", "ollama", ollama_sim.base_url)], openrouter=False)
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(
        client.chat, model="qwen3:8b", messages=[{"role": "user", "content": "find cats"}], tools=TOOLS, think=True
    )
    [call] = answer.message.tool_calls
    assert call.function.name == "lookup" and call.function.arguments == {"query": "find cats"}
    assert answer.message.thinking == "Thinking about: find cats"
    sent = ollama_sim.posts("/api/chat")[-1].body
    assert sent["tools"][0]["function"]["name"] == "lookup" and sent["think"] is True
    # A model whose /api/show lacks the capability is refused as Ollama refuses it.
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "think": True},
    )
    assert r.code == 400 and "does not support thinking" in r.json()["error"]
