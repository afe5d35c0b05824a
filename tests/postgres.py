"""A real PostgreSQL server for the portal store's tests, started once per test session.

The machine's PostgreSQL binaries (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl``
on ``PATH`` or under ``/usr/lib/postgresql/<version>/bin``; ``./dev test`` installs them when
they are missing and it runs as root) initialise a cluster in a fresh temporary directory
and start it on a free port of 127.0.0.1, with its unix socket in that directory.  The
server refuses to run as root, so as root it runs as the ``postgres`` user (``runuser``),
which owns the directory.  Tests connect over the socket, each to a database of its own.

Test modules share one server: :func:`postgres_server` starts it on first use and
:func:`release` stops it when the last user is done.  A test module holds it through the
session fixture :func:`pg`, imported by name (``from tests.postgres import pg as pg``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "database", "pg", "postgres_server", "release"]

_lock = threading.Lock()
_server: PostgresServer | None = None
_users = 0


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]), reverse=True
    )
    return str(candidates[0]) if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path
    port: int
    run_as: list[str]
    pg_ctl: str

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of ``database`` over the unix socket (psycopg 3)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-made statements only

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _start() -> PostgresServer:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail(
            "PostgreSQL's initdb and pg_ctl were not found (apt-get install postgresql; "
            "./dev test installs it when it runs as root)"
        )
    directory = Path(tempfile.mkdtemp(prefix="portal-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, PostgreSQL needs the 'postgres' user (apt-get install postgresql)")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    (directory / "socket").mkdir()
    if run_as:
        user = pwd.getpwnam("postgres")
        os.chown(directory / "socket", user.pw_uid, user.pw_gid)
    data = directory / "data"
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    options = (
        f"-p {port} -k {directory / 'socket'} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    started = subprocess.run(
        [
            *run_as,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=False,
        capture_output=True,
        timeout=90,
    )
    if started.returncode != 0:
        log = (
            (directory / "server.log").read_text(errors="replace")
            if (directory / "server.log").exists()
            else ""
        )
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{log[-2000:]}")
    return PostgresServer(directory, port, run_as, pg_ctl)


def postgres_server() -> PostgresServer:
    """The session's server, started on first use; pair every call with :func:`release`."""
    global _server, _users
    with _lock:
        if _server is None:
            _server = _start()
        _users += 1
        return _server


def release() -> None:
    global _server, _users
    with _lock:
        _users -= 1
        if _users == 0 and _server is not None:
            _server.stop()
            _server = None


@contextmanager
def database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test; its URL.  Dropped afterwards."""
    name = f"portal_{uuid.uuid4().hex[:12]}"
    server.admin(f'CREATE DATABASE "{name}"')
    try:
        yield server.url(name)
    finally:
        server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """The session's server, held by the test module that uses this fixture until the session ends."""
    server = postgres_server()
    try:
        yield server
    finally:
        release()
