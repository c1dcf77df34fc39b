"""Every native endpoint, end to end: the official ollama client and raw HTTP
against a real proxy and the upstream simulator."""

import ollama
import pytest
import pytest_twisted

from .conftest import http, in_thread
from .simulator import fake_vector


@pytest_twisted.ensureDeferred
async def test_root_and_version_including_head(proxy):
    r = await http("GET", proxy.url + "/")
    assert (r.code, r.body) == (200, b"Ollama is running")
    r = await http("HEAD", proxy.url + "/")
    assert r.code == 200 and r.body == b""
    r = await http("GET", proxy.url + "/api/version")
    assert r.code == 200 and r.json() == {"version": proxy.service.config.ollama_version}
    assert r.header("content-type") == "application/json; charset=utf-8"
    r = await http("HEAD", proxy.url + "/api/version")
    assert r.code == 200 and r.body == b""


@pytest_twisted.ensureDeferred
async def test_version_is_configurable(make_proxy):
    proxy = make_proxy(ollama_version="0.7.1")
    assert (await http("GET", proxy.url + "/api/version")).json() == {"version": "0.7.1"}


@pytest_twisted.ensureDeferred
async def test_tags_with_the_ollama_client(proxy):
    listing = await in_thread(ollama.Client(host=proxy.url).list)
    names = [m.model for m in listing.models]
    assert "google/gemini-pro:latest" in names
    assert "meta-llama/llama-3.1-8b-instruct:free" in names  # already tagged: unchanged
    assert "openai/text-embedding-3-small:latest" in names  # from the separate embedding list
    gemini = next(m for m in listing.models if m.model == "google/gemini-pro:latest")
    assert gemini.details.family == "gemini" and len(gemini.digest) == 64
    raw = (await http("GET", proxy.url + "/api/tags")).json()
    entry = next(m for m in raw["models"] if m["model"] == "google/gemini-pro:latest")
    assert entry["name"] == entry["model"]
    assert set(entry["details"]) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }


@pytest_twisted.ensureDeferred
async def test_tags_are_filtered(make_proxy):
    from ollama_proxy.config.settings import FilterConfig

    proxy = make_proxy(filter=FilterConfig(allow=["google/*", "openai/*"], deny=["openai/text-*"]))
    names = [m["name"] for m in (await http("GET", proxy.url + "/api/tags")).json()["models"]]
    assert sorted(names) == ["google/gemini-pro:latest", "openai/gpt-4o-mini:latest"]


@pytest_twisted.ensureDeferred
async def test_show_with_model_or_legacy_name(proxy):
    shown = await in_thread(ollama.Client(host=proxy.url).show, "openai/gpt-4o-mini")
    assert "tools" in shown.capabilities and "vision" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gpt"
    assert shown.modelinfo["gpt.context_length"] == 128000
    r = await http("POST", proxy.url + "/api/show", {"name": "deepseek/deepseek-r1:latest"})
    assert r.code == 200 and "thinking" in r.json()["capabilities"]
    r = await http("POST", proxy.url + "/api/show", {"model": "openai/text-embedding-3-small"})
    assert r.json()["capabilities"] == ["embedding"]


@pytest_twisted.ensureDeferred
async def test_chat_non_streamed(proxy, simulator):
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(
        client.chat,
        model="google/gemini-pro:latest",
        messages=[{"role": "user", "content": "why is the sky blue"}],
        stream=False,
    )
    assert answer.message.role == "assistant"
    assert answer.message.content == "Echo: why is the sky blue"
    assert answer.model == "google/gemini-pro:latest"
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count == 5 and answer.eval_count == 6
    assert answer.total_duration > 0 and answer.total_duration >= answer.eval_duration
    assert simulator.chat_requests()[-1].body["model"] == "google/gemini-pro"


@pytest_twisted.ensureDeferred
async def test_chat_streamed_token_by_token(proxy):
    client = ollama.Client(host=proxy.url)

    def run():
        return list(
            client.chat(model="google/gemini-pro", messages=[{"role": "user", "content": "one two three"}], stream=True)
        )

    parts = await in_thread(run)
    assert [p.message.content for p in parts[:-1]] == ["Echo:", " one", " two", " three"]
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done and final.done_reason == "stop" and final.message.content == ""
    assert final.eval_count == 4 and final.prompt_eval_count == 3
    assert final.total_duration >= final.prompt_eval_duration


@pytest_twisted.ensureDeferred
async def test_stream_defaults_to_true_on_the_wire(proxy):
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "a b"}]},
    )
    assert r.code == 200
    assert r.header("content-type") == "application/x-ndjson"
    lines = r.lines()
    assert [entry["message"]["content"] for entry in lines[:-1]] == ["Echo:", " a", " b"]
    assert lines[-1]["done"] is True
    assert b"\n\n" not in r.body


