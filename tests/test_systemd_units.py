"""The systemd units verify, and keep what the operations guide promises."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ollama_proxy.config.ops import LimitsConfig

from .daemon import ROOT, twistd_command

UNITS = ROOT / "systemd"
INSTALLED_TWISTD = "/opt/ollama-proxy/bin/twistd"


def directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (.ci/run installs it)"
)
def test_units_verify(tmp_path):
    # As installed: the unit names /opt/ollama-proxy/bin/twistd; here, the twistd of this environment.
    twistd = twistd_command()[0]
    if not twistd.endswith("twistd"):
        pytest.skip("no twistd script beside the interpreter")
    for name in ("ollama-proxy.service", "ollama-proxy.socket"):
        text = (UNITS / name).read_text().replace(INSTALLED_TWISTD, twistd)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "ollama-proxy.socket"),
            str(tmp_path / "ollama-proxy.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if "ollama-proxy" in line]
    assert not problems, problems


def test_the_service_unit_has_the_promised_settings():
    service = directives("ollama-proxy.service")
    assert service["Type"] == ["notify"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert "--listen systemd:domain=INET:index=0" in service["ExecStart"][0] and "--nodaemon" in service["ExecStart"][0]
    stop = int(re.match(r"(\d+)s", service["TimeoutStopSec"][0]).group(1))
    # The default drain deadline, the grace for cut requests, then for the ones whose connection was
    # closed, and the last rows and lines: what the supervisor gives a worker before it kills it.
    assert stop > 30 + 5 + 5 + 5
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == [value], key
    assert "AF_INET" in service["RestrictAddressFamilies"][0]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["LoadCredential"][0].startswith("openrouter_api_key:")
    assert "WatchdogSec" in service
    # Room for every allowed client connection and the upstream connection it may hold.
    assert int(service["LimitNOFILE"][0]) >= 2 * LimitsConfig().max_connections + 1024
    text = (UNITS / "ollama-proxy.service").read_text()
    assert not re.search(r"API_KEY\s*=", text) and "sk-" not in text


def test_the_socket_unit_listens_like_ollama():
    socket_unit = directives("ollama-proxy.socket")
    assert socket_unit["ListenStream"] == ["127.0.0.1:11434"]
