"""Every call of the official ``ollama`` Python client against the proxy and the simulator."""

from __future__ import annotations

import json

import ollama
import pydantic
import pytest
import pytest_twisted

from .conftest import http, in_thread
from .wire import JPEG, PNG, TIME_TOOL, WEATHER_TOOL, last_chat


def client(proxy):
    return ollama.Client(host=proxy.url)


@pytest_twisted.ensureDeferred
async def test_version_list_show_and_ps(proxy):
    # The client has no version call: raw HTTP, as the CLI and integrations do it.
    r = await http("GET", proxy.url + "/api/version")
    assert r.code == 200 and r.json()["version"] == "0.14.3"
    c = client(proxy)
    listing = await in_thread(c.list)
    names = [m.model for m in listing.models]
    assert "openai/gpt-4o-mini:latest" in names and "deepseek/deepseek-r1:latest" in names
    shown = await in_thread(c.show, "openai/gpt-4o-mini")
    assert {"completion", "tools", "vision"} <= set(shown.capabilities)
    assert "thinking" in (await in_thread(c.show, "deepseek/deepseek-r1")).capabilities
    ps = await in_thread(c.ps)
    assert ps.models == []


@pytest_twisted.ensureDeferred
async def test_chat_and_generate_streamed_and_not(proxy):
    c = client(proxy)
    answer = await in_thread(c.chat, model="google/gemini-pro", messages=[{"role": "user", "content": "one two"}])
    assert answer.message.content == "Echo: one two" and answer.done and answer.done_reason == "stop"
    assert answer.eval_count == 3 and answer.prompt_eval_count == 2
    parts = await in_thread(
        lambda: list(c.chat(model="google/gemini-pro", messages=[{"role": "user", "content": "a b"}], stream=True))
    )
    assert "".join(p.message.content for p in parts) == "Echo: a b" and parts[-1].done
    generated = await in_thread(c.generate, model="google/gemini-pro", prompt="x y", system="be brief")
    assert generated.response == "Echo: x y" and generated.done_reason == "stop"
    pieces = await in_thread(lambda: list(c.generate(model="google/gemini-pro", prompt="p q", stream=True)))
    assert "".join(p.response for p in pieces) == "Echo: p q" and pieces[-1].context


@pytest_twisted.ensureDeferred
async def test_done_reason_length_from_num_predict(proxy):
    answer = await in_thread(
        client(proxy).chat,
        model="google/gemini-pro",
        messages=[{"role": "user", "content": "a b c d e"}],
        options={"num_predict": 2},
    )
    assert answer.done_reason == "length" and answer.message.content == "Echo: a"


@pytest_twisted.ensureDeferred
async def test_embed_and_embeddings(proxy, simulator):
    c = client(proxy)
    single = await in_thread(c.embed, model="openai/text-embedding-3-small", input="hello world")
    assert len(single.embeddings) == 1 and len(single.embeddings[0]) == 8 and single.prompt_eval_count == 2
    several = await in_thread(c.embed, model="openai/text-embedding-3-small", input=["a", "b c"], dimensions=4)
    assert [len(v) for v in several.embeddings] == [4, 4]
    assert simulator.requests[-1].body["dimensions"] == 4
    legacy = await in_thread(c.embeddings, model="openai/text-embedding-3-small", prompt="hello world")
    assert legacy.embedding == single.embeddings[0]
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(c.embed, model="google/gemini-pro", input="x")
    assert refused.value.status_code == 400 and "does not support embeddings" in refused.value.error


@pytest_twisted.ensureDeferred
async def test_embed_truncate(proxy, simulator):
    c = client(proxy)
    long_text = "word " * 6000  # 30000 characters: the simulator's model takes 8192 tokens of 3 characters
    cut = await in_thread(c.embed, model="openai/text-embedding-3-small", input=long_text)
    assert len(cut.embeddings) == 1
    sent = [r.body["input"][0] for r in simulator.requests if r.path.endswith("/embeddings")]
    assert len(sent[0]) == 30000 and len(sent[-1]) <= 8192 * 2  # refused whole, then cut
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(c.embed, model="openai/text-embedding-3-small", input=long_text, truncate=False)
    assert refused.value.status_code == 400 and "maximum context length" in refused.value.error


