"""Replays of what Claude Code and OpenAI's Codex CLI send, over raw HTTP.

Written from their public documentation and source: Claude Code posts to
``/v1/messages?beta=true`` with ``anthropic-version``, ``anthropic-beta``, ``x-app``
and the Stainless SDK headers, a ``system`` array with ``cache_control``, dozens
of tools with draft-07 schemas, ``metadata.user_id``, always streaming, plus
cheap background calls on its small model and ``count_tokens``. Codex posts to
``/v1/responses`` with ``store: false``, ``include: ["reasoning.encrypted_content"]``,
``parallel_tool_calls: false``, ``reasoning`` with a summary, a
``prompt_cache_key``, function tools, and sends back reasoning items, function
calls and their outputs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from ollama_proxy.config.credentials import ClientToken, token_digest
from ollama_proxy.config.ops import AuthConfig, OpsConfig
from ollama_proxy.config.providers import RoutingConfig

from .conftest import http

ALIASES = RoutingConfig(
    aliases=(
        ("claude-sonnet-4-5-20250929", "openai/gpt-4o-mini"),
        ("claude-haiku-4-5-20251001", "google/gemini-pro"),
        ("gpt-oss:20b", "openai/gpt-4o-mini"),
    )
)
CLAUDE_HEADERS = {
    "Authorization": "Bearer ollama",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "User-Agent": "claude-cli/2.1.92 (external, cli)",
    "x-stainless-lang": "js",
    "x-stainless-package-version": "0.80.0",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
    "Accept": "application/json",
}
CODEX_HEADERS = {
    "Authorization": "Bearer ollama",
    "OpenAI-Beta": "responses=experimental",
    "originator": "codex_cli_rs",
    "session_id": "0199a0e1-5c1e-7b52-9e43-1b2f7d3c4e5f",
    "conversation_id": "0199a0e1-5c1e-7b52-9e43-1b2f7d3c4e5f",
    "User-Agent": "codex_cli_rs/0.46.0 (Linux 6.8.0; x86_64) xterm-256color",
    "Accept": "text/event-stream",
}


def draft07(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    }


CLAUDE_TOOLS = [
    {
        "name": "Task",
        "description": "Launch an agent",
        "input_schema": draft07(
            {"description": {"type": "string"}, "prompt": {"type": "string"}}, ["description", "prompt"]
        ),
    },
    {
        "name": "Bash",
        "description": "Run a command",
        "input_schema": draft07({"command": {"type": "string"}, "timeout": {"type": "number"}}, ["command"]),
    },
    {
        "name": "Glob",
        "description": "Find files",
        "input_schema": draft07({"pattern": {"type": "string"}}, ["pattern"]),
    },
    {
        "name": "Read",
        "description": "Read a file",
        "input_schema": draft07({"file_path": {"type": "string"}}, ["file_path"]),
    },
    {
        "name": "Edit",
        "description": "Edit a file",
        "input_schema": draft07(
            {"file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}},
            ["file_path", "old_string", "new_string"],
        ),
    },
    {
        "name": "TodoWrite",
        "description": "Keep a todo list",
        "input_schema": draft07({"todos": {"type": "array", "items": {"type": "object"}}}, ["todos"]),
    },
]
SYSTEM = [
    {
        "type": "text",
        "text": "You are Claude Code, Anthropic's official CLI for Claude.",
        "cache_control": {"type": "ephemeral"},
    },
    {
        "type": "text",
        "text": "Working directory: /tmp/project\nIs git repo: Yes",
        "cache_control": {"type": "ephemeral"},
    },
]


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The named SSE events of a stream, in order."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


@pytest_twisted.ensureDeferred
async def test_claude_code_session(make_proxy, simulator):
    proxy = make_proxy(routing=ALIASES)
    url = proxy.url + "/v1/messages?beta=true"
    user_turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>Context reminder.</system-reminder>"},
            {
                "type": "text",
                "text": 'call Read {"file_path": "/tmp/project/README.md"}',
                "cache_control": {"type": "ephemeral"},
            },
        ],
    }
    main = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "temperature": 1,
        "stream": True,
        "system": SYSTEM,
        "tools": CLAUDE_TOOLS,
        "metadata": {"user_id": "user_0123_account__session_4567"},
        "messages": [user_turn],
    }
    r = await http("POST", url, main, headers=CLAUDE_HEADERS)
    assert r.code == 200 and r.header("content-type").startswith("text/event-stream")
    stream = events(r.body)
    names = [name for name, _ in stream]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in stream)
    start = next(d for n, d in stream if n == "content_block_start" and d["content_block"]["type"] == "tool_use")
    tool_use = start["content_block"]
    fragments = [
        d["delta"]["partial_json"] for n, d in stream if n == "content_block_delta" and d["index"] == start["index"]
    ]
    assert len(fragments) > 1  # streamed as the upstream writes them
    json_text = "".join(
        d["delta"]["partial_json"] for n, d in stream if n == "content_block_delta" and d["index"] == start["index"]
    )
    assert tool_use["name"] == "Read" and json.loads(json_text) == {"file_path": "/tmp/project/README.md"}
    assert stream[-2][1]["delta"]["stop_reason"] == "tool_use"
    sent = simulator.chat_requests()[-1].body
    assert sent["model"] == "openai/gpt-4o-mini" and [t["function"]["name"] for t in sent["tools"]] == [
        t["name"] for t in CLAUDE_TOOLS
    ]
    assert sent["messages"][0]["content"].startswith("You are Claude Code")

    # The tool result comes back with the whole history (as Claude Code resends it).
    follow = {
        **main,
        "messages": [
            user_turn,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": tool_use["id"],
                        "name": "Read",
                        "input": {"file_path": "/tmp/project/README.md"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_use["id"],
                        "content": [{"type": "text", "text": "# Project"}],
                    }
                ],
            },
        ],
    }
    r = await http("POST", url, follow, headers=CLAUDE_HEADERS)
    text = "".join(d["delta"].get("text", "") for n, d in events(r.body) if n == "content_block_delta")
    assert r.code == 200 and text == "Tool said: # Project"

    # Background work on the small model: a title, not streamed; and the one-token quota probe.
    title = {
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Summarize this coding conversation in under 50 characters."}],
        "messages": [{"role": "user", "content": "fix the failing test"}],
        "metadata": {"user_id": "user_0123_account__session_4567"},
    }
    r = await http("POST", url, title, headers=CLAUDE_HEADERS)
    assert r.code == 200 and r.json()["content"] == [{"type": "text", "text": "Echo: fix the failing test"}]
    quota = {"model": "claude-haiku-4-5-20251001", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    assert (await http("POST", url, quota, headers=CLAUDE_HEADERS)).code == 200

    counted = await http(
        "POST",
        proxy.url + "/v1/messages/count_tokens?beta=true",
        {"model": "claude-sonnet-4-5-20250929", "system": SYSTEM, "tools": CLAUDE_TOOLS, "messages": [user_turn]},
        headers=CLAUDE_HEADERS,
    )
    assert counted.code == 200 and counted.json()["input_tokens"] > 100


@pytest_twisted.ensureDeferred
async def test_claude_code_authenticates_with_either_header(make_proxy):
    auth = AuthConfig(enabled=True, tokens=(ClientToken(name="dev", sha256=token_digest("s3cret")),))
    proxy = make_proxy(routing=ALIASES, ops=OpsConfig(auth=auth))
    body = {"model": "claude-haiku-4-5-20251001", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    base = {k: v for k, v in CLAUDE_HEADERS.items() if k != "Authorization"}
    by_key = await http("POST", proxy.url + "/v1/messages?beta=true", body, headers={**base, "x-api-key": "s3cret"})
    by_bearer = await http("POST", proxy.url + "/v1/messages", body, headers={**base, "Authorization": "Bearer s3cret"})
    assert by_key.code == by_bearer.code == 200
    wrong = await http("POST", proxy.url + "/v1/messages", body, headers={**base, "x-api-key": "guess"})
    assert wrong.code == 401 and wrong.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid bearer token"},
    }
    # x-api-key is Anthropic's convention: elsewhere it is not a token.
    other = await http(
        "POST", proxy.url + "/v1/responses", {"model": "gpt-oss:20b", "input": "x"}, headers={"x-api-key": "s3cret"}
    )
    assert other.code == 401 and other.json()["error"]["type"] == "api_error"


CODEX_TOOLS = [
    {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command and returns its output.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": {"type": "string"}},
                "workdir": {"type": "string"},
                "timeout_ms": {"type": "number"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function",
        "name": "update_plan",
        "description": "Updates the task plan.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"plan": {"type": "array", "items": {"type": "object"}}},
            "required": ["plan"],
        },
    },
]


def codex_request(input_items: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    return {
        "model": "gpt-oss:20b",
        "instructions": "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI.",
        "input": input_items,
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a0e1-5c1e-7b52-9e43-1b2f7d3c4e5f",
        "text": {"verbosity": "medium"},
        **overrides,
    }


@pytest_twisted.ensureDeferred
async def test_codex_session(make_proxy, simulator):
    proxy = make_proxy(routing=ALIASES)
    url = proxy.url + "/v1/responses"
    context = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "<environment_context>\n  <cwd>/tmp/project</cwd>\n</environment_context>"}
        ],
    }
    ask = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": 'call shell {"command": ["ls", "-la"]}'}],
    }
    r = await http("POST", url, codex_request([context, ask]), headers=CODEX_HEADERS)
    assert r.code == 200 and r.header("content-type").startswith("text/event-stream")
    stream = events(r.body)
    assert [d["sequence_number"] for _, d in stream] == list(range(len(stream)))
    assert all(name == data["type"] for name, data in stream)
    done = [d["item"] for n, d in stream if n == "response.output_item.done"]
    [call] = [i for i in done if i["type"] == "function_call"]
    assert call["name"] == "shell" and json.loads(call["arguments"]) == {"command": ["ls", "-la"]}
    assert stream[-1][0] == "response.completed" and stream[-1][1]["response"]["store"] is False
    sent = simulator.chat_requests()[-1].body
    assert sent["parallel_tool_calls"] is False and sent["messages"][0]["role"] == "system"

    # The next turn resends everything: a reasoning item it was given, the call, and its output.
    history = [
        context,
        ask,
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "List files."}],
            "encrypted_content": "gAAAA...",
        },
        {
            "type": "function_call",
            "id": call["id"],
            "call_id": call["call_id"],
            "name": "shell",
            "arguments": call["arguments"],
        },
        {
            "type": "function_call_output",
            "call_id": call["call_id"],
            "output": json.dumps({"output": "README.md\n", "metadata": {"exit_code": 0}}),
        },
    ]
    r = await http("POST", url, codex_request(history), headers=CODEX_HEADERS)
    final = events(r.body)[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][-1]["content"][0]["text"].startswith("Tool said: ")

    # Tools Codex may offer that only OpenAI runs: refused by name, in OpenAI's shape, before any stream.
    for tool in (
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        {"type": "web_search"},
        {"type": "local_shell"},
    ):
        r = await http("POST", url, codex_request([ask], tools=[*CODEX_TOOLS, tool]), headers=CODEX_HEADERS)
        assert r.code == 400 and f"'{tool['type']}'" in r.json()["error"]["message"], r.body
