"""An upstream simulator that speaks OpenRouter's (and OpenAI's) wire format.

It runs on loopback inside the test's reactor and behaves like the real thing:
SSE with ``: OPENROUTER PROCESSING`` comment lines, usage in a last chunk after
the finish chunk, ``data: [DONE]``, mid-stream error chunks, 401/429/5xx error
bodies, slow, stalled and endless streams, abrupt disconnects, events split across
TCP writes. It records every request and counts connections, so a test can prove
that the proxy closed an upstream stream when its client went away.

The behaviour is chosen by the model id (``sim/stall``, ``sim/fail-429`` ...),
forced for every chat stream with ``behaviour = "stall"`` (any model), or
injected for the next requests with :meth:`UpstreamSimulator.fail_next`. Several
simulators can run at once (one per provider) with their own model lists.

Like the real providers it is strict about what it is sent: a ``tool`` message
must answer an earlier assistant tool call by ``tool_call_id``, tool-call
arguments must be JSON strings, an image must be a data URI whose media type
matches its bytes, and tools or images sent to a model without that capability
get OpenRouter's 404. It answers with what the request asks for:

- tool calls when ``tools`` are given and the last user message says
  ``call NAME {json arguments}`` (once per call): streamed the OpenAI way, the
  name and id first, then the argument string in fragments across events
  (``sim/tools-oneshot`` sends each call whole, without id or index, as some
  providers do); a ``tool`` message last gets ``Tool said: <content>``;
- reasoning (``delta.reasoning`` plus ``reasoning_details``, as OpenRouter sends
  both) before the answer, for models that support it, unless the request
  turns it off; ``sim/reasoning-details`` sends only ``reasoning_details``;
- logprobs per token when ``logprobs`` is asked for (-Infinity for the word "impossible");
- embeddings: NaN and infinities for the text "non-finite";
- JSON (``{"echo": ...}``, or an object filling a ``json_schema``'s properties)
  when a ``response_format`` asks for it;
- `` [image/png]`` (the media type) appended for each image received.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request

from .simbase import RecordedRequest, SimulatorBase

API_KEY = "sk-or-v1-simulator-secret-0123456789abcdef"
# The signature on the simulator's reasoning (handed back in reasoning_details).
REASONING_SIGNATURE = "or-sig=="
# USD per token, as every model's listing publishes it.
PROMPT_PRICE = 0.000001
COMPLETION_PRICE = 0.000002


def _headers_echoed(request: Request, values_only: bool = False) -> str:
    """Every request header, credentials first, as a careless upstream echoes them."""
    pairs = sorted(
        ((k.decode(), v.decode()) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs),
        key=lambda pair: {"api-key": 0, "x-api-key": 0, "authorization": 1}.get(pair[0].lower(), 2),
    )
    return " ".join(v if values_only else f"{k}: {v};" for k, v in pairs)


def _model(
    id: str,
    *,
    context: int = 8192,
    modalities: tuple[str, ...] = ("text",),
    params: tuple[str, ...] = ("temperature", "top_p", "max_tokens", "stop"),
    created: int = 1_700_000_000,
) -> dict[str, Any]:
    return {
        "id": id,
        "name": id.split("/")[-1].replace("-", " ").title(),
        "created": created,
        "context_length": context,
        "architecture": {"input_modalities": list(modalities), "output_modalities": ["text"], "modality": "text->text"},
        "supported_parameters": list(params),
        "pricing": {"prompt": f"{PROMPT_PRICE:.6f}", "completion": f"{COMPLETION_PRICE:.6f}"},
    }


def _bare(entry: dict[str, Any]) -> dict[str, Any]:
    """A listing entry as OpenAI's own ``/models`` writes it: nothing about capabilities."""
    return {"id": entry["id"], "object": "model", "created": entry["created"], "owned_by": "system"}


