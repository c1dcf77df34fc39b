"""Embedding with Ollama's ``truncate`` semantics over a provider that has none.

Ollama cuts an input that is longer than the model's context (``truncate``, on by
default) and answers 400 when told not to. The proxy has no tokenizer, so it does
not guess up front: inputs go whole, and only when the provider refuses them
(400) are the long ones cut to a budget of characters per context token and sent
again, with a smaller budget each time. With ``truncate: false`` the provider's
refusal is the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.interfaces import IProvider
from ollama_proxy.wire.models import UpstreamModel

# Characters allowed per token of context, tried in turn after a refusal.
CHARACTERS_PER_TOKEN = (4, 2, 1)


async def embed(
    provider: IProvider, model: UpstreamModel, inputs: Sequence[str], dimensions: int | None, truncate: bool = True
) -> tuple[list[list[float]], int]:
    """``(vectors, prompt_tokens)`` for ``inputs``, cutting them if the provider says too long."""
    dimensions = dimensions if dimensions and dimensions > 0 else None
    texts = list(inputs)
    try:
        return await provider.embed(model.id, texts, dimensions)
    except UpstreamError as error:
        if not truncate or error.status != 400 or not model.context_length:
            raise
        refusal = error
    for ratio in CHARACTERS_PER_TOKEN:
        budget = model.context_length * ratio
        if all(len(t) <= budget for t in texts):
            continue  # this budget would send the same texts again
        texts = [t[:budget] for t in texts]
        try:
            return await provider.embed(model.id, texts, dimensions)
        except UpstreamError as error:
            if error.status != 400:
                raise
            refusal = error
    raise refusal
