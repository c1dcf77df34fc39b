"""The common streamed chunk, read and written without the general machinery (pure).

Nearly every event of a streamed answer is the same shape: one choice, a delta that
holds some text, nothing else. Reading each into a dict, through
:class:`~ollama_proxy.wire.chunks.ChunkReader` and back into a dict to encode costs
several times what the token's bytes do. :func:`plain_content` reads that shape
straight to its text, and says ``None`` for anything else (a finish, usage, tool
calls, reasoning, logprobs, an error, a second choice, an unknown delta field),
which then takes the general path; a renderer writes the text into a line prepared
once per stream, around the one string :func:`json_string` encodes.

What counts as plain is what the general path would read as only text: a field it
would act on must be absent or null here, or the chunk is not plain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ollama_proxy.wire.models import rfc3339_bytes

# Writes a str as compact() does (see json_string).
encode_json = msgspec.json.Encoder().encode


# gc=False: they hold no containers that could make a cycle, so the collector need not track them.
class _Delta(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    # Any other field (tool_calls with calls, reasoning text, a refusal, reasoning
    # details, a function_call) makes the chunk not plain: the general path reads it.
    content: str | None = None
    role: str | None = None
    refusal: None = None
    reasoning: None = None
    reasoning_content: None = None
    tool_calls: None = None


class _Choice(msgspec.Struct, gc=False):
    # Other fields of a choice (OpenRouter's native_finish_reason, ...) mean nothing
    # to a reader while there is no finish_reason.
    delta: _Delta
    index: Literal[0] = 0  # other choices are not ours: another index is not plain
    finish_reason: None = None
    logprobs: None = None


class _Chunk(msgspec.Struct, gc=False):
    # Exactly one choice; the envelope's id, model, created, ... are not read.
    choices: tuple[_Choice]
    error: None = None
    usage: None = None


_decode = msgspec.json.Decoder(_Chunk).decode
_join = b"".join


def plain_content(data: str | bytes) -> str | None:
    """The text of a plain content chunk (``""`` when its delta holds none), or
    ``None`` when ``data`` is anything else (for the general path to read)."""
    try:
        content = _decode(data).choices[0].delta.content
    except msgspec.DecodeError:  # not JSON, or JSON of another shape
        return None
    return content if content is not None else ""


def json_string(text: str) -> bytes | None:
    """``text`` as a JSON string, the bytes :func:`~ollama_proxy.wire.framing.compact`
    writes for it; ``None`` where that needs the general path (a lone surrogate)."""
    try:
        return encode_json(text)
    except UnicodeEncodeError:
        return None


TextWriter = Callable[[str], None]
# The bytes a relay writes before and after the JSON of an object of the type given.
Frame = Callable[[str], tuple[bytes, bytes]]
# The bytes before a line's text, made for each text (the line holds a counter, or an
# index that changes); None: the renderer cannot write this text so (it is fed).
HeadMaker = Callable[[str], bytes | None]


def text_writer(
    renderer: Any,
    line: tuple[bytes | HeadMaker, bytes | None, bytes],
    write: Callable[[bytes], None],
    feed: TextWriter,
    ready: Callable[[], bool] | None = None,
    keep: list[str] | None = None,
) -> TextWriter:
    """A function that takes the text of each plain chunk for ``renderer`` (a
    :class:`~ollama_proxy.wire.chunks.ReadsChunks`: its reader, timings and clock)
    and writes the line it becomes: ``line``'s head (bytes, or made for the text),
    a time stamp and the middle bytes when there is a middle, the text as a JSON
    string, its tail. It counts the text as feeding the chunk would (and appends it
    to ``keep``). Until ``ready()`` every text (even an empty one: the renderer may
    owe its opening events) and after it any text the line cannot hold is handed to
    ``feed``, the general path.

    One call per token, with everything it reads bound once: the hot path.
    """
    return _TextLines(renderer, line, write, feed, ready, keep).take


class _TextLines:
    """:func:`text_writer`'s state. Slots, not a closure: thousands of streams may be
    open, and a closure's cells cost several times what slots do."""

    __slots__ = ("head", "make_head", "middle", "tail", "reader", "timings", "clock", "write", "feed", "gate", "keep")

    def __init__(
        self,
        renderer: Any,
        line: tuple[bytes | HeadMaker, bytes | None, bytes],
        write: Callable[[bytes], None],
        feed: TextWriter,
        ready: Callable[[], bool] | None,
        keep: list[str] | None,
    ) -> None:
        head, self.middle, self.tail = line
        self.head = head if isinstance(head, bytes) else b""
        self.make_head = None if isinstance(head, bytes) else head
        self.reader, self.timings, self.clock = renderer.reader, renderer.timings, renderer.clock
        self.write, self.feed, self.gate, self.keep = write, feed, ready, keep

    def take(self, text: str) -> None:
        """One plain chunk's text: written, or fed."""
        if self.gate is not None:
            if not self.gate():
                self.feed(text)
                return
            self.gate = None
        if not text:
            return  # no piece: nothing to write, nothing to count
        try:
            encoded = encode_json(text)
        except UnicodeEncodeError:  # a lone surrogate: the general path writes U+FFFD
            self.feed(text)
            return
        start = self.head
        if self.make_head is not None:
            made = self.make_head(text)
            if made is None:
                self.feed(text)
                return
            start = made
        self.reader.size += len(text)
        timings = self.timings
        if timings.first_token is None:
            timings.first_token = self.clock()
        if self.keep is not None:
            self.keep.append(text)
        if self.middle is None:
            self.write(_join((start, encoded, self.tail)))
        else:
            self.write(_join((start, rfc3339_bytes(self.clock()), self.middle, encoded, self.tail)))


def text_gatherer(renderer: Any, keep: list[str]) -> TextWriter:
    """For a renderer gathering a whole answer: a function that takes the text of each
    plain chunk as feeding the chunk would (counted, timed, appended to ``keep``)."""
    reader, timings, clock = renderer.reader, renderer.timings, renderer.clock

    def gather_text(text: str) -> None:
        if text:
            reader.size += len(text)
            if timings.first_token is None:
                timings.first_token = clock()
            keep.append(text)

    return gather_text
