"""Providers whose ``/models`` lists bare entries (OpenAI's own API, Groq, vLLM, LM Studio,
llama.cpp: ``{id, object, created, owned_by}``, no ``supported_parameters``): their models
chat with tools on every surface, as Claude Code and Codex need; a published list without
``tools`` still means no tools."""

from __future__ import annotations

import base64

import anthropic
import openai
import pytest_twisted

from ollama_proxy.wire.models import from_openrouter

from .conftest import http, in_thread
from .multi import provider

KEY = "sk-openai-simulator-key"
LOOKUP = {
    "name": "lookup",
    "description": "Look a thing up",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def bare_proxy(make_multi, openai_sim):
    openai_sim.listing = "bare"
    return make_multi([provider("openai", "openai", openai_sim.base_url, KEY)], openrouter=False)


def test_an_absent_list_assumes_tools_and_a_published_one_is_believed():
    bare = from_openrouter({"id": "gpt-4o", "object": "model", "owned_by": "system"}, "openai")
    assert bare is not None and bare.capabilities() == ["completion", "tools"]
    assert not bare.refuses("tools") and not bare.refuses("vision") and bare.refuses("thinking")
    listed = from_openrouter({"id": "m", "supported_parameters": ["temperature"]}, "openrouter")
    assert listed is not None and listed.capabilities() == ["completion"]
    assert listed.refuses("tools") and listed.refuses("vision")


@pytest_twisted.ensureDeferred
async def test_claude_code_and_codex_use_tools_over_a_bare_listing(make_multi, openai_sim):
    proxy = bare_proxy(make_multi, openai_sim)
    claude = anthropic.Anthropic(base_url=proxy.url, api_key="ollama", max_retries=0)
    message = await in_thread(
        claude.messages.create,
        model="openai/gpt-4o-mini",
        max_tokens=40,
        tools=[LOOKUP],
        messages=[{"role": "user", "content": 'call lookup {"query": "x"}'}],
    )
    assert message.stop_reason == "tool_use" and message.content[-1].input == {"query": "x"}
    assert openai_sim.chat_requests()[-1].body["tools"][0]["function"]["name"] == "lookup"

    codex = openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)
    response = await in_thread(
        codex.responses.create,
        model="openai/gpt-4o-mini",
        input='call lookup {"query": "y"}',
        tools=[{"type": "function", "name": "lookup", "parameters": LOOKUP["input_schema"]}],
    )
    call = response.output[-1]
    assert call.type == "function_call" and call.name == "lookup" and call.arguments == '{"query": "y"}'
    chat = await in_thread(
        codex.chat.completions.create,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": 'call lookup {"query": "z"}'}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": LOOKUP["input_schema"]}}],
    )
    assert chat.choices[0].message.tool_calls[0].function.name == "lookup"


@pytest_twisted.ensureDeferred
async def test_native_chat_with_tools_and_show_over_a_bare_listing(make_multi, openai_sim):
    proxy = bare_proxy(make_multi, openai_sim)
    show = await http("POST", proxy.url + "/api/show", {"model": "openai/gpt-4o-mini"})
    assert show.code == 200 and show.json()["capabilities"] == ["completion", "tools"]
    tool = {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP["input_schema"]}}
    answer = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": "openai/gpt-4o-mini",
            "stream": False,
            "tools": [tool],
            "messages": [{"role": "user", "content": 'call lookup {"query": "w"}'}],
        },
    )
    assert answer.code == 200, answer.body
    assert answer.json()["message"]["tool_calls"][0]["function"]["arguments"] == {"query": "w"}
    # Images go upstream, which knows whether the model sees; thinking is not assumed.
    seen = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": "openai/gpt-4o-mini",
            "stream": False,
            "messages": [{"role": "user", "content": "a", "images": [PNG]}],
        },
    )
    assert seen.code == 200 and seen.json()["message"]["content"].endswith("[image/png]")
    think = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "openai/gpt-4o-mini", "think": True, "messages": [{"role": "user", "content": "a"}]},
    )
    assert think.code == 400 and "does not support thinking" in think.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_published_list_without_tools_still_refuses_them(make_multi, openai_sim):
    # The default listing publishes supported_parameters; google/gemini-pro's lacks tools.
    proxy = make_multi([provider("openai", "openai", openai_sim.base_url, KEY)], openrouter=False)
    claude = anthropic.Anthropic(base_url=proxy.url, api_key="ollama", max_retries=0)
    try:
        await in_thread(
            claude.messages.create,
            model="google/gemini-pro",
            max_tokens=40,
            tools=[LOOKUP],
            messages=[{"role": "user", "content": "hi"}],
        )
    except anthropic.BadRequestError as error:
        assert "does not support tools" in str(error)
    else:
        raise AssertionError("tools reached a model whose list says it has none")