@pytest_twisted.ensureDeferred
async def test_options_and_system_reach_the_upstream(proxy, simulator):
    client = ollama.Client(host=proxy.url)
    await in_thread(
        client.generate,
        model="google/gemini-pro",
        prompt="tell me",
        system="be brief",
        options={
            "temperature": 0.2,
            "top_p": 0.8,
            "top_k": 20,
            "min_p": 0.1,
            "seed": 7,
            "num_predict": 50,
            "stop": ["\n"],
            "presence_penalty": 0.3,
            "frequency_penalty": 0.4,
            "repeat_penalty": 1.2,
            "num_ctx": 8192,
        },
        stream=False,
    )
    sent = simulator.chat_requests()[-1]
    assert sent.body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me"}]
    for key, value in {
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 20,
        "min_p": 0.1,
        "seed": 7,
        "max_tokens": 50,
        "stop": ["\n"],
        "presence_penalty": 0.3,
        "frequency_penalty": 0.4,
        "repetition_penalty": 1.2,
    }.items():
        assert sent.body[key] == value, key
    assert "num_ctx" not in sent.body
    assert sent.headers["authorization"].startswith("Bearer ")


@pytest_twisted.ensureDeferred
async def test_generate_non_streamed_and_streamed(proxy):
    client = ollama.Client(host=proxy.url)
    answer = await in_thread(client.generate, model="google/gemini-pro", prompt="once upon", stream=False)
    assert answer.response == "Echo: once upon" and answer.done
    assert answer.context and all(isinstance(t, int) for t in answer.context)
    parts = await in_thread(lambda: list(client.generate(model="google/gemini-pro", prompt="x y", stream=True)))
    assert "".join(p.response for p in parts) == "Echo: x y"
    assert parts[-1].done and parts[-1].done_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_num_predict_limit_gives_done_reason_length(proxy):
    answer = await in_thread(
        ollama.Client(host=proxy.url).generate,
        model="google/gemini-pro",
        prompt="a b c d e",
        options={"num_predict": 2},
        stream=False,
    )
    assert answer.response == "Echo: a" and answer.done_reason == "length" and answer.eval_count == 2


@pytest_twisted.ensureDeferred
async def test_embed_string_and_list(proxy):
    client = ollama.Client(host=proxy.url)
    one = await in_thread(client.embed, model="openai/text-embedding-3-small", input="hello world")
    assert one.embeddings == [fake_vector("hello world")]
    assert one.prompt_eval_count == 2 and one.model == "openai/text-embedding-3-small"
    many = await in_thread(client.embed, model="openai/text-embedding-3-small:latest", input=["a", "b c"])
    assert many.embeddings == [fake_vector("a"), fake_vector("b c")]
    raw = (
        await http("POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": "x"})
    ).json()
    assert set(raw) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}


@pytest_twisted.ensureDeferred
async def test_legacy_embeddings(proxy):
    answer = await in_thread(
        ollama.Client(host=proxy.url).embeddings, model="openai/text-embedding-3-small", prompt="hello"
    )
    assert list(answer.embedding) == fake_vector("hello")


@pytest_twisted.ensureDeferred
async def test_ps(proxy):
    listing = await in_thread(ollama.Client(host=proxy.url).ps)
    assert list(listing.models) == []


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:abc"),
        ("HEAD", "/api/blobs/sha256:abc"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_local_model_management_is_501(proxy, method, path):
    r = await http(method, proxy.url + path, {"model": "x"} if method != "HEAD" else None)
    assert r.code == 501
    if method != "HEAD":
        assert r.json()["type"] == "not_implemented" and "not supported" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_pull_through_the_client_raises_a_response_error(proxy):
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(ollama.Client(host=proxy.url).pull, "llama3.2")
    assert caught.value.status_code == 501


@pytest_twisted.ensureDeferred
async def test_health_and_metrics_are_measured(proxy):
    await http("GET", proxy.url + "/api/tags")
    await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    await http("POST", proxy.url + "/api/chat", {"model": "nope/nope"})
    await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "sim/fail-500", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    health = (await http("GET", proxy.url + "/health")).json()
    assert health["status"] == "healthy" and health["reasons"] == []
    assert health["request_count"] == 4 and health["error_count"] == 1
    assert health["error_rate"] == 0.25
    assert health["model_count"] == len(proxy.service.catalogue.all_models()) and health["filtered_model_count"] == 0
    assert health["last_model_refresh"] is not None and health["environment"] == "production"
    assert health["uptime_seconds"] >= 0
    metrics = (await http("GET", proxy.url + "/metrics")).json()
    assert set(metrics) == {"metrics", "statistics", "timestamp"}
    chat = next(m for m in metrics["metrics"] if m["endpoint"] == "/api/chat")
    assert chat["count"] == 3 and chat["error_count"] == 1 and chat["client_error_count"] == 1
    assert chat["status_counts"] == {"200": 1, "404": 1, "502": 1}
    assert chat["max_ms"] >= chat["min_ms"] > 0
    assert metrics["statistics"]["completion_tokens"] == 2


@pytest_twisted.ensureDeferred
async def test_ps_uses_the_configured_default_keep_alive(make_multi):
    from twisted.internet.task import Clock

    proxy = make_multi([], clock=Clock(), default_keep_alive=90.0)
    await in_thread(
        ollama.Client(host=proxy.url).chat, model="google/gemini-pro", messages=[{"role": "user", "content": "x"}]
    )
    [running] = (await http("GET", proxy.url + "/api/ps")).json()["models"]
    assert running["model"] == "google/gemini-pro:latest"
    assert running["expires_at"].startswith("1970-01-01T00:01:30")  # the clock's 0 s + 90 s
