"""What ``/api/generate`` has and a chat API lacks (pure functions).

- ``context``: Ollama hands back the conversation as token ids, and a client that
  sends them with the next prompt keeps a short memory. A cloud model has no
  token ids to give, so the proxy hands back the conversation's text, UTF-8
  encoded, one byte per integer, behind a marker; a context it did not write
  (say, from a real Ollama) is accepted and carries no memory.
- ``suffix``: fill-in-the-middle. Chat models have no insert template, so the
  prefix and suffix go to the model with an instruction to write what lies
  between them.
"""

from __future__ import annotations

import json
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.framing import compact

_MARKER = b"\x00ollama-proxy-context-v1\x00"

FIM_INSTRUCTION = (
    "You fill in the middle of a text. The user gives the text before the gap inside <prefix></prefix> "
    "and the text after it inside <suffix></suffix>. Reply with exactly the text that belongs in the gap: "
    "no explanations, no code fences, and nothing that repeats the prefix or the suffix."
)


def fim_message(prompt: str, suffix: str) -> str:
    """The user message that asks a chat model to fill the gap between ``prompt`` and ``suffix``."""
    return f"<prefix>{prompt}</prefix><suffix>{suffix}</suffix>"


def context_list(value: Any) -> list[int]:
    """``context`` checked: a list of integers (or absent)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BadRequest("'context' must be a list of integers")
    return value


def encode_context(history: list[dict[str, str]]) -> list[int]:
    """The conversation so far as Ollama-style context integers."""
    pairs = [[m["role"], m["content"]] for m in history]
    return list(_MARKER + compact(pairs))


def decode_context(context: list[int]) -> list[dict[str, str]]:
    """The messages a context this proxy wrote stands for; none for any other context."""
    if len(context) <= len(_MARKER) or not all(0 <= v < 256 for v in context):
        return []
    raw = bytes(context)
    if not raw.startswith(_MARKER):
        return []
    try:
        pairs = json.loads(raw[len(_MARKER) :].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(pairs, list):
        return []
    return [
        {"role": p[0], "content": p[1]}
        for p in pairs
        if isinstance(p, list) and len(p) == 2 and p[0] in ("user", "assistant") and isinstance(p[1], str)
    ]
