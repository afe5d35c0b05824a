"""The query store: SQLite by default, PostgreSQL in production, one URL setting chooses.

::

    store = PortalStore("sqlite:///var/portal.db")      # no I/O yet
    store.migrate()                                      # versioned steps, at start
    store.apply(changes)                                 # one transaction: rows and offsets
    store.offsets()                                      # where the projector resumes
    store.close()

**Crash safety.**  :meth:`PortalStore.apply` writes a batch's rows and, per topic partition,
the next offset to read, in one database transaction.  A process killed at any moment leaves
either the batch and its offsets or neither; the projector resumes from the stored offsets,
so a record is never lost and never applied twice.  Inside the transaction the stored offsets
are read again (under PostgreSQL's advisory lock on the store; SQLite's ``BEGIN IMMEDIATE``
serialises writers anyway) and records below them are dropped: two projectors on one
database, or a consumer that read a record again, cannot apply a record twice or move a row
back to an older version.

**Idempotence.**  Every row has a natural key: partner and subscription ids, the report id,
and the Kafka coordinates of a delivery-log line or a delivery result.  A batch is applied as
upserts on those keys, collapsed to the last change per key (a tombstone deletes), so
applying the same records again yields the same rows.

**Owners.**  A delivery-log line names its subscription, not its partner.  The store keeps
``subscription_owners`` (never deleted by a tombstone) and fills ``deliveries.partner_id``
from it, both when a line arrives and when a subscription's owner becomes known.  The final
rows are the same whatever order the topics' records were applied in: a rebuild equals the
store that followed the topics live.

SQLite runs in WAL mode (readers never block the writer) with ``synchronous=NORMAL``: a
killed process never loses a committed transaction; a power cut may lose the last ones, rows
and offsets together, which the projector then reads again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from processors.errors import ConfigError, ProcessorsError
from processors.portal import migrations
from processors.portal.records import Change, Delete, Ignored, Skipped, Upsert
from processors.portal.schema import (
    BORDEREAU_DELIVERIES,
    BORDEREAUX,
    DATA_TABLES,
    DELIVERIES,
    METADATA,
    OFFSETS,
    PARTNERS,
    SUBSCRIPTION_OWNERS,
    SUBSCRIPTIONS,
)

__all__ = ["ApplyResult", "PortalStore", "PortalStoreError", "TopicPartition", "parse_database_url"]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

_POSTGRES_DRIVER: Final = "postgresql+psycopg"
_POSTGRES_NAMES: Final = frozenset({"postgres", "postgresql", _POSTGRES_DRIVER})
_LOCK_KEY: Final = 0x706F7274616C
"""PostgreSQL advisory lock id of the store's writers (``portal`` in ASCII)."""
_WRITE: Final = "portal_write"
"""Connection execution option: this transaction writes (SQLite: ``BEGIN IMMEDIATE``)."""
_TABLES: Final[Mapping[str, Table]] = {t.name: t for t in DATA_TABLES}


class PortalStoreError(ProcessorsError):
    """The database failed an operation (unreachable, locked too long, full); nothing was changed."""


def parse_database_url(value: str | SecretStr) -> URL:
    """The SQLAlchemy URL of ``value``: ``sqlite:///path`` or a PostgreSQL URL (psycopg 3).

    ``postgres://`` and ``postgresql://`` use the psycopg 3 driver.  :class:`ConfigError`
    (never showing the URL, which may hold a password) for anything else.
    """
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            "portal.database_url is not a database URL (sqlite:///… or postgresql://…)"
        ) from exc
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ConfigError(
                "portal.database_url: give SQLite a file (sqlite:///var/portal.db); an in-memory "
                "database would be a different, empty one on every connection"
            )
        return url
    if url.drivername in _POSTGRES_NAMES:
        return url.set(drivername=_POSTGRES_DRIVER)
    raise ConfigError(
        f"portal.database_url: {url.drivername!r} is not supported: use sqlite:///path or "
        "postgresql://user:password@host:5432/database (psycopg 3)"
    )


@dataclass(slots=True)
class ApplyResult:
    """What one :meth:`PortalStore.apply` did."""

    applied: dict[str, int] = field(default_factory=dict)
    """Per topic, records whose row change was written (upserts and deletes, before
    collapsing per key)."""
    ignored: dict[str, int] = field(default_factory=dict)
    """Per topic, valid records the store does not project."""
    skipped: list[Change] = field(default_factory=list)
    """Records that could not be read (counted in ``offsets.skipped``)."""
    stale: int = 0
    """Records below the stored offset: already in the store, not applied again."""
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    """The next offset now stored, per partition the batch touched."""