@pytest_twisted.ensureDeferred
async def test_tools_two_turns_with_several_calls(proxy, simulator):
    c = client(proxy)
    messages = [
        {"role": "user", "content": 'call get_weather {"city": "Paris"} call get_time {"zone": "CET", "24h": true}'}
    ]
    first = await in_thread(c.chat, model="openai/gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    calls = first.message.tool_calls
    assert [(t.function.name, dict(t.function.arguments)) for t in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET", "24h": True}),
    ]
    assert first.done_reason == "stop"  # tool calls end with "stop", as in Ollama
    sent = last_chat(simulator)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    # Second turn: the client drops ids; results are paired with calls by name.
    messages += [
        first.message,
        {"role": "tool", "content": "22 degrees", "tool_name": "get_weather"},
        {"role": "tool", "content": "13:00", "tool_name": "get_time"},
    ]
    second = await in_thread(c.chat, model="openai/gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    assert second.message.content == "Tool said: 13:00"
    history = last_chat(simulator)["messages"]
    assert json.loads(history[1]["tool_calls"][1]["function"]["arguments"]) == {"zone": "CET", "24h": True}
    assert [m["tool_call_id"] for m in history[2:]] == [c["id"] for c in history[1]["tool_calls"]]


@pytest_twisted.ensureDeferred
async def test_tools_streamed_through_the_client(proxy):
    c = client(proxy)

    def stream():
        return list(
            c.chat(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": 'call get_weather {"city": "Oslo"}'}],
                tools=[WEATHER_TOOL],
                stream=True,
            )
        )

    parts = await in_thread(stream)
    calls = [call for part in parts for call in (part.message.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in calls] == [("get_weather", {"city": "Oslo"})]
    assert parts[-1].done and parts[-1].done_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_tools_streamed_carry_id_and_index(proxy):
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": "openai/gpt-4o-mini",
            "messages": [
                {"role": "user", "content": 'call get_weather {"city": "Oslo"} call get_weather {"city": "Rome"}'}
            ],
            "tools": [WEATHER_TOOL],
        },
    )
    lines = r.lines()
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert all(c["id"].startswith("call_sim_") for c in calls)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


@pytest_twisted.ensureDeferred
async def test_tool_calls_sent_whole_without_ids_get_ids(proxy):
    answer = await in_thread(
        client(proxy).chat,
        model="sim/tools-oneshot",
        messages=[{"role": "user", "content": 'call get_time {"zone": "UTC"}'}],
        tools=[TIME_TOOL],
    )
    assert answer.message.tool_calls[0].function.arguments == {"zone": "UTC"}
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": "sim/tools-oneshot",
            "stream": False,
            "messages": [{"role": "user", "content": 'call get_time {"zone": "UTC"}'}],
            "tools": [TIME_TOOL],
        },
    )
    assert r.json()["message"]["tool_calls"][0]["id"].startswith("call_")


@pytest_twisted.ensureDeferred
async def test_tools_on_a_model_without_them(proxy):
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(
            client(proxy).chat,
            model="google/gemini-pro",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
        )
    assert refused.value.status_code == 400 and refused.value.error == "google/gemini-pro does not support tools"


