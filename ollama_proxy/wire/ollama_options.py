"""Ollama's request options, ``think`` and ``format`` as OpenAI/OpenRouter request fields (pure).

Each reader checks its value as Ollama does (same 400 wording) and gives the
upstream field(s): sampling ``options`` -> ``temperature``, ``max_tokens``, ...;
``think`` -> OpenRouter's ``reasoning``; ``format`` -> ``response_format``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.request_body import field_of

# Ollama option -> OpenAI/OpenRouter request field.
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
_INTEGER_OPTIONS = {"top_k", "seed", "num_predict"}
THINK_LEVELS = ("high", "medium", "low", "max")
# Ollama's levels on OpenRouter's ``reasoning.effort`` scale ("max" is above "high").
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}


def sampling_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Map Ollama ``options`` to OpenAI request fields; load-time options are ignored."""
    options = field_of(body, "options", dict, {})
    mapped: dict[str, Any] = {}
    for name, target in OPTION_FIELDS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadRequest("option 'stop' must be a string or a list of strings")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"option '{name}' must be a number")
        elif name in _INTEGER_OPTIONS:
            if value != int(value):
                raise BadRequest(f"option '{name}' must be an integer")
            value = int(value)
        if name == "num_predict" and value < 0:
            continue  # -1 (infinite) and -2 (fill context): no cap upstream
        mapped[target] = value
    return mapped


def think_value(body: Mapping[str, Any]) -> bool | str | None:
    """``think``: true/false or a level; Ollama's 400 wording for anything else."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise BadRequest(
                f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", true, or false)'
            )
        return value
    raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def reasoning_request(think: bool | str | None, model: UpstreamModel) -> dict[str, Any] | None:
    """OpenRouter's ``reasoning`` for Ollama's ``think``, for a model that can think."""
    if think is None or "thinking" not in model.capabilities():
        return None  # the model's own default (which for thinking models is to think)
    if think is False:
        # Models that cannot stop reasoning still keep it out of the answer.
        return {"enabled": False, "exclude": True}
    if think is True:
        return {"enabled": True}
    return {"effort": _EFFORT[think]}


def response_format(value: Any) -> dict[str, Any] | None:
    """Ollama ``format`` as OpenAI ``response_format``: "json" or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    # Ollama quotes the raw JSON it was given.
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise BadRequest(f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object')
