"""Anthropic's Messages API spoken natively, for ``/v1/messages`` requests.

When a ``/v1/messages`` request is routed to an Anthropic provider, it goes as
the client sent it (only the model id is the provider's): no round trip through
the OpenAI shape, so thinking blocks keep their signatures and ``cache_control``
its effect. ``count_tokens`` asks Anthropic's own counter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ollama_proxy.errors import UpstreamError
from ollama_proxy.providers.interfaces import IUpstreamStream
from ollama_proxy.providers.stream import SSEStream
from ollama_proxy.wire.anthropic_answer import native_decoder

# What count_tokens takes of a Messages request (it refuses the rest).
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def _beta(beta: str | None) -> dict[str, str]:
    return {"anthropic-beta": beta} if beta else {}


class NativeMessages:
    """Mixed into the Anthropic provider (which has ``_request``, ``_read`` and the rest)."""

    label: str
    type: str
    timeouts: Any
    _clock: Any

    async def open_messages(self, body: Mapping[str, Any], beta: str | None = None) -> IUpstreamStream:
        """POST the Messages request as given (streamed); the events come through whole."""
        self._require_key()  # type: ignore[attr-defined]
        response = await self._request("POST", "messages", {**body, "stream": True}, _beta(beta))  # type: ignore[attr-defined]
        return SSEStream(response, self._clock, self.timeouts.idle, self.label, decode=native_decoder(self.label))

    async def count_tokens(self, body: Mapping[str, Any], beta: str | None = None) -> int:
        """Anthropic's own count of the request's input tokens."""
        self._require_key()  # type: ignore[attr-defined]
        request = {k: body[k] for k in _COUNTED if body.get(k) is not None}
        response = await self._request("POST", "messages/count_tokens", request, _beta(beta))  # type: ignore[attr-defined]
        raw = await self._read(response)  # type: ignore[attr-defined]
        try:
            count = json.loads(raw).get("input_tokens")
        except (ValueError, AttributeError):
            count = None
        if not isinstance(count, int):
            raise UpstreamError(self.label, self.type, None, "the token count answer has no input_tokens")
        return count
