"""Several providers behind one endpoint: merged tags, per-provider tags, the provider
reports, and each provider type end to end through the official ollama client."""

from __future__ import annotations

import ollama
import pytest
import pytest_twisted

from .conftest import http, in_thread
from .multi import ANTHROPIC_KEY, provider


def everything(openai_sim, anthropic_sim, ollama_sim):
    return [
        provider("openai", "openai", openai_sim.base_url, "sk-openai-simulator-key", priority=2),
        provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY, priority=3),
        provider("local", "ollama", ollama_sim.base_url, priority=4),
        provider("echo", "echo", "", priority=5),
    ]


@pytest_twisted.ensureDeferred
async def test_tags_merge_every_provider(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    r = await http("GET", proxy.url + "/api/tags")
    assert r.code == 200
    entries = {e["name"]: e for e in r.json()["models"]}
    # one entry per name; a name two providers offer goes to the first by priority
    assert entries["google/gemini-pro:latest"]["provider"] == "openrouter"
    assert entries["claude-sonnet-4-5:latest"]["provider"] == "claude"
    assert entries["claude-opus-4-1:latest"]["provider"] == "claude"  # second page of Anthropic's list
    assert entries["echo:latest"]["provider"] == "echo"
    local = entries["llama3.2:latest"]
    assert local["provider"] == "local"
    # an Ollama upstream's entries keep their real size, digest and details
    assert (
        local["size"] == 2019393189
        and local["details"]["quantization_level"] == "Q4_K_M"
        and len(local["digest"]) == 64
    )
    assert entries["qwen3:8b"]["provider"] == "local"
    for entry in r.json()["models"]:
        assert entry["name"] == entry["model"] and entry["modified_at"].endswith("Z")


@pytest_twisted.ensureDeferred
async def test_tags_of_one_provider_and_unknown_provider(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    r = await http("GET", proxy.url + "/api/tags/openai")
    assert r.code == 200
    names = [e["name"] for e in r.json()["models"]]
    assert "google/gemini-pro:latest" in names and {e["provider"] for e in r.json()["models"]} == {"openai"}
    r = await http("GET", proxy.url + "/api/tags/local")
    assert sorted(e["name"] for e in r.json()["models"]) == ["llama3.2:latest", "nomic-embed-text:latest", "qwen3:8b"]
    for path in ("/api/tags/nobody", "/api/providers/nobody", "/api/providers/nobody/stats"):
        r = await http("GET", proxy.url + path)
        assert r.code == 404
        assert r.json() == {"error": "provider 'nobody' not found", "type": "provider_not_found"}


@pytest_twisted.ensureDeferred
async def test_every_provider_type_answers_through_the_ollama_client(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    client = ollama.Client(host=proxy.url)
    cases = {
        "google/gemini-pro": "Echo: one two three",  # OpenRouter
        "claude-sonnet-4-5": "Echo: one two three",  # Anthropic
        "llama3.2": "Echo: one two three",  # Ollama upstream
        "echo": "one two three",  # built-in demo
    }
    for model, expected in cases.items():
        answer = await in_thread(client.chat, model=model, messages=[{"role": "user", "content": "one two three"}])
        assert answer.message.content == expected, model
        assert answer.done and answer.done_reason == "stop"
        parts = await in_thread(
            lambda model=model: [
                c.message.content
                for c in client.chat(model=model, messages=[{"role": "user", "content": "one two three"}], stream=True)
            ]
        )
        assert "".join(parts) == expected and len(parts) > 2, model
    generated = await in_thread(client.generate, model="claude-sonnet-4-5", prompt="tell me", system="be brief")
    assert generated.response == "Echo: tell me"
    sent = anthropic_sim.posts("/v1/messages")[-1].body
    assert sent["system"] == "be brief" and sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "tell me"}]}
    ]


