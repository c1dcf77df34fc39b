"""What the channel checks of a request's head before Twisted parses it.

Twisted refuses a malformed request line or header with a bare ``400 Bad Request``
(no body, no access line) written by a private method of ``HTTPChannel``. The
channel applies the same rules first, line by line, so such a request gets a JSON
400 saying what is wrong and its access line. (A malformed *chunk* of a body is
found only by Twisted's private chunked decoder: that one still gets Twisted's bare
400, and the channel writes its access line.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

# The checks below delete the allowed bytes (``bytes.translate``, in C) and look at what is
# left, instead of testing each byte in Python (a typical head's checks: 9.1 -> 7.7 us).
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TARGET_BYTES = bytes(range(33, 177))  # Twisted's own bound: it refuses controls and bytes above 176
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")


def json_answer(status: bytes, body: dict[str, Any], extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer written by the channel itself (no request object exists)."""
    data = json.dumps(body).encode()
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json; charset=utf-8\r\nconnection: close\r\n"
        + extra
        + b"content-length: %d\r\n\r\n%s" % (len(data), data)
    )


def target_path(request_line: bytes) -> str:
    """The path of a request line's target, decoded as the Site decodes it for resources."""
    target = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b"/"
    if b"://" in target:  # the absolute form a proxy client may send
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    path = target.partition(b"?")[0]
    return "/" + "/".join(unquote_to_bytes(s).decode("utf-8", "replace") for s in path[1:].split(b"/"))


def _is_token(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _TCHAR)


def request_line_problem(line: bytes) -> str | None:
    """Why Twisted would refuse this request line (None: it is fine)."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return "malformed request line: expected 'METHOD target HTTP/1.1'"
    method, target, version = parts
    if not _is_token(method):
        return "malformed request method"
    if not target or target.translate(None, _TARGET_BYTES):
        return "the request target must be printable ASCII (percent-encode other bytes)"
    if version not in _VERSIONS:
        return "unsupported HTTP version: HTTP/1.0 and HTTP/1.1 are served"
    return None


@dataclass
class HeadCheck:
    """The header lines of one request, checked as they come."""

    max_headers: int
    count: int = 0
    lengths: int = 0  # Content-Length and chunked Transfer-Encoding headers seen

    def problem(self, line: bytes) -> str | None:
        """Why Twisted would refuse this header line (None: it is fine)."""
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in the headers is not accepted"
        name, colon, value = line.partition(b":")
        if not colon or not _is_token(name):
            return "malformed header line"
        value = value.strip(b" \t")
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            return "a header value holds NUL, CR or LF"
        lowered = name.lower()
        if lowered == b"content-length":
            if not value.isdigit():
                return "Content-Length must be a number of bytes"
            self.lengths += 1
        elif lowered == b"transfer-encoding":
            if value.lower() == b"chunked":
                self.lengths += 1
            elif value.lower() != b"identity":
                return "only the chunked Transfer-Encoding is accepted"
        if self.lengths > 1:
            return "a request declares its length once (Content-Length or Transfer-Encoding, not both)"
        self.count += 1
        if self.count > self.max_headers:
            return f"more than {self.max_headers} headers"
        return None