CHAT_MODELS: list[dict[str, Any]] = [
    _model(
        "openai/gpt-4o-mini",
        context=128000,
        modalities=("text", "image"),
        params=(
            "tools",
            "tool_choice",
            "temperature",
            "top_p",
            "max_tokens",
            "response_format",
            "structured_outputs",
            "seed",
            "stop",
        ),
        created=1_721_260_800,
    ),
    _model("google/gemini-pro", context=32768),
    _model("meta-llama/llama-3.1-8b-instruct:free", context=131072),
    _model(
        "deepseek/deepseek-r1", context=65536, params=("reasoning", "include_reasoning", "temperature", "max_tokens")
    ),
    _model("sim/tools-oneshot", params=("tools", "tool_choice", "temperature")),
    _model("sim/reasoning-details", params=("reasoning", "temperature")),
    _model("sim/slow"),
    _model("sim/stall"),
    _model("sim/silent"),
    _model("sim/endless"),
    _model("sim/midstream-error"),
    _model("sim/midstream-leak"),
    _model("sim/error-first"),
    _model("sim/disconnect"),
    _model("sim/abort"),
    _model("sim/cut"),
    _model("sim/crlf-split"),
    _model("sim/fail-401"),
    _model("sim/fail-429"),
    _model("sim/fail-500"),
    _model("sim/fail-503"),
    _model("sim/no-headers"),
    _model("sim/leaky-error"),
    _model("sim/leaky-quoted"),
    _model("sim/leaky-text"),
    _model("sim/deep-error"),
    _model("sim/hold"),
    _model("sim/hold-partial"),
    _model("sim/flood"),
    _model("sim/raw"),
    _model("sim/fail-leak"),
]
EMBEDDING_MODELS: list[dict[str, Any]] = [
    {
        **_model("openai/text-embedding-3-small", context=8192),
        "architecture": {"input_modalities": ["text"], "output_modalities": ["embeddings"]},
    },
]


def fake_vector(text: str, size: int = 8) -> list[float]:
    """A deterministic vector for ``text``, what the simulator's embeddings answer."""
    if text == "non-finite":  # a broken upstream's numbers, which JSON cannot carry
        return [math.nan, math.inf, -math.inf] + [0.5] * (size - 3)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round((digest[i] - 128) / 128.0, 6) for i in range(size)]


def reply_words(messages: list[dict[str, Any]]) -> list[str]:
    """The tokens the simulator answers: ``Echo:`` and the last user message, word by word."""
    last = ""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
            last = content or ""
    words = ["Echo:"] + last.split()
    return [words[0]] + [" " + w for w in words[1:]]


_CALL = re.compile(r"call\s+([A-Za-z_][\w-]*)\s*(\{.*?\})(?=\s*(?:call\s|$))", re.DOTALL)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def requested_calls(text: str) -> list[tuple[str, str]]:
    """``call NAME {json}`` instructions in a user message: (name, arguments JSON)."""
    return [(m.group(1), json.dumps(json.loads(m.group(2)))) for m in _CALL.finditer(text)]