@pytest_twisted.ensureDeferred
async def test_images_on_chat_and_generate(proxy, simulator):
    c = client(proxy)
    answer = await in_thread(
        c.chat, model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "look", "images": [PNG, JPEG]}]
    )
    assert answer.message.content == "Echo: look [image/png] [image/jpeg]"
    parts = last_chat(simulator)["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "look"} and parts[1]["image_url"]["url"].startswith(
        "data:image/png;base64,iVBOR"
    )
    generated = await in_thread(c.generate, model="openai/gpt-4o-mini", prompt="what", images=[JPEG])
    assert generated.response == "Echo: what [image/jpeg]"
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(
            c.chat, model="google/gemini-pro", messages=[{"role": "user", "content": "look", "images": [PNG]}]
        )
    assert refused.value.status_code == 400 and "does not support vision" in refused.value.error


@pytest_twisted.ensureDeferred
async def test_format_json_and_schema(proxy, simulator):
    class Weather(pydantic.BaseModel):
        city: str
        degrees: int

    c = client(proxy)
    answer = await in_thread(
        c.chat, model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], format="json"
    )
    assert json.loads(answer.message.content) == {"echo": "Echo: hi"}
    assert last_chat(simulator)["response_format"] == {"type": "json_object"}
    structured = await in_thread(
        c.chat,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        format=Weather.model_json_schema(),
    )
    assert Weather.model_validate_json(structured.message.content) == Weather(city="Echo", degrees=1)
    sent = last_chat(simulator)["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["required"] == ["city", "degrees"]
    generated = await in_thread(c.generate, model="openai/gpt-4o-mini", prompt="hi", format="json")
    assert json.loads(generated.response)
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "format": "xml"},
    )
    assert (
        r.code == 400
        and r.json()["error"] == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'
    )


@pytest_twisted.ensureDeferred
async def test_think(proxy, simulator):
    c = client(proxy)
    answer = await in_thread(
        c.chat, model="deepseek/deepseek-r1", messages=[{"role": "user", "content": "why sky"}], think=True
    )
    assert answer.message.thinking == "Thinking about: why sky" and answer.message.content == "Echo: why sky"
    assert last_chat(simulator)["reasoning"] == {"enabled": True}
    parts = await in_thread(
        lambda: list(
            c.chat(model="deepseek/deepseek-r1", messages=[{"role": "user", "content": "a"}], think="high", stream=True)
        )
    )
    assert "".join(p.message.thinking or "" for p in parts) == "Thinking about: a"
    assert last_chat(simulator)["reasoning"] == {"effort": "high"}
    quiet = await in_thread(
        c.chat, model="deepseek/deepseek-r1", messages=[{"role": "user", "content": "a"}], think=False
    )
    assert quiet.message.thinking is None and last_chat(simulator)["reasoning"] == {"enabled": False, "exclude": True}
    generated = await in_thread(c.generate, model="deepseek/deepseek-r1", prompt="b", think="low")
    assert generated.thinking == "Thinking about: b" and last_chat(simulator)["reasoning"] == {"effort": "low"}
    details_only = await in_thread(
        c.chat, model="sim/reasoning-details", messages=[{"role": "user", "content": "c"}], think=True
    )
    assert details_only.message.thinking == "Thinking about: c"
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(c.chat, model="google/gemini-pro", messages=[{"role": "user", "content": "a"}], think=True)
    assert refused.value.status_code == 400 and refused.value.error == '"google/gemini-pro" does not support thinking'
    # think=false on a model that cannot think is fine, as in Ollama
    plain = await in_thread(c.chat, model="google/gemini-pro", messages=[{"role": "user", "content": "a"}], think=False)
    assert plain.message.content == "Echo: a" and "reasoning" not in last_chat(simulator)


