"""Upstream models and how they look as Ollama models (pure functions, no I/O).

An upstream id such as ``google/gemini-pro`` is offered to Ollama clients as
``google/gemini-pro:latest``; an id that already carries a tag
(``meta-llama/llama-3-8b:free``) is offered as it is. Requests may name a model
with or without ``:latest``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ollama_proxy.wire.jsontext import as_object

_PARAMETER_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_FAMILY_WORD = re.compile(r"[a-z]+", re.IGNORECASE)


@dataclass(frozen=True)
class UpstreamModel:
    """A model as a provider describes it."""

    id: str
    provider: str = "openrouter"
    created: int = 0
    context_length: int | None = None
    input_modalities: tuple[str, ...] = ("text",)
    supported_parameters: tuple[str, ...] = ()
    # False when the provider's listing says nothing of what the model can do (OpenAI's own
    # /models, Groq, vLLM, LM Studio, llama.cpp list only ids): then the common chat
    # capabilities are assumed rather than refused (see ``capabilities``).
    described: bool = True
    embedding: bool = False
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # What the provider's list says one prompt and one completion token cost (OpenRouter's
    # ``pricing``, USD); None when it publishes no price.
    pricing: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def ollama_name(self) -> str:
        return ollama_name(self.id)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.id.encode("utf-8")).hexdigest()

    @property
    def family(self) -> str:
        return family_of(self.id)

    def capabilities(self) -> list[str]:
        """What ``/api/show`` lists and requests are checked against. A model whose
        listing publishes no ``supported_parameters`` is assumed to chat with tools (what
        every OpenAI-compatible server's chat models do); vision and thinking are not
        promised for it, since a bare listing cannot tell ``gpt-4o`` from a text-only model
        (images are then left to the upstream to judge: see :meth:`refuses`)."""
        if self.embedding:
            return ["embedding"]
        capabilities = ["completion"]
        params = set(self.supported_parameters)
        if "tools" in params or not self.described:
            capabilities.append("tools")
        if "image" in self.input_modalities:
            capabilities.append("vision")
        if params & {"reasoning", "include_reasoning"}:
            capabilities.append("thinking")
        return capabilities

    def refuses(self, capability: str) -> bool:
        """Whether a request needing ``capability`` is refused before going upstream: when
        the listing says the model lacks it. Images to an undescribed model go upstream, which
        knows whether the model sees (OpenAI's ``gpt-4o`` does, a text-only vLLM model answers
        its own 400); thinking stays refused, as Ollama refuses it for a model not known to think."""
        if capability in self.capabilities():
            return False
        return self.described or capability != "vision"


def ollama_name(model_id: str) -> str:
    """The name Ollama clients see: the id, tagged ``:latest`` when it has no tag."""
    return model_id if ":" in model_id.rsplit("/", 1)[-1] else f"{model_id}:latest"


def candidate_ids(name: str) -> list[str]:
    """Upstream ids a requested name may mean, most specific first."""
    name = name.strip()
    candidates = [name]
    if name.endswith(":latest"):
        candidates.append(name[: -len(":latest")])
    return candidates


def family_of(model_id: str) -> str:
    """``google/gemini-pro`` -> ``gemini``; ``openai/gpt-4o`` -> ``gpt``."""
    base = model_id.rsplit("/", 1)[-1].split(":", 1)[0]
    match = _FAMILY_WORD.search(base)
    return match.group().lower() if match else "unknown"


def parameter_size_of(model_id: str) -> str:
    """``meta-llama/llama-3.1-8b-instruct`` -> ``8B``; unknown -> ``""``."""
    base = model_id.rsplit("/", 1)[-1]
    match = _PARAMETER_SIZE.search(base)
    if not match:
        return ""
    return f"{match.group(1)}{match.group(2).upper()}"


_last_second: list[Any] = [None, ""]  # the whole second formatted last, and its text


def rfc3339(seconds: float) -> str:
    """UTC timestamp as Ollama writes it, with fractional seconds and a ``Z``.

    Every streamed line carries one, so the date and time of day are formatted once
    per second and only the microseconds per call (rounded as ``datetime`` rounds).
    """
    whole = int(seconds)
    micro = round((seconds - whole) * 1e6)
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    elif micro < 0:  # before 1970: the slow way
        return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    cached = _last_second
    if cached[0] != whole:
        cached[1] = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached[0] = whole
    return f"{cached[1]}.{micro:06d}Z"


_last_second_bytes: list[Any] = [None, b""]  # the whole second formatted last, to the dot


def rfc3339_bytes(seconds: float) -> bytes:
    """``rfc3339(seconds)`` as ASCII bytes, made the cheap way: one per streamed line."""
    whole = int(seconds)
    micro = round((seconds - whole) * 1e6)
    cached = _last_second_bytes
    if cached[0] == whole and 0 <= micro < 1_000_000:
        return b"%s%06dZ" % (cached[1], micro)
    stamp = rfc3339(seconds)
    if 0 <= micro < 1_000_000:
        cached[0], cached[1] = whole, stamp[:-7].encode()  # up to and with the dot
    return stamp.encode()


def details(model: UpstreamModel) -> dict[str, Any]:
    family = model.family
    return {
        "parent_model": "",
        "format": "api",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size_of(model.id),
        "quantization_level": "",
    }


def tag_entry(model: UpstreamModel) -> dict[str, Any]:
    """One entry of ``/api/tags``."""
    name = model.ollama_name
    return {
        "name": name,
        "model": name,
        "provider": model.provider,
        "modified_at": rfc3339(model.created),
        "size": 0,
        "digest": model.digest,
        "details": details(model),
    }


def show_response(model: UpstreamModel) -> dict[str, Any]:
    """The body of ``/api/show``: much is stubbed, as a cloud model has no Modelfile."""
    architecture = model.family
    model_info: dict[str, Any] = {
        "general.architecture": architecture,
        "general.basename": model.id.rsplit("/", 1)[-1],
        "general.name": model.name or model.id,
    }
    if model.context_length:
        model_info[f"{architecture}.context_length"] = model.context_length
    return {
        "license": "",
        "modelfile": f"# Served by ollama-proxy from {model.provider}\nFROM {model.id}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": details(model),
        "model_info": model_info,
        "tensors": [],
        "capabilities": model.capabilities(),
        "modified_at": rfc3339(model.created),
    }


def from_openrouter(entry: dict[str, Any], provider: str, embedding: bool = False) -> UpstreamModel | None:
    """Read one entry of an OpenAI/OpenRouter ``/models`` listing; ``None`` if unusable."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    architecture = as_object(entry.get("architecture"))
    modalities = architecture.get("input_modalities") or ["text"]
    output = architecture.get("output_modalities") or []
    listed = entry.get("supported_parameters")
    params = listed if isinstance(listed, list) else []
    created = entry.get("created")
    context = entry.get("context_length")
    return UpstreamModel(
        id=model_id,
        provider=provider,
        created=int(created) if isinstance(created, (int, float)) else 0,
        context_length=int(context) if isinstance(context, (int, float)) else None,
        input_modalities=tuple(str(m) for m in modalities if isinstance(m, str)),
        supported_parameters=tuple(str(p) for p in params if isinstance(p, str)),
        embedding=embedding or output == ["embeddings"] or "embedding" in model_id.split("/")[-1],
        name=str(entry.get("name") or ""),
        pricing=_pricing(entry.get("pricing")),
        described=isinstance(listed, list),
    )


def _pricing(pricing: Any) -> tuple[float, float] | None:
    """OpenRouter's ``{"prompt": "0.000001", "completion": "0.000002"}`` (strings, per
    token); a missing or negative figure (``-1``: priced per call by the router) is no price."""
    if not isinstance(pricing, dict):
        return None
    try:
        prompt = float(pricing.get("prompt"))  # type: ignore[arg-type]
        completion = float(pricing.get("completion", 0) or 0)
    except (TypeError, ValueError):
        return None
    if not (prompt >= 0 and completion >= 0):
        return None
    return prompt, completion
