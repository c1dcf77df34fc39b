"""A request's timings on the reactor's clock, as Ollama reports them (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Timings:
    """Seconds on the reactor's clock, filled in as the request goes."""

    started: float
    upstream_headers: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def nanoseconds(self) -> dict[str, int]:
        def ns(a: float | None, b: float | None) -> int:
            if a is None or b is None:
                return 0
            return max(0, int(round((b - a) * 1e9)))

        end = self.finished if self.finished is not None else self.started
        headers = self.upstream_headers if self.upstream_headers is not None else self.started
        first = self.first_token if self.first_token is not None else end
        return {
            "total_duration": ns(self.started, end),
            "load_duration": ns(self.started, headers),
            "prompt_eval_duration": ns(headers, first),
            "eval_duration": ns(first, end),
        }
