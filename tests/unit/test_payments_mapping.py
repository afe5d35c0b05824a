"""The payments app's pure mapping: events → gateway requests → result events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from processors.adapters.payment_gateway import PaymentOutcome
from processors.apps.payments import mapping
from processors.contract import PaymentCompleted, PaymentFailed, PaymentPending
from processors_dev.samples import CARD_TOKENS, premium_due, refund_requested

WHEN = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def test_idempotency_key_is_stable_and_depends_on_event_app_and_operation() -> None:
    event_id = uuid.UUID("0b4f3e0e-0000-4000-8000-000000000001")
    key = mapping.idempotency_key(event_id, "payments", "CHARGE")
    assert key == mapping.idempotency_key(event_id, "payments", "CHARGE")
    assert key.startswith("idem_")
    assert len(key) == 45
    others = {
        mapping.idempotency_key(uuid.uuid4(), "payments", "CHARGE"),
        mapping.idempotency_key(event_id, "refunds", "CHARGE"),
        mapping.idempotency_key(event_id, "payments", "REFUND"),
    }
    assert key not in others
    assert len(others) == 3


def test_premium_due_becomes_a_charge_with_the_exact_amount() -> None:
    event = premium_due(7, 2, amount=Decimal("1185.50"))
    request = mapping.payment_request(event, app="payments")
    assert request.transaction_type == "CHARGE"
    assert request.amount == Decimal("1185.50")
    assert str(request.amount) == "1185.50"
    assert request.currency == "USD"
    assert request.policy_id == "POL-2024-000007"
    assert request.reference_id == "POL-2024-000007-I002"
    assert request.payment_method["card_token"] == CARD_TOKENS["ok"]
    assert request.payment_method["billing_address"]["country"] == "US"
    assert request.idempotency_key == mapping.idempotency_key(event.event_id, "payments", "CHARGE")
    assert CARD_TOKENS["ok"] not in repr(request)


def test_refund_requested_becomes_a_refund() -> None:
    event = refund_requested(3, 1, amount=Decimal("42.10"))
    request = mapping.payment_request(event, app="payments")
    assert request.transaction_type == "REFUND"
    assert request.reference_id == "POL-2024-000003-R001"
    assert request.amount == Decimal("42.10")


@pytest.mark.parametrize(
    ("outcome", "event_type", "model"),
    [
        (
            PaymentOutcome(
                "COMPLETED", "PMT-1", "ch_1", Decimal("1185.50"), "USD", WHEN, "https://r.invalid/ch_1"
            ),
            "payment.completed",
            PaymentCompleted,
        ),
        (PaymentOutcome("PENDING", "PMT-2", "ch_2", None, None, None), "payment.pending", PaymentPending),
        (
            PaymentOutcome(
                "DECLINED",
                "PMT-3",
                None,
                None,
                None,
                WHEN,
                decline_code="card_expired",
                decline_reason="expired",
            ),
            "payment.failed",
            PaymentFailed,
        ),
    ],
)
def test_each_outcome_becomes_its_result_event(outcome: PaymentOutcome, event_type: str, model: type) -> None:
    event = premium_due(7, 2, amount=Decimal("1185.50"))
    request = mapping.payment_request(event, app="payments")
    result = mapping.result_event(event, request, outcome, source="processors/payments", now=WHEN)
    assert result.event_type == event_type
    assert isinstance(result.data, model)
    assert result.subject == "POL-2024-000007"
    assert result.correlation_id == str(event.event_id)
    assert result.data.source_event_id == event.event_id  # type: ignore[attr-defined]
    assert result.data.amount == Decimal("1185.50")  # type: ignore[attr-defined]
    assert result.data.idempotency_key == request.idempotency_key  # type: ignore[attr-defined]
    if isinstance(result.data, PaymentFailed):
        assert result.data.decline_code == "card_expired"
        assert result.data.failed_at == WHEN
