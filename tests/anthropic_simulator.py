"""A simulator of Anthropic's Messages API, on loopback.

``POST /v1/messages`` answers with Anthropic's SSE event types (``message_start``,
``content_block_start`` / ``_delta`` / ``_stop``, ``ping``, ``message_delta``,
``message_stop``, and ``error`` mid-stream), and checks what the real API checks:
the ``x-api-key`` and ``anthropic-version`` headers, ``max_tokens``, alternating
roles starting with a user turn, ``tool_result`` blocks answering the
``tool_use`` ids of the turn before, and no ``temperature`` with thinking.

What it answers:
- text: ``Echo:`` and the last user text, word by word;
- with ``thinking``: a thinking block first (``thinking_delta``, ``signature_delta``);
- with ``tools`` and a plain user turn: a ``tool_use`` block for the first tool,
  its input streamed as ``input_json_delta`` pieces, ``stop_reason: tool_use``;
- after a ``tool_result``: ``Tool said: <content>``;
- ``POST /v1/messages/count_tokens``: the same count as the stream's usage, plus 1000
  (so a test can tell it from the proxy's estimate).

A request that marks anything with ``cache_control`` gets ``cache_read_input_tokens``
in its usage; thinking blocks sent back must carry the signature the simulator gave.

Behaviours (``behaviour`` attribute): ``overloaded`` (529), ``midstream-error``
(an ``error`` event after the first words), ``stall`` (silent after the
first word), ``silent`` (silent before any content), plus :meth:`fail_next`;
``tool_uses``: how many tool_use blocks answer a request with tools (1).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import NOT_DONE_YET, Request

from .simbase import SimulatorBase, last_user_text

API_KEY = "sk-ant-simulator-secret-0123456789"
MODELS = [
    {
        "type": "model",
        "id": "claude-sonnet-4-5",
        "display_name": "Claude Sonnet 4.5",
        "created_at": "2025-09-29T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-5-haiku-latest",
        "display_name": "Claude Haiku 3.5",
        "created_at": "2024-10-22T00:00:00Z",
    },
    {"type": "model", "id": "claude-opus-4-1", "display_name": "Claude Opus 4.1", "created_at": "2025-08-05T00:00:00Z"},
]


# The signature the simulator puts on its thinking, and wants back with it.
SIGNATURE = "sig=="


def input_tokens(body: dict[str, Any]) -> int:
    """The simulator's token count: words of the messages as JSON."""
    return sum(len(json.dumps(m.get("content")).split()) for m in body.get("messages") or () if isinstance(m, dict))


def cached(body: dict[str, Any]) -> bool:
    """Whether the request marks anything with ``cache_control`` (then usage shows a cache read)."""
    return '"cache_control"' in json.dumps(body)


