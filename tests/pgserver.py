"""A real PostgreSQL server for the ledger's tests, started once per session.

``initdb`` and ``pg_ctl`` from the Debian ``postgresql`` package run in a
temporary folder on a loopback port. PostgreSQL refuses to run as root, so as
root they run as the ``postgres`` user the package creates. Each test gets a
database of its own (``pg_url``); the server is shared, which keeps the suite fast.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

_INSTALL_HINT = "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)"


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A running cluster: ``url(database)`` and :meth:`admin` (autocommit, superuser)."""

    def __init__(self, bindir: str, folder: str, port: int, user: str | None) -> None:
        self.bindir, self.folder, self.port, self.user = bindir, folder, port, user

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [os.path.join(self.bindir, tool), *args],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.folder,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (skipped with the reason when it cannot run)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    bindir = _binaries()
    if bindir is None:
        pytest.skip(_INSTALL_HINT)
    user = None
    folder = tempfile.mkdtemp(prefix="ledger-pg-")
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        user = "postgres"
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bindir, folder, _free_port(), user)
    data = os.path.join(folder, "data")
    try:
        server.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        server.run("pg_ctl", "-D", data, "-l", os.path.join(folder, "log"), "-o", options, "-w", "start")
    except subprocess.CalledProcessError as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {error.stderr.decode(errors='replace')}")
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgresql: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with postgresql.admin() as admin:
        admin.execute(f"CREATE DATABASE {name} STRATEGY file_copy")
    yield postgresql.url(name)
    with postgresql.admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
