"""Every configured credential is a secret, everywhere (issue #10, items 6 and 7).

A provider's key and every value of its ``headers`` (Azure's ``api-key``) are
redacted from responses on ``/api/*`` and ``/v1/*`` (streamed or not, mid-stream
error lines too), from ``/api/providers/{p}/stats`` and from the logs; found
URL-encoded and JSON-escaped too; and redacted before a long error is cut, so
no half of a key survives the cut.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher, textFileLogObserver

from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.config.settings import Config, OpenRouterConfig, load_config
from ollama_proxy.ops.logs import RedactingObserver
from ollama_proxy.ops.redaction import REDACTED, Redactor

from .conftest import http
from .simulator import API_KEY

AZURE_KEY = "azk_Q7c9Vh2mPw4Lx8Ns6Tb0Rf3Jd5Gy1Ek"  # 34 characters, "_" URL-encodes as %5F


def fragments(secret: str, size: int = 10) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_clean(text: str) -> None:
    for secret in (AZURE_KEY, API_KEY):
        for piece in fragments(secret):
            assert piece not in text, (piece, text[:600])
        assert secret.replace("_", "%5F").lower() not in text.lower()


# -- the redactor ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shown",
    [
        AZURE_KEY,
        AZURE_KEY.replace("_", "%5F"),  # as the attack run saw it: "azk%5F..."
        AZURE_KEY.replace("_", "%5f"),
        "".join(f"%{b:02X}" for b in AZURE_KEY.encode()),
        "".join(f"%{b:02x}" for b in AZURE_KEY.encode()),
        json.dumps(AZURE_KEY)[1:-1],
        "".join(f"\\u{ord(c):04x}" for c in AZURE_KEY),
        AZURE_KEY[:10] + "".join(f"%{b:02X}" for b in AZURE_KEY[10:].encode()),
    ],
)
def test_a_secret_is_found_in_its_common_encodings(shown):
    redactor = Redactor([AZURE_KEY])
    assert redactor.redact(f"echo: {shown}!") == f"echo: {REDACTED}!"
    assert redactor.found_in(shown)


@pytest.mark.parametrize("secret", ['p@ss/w"rd\\ +x', "clé-secrète-ünïcode", "tab\there/and space"])
def test_secrets_with_special_characters_are_found_encoded(secret):
    redactor = Redactor([secret])
    for shown in (
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=True)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
    ):
        assert redactor.redact(f"<{shown}>") == f"<{REDACTED}>", shown


def test_every_header_value_is_a_configured_secret():
    config = Config(
        providers=(
            ProviderConfig(name="azure", type="openai", api_key="key-from-a-file", headers=(("api-key", AZURE_KEY),)),
        )
    )
    assert {"key-from-a-file", AZURE_KEY} <= set(config.secrets())


def test_every_way_of_giving_a_key_makes_it_a_secret(tmp_path):
    key_file = tmp_path / "groq.key"
    key_file.write_text("key-from-a-file-0001\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "openrouter_api_key").write_text("key-from-a-credential-02\n")
    config_file = tmp_path / "proxy.toml"
    config_file.write_text(
        "[[providers]]\nname = 'groq'\ntype = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n"
        f"key_file = '{key_file}'\nheaders = {{ 'api-key' = '{AZURE_KEY}', 'X-Team' = 'blue' }}\n"
        "[[providers]]\nname = 'other'\ntype = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\nkey_env = 'OTHER_KEY'\n"
        "[[providers]]\nname = 'inline'\ntype = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n"
        "key = 'key-in-the-file-0004'\n"
    )
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "OTHER_KEY": "key-from-the-env-003"}
    secrets = set(load_config(environ=environ, config_file=str(config_file)).secrets())
    assert {
        "key-from-a-file-0001",
        "key-from-a-credential-02",
        "key-from-the-env-003",
        "key-in-the-file-0004",
        AZURE_KEY,
    } <= secrets
    assert Redactor(secrets).redact("X-Team: blue") == "X-Team: blue"  # 4 characters: too short to hide


# -- on the wire ---------------------------------------------------------------------------------
@pytest.fixture
def azure(make_proxy: Any, simulator: Any) -> Any:
    """A proxy whose one provider sends its secret in a header, as Azure's API wants it."""
    provider = ProviderConfig(
        name="azure", type="openai", base_url=simulator.base_url, api_key=API_KEY, headers=(("api-key", AZURE_KEY),)
    )
    return make_proxy(openrouter=OpenRouterConfig(api_key=None), providers=(provider,))


@pytest.fixture
def log_text(azure: Any) -> Any:
    """What the daemon's text log would say, through the server's own redactor."""
    out = io.StringIO()
    observer = RedactingObserver(textFileLogObserver(out), azure.service.redactor)
    globalLogPublisher.addObserver(observer)
    yield out
    globalLogPublisher.removeObserver(observer)


def body_for(path: str, model: str, stream: bool) -> dict[str, Any]:
    if path.endswith("generate") or path == "/v1/completions":
        return {"model": model, "prompt": "a b c", "stream": stream}
    if path == "/v1/responses":
        return {"model": model, "input": "a b c", "stream": stream}
    extra = {"max_tokens": 50} if path == "/v1/messages" else {}
    return {"model": model, "messages": [{"role": "user", "content": "a b c"}], "stream": stream, **extra}


@pytest.mark.parametrize("model", ["sim/leaky-error", "sim/leaky-quoted", "sim/leaky-text", "sim/midstream-leak"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "path", ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"]
)
@pytest_twisted.ensureDeferred
async def test_echoed_credentials_reach_neither_client_nor_stats_nor_log(azure, log_text, path, stream, model):
    response = await http("POST", azure.url + path, body_for(path, model, stream))
    text = response.body.decode("utf-8")
    assert response.code in (200, 400, 502), text
    assert REDACTED in text  # the upstream did echo something, and it was blotted out
    assert_clean(text)
    stats = await http("GET", azure.url + "/api/providers/azure/stats")
    assert REDACTED in stats.json()["last_error"] or model == "sim/midstream-leak"
    assert_clean(stats.body.decode())
    assert_clean(log_text.getvalue())


@pytest_twisted.ensureDeferred
async def test_a_long_error_is_redacted_before_it_is_cut(azure):
    # The key starts at character 484 of a non-JSON body cut at 500: 16 characters would leak.
    response = await http("POST", azure.url + "/api/chat", body_for("/api/chat", "sim/leaky-text", False))
    message = response.json()["error"]
    assert ("." * 484 + REDACTED) in message
    assert_clean(message)