class AnthropicSimulator(SimulatorBase):
    """Mount point: the root; the API lives under ``/v1``."""

    def __init__(self, reactor: Any, *, api_key: str = API_KEY, page_size: int = 2) -> None:
        super().__init__(reactor)
        self.api_key = api_key
        self.models = list(MODELS)
        self.page_size = page_size
        self.tool_uses = 1  # tool_use blocks in an answer to a request with tools

    def start(self, prefix: str = "") -> str:
        return super().start(prefix) + "/v1"

    def _error(self, request: Request, status: int, kind: str, message: str) -> bytes:
        return self.json(request, {"type": "error", "error": {"type": kind, "message": message}}, status)

    def render(self, request: Request) -> Any:
        recorded = self.record(request)
        path = request.path.decode()
        if request.getHeader(b"x-api-key") != self.api_key.encode():
            return self._error(request, 401, "authentication_error", "invalid x-api-key")
        if not request.getHeader(b"anthropic-version"):
            return self._error(request, 400, "invalid_request_error", "anthropic-version header is required")
        if request.method == b"GET" and path == "/v1/models":
            return self._models(request)
        if request.method == b"POST" and path == "/v1/messages/count_tokens":
            return self._count(request, recorded.body)
        if request.method != b"POST" or path != "/v1/messages":
            return self._error(request, 404, "not_found_error", f"no route {path}")
        injected = self.take_injected()
        if injected is not None:
            if injected.retry_after:
                request.setHeader(b"retry-after", injected.retry_after.encode())
            kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}.get(
                injected.status, "api_error"
            )
            return self._error(request, injected.status, kind, f"injected failure {injected.status}")
        if self.behaviour == "overloaded":
            return self._error(request, 529, "overloaded_error", "Overloaded")
        body = recorded.body
        problem = self._invalid(body)
        if problem:
            return self._error(request, 400, "invalid_request_error", problem)
        if body["model"] not in {m["id"] for m in self.models}:
            return self._error(request, 404, "not_found_error", f"model: {body['model']}")
        return _MessageStream(self, request, body).start()

    def _count(self, request: Request, body: Any) -> bytes:
        """``count_tokens``: the same count the stream reports, without max_tokens."""
        if not isinstance(body, dict) or "max_tokens" in body or "stream" in body:
            return self._error(request, 400, "invalid_request_error", "count_tokens takes no max_tokens or stream")
        problem = self._invalid_messages(body)
        if problem:
            return self._error(request, 400, "invalid_request_error", problem)
        if body.get("model") not in {m["id"] for m in self.models}:
            return self._error(request, 404, "not_found_error", f"model: {body.get('model')}")
        return self.json(request, {"input_tokens": input_tokens(body) + 1000})

    def _models(self, request: Request) -> bytes:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        limit = min(int(args.get("limit", "20")), self.page_size)
        ids = [m["id"] for m in self.models]
        start = ids.index(args["after_id"]) + 1 if args.get("after_id") in ids else 0
        page = self.models[start : start + limit]
        return self.json(
            request,
            {
                "data": page,
                "has_more": start + limit < len(ids),
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            },
        )

    @staticmethod
    def _invalid(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be JSON"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        if body.get("stream") is not True:
            return "the simulator answers streams only"
        if "thinking" in body:
            budget = body["thinking"].get("budget_tokens", 0)
            if budget < 1024 or budget >= body["max_tokens"]:
                return "thinking.budget_tokens must be >= 1024 and less than max_tokens"
            if "temperature" in body or "top_k" in body:
                return "temperature and top_k may not be set with thinking"
        return AnthropicSimulator._invalid_messages(body)

    @staticmethod
    def _invalid_messages(body: dict[str, Any]) -> str | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        if messages[0].get("role") != "user":
            return "messages: first message must use the user role"
        previous_tools: set[str] = set()
        for index, message in enumerate(messages):
            if index and message.get("role") == messages[index - 1].get("role"):
                return "messages: roles must alternate between user and assistant"
            content = message.get("content")
            if isinstance(content, str) and content:
                content = [{"type": "text", "text": content}]  # the API takes a string as one text block
            if not isinstance(content, list) or not content:
                return f"messages.{index}.content: a non-empty string or list of blocks is expected"
            for block in content:
                if block.get("type") == "text" and not block.get("text"):
                    return "text content blocks must be non-empty"
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in previous_tools:
                    return f"tool_result block for unknown tool_use id {block.get('tool_use_id')}"
                if block.get("type") == "thinking" and block.get("signature") != SIGNATURE:
                    # Thinking sent back must be exactly what was signed: a lost signature is a 400.
                    return f"messages.{index}: Invalid `signature` in `thinking` block"
            previous_tools = {b["id"] for b in content if b.get("type") == "tool_use"}
        system = body.get("system")
        if isinstance(system, list) and not all(isinstance(b, dict) and b.get("type") == "text" for b in system):
            return "system: only text blocks are allowed"
        return None


class _MessageStream:
    def __init__(self, sim: AnthropicSimulator, request: Request, body: dict[str, Any]) -> None:
        self.sim = sim
        self.request = request
        self.body = body
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = False

    def start(self) -> Any:
        request, body = self.request, self.body
        request.setHeader(b"content-type", b"text/event-stream")
        request.notifyFinish().addErrback(self._lost)
        messages = body["messages"]
        last = messages[-1]["content"]
        if isinstance(last, str):
            last = [{"type": "text", "text": last}]
        results = [b for b in last if b.get("type") == "tool_result"]
        text = last_user_text(messages)
        blocks: list[tuple[str, Any]] = []
        stop = "end_turn"
        if "thinking" in body:
            blocks.append(("thinking", f"Thinking about: {text}"))
        if results:
            content = results[0].get("content")
            if isinstance(content, list):
                content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
            blocks.append(("text", f"Tool said: {content}".split(" ")))
        elif body.get("tools"):
            tool = body["tools"][0]
            for n in range(1, self.sim.tool_uses + 1):
                blocks.append(("tool_use", {"id": f"toolu_sim_{n}", "name": tool["name"], "input": {"query": text}}))
            stop = "tool_use"
        else:
            words = ["Echo:"] + text.split()
            if len(words) > body["max_tokens"]:
                words, stop = words[: body["max_tokens"]], "max_tokens"
            blocks.append(("text", words))
        prompt = input_tokens(body)
        self._add(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_sim",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": body["model"],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": prompt,
                        "output_tokens": 1,
                        "cache_read_input_tokens": 5 if cached(body) else 0,
                    },
                },
            },
        )
        output = 0
        for index, (kind, value) in enumerate(blocks):
            if kind == "thinking":
                self._add(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": ""},
                    },
                )
                for piece in value.split(" "):
                    self._add(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "thinking_delta", "thinking": piece + " "},
                        },
                    )
                self._add(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": SIGNATURE},
                    },
                )
            elif kind == "tool_use":
                self._add(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "tool_use", "id": value["id"], "name": value["name"], "input": {}},
                    },
                )
                raw = json.dumps(value["input"])
                for start in range(0, len(raw), 7):
                    self._add(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": raw[start : start + 7]},
                        },
                    )
                output += 10
            else:
                self._add(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
                if index == 0:
                    self._add("ping", {"type": "ping"})
                for position, word in enumerate(value):
                    self._add(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": word if position == 0 else " " + word},
                        },
                    )
                output += len(value)
            self._add("content_block_stop", {"type": "content_block_stop", "index": index})
        self._add(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        )
        self._add("message_stop", {"type": "message_stop"})
        self._run()
        return NOT_DONE_YET

    def _add(self, name: str, data: dict[str, Any]) -> None:
        self.events.append((name, data))

    def _lost(self, _: Any) -> None:
        if not self.done:
            self.done = True
            self.sim.aborted()

    def _write(self, name: str, data: dict[str, Any]) -> None:
        self.request.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def _run(self) -> None:
        behaviour = self.sim.behaviour
        text_deltas = 0
        for name, data in self.events:
            if behaviour == "silent" and name == "content_block_start":
                return  # headers and message_start went out; then nothing
            self._write(name, data)
            if data.get("delta", {}).get("type") == "text_delta":
                text_deltas += 1
                if behaviour == "stall" and text_deltas == 1:
                    return
                if behaviour == "midstream-error" and text_deltas == 2:
                    self._write(
                        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    )
                    break
        self.done = True
        self.request.finish()
