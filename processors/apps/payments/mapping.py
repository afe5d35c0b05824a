"""Pure mapping for the payments app: events → gateway requests → result events.

No Kafka, no HTTP: tested with plain parametrised tests.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from pydantic import TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from processors.adapters.payment_gateway import PaymentOutcome, PaymentRequest
from processors.contract import (
    SCHEMA_VERSION,
    Event,
    EventRecord,
    PaymentCompleted,
    PaymentFailed,
    PaymentPending,
    PremiumDue,
    RefundRequested,
)
from processors.contract.codec import validation_reason
from processors.contract.events import MODEL_CONFIG, Code, Identifier, Text, Url, UtcDatetime
from processors.errors import ValidationFailed

__all__ = ["gateway_fields", "idempotency_key", "payment_request", "result_event", "result_record"]


def idempotency_key(event_id: UUID, app: str, operation: str) -> str:
    """Stable across retries, restarts and replays of the same event."""
    digest = hashlib.sha256(f"{event_id}|{app}|{operation}".encode()).hexdigest()
    return f"idem_{digest[:40]}"


def payment_request(event: Event, *, app: str) -> PaymentRequest:
    data = event.data
    operation: Literal["CHARGE", "REFUND"]
    if isinstance(data, PremiumDue):
        operation, reference = "CHARGE", data.instalment_id
    elif isinstance(data, RefundRequested):
        operation, reference = "REFUND", data.refund_id
    else:
        raise ValidationFailed(f"payments cannot handle {event.event_type}")
    return PaymentRequest(
        policy_id=data.policy_id,
        amount=data.amount,
        currency=data.currency,
        payment_method=data.payment_method.model_dump(mode="json", exclude_none=True),
        idempotency_key=idempotency_key(event.event_id, app, operation),
        transaction_type=operation,
        reference_id=reference,
    )


def result_event(
    event: Event,
    request: PaymentRequest,
    outcome: PaymentOutcome,
    *,
    source: str,
    now: datetime | None = None,
) -> Event:
    """The result published on the results topic, keyed (subject) by the policy."""
    common: dict[str, Any] = {
        "policy_id": request.policy_id,
        "operation": request.transaction_type,
        "reference_id": request.reference_id,
        "amount": request.amount,
        "currency": request.currency,
        "idempotency_key": request.idempotency_key,
        "source_event_id": event.event_id,
    }
    when = outcome.processed_at or now or datetime.now(UTC)
    if outcome.status == "COMPLETED":
        event_type = "payment.completed"
        data: PaymentCompleted | PaymentPending | PaymentFailed = PaymentCompleted(
            **common,
            payment_id=outcome.payment_id or "",
            gateway_reference=outcome.gateway_reference or "",
            processed_at=when,
            receipt_url=outcome.receipt_url,
        )
    elif outcome.status == "PENDING":
        event_type = "payment.pending"
        data = PaymentPending(**common, payment_id=outcome.payment_id or "")
    else:
        event_type = "payment.failed"
        data = PaymentFailed(
            **common,
            decline_code=outcome.decline_code or "declined",
            decline_reason=outcome.decline_reason or "declined by the gateway",
            failed_at=when,
        )
    return Event.create(
        event_type,
        subject=request.policy_id,
        data=data,
        source=source,
        correlation_id=event.correlation_id or str(event.event_id),
    )


# The gateway's own fields of each result, under the payload models' own field types and
# configuration: checked here as the models check them, with nothing else re-validated.


@with_config(MODEL_CONFIG)
class _Completed(TypedDict):
    payment_id: Identifier
    gateway_reference: Identifier
    processed_at: UtcDatetime
    receipt_url: Url | None


@with_config(MODEL_CONFIG)
class _Pending(TypedDict):
    payment_id: Identifier


@with_config(MODEL_CONFIG)
class _Failed(TypedDict):
    decline_code: Code
    decline_reason: Text
    failed_at: UtcDatetime


_GATEWAY_FIELDS: dict[str, TypeAdapter[Any]] = {
    "payment.completed": TypeAdapter(_Completed),
    "payment.pending": TypeAdapter(_Pending),
    "payment.failed": TypeAdapter(_Failed),
}


def gateway_fields(outcome: PaymentOutcome, now: datetime) -> tuple[str, dict[str, Any]]:
    """(result event type, the gateway's own fields of its payload), checked as the payload
    models check them; a refusal is a :class:`ValidationFailed` naming the field, never its
    value.  ``now`` is the result's time when the gateway gave none."""
    when = outcome.processed_at or now
    if outcome.status == "COMPLETED":
        event_type = "payment.completed"
        fields: dict[str, Any] = {
            "payment_id": outcome.payment_id or "",
            "gateway_reference": outcome.gateway_reference or "",
            "processed_at": when,
            "receipt_url": outcome.receipt_url,
        }
    elif outcome.status == "PENDING":
        event_type = "payment.pending"
        fields = {"payment_id": outcome.payment_id or ""}
    else:
        event_type = "payment.failed"
        fields = {
            "decline_code": outcome.decline_code or "declined",
            "decline_reason": outcome.decline_reason or "declined by the gateway",
            "failed_at": when,
        }
    try:
        checked = _GATEWAY_FIELDS[event_type].validate_python(fields)
    except ValidationError as exc:
        raise ValidationFailed(validation_reason(exc, f"gateway answer for {event_type}")) from None
    return event_type, checked


def result_record(
    event: Event,
    request: PaymentRequest,
    outcome: PaymentOutcome,
    *,
    source: str,
    now: datetime | None = None,
    event_id: UUID | None = None,
) -> EventRecord:
    """:func:`result_event` as an :class:`EventRecord`, without building the models.

    The request's fields come from ``event``, which the codec validated under the same field
    types (``tests/unit/test_payments_result_record.py`` holds the two contracts together);
    the gateway's fields are checked here as the payload models check them, and a refusal is
    a :class:`ValidationFailed` naming the field, never its value.  ``now`` is the event's
    ``occurred_at`` (default: the current time, UTC) and the result's time when the gateway
    gave none; ``event_id`` defaults to a fresh uuid4."""
    occurred_at = now or datetime.now(UTC)
    event_type, checked = gateway_fields(outcome, occurred_at)
    data: dict[str, Any] = {
        "policy_id": request.policy_id,
        "operation": request.transaction_type,
        "reference_id": request.reference_id,
        "currency": request.currency,
        "amount": request.amount,
        "idempotency_key": request.idempotency_key,
        "source_event_id": event.event_id,
    }
    data.update(checked)
    record = {
        "event_id": event_id or uuid4(),
        "event_type": event_type,
        "source": source,
        "occurred_at": occurred_at,
        "subject": request.policy_id,
        "correlation_id": event.correlation_id or str(event.event_id),
        "schema_version": SCHEMA_VERSION,
        "data": data,
    }
    return EventRecord(event_type, request.policy_id, record)
