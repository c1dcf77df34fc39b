"""Client authentication, model limits per token, CORS, request ids."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import ollama
import pytest
import pytest_twisted

from ollama_proxy.config.credentials import ClientToken
from ollama_proxy.config.ops import DEFAULT_ORIGINS, AuthConfig, CorsConfig, OpsConfig
from ollama_proxy.errors import Unauthorized
from ollama_proxy.front import auth
from ollama_proxy.front.auth import Authenticator

from .conftest import http, in_thread

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"


def tokens_config(**cors: Any) -> OpsConfig:
    tokens = (
        ClientToken(hashlib.sha256(ALICE.encode()).hexdigest(), "alice"),
        ClientToken(hashlib.sha256(BOB.encode()).hexdigest(), "bob", ("google/*",)),
    )
    return OpsConfig(auth=AuthConfig(enabled=True, tokens=tokens), **({"cors": CorsConfig(**cors)} if cors else {}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- authentication -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_without_a_token_only_liveness_and_version_answer(make_proxy):
    proxy = make_proxy(ops=tokens_config())
    assert (await http("GET", proxy.url + "/")).code == 200
    assert (await http("HEAD", proxy.url + "/")).code == 200
    assert (await http("GET", proxy.url + "/api/version")).code == 200
    for method, path, body in [
        ("GET", "/api/tags", None),
        ("GET", "/metrics", None),
        ("GET", "/health", None),
        ("GET", "/api/ps", None),
        ("POST", "/api/chat", {"model": "google/gemini-pro", "messages": []}),
        ("POST", "/api/show", {"model": "google/gemini-pro"}),
        ("GET", "/no/such/path", None),
    ]:
        r = await http(method, proxy.url + path, body)
        assert r.code == 401, path
        assert r.json() == {
            "error": "authentication required: send 'Authorization: Bearer <token>'",
            "type": "unauthorized",
        }
        assert r.header("www-authenticate") == 'Bearer realm="ollama-proxy"'


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_or_scheme_is_refused(make_proxy):
    proxy = make_proxy(ops=tokens_config())
    for headers in (
        bearer("nope"),
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": "Bearer"},
        bearer(ALICE + "x"),
    ):
        r = await http("GET", proxy.url + "/api/tags", headers=headers)
        assert r.code == 401 and r.json()["type"] == "unauthorized"


@pytest_twisted.ensureDeferred
async def test_a_valid_token_works_with_the_ollama_client(make_proxy, access_events):
    proxy = make_proxy(ops=tokens_config())
    client = ollama.Client(host=proxy.url, headers=bearer(ALICE))
    listing = await in_thread(client.list)
    assert "openai/gpt-4o-mini:latest" in [m.model for m in listing.models]
    answer = await in_thread(
        client.chat, model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}]
    )
    assert answer.message.content == "Echo: hi there"
    chat_lines = [e for e in access_events if e["path"] == "/api/chat"]
    assert chat_lines[-1]["principal"] == "alice" and chat_lines[-1]["status"] == 200
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(ollama.Client(host=proxy.url).list)
    assert caught.value.status_code == 401


@pytest_twisted.ensureDeferred
async def test_a_token_limited_to_some_models(make_proxy, simulator):
    proxy = make_proxy(ops=tokens_config())
    tags = (await http("GET", proxy.url + "/api/tags", headers=bearer(BOB))).json()["models"]
    assert tags and all(m["name"].startswith("google/") for m in tags)
    before = len(simulator.chat_requests())
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "openai/gpt-4o-mini", "messages": [], "stream": False},
        headers=bearer(BOB),
    )
    assert r.code == 403
    assert r.json() == {"error": "model 'openai/gpt-4o-mini' is not allowed for this client token", "type": "forbidden"}
    assert len(simulator.chat_requests()) == before  # refused before any upstream call
    r = await http("POST", proxy.url + "/api/show", {"name": "openai/gpt-4o-mini"}, headers=bearer(BOB))
    assert r.code == 403
    r = await http(
        "POST", proxy.url + "/api/embed", {"model": "openai/text-embedding-3-small", "input": "x"}, headers=bearer(BOB)
    )
    assert r.code == 403
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro:latest", "messages": [{"role": "user", "content": "ok"}], "stream": False},
        headers=bearer(BOB),
    )
    assert r.code == 200 and r.json()["message"]["content"] == "Echo: ok"


def test_every_token_is_compared_in_constant_time(monkeypatch):
    tokens = tuple(ClientToken(hashlib.sha256(f"t{i}".encode()).hexdigest(), f"n{i}") for i in range(5))
    authenticator = Authenticator(AuthConfig(enabled=True, tokens=tokens))
    calls: list[int] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert authenticator.authenticate(b"Bearer t0").name == "n0"
    assert len(calls) == 5  # no early exit on the first match
    with pytest.raises(Unauthorized):
        authenticator.authenticate(b"bearer nope")
    assert len(calls) == 10
    assert Authenticator(AuthConfig()).authenticate(None) is None


# -- CORS -----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_cors_allows_local_origins_and_refuses_foreign_ones(make_proxy):
    proxy = make_proxy()
    plain = await http("GET", proxy.url + "/api/version")
    assert plain.code == 200 and plain.header("access-control-allow-origin") is None
    local = await http("GET", proxy.url + "/api/version", headers={"Origin": "http://localhost:3000"})
    assert local.code == 200 and local.header("access-control-allow-origin") == "http://localhost:3000"
    assert local.header("vary") == "Origin" and local.header("access-control-expose-headers") == "X-Request-Id"
    app = await http("GET", proxy.url + "/api/tags", headers={"Origin": "tauri://localhost"})
    assert app.code == 200
    foreign = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro", "messages": []},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.code == 403 and foreign.json()["type"] == "origin_forbidden"
    same = await http(
        "GET",
        proxy.url + "/api/version",
        headers={"Origin": "http://proxy.internal:8080", "Host": "proxy.internal:8080"},
    )
    assert same.code == 200


@pytest_twisted.ensureDeferred
async def test_configured_origins_and_preflight_without_a_token(make_proxy):
    proxy = make_proxy(ops=tokens_config(origins=DEFAULT_ORIGINS + ("https://chat.example.org",)))
    preflight = await http(
        "OPTIONS",
        proxy.url + "/api/chat",
        headers={
            "Origin": "https://chat.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.code == 204
    assert preflight.header("access-control-allow-origin") == "https://chat.example.org"
    assert "POST" in preflight.header("access-control-allow-methods")
    assert preflight.header("access-control-allow-headers") == "authorization, content-type"
    assert preflight.header("access-control-max-age") == "43200"
    actual = await http("GET", proxy.url + "/api/tags", headers={"Origin": "https://chat.example.org", **bearer(ALICE)})
    assert actual.code == 200 and actual.header("access-control-allow-origin") == "https://chat.example.org"
    refused = await http(
        "OPTIONS",
        proxy.url + "/api/chat",
        headers={"Origin": "https://other.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert refused.code == 403
    # Local origins stay allowed next to the configured ones, as with OLLAMA_ORIGINS.
    local = await http(
        "OPTIONS",
        proxy.url + "/api/chat",
        headers={"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST"},
    )
    assert local.code == 204


# -- request ids ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_request_ids_are_echoed_or_made_and_logged(proxy, access_events):
    made = await http("GET", proxy.url + "/api/version")
    generated = made.header("x-request-id")
    assert generated and len(generated) == 32 and int(generated, 16) >= 0
    # A random UUID's hex, as uuid.uuid4().hex writes it: version 4, RFC 4122 variant.
    made_id = uuid.UUID(hex=generated)
    assert made_id.version == 4 and made_id.variant == uuid.RFC_4122 and made_id.hex == generated
    given = await http("GET", proxy.url + "/api/tags", headers={"X-Request-Id": "trace-42:abc"})
    assert given.header("x-request-id") == "trace-42:abc"
    unsafe = await http("GET", proxy.url + "/api/version", headers={"X-Request-Id": "x" * 200})
    assert unsafe.header("x-request-id") != "x" * 200 and len(unsafe.header("x-request-id")) == 32
    ids = [e["request_id"] for e in access_events]
    assert generated in ids and "trace-42:abc" in ids
    tags = next(e for e in access_events if e["request_id"] == "trace-42:abc")
    assert (
        tags["method"] == "GET" and tags["path"] == "/api/tags" and tags["status"] == 200 and tags["duration_ms"] >= 0
    )


def test_made_request_ids_are_random_uuids():
    from ollama_proxy.front.door import random_request_id

    ids = [random_request_id() for _ in range(200)]
    assert len(set(ids)) == 200
    for made in ids:
        # uuid.uuid4().hex: 32 hex digits, version 4, the RFC 4122 variant.
        parsed = uuid.UUID(hex=made)
        assert parsed.hex == made and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_is_refused_on_a_loopback_listener(proxy):
    # A page on evil.example whose name was rebound to 127.0.0.1: its requests
    # carry its own Host (and may carry a matching Origin). Ollama refuses them.
    for headers in ({"Host": "evil.example"}, {"Host": "evil.example:11434", "Origin": "http://evil.example:11434"}):
        r = await http("GET", proxy.url + "/api/tags", headers=headers)
        assert r.code == 403 and r.json()["type"] == "host_forbidden", headers
    for host in ("localhost", f"127.0.0.1:{proxy.port}", "[::1]:11434", "myhost.local", "box.internal", "192.168.1.5"):
        assert (await http("GET", proxy.url + "/api/version", headers={"Host": host})).code == 200, host


def test_host_names_that_are_this_machine():
    from ollama_proxy.front.cors import host_allowed

    assert host_allowed(None) and host_allowed("localhost:11434") and host_allowed("app.localhost")
    assert host_allowed("10.0.0.7:11434") and host_allowed("0.0.0.0")
    assert not host_allowed("example.com") and not host_allowed("8.8.8.8:11434")


def test_a_forked_worker_makes_request_ids_of_its_own():
    import os

    from ollama_proxy.front.door import random_request_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out at once (no pytest teardown in a fork)
        os.write(write, random_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 32 and child != random_request_id()
