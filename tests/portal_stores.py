"""The portal's query store on SQLite and on a real PostgreSQL server, as pytest fixtures.

:func:`new_database_url` and :func:`store_url` are parametrised over both backends, so every
test that uses one of them (or :func:`store`) runs once on each.  Their PostgreSQL databases
are made on the server of the fixture ``pg`` of :mod:`tests.postgres`, which they ask for by
name, so that the server starts only for a test that runs on PostgreSQL.

Pytest looks up the fixtures a fixture uses from the test module, as it does the test's own, so
a module imports by name every fixture here that it uses, those they use (:func:`store` uses
:func:`store_url`) and ``pg``: ``from tests.portal_stores import store as store``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.portal.store import PortalStore
from tests.postgres import PostgresServer, database

BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def _new_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / name}.db"
        return
    server: PostgresServer = request.getfixturevalue("pg")
    with contextlib.ExitStack() as stack:
        yield lambda name: stack.enter_context(database(server))


@pytest.fixture(params=BACKENDS)
def new_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes the URL of a new database of the parametrised backend.

    On SQLite ``name`` names the file (``<name>.db`` in the test's temporary directory); on
    PostgreSQL each call makes a database of its own.  The databases are dropped after the test.
    """
    with _new_databases(request, tmp_path) as new:
        yield new


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new database of the parametrised backend (``portal.db`` on SQLite)."""
    with _new_databases(request, tmp_path) as new:
        yield new("portal")


@pytest.fixture
def store(store_url: str) -> Iterator[PortalStore]:
    """A migrated portal store on ``store_url``, closed after the test."""
    made = PortalStore(store_url)
    made.migrate()
    try:
        yield made
    finally:
        made.close()
