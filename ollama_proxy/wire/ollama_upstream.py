"""OpenAI chat bodies as requests to a real Ollama server, and its answers back (pure, no I/O).

:func:`chat_body` turns the OpenAI request into an Ollama ``/api/chat`` one (the
client's own Ollama options and ``keep_alive`` ride along when it spoke Ollama);
:class:`OllamaDecoder` turns each NDJSON line back into OpenAI chunks;
:func:`model_from` and :func:`with_show` read ``/api/tags`` and ``/api/show``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import msgspec

from ollama_proxy.errors import UpstreamStreamError
from ollama_proxy.wire.jsontext import as_object
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_request import NATIVE_KEY

# OpenAI request field -> Ollama option.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "max_tokens": "num_predict",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
}
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,(?P<data>.*)$", re.DOTALL)
_EMBEDDING_FAMILIES = {"bert", "nomic-bert", "xlm-roberta", "jina-bert-v2"}


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": str(message.get("role") or "user")}
    content = message.get("content")
    images: list[str] = []
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, Mapping) else image
                match = _DATA_URL.match(url) if isinstance(url, str) else None
                if match:
                    images.append(match["data"])
        content = "".join(texts)
    out["content"] = content if isinstance(content, str) else ""
    if images:
        out["images"] = images
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = {}
        calls.append(
            {
                "function": {
                    "name": function.get("name", ""),
                    "arguments": arguments if isinstance(arguments, dict) else {},
                }
            }
        )
    if calls:
        out["tool_calls"] = calls
    if message.get("role") == "tool" and message.get("name"):
        out["tool_name"] = message["name"]
    return out


def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body as an Ollama ``/api/chat`` body (streamed)."""
    request: dict[str, Any] = {
        "model": body.get("model"),
        "messages": [_message(m) for m in body.get("messages") or () if isinstance(m, Mapping)],
        "stream": True,
    }
    options = {target: body[name] for name, target in OPTIONS.items() if body.get(name) is not None}
    native = as_object(body.get(NATIVE_KEY))
    if isinstance(native.get("options"), Mapping):
        # The client's own options, load-time ones (num_ctx, num_gpu, ...) included.
        options = {**native["options"], **options}
    if options:
        request["options"] = options
    if native.get("keep_alive") is not None:
        request["keep_alive"] = native["keep_alive"]
    if body.get("tools"):
        request["tools"] = body["tools"]
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        if response_format.get("type") == "json_object":
            request["format"] = "json"
        elif response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema")
            if isinstance(schema, Mapping) and isinstance(schema.get("schema"), Mapping):
                request["format"] = schema["schema"]
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort")
    if isinstance(reasoning, Mapping):
        if reasoning.get("enabled") is False:
            request["think"] = False
        else:
            effort = reasoning.get("effort") or effort
            request["think"] = effort if effort in ("low", "medium", "high") else True
    elif effort in ("low", "medium", "high"):
        request["think"] = effort
    return request


class _Message(msgspec.Struct, gc=False):
    content: str = ""
    thinking: str | None = None
    tool_calls: list[Any] | None = None


class _Line(msgspec.Struct, gc=False):
    # The decoder reads error, message and done (and the model, for a chunk's envelope
    # no reader looks at); a line with an error, even an empty one, is not plain.
    message: _Message
    done: bool = False
    error: None = None


_decode_line = msgspec.json.Decoder(_Line).decode


def plain_line(data: str) -> str | None:
    """The text of a line that only carries text (what :class:`OllamaDecoder` makes a
    plain content chunk of), or ``None`` for any other line, which is decoded whole."""
    try:
        line = _decode_line(data)
    except msgspec.DecodeError:
        return None
    message = line.message
    if line.done or message.thinking or message.tool_calls or not message.content:
        return None
    return message.content


class OllamaDecoder:
    """Turns ``/api/chat`` NDJSON lines into OpenAI chunks."""

    def __init__(self, label: str = "Ollama") -> None:
        self.label = label
        self._tools = 0

    # Most lines of a stream, read without decoding them whole (see SSEStream).
    plain = staticmethod(plain_line)

    def _chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "ollama",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def __call__(self, line: Mapping[str, Any]) -> list[dict[str, Any]]:
        if line.get("error"):
            raise UpstreamStreamError(f"{self.label} stream error: {line['error']}")
        model = str(line.get("model") or "")
        message = as_object(line.get("message"))
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = str(message["content"])
        if message.get("thinking"):
            delta["reasoning"] = str(message["thinking"])
        calls = []
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping):
                continue
            arguments = function.get("arguments")
            calls.append(
                {
                    "index": self._tools,
                    "id": str(call.get("id") or f"call_{self._tools}"),
                    "type": "function",
                    "function": {
                        "name": str(function.get("name") or ""),
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments or {}),
                    },
                }
            )
            self._tools += 1
        if calls:
            delta["tool_calls"] = calls
        out = [self._chunk(model, delta)] if delta else []
        if line.get("done"):
            reason = "length" if line.get("done_reason") == "length" else ("tool_calls" if self._tools else "stop")
            prompt, completion = int(line.get("prompt_eval_count") or 0), int(line.get("eval_count") or 0)
            out.append(self._chunk(model, {}, reason))
            out.append(
                {
                    "id": "ollama",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }
            )
        return out


def model_from(entry: Mapping[str, Any], provider: str) -> UpstreamModel | None:
    """One entry of Ollama's ``/api/tags``; ``llama3.2:latest`` is kept as ``llama3.2``
    so that both spellings reach it, as on Ollama itself."""
    name = entry.get("model") or entry.get("name")
    if not isinstance(name, str) or not name:
        return None
    model_id = name[: -len(":latest")] if name.endswith(":latest") else name
    details = as_object(entry.get("details"))
    families = set(details.get("families") or ()) | {details.get("family")}
    embedding = "embed" in model_id.lower() or bool(families & _EMBEDDING_FAMILIES)
    created = 0
    stamp = entry.get("modified_at")
    if isinstance(stamp, str):
        try:
            created = int(
                datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))).timestamp()
            )
        except ValueError:
            created = 0
    tag = {key: entry[key] for key in ("size", "digest", "details") if key in entry}
    return UpstreamModel(
        id=model_id,
        provider=provider,
        created=created,
        embedding=embedding,
        supported_parameters=("temperature", "top_p", "top_k", "seed", "max_tokens", "stop"),
        name=name,
        extra={"ollama_tag": tag},
    )


def with_show(model: UpstreamModel, shown: Mapping[str, Any]) -> UpstreamModel:
    """``model`` with the capabilities and context length Ollama's ``/api/show`` reports."""
    capabilities = shown.get("capabilities")
    if not isinstance(capabilities, list):
        return model
    params = list(model.supported_parameters)
    if "tools" in capabilities:
        params.append("tools")
    if "thinking" in capabilities:
        params.append("reasoning")
    info = as_object(shown.get("model_info"))
    context = next(
        (v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)), model.context_length
    )
    return replace(
        model,
        supported_parameters=tuple(params),
        input_modalities=("text", "image") if "vision" in capabilities else model.input_modalities,
        embedding="embedding" in capabilities and "completion" not in capabilities,
        context_length=context,
    )