@pytest_twisted.ensureDeferred
async def test_logprobs(proxy, simulator):
    answer = await in_thread(
        client(proxy).chat,
        model="google/gemini-pro",
        messages=[{"role": "user", "content": "a b"}],
        logprobs=True,
        top_logprobs=2,
    )
    assert [entry.token for entry in answer.logprobs] == ["Echo:", " a", " b"]
    assert len(answer.logprobs[1].top_logprobs) == 2
    sent = last_chat(simulator)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    r = await http("POST", proxy.url + "/api/generate", {"model": "google/gemini-pro", "prompt": "z", "logprobs": True})
    assert [line["logprobs"][0]["token"] for line in r.lines()[:-1]] == ["Echo:", " z"]
    r = await http("POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [], "top_logprobs": 21})
    assert r.code == 400 and r.json()["error"] == "top_logprobs must be between 0 and 20"


@pytest_twisted.ensureDeferred
async def test_load_unload_and_ps(proxy):
    c = client(proxy)
    loaded = await in_thread(c.generate, model="google/gemini-pro", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    chat_loaded = await in_thread(c.chat, model="openai/gpt-4o-mini", messages=[], keep_alive="1h")
    assert chat_loaded.done_reason == "load" and chat_loaded.message.role == "assistant"
    ps = await in_thread(c.ps)
    assert [m.model for m in ps.models] == ["openai/gpt-4o-mini:latest", "google/gemini-pro:latest"]
    entry = ps.models[0]
    assert entry.size_vram == 0 and entry.context_length == 128000 and entry.expires_at is not None
    unloaded = await in_thread(c.chat, model="openai/gpt-4o-mini", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert [m.model for m in (await in_thread(c.ps)).models] == ["google/gemini-pro:latest"]
    gen_unloaded = await in_thread(c.generate, model="google/gemini-pro", prompt="", keep_alive=0)
    assert gen_unloaded.done_reason == "unload" and (await in_thread(c.ps)).models == []


@pytest_twisted.ensureDeferred
async def test_keep_alive_forms(proxy):
    for value in (30, 2.5, "5m", "1h30m", "300ms", "-1m", -1, "0", 0):
        r = await http(
            "POST", proxy.url + "/api/generate", {"model": "google/gemini-pro", "prompt": "", "keep_alive": value}
        )
        assert r.code == 200, (value, r.body)
    r = await http(
        "POST", proxy.url + "/api/generate", {"model": "google/gemini-pro", "prompt": "", "keep_alive": "10"}
    )
    assert r.code == 400 and r.json()["error"] == 'time: missing unit in duration "10"'
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "google/gemini-pro", "messages": [], "keep_alive": "5 minutes"}
    )
    assert r.code == 400 and "unknown unit" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_generate_extras(proxy, simulator):
    c = client(proxy)
    with pytest.raises(ollama.ResponseError) as refused:
        await in_thread(c.generate, model="google/gemini-pro", prompt="x", system="s", raw=True)
    assert (
        refused.value.status_code == 400
        and refused.value.error == "raw mode does not support template, system, or context"
    )
    raw = await in_thread(c.generate, model="google/gemini-pro", prompt="[INST] hi [/INST]", raw=True)
    assert raw.response == "Echo: [INST] hi [/INST]" and last_chat(simulator)["messages"] == [
        {"role": "user", "content": "[INST] hi [/INST]"}
    ]
    filled = await in_thread(c.generate, model="google/gemini-pro", prompt="def add(a, b):", suffix="    return c")
    assert filled.done
    sent = last_chat(simulator)["messages"]
    assert (
        sent[0]["role"] == "system"
        and sent[1]["content"] == "<prefix>def add(a, b):</prefix><suffix>    return c</suffix>"
    )
    # context round-trips the conversation: the next prompt sees the last exchange
    first = await in_thread(c.generate, model="google/gemini-pro", prompt="my name is Ada")
    await in_thread(c.generate, model="google/gemini-pro", prompt="what is it", context=first.context)
    assert [m["content"] for m in last_chat(simulator)["messages"]] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is it",
    ]
    # a context from a real Ollama (token ids) is accepted and carries nothing
    await in_thread(c.generate, model="google/gemini-pro", prompt="fresh", context=[128000, 2028, 374])
    assert [m["content"] for m in last_chat(simulator)["messages"]] == ["fresh"]
