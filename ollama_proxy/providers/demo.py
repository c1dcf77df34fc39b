"""What the demo models answer: a request body in, the pieces of the answer out (pure).

Each demo model is one entry of :data:`DEMO_MODELS`: how it is listed (its
capabilities follow from the listing, as for any provider's model) and a function
from the OpenAI chat body the proxy sends to the :class:`Answer` it streams. The
:class:`~ollama_proxy.providers.echo.EchoProvider` turns an answer into OpenAI
chunks, so whatever surface a client uses (native ``/api``, ``/v1``, and any
surface built on the same pipeline) sees the same behaviour. To add a model, add
a function and an entry.

- ``echo`` (completion, tools): the last user message, word by word. When the
  request offers tools and that message names one of them, it calls that tool
  instead, with arguments made from the tool's schema (the message's other words
  for a string, its first number for a number). After a tool result it echoes
  the result. So a client that sends tools with every chat (Open WebUI does)
  gets a plain echo until the user asks for a tool by name.
- ``echo-think`` (completion, thinking): a reasoning part first (what it is about
  to do), then the echo; with thinking turned off, the echo alone.
- ``echo-vision`` (completion, vision): says what images came (how many, their
  media types and sizes), then echoes the text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CHAT_MODEL = "echo"
THINKING_MODEL = "echo-think"
VISION_MODEL = "echo-vision"
EMBED_MODEL = "echo-embed"

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Answer:
    """An answer as OpenAI deltas, in order; ``content`` deltas are what ``max_tokens`` counts."""

    deltas: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "stop"

    def say(self, pieces: Sequence[str], key: str = "content") -> Answer:
        self.deltas.extend({key: piece} for piece in pieces)
        return self


def words_of(text: str) -> list[str]:
    """The pieces streamed for ``text``: each word with the space before it."""
    words = text.split()
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message (text parts joined when it has parts)."""
    text = ""
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = _text(message.get("content"))
    return text


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


# -- echo: text, or a tool call when the user names a tool ----------------------------
def _tool_names(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    tools: dict[str, Mapping[str, Any]] = {}
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str) and function["name"]:
            tools[function["name"]] = function
    return tools


def _argument(schema: Any, rest: str) -> Any:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    enum = schema.get("enum") if isinstance(schema, Mapping) else None
    if isinstance(enum, list) and enum:
        return enum[0]
    if kind in ("number", "integer"):
        match = _NUMBER.search(rest)
        number = float(match.group()) if match else 0
        return int(number) if kind == "integer" else number
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return rest


def tool_arguments(function: Mapping[str, Any], rest: str) -> dict[str, Any]:
    """Arguments for ``function`` from its JSON schema: the required properties (all of
    them when none is marked required), each filled from ``rest``, the message without
    the tool's name."""
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    if not isinstance(properties, Mapping):
        return {}
    required = parameters.get("required") if isinstance(parameters, Mapping) else None
    names = [n for n in required if n in properties] if isinstance(required, list) and required else list(properties)
    return {name: _argument(properties[name], rest) for name in names}


def _called_tool(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    messages = _messages(body)
    last = messages[-1] if messages else None
    if not isinstance(last, Mapping) or last.get("role") != "user" or body.get("tool_choice") == "none":
        return None  # after a tool result (or with tools refused) the model answers in words
    text = _text(last.get("content"))
    for name, function in _tool_names(body).items():
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
        if pattern.search(text):
            rest = " ".join(pattern.sub(" ", text).split())
            return name, tool_arguments(function, rest)
    return None


def echo(body: Mapping[str, Any]) -> Answer:
    """``echo``: the last user message, a tool call when it names an offered tool, or
    the tool result when the conversation ends with one."""
    call = _called_tool(body)
    if call is not None:
        name, arguments = call
        delta = {"index": 0, "id": "call_echo_0", "type": "function"}
        delta["function"] = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
        return Answer([{"tool_calls": [delta]}], finish="tool_calls")
    messages = _messages(body)
    last = messages[-1] if messages else None
    if isinstance(last, Mapping) and last.get("role") == "tool":
        return Answer().say(words_of(_text(last.get("content"))))
    return Answer().say(words_of(last_user_text(messages)))


# -- echo-think: reasoning, then the echo ----------------------------------------------
def _thinking_wanted(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and (reasoning.get("enabled") is False or reasoning.get("exclude")):
        return False
    return body.get("reasoning_effort") != "none"


def think(body: Mapping[str, Any]) -> Answer:
    """``echo-think``: a reasoning part before the answer (unless thinking is off)."""
    text = last_user_text(_messages(body))
    answer = Answer()
    if _thinking_wanted(body):
        count = len(text.split())
        plan = f"The user wrote {count} word{'s' if count != 1 else ''}. I will repeat them, word by word."
        answer.say(words_of(plan), key="reasoning")
    return answer.say(words_of(text))


# -- echo-vision: what images came, then the echo ---------------------------------------
def _images(messages: Sequence[Any]) -> list[str]:
    """Media type and size of each image of the last user message."""
    last: Any = None
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "user":
            last = message.get("content")
    found = []
    for part in last if isinstance(last, list) else ():
        if not isinstance(part, Mapping) or part.get("type") != "image_url":
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        url = url if isinstance(url, str) else ""
        head, _, data = url.partition(",")
        if url.startswith("data:") and head.endswith(";base64"):
            try:
                size = len(base64.b64decode(data, validate=False))
            except (binascii.Error, ValueError):
                size = 0
            found.append(f"{head[5:-7] or 'image'}, {size} bytes")
        else:
            found.append(f"an image at {url[:80]}")
    return found


def see(body: Mapping[str, Any]) -> Answer:
    """``echo-vision``: one sentence on the images, then the echo."""
    messages = _messages(body)
    images = _images(messages)
    if not images:
        seen = "I see no image."
    else:
        listed = "; ".join(f"image {i + 1}: {d}" for i, d in enumerate(images))
        seen = f"I see {len(images)} image{'s' if len(images) != 1 else ''} ({listed})."
    return Answer().say(words_of(seen + " " + last_user_text(messages)))


@dataclass(frozen=True)
class DemoModel:
    """One demo chat model: how it is listed and what it answers."""

    id: str
    name: str
    answer: Callable[[Mapping[str, Any]], Answer]
    supported_parameters: tuple[str, ...] = ("temperature", "max_tokens", "stop", "seed")
    input_modalities: tuple[str, ...] = ("text",)


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        CHAT_MODEL,
        "Echo (demo)",
        echo,
        supported_parameters=("temperature", "max_tokens", "stop", "seed", "tools", "tool_choice"),
    ),
    DemoModel(
        THINKING_MODEL,
        "Echo that thinks first (demo)",
        think,
        supported_parameters=("temperature", "max_tokens", "stop", "seed", "reasoning"),
    ),
    DemoModel(VISION_MODEL, "Echo that sees images (demo)", see, input_modalities=("text", "image")),
)
