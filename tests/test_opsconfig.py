"""The operator's config sections, credentials and client tokens."""

from __future__ import annotations

import hashlib

import pytest

from ollama_proxy.config.credentials import ClientToken, parse_token_lines, token_digest
from ollama_proxy.config.ops import DEFAULT_ORIGINS
from ollama_proxy.config.settings import ConfigError, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file():
    ops = load_config(environ={}).ops
    assert ops.auth.enabled is False and ops.auth.tokens == ()
    assert ops.limits.max_header_bytes == 16384 and ops.limits.max_streams_per_client == 0
    assert ops.log.format == "text" and ops.log.access is True
    assert ops.shutdown.drain_timeout == 30.0
    assert "http://localhost:*" in ops.cors.origins and "app://*" in ops.cors.origins


def test_every_section_is_read(tmp_path):
    digest = token_digest("alice-secret")
    path = write(
        tmp_path,
        f"""
[auth]
[[auth.tokens]]
sha256 = "{digest}"
name = "alice"
models = ["openai/*"]

[cors]
origins = ["https://chat.example.org"]

[limits]
max_header_bytes = 8192
max_streams_per_client = 2
max_streams = 50

[log]
format = "json"
access = false

[shutdown]
drain_timeout = 12.5
""",
    )
    ops = load_config(environ={"OLLAMA_ORIGINS": "chrome-extension://*, https://a.example"}, config_file=path).ops
    assert ops.auth.enabled and ops.auth.tokens == (ClientToken(digest, "alice", ("openai/*",)),)
    assert ops.cors.origins[: len(DEFAULT_ORIGINS)] == DEFAULT_ORIGINS
    assert ops.cors.origins[len(DEFAULT_ORIGINS) :] == (
        "chrome-extension://*",
        "https://a.example",
        "https://chat.example.org",
    )
    assert (ops.limits.max_header_bytes, ops.limits.max_streams_per_client, ops.limits.max_streams) == (8192, 2, 50)
    assert (ops.log.format, ops.log.access) == ("json", False)
    assert ops.shutdown.drain_timeout == 12.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_streams = -1\n", "'limits.max_streams' must be at least 0"),
        ("[limits]\nmax_header_bytes = 10\n", "'limits.max_header_bytes' must be at least 1024"),
        ("[limits]\nsurprise = 1\n", "unknown key 'limits.surprise'"),
        ('[log]\nformat = "xml"\n', "'log.format' must be"),
        ("[log]\naccess = 1\n", "'log.access' must be true or false, not an integer"),
        ("[shutdown]\ndrain_timeout = -2\n", "must not be negative"),
        ("[auth]\nenabled = true\n", "no client token is configured"),
        ('[[auth.tokens]]\nsha256 = "abc"\n', "64 hex digits"),
        ('[[auth.tokens]]\ntoken = "plain"\n', "unknown key 'auth.tokens[0].token'"),
        ('[[auth.tokens]]\nname = "x"\n', "exactly one of 'sha256' or 'credential'"),
        ('[[auth.tokens]]\ncredential = "missing"\n', "credential 'missing' not found"),
        ('[auth]\ntokens_file = "/nonexistent/tokens"\n', "cannot read /nonexistent/tokens"),
        ("cors = 3\n", "'cors' must be a table"),
    ],
)
def test_bad_sections_are_refused_with_the_key_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match="proxy.toml") as caught:
        load_config(environ={}, config_file=write(tmp_path, text))
    assert message in str(caught.value)


def test_tokens_file_and_credentials(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "openrouter_api_key").write_text("sk-or-from-credential\n")
    (credentials / "client_tokens").write_text("bob-secret name=bob models=google/*,openai/gpt-4o*\n")
    (credentials / "carol").write_text("carol-secret\n")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# clients\n\nplain-token\nsha256:{token_digest('hashed')} name=hashed  # comment\n")
    path = write(
        tmp_path, f'[auth]\ntokens_file = "{tokens_file}"\n[[auth.tokens]]\ncredential = "carol"\nname = "carol"\n'
    )
    config = load_config(environ={"CREDENTIALS_DIRECTORY": str(credentials)}, config_file=path)
    assert config.openrouter.api_key == "sk-or-from-credential"
    tokens = {t.name: t for t in config.ops.auth.tokens}
    assert tokens["carol"].sha256 == token_digest("carol-secret")
    assert tokens[f"token-{token_digest('plain-token')[:8]}"].models == ()
    assert tokens["hashed"].sha256 == token_digest("hashed")
    assert tokens["bob"].models == ("google/*", "openai/gpt-4o*")
    # Plain tokens are not kept anywhere in the configuration.
    assert "bob-secret" not in repr(config) and "carol-secret" not in repr(config)


def test_the_environment_wins_over_a_credential(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "openrouter_api_key").write_text("from-credential")
    config = load_config(environ={"CREDENTIALS_DIRECTORY": str(credentials), "OPENROUTER_API_KEY": "from-env"})
    assert config.openrouter.api_key == "from-env"


def test_token_lines_are_strict():
    with pytest.raises(ValueError, match="line 2: unknown option 'role'"):
        parse_token_lines("ok\nother role=admin\n", "tokens")
    with pytest.raises(ValueError, match="line 1: 'sha256:' must be followed by 64 hex digits"):
        parse_token_lines("sha256:xyz\n", "tokens")
    assert parse_token_lines("x", "t")[0].sha256 == hashlib.sha256(b"x").hexdigest()
