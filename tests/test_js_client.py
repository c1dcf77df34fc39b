"""The official ``ollama`` JavaScript client (npm) against the proxy (tests/js/smoke.mjs), and
Anthropic's JavaScript SDK against ``/v1/messages`` (tests/js/anthropic.mjs).

The test installs the client itself (``npm ci`` from the committed lockfile) when
``tests/js/node_modules`` is missing, so CI needs no extra step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from .conftest import in_thread

JS = Path(__file__).parent / "js"


def _install() -> None:
    installed = ("ollama", "@anthropic-ai/sdk")
    if all((JS / "node_modules" / name / "package.json").exists() for name in installed):
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True, timeout=300)


def _run_smoke(host: str) -> subprocess.CompletedProcess[str]:
    _install()
    env = {**os.environ, "OLLAMA_HOST": host}
    return subprocess.run(["node", "smoke.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(420)
@pytest_twisted.ensureDeferred
async def test_ollama_js_client_smoke(proxy):
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are needed to run the ollama JavaScript client")
    done = await in_thread(_run_smoke, proxy.url)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["check"] for r in results if r["ok"]] == [
        "version",
        "list",
        "show",
        "chat",
        "chatStream",
        "tools",
        "images",
        "format",
        "think",
        "generate",
        "generateStream",
        "embed",
        "embeddings",
        "ps",
        "notFound",
    ]


@pytest.mark.timeout(420)
@pytest_twisted.ensureDeferred
async def test_anthropic_js_sdk_streamed_tool_round_trip(proxy):
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are needed to run the Anthropic JavaScript SDK")

    def run() -> subprocess.CompletedProcess[str]:
        _install()
        env = {**os.environ, "ANTHROPIC_BASE_URL": proxy.url}
        return subprocess.run(["node", "anthropic.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120)

    done = await in_thread(run)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["check"] for r in results if r["ok"]] == ["streamedToolUse", "notFound"]
