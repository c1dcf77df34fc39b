"""The /v1 surface goes through the same front door as the native API:
auth, access lines with model, provider and tokens, drain tracking, metrics."""

from __future__ import annotations

import openai
import pytest
import pytest_twisted

from .conftest import http, in_thread
from .test_security import ALICE, BOB, tokens_config


@pytest_twisted.ensureDeferred
async def test_v1_needs_a_token_when_auth_is_on(make_proxy):
    proxy = make_proxy(ops=tokens_config())
    for method, path, body in [
        ("GET", "/v1/models", None),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("POST", "/v1/embeddings", {"model": "openai/text-embedding-3-small", "input": "x"}),
    ]:
        assert (await http(method, proxy.url + path, body)).code == 401, path
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
    answer = await in_thread(
        client.chat.completions.create, model="google/gemini-pro", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Echo: hi"
    limited = openai.OpenAI(base_url=proxy.url + "/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        await in_thread(
            limited.chat.completions.create, model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


@pytest_twisted.ensureDeferred
async def test_v1_stream_access_line_has_model_provider_and_tokens(proxy, access_events):
    r = await http(
        "POST",
        proxy.url + "/v1/chat/completions",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "a b c"}], "stream": True},
        headers={"X-Request-Id": "v1-rid"},
    )
    assert r.code == 200 and r.header("x-request-id") == "v1-rid"
    [line] = [e for e in access_events if e["request_id"] == "v1-rid"]
    assert (line["path"], line["status"]) == ("/v1/chat/completions", 200)
    assert line["model"] == "google/gemini-pro" and line["provider"] == "openrouter"
    assert line["tokens_in"] == 3 and line["tokens_out"] == 4
    assert line["ttft_ms"] is not None


@pytest_twisted.ensureDeferred
async def test_v1_embeddings_access_line_counts_tokens(proxy, access_events):
    r = await http(
        "POST",
        proxy.url + "/v1/embeddings",
        {"model": "openai/text-embedding-3-small", "input": ["a b", "c"]},
        headers={"X-Request-Id": "emb"},
    )
    assert r.code == 200
    [line] = [e for e in access_events if e["request_id"] == "emb"]
    assert line["tokens_in"] == 3 and line["model"] == "openai/text-embedding-3-small"


@pytest_twisted.ensureDeferred
async def test_v1_requests_appear_in_metrics(proxy):
    await http("GET", proxy.url + "/v1/models")
    await http(
        "POST",
        proxy.url + "/v1/chat/completions",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]},
    )
    metrics = (await http("GET", proxy.url + "/metrics")).json()["metrics"]
    endpoints = {m["endpoint"]: m["count"] for m in metrics}
    assert endpoints["/v1/models"] == 1 and endpoints["/v1/chat/completions"] == 1
    text = (await http("GET", proxy.url + "/metrics?format=prometheus")).body.decode()
    assert 'endpoint="/v1/chat/completions"' in text


@pytest.mark.parametrize("flag", [1, "true", "yes"])
@pytest_twisted.ensureDeferred
async def test_v1_stream_must_be_a_boolean(proxy, flag):
    # A stream the stream limits could not count, were "stream": 1 accepted.
    r = await http(
        "POST",
        proxy.url + "/v1/chat/completions",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}], "stream": flag},
    )
    assert r.code == 400 and "'stream'" in r.json()["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_front_door_errors_on_v1_come_in_openai_shape(make_proxy):
    proxy = make_proxy(ops=tokens_config())
    r = await http(
        "POST",
        proxy.url + "/v1/chat/completions",
        {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.code == 401
    error = r.json()["error"]
    assert error["code"] == "unauthorized" and "authentication required" in error["message"]
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await in_thread(client.models.list)
    assert "invalid" in str(caught.value).lower() or "token" in str(caught.value).lower()
    # The native API keeps its own shape.
    assert (await http("GET", proxy.url + "/api/tags")).json()["type"] == "unauthorized"


@pytest_twisted.ensureDeferred
async def test_v1_models_lists_what_api_tags_lists_for_the_token(make_proxy):
    from ollama_proxy.config.providers import RoutingConfig

    proxy = make_proxy(ops=tokens_config(), routing=RoutingConfig(aliases=(("gemini", "google/gemini-pro"),)))
    everyone = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
    listed = {m.id for m in await in_thread(everyone.models.list)}
    tags = {
        m["name"]
        for m in (await http("GET", proxy.url + "/api/tags", headers={"Authorization": f"Bearer {ALICE}"})).json()[
            "models"
        ]
    }
    assert listed == tags and "gemini:latest" in listed
    limited = openai.OpenAI(base_url=proxy.url + "/v1", api_key=BOB, max_retries=0)  # google/* only
    assert {m.id for m in await in_thread(limited.models.list)} == {"google/gemini-pro:latest"}
    with pytest.raises(openai.NotFoundError):
        await in_thread(limited.models.retrieve, "openai/gpt-4o-mini")


@pytest_twisted.ensureDeferred
async def test_v1_routes_are_served_by_one_resource_made_once(proxy):
    # /v1 is a branch of the native app: the resource it hands over is made once, not per request.
    openai_api = proxy.service.api.openai
    first = openai_api.resource()
    body = {"model": "google/gemini-pro", "messages": [{"role": "user", "content": "x"}]}
    for _ in range(2):
        assert (await http("POST", proxy.url + "/v1/chat/completions", body)).code == 200
    assert openai_api.resource() is first
