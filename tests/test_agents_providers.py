"""/v1/messages and /v1/responses over every provider type: Anthropic (natively), OpenAI,
Ollama and the offline demo provider, driven by the official anthropic and openai SDKs."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from ollama_proxy.config.providers import RoutingConfig
from ollama_proxy.config.settings import load_config
from ollama_proxy.service import makeService

from .anthropic_simulator import SIGNATURE
from .conftest import LineReader, http, in_thread
from .multi import ANTHROPIC_KEY, provider

LOOKUP = {
    "name": "lookup",
    "description": "Look a thing up",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
LOOKUP_FN = {"type": "function", "name": "lookup", "parameters": LOOKUP["input_schema"]}


def claude(proxy, **kwargs):
    return anthropic.Anthropic(base_url=proxy.url, api_key="ollama", max_retries=0, **kwargs)


def gpt(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)


def claude_proxy(make_multi, anthropic_sim):
    # What Claude Code asks for, mapped by the ordinary aliases.
    aliases = (("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"), ("claude-haiku-4-5", "claude-3-5-haiku-latest"))
    return make_multi(
        [provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)],
        openrouter=False,
        routing=RoutingConfig(aliases=aliases),
    )


@pytest_twisted.ensureDeferred
async def test_anthropic_passthrough_keeps_signatures_cache_and_beta(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    c = claude(proxy)
    question = {
        "role": "user",
        "content": [{"type": "text", "text": "find cats", "cache_control": {"type": "ephemeral"}}],
    }

    def first_turn():
        with c.messages.stream(
            model="claude-sonnet-4-5-20250929",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            tools=[LOOKUP],
            messages=[question],
            extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        ) as stream:
            return [e.type for e in stream], stream.get_final_message()

    kinds, first = await in_thread(first_turn)
    assert "content_block_delta" in kinds and first.model == "claude-sonnet-4-5-20250929"
    thinking, use = first.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert use.type == "tool_use" and use.input == {"query": "find cats"} and first.stop_reason == "tool_use"
    assert first.usage.cache_read_input_tokens == 5
    sent = anthropic_sim.posts("/v1/messages")[-1]
    assert sent.body["model"] == "claude-sonnet-4-5" and sent.body["messages"][0] == question
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    # The signed thinking goes back with the tool result: the simulator refuses a lost signature.
    second = await in_thread(
        c.messages.create,
        model="claude-sonnet-4-5-20250929",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        tools=[LOOKUP],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "three cats"}]},
        ],
    )
    assert second.content[-1].text == "Tool said: three cats" and second.content[0].signature == SIGNATURE
    counted = await in_thread(
        c.messages.count_tokens, model="claude-haiku-4-5", messages=[{"role": "user", "content": "count me"}]
    )
    assert counted.input_tokens > 1000  # Anthropic's own count (the simulator adds 1000), not an estimate


@pytest_twisted.ensureDeferred
async def test_anthropic_errors_and_midstream_failure_pass_through(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    c = claude(proxy)
    anthropic_sim.behaviour = "midstream-error"

    def broken():
        with c.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "a b c d"}]
        ) as stream:
            return [e.type for e in stream]

    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        await in_thread(broken)
    anthropic_sim.behaviour = None
    anthropic_sim.fail_next(401)
    with pytest.raises(anthropic.APIStatusError) as refused:
        await in_thread(
            c.messages.create, model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["type"] == "error" and "Anthropic" in refused.value.body["error"]["message"]
    assert ANTHROPIC_KEY not in json.dumps(refused.value.body)


@pytest_twisted.ensureDeferred
async def test_responses_over_anthropic_go_through_the_openai_shape(make_multi, anthropic_sim):
    proxy = claude_proxy(make_multi, anthropic_sim)
    response = await in_thread(
        gpt(proxy).responses.create, model="claude-haiku-4-5", input="find dogs", tools=[LOOKUP_FN]
    )
    [call] = response.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"query": "find dogs"}
    sent = anthropic_sim.posts("/v1/messages")[-1].body
    assert sent["tools"][0]["name"] == "lookup" and sent["messages"][0]["role"] == "user"


@pytest_twisted.ensureDeferred
async def test_both_surfaces_over_an_openai_upstream(make_multi, openai_sim):
    proxy = make_multi([provider("openai", "openai", openai_sim.base_url, "sk-openai-simulator-key")], openrouter=False)
    message = await in_thread(
        claude(proxy).messages.create,
        model="openai/gpt-4o-mini",
        max_tokens=40,
        tools=[LOOKUP],
        messages=[{"role": "user", "content": 'call lookup {"query": "x"}'}],
    )
    assert message.content[-1].type == "tool_use" and message.content[-1].input == {"query": "x"}
    assert openai_sim.chat_requests()[-1].body["max_completion_tokens"] == 40  # OpenAI's own dialect
    response = await in_thread(gpt(proxy).responses.create, model="openai/gpt-4o-mini", input="hello there")
    assert response.output_text == "Echo: hello there"


@pytest_twisted.ensureDeferred
async def test_both_surfaces_over_an_ollama_upstream(make_multi, ollama_sim):
    proxy = make_multi([provider("local", "ollama", ollama_sim.base_url)], openrouter=False)

    def streamed():
        with claude(proxy).messages.stream(
            model="qwen3:8b",
            max_tokens=100,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "why so"}],
        ) as stream:
            return stream.get_final_message()

    message = await in_thread(streamed)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking about: why so" and message.content[1].text == "Echo: why so"
    assert ollama_sim.posts("/api/chat")[-1].body["think"] == "low"

    def responses_stream():
        with gpt(proxy).responses.stream(model="llama3.2", input="find it", tools=[LOOKUP_FN]) as stream:
            return stream.get_final_response()

    response = await in_thread(responses_stream)
    assert response.output[0].type == "function_call" and json.loads(response.output[0].arguments) == {
        "query": "find it"
    }
    # Cut by the token cap: Anthropic's max_tokens stop reason, the Responses API's incomplete status.
    cut = await in_thread(
        claude(proxy).messages.create, model="llama3.2", max_tokens=2, messages=[{"role": "user", "content": "a b c d"}]
    )
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "Echo: a"
    short = await in_thread(gpt(proxy).responses.create, model="llama3.2", input="a b c d", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


@pytest_twisted.ensureDeferred
async def test_demo_provider_answers_both_surfaces_offline():
    config = load_config(environ={}, listen=["tcp:0:interface=127.0.0.1"], demo=True)
    service = makeService(config, global_reactor)
    service.startService()
    try:

        class Proxy:
            url = f"http://127.0.0.1:{service.listening_ports()[0].getHost().port}"

        message = await in_thread(
            claude(Proxy).messages.create,
            model="echo",
            max_tokens=20,
            messages=[{"role": "user", "content": "hi there"}],
        )
        assert message.content[0].text == "hi there"
        counted = await in_thread(
            claude(Proxy).messages.count_tokens, model="echo", messages=[{"role": "user", "content": "hi"}]
        )
        assert counted.input_tokens > 0  # an estimate: echo has no counter
        response = await in_thread(gpt(Proxy).responses.create, model="echo", input="offline too")
        assert response.output_text == "offline too"
        # The demo's tool and thinking models: a tool named in the message is called, then its result echoed.
        first = await in_thread(
            claude(Proxy).messages.create,
            model="echo",
            max_tokens=50,
            tools=[LOOKUP],
            messages=[{"role": "user", "content": "lookup cats"}],
        )
        use = first.content[-1]
        assert first.stop_reason == "tool_use" and use.name == "lookup" and use.input == {"query": "cats"}
        second = await in_thread(
            claude(Proxy).messages.create,
            model="echo",
            max_tokens=50,
            tools=[LOOKUP],
            messages=[
                {"role": "user", "content": "lookup cats"},
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "three cats"}]},
            ],
        )
        assert "three cats" in second.content[0].text
        thought = await in_thread(
            claude(Proxy).messages.create,
            model="echo-think",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "ponder"}],
        )
        assert [b.type for b in thought.content] == ["thinking", "text"]
        reasoned = await in_thread(
            gpt(Proxy).responses.create, model="echo-think", input="ponder", reasoning={"effort": "low"}
        )
        assert [i.type for i in reasoned.output] == ["reasoning", "message"]
        r = await http("POST", Proxy.url + "/v1/messages", {"model": "nope", "max_tokens": 5, "messages": []})
        assert r.code == 404 and r.json()["error"]["type"] == "not_found_error"
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_an_overloaded_anthropic_is_retried_then_falls_back_through_translation(
    make_multi, anthropic_sim, simulator
):
    routing = RoutingConfig(fallbacks=(("claude-sonnet-4-5", ("google/gemini-pro",)),))
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], routing=routing)
    anthropic_sim.behaviour = "overloaded"

    def streamed():
        with claude(proxy).messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=50,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "hi there"}],
        ) as stream:
            return stream.get_final_message()

    message = await in_thread(streamed)
    assert message.content[0].text == "Echo: hi there" and message.model == "claude-sonnet-4-5"
    assert len(anthropic_sim.posts("/v1/messages")) == 2  # natively, tried and retried
    sent = simulator.chat_requests()[-1].body  # then the fallback, as an OpenAI chat body
    assert sent["model"] == "google/gemini-pro" and sent["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest_twisted.ensureDeferred
async def test_both_surfaces_over_an_openai_compatible_server(make_multi, openai_sim):
    # A local OpenAI-compatible server (vLLM, llama.cpp): OpenRouter's fields pass, max_tokens stays.
    proxy = make_multi([provider("vllm", "openai", openai_sim.base_url, "sk-openai-simulator-key")], openrouter=False)

    def streamed():
        with claude(proxy).messages.stream(
            model="google/gemini-pro",
            max_tokens=30,
            messages=[{"role": "user", "content": "local words"}],
            extra_body={"top_k": 4},
        ) as stream:
            return stream.get_final_message()

    message = await in_thread(streamed)
    assert message.content[0].text == "Echo: local words"
    sent = openai_sim.chat_requests()[-1].body
    assert sent["max_tokens"] == 30 and sent["top_k"] == 4 and "max_completion_tokens" not in sent
    response = await in_thread(
        gpt(proxy).responses.create, model="google/gemini-pro", input="and here", max_output_tokens=7
    )
    assert response.output_text == "Echo: and here" and openai_sim.chat_requests()[-1].body["max_tokens"] == 7


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"max_tokens": 50, "messages": [{"role": "user", "content": "go on"}]}),
        ("/v1/responses", {"input": "go on"}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_client_leaving_closes_the_upstream(make_proxy, simulator, path, body):
    proxy = make_proxy()
    aborted = simulator.wait_for_abort()
    reader = LineReader()
    await reader.connect(proxy.port, path, {"model": "sim/endless", "stream": True, **body})
    await reader.wait_for_lines(8)  # events are flowing
    reader.hang_up()
    await aborted
    await proxy.service.lifecycle.when_idle()  # the upstream is closed first; the bookkeeping follows
    assert simulator.streams_aborted == 1 and proxy.service.stats.active_streams == 0


@pytest_twisted.ensureDeferred
async def test_server_tools_reach_anthropic_and_are_refused_elsewhere(make_multi, anthropic_sim):
    routing = RoutingConfig(aliases=(("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),))
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], routing=routing)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
    body = {"max_tokens": 100, "tools": [search], "messages": [{"role": "user", "content": "news today"}]}
    # Claude Code's WebSearch asks Anthropic's own server tool: natively, it goes as written.
    r = await http("POST", proxy.url + "/v1/messages", {"model": "claude-sonnet-4-5-20250929", **body})
    assert r.code == 200 and anthropic_sim.posts("/v1/messages")[-1].body["tools"] == [search]
    # A model another provider serves cannot run it: 400 naming the type, in Anthropic's shape.
    r = await http("POST", proxy.url + "/v1/messages", {"model": "google/gemini-pro", **body})
    assert r.code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "web_search_20250305" in r.json()["error"]["message"]
