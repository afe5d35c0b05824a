"""What one topic record means for the query store: a row to upsert, a row to delete, or nothing.

Pure code: no Kafka client, no database.  Each source topic is read with the project's own
model of its records, so the store sees exactly what the rest of the product writes:

==========================  ===============================================================
source                      read with
==========================  ===============================================================
``partners``                :func:`processors.partners.model.decode_record`; API keys and
                            their last use are not projected (the portal authenticates
                            against the registry itself), a tombstone deletes the partner
``subscriptions``           :meth:`processors.webhooks.subscriptions.Subscription.from_record`;
                            never a secret, a password in the URL masked; a tombstone deletes
``deliveries``              :meth:`processors.webhooks.attempts.DeliveryAttempt.parse`
``bordereaux``              :func:`processors.apps.reinsurance.read_report` (the report's
                            identity, as the delivery app checks it), then the report body
``bordereau_deliveries``    the delivery result the ``bordereaux-delivery`` app writes
                            (:func:`processors.apps.reinsurance.delivery_result`)
==========================  ===============================================================

A record that cannot be read becomes :class:`Skipped` with a reason that names fields, never
values: the caller counts it and logs its coordinates.  The previous row for its key stays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from processors.adapters import jsonwire
from processors.adapters.reinsurer import check_report_id
from processors.apps.reinsurance import read_report
from processors.errors import ContractError, DecodeError
from processors.partners.keys import KEY_PREFIX
from processors.partners.model import PARTNER_ID_PATTERN, Partner, decode_record
from processors.partners.table import text_key
from processors.webhooks.attempts import DeliveryAttempt
from processors.webhooks.subscriptions import ID_PATTERN as SUBSCRIPTION_ID_PATTERN
from processors.webhooks.subscriptions import Subscription

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_EXCERPT_CHARS",
    "Change",
    "Coordinates",
    "Delete",
    "Ignored",
    "Skipped",
    "Source",
    "Upsert",
    "decode",
]

MAX_EXCERPT_CHARS: Final = 1_024
"""A partner's answer excerpt is kept up to this many characters (the log's own default is 256)."""
MAX_ERROR_CHARS: Final = 2_000

_PARTNER_KEY: Final = re.compile(PARTNER_ID_PATTERN)
_SUBSCRIPTION_KEY: Final = re.compile(SUBSCRIPTION_ID_PATTERN)
_REPORT_ROWS: Final = {"PREMIUM_BORDEREAUX": "policies", "CLAIMS_BORDEREAUX": "claims"}
_CEDED_TOTAL: Final = {
    "PREMIUM_BORDEREAUX": "total_ceded_premium",
    "CLAIMS_BORDEREAUX": "total_ceded_incurred",
}


class Source(StrEnum):
    """The topics the store is built from (their names come from the catalogue)."""

    PARTNERS = "partners"
    SUBSCRIPTIONS = "subscriptions"
    DELIVERIES = "deliveries"
    BORDEREAUX = "bordereaux"
    BORDEREAU_DELIVERIES = "bordereau_deliveries"


@dataclass(frozen=True, slots=True, order=True)
class Coordinates:
    """Where a record is: topic, partition, offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Upsert:
    """Insert the row, or replace the one with the same ``key``."""

    table: str
    key: tuple[Any, ...]
    row: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the row with ``key`` (a tombstone on a compacted topic)."""

    table: str
    key: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid record the store does not project (an API key, for example)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record that could not be read; ``reason`` names fields, never values."""

    reason: str


Action = Upsert | Delete | Ignored | Skipped


@dataclass(frozen=True, slots=True)
class Change:
    """One record's meaning, with its coordinates (its offset is what the store resumes from)."""

    at: Coordinates
    action: Action


def decode(source: Source, at: Coordinates, key: bytes | None, value: bytes | None) -> Change:
    """The change one record of ``source`` means (never raises for bad input: :class:`Skipped`)."""
    try:
        action = _DECODERS[source](at, key, value)
    except ContractError as exc:
        action = Skipped(exc.reason)
    except Exception as exc:  # poison input must never stop the projector; the message may hold content
        action = Skipped(f"the record could not be read ({type(exc).__name__})")
    return Change(at, action)


