"""``echo``: a built-in provider that answers deterministically, offline.

It exists so that a newcomer can try any Ollama client without an account, and
an operator can smoke-test an integration without spending tokens. It is never
enabled silently: only ``--demo`` or a ``[[providers]]`` entry of type ``echo``
turns it on.

Models:

- ``echo``: streams the last user message back, word by word;
- ``echo-embed``: embeddings derived from the text (hashed bag of words, unit
  length), so texts sharing words point the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from ollama_proxy.errors import BadRequest, UpstreamError
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.wire.models import UpstreamModel

CHAT_MODEL = "echo"
EMBED_MODEL = "echo-embed"
EMBED_DIMENSIONS = 16


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message (text parts joined when it has parts)."""
    text = ""
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
            )
        text = content if isinstance(content, str) else ""
    return text


def echo_words(messages: Sequence[Any]) -> list[str]:
    """The pieces the ``echo`` model streams: each word with the space before it."""
    words = last_user_text(messages).split()
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def embed_text(text: str, dimensions: int = EMBED_DIMENSIONS) -> list[float]:
    """A unit vector from the words of ``text``; the zero vector for no words."""
    vector = [0.0] * dimensions
    for word in text.lower().split():
        digest = hashlib.sha256(word.encode("utf-8")).digest()
        bucket = int.from_bytes(digest[:4], "big") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [round(v / norm, 6) for v in vector] if norm else vector


def _count_words(messages: Sequence[Any]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content.split())
    return total


@implementer(IUpstreamStream)
class EchoStream:
    """The ``echo`` answer as OpenAI chunks, one word a chunk, paced by ``delay``."""

    def __init__(
        self, model: str, words: list[str], finish: str, usage: dict[str, int], clock: IReactorTime, delay: float
    ) -> None:
        self._chunks: list[dict[str, Any]] = []
        for index, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if index == 0 else {"content": word}
            self._chunks.append(self._chunk(model, delta))
        self._chunks.append(self._chunk(model, {}, finish))
        self._chunks.append(
            {"id": "echo", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
        )
        self._clock = clock
        self._delay = delay
        self._paused = False
        self._stopped = False
        self._sink: Any = None
        self._done: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None

    @staticmethod
    def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "echo",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def deliver(self, on_event: Any) -> Deferred[None]:
        self._sink = on_event
        self._done = Deferred(canceller=lambda _: self.stopProducing())
        self._pump()
        return self._done

    def _pump(self) -> None:
        self._timer = None
        while self._chunks and not self._paused and not self._stopped:
            chunk = self._chunks.pop(0)
            try:
                self._sink(chunk)
            except Exception as error:  # noqa: BLE001 - the sink refused the chunk: end the stream
                self._finish(Failure(error))
                return
            if self._delay > 0 and self._chunks:
                self._timer = self._clock.callLater(self._delay, self._pump)
                return
        if not self._chunks and not self._stopped:
            self._finish(None)

    def _finish(self, result: Failure | None) -> None:
        self._stopped = True
        done = self._done
        if done is not None and not done.called:
            if result is None:
                done.callback(None)
            else:
                done.errback(result)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused and not self._stopped:
            self._paused = False
            if self._timer is None:
                self._pump()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        done = self._done
        if done is not None and not done.called:
            done.errback(Failure(CancelledError()))


@implementer(IProvider)
class EchoProvider:
    """The demo provider: no network, no key, the same answer every time."""

    type = "echo"
    configured = True

    def __init__(self, clock: IReactorTime, name: str = "echo", delay: float = 0.0, label: str = "") -> None:
        self.name = name
        self.label = label or "Echo (demo)"
        self._clock = clock
        self.delay = delay

    def list_models(self) -> Deferred[list[UpstreamModel]]:
        return succeed(
            [
                UpstreamModel(
                    id=CHAT_MODEL,
                    provider=self.name,
                    context_length=8192,
                    supported_parameters=("temperature", "max_tokens", "stop", "seed"),
                    name="Echo (demo)",
                ),
                UpstreamModel(
                    id=EMBED_MODEL,
                    provider=self.name,
                    context_length=8192,
                    embedding=True,
                    name="Echo embeddings (demo)",
                ),
            ]
        )

    def open_chat(self, body: Mapping[str, Any]) -> Deferred[IUpstreamStream]:
        model = str(body.get("model") or CHAT_MODEL)
        if model != CHAT_MODEL:
            return fail(UpstreamError(self.label, self.type, 404, f"model '{model}' not found"))
        messages = body.get("messages") or []
        words = echo_words(messages)
        finish = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 <= limit < len(words):
            words, finish = words[:limit], "length"
        prompt = _count_words(messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
        return succeed(EchoStream(model, words, finish, usage, self._clock, self.delay))

    def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> Deferred[tuple[list[list[float]], int]]:
        if model != EMBED_MODEL:
            return fail(BadRequest(f"'{model}' is not an embedding model"))
        size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBED_DIMENSIONS
        vectors = [embed_text(text, size) for text in inputs]
        return succeed((vectors, sum(len(t.split()) for t in inputs)))

    def check_health(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
