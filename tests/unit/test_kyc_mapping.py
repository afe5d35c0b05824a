"""The KYC app's pure mapping: pre-checks, provider requests, decisions, pending, refusals, callbacks."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from processors.adapters import jsonwire
from processors.adapters.kyc_provider import KycOutcome, ProviderCheck, ProviderDecision, ProviderMatch
from processors.apps.kyc import mapping
from processors.contract import (
    Codec,
    ContentType,
    Event,
    KycApproved,
    KycConsent,
    KycDocument,
    KycPending,
    KycRefused,
    KycRejected,
    KycRequested,
    KycReview,
)
from processors.errors import ValidationFailed

TODAY = date(2024, 1, 15)
WHEN = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)


def document(
    number: str = "AB123456", *, expiry: date | None = date(2030, 1, 1), kind: str = "PASSPORT"
) -> KycDocument:
    return KycDocument(
        type=kind,  # type: ignore[arg-type]
        document_number=number,
        issuing_country="US",
        expiry_date=expiry,
        front_image_url="https://storage.example.com/docs/front.jpg",
    )


def requested(
    *documents: KycDocument, terms: bool = True, processing: bool = True, customer: str = "CUST-000001"
) -> Event:
    data = KycRequested(
        customer_id=customer,
        verification_type="IDENTITY",
        documents=list(documents) or [document()],
        consent=KycConsent(terms_accepted=terms, data_processing_accepted=processing, timestamp=WHEN),
    )
    return Event.create("customer.kyc_requested", subject=customer, data=data, source="crm")


def decision(status: str = "APPROVED", **changes: Any) -> ProviderDecision:
    values: dict[str, Any] = {
        "verification_id": "VRF-2024-000001",
        "status": status,
        "risk_score": 15,
        "risk_level": "LOW",
        "checks": (
            ProviderCheck("DOCUMENT_AUTHENTICITY", "PASSED", Decimal("0.98")),
            ProviderCheck("FACE_MATCH", "PASSED", Decimal("0.95")),
            ProviderCheck("SANCTIONS_SCREENING", "PASSED"),
            ProviderCheck("PEP_CHECK", "PASSED"),
        ),
        "verified_at": WHEN,
    }
    values.update(changes)
    return ProviderDecision(**values)


# -- idempotency key -------------------------------------------------------------------------------


def test_idempotency_key_is_stable_and_depends_on_event_app_and_operation() -> None:
    event_id = uuid.UUID("0b4f3e0e-0000-4000-8000-000000000001")
    key = mapping.idempotency_key(event_id)
    assert key == mapping.idempotency_key(event_id, "kyc", "VERIFY")
    assert key.startswith("idem_")
    assert len(key) == 45
    others = {
        mapping.idempotency_key(uuid.uuid4()),
        mapping.idempotency_key(event_id, "payments"),
        mapping.idempotency_key(event_id, "kyc", "RECHECK"),
    }
    assert key not in others
    assert len(others) == 3


# -- pre-checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terms", "processing", "named"),
    [
        (False, True, "terms_accepted"),
        (True, False, "data_processing_accepted"),
        (False, False, "terms_accepted, data_processing_accepted"),
    ],
)
def test_missing_consent_is_refused_and_named(terms: bool, processing: bool, named: str) -> None:
    refusal = mapping.precheck(
        requested(terms=terms, processing=processing).data_as(KycRequested), today=TODAY
    )
    assert refusal is not None
    assert refusal.code == "consent_missing"
    assert refusal.message == f"consent not given: {named}"


@pytest.mark.parametrize(
    ("expiry", "refused"),
    [
        (date(2024, 1, 14), True),  # expired the day before the request
        (date(2020, 6, 30), True),
        (date(2024, 1, 15), False),  # valid through its expiry date
        (date(2030, 1, 1), False),
        (None, False),  # a document without an expiry date never expires
    ],
)
def test_a_document_expired_on_the_request_date_is_refused(expiry: date | None, refused: bool) -> None:
    event = requested(document("AB1", expiry=expiry, kind="NATIONAL_ID"))
    refusal = mapping.precheck(event.data_as(KycRequested), today=TODAY)
    if not refused:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.code == "document_expired"
    assert refusal.message == "document 1 of 1 (NATIONAL_ID) expired before the request date 2024-01-15"


def test_every_expired_document_is_named_by_position_without_its_number() -> None:
    event = requested(
        document("GOOD1"),
        document("OLD22", expiry=date(2023, 1, 1), kind="DRIVING_LICENCE"),
        document("OLD33", expiry=date(2022, 1, 1)),
    )
    refusal = mapping.precheck(event.data_as(KycRequested), today=TODAY)
    assert refusal is not None
    assert refusal.message.startswith("document 2 of 3 (DRIVING_LICENCE); document 3 of 3 (PASSPORT) expired")
    assert "OLD" not in refusal.message


def test_consent_is_checked_before_expiry() -> None:
    event = requested(document(expiry=date(2020, 1, 1)), terms=False)
    refusal = mapping.precheck(event.data_as(KycRequested), today=TODAY)
    assert refusal is not None
    assert refusal.code == "consent_missing"


def test_refused_event_says_why_and_points_at_the_request() -> None:
    event = requested(terms=False, customer="CUST-000042")
    refusal = mapping.Refusal("consent_missing", "consent not given: terms_accepted")
    result = mapping.refused_event(event, refusal, now=WHEN)
    assert result.event_type == "kyc.refused"
    assert result.subject == "CUST-000042"
    data = result.data_as(KycRefused)
    assert (data.reason_code, data.message) == ("consent_missing", "consent not given: terms_accepted")
    assert data.refused_at == WHEN
    assert data.source_event_id == event.event_id
    assert result.event_id == mapping.refused_event(event, refusal, now=WHEN).event_id


# -- request ---------------------------------------------------------------------------------------


def test_request_is_the_seed_shape_with_our_reference() -> None:
    event = requested(document("AB123456", expiry=date(2028, 6, 15)))
    request = mapping.kyc_request(event)
    body = jsonwire.loads(jsonwire.dumps(request.body()))
    assert body == {
        "verification_type": "IDENTITY",
        "documents": [
            {
                "type": "PASSPORT",
                "document_number": "AB123456",
                "issuing_country": "US",
                "expiry_date": "2028-06-15",
                "front_image_url": "https://storage.example.com/docs/front.jpg",
            }
        ],
        "consent": {
            "terms_accepted": True,
            "data_processing_accepted": True,
            "timestamp": "2024-01-15T10:35:00Z",
        },
        "client_reference": str(event.event_id),
    }
    assert "AB123456" not in repr(request)
    assert "front.jpg" not in repr(request)


def test_kyc_request_refuses_another_event_type() -> None:
    created = Event.model_validate(
        {
            "event_id": uuid.uuid4(),
            "event_type": "customer.created",
            "source": "crm",
            "occurred_at": WHEN,
            "subject": "CUST-1",
            "data": {
                "customer_id": "CUST-1",
                "full_name": "Jane Example",
                "date_of_birth": "1985-04-12",
                "email": "jane@example.com",
                "country": "US",
            },
        }
    )
    with pytest.raises(ValidationFailed, match=r"cannot handle customer\.created"):
        mapping.kyc_request(created)


# -- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "event_type", "model"),
    [
        ("APPROVED", "kyc.approved", KycApproved),
        ("REVIEW", "kyc.review", KycReview),
        ("REJECTED", "kyc.rejected", KycRejected),
    ],
)
def test_each_decision_status_has_its_event_type(status: str, event_type: str, model: type[Any]) -> None:
    event = requested(customer="CUST-000007")
    key = mapping.idempotency_key(event.event_id)
    result = mapping.result_event(event, key, KycOutcome.decided(decision(status)))
    assert result.event_type == event_type
    assert type(result.data) is model
    assert result.subject == "CUST-000007"
    assert result.data.status == status  # type: ignore[attr-defined]
    assert result.data.idempotency_key == key  # type: ignore[attr-defined]
    assert result.data.source_event_id == event.event_id  # type: ignore[attr-defined]
    assert result.occurred_at == WHEN
    assert result.correlation_id == str(event.event_id)


def test_decision_keeps_checks_matches_and_exact_scores() -> None:
    event = requested()
    matches = (ProviderMatch("OFAC-SDN", Decimal("0.97"), name="Listed Person"),)
    provider = decision(
        "REJECTED",
        risk_score=96,
        risk_level="HIGH",
        checks=(
            ProviderCheck("SANCTIONS_SCREENING", "FAILED", None, matches),
            ProviderCheck("FACE_MATCH", "PASSED", Decimal("0.951234")),  # more places than the contract
        ),
    )
    result = mapping.result_event(event, "idem_x", KycOutcome.decided(provider))
    data = result.data_as(KycRejected)
    assert (data.risk_score, data.risk_level) == (96, "HIGH")
    sanctions, face = data.checks
    assert sanctions.status == "FAILED"
    assert sanctions.matches[0].list_name == "OFAC-SDN"
    assert sanctions.matches[0].score == Decimal("0.97")
    assert sanctions.matches[0].name == "Listed Person"
    assert "Listed Person" not in repr(data)
    assert face.confidence == Decimal("0.9512")  # rounded half-even to 4 places
    for content_type in ContentType:
        value, headers = Codec().encode(result, content_type)
        assert Codec().decode(value, headers) == result


def test_pending_answer_becomes_kyc_pending() -> None:
    event = requested(customer="CUST-000009")
    result = mapping.result_event(event, "idem_p", KycOutcome.pending("VRF-P-1"), now=WHEN)
    assert result.event_type == "kyc.pending"
    data = result.data_as(KycPending)
    assert (data.customer_id, data.verification_id, data.idempotency_key) == (
        "CUST-000009",
        "VRF-P-1",
        "idem_p",
    )
    assert data.source_event_id == event.event_id


def test_a_decision_that_does_not_fit_the_contract_is_a_validation_failure() -> None:
    with pytest.raises(ValidationFailed, match="verification_id") as info:
        mapping.result_event(requested(), "idem_x", KycOutcome.decided(decision(verification_id="has space")))
    assert "has space" not in info.value.reason


# -- callbacks (the asynchronous path) -------------------------------------------------------------


def callback_body(event: Event, key: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "verification_id": "VRF-2024-000001",
        "customer_id": event.subject,
        "status": "REVIEW",
        "risk_score": 55,
        "risk_level": "MEDIUM",
        "checks": [
            {"type": "DOCUMENT_AUTHENTICITY", "status": "PASSED", "confidence": Decimal("0.98")},
            {"type": "FACE_MATCH", "status": "PASSED", "confidence": Decimal("0.95")},
            {"type": "SANCTIONS_SCREENING", "status": "PASSED", "matches": []},
            {
                "type": "PEP_CHECK",
                "status": "REVIEW",
                "matches": [{"name": "Alex Example", "list_name": "PEP-GLOBAL", "score": Decimal("0.91")}],
            },
        ],
        "verified_at": "2024-01-15T10:35:00Z",
        "idempotency_key": key,
        "client_reference": str(event.event_id),
    }
    data.update(changes)
    return data


def test_callback_gives_the_same_decision_event_as_a_synchronous_answer() -> None:
    event = requested()
    key = mapping.idempotency_key(event.event_id)
    data = callback_body(event, key)
    envelope = {"event_id": "evt_1", "event_type": "verification.completed", "created_at": "x", "data": data}
    from_callback = mapping.decision_from_callback(jsonwire.loads(jsonwire.dumps(envelope)))
    assert from_callback is not None
    assert from_callback.event_type == "kyc.review"
    review = from_callback.data_as(KycReview)
    assert review.source_event_id == event.event_id
    assert review.checks[3].matches[0].list_name == "PEP-GLOBAL"
    bare = mapping.decision_from_callback(data)
    assert bare == from_callback


def test_duplicate_callbacks_give_identical_events() -> None:
    event = requested()
    data = callback_body(event, "idem_dup")
    first = mapping.decision_from_callback({"event_type": "verification.completed", "data": data})
    second = mapping.decision_from_callback({"event_type": "verification.completed", "data": dict(data)})
    assert first is not None
    assert first == second


@pytest.mark.parametrize(
    "payload",
    [
        {"event_type": "verification.started", "data": {}},
        {"status": "PENDING", "verification_id": "VRF-1"},
        {"event_type": "verification.completed", "data": {"status": "PENDING"}},
    ],
)
def test_callbacks_without_a_decision_publish_nothing(payload: dict[str, Any]) -> None:
    assert mapping.decision_from_callback(payload) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"client_reference": None}, "client_reference is required"),
        ({"client_reference": "not-a-uuid"}, "client_reference must be a UUID"),
        ({"customer_id": ""}, "customer_id is required"),
        ({"idempotency_key": 7}, "idempotency_key is required"),
        ({"status": "MAYBE"}, "status must be one of"),
        ({"risk_score": 101}, "risk_score must lie between 0 and 100"),
        ({"verified_at": None}, "verified_at is required"),
        ({"verified_at": "yesterday-ish"}, "verified_at must be an ISO 8601 timestamp"),
        ({"checks": [{"type": "RETINA_SCAN", "status": "PASSED"}]}, "checks[0].type must be one of"),
    ],
)
def test_malformed_callbacks_are_refused_naming_the_field(change: dict[str, Any], reason: str) -> None:
    event = requested()
    body = callback_body(event, "idem_bad", **change)
    with pytest.raises(ValidationFailed) as info:
        mapping.decision_from_callback({"event_type": "verification.completed", "data": body})
    assert reason in info.value.reason
    assert "MAYBE" not in info.value.reason
    assert "RETINA" not in info.value.reason
    assert "yesterday" not in info.value.reason


def test_data_must_be_an_object() -> None:
    with pytest.raises(ValidationFailed, match="data must be an object"):
        mapping.decision_from_callback({"event_type": "verification.completed", "data": [1]})