def image_media_types(messages: list[dict[str, Any]]) -> list[str]:
    """The media types of the images in the last user message (checked against their bytes)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            return []
        types = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("http"):
                types.append("url")
                continue
            match = re.match(r"data:([^;,]+);base64,(.*)", url, re.DOTALL)
            if not match:
                raise ValueError("image_url must be a data URI or an http(s) URL")
            data = base64.b64decode(match.group(2), validate=True)
            actual = next((t for magic, t in _MAGIC if data.startswith(magic)), "unknown")
            if actual != match.group(1):
                raise ValueError(f"image declared {match.group(1)} but is {actual}")
            types.append(actual)
        return types
    return []


def check_history(messages: list[dict[str, Any]]) -> str | None:
    """What OpenAI would refuse in the message list, or ``None``."""
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                if not call.get("id"):
                    return f"messages[{i}].tool_calls[].id is required"
                arguments = call.get("function", {}).get("arguments")
                if not isinstance(arguments, str):
                    return f"messages[{i}].tool_calls[].function.arguments must be a string"
                json.loads(arguments)
                open_calls.add(call["id"])
        elif role == "tool" and message.get("tool_call_id") not in open_calls:
            return (
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                f"with 'tool_calls' (messages[{i}])."
            )
    return None


def schema_example(schema: Any) -> Any:
    """A value that satisfies a simple JSON schema (what the simulator answers)."""
    if not isinstance(schema, dict):
        return "Echo"
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {k: schema_example(v) for k, v in (schema.get("properties") or {}).items()}
    return {"string": "Echo", "integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None}.get(kind, "Echo")


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            count += len(content.split())
    return count


class UpstreamSimulator(SimulatorBase):
    """The simulated provider. Mount point: ``/api/v1`` (OpenRouter's path)."""

    def __init__(self, reactor: Any, *, api_key: str = API_KEY, slow_interval: float = 0.02) -> None:
        super().__init__(reactor)
        self.api_key = api_key
        self.slow_interval = slow_interval
        self.chat_models = list(CHAT_MODELS)
        self.embedding_models = list(EMBEDDING_MODELS)
        self.streams_started = 0
        self.tokens_sent = 0
        self._token_waiters: list[Deferred[None]] = []
        self.models_status: int | None = None
        # "stall-body": /models sends its headers and a piece of the body, then nothing;
        # "no-headers": /models never answers at all.
        self.models_behaviour: str | None = None
        self.held_model_requests: list[Any] = []
        # "bare": /models lists only {id, object, created, owned_by}, as OpenAI's own API, Groq,
        # vLLM, LM Studio and llama.cpp do (no supported_parameters, no architecture).
        self.listing = "openrouter"
        # sim/hold: streams that sent their first token and wait for release_holds().
        self.held: list[_Stream] = []
        self._hold_waiters: list[Deferred[None]] = []
        # sim/flood: how often its socket pushed back, how much it sent, whether it finished.
        self.flood_pauses = 0
        self.flood_bytes = 0
        self.flood_done = False
        self.flood_connections: list[Any] = []
        self._pause_waiters: list[Deferred[None]] = []
        # sim/raw: the exact bytes of the next SSE body.
        self.raw_stream = b""
        self.prefix = "/api/v1"

    # -- control ------------------------------------------------------------------
    def start(self, prefix: str = "/api/v1") -> str:
        """Listen on a free loopback port; returns the base URL (``...<prefix>``):
        ``/api/v1`` as OpenRouter, ``/v1`` as OpenAI and most compatible servers."""
        return super().start(prefix)

    def wait_for_token(self) -> Deferred[None]:
        """Fires when the simulator sends its next token."""
        d: Deferred[None] = Deferred()
        self._token_waiters.append(d)
        return d

    def _token(self) -> None:
        self.tokens_sent += 1
        waiters, self._token_waiters = self._token_waiters, []
        for d in waiters:
            d.callback(None)

    def wait_for_hold(self) -> Deferred[None]:
        """Fires when a ``sim/hold`` stream has sent its first token and waits."""
        d: Deferred[None] = Deferred()
        if self.held:
            d.callback(None)
        else:
            self._hold_waiters.append(d)
        return d

    def release_holds(self) -> None:
        """Let every held ``sim/hold`` stream go on to its end."""
        held, self.held = self.held, []
        for stream in held:
            stream._next()

    def wait_for_flood_pause(self) -> Deferred[None]:
        """Fires at the next push-back on a ``sim/flood`` stream (its socket buffer is
        full), or when the flood has sent everything (``flood_done``)."""
        d: Deferred[None] = Deferred()
        self._pause_waiters.append(d)
        return d

    def _held(self, stream: _Stream) -> None:
        self.held.append(stream)
        waiters, self._hold_waiters = self._hold_waiters, []
        for d in waiters:
            d.callback(None)

    def _flood_paused(self, done: bool = False) -> None:
        self.flood_pauses += 0 if done else 1
        self.flood_done = self.flood_done or done
        waiters, self._pause_waiters = self._pause_waiters, []
        for d in waiters:
            d.callback(None)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- HTTP -----------------------------------------------------------------------
    def render(self, request: Request) -> Any:
        recorded = self.record(request)
        path, headers, body = recorded.path, recorded.headers, recorded.body
        route = path[len(self.prefix) :]
        if request.method == b"GET" and route == "/models":
            if self.models_status:
                return self._error(request, self.models_status, "models unavailable")
            if self.models_behaviour is not None:
                self.held_model_requests.append(request)
                if self.models_behaviour == "stall-body":
                    request.setHeader(b"content-type", b"application/json")
                    request.write(b'{"data": [')
                return NOT_DONE_YET
            if self.listing == "bare":
                return self.json(request, {"object": "list", "data": [_bare(m) for m in self.chat_models]})
            return self.json(request, {"data": self.chat_models})
        if request.method == b"GET" and route == "/embeddings/models":
            return self.json(request, {"data": self.embedding_models})
        if request.method != b"POST" or route not in ("/chat/completions", "/embeddings", "/completions"):
            return self._error(request, 404, f"no route {route}")
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(request, 401, "No auth credentials found")
        if not isinstance(body, dict):
            return self._error(request, 400, "body must be JSON")
        injected = self.take_injected()
        if injected is not None:
            if injected.retry_after:
                request.setHeader(b"retry-after", injected.retry_after.encode())
            return self._error(request, injected.status, f"injected failure {injected.status}")
        if route == "/embeddings":
            return self._embeddings(request, body)
        return self._chat(request, body)

    def _error(self, request: Request, status: int, message: str) -> bytes:
        return self.json(
            request, {"error": {"code": status, "message": message, "metadata": {"provider_name": "sim"}}}, status
        )

    def _embeddings(self, request: Request, body: dict[str, Any]) -> bytes:
        model = body.get("model")
        if model not in {m["id"] for m in self.embedding_models}:
            return self._error(request, 404, f"model {model} is not an embedding model")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        context = next(m["context_length"] for m in self.embedding_models if m["id"] == model)
        for text in texts:
            # A rough tokenizer for the length limit: three characters a token.
            if math.ceil(len(text) / 3) > context:
                return self._error(
                    request,
                    400,
                    f"This model's maximum context length is {context} tokens, "
                    f"however you requested {math.ceil(len(text) / 3)} tokens",
                )
        size = int(body.get("dimensions") or 8)
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, size)} for i, t in enumerate(texts)]
        tokens = sum(len(t.split()) for t in texts)
        return self.json(
            request,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _chat(self, request: Request, body: dict[str, Any]) -> Any:
        model = str(body.get("model"))
        if model == "sim/fail-leak":
            # A careless upstream that echoes the caller's credentials in its error.
            return self._error(
                request, 500, f"upstream exploded handling {request.getHeader(b'authorization').decode()}"
            )
        if model.startswith("sim/fail-"):
            status = int(model.rsplit("-", 1)[1])
            if status == 429:
                request.setHeader(b"retry-after", b"7")
            return self._error(
                request,
                status,
                f"simulated {status} (key {self.api_key[:6]}... rejected)" if status == 401 else f"simulated {status}",
            )
        if model == "sim/leaky-error":
            # Some upstreams echo the credentials they rejected: the proxy must not.
            return self._error(request, 400, f"bad request with headers {_headers_echoed(request)}")
        if model == "sim/leaky-quoted":
            # ... URL-encoded (a query string in a message) and JSON-escaped twice over.
            echoed = _headers_echoed(request)
            encoded = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in echoed)  # "_" too, as some do
            return self._error(request, 400, f"bad request ?q={encoded} {json.dumps(echoed)[1:-1]}")
        if model == "sim/deep-error":
            # An error body nested deeper than any parser follows.
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            return b"[" * 100_000 + b"]" * 100_000
        if model == "sim/leaky-text":
            # A non-JSON error body in which the first credential straddles character 500.
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/plain")
            return ("." * 484 + _headers_echoed(request, values_only=True)).encode()
        entry = next((m for m in self.chat_models if m["id"] == model), None)
        if entry is None:
            return self._error(request, 404, f"{model} is not a valid model ID")
        messages = body.get("messages") or []
        problem = check_history(messages)
        if problem:
            return self._error(request, 400, problem)
        if body.get("tools") and "tools" not in entry["supported_parameters"]:
            return self._error(request, 404, "No endpoints found that support tool use.")
        try:
            images = image_media_types(messages)
        except ValueError as error:
            return self._error(request, 400, str(error))
        if images and "image" not in entry["architecture"]["input_modalities"]:
            return self._error(request, 404, "No endpoints found that support image input")
        words = reply_words(messages)
        last = messages[-1] if messages else {}
        calls = (
            requested_calls(_text_of(last.get("content"))) if body.get("tools") and last.get("role") == "user" else []
        )
        if last.get("role") == "tool":
            words = ["Tool", " said:"] + [" " + w for w in _text_of(last.get("content")).split()]
        words += [f" [{t}]" for t in images]
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_object", "json_schema"):
            value = (
                schema_example(fmt.get("json_schema", {}).get("schema"))
                if fmt.get("type") == "json_schema"
                else {"echo": "".join(words)}
            )
            text = json.dumps(value)
            words = [text[i : i + 7] for i in range(0, len(text), 7)]
        reasoning = self._reasons(entry, body)
        thoughts = (
            ["Thinking", " about:"]
            + [
                " " + w
                for w in _text_of(
                    next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
                ).split()
            ]
            if reasoning
            else []
        )
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "tool_calls" if calls else "stop"
        if calls:
            words = []
        if isinstance(max_tokens, int) and max_tokens < len(words):
            words = words[:max_tokens]
            finish = "length"
        usage = {
            "prompt_tokens": prompt_tokens(messages),
            "completion_tokens": len(words) + len(thoughts),
            "total_tokens": prompt_tokens(messages) + len(words) + len(thoughts),
        }
        accounting = body.get("usage")
        if isinstance(accounting, dict) and accounting.get("include"):
            # OpenRouter's usage accounting: what the call cost, in USD (list prices here).
            usage["cost"] = usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE
        if not body.get("stream"):
            return self.json(
                request,
                {
                    "id": "gen-sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )
        events = _events(model, words, thoughts, calls, body)
        streamed_as = f"sim/{self.behaviour}" if self.behaviour else model
        return _Stream(self, request, streamed_as, words, finish, usage, events=events).start()

    @staticmethod
    def _reasons(entry: dict[str, Any], body: dict[str, Any]) -> bool:
        if "reasoning" not in entry["supported_parameters"]:
            return False
        setting = body.get("reasoning") or {}
        return not (setting.get("exclude") or setting.get("enabled") is False or setting.get("effort") == "none")


def _logprob(word: str, rank: int, top: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "token": word,
        # "impossible" gets what a broken upstream may send, which JSON cannot carry.
        "logprob": -math.inf if word.strip() == "impossible" else round(-0.25 * (rank % 4), 4),
        "bytes": list(word.encode("utf-8")),
    }
    entry["top_logprobs"] = [
        {"token": word if i == 0 else f"{word.strip()}~{i}", "logprob": round(-0.25 * (rank % 4) - i, 4), "bytes": None}
        for i in range(top)
    ]
    return entry


def _events(
    model: str, words: list[str], thoughts: list[str], calls: list[tuple[str, str]], body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The choice deltas of a stream, in order: reasoning, then text, then tool calls."""
    events: list[dict[str, Any]] = []
    for thought in thoughts:
        detail = {"type": "reasoning.text", "text": thought, "format": "unknown", "index": 0}
        delta: dict[str, Any] = {"content": "", "reasoning_details": [detail]}
        if model != "sim/reasoning-details":
            delta["reasoning"] = thought
        events.append({"delta": delta})
    if thoughts:
        # As OpenRouter passes Claude's on: the signature in a detail of its own, after the text.
        sealed = {"type": "reasoning.text", "text": "", "signature": REASONING_SIGNATURE, "index": 0}
        events.append({"delta": {"content": "", "reasoning_details": [sealed]}})
    top = int(body.get("top_logprobs") or 0)
    for rank, word in enumerate(words):
        event: dict[str, Any] = {"delta": {"content": word}}
        if body.get("logprobs"):
            event["logprobs"] = {"content": [_logprob(word, rank, top)], "refusal": None}
        events.append(event)
    for index, (name, arguments) in enumerate(calls):
        if model == "sim/tools-oneshot":
            events.append(
                {"delta": {"tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}}
            )
            continue
        call_id = f"call_sim_{index}_{hashlib.sha256(arguments.encode()).hexdigest()[:6]}"
        events.append(
            {
                "delta": {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                    ]
                }
            }
        )
        third = max(1, len(arguments) // 3)
        for start in range(0, len(arguments), third):
            events.append(
                {
                    "delta": {
                        "tool_calls": [{"index": index, "function": {"arguments": arguments[start : start + third]}}]
                    }
                }
            )
    return events


@dataclass
class _Stream:
    sim: UpstreamSimulator
    request: Request
    model: str
    words: list[str]
    finish: str
    usage: dict[str, Any]
    position: int = 0
    done: bool = False
    calls: list[Any] = field(default_factory=list)
    events: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.events is None:
            self.events = [{"delta": {"content": w}} for w in self.words]

    def start(self) -> Any:
        sim = self.sim
        sim.streams_started += 1
        self.request.setHeader(b"content-type", b"text/event-stream")
        self.request.setHeader(b"cache-control", b"no-cache")
        self.request.notifyFinish().addErrback(self._lost)
        if self.model == "sim/no-headers":
            return NOT_DONE_YET  # never answers: for the response timeout
        if self.model == "sim/flood":
            _Flood(self).start()
            return NOT_DONE_YET
        if self.model == "sim/raw":
            raw = self.sim.raw_stream
            # In uneven pieces, as TCP may deliver them.
            for start, end in ((0, 1), (1, 7), (7, 64), (64, len(raw))):
                if start < len(raw):
                    self.request.write(raw[start:end])
            self._end()
            return NOT_DONE_YET
        self.request.write(b": OPENROUTER PROCESSING\n\n")
        if self.model == "sim/silent":
            return NOT_DONE_YET  # headers, a keep-alive, then nothing: stalls before any token
        if self.model == "sim/error-first":
            self._event(
                {
                    "id": "gen-sim",
                    "object": "chat.completion.chunk",
                    "model": self.model,
                    "error": {"code": 502, "message": "Provider returned error"},
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                }
            )
            self._end()
            return NOT_DONE_YET
        self._next()
        return NOT_DONE_YET

    def _lost(self, _: Any) -> None:
        if not self.done:
            self.done = True
            for call in self.calls:
                if call.active():
                    call.cancel()
            self.sim.aborted()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return {
            "id": "gen-sim",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": self.model,
            "choices": [choice],
        }

    def _event(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        if self.model == "sim/crlf-split":
            data = f"data: {payload}\r\n\r\n".encode()
            # Split inside the CRLF and inside the JSON: events across TCP reads.
            for piece in (data[:7], data[7:-3], data[-3:-1], data[-1:]):
                self.request.write(piece)
            return
        self.request.write(f"data: {payload}\n\n".encode())

    def _later(self, delay: float, fn: Any) -> None:
        self.calls = [c for c in self.calls if c.active()]
        self.calls.append(self.sim.reactor.callLater(delay, fn))

    def _next(self) -> None:
        # A loop, not recursion: answers may be many thousands of tokens long.
        while self._step():
            pass

    def _step(self) -> bool:
        """Send the next event; True when the one after it is due at once."""
        if self.done:
            return False
        model = self.model
        if model == "sim/endless":
            self.sim._token()
            self._event(self._chunk({"role": "assistant", "content": " tick"}))
            self._later(self.sim.slow_interval, self._next)
            return False
        assert self.events is not None
        if self.position < len(self.events):
            event = self.events[self.position]
            self.position += 1
            self.sim._token()
            delta = {"role": "assistant", **event["delta"]} if self.position == 1 else event["delta"]
            self._event(self._chunk(delta, logprobs=event.get("logprobs")))
            if self.position == 1 and model == "sim/stall":
                return False  # goes silent for good
            if self.position == 1 and model in ("sim/hold", "sim/hold-partial"):
                if model == "sim/hold-partial":
                    # Held with half of the next event sent: the reader has bytes of an unfinished event.
                    self.request.write(b'data: {"id": "chatcmpl-half", "choi')
                self.sim._held(self)
                return False  # goes on when the test calls release_holds()
            if self.position == 2 and model == "sim/midstream-leak":
                # An upstream that echoes the credentials it was sent, after output began.
                self._event(
                    {
                        **self._chunk({"content": ""}, "error"),
                        "error": {"code": 500, "message": f"internal error for {_headers_echoed(self.request)}"},
                    }
                )
                self._end()
                return False
            if self.position == 2 and model == "sim/midstream-error":
                self._event(
                    {
                        **self._chunk({"content": ""}, "error"),
                        "error": {"code": 502, "message": "Upstream provider crashed mid-stream"},
                    }
                )
                self._end()
                return False
            if self.position == 2 and model == "sim/disconnect":
                self.done = True
                # A graceful close flushes what was written, then cuts the chunked body short.
                self.request.channel.transport.loseConnection()
                return False
            if self.position == 2 and model == "sim/abort":
                # Aborted at once: what was written in this turn never leaves.
                self.done = True
                self.request.channel.transport.abortConnection()
                return False
            if self.position == 2 and model == "sim/cut":
                # Like sim/disconnect, once the words already written have left.
                self.done = True
                transport = self.request.channel.transport
                self._later(self.sim.slow_interval, transport.abortConnection)
                return False
            if self.position % 3 == 0:
                self.request.write(b": OPENROUTER PROCESSING\n\n")
            if model == "sim/slow":
                self._later(self.sim.slow_interval, self._next)
                return False
            return True
        self._event(self._chunk({"content": ""}, self.finish))
        self._event({**self._chunk({}), "choices": [], "usage": self.usage})
        self._event("[DONE]")
        self._end()
        return False

    def _end(self) -> None:
        self.done = True
        self.request.finish()


class _Flood:
    """``sim/flood``: big chunks as fast as the proxy reads them, and never faster.

    Registered as a streaming producer on the response, so it pauses whenever its
    socket pushes back; each pause is reported to the simulator. It ends after
    ``TOTAL_CHUNKS`` (64 MiB), far more than the socket buffers between it and a
    client that does not read can hold.
    """

    CHUNK_TEXT = "x" * 16384
    TOTAL_CHUNKS = 4096

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.paused = False
        self.stopped = False
        self.scheduled: Any = None

    def start(self) -> None:
        self.sent = 0
        self.stream.sim.flood_connections.append(self.stream.request.transport)
        self.stream.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        self.scheduled = None
        stream = self.stream
        # A burst, then back to the reactor, so the socket can push back.
        for _ in range(8):
            if self.paused or self.stopped or stream.done:
                return
            if self.sent >= self.TOTAL_CHUNKS:
                stream.request.unregisterProducer()
                stream._event(stream._chunk({"content": ""}, "stop"))
                stream._event("[DONE]")
                stream._end()
                stream.sim._flood_paused(done=True)
                return
            self.sent += 1
            stream.sim._token()
            payload = json.dumps(stream._chunk({"content": self.CHUNK_TEXT}))
            data = f"data: {payload}\n\n".encode()
            stream.sim.flood_bytes += len(data)
            stream.request.write(data)
        self._schedule()

    def _schedule(self) -> None:
        if self.scheduled is None and not self.paused and not self.stopped:
            self.scheduled = self.stream.sim.reactor.callLater(0, self._pump)

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.stream.sim._flood_paused()

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        if self.scheduled is not None and self.scheduled.active():
            self.scheduled.cancel()
