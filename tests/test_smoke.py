import ollama
import pytest_twisted

from .conftest import http, in_thread


@pytest_twisted.ensureDeferred
async def test_root_and_chat(proxy):
    r = await http("GET", proxy.url + "/")
    assert r.code == 200 and r.body == b"Ollama is running"
    client = ollama.Client(host=proxy.url)
    listing = await in_thread(client.list)
    assert "google/gemini-pro:latest" in [m.model for m in listing.models]
    answer = await in_thread(client.chat, model="google/gemini-pro", messages=[{"role": "user", "content": "hello there"}])
    assert answer.message.content == "Echo: hello there"
    parts = await in_thread(lambda: [c.message.content for c in client.chat(model="google/gemini-pro:latest", messages=[{"role": "user", "content": "a b c"}], stream=True)])
    assert "".join(parts) == "Echo: a b c"
