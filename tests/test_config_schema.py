"""The declared schema: what it accepts and refuses that the three old validators did not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_proxy.config import reference
from ollama_proxy.config.settings import ConfigError, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return str(path)


def load(tmp_path, text: str):
    return load_config(environ={}, config_file=write(tmp_path, text))


def refused(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "proxy.toml") + ": ")
    return message.partition(": ")[2]


def test_breaker_jitter_zero_means_no_jitter(tmp_path):
    assert load(tmp_path, "[breaker]\njitter = 0\n").breaker.jitter == 0
    assert load(tmp_path, "[breaker]\njitter = 1\n").breaker.jitter == 1
    assert refused(tmp_path, "[breaker]\njitter = -0.1\n") == "'breaker.jitter' must be in [0, 1]"
    assert refused(tmp_path, "[breaker]\njitter = 1.5\n") == "'breaker.jitter' must be in [0, 1]"


@pytest.mark.parametrize(
    "text, message",
    [
        # Clamped silently before (to 1 and 0): a slot count of 0 or a negative queue is a mistake.
        ("[openrouter]\nmax_in_flight = 0\n", "'openrouter.max_in_flight' must be at least 1"),
        ("[openrouter]\nmax_queue = -1\n", "'openrouter.max_queue' must be at least 0"),
        ('[[providers]]\nname = "x"\ntype = "openai"\nmax_queue = -5\n', "'providers[0].max_queue' must be at least 0"),
        # Accepted before: no connection could ever be kept.
        ("[openrouter]\nmax_connections = 0\n", "'openrouter.max_connections' must be at least 1"),
        # A section given as a value was "unknown key 'timeouts'".
        ("timeouts = 3\n", "'timeouts' must be a table, not an integer"),
    ],
)
def test_values_refused_now(tmp_path, text, message):
    assert refused(tmp_path, text) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ('[timeouts]\nidle = "soon"\n', "'timeouts.idle' must be a number, not a string"),
        ("[timeouts]\nidle = 0\n", "'timeouts.idle' must be greater than 0"),
        ("[breaker]\nfailure_rate = 0\n", "'breaker.failure_rate' must be in (0, 1]"),
        ("[limits]\nmax_streams = 1.5\n", "'limits.max_streams' must be an integer, not a float"),
        ("[shutdown]\ndrain_timeout = -2\n", "'shutdown.drain_timeout' must not be negative"),
        ('[log]\nformat = "xml"\n', '\'log.format\' must be "text" or "json"'),
        ("[filter]\nallow = [1]\n", "'filter.allow' must be a list of strings, not an integer"),
        (
            "keep_alive = true\n",
            "'keep_alive' must be a duration (seconds or a string such as \"5m\"), not true or false",
        ),
        (
            '[[providers]]\nname = "x"\ntype = "openai"\ntimeouts = { idle = -1 }\n',
            "'providers[0].timeouts.idle' must be greater than 0",
        ),
        (
            '[[providers]]\nname = "x"\ntype = "openai"\nheaders = { "X-Team" = 1 }\n',
            "'providers[0].headers.X-Team' must be a string, not an integer",
        ),
        (
            '[[providers]]\nname = "x"\ntype = "gopher"\n',
            '\'providers[0].type\' must be "openrouter", "openai", "anthropic", "ollama" or "echo"',
        ),
        ('[openai]\nname = "x"\n', "unknown key 'openai.name'"),
        ('[aliases]\n"a.b" = ""\n', "'aliases.a.b' must be a model name"),
        ('[pins]\n"m" = [1]\n', "'pins.m' must be a name or a list of names"),
        ('[fallbacks]\n"m" = 3\n', "'fallbacks.m' must be a name or a list of names, not an integer"),
        ("[[auth.tokens]]\nmodels = 3\n", "'auth.tokens[0].models' must be a list of strings, not an integer"),
        ("providers = 3\n", "'providers' must be an array of tables, not an integer"),
    ],
)
def test_one_line_names_the_key(tmp_path, text, message):
    assert refused(tmp_path, text) == message


def test_a_lone_name_is_a_list_of_one(tmp_path):
    config = load(tmp_path, '[[providers]]\nname = "a"\ntype = "echo"\n[pins]\n"m" = "a"\n[fallbacks]\n"*" = "m"\n')
    assert dict(config.routing.pins) == {"m": ("a",)} and dict(config.routing.fallbacks) == {"*": ("m",)}


def test_the_running_sections_are_the_declared_ones(tmp_path):
    """[timeouts], [retry], [breaker], [limits], [log] and [shutdown] reach the service as written."""
    config = load(
        tmp_path,
        "[timeouts]\nconnect = 2\n[retry]\nmax_retries = 4\n[limits]\nmax_streams = 9\n[log]\naccess = false\n",
    )
    assert config.timeouts.connect == 2.0 and config.timeouts.idle == 120.0
    assert config.retry.max_retries == 4 and config.ops.limits.max_streams == 9 and config.ops.log.access is False


def test_the_readme_states_every_key_with_its_range_and_default():
    """Adding a key to the schema without its README row (or changing a range) fails here."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [
        f"| `{key}` | {kind} | {default} |"
        for key, kind, default in reference.rows()
        if f"| `{key}` | {kind} | {default} |" not in readme
    ]
    assert not missing, "README.md lacks these rows (python -m ollama_proxy.config.reference):\n" + "\n".join(missing)
    keys = {key for key, _, _ in reference.rows()}
    assert {"breaker.jitter", "providers[].timeouts.idle", "auth.tokens[].sha256", "pins.NAME", "openai"} <= keys


def test_an_unreadable_credential_is_a_config_error(tmp_path):
    """It was a bare ValueError, which start-up did not catch (a traceback instead of one line)."""
    credentials = tmp_path / "credentials"
    (credentials / "openrouter_api_key").mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot read credential openrouter_api_key"):
        load_config(environ={"CREDENTIALS_DIRECTORY": str(credentials)})
