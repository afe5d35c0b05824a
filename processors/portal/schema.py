"""The query store's tables, and the column types that keep values exact on both backends.

Why SQLAlchemy Core (2.x), and not an ORM or hand-written SQL: the store runs on SQLite
(embedded default) and PostgreSQL (production), and the differences that matter here (the
upsert, ``ON CONFLICT … DO UPDATE``, timestamp and numeric types, transactional DDL, the
driver's connection URL) are exactly what Core's dialects absorb, while every statement stays
visible SQL built from these table objects.  The rows are plain projections of topic records:
an ORM's identity map, sessions and lazy loading would add state and cost to a loop that only
upserts batches.

Column types:

* :class:`Money` — ``NUMERIC`` on PostgreSQL, the decimal's text on SQLite (SQLite has no
  exact decimal: its ``NUMERIC`` affinity would turn ``700.10`` into a float).  Always
  :class:`~decimal.Decimal` in and out; a float is refused.
* :class:`UtcDateTime` — ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; on SQLite the UTC time
  as ``YYYY-MM-DD HH:MM:SS.ffffff`` text, which sorts as time does.  Timezone-aware in and
  out, always UTC; a naive time is refused.
* :class:`JsonText` — JSON as text, written with amounts digit for digit and read back with
  fractions as ``Decimal`` (a ``JSON``/``JSONB`` column would hand floats back).

The tables (see ``docs/portal.md`` for what each row means):

==========================  ==============================================================
``partners``                the registry's partners (key: id); API keys are not projected
``subscriptions``           webhook subscriptions without secrets (key: id)
``subscription_owners``     subscription id → partner id, kept after a subscription is
                            deleted, so its delivery history stays attributed
``deliveries``              one row per delivery-log record (key: the record's partition and
                            offset — ``webhook_id`` + ``attempt`` is not unique: decisions
                            without a request are all attempt 0, and a crash repeats one)
``bordereaux``              premium and claims bordereaux (key: report id; unique treaty,
                            period and type), rows, adjustments and summary as JSON
``bordereau_deliveries``    each delivery result of a bordereau (key: partition and offset)
``offsets``                 per topic partition, the next offset to read and the records
                            skipped so far: written in the same transaction as the rows
``schema_version``          the migrations applied (:mod:`processors.portal.migrations`)
==========================  ==============================================================
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import NUMERIC
from sqlalchemy.types import TypeDecorator, TypeEngine

from processors.adapters import jsonwire

__all__ = [
    "BORDEREAUX",
    "BORDEREAU_DELIVERIES",
    "DATA_TABLES",
    "DELIVERIES",
    "METADATA",
    "OFFSETS",
    "PARTNERS",
    "SCHEMA_VERSION",
    "SUBSCRIPTIONS",
    "SUBSCRIPTION_OWNERS",
    "JsonText",
    "Money",
    "UtcDateTime",
]


class Money(TypeDecorator[Decimal]):
    """An exact decimal: ``NUMERIC`` on PostgreSQL, its text elsewhere (see the module doc)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(NUMERIC(asdecimal=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be a Decimal, not {type(value).__name__}")
        if not value.is_finite():
            raise ValueError("money must be finite")
        return value if dialect.name == "postgresql" else format(value, "f")

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored and returned in UTC (see the module doc)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("times must be timezone-aware")
        utc = value.astimezone(UTC)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JsonText(TypeDecorator[Any]):
    """JSON kept as text, numbers exact (see the module doc)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return jsonwire.dumps(value).decode("ascii")

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value, parse_float=Decimal)


METADATA = MetaData()

_ID = 64
"""Partner and subscription ids (``prt_``/``ep_`` and 24 hex characters), codes (≤ 64)."""

PARTNERS = Table(
    "partners",
    METADATA,
    Column("id", String(_ID), primary_key=True),
    Column("name", Text, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("status", String(40), nullable=False),
    Column("reinsurer_code", String(_ID)),
    Column("reinsurer_key", String(_ID), comment="reinsurer_code in upper case: codes ignore case"),
    Column("distributor_code", String(_ID)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_partners_reinsurer_key", "reinsurer_key"),
    Index("ix_partners_kind_status", "kind", "status"),
)

SUBSCRIPTIONS = Table(
    "subscriptions",
    METADATA,
    Column("id", String(_ID), primary_key=True),
    Column("partner_id", String(_ID)),
    Column("url", Text, nullable=False, comment="as the API shows it: a password in it masked"),
    Column("events", JsonText, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("ordered", Boolean, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("rate_limit_per_s", Float),
    Column("description", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("disabled_reason", Text),
    Column("disabled_at", UtcDateTime),
    Column("failing_since", UtcDateTime),
    Column("version", Integer, nullable=False),
    Index("ix_subscriptions_partner", "partner_id"),
)

SUBSCRIPTION_OWNERS = Table(
    "subscription_owners",
    METADATA,
    Column("subscription_id", String(_ID), primary_key=True),
    Column("partner_id", String(_ID)),
)

DELIVERIES = Table(
    "deliveries",
    METADATA,
    Column("log_partition", Integer, primary_key=True, autoincrement=False),
    Column("log_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("subscription_id", String(_ID), nullable=False),
    Column("partner_id", String(_ID)),
    Column("webhook_id", String(128), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("subject", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer),
    Column("latency_ms", Float),
    Column("error", Text),
    Column("response_excerpt", Text),
    Column("attempted_at", UtcDateTime, nullable=False),
    Column("url_host", Text, nullable=False),
    Column("next_step", String(8)),
    Column("job_topic", Text, nullable=False),
    Column("job_partition", Integer, nullable=False),
    Column("job_offset", BigInteger, nullable=False),
    Index("ix_deliveries_endpoint_time", "subscription_id", "attempted_at"),
    Index("ix_deliveries_webhook", "webhook_id"),
    # The portal's delivery log: one partner's lines, newest first, in keyset order, alone or
    # with one filter (schema version 2).
    Index("ix_deliveries_partner_keyset", "partner_id", "attempted_at", "log_partition", "log_offset"),
    Index(
        "ix_deliveries_partner_endpoint_keyset",
        "partner_id",
        "subscription_id",
        "attempted_at",
        "log_partition",
        "log_offset",
    ),
    Index(
        "ix_deliveries_partner_type_keyset",
        "partner_id",
        "event_type",
        "attempted_at",
        "log_partition",
        "log_offset",
    ),
    Index(
        "ix_deliveries_partner_status_keyset",
        "partner_id",
        "status",
        "attempted_at",
        "log_partition",
        "log_offset",
    ),
)

BORDEREAUX = Table(
    "bordereaux",
    METADATA,
    Column("report_id", String(255), primary_key=True),
    Column("report_type", String(32), nullable=False),
    Column("treaty_number", String(255), nullable=False),
    Column("period_id", String(32), nullable=False),
    Column("period_from", Date, nullable=False),
    Column("period_to", Date, nullable=False),
    Column("reinsurer_code", String(_ID)),
    Column("reinsurer_key", String(_ID), comment="reinsurer_code in upper case: codes ignore case"),
    Column("reinsurer_name", Text),
    Column("cedant_code", String(_ID)),
    Column("treaty_type", String(32)),
    Column("settlement_currency", String(3)),
    Column("row_count", Integer, nullable=False),
    Column("adjustment_count", Integer, nullable=False),
    Column("ceded_total", Money, comment="ceded premium (premium) or ceded incurred (claims), settled"),
    Column("rows", JsonText, nullable=False, comment="rows without adjustment_of"),
    Column("adjustments", JsonText, nullable=False, comment="rows with adjustment_of (late events)"),
    Column("totals", JsonText, nullable=False, comment="the report's summary"),
    Column("log_partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    UniqueConstraint("treaty_number", "period_id", "report_type", name="uq_bordereaux_treaty_period_type"),
    Index("ix_bordereaux_reinsurer_period", "reinsurer_key", "period_id"),
    Index("ix_bordereaux_reinsurer_keyset", "reinsurer_key", "period_id", "report_id"),  # version 2
)

BORDEREAU_DELIVERIES = Table(
    "bordereau_deliveries",
    METADATA,
    Column("log_partition", Integer, primary_key=True, autoincrement=False),
    Column("log_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("report_id", String(255), nullable=False),
    Column("treaty_number", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("acknowledged_at", UtcDateTime),
    Column("duplicate", Boolean, nullable=False),
    Column("error_class", String(200)),
    Column("error", Text),
    Column("dead_letter_topic", Text),
    Index("ix_bordereau_deliveries_report", "report_id"),
)

OFFSETS = Table(
    "offsets",
    METADATA,
    Column("topic", String(255), primary_key=True),
    Column("kafka_partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("skipped", BigInteger, nullable=False),
)

SCHEMA_VERSION = Table(
    "schema_version",
    METADATA,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

DATA_TABLES = (
    PARTNERS,
    SUBSCRIPTIONS,
    SUBSCRIPTION_OWNERS,
    DELIVERIES,
    BORDEREAUX,
    BORDEREAU_DELIVERIES,
    OFFSETS,
)
"""Every table but ``schema_version``: what a rebuild compares and counts."""