# --------------------------------------------------------------------------------- partners


def _partner(at: Coordinates, key: bytes | None, value: bytes | None) -> Action:
    record_key = text_key(key)
    if record_key is None:
        return Skipped("a record with an invalid key")
    if record_key.startswith(KEY_PREFIX):
        return Ignored("API keys are not projected")
    if _PARTNER_KEY.fullmatch(record_key) is None:
        return Skipped("a record with an invalid key")
    if value is None:
        return Delete("partners", (record_key,))
    entry = decode_record(value)
    if not isinstance(entry, Partner):
        return Skipped("the record's type does not match its key")
    if entry.id != record_key:
        return Skipped("the record's id differs from its key")
    code = entry.reinsurer_code
    return Upsert(
        "partners",
        (entry.id,),
        {
            "id": entry.id,
            "name": entry.name,
            "kind": entry.kind,
            "status": entry.status,
            "reinsurer_code": code,
            "reinsurer_key": code.upper() if code is not None else None,
            "distributor_code": entry.distributor_code,
            "created_at": entry.created_at,
            "updated_at": entry.updated_at,
            "version": entry.version,
        },
    )


# ---------------------------------------------------------------------------- subscriptions


def _subscription(at: Coordinates, key: bytes | None, value: bytes | None) -> Action:
    sub_id = text_key(key)
    if sub_id is None or _SUBSCRIPTION_KEY.fullmatch(sub_id) is None:
        return Skipped("a record with an invalid key")
    if value is None:
        return Delete("subscriptions", (sub_id,))
    sub = Subscription.from_record(value)
    if sub.id != sub_id:
        return Skipped("the record's id differs from its key")
    # The public view's URL: what the API shows, a password in it masked.
    url = sub.public_view(sub.updated_at)["url"]
    return Upsert(
        "subscriptions",
        (sub.id,),
        {
            "id": sub.id,
            "partner_id": sub.partner_id,
            "url": url,
            "events": list(sub.events),
            "active": sub.active,
            "ordered": sub.ordered,
            "max_concurrency": sub.max_concurrency,
            "rate_limit_per_s": sub.rate_limit_per_s,
            "description": sub.description,
            "created_at": sub.created_at,
            "updated_at": sub.updated_at,
            "disabled_reason": sub.disabled_reason,
            "disabled_at": sub.disabled_at,
            "failing_since": sub.failing_since,
            "version": sub.version,
        },
    )


# ------------------------------------------------------------------------------- deliveries


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _delivery(at: Coordinates, key: bytes | None, value: bytes | None) -> Action:
    attempt = DeliveryAttempt.parse(value)
    if attempt is None:
        return Skipped("not a delivery-log record")
    return Upsert(
        "deliveries",
        (at.partition, at.offset),
        {
            "log_partition": at.partition,
            "log_offset": at.offset,
            "subscription_id": attempt.subscription_id,
            "partner_id": None,  # the store fills it in from the subscription's owner
            "webhook_id": attempt.webhook_id,
            "event_id": attempt.event_id,
            "event_type": attempt.event_type,
            "subject": attempt.subject,
            "attempt": attempt.attempt,
            "status": attempt.status,
            "http_status": attempt.http_status,
            "latency_ms": attempt.latency_ms,
            "error": _clip(attempt.error, MAX_ERROR_CHARS),
            "response_excerpt": _clip(attempt.response_excerpt, MAX_EXCERPT_CHARS),
            "attempted_at": attempt.attempted_at,
            "url_host": attempt.url_host,
            "next_step": attempt.next_step,
            "job_topic": attempt.job.topic,
            "job_partition": attempt.job.partition,
            "job_offset": attempt.job.offset,
        },
    )


# ------------------------------------------------------------------------------- bordereaux


