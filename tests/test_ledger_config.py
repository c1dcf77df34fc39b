"""The ledger's configuration: [ledger], [prices], per-token limits and admin."""

from __future__ import annotations

import pytest

from ollama_proxy.config.credentials import token_digest
from ollama_proxy.config.schema import ConfigError, TokenLimits
from ollama_proxy.config.settings import load_config


def load(tmp_path, text: str, **env: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(environ=env, config_file=str(path))


def test_the_ledger_is_off_without_its_table_and_defaults_to_the_state_directory(tmp_path):
    assert load(tmp_path, "").ledger is None
    assert load(tmp_path, "[ledger]\nenabled = false\n").ledger is None
    ledger = load(tmp_path, "[ledger]\n", STATE_DIRECTORY=f"{tmp_path}/state").ledger
    assert ledger.url == f"sqlite://{tmp_path}/state/ledger.sqlite3"
    assert (ledger.keep_days, ledger.flush_interval, ledger.currency) == (365.0, 1.0, "USD")
    xdg = load(tmp_path, "[ledger]\nkeep_days = 30\n", XDG_STATE_HOME=f"{tmp_path}/xdg").ledger
    assert xdg.url == f"sqlite://{tmp_path}/xdg/ollama-proxy/ledger.sqlite3" and xdg.keep_days == 30


def test_a_postgresql_password_is_a_secret_and_bad_urls_are_refused(tmp_path):
    config = load(tmp_path, '[ledger]\nurl = "postgresql://proxy:hunter2@db.internal/usage"\n')
    assert "hunter2" in config.secrets()
    for url, message in (("mysql://x", "must start with"), ("sqlite://", "needs a file"), ("sqlite::memory:", "file")):
        with pytest.raises(ConfigError, match=message):
            load(tmp_path, f'[ledger]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match="keep_days"):
        load(tmp_path, "[ledger]\nkeep_days = -1\n")


def test_token_limits_admin_and_defaults_from_the_file_and_a_tokens_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("intern-secret name=intern requests_per_minute=10 budget_per_month=20.5\n")
    config = load(
        tmp_path,
        f"""
[ledger]
[auth]
tokens_file = "{tokens}"
[auth.default_limits]
requests_per_minute = 60
[[auth.tokens]]
sha256 = "{token_digest("ci-secret")}"
name = "ci"
budget_per_day = 5.0
tokens_per_minute = 100000
[[auth.tokens]]
sha256 = "{token_digest("boss-secret")}"
name = "boss"
admin = true
[prices."llama3*"]
prompt = 0.1
completion = 0.2
""",
    )
    by_name = {t.name: t for t in config.ops.auth.tokens}
    assert by_name["ci"].limits == TokenLimits(budget_per_day=5.0, tokens_per_minute=100000)
    assert by_name["intern"].limits == TokenLimits(requests_per_minute=10, budget_per_month=20.5)
    assert by_name["boss"].admin and not by_name["boss"].limits and not by_name["ci"].admin
    assert config.ops.auth.default_limits == TokenLimits(requests_per_minute=60)
    assert config.prices["llama3*"].completion == 0.2


def test_limits_without_a_ledger_and_bad_limits_are_refused(tmp_path):
    digest = token_digest("ci-secret")
    with pytest.raises(ConfigError, match="need the ledger"):
        load(tmp_path, f'[[auth.tokens]]\nsha256 = "{digest}"\nbudget_per_day = 5\n')
    with pytest.raises(ConfigError, match="requests_per_minute"):
        load(tmp_path, f'[ledger]\n[[auth.tokens]]\nsha256 = "{digest}"\nrequests_per_minute = 0\n')
    with pytest.raises(ConfigError, match="prices.gpt-4o"):
        load(tmp_path, '[ledger]\n[prices."gpt-4o"]\ncompletion = 1.0\n')
