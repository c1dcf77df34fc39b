"""The multi-provider configuration: providers, keys, routing tables, retry and breaker settings."""

from __future__ import annotations

import pytest

from ollama_proxy.config.providers import BreakerConfig, RetryConfig
from ollama_proxy.config.settings import ConfigError, load_config
from ollama_proxy.routing.modelfilter import ModelFilter, parse_filter_lines
from ollama_proxy.wire.models import UpstreamModel


def write(tmp_path, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return str(path)


def test_environment_adds_openai_and_anthropic():
    config = load_config(
        environ={"OPENAI_API_KEY": "sk-o", "OPENAI_BASE_URL": "http://x/v1", "ANTHROPIC_API_KEY": "sk-a"}
    )
    by_name = {p.name: p for p in config.providers}
    assert by_name["openai"].type == "openai" and by_name["openai"].url == "http://x/v1"
    assert by_name["openai"].api_key == "sk-o" and by_name["openai"].priority == 2
    assert by_name["anthropic"].url == "https://api.anthropic.com/v1"
    assert set(config.secrets()) == {"sk-o", "sk-a"}
    assert "sk-o" not in repr(config)


def test_no_environment_no_extra_providers():
    config = load_config(environ={})
    assert config.providers == () and not config.demo
    assert config.retry == RetryConfig() and config.breaker == BreakerConfig()


def test_provider_tables_with_every_kind_of_key(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-file\n")
    path = write(
        tmp_path,
        f"""
[openai]
base_url = "http://openai.local/v1"
priority = 7

[[providers]]
name = "groq"
type = "openai"
base_url = "https://api.groq.com/openai/v1"
key_env = "GROQ_KEY"
max_in_flight = 3
max_queue = 0
queue_timeout = 2.5
headers = {{ "X-Team" = "blue" }}
timeouts = {{ connect = 1, idle = 30 }}

[[providers]]
name = "local"
type = "ollama"
base_url = "http://127.0.0.1:11435"
enabled = false

[[providers]]
name = "claude"
type = "anthropic"
key_file = "{keyfile}"
max_tokens = 1024

[[providers]]
name = "inline"
type = "openai"
key = "sk-inline"
""",
    )
    config = load_config(environ={"GROQ_KEY": "sk-groq", "OPENAI_API_KEY": "sk-env"}, config_file=path)
    by_name = {p.name: p for p in config.providers}
    assert [p.name for p in config.providers] == ["openai", "groq", "local", "claude", "inline"]
    assert (
        by_name["openai"].api_key == "sk-env"
        and by_name["openai"].priority == 7
        and by_name["openai"].url == "http://openai.local/v1"
    )
    groq = by_name["groq"]
    assert groq.api_key == "sk-groq" and groq.key_source == "environment variable GROQ_KEY"
    assert groq.max_in_flight == 3 and groq.max_queue == 0 and groq.queue_timeout == 2.5
    assert dict(groq.headers) == {"X-Team": "blue"}
    assert groq.timeouts.connect == 1 and groq.timeouts.idle == 30 and groq.timeouts.response is None
    assert groq.priority == 10 and by_name["local"].priority == 11
    assert by_name["local"].enabled is False and by_name["local"].api_key is None
    assert by_name["claude"].api_key == "sk-file" and by_name["claude"].max_tokens == 1024
    assert by_name["inline"].api_key == "sk-inline"
    assert set(config.secrets()) >= {"sk-env", "sk-groq", "sk-file", "sk-inline"}


def test_routing_retry_and_breaker_sections(tmp_path):
    path = write(
        tmp_path,
        """
[aliases]
"llama3.2" = "meta-llama/llama-3.2-3b-instruct"

[[providers]]
name = "a"
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[[providers]]
name = "b"
type = "openai"
base_url = "http://127.0.0.1:10/v1"

[pins]
"gpt-4o-mini" = "openai"
"both" = ["a", "b"]

[fallbacks]
"gpt-4o" = ["gpt-4o-mini", "google/gemini-pro"]
"*" = "echo"

[retry]
max_retries = 0
base_delay = 0.1
deadline = 5

[breaker]
failure_rate = 0.25
consecutive_failures = 3
open_wait = 1.5
""",
    )
    config = load_config(environ={"OPENAI_API_KEY": "sk-test-openai-0123456789"}, config_file=path)
    assert dict(config.routing.aliases) == {"llama3.2": "meta-llama/llama-3.2-3b-instruct"}
    assert dict(config.routing.pins) == {"gpt-4o-mini": ("openai",), "both": ("a", "b")}
    assert dict(config.routing.fallbacks) == {"gpt-4o": ("gpt-4o-mini", "google/gemini-pro"), "*": ("echo",)}
    assert config.retry == RetryConfig(max_retries=0, base_delay=0.1, deadline=5)
    assert (
        config.breaker.failure_rate == 0.25
        and config.breaker.consecutive_failures == 3
        and config.breaker.open_wait == 1.5
    )
    assert config.breaker.minimum_calls == BreakerConfig().minimum_calls


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[providers]]\nname = "x"\ntype = "gopher"\n', "providers[0].type"),
        ('[[providers]]\ntype = "openai"\n', "needs a name"),
        ('[[providers]]\nname = "a b"\ntype = "openai"\n', "may hold only"),
        ('[[providers]]\nname = "x"\ntype = "openai"\ncolour = 1\n', "unknown key 'providers[0].colour'"),
        ('[[providers]]\nname = "x"\ntype = "openai"\npriority = "high"\n', "providers[0].priority"),
        ('[[providers]]\nname = "x"\ntype = "openai"\nkey = "a"\nkey_env = "B"\n', "only one of"),
        ('[[providers]]\nname = "x"\ntype = "openai"\nkey_file = "/nonexistent/key"\n', "cannot read"),
        ('[[providers]]\nname = "x"\ntype = "openai"\n[[providers]]\nname = "x"\ntype = "ollama"\n', "used twice"),
        ('[[providers]]\nname = "openrouter"\ntype = "openai"\n', "used twice"),
        ('[[providers]]\nname = "x"\ntype = "openai"\ntimeouts = { idle = -1 }\n', "timeouts.idle"),
        ("[breaker]\nfailure_rate = 2\n", "breaker.failure_rate"),
        ("[breaker]\nwobble = 2\n", "unknown key 'breaker.wobble'"),
        ("[retry]\nmax_retries = -1\n", "retry.max_retries"),
        ('[pins]\n"a" = []\n', "pins.a"),
        ('[aliases]\n"a" = 3\n', "aliases.a"),
        ("[openrouter]\nenabled = 1\n", "openrouter.enabled"),
        ("[filter]\nfile = 3\n", "filter.file"),
        ('[filter]\nfile = "/nonexistent/filter"\n', "cannot read"),
    ],
)
def test_bad_sections_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, config_file=write(tmp_path, text))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "text, environ, where",
    [
        (
            '[[providers]]\nname = "x"\ntype = "openai"\nbase_url = "https://me:s3cret@llm.example/v1"\n',
            {},
            "providers[0].base_url",
        ),
        ('[openai]\nbase_url = "http://me:s3cret@llm.example/v1"\n', {}, "openai.base_url"),
        ("", {"OPENAI_API_KEY": "sk-o", "OPENAI_BASE_URL": "http://me:s3cret@x/v1"}, "OPENAI_BASE_URL"),
        ('[openrouter]\nbase_url = "https://me:s3cret@openrouter.ai/api/v1"\n', {}, "openrouter.base_url"),
        ("", {"OPENROUTER_BASE_URL": "https://:s3cret@openrouter.ai/api/v1"}, "OPENROUTER_BASE_URL"),
    ],
)
def test_a_base_url_with_credentials_is_refused_without_showing_them(tmp_path, text, environ, where):
    # They were sent as part of the host (user:@llm.example: every request failed to
    # resolve it) and shown wherever the URL is.
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ, config_file=write(tmp_path, text))
    assert f"'{where}' must not hold credentials" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["llm.example/v1", "ftp://llm.example/v1", "https:///v1", "http://llm.example:port/v1"])
