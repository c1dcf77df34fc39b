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
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

API_KEY = "sk-or-v1-simulator-secret-0123456789abcdef"


def _model(id: str, *, context: int = 8192, modalities: tuple[str, ...] = ("text",), params: tuple[str, ...] = ("temperature", "top_p", "max_tokens", "stop"), created: int = 1_700_000_000) -> dict[str, Any]:
    return {
        "id": id,
        "name": id.split("/")[-1].replace("-", " ").title(),
        "created": created,
        "context_length": context,
        "architecture": {"input_modalities": list(modalities), "output_modalities": ["text"], "modality": "text->text"},
        "supported_parameters": list(params),
        "pricing": {"prompt": "0.000001", "completion": "0.000002"},
    }


CHAT_MODELS: list[dict[str, Any]] = [
    _model("openai/gpt-4o-mini", context=128000, modalities=("text", "image"), params=("tools", "tool_choice", "temperature", "top_p", "max_tokens", "response_format", "structured_outputs", "seed", "stop"), created=1_721_260_800),
    _model("google/gemini-pro", context=32768),
    _model("meta-llama/llama-3.1-8b-instruct:free", context=131072),
    _model("deepseek/deepseek-r1", context=65536, params=("reasoning", "include_reasoning", "temperature", "max_tokens")),
    _model("sim/slow"),
    _model("sim/stall"),
    _model("sim/silent"),
    _model("sim/endless"),
    _model("sim/midstream-error"),
    _model("sim/error-first"),
    _model("sim/disconnect"),
    _model("sim/cut"),
    _model("sim/crlf-split"),
    _model("sim/fail-401"),
    _model("sim/fail-429"),
    _model("sim/fail-500"),
    _model("sim/fail-503"),
    _model("sim/no-headers"),
]
EMBEDDING_MODELS: list[dict[str, Any]] = [
    {**_model("openai/text-embedding-3-small", context=8192), "architecture": {"input_modalities": ["text"], "output_modalities": ["embeddings"]}},
]


