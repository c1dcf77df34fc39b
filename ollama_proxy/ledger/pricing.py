"""What a request cost, from the best source there is, never guessed.

In order: the provider's own figure (OpenRouter's ``usage.cost``, asked for with
``usage: {"include": true}``); tokens times the price the provider's model list
publishes (OpenRouter's ``pricing``); tokens times a ``[prices]`` entry of the
configuration (per million tokens, for providers that publish none). Without any
of them the cost is unknown (NULL in the ledger), not zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ollama_proxy.config.schema import PriceTable

_PER_MILLION = 1_000_000


class Prices:
    """The ``[prices]`` table: exact model names first, then globs (``"llama3*"``)."""

    def __init__(self, table: Mapping[str, PriceTable] | None = None) -> None:
        table = dict(table or {})
        self._exact = {name: entry for name, entry in table.items() if not _is_glob(name)}
        self._globs = [(name, entry) for name, entry in table.items() if _is_glob(name)]

    def lookup(self, *names: str | None) -> PriceTable | None:
        """The entry for the first of ``names`` (upstream model, then the name asked) that has one."""
        for name in names:
            if name and name in self._exact:
                return self._exact[name]
        for name in names:
            for glob, entry in self._globs:
                if name and fnmatchcase(name, glob):
                    return entry
        return None

    def cost(self, record: Any) -> tuple[float | None, str | None]:
        """``(cost, source)`` of a finished request's record; ``(None, None)`` when unknown."""
        if record.cost is not None:
            return record.cost, "provider"
        prompt, completion = record.tokens_in or 0, record.tokens_out or 0
        if record.tokens_in is None and record.tokens_out is None:
            # Nothing was used (or nothing reported): free when nothing reached a model.
            return (0.0, None) if record.upstream_model is None else (None, None)
        if record.pricing is not None:
            per_prompt, per_completion = record.pricing
            return prompt * per_prompt + completion * per_completion, "pricing"
        entry = self.lookup(record.upstream_model, record.model)
        if entry is not None:
            return (prompt * entry.prompt + completion * entry.completion) / _PER_MILLION, "config"
        return None, None


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")