def test_a_base_url_must_be_http_with_a_host(tmp_path, url):
    text = f'[[providers]]\nname = "x"\ntype = "openai"\nbase_url = "{url}"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, config_file=write(tmp_path, text))
    assert "'providers[0].base_url'" in str(caught.value)


def test_base_urls_that_are_fine():
    for url in ("http://127.0.0.1:8000/v1", "https://[::1]:8443/v1", "https://bücher.example/v1", "http://llm"):
        config = load_config(environ={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": url})
        assert config.providers[0].url == url


def test_openrouter_routing_settings(tmp_path):
    path = write(
        tmp_path, "[openrouter]\npriority = 5\nenabled = false\nmax_in_flight = 2\nmax_queue = 1\nqueue_timeout = 3\n"
    )
    router = load_config(environ={}, config_file=path).openrouter
    assert (router.priority, router.enabled, router.max_in_flight, router.max_queue, router.queue_timeout) == (
        5,
        False,
        2,
        1,
        3.0,
    )


def test_filter_file_lines_merge_with_lists(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text(
        "# the models we pay for\nopenai/*\n\n  google/gemini-pro   # inline comment\n!openai/gpt-4-32k*\n"
    )
    path = write(tmp_path, f'[filter]\nallow = ["anthropic/*"]\ndeny = ["*:free"]\nfile = "{listing}"\n')
    config = load_config(environ={}, config_file=path)
    assert config.filter.allow == ("anthropic/*", "openai/*", "google/gemini-pro")
    assert config.filter.deny == ("*:free", "openai/gpt-4-32k*")
    assert config.filter.file == str(listing)


def test_filter_lines_and_model_spellings():
    allow, deny = parse_filter_lines("llama3.2:latest\n!*-embed*\nlocal/*\n#openai/*\n")
    assert allow == ("llama3.2:latest", "local/*") and deny == ("*-embed*",)
    model_filter = ModelFilter(allow, deny)
    assert model_filter.allows_model(UpstreamModel(id="llama3.2", provider="ollama"))
    assert model_filter.allows_model(UpstreamModel(id="qwen", provider="local"))
    assert not model_filter.allows_model(UpstreamModel(id="nomic-embed-text", provider="local"))
    assert not model_filter.allows_model(UpstreamModel(id="gpt-4o", provider="openai"))
    assert ModelFilter().allows_model(UpstreamModel(id="anything"))
