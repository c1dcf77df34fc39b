"""Both install forms give a working ``twistd ollama-proxy`` (issue #10, item 22).

Twisted finds ``twistd`` plugins only in ``twisted/plugins`` folders on ``sys.path``.
A regular install puts ``ollama_proxy_plugin.py`` into site-packages' folder; an
editable install (``pip install -e .``) must put the checkout on ``sys.path``,
which setuptools' import-hook mode does not do. Each test builds the wheel pip
would install (with setuptools, as pip's backend does, from a copy of the
checkout), unpacks it into a fresh site folder, and runs twistd from another
folder with a clean environment: no ``PYTHONPATH``, the checkout nowhere on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("wheel", reason="building a wheel with this setuptools needs 'wheel' (the test extras)")

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["setup.py", "README.md", "pyproject.toml", "ollama_proxy", "twisted"]


def installed(tmp_path: Path, hook: str) -> Path:
    """A site folder holding this project as pip installs it with ``hook``
    (``build_wheel`` or ``build_editable``), built from a copy of the checkout."""
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
        else:
            shutil.copy(ROOT / name, source / name)
    wheels.mkdir()
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.{hook}({str(wheels)!r})"],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip does with a pure-Python wheel
    return site


def twistd_help(site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``twistd ollama-proxy --help`` by the project's interpreter, with ``site`` as a site folder
    (its .pth files processed, as for site-packages) and nothing else of the checkout."""
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['twistd', 'ollama-proxy', '--help'];"
        " from twisted.scripts.twistd import run; run()"
    )
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("hook", ["build_editable", "build_wheel"])
def test_twistd_finds_the_plugin_after_either_install(tmp_path, hook):
    site = installed(tmp_path, hook)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = twistd_help(site, elsewhere)
    assert "Unknown command" not in result.stdout + result.stderr
    assert "ollama-proxy [--listen ENDPOINT]" in result.stdout, result.stdout[-600:] + result.stderr[-600:]
    assert "--demo" in result.stdout
