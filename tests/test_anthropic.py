"""The anthropic provider: translation both ways (pure), then against its simulator,
alone and behind the proxy."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from ollama_proxy.config.providers import RoutingConfig
from ollama_proxy.config.settings import Timeouts
from ollama_proxy.errors import BadRequest, UpstreamError, UpstreamStreamError
from ollama_proxy.providers.anthropic import AnthropicProvider
from ollama_proxy.wire.anthropic_upstream import AnthropicDecoder, messages_request, model_from

from .conftest import http, in_thread
from .multi import ANTHROPIC_KEY, provider

# -- OpenAI -> Anthropic ------------------------------------------------------------------


def test_system_messages_become_the_system_prompt_and_roles_alternate():
    body = {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "developer", "content": "No emoji."},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": ""},
            {"role": "user", "content": "three"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
    }
    request = messages_request(body, default_max_tokens=321)
    assert request["system"] == "Be brief.\n\nNo emoji."
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]
    assert request["max_tokens"] == 321 and request["stream"] is True
    assert request["temperature"] == 0.2 and request["top_p"] == 0.9 and request["stop_sequences"] == ["END"]
    assert "seed" not in request  # Anthropic has none


def test_images_become_image_blocks():
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}},
                ],
            }
        ],
    }
    blocks = messages_request(body)["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}}
    assert messages_request(body)["max_tokens"] == 50


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": {"city": "Rome"}},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "required",
    }
    request = messages_request(body)
    assistant, results = request["messages"][1], request["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
        ],
    }
    assert request["tools"] == [
        {
            "name": "weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert request["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice(choice, expected):
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": choice,
    }
    assert messages_request(body)["tool_choice"] == expected


def test_reasoning_becomes_thinking_without_temperature():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "reasoning": {"effort": "high"},
        "temperature": 0.5,
        "top_k": 3,
        "max_tokens": 1000,
    }
    request = messages_request(body, default_max_tokens=4096)
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert request["max_tokens"] > 24576  # the budget must fit under max_tokens
    assert "temperature" not in request and "top_k" not in request
    assert messages_request({**body, "reasoning": {"max_tokens": 2000}})["thinking"]["budget_tokens"] == 2000
    assert "thinking" not in messages_request({**body, "reasoning": {"enabled": False}})
    assert (
        messages_request({"model": "m", "messages": [], "reasoning_effort": "low"})["thinking"]["budget_tokens"] == 2048
    )


def test_bad_tool_arguments_are_a_client_error():
    body = {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{nope"}}]}
        ],
    }
    with pytest.raises(BadRequest) as caught:
        messages_request(body)
    assert getattr(caught.value, "status", None) == 400


# -- Anthropic SSE -> OpenAI chunks ----------------------------------------------------------
def feed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    decoder = AnthropicDecoder()
    return [chunk for event in events for chunk in decoder(event)]


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_text_stream_with_usage_and_finish():
    chunks = feed(
        [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "claude-x",
                    "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1},
                },
            },
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}},
            {"type": "message_stop"},
            {"type": "some_future_event"},
        ]
    )
    assert [d.get("content") for d in deltas(chunks)] == ["", "Hel", "lo", None]
    assert chunks[0]["model"] == "claude-x" and chunks[0]["id"] == "msg_1" and deltas(chunks)[0]["role"] == "assistant"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 2,
        "total_tokens": 17,
    }


def test_tool_use_blocks_become_tool_call_deltas():
    chunks = feed(
        [
            {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Let me check."}},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ': "Paris"}'},
            },
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {"tz": "CET"}},
            },
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        ]
    )
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert json.loads("".join(c["function"]["arguments"] for c in calls if c["index"] == 0)) == {"city": "Paris"}
    assert calls[-1]["index"] == 1 and json.loads(calls[-1]["function"]["arguments"]) == {"tz": "CET"}
    assert deltas(chunks)[1] == {"content": "Let me check."}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_thinking_blocks_become_reasoning():
    chunks = feed(
        [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "xyz"}},
        ]
    )
    assert deltas(chunks) == [{"reasoning": "hmm"}]


def test_error_events_end_the_stream():
    decoder = AnthropicDecoder("Claude")
    with pytest.raises(UpstreamStreamError) as caught:
        decoder({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.message == "Claude stream error: overloaded_error: Overloaded"


def test_models_listing_entries():
    model = model_from(
        {
            "type": "model",
            "id": "claude-sonnet-4-5",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        },
        "claude",
    )
    assert model.provider == "claude" and model.context_length == 200000 and model.created == 1759104000
    assert set(model.capabilities()) == {"completion", "tools", "vision", "thinking"}
    older = model_from({"id": "claude-3-5-haiku-latest"}, "claude")
    assert "thinking" not in older.capabilities()
    assert model_from({"id": ""}, "claude") is None


# -- the provider against its simulator ----------------------------------------------------------
@pytest.fixture
def claude(anthropic_sim):
    provider = AnthropicProvider(
        name="claude",
        base_url=anthropic_sim.base_url,
        api_key=ANTHROPIC_KEY,
        reactor=global_reactor,
        timeouts=Timeouts(connect=5, response=10, idle=10),
    )
    yield provider
    pytest_twisted.blockon(provider.close())


async def collect(provider, body) -> list[dict[str, Any]]:
    stream = await provider.open_chat(body)
    chunks: list[dict[str, Any]] = []
    await stream.deliver(chunks.append)
    return chunks


@pytest_twisted.ensureDeferred
async def test_models_are_listed_page_by_page(claude, anthropic_sim):
    models = await claude.list_models()
    assert [m.id for m in models] == ["claude-sonnet-4-5", "claude-3-5-haiku-latest", "claude-opus-4-1"]
    pages = [r for r in anthropic_sim.requests if r.path == "/v1/models"]
    assert (
        len(pages) == 2
        and pages[0].headers["x-api-key"] == ANTHROPIC_KEY
        and pages[0].headers["anthropic-version"] == "2023-06-01"
    )
    assert "authorization" not in pages[0].headers
    await claude.check_health()


@pytest_twisted.ensureDeferred
async def test_a_tool_round_trip(claude, anthropic_sim):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    first = await collect(
        claude, {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "find cats"}], "tools": tools}
    )
    calls = [d["tool_calls"][0] for d in deltas(first) if "tool_calls" in d]
    call_id = calls[0]["id"]
    arguments = json.loads("".join(c["function"]["arguments"] for c in calls))
    assert calls[0]["function"]["name"] == "lookup" and arguments == {"query": "find cats"}
    assert len(calls) > 2  # the input arrived in pieces
    second = await collect(
        claude,
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "user", "content": "find cats"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "lookup", "arguments": json.dumps(arguments)},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": "three cats"},
            ],
            "tools": tools,
        },
    )
    assert "".join(d.get("content") or "" for d in deltas(second)) == "Tool said: three cats"
    sent = anthropic_sim.posts("/v1/messages")[-1].body
    assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call_id, "content": "three cats"}


@pytest_twisted.ensureDeferred
async def test_thinking_streams_as_reasoning(claude, anthropic_sim):
    chunks = await collect(
        claude,
        {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "why"}],
            "reasoning": {"effort": "low"},
            "temperature": 0.3,
        },
    )
    reasoning = "".join(d.get("reasoning") or "" for d in deltas(chunks))
    assert reasoning.strip() == "Thinking about: why"
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Echo: why"


@pytest_twisted.ensureDeferred
async def test_errors_before_and_during_the_stream(claude, anthropic_sim):
    anthropic_sim.fail_next(529)
    with pytest.raises(UpstreamError) as caught:
        await claude.open_chat({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})
    assert caught.value.upstream_status == 529 and "injected failure 529" in caught.value.message
    anthropic_sim.behaviour = "midstream-error"
    with pytest.raises(UpstreamStreamError) as broken:
        await collect(claude, {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "a b c"}]})
    assert "overloaded_error" in broken.value.message
    anthropic_sim.behaviour = None
    wrong = AnthropicProvider(
        name="x", base_url=anthropic_sim.base_url, api_key="sk-ant-wrong", reactor=global_reactor, timeouts=Timeouts()
    )
    with pytest.raises(UpstreamError) as refused:
        await wrong.open_chat({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})
    await wrong.close()
    assert refused.value.upstream_status == 401 and "sk-ant-wrong" not in refused.value.message


# -- behind the proxy ------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_overloaded_anthropic_falls_back_to_another_model(make_multi, anthropic_sim):
    routing = RoutingConfig(fallbacks=(("claude-sonnet-4-5", ("google/gemini-pro",)),))
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], routing=routing)
    anthropic_sim.behaviour = "overloaded"
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(client.chat, model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi there"}])
    assert answer.message.content == "Echo: hi there"
    assert len(anthropic_sim.posts("/v1/messages")) == 2  # tried and retried, then the fallback


@pytest_twisted.ensureDeferred
async def test_anthropic_mid_stream_error_reaches_the_client_as_an_error_line(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)])
    anthropic_sim.behaviour = "midstream-error"
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "a b c"}]},
    )
    lines = r.lines()
    assert r.code == 200 and lines[0]["message"]["content"] == "Echo:"
    assert lines[-1] == {"error": "Anthropic (claude) stream error: overloaded_error: Overloaded"}


@pytest_twisted.ensureDeferred
async def test_anthropic_length_limit_maps_to_done_reason_length(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)])
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(
        client.chat,
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "a b c d e"}],
        options={"num_predict": 3},
    )
    assert answer.message.content == "Echo: a b" and answer.done_reason == "length"
    assert anthropic_sim.posts("/v1/messages")[-1].body["max_tokens"] == 3


@pytest_twisted.ensureDeferred
async def test_anthropic_silent_before_any_token_falls_back(make_multi, anthropic_sim):
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import Clock

    from ollama_proxy.config.providers import ProviderTimeouts, RetryConfig

    from .multi import pump

    clock = Clock()
    routing = RoutingConfig(fallbacks=(("claude-opus-4-1", ("google/gemini-pro",)),))
    claude = provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY, timeouts=ProviderTimeouts(idle=4))
    proxy = make_multi([claude], routing=routing, clock=clock, retry=RetryConfig(max_retries=0))
    assert (await http("GET", proxy.url + "/api/tags")).code == 200
    anthropic_sim.behaviour = "silent"  # message_start, then nothing
    answer = ensureDeferred(
        http(
            "POST",
            proxy.url + "/api/chat",
            {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "still there"}]},
        )
    )
    r = await pump(clock, answer)
    lines = r.lines()
    assert r.code == 200 and "".join(entry["message"]["content"] for entry in lines) == "Echo: still there"
    assert r.header("x-ollama-proxy-provider") == "openrouter"
