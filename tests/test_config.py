"""Configuration: environment first, then a strictly checked TOML file."""

import pytest

from ollama_proxy.config.settings import DEFAULT_LISTEN, ConfigError, listen_from_ollama_host, load_config


def write(tmp_path, text):
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_anything():
    config = load_config(environ={})
    assert config.listen == (DEFAULT_LISTEN,)
    assert config.openrouter.api_key is None
    assert config.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert tuple(int(x) for x in config.ollama_version.split(".")) >= (0, 6, 4)
    assert config.model_refresh_interval == 300 and config.health_check_interval == 60


def test_environment_and_file(tmp_path):
    path = write(
        tmp_path,
        """
ollama_version = "0.9.9"
environment = "staging"
max_body_bytes = 1000
[timeouts]
idle = 5
[refresh]
models_interval = 30
[filter]
allow = ["openai/*"]
deny = ["*:free"]
[openrouter]
api_key = "from-file"
http_referer = "https://example.org"
x_title = "Gateway"
""",
    )
    config = load_config(
        environ={"OPENROUTER_API_KEY": "from-env", "OPENROUTER_BASE_URL": "http://up/v1/"}, config_file=path
    )
    assert config.openrouter.api_key == "from-env"
    assert config.openrouter.base_url == "http://up/v1"
    assert config.openrouter.http_referer == "https://example.org" and config.openrouter.x_title == "Gateway"
    assert config.ollama_version == "0.9.9" and config.environment == "staging"
    assert config.max_body_bytes == 1000 and config.timeouts.idle == 5.0 and config.model_refresh_interval == 30.0
    assert config.filter.allow == ("openai/*",) and config.filter.deny == ("*:free",)
    assert config.secrets() == ("from-env",)


def test_file_named_by_environment(tmp_path):
    path = write(tmp_path, 'environment = "lab"\n')
    assert load_config(environ={"OLLAMA_PROXY_CONFIG": path}).environment == "lab"


@pytest.mark.parametrize(
    "text, words",
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ("[timeouts]\nidel = 3\n", "unknown key 'timeouts.idel'"),
        ('[timeouts]\nidle = "soon"\n', "'timeouts.idle' must be a number"),
        ('[filter]\nallow = "x"\n', "'filter.allow' must be a list of strings"),
        ("[filter]\nallow = [1]\n", "'filter.allow' must be a list of strings"),
        ("max_body_bytes = true\n", "'max_body_bytes' must be an integer"),
        ("[timeouts]\nidle = 0\n", "greater than 0"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_config(environ={}, config_file=write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(environ={}, config_file=str(tmp_path / "nope.toml"))


def test_listen_precedence(tmp_path):
    path = write(tmp_path, 'listen = ["tcp:1"]\n')
    assert load_config(environ={"OLLAMA_HOST": "0.0.0.0:9000"}, config_file=path, listen=["tcp:2"]).listen == ("tcp:2",)
    assert load_config(environ={"OLLAMA_HOST": "0.0.0.0:9000"}, config_file=path).listen == (
        "tcp:9000:interface=0.0.0.0",
    )
    assert load_config(environ={}, config_file=path).listen == ("tcp:1",)


@pytest.mark.parametrize(
    "value, endpoint",
    [
        ("0.0.0.0", "tcp:11434:interface=0.0.0.0"),
        ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"),
        (":8080", "tcp:8080:interface=127.0.0.1"),
        ("http://10.0.0.5:1234/", "tcp:1234:interface=10.0.0.5"),
        ("[::1]:5000", r"tcp:5000:interface=\:\:1"),
    ],
)
def test_ollama_host(value, endpoint):
    assert listen_from_ollama_host(value) == endpoint


def test_ollama_host_bad_port():
    with pytest.raises(ConfigError, match="OLLAMA_HOST"):
        listen_from_ollama_host("host:http")


def test_a_pin_to_an_unknown_provider_is_refused(tmp_path):
    path = write(tmp_path, '[pins]\n"llama3" = ["nosuch"]\n')
    with pytest.raises(ConfigError, match="'pins.llama3' names no configured provider: nosuch"):
        load_config(environ={}, config_file=path)


def test_a_key_file_that_is_not_utf8_is_a_config_error(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"\xff\xfe\x00bad")
    path = write(
        tmp_path,
        f'[[providers]]\nname = "local"\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nkey_file = "{key}"\n',
    )
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(environ={}, config_file=path)


@pytest.mark.parametrize(
    "value, seconds",
    [("10m", 600.0), ("90", 90.0), ("1h30m", 5400.0), ("0", 0.0)],
)
def test_ollama_keep_alive_from_the_environment(value, seconds):
    assert load_config(environ={"OLLAMA_KEEP_ALIVE": value}).default_keep_alive == seconds


def test_keep_alive_default_and_errors(tmp_path):
    assert load_config(environ={}).default_keep_alive == 300.0
    assert load_config(environ={}, config_file=write(tmp_path, 'keep_alive = "2m"\n')).default_keep_alive == 120.0
    assert load_config(environ={"OLLAMA_KEEP_ALIVE": "-1"}).default_keep_alive > 10**9  # forever
    with pytest.raises(ConfigError, match="OLLAMA_KEEP_ALIVE"):
        load_config(environ={"OLLAMA_KEEP_ALIVE": "soon"})