class PortalStore:
    """The query store behind one database URL; see the module docstring.

    Thread-safe: the engine pools connections; one projector writes, any number of readers
    (the portal API) read through :attr:`engine`.
    """

    def __init__(self, url: str | SecretStr, *, busy_timeout_s: float = 30.0) -> None:
        self.url = parse_database_url(url)
        self.backend = "postgresql" if self.url.drivername == _POSTGRES_DRIVER else "sqlite"
        if self.backend == "sqlite":
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": busy_timeout_s})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                self.url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": max(1, int(busy_timeout_s)),
                    "application_name": "processors-portal",
                },
            )
        self._insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert

    def __repr__(self) -> str:
        return f"PortalStore({self.display_url})"

    @property
    def display_url(self) -> str:
        """The URL with its password masked: fit for a log line."""
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------- schema

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema (:mod:`processors.portal.migrations`); (before, after)."""
        self._ensure_directory()
        with self._write() as conn:
            before, after = migrations.migrate(conn)
        if before != after:
            log.info("portal store %s: schema version %d → %d", self.display_url, before, after)
        return before, after

    def reset(self) -> None:
        """Drop every table of the store, ``schema_version`` too (a rebuild starts from here)."""
        self._ensure_directory()
        with self._write() as conn:
            METADATA.drop_all(conn)
        log.info("portal store %s: every table dropped", self.display_url)

    def schema_version(self) -> int:
        with self._read() as conn:
            return migrations.current_version(conn)

    def _ensure_directory(self) -> None:
        if self.backend == "sqlite" and self.url.database:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------- reading

    def offsets(self) -> dict[TopicPartition, int]:
        """Per topic partition, the next offset to read (what the store holds is below it)."""
        with self._read() as conn:
            rows = conn.execute(select(OFFSETS.c.topic, OFFSETS.c.kafka_partition, OFFSETS.c.next_offset))
            return {(row.topic, row.kafka_partition): row.next_offset for row in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table, and ``skipped``: the records skipped so far over every topic."""
        with self._read() as conn:
            found = {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in DATA_TABLES
            }
            found["skipped"] = int(
                conn.execute(select(func.coalesce(func.sum(OFFSETS.c.skipped), 0))).scalar_one()
            )
        return found

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table but ``schema_version``, ordered by primary key (to compare stores)."""
        with self._read() as conn:
            return {
                t.name: [
                    dict(row._mapping) for row in conn.execute(select(t).order_by(*t.primary_key.columns))
                ]
                for t in DATA_TABLES
            }

    # ------------------------------------------------------------------------- writing

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        """Apply a batch of changes, in log order, and store the next offsets: one transaction."""
        result = ApplyResult()
        if not changes:
            return result
        with self._write() as conn:
            stored = self._stored_offsets(conn, {c.at.topic for c in changes})
            fresh = [c for c in changes if c.at.offset >= stored.get((c.at.topic, c.at.partition), 0)]
            result.stale = len(changes) - len(fresh)
            latest: dict[tuple[str, tuple[Any, ...]], Upsert | Delete] = {}
            owners: dict[str, str | None] = {}
            ends: dict[TopicPartition, int] = {}
            skipped: dict[TopicPartition, int] = defaultdict(int)
            for change in fresh:
                tp = (change.at.topic, change.at.partition)
                ends[tp] = max(ends.get(tp, 0), change.at.offset + 1)
                action = change.action
                if isinstance(action, Upsert | Delete):
                    latest[(action.table, action.key)] = action
                    if isinstance(action, Upsert) and action.table == SUBSCRIPTIONS.name:
                        # every version counts: a subscription deleted later in the batch had an owner
                        owners[action.row["id"]] = action.row["partner_id"]
                    result.applied[tp[0]] = result.applied.get(tp[0], 0) + 1
                elif isinstance(action, Ignored):
                    result.ignored[tp[0]] = result.ignored.get(tp[0], 0) + 1
                elif isinstance(action, Skipped):
                    skipped[tp] += 1
                    result.skipped.append(change)
            self._write_rows(conn, latest.values(), owners)
            result.positions = self._write_offsets(conn, ends, skipped)
        return result

    def _write_rows(
        self, conn: Connection, actions: Iterable[Upsert | Delete], owners: Mapping[str, str | None]
    ) -> None:
        upserts: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        deletes: dict[str, list[Any]] = defaultdict(list)
        for action in actions:
            if isinstance(action, Upsert):
                upserts[action.table].append(action.row)
            else:
                deletes[action.table].append(action.key[0])
        for name, ids in deletes.items():
            table = _TABLES[name]
            conn.execute(delete(table).where(table.primary_key.columns.values()[0].in_(ids)))
        for table in (PARTNERS, SUBSCRIPTIONS, BORDEREAUX, BORDEREAU_DELIVERIES):
            self._upsert(conn, table, upserts.get(table.name, ()))
        self._write_owners(conn, owners)
        deliveries = upserts.get(DELIVERIES.name)
        if deliveries:
            known = self._owners(conn, {row["subscription_id"] for row in deliveries})
            self._upsert(
                conn,
                DELIVERIES,
                [{**row, "partner_id": known.get(row["subscription_id"])} for row in deliveries],
            )

    def _write_owners(self, conn: Connection, owners: Mapping[str, str | None]) -> None:
        """Record each subscription's owner; where it is new, attribute the deliveries already stored."""
        if not owners:
            return
        before = self._owners(conn, set(owners))
        changed = [
            {"sub": sub_id, "partner": partner_id}
            for sub_id, partner_id in owners.items()
            if sub_id not in before or before[sub_id] != partner_id
        ]
        if not changed:
            return
        self._upsert(
            conn,
            SUBSCRIPTION_OWNERS,
            [{"subscription_id": c["sub"], "partner_id": c["partner"]} for c in changed],
        )
        conn.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.subscription_id == bindparam("sub"),
                DELIVERIES.c.partner_id.is_distinct_from(bindparam("partner")),
            )
            .values(partner_id=bindparam("partner")),
            changed,
        )

    def _owners(self, conn: Connection, sub_ids: set[str]) -> dict[str, str | None]:
        rows = conn.execute(
            select(SUBSCRIPTION_OWNERS.c.subscription_id, SUBSCRIPTION_OWNERS.c.partner_id).where(
                SUBSCRIPTION_OWNERS.c.subscription_id.in_(sorted(sub_ids))
            )
        )
        return {row.subscription_id: row.partner_id for row in rows}

    def _upsert(self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        keys = [column.name for column in table.primary_key.columns]
        stmt = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={
                column.name: stmt.excluded[column.name] for column in table.columns if column.name not in keys
            },
        )
        conn.execute(stmt, list(rows))

    def _stored_offsets(self, conn: Connection, topics: set[str]) -> dict[TopicPartition, int]:
        rows = conn.execute(
            select(OFFSETS.c.topic, OFFSETS.c.kafka_partition, OFFSETS.c.next_offset).where(
                OFFSETS.c.topic.in_(sorted(topics))
            )
        )
        return {(row.topic, row.kafka_partition): row.next_offset for row in rows}

    def _write_offsets(
        self, conn: Connection, ends: Mapping[TopicPartition, int], skipped: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        if not ends:
            return {}
        stmt = self._insert(OFFSETS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[OFFSETS.c.topic, OFFSETS.c.kafka_partition],
            set_={
                # never backwards, whatever another writer did
                "next_offset": case(
                    (stmt.excluded.next_offset > OFFSETS.c.next_offset, stmt.excluded.next_offset),
                    else_=OFFSETS.c.next_offset,
                ),
                "skipped": OFFSETS.c.skipped + stmt.excluded.skipped,
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "topic": topic,
                    "kafka_partition": partition,
                    "next_offset": end,
                    "skipped": skipped.get((topic, partition), 0),
                }
                for (topic, partition), end in sorted(ends.items())
            ],
        )
        return dict(ends)

    def _lock(self, conn: Connection) -> None:
        if self.backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})

    # ------------------------------------------------------------------------- transactions

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    self._lock(conn)
                    yield conn
        except SQLAlchemyError as exc:
            raise PortalStoreError(f"portal store {self.display_url}: {_describe(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise PortalStoreError(f"portal store {self.display_url}: {_describe(exc)}") from exc


def _describe(exc: SQLAlchemyError) -> str:
    """The driver's first line, without the statement and its parameters (they hold data)."""
    original = getattr(exc, "orig", None)
    message = str(original if original is not None else exc).strip().splitlines()
    return f"{type(original or exc).__name__}: {message[0] if message else 'failed'}"


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is off: the "begin" listener says BEGIN itself, so
    # DDL is transactional and a writer takes the write lock when its transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
