"""A token's model list binds everything its requests reach and see (issue 10, items 12 and 13)."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted

from ollama_proxy.config.credentials import ClientToken
from ollama_proxy.config.ops import AuthConfig, OpsConfig
from ollama_proxy.config.providers import RoutingConfig

from .conftest import http

OPERATOR = "operator-token-0123456789"
LIMITED = "limited-token-0123456789"


def tokens(*models: str) -> OpsConfig:
    return OpsConfig(
        auth=AuthConfig(
            enabled=True,
            tokens=(
                ClientToken(hashlib.sha256(OPERATOR.encode()).hexdigest(), "operator"),
                ClientToken(hashlib.sha256(LIMITED.encode()).hexdigest(), "limited", models),
            ),
        )
    )


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": False}


@pytest_twisted.ensureDeferred
async def test_a_fallback_outside_the_token_list_is_skipped(make_proxy, simulator):
    routing = RoutingConfig(fallbacks=(("sim/fail-503", ("google/gemini-pro",)),))
    proxy = make_proxy(ops=tokens("sim/*"), routing=routing)
    direct = await http("POST", proxy.url + "/api/chat", chat("google/gemini-pro"), headers=as_(LIMITED))
    assert direct.code == 403
    r = await http("POST", proxy.url + "/api/chat", chat("sim/fail-503"), headers=as_(LIMITED))
    assert r.code == 503 and r.header("x-ollama-proxy-model") != "google/gemini-pro"
    assert [q.body["model"] for q in simulator.chat_requests()] == ["sim/fail-503"]
    # The operator's token has no list: the fallback answers.
    r = await http("POST", proxy.url + "/api/chat", chat("sim/fail-503"), headers=as_(OPERATOR))
    assert r.code == 200 and r.header("x-ollama-proxy-model") == "google/gemini-pro"


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_an_alias_to_a_model_outside_the_token_list_is_403(make_proxy, simulator, path):
    routing = RoutingConfig(aliases=(("fast", "google/gemini-pro"),))
    proxy = make_proxy(ops=tokens("fast", "sim/*"), routing=routing)
    r = await http("POST", proxy.url + path, chat("fast"), headers=as_(LIMITED))
    assert r.code == 403
    assert "'google/gemini-pro' is not allowed for this client token" in r.body.decode()
    assert simulator.chat_requests() == []
    r = await http("POST", proxy.url + path, chat("fast"), headers=as_(OPERATOR))
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_ps_shows_a_limited_token_only_its_models(make_proxy):
    proxy = make_proxy(ops=tokens("google/*"))
    for model in ("openai/gpt-4o-mini", "google/gemini-pro"):
        r = await http("POST", proxy.url + "/api/chat", chat(model), headers=as_(OPERATOR))
        assert r.code == 200
    everyone = (await http("GET", proxy.url + "/api/ps", headers=as_(OPERATOR))).json()["models"]
    assert sorted(m["name"] for m in everyone) == ["google/gemini-pro:latest", "openai/gpt-4o-mini:latest"]
    limited = (await http("GET", proxy.url + "/api/ps", headers=as_(LIMITED))).json()["models"]
    assert [m["name"] for m in limited] == ["google/gemini-pro:latest"]


@pytest.mark.parametrize("path", ["/api/providers", "/api/providers/openrouter", "/api/providers/openrouter/stats"])
@pytest_twisted.ensureDeferred
async def test_the_provider_views_are_closed_to_a_limited_token(make_proxy, path):
    proxy = make_proxy(ops=tokens("google/*"))
    r = await http("GET", proxy.url + path, headers=as_(LIMITED))
    assert r.code == 403
    assert r.json() == {
        "error": "the provider views are for operators: this client token is limited to some models",
        "type": "forbidden",
    }
    assert (await http("GET", proxy.url + path, headers=as_(OPERATOR))).code == 200


@pytest_twisted.ensureDeferred
async def test_an_alias_the_token_cannot_use_is_not_listed_either(make_proxy):
    routing = RoutingConfig(aliases=(("fast", "google/gemini-pro"), ("quick", "sim/slow")))
    proxy = make_proxy(ops=tokens("fast", "quick", "sim/*"), routing=routing)
    tags = (await http("GET", proxy.url + "/api/tags", headers=as_(LIMITED))).json()["models"]
    names = {m["name"] for m in tags}
    assert "quick:latest" in names and "fast:latest" not in names
    assert all(name.startswith(("sim/", "quick")) for name in names)
    models = (await http("GET", proxy.url + "/v1/models", headers=as_(LIMITED))).json()["data"]
    ids = {m["id"] for m in models}
    assert "quick:latest" in ids and not {"fast", "fast:latest"} & ids
    assert (await http("GET", proxy.url + "/v1/models/fast", headers=as_(LIMITED))).code == 404
    assert (await http("GET", proxy.url + "/v1/models/quick", headers=as_(LIMITED))).code == 200
    assert (await http("GET", proxy.url + "/v1/models/fast", headers=as_(OPERATOR))).code == 200
