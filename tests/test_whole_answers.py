"""A whole answer (not streamed) is compact JSON with its Content-Length, as Ollama's
Go server sends it; a stream stays chunked. Read with raw HTTP, where the framing shows."""

import json

import pytest_twisted

from .conftest import LineReader
from .test_limits import raw


def chat(model: str, stream: bool) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "a b c"}], "stream": stream}


async def exchange(port: int, method: str, path: str, body: object = None) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    client = await raw(
        port,
        b"%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (method.encode(), path.encode(), len(data), data),
    )
    await client.closed
    head, _, content = client.received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status.split()[1]), headers, content


@pytest_twisted.ensureDeferred
async def test_a_non_streamed_answer_has_its_length_on_every_surface(proxy):
    for method, path, body in (
        ("POST", "/api/chat", chat("openai/gpt-4o-mini", False)),
        ("POST", "/api/generate", {"model": "openai/gpt-4o-mini", "prompt": "hi", "stream": False}),
        ("POST", "/v1/chat/completions", chat("openai/gpt-4o-mini", False)),
        ("GET", "/api/tags", None),
    ):
        code, headers, content = await exchange(proxy.port, method, path, body)
        assert code == 200, (path, content)
        assert "transfer-encoding" not in headers, path
        assert int(headers["content-length"]) == len(content), path
        # Compact, as Go's encoding/json writes it (and not ASCII-escaped).
        assert content == json.dumps(json.loads(content), separators=(",", ":"), ensure_ascii=False).encode(), path


@pytest_twisted.ensureDeferred
async def test_an_error_answer_has_its_length_too(proxy):
    for path, body, status in (
        ("/api/chat", chat("no/such-model", False), 404),
        ("/api/chat", {"model": 3}, 400),
        ("/v1/chat/completions", chat("sim/fail-429", False), 429),
    ):
        code, headers, content = await exchange(proxy.port, "POST", path, body)
        assert code == status, (path, content)
        assert "transfer-encoding" not in headers, path
        assert int(headers["content-length"]) == len(content), path
        assert "error" in json.loads(content)


@pytest_twisted.ensureDeferred
async def test_a_stream_stays_chunked(proxy):
    reader = LineReader()
    await reader.connect(proxy.port, "/api/chat", chat("openai/gpt-4o-mini", True))
    await reader.wait_for_lines(1)
    head = reader.head.lower()
    assert b"transfer-encoding: chunked" in head and b"content-length" not in head
    reader.hang_up()
