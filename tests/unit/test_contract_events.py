"""Payload models and the envelope: what a valid event is."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from processors.contract import (
    EVENT_TOPICS,
    EVENT_TYPES,
    PII_FIELDS,
    Address,
    ClaimData,
    Event,
    EventData,
    KycRequested,
    PaymentMethod,
    PolicyData,
    PremiumDue,
    payload_model,
    topic_for,
)
from processors.contract.examples import EXAMPLE_PAYLOADS, example_event
from processors.errors import UnknownEventType

ALL_TYPES = sorted(EVENT_TYPES)


def payload(event_type: str, **changes: Any) -> dict[str, Any]:
    """The example payload of ``event_type`` as a mapping, with some fields changed."""
    return {**EXAMPLE_PAYLOADS[event_type].model_dump(), **changes}


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.value.errors()]


# --- registry ------------------------------------------------------------------------------


def test_every_event_type_of_the_contract_is_registered() -> None:
    assert set(EVENT_TYPES) == {
        "policy.issued", "policy.renewed", "policy.endorsed", "policy.cancelled",
        "premium.due", "refund.requested",
        "customer.created", "customer.kyc_requested",
        "claim.reported", "claim.reserved", "claim.paid", "claim.settled", "claim.closed",
        "payment.completed", "payment.pending", "payment.failed", "payment.confirmed",
        "kyc.approved", "kyc.review", "kyc.rejected", "kyc.pending", "kyc.refused",
    }  # fmt: skip
    assert len(set(EVENT_TYPES.values())) == len(EVENT_TYPES)  # one model per type


def test_payload_model_lookup() -> None:
    assert payload_model("premium.due") is PremiumDue
    with pytest.raises(UnknownEventType) as exc:
        payload_model("policy.teleported")
    assert exc.value.reason == "unknown event type 'policy.teleported'"


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        ("policy.cancelled", "insurance.policy.events"),
        ("refund.requested", "insurance.billing.events"),
        ("customer.kyc_requested", "insurance.customer.events"),
        ("claim.settled", "insurance.claim.events"),
        ("payment.failed", "integrations.payment.results"),
    ],
)
def test_topics(event_type: str, topic: str) -> None:
    assert topic_for(event_type) == topic


def test_every_event_type_has_a_topic() -> None:
    assert EVENT_TOPICS.keys() == EVENT_TYPES.keys()
    with pytest.raises(UnknownEventType):
        topic_for("nope")


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_examples_are_valid_and_keyed_by_their_aggregate(event_type: str) -> None:
    event = example_event(event_type)
    assert type(event.data) is EVENT_TYPES[event_type]
    field = {
        "policy": "policy_id",
        "premium": "policy_id",
        "refund": "policy_id",
        "payment": "policy_id",
        "kyc": "customer_id",
    }.get(event_type.partition(".")[0], "customer_id" if event_type.startswith("customer") else "claim_id")
    assert event.data.aggregate_field == field
    assert event.subject == getattr(event.data, field)
    assert Event.model_validate(event.model_dump()) == event


# --- envelope -------------------------------------------------------------------------------


def test_create_fills_id_and_time() -> None:
    before = datetime.now(UTC)
    event = Event.create(
        "premium.due",
        subject="POL-2024-001234",
        data=EXAMPLE_PAYLOADS["premium.due"],
        source="billing-system",
    )
    assert isinstance(event.event_id, UUID)
    assert event.event_id.version == 4
    assert event.occurred_at.tzinfo is UTC
    assert before <= event.occurred_at <= datetime.now(UTC)
    assert event.schema_version == 1
    assert event.correlation_id is None
    assert event.key == b"POL-2024-001234"
    other = Event.create("premium.due", subject="POL-2024-001234", data=event.data, source="billing-system")
    assert other.event_id != event.event_id


def test_create_refuses_unknown_event_types() -> None:
    with pytest.raises(UnknownEventType):
        Event.create("policy.teleported", subject="P", data=EXAMPLE_PAYLOADS["policy.issued"], source="x")


def test_data_must_be_the_payload_of_the_event_type() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.create(
            "policy.renewed", subject="POL-2024-001234", data=EXAMPLE_PAYLOADS["policy.issued"], source="x"
        )
    assert errors_of(exc) == [
        ("", "data is a PolicyIssued payload but event_type 'policy.renewed' needs PolicyRenewed")
    ]


def test_subject_must_be_the_aggregate_id() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.create("premium.due", subject="POL-OTHER", data=EXAMPLE_PAYLOADS["premium.due"], source="x")
    assert errors_of(exc) == [("", "subject must equal data.policy_id (the aggregate id and Kafka key)")]


def envelope(**changes: Any) -> dict[str, Any]:
    return {**example_event("premium.due").model_dump(), **changes}


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(occurred_at=datetime(2024, 1, 15, 10, 30)))
    assert errors_of(exc) == [
        (
            "occurred_at",
            "must be timezone-aware: naive datetimes are rejected (send UTC, e.g. 2024-01-15T10:30:00Z)",
        )
    ]


def test_aware_datetimes_are_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    event = Event.model_validate(envelope(occurred_at=datetime(2024, 1, 15, 11, 30, tzinfo=paris)))
    assert event.occurred_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC


def test_only_schema_version_1_is_understood() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(schema_version=2))
    assert errors_of(exc) == [("schema_version", "unsupported schema_version 2 (this build reads 1)")]


def test_mapping_data_is_validated_as_the_registered_payload_with_full_paths() -> None:
    raw = envelope(data=payload("premium.due", amount="1185.12345", instalment_id=None))
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(raw)
    assert sorted(errors_of(exc)) == [
        ("data.amount", "1185.12345 has 5 decimal places; USD allows at most 2"),
        ("data.instalment_id", "Input should be a valid string"),
    ]
    event = Event.model_validate(envelope(data=payload("premium.due")))
    assert type(event.data) is PremiumDue


def test_unknown_event_type_in_a_mapping() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(event_type="policy.teleported"))
    assert errors_of(exc) == [("", "unknown event type 'policy.teleported'")]


def test_events_are_frozen_and_refuse_unknown_fields() -> None:
    event = example_event("premium.due")
    with pytest.raises(ValidationError):
        event.subject = "POL-X"
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(specversion="1.0"))
    assert errors_of(exc) == [("specversion", "Extra inputs are not permitted")]
    with pytest.raises(ValidationError) as exc:
        PremiumDue.model_validate(payload("premium.due", card_number="4242424242424242"))
    assert errors_of(exc) == [("card_number", "Extra inputs are not permitted")]


@pytest.mark.parametrize("field", ["subject", "source"])
def test_envelope_strings_must_not_be_empty(field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(**{field: ""}))
    assert [loc for loc, _ in errors_of(exc)] == [field]


def test_data_as() -> None:
    event = example_event("premium.due")
    assert event.data_as(PremiumDue).amount == Decimal("1185.50")
    with pytest.raises(TypeError, match=r"premium\.due carries PremiumDue, not KycRequested"):
        event.data_as(KycRequested)


# --- payload rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["policy.issued", "policy.renewed", "policy.endorsed", "policy.cancelled"]
)
def test_policy_period_must_be_positive(event_type: str) -> None:
    model = EVENT_TYPES[event_type]
    with pytest.raises(ValidationError) as exc:
        model.model_validate(payload(event_type, expiry_date=date(2024, 1, 15)))
    assert errors_of(exc) == [("", "expiry_date must be after inception_date")]
    assert isinstance(EXAMPLE_PAYLOADS[event_type], PolicyData)


@pytest.mark.parametrize("event_type", ["policy.endorsed", "policy.cancelled"])
def test_changes_take_effect_within_the_policy_period(event_type: str) -> None:
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES[event_type].model_validate(payload(event_type, effective_date=date(2025, 3, 1)))
    assert errors_of(exc) == [("", "effective_date must lie between inception_date and expiry_date")]


def test_return_premium_is_negative() -> None:
    cancelled = EXAMPLE_PAYLOADS["policy.cancelled"]
    assert cancelled.premium_change == Decimal("-7113.00")  # type: ignore[attr-defined]


def test_territory_is_optional_and_an_iso_country() -> None:
    assert EVENT_TYPES["policy.issued"].model_validate(payload("policy.issued", territory=None))
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES["policy.issued"].model_validate(payload("policy.issued", territory="UK"))
    assert errors_of(exc) == [("territory", "must be an ISO 3166-1 alpha-2 country code such as 'US'")]


@pytest.mark.parametrize("kind", ["CREDIT_CARD", "DEBIT_CARD"])
def test_cards_need_a_token(kind: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PaymentMethod(type=kind)  # type: ignore[arg-type]
    assert errors_of(exc) == [("", f"card_token is required for {kind}")]


@pytest.mark.parametrize("kind", ["BANK_TRANSFER", "DIRECT_DEBIT"])
def test_other_methods_carry_no_token(kind: str) -> None:
    assert PaymentMethod(type=kind).card_token is None  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as exc:
        PaymentMethod(type=kind, card_token="tok_visa_4242")  # type: ignore[arg-type]
    assert errors_of(exc) == [("", f"card_token is only allowed for card payments, not {kind}")]


@pytest.mark.parametrize("number", ["4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242"])
def test_card_numbers_are_never_accepted_as_tokens(number: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PaymentMethod(type="CREDIT_CARD", card_token=number)
    assert errors_of(exc) == [("card_token", "must be a payment gateway token, never a card number")]
    assert number not in str(exc.value)


def test_premium_due_amount_must_be_positive() -> None:
    with pytest.raises(ValidationError) as exc:
        PremiumDue.model_validate(payload("premium.due", amount="0.00"))
    assert errors_of(exc) == [("amount", "must be greater than 0, got 0.00")]


def test_kyc_needs_at_least_one_document() -> None:
    with pytest.raises(ValidationError) as exc:
        KycRequested.model_validate(payload("customer.kyc_requested", documents=[]))
    assert errors_of(exc) == [("documents", "List should have at least 1 item after validation, not 0")]


def test_kyc_consent_timestamp_is_utc() -> None:
    raw = payload("customer.kyc_requested")
    raw["consent"] = {**raw["consent"], "timestamp": "2024-01-15T12:30:00+02:00"}
    kyc = KycRequested.model_validate(raw)
    assert kyc.consent.timestamp == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    raw["consent"] = {**raw["consent"], "timestamp": "2024-01-15T12:30:00"}
    with pytest.raises(ValidationError) as exc:
        KycRequested.model_validate(raw)
    assert [loc for loc, _ in errors_of(exc)] == ["consent.timestamp"]


def test_date_of_birth_is_in_the_past() -> None:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES["customer.created"].model_validate(payload("customer.created", date_of_birth=tomorrow))
    assert errors_of(exc) == [("", "date_of_birth must be in the past")]


def test_email_is_checked_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES["customer.created"].model_validate(payload("customer.created", email="jane.example.com"))
    assert errors_of(exc) == [("email", "must be an e-mail address")]
    assert "jane.example.com" not in str(exc.value)


@pytest.mark.parametrize(
    ("event_type", "changes", "message"),
    [
        (
            "claim.reported",
            {"status": "SETTLED"},
            "status SETTLED is not valid for this event (expected one of: OPEN)",
        ),
        (
            "claim.closed",
            {"status": "OPEN"},
            "status OPEN is not valid for this event (expected one of: CLOSED)",
        ),
        ("claim.settled", {"settled_amount": None}, "claim.settled needs a settled_amount"),
        ("claim.paid", {"paid_amount": "0"}, "claim.paid needs a paid_amount greater than 0"),
        ("claim.paid", {"paid_to_date": "5000.00"}, "paid_amount 10000.00 exceeds paid_to_date 5000.00"),
    ],
)
def test_claim_rules(event_type: str, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES[event_type].model_validate(payload(event_type, **changes))
    assert errors_of(exc) == [("", message)]


@pytest.mark.parametrize("field", ["reserve_amount", "paid_amount", "paid_to_date", "settled_amount"])
def test_claim_amounts_are_not_negative(field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES["claim.closed"].model_validate(payload("claim.closed", **{field: "-1.00"}))
    assert errors_of(exc)[0] == (field, "must not be negative, got -1.00")


def test_claim_events_share_a_base() -> None:
    claims = [model for event_type, model in EVENT_TYPES.items() if event_type.startswith("claim.")]
    assert len(claims) == 5
    assert all(issubclass(model, ClaimData) for model in claims)
    assert all(model.model_fields.keys() == ClaimData.model_fields.keys() for model in claims)


def test_payment_results_reference_their_input() -> None:
    completed = EXAMPLE_PAYLOADS["payment.completed"]
    assert completed.source_event_id == example_event("premium.due").event_id  # type: ignore[attr-defined]
    with pytest.raises(ValidationError) as exc:
        EVENT_TYPES["payment.failed"].model_validate(payload("payment.failed", operation="VOID"))
    assert errors_of(exc) == [("operation", "Input should be 'CHARGE' or 'REFUND'")]


@pytest.mark.parametrize("value", ["POL 2024", "", "x" * 129])
def test_identifiers_are_short_and_without_whitespace(value: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PremiumDue.model_validate(payload("premium.due", instalment_id=value))
    assert [loc for loc, _ in errors_of(exc)] == ["instalment_id"]


# --- personal data ------------------------------------------------------------------------------


def test_personal_fields_are_known() -> None:
    assert {
        "full_name", "date_of_birth", "email", "card_token", "billing_address",
        "line1", "line2", "city", "postal_code", "document_number", "front_image_url",
    } <= PII_FIELDS  # fmt: skip
    assert not {"policy_id", "amount", "currency", "customer_id", "event_id"} & PII_FIELDS


@pytest.mark.parametrize(
    "event_type", ["premium.due", "refund.requested", "customer.created", "customer.kyc_requested"]
)
def test_reprs_leave_personal_data_out(event_type: str) -> None:
    event = example_event(event_type)
    text = repr(event) + str(event)
    for secret in ("tok_visa_4242", "123 Main St", "Springfield", "62701", "Jane Example", "jane@example.com",
                   "1985", "AB123456", "passport_front"):  # fmt: skip
        assert secret not in text
    assert event_type in text


def test_address_repr_is_empty_of_data() -> None:
    address = Address(line1="1 High St", city="Leeds", postal_code="LS1 4AP", country="GB")
    assert "High" not in repr(address)
    assert "LS1" not in repr(address)


def test_every_payload_model_is_a_frozen_event_data() -> None:
    for model in EVENT_TYPES.values():
        assert issubclass(model, EventData)
        assert model.model_config.get("frozen") is True
        assert model.model_config.get("extra") == "forbid"
    due = EXAMPLE_PAYLOADS["premium.due"]
    assert isinstance(due, PremiumDue)
    with pytest.raises(ValidationError):
        due.amount = Decimal(1)


def test_event_ids_are_uuids() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(envelope(event_id="not-a-uuid"))
    assert [loc for loc, _ in errors_of(exc)] == ["event_id"]
    assert Event.model_validate(envelope(event_id=str(uuid4()))).event_id.version == 4


def test_public_names_are_exported_and_sorted() -> None:
    import processors.contract as contract

    assert contract.__all__ == sorted(contract.__all__, key=lambda name: (not name.isupper(), name))
    assert len(set(contract.__all__)) == len(contract.__all__)
    for name in contract.__all__:
        assert getattr(contract, name) is not None
    needed = {"Codec", "ContentType", "Headers", "Event", "EventData", "EVENT_TYPES", "payload_model",
              "LocalSchemaIds", "SchemaRegistryClient", "SchemaIdSource", "Money"}  # fmt: skip
    assert needed <= set(contract.__all__)
