"""Provider callback → record to publish: the payment confirmation mapping and the KYC hook."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from processors.adapters import jsonwire
from processors.api.inbound import (
    KYC_PROVIDER,
    PAYMENT_GATEWAY,
    InboundMessage,
    KycCallbackHandler,
    PaymentConfirmationHandler,
    derived_uuid,
)
from processors.apps.registry import inbound_handlers
from processors.contract import Codec, ContentType, Event, LocalSchemaIds, PaymentConfirmed
from processors.errors import ValidationFailed
from processors.settings import Settings

RESULTS = "integrations.payment.results"


def callback(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "payment_id": "PMT-2024-0000000000AB",
        "status": "COMPLETED",
        "gateway_reference": "ch_0123456789abcdef01234567",
        "amount": Decimal("1185.50"),
        "currency": "USD",
        "transaction_type": "CHARGE",
        "policy_id": "POL-2024-000001",
        "reference_id": "POL-2024-000001-I001",
        "idempotency_key": "idem_0123456789",
        "processed_at": "2024-06-10T06:13:20Z",
        "receipt_url": "https://receipts.sandbox.invalid/ch_0123456789abcdef01234567",
    }
    data.update(data_changes)
    data = {k: v for k, v in data.items() if v is not None}
    return {"event_id": "evt_1", "event_type": "payment.confirmed", "data": data}


def convert(payload: Mapping[str, Any], event_id: str = "evt_1") -> InboundMessage | None:
    return PaymentConfirmationHandler(RESULTS)(payload, provider_event_id=event_id)


def test_a_confirmation_becomes_payment_confirmed_keyed_by_policy() -> None:
    message = convert(callback())

    assert message is not None
    assert message.topic == RESULTS
    assert message.key == b"POL-2024-000001"
    event = message.value
    assert isinstance(event, Event)
    assert event.event_type == "payment.confirmed"
    assert event.subject == "POL-2024-000001"
    data = event.data_as(PaymentConfirmed)
    assert data.amount == Decimal("1185.50")
    assert data.currency == "USD"
    assert data.operation == "CHARGE"
    assert data.payment_id == "PMT-2024-0000000000AB"
    assert data.gateway_reference == "ch_0123456789abcdef01234567"
    assert data.reference_id == "POL-2024-000001-I001"
    assert data.idempotency_key == "idem_0123456789"
    assert data.processed_at == datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)
    assert event.occurred_at == data.processed_at
    assert ("x-inbound-provider", b"payment-gateway") in message.headers


def test_ids_are_derived_from_the_provider_event_id_and_stable() -> None:
    first, again, other = convert(callback()), convert(callback()), convert(callback(), "evt_2")
    assert first is not None
    assert again is not None
    assert other is not None
    assert isinstance(first.value, Event)
    assert isinstance(again.value, Event)
    assert isinstance(other.value, Event)

    source = first.value.data_as(PaymentConfirmed).source_event_id
    assert source == derived_uuid(PAYMENT_GATEWAY, "evt_1")
    assert source.version == 5
    assert first.value.event_id == again.value.event_id
    assert first.value.event_id != source
    assert other.value.event_id != first.value.event_id
    assert UUID(str(first.value.event_id)).version == 5


def test_a_whole_amount_sent_as_a_json_integer_is_read_exactly() -> None:
    payload = jsonwire.loads(jsonwire.dumps(callback(amount=Decimal(100))))
    assert isinstance(payload["data"]["amount"], int)

    message = convert(payload)

    assert message is not None
    assert isinstance(message.value, Event)
    assert message.value.data_as(PaymentConfirmed).amount == Decimal("100.00")


def test_a_refund_confirmation_keeps_its_operation() -> None:
    message = convert(callback(transaction_type="REFUND", reference_id="POL-2024-000001-R001"))

    assert message is not None
    assert isinstance(message.value, Event)
    assert message.value.data_as(PaymentConfirmed).operation == "REFUND"


def test_the_event_encodes_with_the_contract_codec() -> None:
    message = convert(callback())
    assert message is not None
    assert isinstance(message.value, Event)
    codec = Codec(LocalSchemaIds())

    for content_type in ContentType:
        value, headers = codec.encode(message.value, content_type)
        assert codec.decode(value, headers) == message.value


def test_other_event_types_are_ignored() -> None:
    assert convert({**callback(), "event_type": "payment.refund_settled"}) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"data": {}}, "event_type is required"),
        ({"event_type": "payment.confirmed"}, "data is required"),
        ({"event_type": "payment.confirmed", "data": []}, "data is required"),
        (callback(status="PENDING"), "data.status must be COMPLETED"),
        (callback(policy_id=None), "data.policy_id"),
        (callback(amount=1185.5), "data.amount"),
        (callback(amount="-5.00"), "data.amount"),
        (callback(currency="usd"), "data.currency"),
        (callback(processed_at="2024-06-10T06:13:20"), "data.processed_at"),
        (callback(transaction_type="CAPTURE"), "data.transaction_type"),
        (callback(reference_id=None), "data.reference_id"),
    ],
)
def test_malformed_confirmations_are_refused_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        convert(payload)
    assert reason in info.value.reason


def test_the_reason_never_quotes_the_values() -> None:
    with pytest.raises(ValidationFailed) as info:
        convert(callback(policy_id="POL WITH SPACES", amount="12.345"))

    assert "POL WITH SPACES" not in info.value.reason
    assert "12.345" not in info.value.reason


# -- KYC ------------------------------------------------------------------------------------------


def test_the_registry_serves_the_kyc_apps_own_mapping_on_its_results_topic() -> None:
    settings = Settings(kyc={"results_topic": "kyc.results"})
    handler = inbound_handlers(settings)[KYC_PROVIDER]()
    assert isinstance(handler, KycCallbackHandler)
    assert handler.results_topic == "kyc.results"
    payments = inbound_handlers(settings)[PAYMENT_GATEWAY]()
    assert isinstance(payments, PaymentConfirmationHandler)
    assert payments.results_topic == settings.payments.results_topic


def test_the_kyc_results_topic_of_the_api_settings_wins() -> None:
    settings = Settings(kyc={"results_topic": "kyc.results"}, api={"kyc_results_topic": "elsewhere"})
    handler = inbound_handlers(settings)[KYC_PROVIDER]()
    assert isinstance(handler, KycCallbackHandler)
    assert handler.results_topic == "elsewhere"


def test_the_kyc_mapping_is_called_and_its_event_published_keyed_by_its_subject() -> None:
    decision = convert(callback())
    assert decision is not None
    assert isinstance(decision.value, Event)
    seen: list[tuple[Mapping[str, Any], str]] = []

    def decision_from_callback(payload: Mapping[str, Any], *, provider_event_id: str) -> Event:
        seen.append((payload, provider_event_id))
        assert isinstance(decision.value, Event)
        return decision.value

    handler = KycCallbackHandler(decision_from_callback, "kyc.results")

    message = handler({"event_id": "kyc_1"}, provider_event_id="kyc_1")

    assert seen == [({"event_id": "kyc_1"}, "kyc_1")]
    assert message is not None
    assert message.topic == "kyc.results"
    assert message.key == decision.value.key
    assert ("x-inbound-provider", b"kyc-provider") in message.headers


def test_a_kyc_mapping_that_takes_only_the_payload_is_supported() -> None:
    raw = InboundMessage(topic="kyc.results", key=b"CUST-1", value=b"{}")
    handler = KycCallbackHandler(lambda payload: raw, "kyc.results")

    assert handler({"x": 1}, provider_event_id="kyc_1") is raw


def test_a_kyc_mapping_error_is_a_malformed_callback() -> None:
    def decision_from_callback(payload: Mapping[str, Any]) -> Event:
        raise ValidationFailed("customer_id is required")

    handler = KycCallbackHandler(decision_from_callback, "kyc.results")

    with pytest.raises(ValidationFailed, match="customer_id is required"):
        handler({}, provider_event_id="kyc_1")
