"""The incremental SSE parser, fed the way TCP delivers bytes."""

from ollama_proxy.providers.sse import SSEEvent, SSEParser

STREAM = (
    b': OPENROUTER PROCESSING\n\ndata: {"a":1}\n\nevent: custom\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
)
EXPECTED = [SSEEvent('{"a":1}'), SSEEvent("line one\nline two", "custom"), SSEEvent("[DONE]")]


def feed_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events = []
    for i in range(0, len(data), size):
        events.extend(parser.feed(data[i : i + size]))
    return events + parser.close()


def test_whole_stream_at_once():
    assert feed_in_pieces(STREAM, len(STREAM)) == EXPECTED


def test_every_split_point_gives_the_same_events():
    for size in range(1, 12):
        assert feed_in_pieces(STREAM, size) == EXPECTED, size


def test_crlf_and_lone_cr_line_endings_even_when_split():
    crlf = STREAM.replace(b"\n", b"\r\n")
    cr = STREAM.replace(b"\n", b"\r")
    for data in (crlf, cr):
        for size in (1, 2, 3, 7):
            assert feed_in_pieces(data, size) == EXPECTED


def test_comments_are_counted_not_dispatched():
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n: again\n\n") == []
    assert parser.comments == 2


def test_event_is_held_until_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [SSEEvent("x")]


def test_last_event_without_blank_line_is_dispatched_on_close():
    parser = SSEParser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [SSEEvent("tail")]


def test_field_without_space_and_unknown_fields():
    parser = SSEParser()
    assert parser.feed(b"data:nospace\nid: 7\nretry: 10\n\n") == [SSEEvent("nospace")]


def test_overlong_line_is_an_error():
    import pytest

    from ollama_proxy.providers.sse import SSEProtocolError

    parser = SSEParser(max_event_bytes=10)
    with pytest.raises(SSEProtocolError):
        parser.feed(b"data: " + b"x" * 20)


def test_ndjson_parser_in_every_split():
    from ollama_proxy.providers.stream import NDJSONParser

    data = b'{"a":1}\n\n{"b":2}\r\n{"c":3}\n{"tail":4}'
    for size in range(1, 9):
        parser = NDJSONParser()
        events = []
        for i in range(0, len(data), size):
            events.extend(parser.feed(data[i : i + size]))
        events.extend(parser.close())
        assert [e.data.strip() for e in events] == ['{"a":1}', '{"b":2}', '{"c":3}', '{"tail":4}'], size


def test_a_long_line_in_many_reads_is_one_event():
    data = b"data: " + b"x" * 300_000 + b"\n\n"
    parser = SSEParser()
    events = []
    for i in range(0, len(data), 4096):
        events.extend(parser.feed(data[i : i + 4096]))
    assert [len(e.data) for e in events] == [300_000]


def _reference(stream: bytes) -> tuple[list[SSEEvent], int]:
    """The SSE rules, read plainly from a whole LF stream: what any split must give."""
    events, data, name, comments = [], [], "", 0
    lines = stream.split(b"\n")
    last = lines.pop()
    for line in lines + ([last] if last else []):
        if not line:
            if data:
                events.append(SSEEvent(b"\n".join(data).decode("utf-8", "replace"), name or "message"))
            data, name = [], ""
        elif line.startswith(b":"):
            comments += 1
        else:
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode()
    if data:
        events.append(SSEEvent(b"\n".join(data).decode("utf-8", "replace"), name or "message"))
    return events, comments


def test_random_streams_in_random_pieces_give_what_the_rules_say():
    import random

    odd = [b"data:tight", b"data: ", b"data", b"event: named", b": comment", b"", b"", b"id: 3", b"data: \xff\xfe"]
    odd += [b"event: a\ndata: 1\ndata: 2", b"event: lone", b"event:x\ndata: y", b"data: z\nevent: late"]
    rng = random.Random(11)  # the same streams every run
    for _ in range(600):
        # Mostly plain events (one data line, one blank line), now and then another line.
        named = rng.random() < 0.5  # Anthropic's streams name every event
        lines = [
            rng.choice(odd) if rng.random() < 0.1 else (b"event: e%d\n" % n if named else b"") + b'data: {"n":%d}\n' % n
            for n in range(rng.randrange(1, 30))
        ]
        stream = b"\n".join(lines)
        if rng.random() < 0.7:
            stream += b"\n" * rng.randrange(0, 3)
        parser, data_parser = SSEParser(), SSEParser()
        events, data, position = [], [], 0
        while position < len(stream):
            size = rng.choice((1, 2, 5, 13, 64, len(stream)))
            events += parser.feed(stream[position : position + size])
            data += data_parser.feed_data(stream[position : position + size])
            position += size
        events += parser.close()
        data += [event.data for event in data_parser.close()]
        assert (events, parser.comments) == _reference(stream), stream
        assert data == [event.data for event in events]


def test_an_overlong_event_in_one_read_is_an_error():
    import pytest

    from ollama_proxy.providers.sse import SSEProtocolError

    with pytest.raises(SSEProtocolError):
        SSEParser(max_event_bytes=10).feed(b"data: " + b"x" * 20 + b"\n\n")


def test_a_read_of_named_events_with_one_that_is_not_plain():
    # Lines in threes, as plain named events come, but not all of them an event's name and data.
    parser = SSEParser()
    assert parser.feed_data(b"event: e\ndata: c\n\ndata: a\ndata: b\n\nevent: f\ndata: d\n\n") == ["c", "a\nb", "d"]
    assert parser.feed_data(b"event: e\ndata: c\n\n: note\ndata: d\n\n") == ["c", "d"]
    assert parser.comments == 1