@pytest_twisted.ensureDeferred
async def test_embeddings_from_ollama_upstream_and_echo(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    client = ollama.Client(host=proxy.url)
    local = await in_thread(client.embed, model="nomic-embed-text", input=["a b", "c"])
    assert len(local.embeddings) == 2 and len(local.embeddings[0]) == 6
    assert ollama_sim.posts("/api/embed")[-1].body == {"model": "nomic-embed-text", "input": ["a b", "c"]}
    echo = await in_thread(client.embed, model="echo-embed", input="hello world")
    again = await in_thread(client.embed, model="echo-embed", input="hello world")
    assert echo.embeddings == again.embeddings and len(echo.embeddings[0]) == 16
    assert abs(sum(v * v for v in echo.embeddings[0]) - 1) < 1e-4
    legacy = await in_thread(client.embeddings, model="echo-embed", prompt="hello world")
    assert list(legacy.embedding) == echo.embeddings[0]
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 400 and "does not support chat" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_provider_reports_are_measured(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    for _ in range(3):
        r = await http(
            "POST",
            proxy.url + "/api/chat",
            {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        )
        assert r.code == 200 and r.header("x-ollama-proxy-provider") == "claude"
    anthropic_sim.fail_next(400)
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    )
    assert r.code == 400
    r = await http("GET", proxy.url + "/api/providers")
    assert r.code == 200
    listed = {p["name"]: p for p in r.json()["providers"]}
    assert list(listed) == ["openrouter", "openai", "claude", "local", "echo"]
    claude = listed["claude"]
    assert claude["type"] == "anthropic" and claude["enabled"] and claude["healthy"] and claude["priority"] == 3
    assert claude["request_count"] == 4 and claude["error_count"] == 1 and claude["error_rate"] == 0.25
    assert claude["avg_response_time_ms"] > 0 and claude["circuit_breaker_state"] == "closed"
    r = await http("GET", proxy.url + "/api/providers/claude/stats")
    stats = r.json()
    assert stats["provider_type"] == "anthropic" and stats["provider"] == "claude"
    assert (stats["request_count"], stats["successful_requests"], stats["failed_requests"]) == (4, 3, 1)
    assert 0 < stats["min_response_time_ms"] <= stats["avg_response_time_ms"] <= stats["max_response_time_ms"]
    assert stats["circuit_breaker_state"] == "closed" and stats["models_available"] == 3
    assert stats["last_health_check"] is None or stats["last_health_check"].endswith("Z")
    assert ANTHROPIC_KEY not in r.body.decode()
    for key in (
        "enabled",
        "healthy",
        "priority",
        "error_rate",
        "avg_response_time_ms",
        "max_response_time_ms",
        "last_health_check",
    ):
        assert key in stats


@pytest_twisted.ensureDeferred
async def test_health_check_probes_every_provider(make_multi, openai_sim, anthropic_sim, ollama_sim):
    proxy = make_multi(everything(openai_sim, anthropic_sim, ollama_sim))
    service = proxy.service
    ollama_sim.close_connections()
    await ollama_sim.stop()  # the local Ollama goes away
    await service.health_checker.check()
    r = await http("GET", proxy.url + "/api/providers/claude/stats")
    assert r.json()["last_health_check"].endswith("Z") and r.json()["healthy"]
    assert any(req.path == "/v1/models" for req in anthropic_sim.requests)
    r = await http("GET", proxy.url + "/api/providers/local/stats")
    assert r.json()["healthy"] is False and "cannot reach" in r.json()["last_health_error"]
    r = await http("GET", proxy.url + "/health")
    body = r.json()
    assert (
        body["status"] == "degraded"
        and body["providers"]["local"] == "unhealthy"
        and body["providers"]["claude"] == "healthy"
    )
    assert any("health check of Ollama (local)" in reason for reason in body["reasons"])


@pytest_twisted.ensureDeferred
async def test_filters_aliases_and_explicit_names_through_the_proxy(make_multi, openai_sim, ollama_sim, tmp_path):
    from ollama_proxy.config.providers import RoutingConfig
    from ollama_proxy.config.settings import FilterConfig
    from ollama_proxy.routing.modelfilter import parse_filter_file

    listing = tmp_path / "models.txt"
    listing.write_text("# what we offer\ngoogle/*\nllama3.2*\nopenai/gpt-4o-mini\n!local/qwen*\n")
    allow, deny = parse_filter_file(str(listing))
    routing = RoutingConfig(
        aliases=(("gemini", "google/gemini-pro"), ("llama-cloud", "meta-llama/llama-3.1-8b-instruct:free"))
    )
    proxy = make_multi(
        [
            provider("openai", "openai", openai_sim.base_url, "sk-openai-simulator-key", priority=2),
            provider("local", "ollama", ollama_sim.base_url, priority=3),
        ],
        filter=FilterConfig(allow=allow, deny=deny, file=str(listing)),
        routing=routing,
    )
    client = ollama.Client(host=proxy.url)
    names = sorted(m.model for m in (await in_thread(client.list)).models)
    assert names == ["gemini:latest", "google/gemini-pro:latest", "llama3.2:latest", "openai/gpt-4o-mini:latest"]
    # filtered models answer 403 model_forbidden; the client sees the status
    r = await http(
        "POST", proxy.url + "/api/chat", {"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.code == 403 and r.json() == {
        "error": "model 'qwen3:8b' is not allowed by the filter",
        "type": "model_forbidden",
    }
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(client.chat, model="llama-cloud", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 403
    health = (await http("GET", proxy.url + "/health")).json()
    assert (
        health["filtered_model_count"] == health["model_count"] - 5
    )  # gemini and gpt-4o-mini twice (two providers), llama3.2
    # an alias reaches its cloud model; the client's name comes back
    answer = await in_thread(client.chat, model="gemini", messages=[{"role": "user", "content": "hello"}])
    assert answer.message.content == "Echo: hello" and answer.model == "gemini"
    # provider/model picks one provider among several offering the model
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "openai/google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.code == 200 and r.header("x-ollama-proxy-provider") == "openai"
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.header("x-ollama-proxy-provider") == "openrouter"
    shown = await in_thread(client.show, "gemini")
    assert shown.modelinfo["general.name"] == "Gemini Pro"


@pytest_twisted.ensureDeferred
async def test_openai_from_the_environment_and_named_providers_from_the_file(openai_sim, ollama_sim, tmp_path):
    from twisted.internet import reactor

    from ollama_proxy.config.settings import load_config
    from ollama_proxy.service import makeService

    path = tmp_path / "proxy.toml"
    path.write_text(
        f"""
[[providers]]
name = "local"
type = "ollama"
base_url = "{ollama_sim.base_url}"
headers = {{ "X-Team" = "blue" }}

[[providers]]
name = "off"
type = "openai"
base_url = "{openai_sim.base_url}"
key = "sk-unused"
enabled = false
"""
    )
    env = {"OPENAI_API_KEY": "sk-openai-simulator-key", "OPENAI_BASE_URL": openai_sim.base_url}
    service = makeService(
        load_config(environ=env, config_file=str(path), listen=["tcp:0:interface=127.0.0.1"]), reactor
    )
    service.startService()
    try:
        url = f"http://127.0.0.1:{service.listening_ports()[0].getHost().port}"
        listed = (await http("GET", url + "/api/providers")).json()["providers"]
        assert [(p["name"], p["priority"], p["enabled"]) for p in listed] == [
            ("openai", 2, True),
            ("local", 10, True),
            ("off", 11, False),
        ]
        assert listed[2]["healthy"] is False and listed[2]["models_available"] == 0
        r = await http(
            "POST",
            url + "/api/chat",
            {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": False},
        )
        assert r.code == 200 and r.header("x-ollama-proxy-provider") == "openai"
        assert openai_sim.chat_requests()[-1].headers["authorization"] == "Bearer sk-openai-simulator-key"
        r = await http(
            "POST",
            url + "/api/chat",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": False},
        )
        assert r.code == 200 and ollama_sim.posts("/api/chat")[-1].headers["x-team"] == "blue"
        assert "authorization" not in ollama_sim.posts("/api/chat")[-1].headers
        r = await http(
            "POST",
            url + "/api/chat",
            {"model": "off/google/gemini-pro", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.code == 404  # a disabled provider offers nothing
        assert (await http("GET", url + "/api/tags/off")).json() == {"models": []}
        health = (await http("GET", url + "/health")).json()
        assert health["providers"]["off"] == "disabled"
    finally:
        await service.stopService()
