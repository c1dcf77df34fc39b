"""``echo``: a built-in provider that answers deterministically, offline.

It exists so that a newcomer can try any Ollama client without an account, and
an operator can smoke-test an integration without spending tokens. It is never
enabled silently: only ``--demo`` or a ``[[providers]]`` entry of type ``echo``
turns it on.

Models: the chat models of :mod:`ollama_proxy.providers.demo` (``echo`` with
tools, ``echo-think`` with thinking, ``echo-vision`` with vision), whose answers
are streamed here as OpenAI chunks, and ``echo-embed``: embeddings derived from
the text (hashed bag of words, unit length), so texts sharing words point the
same way.
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
from ollama_proxy.providers.demo import CHAT_MODEL, DEMO_MODELS, EMBED_MODEL, last_user_text, words_of
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.request_body import MAX_EMBEDDING_DIMENSIONS

__all__ = ["CHAT_MODEL", "EMBED_MODEL", "EchoProvider", "EchoStream", "echo_words", "embed_text"]

EMBED_DIMENSIONS = 16
_CHAT = {model.id: model for model in DEMO_MODELS}


def echo_words(messages: Sequence[Any]) -> list[str]:
    """The pieces the ``echo`` model streams for plain text: each word with the space before it."""
    return words_of(last_user_text(messages))


def embed_text(text: str, dimensions: int = EMBED_DIMENSIONS) -> list[float]:
    """A unit vector from the words of ``text``; the zero vector for no words."""
    if not 0 < dimensions <= MAX_EMBEDDING_DIMENSIONS:
        # The request parser bounds it; this is the allocation, so it checks too.
        raise BadRequest(f"'dimensions' must be between 1 and {MAX_EMBEDDING_DIMENSIONS}")
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
    """A demo answer as OpenAI chunks, one delta (a word) a chunk, paced by ``delay``."""

    def __init__(
        self,
        model: str,
        deltas: list[dict[str, Any]],
        finish: str,
        usage: dict[str, int],
        clock: IReactorTime,
        delay: float,
    ) -> None:
        self._chunks: list[dict[str, Any]] = []
        for index, delta in enumerate(deltas):
            self._chunks.append(self._chunk(model, {"role": "assistant", **delta} if index == 0 else delta))
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
                    id=model.id,
                    provider=self.name,
                    context_length=8192,
                    supported_parameters=model.supported_parameters,
                    input_modalities=model.input_modalities,
                    name=model.name,
                )
                for model in DEMO_MODELS
            ]
            + [
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
        demo = _CHAT.get(model)
        if demo is None:
            return fail(UpstreamError(self.label, self.type, 404, f"model '{model}' not found"))
        answer = demo.answer(body)
        deltas, finish = answer.deltas, answer.finish
        limit = body.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            # The cap counts words of the answer (content), as tokens would.
            content = [i for i, d in enumerate(deltas) if "content" in d]
            if limit < len(content):
                deltas, finish = deltas[: content[limit]], "length"
        produced = len(deltas)
        prompt = _count_words(body.get("messages") or [])
        usage = {"prompt_tokens": prompt, "completion_tokens": produced, "total_tokens": prompt + produced}
        return succeed(EchoStream(model, deltas, finish, usage, self._clock, self.delay))

    def embed(
        self, model: str, inputs: Sequence[str], dimensions: int | None = None
    ) -> Deferred[tuple[list[list[float]], int]]:
        if model != EMBED_MODEL:
            return fail(BadRequest(f"'{model}' is not an embedding model"))
        size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBED_DIMENSIONS
        try:
            vectors = [embed_text(text, size) for text in inputs]
        except BadRequest as error:
            return fail(error)
        return succeed((vectors, sum(len(t.split()) for t in inputs)))

    def check_health(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
