"""The ollama provider (a real Ollama server upstream): translation, then against its
simulator, alone and behind the proxy."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock

from ollama_proxy.config.providers import ProviderTimeouts
from ollama_proxy.config.settings import Timeouts
from ollama_proxy.errors import UpstreamError, UpstreamStreamError
from ollama_proxy.providers.ollama import OllamaProvider
from ollama_proxy.providers.stream import NDJSONParser
from ollama_proxy.wire.ollama_upstream import OllamaDecoder, chat_body, model_from

from .conftest import http, in_thread
from .multi import provider, pump


def test_openai_request_becomes_an_ollama_chat_body():
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "short"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is "},
                    {"type": "text", "text": "this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"x": 1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "look", "content": "a cat"},
        ],
        "temperature": 0.1,
        "max_tokens": 20,
        "repetition_penalty": 1.1,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "reasoning": {"effort": "high"},
        "stream_options": {"include_usage": True},
    }
    request = chat_body(body)
    assert request["model"] == "llama3.2" and request["stream"] is True
    assert request["messages"][0] == {"role": "system", "content": "short"}
    assert request["messages"][1] == {"role": "user", "content": "what is this", "images": ["AAAA"]}
    assert request["messages"][2]["tool_calls"] == [
        {"function": {"name": "look", "arguments": {"x": 1}}}
    ]  # an object, as Ollama wants
    assert request["messages"][3] == {"role": "tool", "content": "a cat", "tool_name": "look"}
    assert request["options"] == {"temperature": 0.1, "num_predict": 20, "repeat_penalty": 1.1, "stop": ["END"]}
    assert request["tools"] == body["tools"] and request["format"] == {"type": "object"} and request["think"] == "high"
    assert "stream_options" not in request
    assert chat_body({"model": "m", "messages": [], "response_format": {"type": "json_object"}})["format"] == "json"
    assert chat_body({"model": "m", "messages": [], "reasoning": {"enabled": False}})["think"] is False


def test_ndjson_lines_become_openai_chunks():
    decoder = OllamaDecoder()
    head = {"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z"}
    chunks = []
    for line in (
        {**head, "message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
        {**head, "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {
            **head,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
            },
            "done": False,
        },
        {
            **head,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 2,
        },
    ):
        chunks.extend(decoder(line))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"reasoning": "hmm"} and deltas[1] == {"content": "Hi"}
    call = deltas[2]["tool_calls"][0]
    assert (
        call["index"] == 0 and call["function"]["name"] == "f" and json.loads(call["function"]["arguments"]) == {"a": 1}
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    length = OllamaDecoder()({**head, "message": {"content": ""}, "done": True, "done_reason": "length"})
    assert length[0]["choices"][0]["finish_reason"] == "length"
    with pytest.raises(UpstreamStreamError) as caught:
        OllamaDecoder("Local")({"error": "out of memory"})
    assert caught.value.message == "Local stream error: out of memory"


def test_ndjson_parser_handles_split_lines():
    parser = NDJSONParser()
    assert parser.feed(b'{"a":') == []
    assert [e.data for e in parser.feed(b'1}\n\n{"b":2}\n{"c"')] == ['{"a":1}', '{"b":2}']
    # a last line without its newline is still handed over (the reader then judges it)
    assert [e.data for e in parser.close()] == ['{"c"']
    assert parser.close() == []


def test_tags_entries_become_models():
    entry = {
        "name": "llama3.2:latest",
        "model": "llama3.2:latest",
        "modified_at": "2025-05-01T10:20:30.123456789+02:00",
        "size": 5,
        "digest": "ab" * 32,
        "details": {"family": "llama"},
    }
    model = model_from(entry, "local")
    assert model.id == "llama3.2" and model.ollama_name == "llama3.2:latest" and model.provider == "local"
    assert model.created == 1746087630 and not model.embedding
    assert model.extra["ollama_tag"]["size"] == 5
    embed = model_from({"name": "nomic-embed-text:latest", "details": {"family": "nomic-bert"}}, "local")
    assert embed.embedding and embed.capabilities() == ["embedding"]
    assert model_from({"name": "qwen3:8b"}, "local").id == "qwen3:8b"


@pytest.fixture
def local(ollama_sim):
    upstream = OllamaProvider(
        name="local",
        base_url=ollama_sim.base_url,
        api_key=None,
        reactor=global_reactor,
        timeouts=Timeouts(connect=5, response=10, idle=10),
    )
    yield upstream
    pytest_twisted.blockon(upstream.close())


async def collect(upstream, body) -> list[dict[str, Any]]:
    stream = await upstream.open_chat(body)
    chunks: list[dict[str, Any]] = []
    await stream.deliver(chunks.append)
    return chunks


@pytest_twisted.ensureDeferred
async def test_provider_lists_chats_and_embeds(local, ollama_sim):
    assert local.configured and local.type == "ollama"
    models = await local.list_models()
    assert [m.id for m in models] == ["llama3.2", "qwen3:8b", "nomic-embed-text"]
    chunks = await collect(
        local,
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi you"}], "reasoning": {"effort": "low"}},
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    thought = "".join(c["choices"][0]["delta"].get("reasoning", "") for c in chunks if c["choices"])
    assert text == "Echo: hi you" and thought == "Thinking about: hi you"
    assert ollama_sim.posts("/api/chat")[-1].body["think"] == "low"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = await collect(
        local, {"model": "llama3.2", "messages": [{"role": "user", "content": "cats"}], "tools": tools}
    )
    call = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ][0]
    assert call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"query": "cats"}
    vectors, tokens = await local.embed("nomic-embed-text", ["one two"])
    assert len(vectors) == 1 and tokens == 2
    await local.check_health()
    assert ollama_sim.requests[-1].path == "/api/tags"


@pytest_twisted.ensureDeferred
async def test_provider_errors(local, ollama_sim):
    with pytest.raises(UpstreamError) as caught:
        await local.open_chat({"model": "missing", "messages": []})
    assert caught.value.upstream_status == 404 and "try pulling it first" in caught.value.message
    ollama_sim.behaviour = "midstream-error"
    with pytest.raises(UpstreamStreamError) as broken:
        await collect(local, {"model": "llama3.2", "messages": [{"role": "user", "content": "a b c"}]})
    assert "unexpected EOF" in broken.value.message


@pytest_twisted.ensureDeferred
async def test_local_models_behind_the_proxy(make_multi, ollama_sim):
    proxy = make_multi([provider("local", "ollama", ollama_sim.base_url)], openrouter=False)
    client = ollama.Client(host=proxy.url)
    listing = await in_thread(client.list)
    assert sorted(m.model for m in listing.models) == ["llama3.2:latest", "nomic-embed-text:latest", "qwen3:8b"]
    answer = await in_thread(
        client.chat,
        model="llama3.2:latest",
        messages=[{"role": "user", "content": "a b c d"}],
        options={"num_predict": 2},
    )
    assert answer.message.content == "Echo: a" and answer.done_reason == "length"
    assert ollama_sim.posts("/api/chat")[-1].body["options"] == {"num_predict": 2}
    shown = await in_thread(client.show, "qwen3:8b")
    assert shown.capabilities == ["completion", "tools", "thinking"]  # as the upstream's /api/show says
    architecture = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{architecture}.context_length"] == 40960
    missing = await http("POST", proxy.url + "/api/chat", {"model": "mistral", "messages": []})
    assert missing.code == 404 and missing.json()["error"] == "model 'mistral' not found"


@pytest_twisted.ensureDeferred
async def test_local_stall_after_output_ends_with_an_error_line(make_multi, ollama_sim):
    clock = Clock()
    proxy = make_multi(
        [provider("local", "ollama", ollama_sim.base_url, timeouts=ProviderTimeouts(idle=3))],
        openrouter=False,
        clock=clock,
    )
    r = await http("GET", proxy.url + "/api/tags")
    assert r.code == 200
    ollama_sim.behaviour = "stall"
    from twisted.internet.defer import ensureDeferred

    answer = ensureDeferred(
        http("POST", proxy.url + "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x y"}]})
    )
    r = await pump(clock, answer)
    lines = r.lines()
    assert lines[0]["message"]["content"] == "Echo:" and lines[-1] == {
        "error": "Ollama (local) stream stalled: no data for 3 seconds"
    }


@pytest_twisted.ensureDeferred
async def test_load_time_options_and_keep_alive_reach_an_ollama_upstream_only(make_multi, ollama_sim, simulator):
    proxy = make_multi([provider("local", "ollama", ollama_sim.base_url)])
    client = ollama.Client(host=proxy.url)
    await in_thread(
        client.chat,
        model="llama3.2",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_ctx": 8192, "temperature": 0.1},
        keep_alive="10m",
    )
    sent = ollama_sim.posts("/api/chat")[-1].body
    assert sent["options"] == {"num_ctx": 8192, "temperature": 0.1} and sent["keep_alive"] == "10m"
    # A cloud provider gets only what its API knows.
    await in_thread(
        client.chat,
        model="google/gemini-pro",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_ctx": 8192},
        keep_alive="10m",
    )
    cloud = simulator.chat_requests()[-1].body
    assert "num_ctx" not in cloud and not any(key.startswith("x-ollama") for key in cloud)
