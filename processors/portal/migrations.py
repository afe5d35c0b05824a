"""Versioned schema migrations, applied at start: an ordered list of steps and ``schema_version``.

Why not Alembic: the store has a handful of tables and one writer that migrates before it
projects, and a rebuild from Kafka is always a way out; a short ordered list of DDL steps,
each run in one transaction and recorded in ``schema_version``, gives the same guarantees
without a second tool, its configuration files and its environment script.

Rules:

* :data:`MIGRATIONS` only grows.  A step never changes once released: a change is a new step
  (``ALTER TABLE …`` through SQLAlchemy's DDL constructs, or a rebuild note in the docs).
* Step 1 creates the tables as :mod:`processors.portal.schema` defines them.  The first change
  to that module must first copy today's definitions into step 1 (so step 1 keeps creating
  version 1), then add step 2.  ``tests/unit/test_portal_store.py`` checks that a database
  migrated from empty has exactly the schema the module defines.
* :func:`migrate` runs every missing step in one transaction (DDL is transactional on both
  SQLite and PostgreSQL), under PostgreSQL's advisory lock on this store, so two processes
  starting together migrate once.  A database newer than this build is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, func, insert, select

from processors.errors import ConfigError
from processors.portal.schema import METADATA, SCHEMA_VERSION

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "current_version", "migrate"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1(conn: Connection) -> None:
    METADATA.create_all(conn, tables=[t for t in METADATA.sorted_tables if t is not SCHEMA_VERSION])


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "partners, subscriptions, subscription owners, deliveries, bordereaux, bordereau deliveries, offsets",
        _v1,
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The highest step applied (0: an empty database)."""
    if not conn.dialect.has_table(conn, SCHEMA_VERSION.name):
        return 0
    return int(conn.execute(select(func.coalesce(func.max(SCHEMA_VERSION.c.version), 0))).scalar_one())


def migrate(conn: Connection) -> tuple[int, int]:
    """Apply the missing steps inside the caller's (write) transaction; (before, after)."""
    SCHEMA_VERSION.create(conn, checkfirst=True)
    before = current_version(conn)
    if before > LATEST_VERSION:
        raise ConfigError(
            f"the portal database has schema version {before}, newer than this build knows "
            f"({LATEST_VERSION}): run a newer build, or rebuild it with this one"
        )
    for step in MIGRATIONS:
        if step.version > before:
            step.apply(conn)
            conn.execute(
                insert(SCHEMA_VERSION).values(
                    version=step.version, description=step.description, applied_at=datetime.now(UTC)
                )
            )
    return before, LATEST_VERSION
