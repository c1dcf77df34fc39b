"""What to do after a failed attempt: retry it, move to another provider, or give up.

:func:`classify` reads an error; :class:`RetryPolicy` says how long to wait
before the next attempt on the same provider (exponential backoff with "equal
jitter", at least the provider's ``Retry-After``) and when not to retry at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ollama_proxy.config.providers import RetryConfig
from ollama_proxy.errors import UpstreamError, UpstreamStreamError
from ollama_proxy.routing.breaker import Outcome


@dataclass(frozen=True)
class Verdict:
    """How an attempt's error counts and what may follow it."""

    outcome: Outcome  # for the breaker
    retry: bool  # worth trying the same provider again
    fail_over: bool  # worth trying another provider
    retry_after: float | None = None


_CLIENT_FAULT = Verdict(Outcome.SUCCESS, retry=False, fail_over=False)


def classify(error: BaseException) -> Verdict:
    """Sort an attempt's error. 408, 429, 5xx, connection errors, timeouts and broken
    streams are the provider's trouble: retried, then another provider. 401/402
    open the breaker for long and move on. 403 and 404 move on (another provider
    may allow or have the model) without counting against this one. Other 4xx
    (400, 413, 422, context-length errors) are the request's fault: no provider
    will do better, so the error goes straight to the client."""
    if isinstance(error, UpstreamStreamError):
        return Verdict(Outcome.FAILURE, retry=True, fail_over=True)
    if not isinstance(error, UpstreamError):
        return Verdict(Outcome.IGNORED, retry=False, fail_over=False)
    status = error.upstream_status
    retry_after = error.retry_after
    if status is None:
        # Not reached, no headers in time, or the stream broke before any output.
        return Verdict(Outcome.FAILURE, retry=True, fail_over=True, retry_after=retry_after)
    if status in (401, 402):
        return Verdict(Outcome.AUTH_FAILURE, retry=False, fail_over=True, retry_after=retry_after)
    if status == 403:
        return Verdict(Outcome.IGNORED, retry=False, fail_over=True)
    if status == 404:
        return Verdict(Outcome.SUCCESS, retry=False, fail_over=True)
    if status in (408, 429) or status >= 500:
        return Verdict(Outcome.FAILURE, retry=True, fail_over=True, retry_after=retry_after)
    return _CLIENT_FAULT


class RetryPolicy:
    """Backoff for retries on the same provider; randomness is injected."""

    def __init__(self, settings: RetryConfig, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()

    def delay(self, retry: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1, 2, ...), or ``None``
        when this provider should not be retried again."""
        settings = self.settings
        if retry > settings.max_retries:
            return None
        if retry_after is not None and retry_after > settings.max_retry_after:
            return None  # honouring it would take too long: let another provider answer
        ceiling = min(settings.max_delay, settings.base_delay * 2 ** (retry - 1))
        wait = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        return max(wait, retry_after or 0.0)
