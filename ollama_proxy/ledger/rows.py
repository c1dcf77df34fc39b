"""One row of the ledger: one finished request."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_proxy.ledger.windows import day_of

ANONYMOUS = "anonymous"

# The columns of ``usage`` written for every row, in this order.
COLUMNS: tuple[str, ...] = (
    "ts",
    "day",
    "request_id",
    "token",
    "model",
    "provider",
    "upstream_model",
    "surface",
    "status",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "cost_source",
    "duration",
    "streamed",
)


@dataclass(frozen=True)
class UsageRow:
    """What one request used. ``ts`` is its arrival (epoch seconds): the windows it
    counts in for limits and budgets are the ones it was admitted in.

    ``cost`` is None when no price is known (never guessed); ``cost_source`` says
    where a known cost came from (``provider``, ``pricing`` or ``config``).
    ``outcome`` is ``ok``, ``error`` or ``cancelled``.
    """

    ts: float
    token: str = ANONYMOUS
    model: str = ""
    surface: str = ""
    request_id: str = ""
    provider: str | None = None
    upstream_model: str | None = None
    status: int | None = None
    outcome: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    cost_source: str | None = None
    duration: float = 0.0
    streamed: bool = False

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together (what ``tokens_per_minute`` counts)."""
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def values(self) -> tuple[object, ...]:
        """The row's values in :data:`COLUMNS` order."""
        return (
            self.ts,
            day_of(self.ts),
            self.request_id,
            self.token,
            self.model,
            self.provider,
            self.upstream_model,
            self.surface,
            self.status,
            self.outcome,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost,
            self.cost_source,
            self.duration,
            1 if self.streamed else 0,
        )