def fake_vector(text: str, size: int = 8) -> list[float]:
    """A deterministic vector for ``text``, what the simulator's embeddings answer."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round((digest[i] - 128) / 128.0, 6) for i in range(size)]


def reply_words(messages: list[dict[str, Any]]) -> list[str]:
    """The tokens the simulator answers: ``Echo:`` and the last user message, word by word."""
    last = ""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            last = content or ""
    words = ["Echo:"] + last.split()
    return [words[0]] + [" " + w for w in words[1:]]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            count += len(content.split())
    return count


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Injected:
    status: int
    count: int
    retry_after: str | None = None


class _CountingSite(Site):
    def __init__(self, resource: Resource, simulator: "UpstreamSimulator", **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.simulator = simulator

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        simulator = self.simulator
        simulator.connections_opened += 1
        simulator.open_protocols.add(protocol)
        original = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            simulator.connections_closed += 1
            simulator.open_protocols.discard(protocol)
            original(reason)

        protocol.connectionLost = connectionLost
        return protocol


class UpstreamSimulator(Resource):
    """The simulated provider. Mount point: ``/api/v1`` (OpenRouter's path)."""

    isLeaf = True

    def __init__(self, reactor: Any, *, api_key: str = API_KEY, slow_interval: float = 0.02) -> None:
        super().__init__()
        self.reactor = reactor
        self.api_key = api_key
        self.slow_interval = slow_interval
        self.requests: list[RecordedRequest] = []
        self.chat_models = list(CHAT_MODELS)
        self.embedding_models = list(EMBEDDING_MODELS)
        self.connections_opened = 0
        self.connections_closed = 0
        self.streams_started = 0
        self.streams_aborted = 0
        self.tokens_sent = 0
        self._abort_waiters: list[Deferred[None]] = []
        self._injected: list[_Injected] = []
        self.models_status: int | None = None
        self.port: Any = None
        self.open_protocols: set[Any] = set()
        # Every chat stream behaves like the model ``sim/<behaviour>`` (stall, silent, ...).
        self.behaviour: str | None = None
        self.prefix = "/api/v1"
        self._request_waiters: list[Deferred[RecordedRequest]] = []

    # -- control ------------------------------------------------------------------
    def start(self, prefix: str = "/api/v1") -> str:
        """Listen on a free loopback port; returns the base URL (``...<prefix>``):
        ``/api/v1`` as OpenRouter, ``/v1`` as OpenAI and most compatible servers."""
        self.prefix = prefix
        root = Resource()
        parent = root
        parts = [p.encode() for p in prefix.strip("/").split("/")]
        for part in parts[:-1]:
            child = Resource()
            parent.putChild(part, child)
            parent = child
        parent.putChild(parts[-1], self)
        self.site = _CountingSite(root, self)
        self.port = self.reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}{prefix}"

    def wait_for_request(self) -> "Deferred[RecordedRequest]":
        """Fires with the next chat or embedding request this simulator receives."""
        d: Deferred[RecordedRequest] = Deferred()
        self._request_waiters.append(d)
        return d

    def stop(self) -> Any:
        return self.port.stopListening() if self.port is not None else None

    def close_connections(self) -> None:
        """Drop every open connection (test teardown)."""
        for protocol in list(self.open_protocols):
            # Site hands out a wrapper around the HTTPChannel: the transport is the channel's.
            transport = getattr(protocol, "transport", None) or getattr(getattr(protocol, "_channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``count`` chat/embedding requests with ``status``."""
        self._injected.append(_Injected(status, count, retry_after))

    def wait_for_abort(self) -> "Deferred[None]":
        """Fires when a stream is cut off by the proxy before it ended."""
        d: Deferred[None] = Deferred()
        self._abort_waiters.append(d)
        return d

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- HTTP -----------------------------------------------------------------------
    def render(self, request: Request) -> Any:
        path = request.path.decode()
        raw = request.content.read() if request.content else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        recorded = RecordedRequest(request.method.decode(), path, headers, body)
        self.requests.append(recorded)
        route = path[len(self.prefix) :]
        if request.method == b"POST":
            waiters, self._request_waiters = self._request_waiters, []
            for waiter in waiters:
                waiter.callback(recorded)
        if request.method == b"GET" and route == "/models":
            if self.models_status:
                return self._error(request, self.models_status, "models unavailable")
            return self._json(request, {"data": self.chat_models})
        if request.method == b"GET" and route == "/embeddings/models":
            return self._json(request, {"data": self.embedding_models})
        if request.method != b"POST" or route not in ("/chat/completions", "/embeddings", "/completions"):
            return self._error(request, 404, f"no route {route}")
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(request, 401, "No auth credentials found")
        if not isinstance(body, dict):
            return self._error(request, 400, "body must be JSON")
        if self._injected:
            injected = self._injected[0]
            injected.count -= 1
            if injected.count <= 0:
                self._injected.pop(0)
            if injected.retry_after:
                request.setHeader(b"retry-after", injected.retry_after.encode())
            return self._error(request, injected.status, f"injected failure {injected.status}")
        if route == "/embeddings":
            return self._embeddings(request, body)
        return self._chat(request, body)

    def _json(self, request: Request, obj: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()

    def _error(self, request: Request, status: int, message: str) -> bytes:
        return self._json(request, {"error": {"code": status, "message": message, "metadata": {"provider_name": "sim"}}}, status)

    def _embeddings(self, request: Request, body: dict[str, Any]) -> bytes:
        model = body.get("model")
        if model not in {m["id"] for m in self.embedding_models}:
            return self._error(request, 404, f"model {model} is not an embedding model")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        size = int(body.get("dimensions") or 8)
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, size)} for i, t in enumerate(texts)]
        tokens = sum(len(t.split()) for t in texts)
        return self._json(request, {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _chat(self, request: Request, body: dict[str, Any]) -> Any:
        model = str(body.get("model"))
        if model.startswith("sim/fail-"):
            status = int(model.rsplit("-", 1)[1])
            if status == 429:
                request.setHeader(b"retry-after", b"7")
            return self._error(request, status, f"simulated {status} (key {self.api_key[:6]}... rejected)" if status == 401 else f"simulated {status}")
        if model not in {m["id"] for m in self.chat_models}:
            return self._error(request, 404, f"{model} is not a valid model ID")
        messages = body.get("messages") or []
        words = reply_words(messages)
        max_tokens = body.get("max_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and max_tokens < len(words):
            words = words[:max_tokens]
            finish = "length"
        usage = {"prompt_tokens": prompt_tokens(messages), "completion_tokens": len(words), "total_tokens": prompt_tokens(messages) + len(words), "cost": 0.00001}
        if not body.get("stream"):
            return self._json(
                request,
                {
                    "id": "gen-sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": finish}],
                    "usage": usage,
                },
            )
        return _Stream(self, request, f"sim/{self.behaviour}" if self.behaviour else model, words, finish, usage).start()

    # -- stream bookkeeping -------------------------------------------------------------
    def _aborted(self) -> None:
        self.streams_aborted += 1
        waiters, self._abort_waiters = self._abort_waiters, []
        for d in waiters:
            d.callback(None)


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

    def start(self) -> Any:
        sim = self.sim
        sim.streams_started += 1
        self.request.setHeader(b"content-type", b"text/event-stream")
        self.request.setHeader(b"cache-control", b"no-cache")
        self.request.notifyFinish().addErrback(self._lost)
        if self.model == "sim/no-headers":
            return NOT_DONE_YET  # never answers: for the response timeout
        self.request.write(b": OPENROUTER PROCESSING\n\n")
        if self.model == "sim/silent":
            return NOT_DONE_YET  # headers, a keep-alive, then nothing: stalls before any token
        if self.model == "sim/error-first":
            self._event({"id": "gen-sim", "object": "chat.completion.chunk", "model": self.model, "error": {"code": 502, "message": "Provider returned error"}, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]})
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
            self.sim._aborted()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "gen-sim", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

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
        if self.done:
            return
        model = self.model
        if model == "sim/endless":
            self.sim.tokens_sent += 1
            self._event(self._chunk({"role": "assistant", "content": " tick"}))
            self._later(self.sim.slow_interval, self._next)
            return
        if self.position < len(self.words):
            word = self.words[self.position]
            self.position += 1
            self.sim.tokens_sent += 1
            delta = {"role": "assistant", "content": word} if self.position == 1 else {"content": word}
            self._event(self._chunk(delta))
            if self.position == 1 and model == "sim/stall":
                return  # goes silent for good
            if self.position == 2 and model == "sim/midstream-error":
                self._event({**self._chunk({"content": ""}, "error"), "error": {"code": 502, "message": "Upstream provider crashed mid-stream"}})
                self._end()
                return
            if self.position == 2 and model == "sim/disconnect":
                self.done = True
                self.request.channel.transport.abortConnection()
                return
            if self.position == 2 and model == "sim/cut":
                # Like sim/disconnect, once the words already written have left.
                self.done = True
                transport = self.request.channel.transport
                self._later(self.sim.slow_interval, transport.abortConnection)
                return
            if self.position % 3 == 0:
                self.request.write(b": OPENROUTER PROCESSING\n\n")
            if model == "sim/slow":
                self._later(self.sim.slow_interval, self._next)
            else:
                self._next()
            return
        self._event(self._chunk({"content": ""}, self.finish))
        self._event({**self._chunk({}), "choices": [], "usage": self.usage})
        self._event("[DONE]")
        self._end()

    def _end(self) -> None:
        self.done = True
        self.request.finish()
