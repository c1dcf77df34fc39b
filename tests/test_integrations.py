"""Replays of the request sequences real integrations send, with their headers.

Each test makes the calls in the order the integration makes them and checks the
answers the way the integration reads them (the fields it uses, the parsing it
does), so a change that would break the integration breaks the test.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest_twisted

from .conftest import http
from .simulator import API_KEY
from .wire import WEATHER_TOOL, last_chat

COPILOT = {
    "User-Agent": "GitHubCopilotChat/0.31.2",
    "X-VSCode-User-Agent-Library-Version": "electron-fetch",
    # The BYOK Ollama provider has no key but still sends an empty bearer token.
    "Authorization": "Bearer ",
}
COPILOT_CHAT = {
    **COPILOT,
    "X-Request-Id": "6f1c2d3e-0000-4000-8000-000000000001",
    "X-Interaction-Type": "conversation-agent",
    "OpenAI-Intent": "conversation-agent",
    "X-GitHub-Api-Version": "2025-05-01",
}
OPEN_WEBUI = {"User-Agent": "Python/3.11 aiohttp/3.12.13", "Accept": "*/*"}
JETBRAINS = {"User-Agent": "ktor-client", "Accept": "application/json", "Accept-Charset": "UTF-8"}


def version_at_least(version: str, minimum: str) -> bool:
    """Copilot's comparison: dotted parts as integers, missing parts as zero."""
    current = [int(p) for p in version.split(".")]
    wanted = [int(p) for p in minimum.split(".")]
    for i in range(max(len(current), len(wanted))):
        a, b = (current[i] if i < len(current) else 0), (wanted[i] if i < len(wanted) else 0)
        if a != b:
            return a > b
    return True


def sse_events(body: bytes) -> list[dict]:
    events = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        if payload == "[DONE]":
            events.append({"done": True})
        else:
            events.append(json.loads(payload))
    return events


def accumulate_tool_calls(events: list[dict]) -> dict[int, dict]:
    """What an OpenAI streaming client builds from tool-call deltas, by index."""
    calls: dict[int, dict] = {}
    for event in events:
        for choice in event.get("choices", []):
            for delta in choice.get("delta", {}).get("tool_calls", []) or []:
                call = calls.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.get("id") or call["id"]
                call["name"] += delta.get("function", {}).get("name") or ""
                call["arguments"] += delta.get("function", {}).get("arguments") or ""
    return calls


@pytest_twisted.ensureDeferred
async def test_vscode_copilot(proxy, simulator):
    version = await http("GET", proxy.url + "/api/version", headers=COPILOT)
    assert version.code == 200 and version_at_least(version.json()["version"], "0.6.4")
    tags = await http("GET", proxy.url + "/api/tags", headers=COPILOT)
    models = [m["model"] for m in tags.json()["models"]]
    known = {}
    for model in models:
        shown = await http("POST", proxy.url + "/api/show", {"model": model}, headers=COPILOT)
        assert shown.code == 200, model
        info = shown.json()
        context = info["model_info"].get(f"{info['model_info']['general.architecture']}.context_length", 4096)
        known[model] = {
            "context": context,
            "name": info["model_info"]["general.basename"],
            "tools": "tools" in info["capabilities"],
            "vision": "vision" in info["capabilities"],
        }
    assert known["openai/gpt-4o-mini:latest"] == {
        "context": 128000,
        "name": "gpt-4o-mini",
        "tools": True,
        "vision": True,
    }
    assert known["google/gemini-pro:latest"]["tools"] is False

    body = {
        "model": "openai/gpt-4o-mini:latest",
        "messages": [
            {"role": "system", "content": "You are an AI programming assistant."},
            {"role": "user", "content": [{"type": "text", "text": 'call get_weather {"city": "Zurich"}'}]},
        ],
        "stream": True,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "max_completion_tokens": 4096,
        "stream_options": {"include_usage": True},
    }
    turn = await http("POST", proxy.url + "/v1/chat/completions", body, headers=COPILOT_CHAT)
    assert turn.code == 200 and turn.header("content-type") == "text/event-stream"
    events = sse_events(turn.body)
    assert events[-1] == {"done": True} and events[-2]["usage"]["total_tokens"] > 0
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    calls = accumulate_tool_calls(events)
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Zurich"}
    sent = last_chat(simulator)
    assert sent["tool_choice"] == "auto" and sent["max_completion_tokens"] == 4096 and "n" not in sent
    # The client's empty bearer token is not passed on: the upstream sees the proxy's key.
    assert simulator.chat_requests()[-1].headers["authorization"] == f"Bearer {API_KEY}"

    body["messages"] += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "snow"},
    ]
    answer = await http("POST", proxy.url + "/v1/chat/completions", body, headers=COPILOT_CHAT)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(answer.body) if e.get("choices"))
    assert text == "Tool said: snow"


