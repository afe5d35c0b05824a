"""Pure mapping for the payments app: events → gateway requests → result events.

No Kafka, no HTTP: tested with plain parametrised tests.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from processors.adapters.payment_gateway import PaymentOutcome, PaymentRequest
from processors.contract import (
    Event,
    PaymentCompleted,
    PaymentFailed,
    PaymentPending,
    PremiumDue,
    RefundRequested,
)
from processors.errors import ValidationFailed

__all__ = ["idempotency_key", "payment_request", "result_event"]


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