def _report(at: Coordinates, key: bytes | None, value: bytes | None) -> Action:
    ref = read_report(key, value)  # the identity: key, report id, type, period id
    try:
        report = jsonwire.loads(value or b"")
    except (ValueError, RecursionError) as exc:
        raise DecodeError("the value is not UTF-8 JSON") from exc
    rows = report.get(_REPORT_ROWS[ref.report_type])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return Skipped(f"{_REPORT_ROWS[ref.report_type]} must be a list of objects")
    summary = report.get("summary")
    if not isinstance(summary, dict):
        return Skipped("summary must be an object")
    period = report["period"]  # an object: read_report checked it
    period_from, period_to = _date(period.get("from")), _date(period.get("to"))
    if period_from is None or period_to is None:
        return Skipped("period.from and period.to must be dates (YYYY-MM-DD)")
    settlement = summary.get("settlement")
    ceded_total = (
        _decimal(settlement.get(_CEDED_TOTAL[ref.report_type])) if isinstance(settlement, dict) else None
    )
    reinsurer = report.get("reinsurer") if isinstance(report.get("reinsurer"), dict) else {}
    cedant = report.get("cedant") if isinstance(report.get("cedant"), dict) else {}
    code = ref.reinsurer_code
    adjustments = [row for row in rows if row.get("adjustment_of") is not None]
    return Upsert(
        "bordereaux",
        (ref.report_id,),
        {
            "report_id": ref.report_id,
            "report_type": ref.report_type,
            "treaty_number": ref.treaty_number,
            "period_id": ref.period_id,
            "period_from": period_from,
            "period_to": period_to,
            "reinsurer_code": code,
            "reinsurer_key": code.upper() if code is not None else None,
            "reinsurer_name": _str(reinsurer.get("name")),
            "cedant_code": _str(cedant.get("code")),
            "treaty_type": _str(report.get("treaty_type")),
            "settlement_currency": _str(report.get("settlement_currency")),
            "row_count": len(rows),
            "adjustment_count": len(adjustments),
            "ceded_total": ceded_total,
            "rows": [row for row in rows if row.get("adjustment_of") is None],
            "adjustments": adjustments,
            "totals": summary,
            "log_partition": at.partition,
            "log_offset": at.offset,
        },
    )


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, str | Decimal):
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class _WireResult(BaseModel):
    """A delivery result of ``integrations.reinsurance.deliveries``; unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    report_id: str = Field(min_length=1)
    status: str = Field(min_length=1, max_length=16)
    acknowledged_at: AwareDatetime | None = None
    duplicate: bool = False
    error_class: str | None = Field(default=None, max_length=200)
    error: str | None = None
    dead_letter_topic: str | None = None


def _report_delivery(at: Coordinates, key: bytes | None, value: bytes | None) -> Action:
    if not value:
        return Skipped("the record has no value (a delivery result was expected)")
    if key is None:
        return Skipped("the record has no key (the treaty number)")
    try:
        treaty_number = key.decode("utf-8")
        result = _WireResult.model_validate_json(value)
    except UnicodeDecodeError:
        return Skipped("the key is not UTF-8")
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}) or ["body"]
        return Skipped(f"not a delivery result: invalid {', '.join(fields)}")
    check_report_id(result.report_id)
    acknowledged = result.acknowledged_at.astimezone(UTC) if result.acknowledged_at is not None else None
    return Upsert(
        "bordereau_deliveries",
        (at.partition, at.offset),
        {
            "log_partition": at.partition,
            "log_offset": at.offset,
            "report_id": result.report_id,
            "treaty_number": treaty_number,
            "status": result.status,
            "acknowledged_at": acknowledged,
            "duplicate": result.duplicate,
            "error_class": result.error_class,
            "error": _clip(result.error, MAX_ERROR_CHARS),
            "dead_letter_topic": result.dead_letter_topic,
        },
    )


_DECODERS: Final = {
    Source.PARTNERS: _partner,
    Source.SUBSCRIPTIONS: _subscription,
    Source.DELIVERIES: _delivery,
    Source.BORDEREAUX: _report,
    Source.BORDEREAU_DELIVERIES: _report_delivery,
}