@pytest_twisted.ensureDeferred
async def test_open_webui(proxy, simulator):
    version = await http("GET", proxy.url + "/api/version", headers=OPEN_WEBUI)
    assert version.json()["version"]
    tags = await http("GET", proxy.url + "/api/tags", headers=OPEN_WEBUI)
    names = {m["name"] for m in tags.json()["models"]}
    assert {m["model"] for m in tags.json()["models"]} == names
    ps = await http("GET", proxy.url + "/api/ps", headers=OPEN_WEBUI)
    assert ps.json() == {"models": []}

    # Open WebUI appends ":latest" and leaves "stream" out: the server default (true) applies.
    body = {
        "model": "deepseek/deepseek-r1:latest",
        "messages": [{"role": "user", "content": "why is the sky blue"}],
        "options": {"temperature": 0.7, "num_ctx": 4096},
        "think": True,
        "keep_alive": "10m",
    }
    chat = await http("POST", proxy.url + "/api/chat", body, headers={**OPEN_WEBUI, "Content-Type": "application/json"})
    assert chat.code == 200 and chat.header("content-type") == "application/x-ndjson"
    lines = chat.lines()
    assert "".join(entry["message"].get("thinking", "") for entry in lines) == "Thinking about: why is the sky blue"
    assert "".join(entry["message"]["content"] for entry in lines) == "Echo: why is the sky blue"
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    assert last_chat(simulator)["reasoning"] == {"enabled": True}

    # It then polls /api/ps and reads expires_at with datetime.fromisoformat.
    ps = await http("GET", proxy.url + "/api/ps", headers=OPEN_WEBUI)
    loaded = {m["name"]: m for m in ps.json()["models"]}
    expires = datetime.fromisoformat(loaded["deepseek/deepseek-r1:latest"]["expires_at"])
    assert 590 <= expires.timestamp() - datetime.now().timestamp() <= 601  # keep_alive 10m


@pytest_twisted.ensureDeferred
async def test_jetbrains_ai_assistant(proxy):
    probe = await http("HEAD", proxy.url + "/", headers=JETBRAINS)
    assert probe.code == 200 and probe.body == b""
    assert (await http("HEAD", proxy.url + "/api/version", headers=JETBRAINS)).code == 200
    assert (await http("HEAD", proxy.url + "/api/tags", headers=JETBRAINS)).code == 200
    tags = await http("GET", proxy.url + "/api/tags", headers=JETBRAINS)
    assert tags.code == 200
    name = next(m["name"] for m in tags.json()["models"] if m["name"].startswith("google/gemini-pro"))
    shown = await http(
        "POST", proxy.url + "/api/show", {"name": name}, headers={**JETBRAINS, "Content-Type": "application/json"}
    )
    assert shown.code == 200 and shown.json()["details"]["family"] == "gemini"
    chat = await http(
        "POST",
        proxy.url + "/api/chat",
        {
            "model": name,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "explain this code"},
            ],
            "stream": True,
            "options": {"temperature": 0.2},
        },
        headers={**JETBRAINS, "Content-Type": "application/json"},
    )
    lines = chat.lines()
    assert chat.header("content-type") == "application/x-ndjson" and len(lines) == 5
    assert "".join(entry["message"]["content"] for entry in lines) == "Echo: explain this code"
    assert all(entry["model"] == name for entry in lines) and lines[-1]["done"]
