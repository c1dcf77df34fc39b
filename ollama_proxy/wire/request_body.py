"""Reading a request body the way Ollama reads it (pure, shared by every surface).

The body must be a JSON object; each field is checked for its type with Ollama's
statuses and wording where clients match on them, so every dialect's plan starts
from the same readers (model name, stream, keep_alive, logprobs, capabilities).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.wire.jsontext import parse_json
from ollama_proxy.wire.keep_alive import parse_keep_alive
from ollama_proxy.wire.models import UpstreamModel


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not raw.strip():
        raise BadRequest("missing request body")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def field_of(body: Mapping[str, Any], key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[key]`` if present and of the right type, ``default`` if absent or null."""
    value = body.get(key)
    if value is None:
        return default
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise BadRequest(f"'{key}' has the wrong type: {json.dumps(value)}")
    if not isinstance(value, allowed):
        names = " or ".join(_type_name(t) for t in allowed)
        raise BadRequest(f"'{key}' must be {names}")
    return value


# No embedding model has more dimensions than this (the largest ones have a few
# thousand); a larger number is a mistake or an attack on memory, refused at once.
MAX_EMBEDDING_DIMENSIONS = 65536


def embedding_dimensions(body: Mapping[str, Any]) -> int | None:
    """``dimensions`` of an embedding request (every surface): an integer at most
    :data:`MAX_EMBEDDING_DIMENSIONS`; None when absent, null or not positive (not asked)."""
    value = field_of(body, "dimensions", int)
    if value is None or value <= 0:
        return None
    if value > MAX_EMBEDDING_DIMENSIONS:
        raise BadRequest(f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}")
    return value


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "an array",
    }.get(kind, kind.__name__)


def model_name(body: Mapping[str, Any]) -> str:
    """``model`` (or the legacy ``name``), required and a non-empty string."""
    value = body.get("model")
    if value in (None, ""):
        value = body.get("name")
    if value in (None, ""):
        raise BadRequest("model is required")
    if not isinstance(value, str):
        raise BadRequest("'model' must be a string")
    return value


def wants_stream(body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told not to (the Python client always says)."""
    return bool(field_of(body, "stream", bool, True))


def keep_alive_of(body: Mapping[str, Any]) -> float | None:
    """``keep_alive`` in seconds (negative: forever), ``None`` when not given."""
    return parse_keep_alive(body.get("keep_alive"))


def logprob_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """``logprobs`` / ``top_logprobs`` (0-20, as Ollama checks) for the upstream."""
    top = field_of(body, "top_logprobs", int, 0)
    if top < 0 or top > 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    if not field_of(body, "logprobs", bool, False):
        return {}
    fields: dict[str, Any] = {"logprobs": True}
    if top:
        fields["top_logprobs"] = top
    return fields


# The largest token cap taken (a signed 32-bit count, as Ollama's num_predict and the
# providers' own APIs hold it): a larger one is a mistake, refused before it goes upstream.
MAX_TOKEN_CAP = 2**31 - 1


def require_capability(model: UpstreamModel, name: str, capability: str) -> None:
    """A 400 naming what the model cannot do, in Ollama's words."""
    if not model.refuses(capability):
        return
    if capability == "thinking":
        raise BadRequest(f'"{name}" does not support thinking')
    raise BadRequest(f"{name} does not support {capability}")
