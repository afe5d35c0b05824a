"""Versioned schema migrations, applied at start: an ordered list of steps and ``schema_version``.

Why not Alembic: the store has a handful of tables and one writer that migrates before it
projects, and a rebuild from Kafka is always a way out; a short ordered list of DDL steps,
each run in one transaction and recorded in ``schema_version``, gives the same guarantees
without a second tool, its configuration files and its environment script.

Rules:

* :data:`MIGRATIONS` only grows.  A step never changes once released: a change is a new step
  (``ALTER TABLE …`` through SQLAlchemy's DDL constructs, or a rebuild note in the docs).
* Step 1 creates version 1: the tables as :mod:`processors.portal.schema` defines them, with
  the indexes of version 1 (:data:`_V1_INDEXES` keeps those a later step dropped; the indexes
  a later step added are left out).  Later steps so far change indexes only; a step that
  changes a table must first freeze that table's version-1 definition here.
  ``tests/unit/test_portal_store.py`` checks that a database migrated from empty has exactly
  the schema the module defines, and one migrated from version 1 too.
* Step 2 replaces the delivery log's indexes by partner-scoped keyset indexes (every portal
  query filters on the partner first and pages newest first on
  ``attempted_at, log_partition, log_offset``) and adds the bordereaux' keyset index.
* :func:`migrate` runs every missing step in one transaction (DDL is transactional on both
  SQLite and PostgreSQL), under PostgreSQL's advisory lock on this store, so two processes
  starting together migrate once.  A database newer than this build is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, Index, MetaData, func, insert, select

from processors.errors import ConfigError
from processors.portal.schema import BORDEREAUX, DELIVERIES, METADATA, SCHEMA_VERSION

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "current_version", "migrate"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


_V1_INDEXES: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "ix_deliveries_partner_time": ("deliveries", ("partner_id", "attempted_at")),
    "ix_deliveries_event_type_time": ("deliveries", ("event_type", "attempted_at")),
    "ix_deliveries_status_time": ("deliveries", ("status", "attempted_at")),
}
"""Indexes of version 1 that a later step dropped: name → (table, columns)."""

_V2_DELIVERY_INDEXES: Final = (
    "ix_deliveries_partner_keyset",
    "ix_deliveries_partner_endpoint_keyset",
    "ix_deliveries_partner_type_keyset",
    "ix_deliveries_partner_status_keyset",
)
_V2_BORDEREAU_INDEXES: Final = ("ix_bordereaux_reinsurer_keyset",)
_ADDED_LATER: Final = frozenset(_V2_DELIVERY_INDEXES + _V2_BORDEREAU_INDEXES)


def _v1(conn: Connection) -> None:
    frozen = MetaData()
    for table in METADATA.sorted_tables:
        if table is SCHEMA_VERSION:
            continue
        copy = table.to_metadata(frozen)
        for index in list(copy.indexes):
            if index.name in _ADDED_LATER:
                copy.indexes.discard(index)
    for name, (table_name, columns) in _V1_INDEXES.items():
        table = frozen.tables[table_name]
        Index(name, *(table.c[column] for column in columns))
    frozen.create_all(conn)


def _v2(conn: Connection) -> None:
    for name in _V1_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    for table, names in ((DELIVERIES, _V2_DELIVERY_INDEXES), (BORDEREAUX, _V2_BORDEREAU_INDEXES)):
        for index in table.indexes:
            if index.name in names:
                index.create(conn)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "partners, subscriptions, subscription owners, deliveries, bordereaux, bordereau deliveries, offsets",
        _v1,
    ),
    Migration(2, "partner-scoped keyset indexes of the delivery log and the bordereaux", _v2),
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
