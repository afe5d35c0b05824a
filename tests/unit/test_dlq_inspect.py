"""What ``dlq show`` reveals: masked events, hex previews, and the summary ``dlq list`` prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from processors.contract import PII_FIELDS, Codec, ContentType, LocalSchemaIds
from processors.contract.examples import example_event
from processors.dlq import DeadLetter, describe_value, mask_pii
from processors.dlq.inspect import HEX_PREVIEW_BYTES, MASK, show_document
from processors.errors import ValidationFailed
from processors.runtime.failures import dead_letter
from processors.runtime.message import StaticMessage

CODEC = Codec(LocalSchemaIds())
NOW = datetime(2024, 5, 10, 12, tzinfo=UTC)


def test_mask_pii_replaces_values_at_any_depth() -> None:
    data = {
        "customer_id": "C-1",
        "full_name": "Jane Doe",
        "billing_address": {"line1": "1 Main St", "city": "Springfield"},
        "documents": [
            {"type": "PASSPORT", "document_number": "AB123"},
            {"type": "ID", "document_number": None},
        ],
        "nested": {"deeper": [{"email": "jane@example.com", "keep": 1}]},
    }
    assert mask_pii(data) == {
        "customer_id": "C-1",
        "full_name": MASK,
        "billing_address": MASK,
        "documents": [{"type": "PASSPORT", "document_number": MASK}, {"type": "ID", "document_number": MASK}],
        "nested": {"deeper": [{"email": MASK, "keep": 1}]},
    }
    assert data["full_name"] == "Jane Doe"  # the input is not modified


def test_the_contract_declares_the_fields_that_are_masked() -> None:
    assert {"full_name", "email", "document_number", "card_token", "date_of_birth"} <= PII_FIELDS


@pytest.mark.parametrize("fmt", [ContentType.AVRO, ContentType.JSON])
@pytest.mark.parametrize("event_type", ["customer.kyc_requested", "customer.created", "premium.due"])
def test_a_decodable_value_shows_the_event_without_personal_data(fmt: ContentType, event_type: str) -> None:
    event = example_event(event_type)
    value, headers = CODEC.encode(event, fmt)
    view = describe_value(value, tuple(headers), CODEC)
    assert view.decoded
    assert view.event_type == event_type
    assert view.event_id == str(event.event_id)
    assert view.subject == event.subject
    assert view.size == len(value)
    shown = json.dumps(view.as_dict())
    for secret in _personal_values(event.model_dump(mode="json")["data"]):
        assert secret not in shown, secret
    assert MASK in shown


def _personal_values(data: object, inside: bool = False) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(_personal_values(value, inside or key in PII_FIELDS))
    elif isinstance(data, list):
        for item in data:
            found.extend(_personal_values(item, inside))
    elif inside and isinstance(data, str) and len(data) > 3:
        found.append(data)
    return found


def test_the_examples_do_carry_personal_data_to_mask() -> None:
    data = example_event("customer.kyc_requested").model_dump(mode="json")["data"]
    assert "AB123456" in _personal_values(data)


def test_an_undecodable_value_shows_its_length_and_first_bytes_in_hex() -> None:
    value = bytes(range(256)) * 2
    view = describe_value(value, (("content-type", b"application/avro"),), CODEC)
    assert not view.decoded
    assert view.size == 512
    assert view.hex_preview == bytes(range(HEX_PREVIEW_BYTES)).hex(" ")
    assert view.decode_error is not None
    assert "unknown schema id" in view.decode_error
    assert view.as_dict()["decoded"] is False
    assert "data" not in view.as_dict()


def test_an_empty_value_is_described() -> None:
    view = describe_value(None, (), CODEC)
    assert (view.decoded, view.size, view.hex_preview) == (False, 0, "")
    assert view.decode_error == "empty message"


def test_show_document_lists_every_header_and_the_masked_value() -> None:
    event = example_event("customer.kyc_requested")
    value, headers = CODEC.encode(event, ContentType.JSON)
    source = StaticMessage("insurance.customer.events", 1, 5, b"CUST-000123", value, tuple(headers), 0)
    out = dead_letter(source, ValidationFailed("bad"), topic="dlq", app="kyc", group="g", attempts=1, now=NOW)
    record = DeadLetter.from_message(StaticMessage("dlq", 2, 9, out.key, out.value, tuple(out.headers), 0))
    document = show_document(record, describe_value(record.value, record.headers, CODEC))
    assert (document["partition"], document["offset"], document["key"]) == (2, 9, "CUST-000123")
    names = [h["name"] for h in document["headers"]]
    assert names == [name for name, _ in out.headers]
    assert {"name": "x-error-class", "value": "ValidationFailed"} in document["headers"]
    assert document["value"]["data"]["documents"][0]["document_number"] == MASK
    assert "AB123456" not in json.dumps(document)


def test_dead_letters_keep_values_out_of_repr_and_summary() -> None:
    record = DeadLetter(topic="dlq", partition=0, offset=1, key=b"K", value=b"secret-value", headers=())
    assert "secret-value" not in repr(record)
    assert "secret-value" not in json.dumps(record.summary())


def test_summary_of_a_runtime_dead_letter() -> None:
    source = StaticMessage("insurance.billing.events", 3, 42, b"POL-9", b"{}", (), 1_700_000_000_000)
    out = dead_letter(
        source, ValidationFailed("x" * 200), topic="dlq", app="payments", group="g", attempts=2, now=NOW
    )
    record = DeadLetter.from_message(StaticMessage("dlq", 1, 4, out.key, out.value, tuple(out.headers), 0))
    summary = record.summary(message_chars=60)
    assert summary == {
        "partition": 1,
        "offset": 4,
        "failed_at": "2024-05-10T12:00:00.000+00:00",
        "key": "POL-9",
        "error_class": "ValidationFailed",
        "error_message": "x" * 59 + "…",
        "original_topic": "insurance.billing.events",
        "original_partition": 3,
        "original_offset": 42,
        "replay_count": 0,
        "app": "payments",
    }


def test_binary_keys_are_shown_in_hex() -> None:
    record = DeadLetter(topic="dlq", partition=0, offset=0, key=b"\xff\x00", value=None)
    assert record.summary()["key"] == "0xff00"
