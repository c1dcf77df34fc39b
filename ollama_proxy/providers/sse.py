"""An incremental parser for Server-Sent Events (the upstream streaming format).

Bytes go in as they arrive from the network, in pieces of any size; complete
events come out. Lines may end in LF, CRLF or a lone CR, and a CRLF may be split
across two reads. Comment lines (``: OPENROUTER PROCESSING``) are keep-alives and
produce no event.

What the parser holds is bounded per event, not per line: an event may be split
into any number of ``data:`` lines, and they all wait in memory for its blank
line. Past :data:`MAX_EVENT_BYTES` (the line being read and the data lines
before it, together) the stream is refused.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n|\r|\n")

# The most one upstream event (or NDJSON line) may hold: a chat chunk is a few
# hundred bytes, an image-bearing one a few megabytes.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEProtocolError(ValueError):
    """The upstream sent something that is not an SSE stream we can read."""


class SSEEvent(NamedTuple):
    """One dispatched event: its type (``message`` unless named) and its data.

    A named tuple: one is made per upstream token, and a tuple is the cheapest
    immutable record to make.
    """

    data: str
    event: str = "message"


def _plain_events(complete: bytes, data_only: bool) -> list[str] | None:
    """The data of events that end with their blank line (a read's, up to its last),
    when each is one ``data: `` line (most reads of OpenAI's streams) or, when only
    the data is wanted, one ``event: `` line and one ``data: `` line (Anthropic's),
    made with a few passes in C; else ``None``."""
    if complete.startswith(b"data: "):
        # Then every line end is in a separator: one decode and one split.
        data = complete[6:].decode("utf-8", "replace").split("\n\ndata: ")
        return data if complete.count(b"\n") == 2 * (len(data) - 1) else None
    if not data_only or not complete.startswith(b"event: "):
        return None
    # Lines in threes: a name, its data, the blank line (the last blank is the caller's).
    lines = complete.decode("utf-8", "replace").split("\n")
    if len(lines) % 3 != 2 or any(lines[2::3]):
        return None
    events = len(lines) // 3 + 1
    names, data_lines = "\n".join(lines[0::3]), "\n".join(lines[1::3])
    if names.count("\nevent: ") != events - 1 or not data_lines.startswith("data: "):
        return None
    data = data_lines[6:].split("\ndata: ")
    return data if len(data) == events else None


class SSEParser:
    """Turn a byte stream into :class:`SSEEvent` objects, one ``feed`` at a time."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for a line end
        self._data: list[bytes] = []  # decoded once, when the event is dispatched
        self._data_bytes = 0  # what the data lines of the event being read hold
        self._event = ""
        self._max_event = max_event_bytes
        self._cr = False  # a CR was seen: every later read takes the general path
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completed, in order.

        Linear in the bytes fed: a long line arriving in many reads is searched
        once, not once per read (image-bearing events run to megabytes).
        """
        data, events = self._read(chunk, False)
        return [SSEEvent(d) for d in data] if data is not None else events

    def feed_data(self, chunk: bytes) -> list[str]:
        """As :meth:`feed`, only each event's data (what a stream of JSON events reads:
        their names are in their data), without making an event of each."""
        data, events = self._read(chunk, True)
        return data if data is not None else [event.data for event in events]

    def _read(self, chunk: bytes, data_only: bool) -> tuple[list[str] | None, list[SSEEvent]]:
        """The events ``chunk`` completed: as data strings when all are plain one-line
        events (most reads; named ones too when ``data_only``), else as events."""
        if self._cr or b"\r" in chunk:
            if not self._cr:
                self._cr = True
                self._scanned = len(self._buffer)  # what the fast path kept holds no line end
            return None, self._feed_any(chunk)
        # LF only, as every provider sends: no regex.
        buffer = self._buffer
        if b"\n" not in chunk:
            buffer += chunk
            if len(buffer) + self._data_bytes > self._max_event:
                raise self._too_large()
            return None, []
        text = bytes(buffer) + chunk if buffer else chunk
        end = text.rfind(b"\n\n")  # where the last event of this read ends
        lines = text[end + 2 :].split(b"\n") if end >= 0 else text.split(b"\n")
        rest = lines.pop()  # a part of a line
        self._buffer = bytearray(rest)
        data: list[str] | None = None
        events: list[SSEEvent] = []
        if end >= 0:
            complete = text[:end]
            if not self._data and len(complete) <= self._max_event:
                if not self._event:
                    data = _plain_events(complete, data_only)
                elif data_only and complete.startswith(b"data: "):
                    # The first event's name came with the read before: its data line ends it.
                    data = _plain_events(b"event: \n" + complete, True)
                    if data is not None:
                        self._event = ""
            if data is None:
                self._lf_lines(complete.split(b"\n") + [b""], events)  # its lines and the blank one
        if lines:
            self._lf_lines(lines, events)  # lines of an event not finished yet: no event
        if len(rest) + self._data_bytes > self._max_event:
            raise self._too_large()
        return data, events

    def _lf_lines(self, lines: list[bytes], events: list[SSEEvent]) -> None:
        for line in lines:
            if not line:
                data = self._data
                if data:
                    events.append(SSEEvent(b"\n".join(data).decode("utf-8", "replace"), self._event or "message"))
                    self._data = []
                    self._data_bytes = 0
                self._event = ""
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
                self._data_bytes += len(line)
                if self._data_bytes > self._max_event:
                    raise self._too_large()
            else:
                self._line(line)

    def _feed_any(self, chunk: bytes) -> list[SSEEvent]:
        """Any line ends (LF, CRLF, a lone CR), a CRLF possibly split across reads."""
        buffer = self._buffer
        buffer += chunk
        events: list[SSEEvent] = []
        position = 0
        search_from = self._scanned
        while True:
            match = _LINE_END.search(buffer, search_from)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == len(buffer):
                # A CR at the very end may be the first half of a CRLF.
                break
            line = bytes(buffer[position : match.start()])
            position = search_from = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
            elif self._data_bytes > self._max_event:
                raise self._too_large()
        if position:
            del buffer[:position]
        # Resume the next search where this one stopped (a trailing CR is searched again).
        self._scanned = max(0, len(buffer) - 1)
        if len(buffer) + self._data_bytes > self._max_event:
            raise self._too_large()
        return events

    def _too_large(self) -> SSEProtocolError:
        return SSEProtocolError(f"an SSE event exceeded {self._max_event} bytes")

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            self.comments += 1
            return None
        field, sep, value = raw.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._data_bytes += len(raw)
        elif field == b"event":
            self._event = value.decode("utf-8", errors="replace")
        # ``id`` and ``retry`` are legal but mean nothing to a one-shot stream.
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(b"\n".join(self._data).decode("utf-8", errors="replace"), self._event or "message")
        self._data = []
        self._data_bytes = 0
        self._event = ""
        return event

    def close(self) -> list[SSEEvent]:
        """The stream ended: dispatch a last event left without its blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            event = self._line(bytes(self._buffer).rstrip(b"\r"))
            self._buffer = bytearray()
            self._scanned = 0
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events
