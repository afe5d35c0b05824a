"""One realistic, valid example of every event type.

Used by the contract's documentation, its tests and anyone who needs a well-formed event
of a given type.  Examples are deterministic: the same call gives the same event (fixed
``event_id`` and ``occurred_at``), so they can be compared and printed in docs.  The
personal data in them is made up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid5

from processors.contract.events import (
    Address,
    ClaimClosed,
    ClaimPaid,
    ClaimReported,
    ClaimReserved,
    ClaimSettled,
    CustomerCreated,
    Event,
    EventData,
    KycApproved,
    KycCheck,
    KycCheckStatus,
    KycConsent,
    KycDocument,
    KycMatch,
    KycPending,
    KycRefused,
    KycRejected,
    KycRequested,
    KycReview,
    PaymentCompleted,
    PaymentConfirmed,
    PaymentFailed,
    PaymentMethod,
    PaymentPending,
    PolicyCancelled,
    PolicyEndorsed,
    PolicyIssued,
    PolicyRenewed,
    PremiumDue,
    RefundRequested,
)

__all__ = ["EXAMPLE_PAYLOADS", "EXAMPLE_SOURCES", "example_event"]

_NAMESPACE = UUID("6f1c1f7e-8a39-4c55-9d0e-3f1b2f0f6a10")
_OCCURRED_AT = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
_PREMIUM_DUE_ID = uuid5(_NAMESPACE, "premium.due")
_KYC_REQUESTED_ID = uuid5(_NAMESPACE, "customer.kyc_requested")

_POLICY: dict[str, Any] = {
    "policy_id": "POL-2024-001234",
    "policy_number": "INS-2024-001234",
    "customer_id": "CUST-000123",
    "line_of_business": "PROPERTY",
    "territory": "US",
    "inception_date": date(2024, 1, 15),
    "expiry_date": date(2025, 1, 14),
    "currency": "USD",
}

_CARD = PaymentMethod(
    type="CREDIT_CARD",
    card_token="tok_visa_4242",  # noqa: S106 (a public test token of the payment gateway)
    billing_address=Address(
        line1="123 Main St", city="Springfield", state="IL", postal_code="62701", country="US"
    ),
)

_CLAIM: dict[str, Any] = {
    "claim_id": "CLM-2024-000042",
    "policy_id": "POL-2024-001234",
    "policy_number": "INS-2024-001234",
    "date_of_loss": date(2024, 3, 2),
    "currency": "USD",
}

_RESULT: dict[str, Any] = {
    "policy_id": "POL-2024-001234",
    "operation": "CHARGE",
    "reference_id": "POL-2024-001234-I001",
    "currency": "USD",
    "amount": Decimal("1185.50"),
    "idempotency_key": "idem_6a1f0c2b9d7e4f3a8b5c",
    "source_event_id": _PREMIUM_DUE_ID,
}

_KYC: dict[str, Any] = {
    "customer_id": "CUST-000123",
    "verification_id": "VRF-2024-001234",
    "verified_at": datetime(2024, 1, 15, 10, 35, tzinfo=UTC),
    "idempotency_key": "idem_0d7c4b1e9a2f6c3b8e5d",
    "source_event_id": _KYC_REQUESTED_ID,
}


def _kyc_checks(
    *,
    document: KycCheckStatus = "PASSED",
    face: KycCheckStatus = "PASSED",
    sanctions: list[KycMatch] | None = None,
    pep: list[KycMatch] | None = None,
) -> list[KycCheck]:
    return [
        KycCheck(type="DOCUMENT_AUTHENTICITY", status=document, confidence=Decimal("0.98")),
        KycCheck(type="FACE_MATCH", status=face, confidence=Decimal("0.95")),
        KycCheck(
            type="SANCTIONS_SCREENING", status="FAILED" if sanctions else "PASSED", matches=sanctions or []
        ),
        KycCheck(type="PEP_CHECK", status="REVIEW" if pep else "PASSED", matches=pep or []),
    ]


EXAMPLE_PAYLOADS: Mapping[str, EventData] = MappingProxyType(
    {
        "policy.issued": PolicyIssued(
            **_POLICY, gross_premium=Decimal("14226.00"), sum_insured=Decimal("500000.00")
        ),
        "policy.renewed": PolicyRenewed(
            **{**_POLICY, "inception_date": date(2025, 1, 15), "expiry_date": date(2026, 1, 14)},
            gross_premium=Decimal("14937.30"),
            sum_insured=Decimal("525000.00"),
            previous_policy_number="INS-2024-001234",
        ),
        "policy.endorsed": PolicyEndorsed(
            **_POLICY,
            gross_premium=Decimal("15226.00"),
            sum_insured=Decimal("550000.00"),
            effective_date=date(2024, 7, 1),
            premium_change=Decimal("1000.00"),
        ),
        "policy.cancelled": PolicyCancelled(
            **_POLICY,
            gross_premium=Decimal("7113.00"),
            sum_insured=Decimal("500000.00"),
            effective_date=date(2024, 7, 15),
            premium_change=Decimal("-7113.00"),
            cancellation_reason="Property sold",
        ),
        "premium.due": PremiumDue(
            policy_id="POL-2024-001234",
            policy_number="INS-2024-001234",
            instalment_id="POL-2024-001234-I001",
            due_date=date(2024, 2, 15),
            currency="USD",
            amount=Decimal("1185.50"),
            payment_method=_CARD,
        ),
        "refund.requested": RefundRequested(
            policy_id="POL-2024-001234",
            policy_number="INS-2024-001234",
            refund_id="POL-2024-001234-R001",
            currency="USD",
            amount=Decimal("592.75"),
            reason="Mid-term cancellation: return premium",
            payment_method=_CARD,
            original_payment_id="PMT-2024-001234",
        ),
        "customer.created": CustomerCreated(
            customer_id="CUST-000123",
            full_name="Jane Example",
            date_of_birth=date(1985, 4, 12),
            email="jane@example.com",
            country="US",
        ),
        "customer.kyc_requested": KycRequested(
            customer_id="CUST-000123",
            verification_type="IDENTITY",
            documents=[
                KycDocument(
                    type="PASSPORT",
                    document_number="AB123456",
                    issuing_country="US",
                    expiry_date=date(2028, 6, 15),
                    front_image_url="https://storage.example.com/docs/passport_front.jpg",
                    back_image_url="https://storage.example.com/docs/passport_back.jpg",
                )
            ],
            consent=KycConsent(terms_accepted=True, data_processing_accepted=True, timestamp=_OCCURRED_AT),
        ),
        "claim.reported": ClaimReported(
            **_CLAIM,
            reserve_amount=Decimal("25000.00"),
            paid_amount=Decimal("0.00"),
            paid_to_date=Decimal("0.00"),
            status="OPEN",
        ),
        "claim.reserved": ClaimReserved(
            **_CLAIM,
            reserve_amount=Decimal("31500.00"),
            paid_amount=Decimal("0.00"),
            paid_to_date=Decimal("0.00"),
            status="OPEN",
        ),
        "claim.paid": ClaimPaid(
            **_CLAIM,
            reserve_amount=Decimal("21500.00"),
            paid_amount=Decimal("10000.00"),
            paid_to_date=Decimal("10000.00"),
            status="OPEN",
        ),
        "claim.settled": ClaimSettled(
            **_CLAIM,
            reserve_amount=Decimal("18250.00"),
            paid_amount=Decimal("0.00"),
            paid_to_date=Decimal("10000.00"),
            settled_amount=Decimal("28250.00"),
            status="SETTLED",
        ),
        "claim.closed": ClaimClosed(
            **_CLAIM,
            reserve_amount=Decimal("0.00"),
            paid_amount=Decimal("18250.00"),
            paid_to_date=Decimal("28250.00"),
            settled_amount=Decimal("28250.00"),
            status="CLOSED",
        ),
        "payment.completed": PaymentCompleted(
            **_RESULT,
            payment_id="PMT-2024-001234",
            gateway_reference="ch_3abc123def",
            processed_at=_OCCURRED_AT,
            receipt_url="https://receipts.payment.com/ch_3abc123def",
        ),
        "payment.pending": PaymentPending(**_RESULT, payment_id="PMT-2024-001235"),
        "payment.failed": PaymentFailed(
            **_RESULT,
            decline_code="insufficient_funds",
            decline_reason="The card has insufficient funds.",
            failed_at=_OCCURRED_AT,
        ),
        "payment.confirmed": PaymentConfirmed(
            **_RESULT,
            payment_id="PMT-2024-001235",
            gateway_reference="ch_3abc124xyz",
            processed_at=datetime(2024, 1, 15, 10, 31, 12, 250000, tzinfo=UTC),
            receipt_url=None,
        ),
        "kyc.approved": KycApproved(
            **_KYC, status="APPROVED", risk_score=15, risk_level="LOW", checks=_kyc_checks()
        ),
        "kyc.review": KycReview(
            **_KYC,
            status="REVIEW",
            risk_score=55,
            risk_level="MEDIUM",
            checks=_kyc_checks(
                pep=[KycMatch(name="Alex Example", list_name="PEP-GLOBAL", score=Decimal("0.91"))]
            ),
        ),
        "kyc.rejected": KycRejected(
            **_KYC,
            status="REJECTED",
            risk_score=96,
            risk_level="HIGH",
            checks=_kyc_checks(
                sanctions=[KycMatch(name="Sam Example", list_name="OFAC-SDN", score=Decimal("0.97"))]
            ),
        ),
        "kyc.pending": KycPending(
            customer_id="CUST-000123",
            verification_id="VRF-2024-001235",
            idempotency_key="idem_0d7c4b1e9a2f6c3b8e5d",
            source_event_id=_KYC_REQUESTED_ID,
        ),
        "kyc.refused": KycRefused(
            customer_id="CUST-000123",
            reason_code="document_expired",
            message="document 1 of 1 (PASSPORT) expired before the request date 2024-01-15",
            refused_at=_OCCURRED_AT,
            source_event_id=_KYC_REQUESTED_ID,
        ),
    }
)
"""A valid payload of every event type."""

EXAMPLE_SOURCES: Mapping[str, str] = MappingProxyType(
    {
        "policy": "policy-admin",
        "premium": "billing-system",
        "refund": "billing-system",
        "customer": "crm",
        "claim": "claims-system",
        "payment": "processors/payments",
        "kyc": "processors/kyc",
    }
)
"""The ``source`` the examples use, by the event type's first word."""


def example_event(event_type: str, *, correlation_id: str | None = "corr-7f3a9c") -> Event:
    """A valid, deterministic ``event_type`` event with realistic data."""
    data = EXAMPLE_PAYLOADS[event_type]
    return Event(
        event_id=uuid5(_NAMESPACE, event_type),
        event_type=event_type,
        source=EXAMPLE_SOURCES[event_type.partition(".")[0]],
        occurred_at=_OCCURRED_AT,
        subject=data.aggregate_id,
        correlation_id=correlation_id,
        data=data,
    )
