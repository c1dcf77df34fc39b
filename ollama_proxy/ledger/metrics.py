"""Prometheus counters of the ledger, in the proxy's registry.

Labels are token names (from the configuration, plus ``anonymous``) and model
names a provider answered for, so the label set stays bounded.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ollama_proxy.ledger.rows import UsageRow


class UsageMetrics:
    """Cost and tokens by token and model; refusals by token and limit."""

    def __init__(self, registry: CollectorRegistry, currency: str) -> None:
        self.cost = Counter(
            "ollama_proxy_usage_cost",
            f"What requests cost ({currency}; requests without a known price add nothing), by client token and model.",
            ["token", "model"],
            registry=registry,
        )
        self.tokens = Counter(
            "ollama_proxy_usage_tokens",
            "Tokens used, by client token, model and kind (prompt or completion).",
            ["token", "model", "kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "ollama_proxy_limit_refusals",
            "Requests refused by a client token's rate limit or budget, by token and limit.",
            ["token", "limit"],
            registry=registry,
        )

        # (token, model) -> its three children: a label lookup per request costs more
        # than the increment (bounded like the labels themselves).
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def observe(self, row: UsageRow) -> None:
        """Count one finished request (only what it used: a failure before any
        token adds no label)."""
        if not (row.prompt_tokens or row.completion_tokens or row.cost):
            return
        key = (row.token, row.model)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.tokens.labels(row.token, row.model, "prompt"),
                self.tokens.labels(row.token, row.model, "completion"),
                self.cost.labels(row.token, row.model),
            )
        prompt, completion, cost = children
        if row.prompt_tokens:
            prompt.inc(row.prompt_tokens)
        if row.completion_tokens:
            completion.inc(row.completion_tokens)
        if row.cost:
            cost.inc(row.cost)
