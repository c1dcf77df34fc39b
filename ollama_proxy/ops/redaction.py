"""Secrets blotted out of every text that leaves the proxy: responses, stats and logs.

One :class:`Redactor` per server knows every configured credential (provider keys
however they were given, and every value of a provider's ``headers``); the log
observer, the providers' error texts and the relay's stream errors all use it.
A secret is found as written and in the encodings an upstream's echo may put it
in: URL-encoded (``%5F``, any case, ``+`` for a space) and JSON-escaped (``\\u005f``,
``\\/``), even mixed. Text is redacted before it is shortened anywhere, so a
secret cut at the edge cannot leak its first half.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
# Shorter values (a header such as "true") would blot out ordinary words.
MIN_SECRET_LENGTH = 6
# Shapes of secrets worth hiding even when nobody configured them.
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk-)[A-Za-z0-9_-]{16,}"),
)
_KEEP_PREFIX = r"\1" + REDACTED
# Without one of these, a secret can only be there as written.
_MAY_BE_ENCODED = re.compile(r"[%\\+]")
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _hex(value: int, width: int) -> str:
    """``value`` in hex as a pattern that takes either case."""
    digits = f"{value:0{width}x}"
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)


def _char_forms(char: str) -> str:
    """A pattern for one character of a secret: as written, URL-encoded or JSON-escaped."""
    forms = [re.escape(char), "".join("%" + _hex(byte, 2) for byte in char.encode("utf-8"))]
    if char == " ":
        forms.append(r"\+")
    units = char.encode("utf-16-be")
    forms.append("".join(r"\\u" + _hex(int.from_bytes(units[i : i + 2], "big"), 4) for i in range(0, len(units), 2)))
    if char in _JSON_ESCAPES:
        forms.append(re.escape(_JSON_ESCAPES[char]))
    return "(?:" + "|".join(forms) + ")"


def secret_pattern(secret: str) -> str:
    """A regular expression matching ``secret`` in any of the encodings above."""
    return "".join(_char_forms(char) for char in secret)


class Redactor:
    """Replaces known secrets (in their common encodings), and secret-looking strings, with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """The secrets to hide from now on (e.g. after a reload); short ones are ignored."""
        # Longest first, so a key that contains another is hidden whole.
        kept = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._secrets = tuple(kept)
        self._pattern = re.compile("|".join(secret_pattern(s) for s in kept)) if kept else None

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            if _MAY_BE_ENCODED.search(text):
                text = self._pattern.sub(REDACTED, text)
            else:  # the common case (every log field), at the cost of a substring search
                for secret in self._secrets:
                    if secret in text:
                        text = text.replace(secret, REDACTED)
        # Each shape starts with one of these; without them (most texts, every access line)
        # the patterns need not scan the text (two scans were most of a redaction's cost).
        if "sk-" in text or "bearer" in text.lower():
            for pattern in _PATTERNS:
                text = pattern.sub(_KEEP_PREFIX, text)
        return text

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds one of the configured secrets (in any encoding)."""
        if self._pattern is None:
            return False
        if _MAY_BE_ENCODED.search(text):
            return self._pattern.search(text) is not None
        return any(secret in text for secret in self._secrets)

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bytes):
            return self.redact(value.decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact_value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        return value
