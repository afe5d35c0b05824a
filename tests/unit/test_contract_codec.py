"""The codec: round trips in Avro and JSON, and readable, PII-free reasons for every refusal."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from io import BytesIO
from typing import Any

import fastavro
import pytest
from pydantic import ValidationError

from processors.contract import (
    EVENT_TYPES,
    Codec,
    ContentType,
    Event,
    LocalSchemaIds,
    PaymentMethod,
    PremiumDue,
    RefundRequested,
    writer_schema,
    writer_schema_name,
)
from processors.contract.avro import local_schema_ids, writer_schema_text
from processors.contract.examples import example_event
from processors.errors import ContractError, DecodeError, UnknownEventType, ValidationFailed

ALL_TYPES = sorted(EVENT_TYPES)
JSON_HEADERS = [("content-type", b"application/json")]
AVRO_HEADERS = [("content-type", b"application/avro")]
TOKEN = "tok_visa_4242"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def money_fields(event: Event) -> dict[str, str]:
    """Every money value of the payload as its exact string (``str(Decimal)`` shows the scale)."""
    return {name: str(getattr(event.data, name)) for name in type(event.data).money_fields}


def json_body(event_type: str = "premium.due") -> dict[str, Any]:
    value, _ = Codec().encode(example_event(event_type), ContentType.JSON)
    body = json.loads(value)
    assert isinstance(body, dict)
    return body


def refused(codec: Codec, value: bytes | None, headers: Any = None) -> ContractError:
    with pytest.raises(ContractError) as exc:
        codec.decode(value, headers)
    return exc.value


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", list(ContentType))
@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_round_trip(codec: Codec, event_type: str, content_type: ContentType) -> None:
    event = example_event(event_type)
    value, headers = codec.encode(event, content_type)
    assert headers == [("content-type", content_type.value.encode()), ("event-type", event_type.encode())]
    decoded = codec.decode(value, headers)
    assert type(decoded) is Event
    assert type(decoded.data) is EVENT_TYPES[event_type]
    assert decoded == event
    assert money_fields(decoded) == money_fields(event)
    assert all(isinstance(getattr(decoded.data, name), Decimal | None) for name in money_fields(decoded))
    assert codec.decode(value, None) == event  # sniffed without headers
    assert Codec().decode(value, headers) == event  # a fresh codec resolves ids on its own


@pytest.mark.parametrize("content_type", list(ContentType))
def test_optional_records_round_trip_when_absent(codec: Codec, content_type: ContentType) -> None:
    good = example_event("refund.requested")
    data = good.data_as(RefundRequested).model_copy(
        update={"payment_method": PaymentMethod(type="DIRECT_DEBIT"), "original_payment_id": None}
    )
    event = Event.create("refund.requested", subject=good.subject, data=data, source="billing-system")
    decoded = codec.decode(*codec.encode(event, content_type))
    assert decoded == event
    assert decoded.data_as(RefundRequested).payment_method.billing_address is None


def test_money_keeps_its_exact_scale(codec: Codec) -> None:
    event = example_event("premium.due")
    assert str(event.data_as(PremiumDue).amount) == "1185.50"
    for content_type in ContentType:
        decoded = codec.decode(*codec.encode(event, content_type))
        amount = decoded.data_as(PremiumDue).amount
        assert amount.as_tuple() == Decimal("1185.50").as_tuple()


def test_json_wire_format(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"), ContentType.JSON)
    body = json.loads(value)
    assert body["data"]["amount"] == "1185.50"
    assert body["occurred_at"] == "2024-01-15T10:30:00Z"
    assert body["data"]["due_date"] == "2024-02-15"
    assert body["event_type"] == "premium.due"
    assert list(body) == ["event_id", "event_type", "source", "occurred_at", "subject", "correlation_id",
                          "schema_version", "data"]  # fmt: skip


def test_avro_wire_format_is_confluent_framed(codec: Codec) -> None:
    event = example_event("premium.due")
    value, _ = codec.encode(event)
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == local_schema_ids()["insurance.events.PremiumDueEvent"] == 1005
    record: Any = fastavro.schemaless_reader(
        BytesIO(value[5:]), fastavro.parse_schema(writer_schema("premium.due"))
    )
    assert record["data"]["amount"] == Decimal("1185.5000")  # scale 4 on the wire, quantized on decode
    assert record["event_id"] == event.event_id


def test_traceparent_header(codec: Codec) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, headers = codec.encode(example_event("claim.paid"), ContentType.JSON, traceparent=parent)
    assert headers[-1] == ("traceparent", parent.encode())
    _, headers = codec.encode(example_event("claim.paid"))
    assert [name for name, _ in headers] == ["content-type", "event-type"]


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "application/json")],
        [("Content-Type", b"application/json; charset=utf-8")],
        [("event-type", b"premium.due"), ("content-type", b"application/json"), ("traceparent", None)],
    ],
)
def test_header_shapes(codec: Codec, headers: Any) -> None:
    value, _ = codec.encode(example_event("premium.due"), ContentType.JSON)
    assert codec.decode(value, headers).event_type == "premium.due"


def test_json_with_leading_whitespace_is_sniffed(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"), ContentType.JSON)
    assert codec.decode(b"  \n" + value, None).event_type == "premium.due"


# --- refusals: decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty_message(codec: Codec, value: bytes | None) -> None:
    error = refused(codec, value, AVRO_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "empty message"


def test_garbage_bytes(codec: Codec) -> None:
    error = refused(codec, b"\xff\xfe\x00garbage", None)
    assert type(error) is DecodeError
    assert error.reason.startswith("cannot tell the encoding: no content-type header")
    error = refused(codec, b"\xff\xfe\x00garbage", JSON_HEADERS)
    assert type(error) is DecodeError
    assert error.reason.startswith("invalid JSON: ")


def test_wrong_magic_byte(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"))
    error = refused(codec, b"\x01" + value[1:], AVRO_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "wrong magic byte 0x01; Confluent-framed Avro starts with 0x00"


def test_unknown_schema_id(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"))
    error = refused(codec, b"\x00" + (1234).to_bytes(4, "big") + value[5:], AVRO_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "unknown schema id 1234"


@pytest.mark.parametrize("keep", [1, 4, 5, 30, -1])
def test_truncated_avro(codec: Codec, keep: int) -> None:
    value, _ = codec.encode(example_event("premium.due"))
    error = refused(codec, value[:keep], AVRO_HEADERS)
    assert type(error) is DecodeError
    assert "truncated" in error.reason
    assert "schema id 1005" in error.reason or "5-byte Confluent framing" in error.reason


def test_trailing_bytes_after_the_avro_record(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"))
    error = refused(codec, value + b"\x00\x01", AVRO_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "2 unexpected bytes after the Avro record (schema id 1005)"


def test_avro_payload_of_another_schema_is_corrupt_not_crashing(codec: Codec) -> None:
    value, _ = codec.encode(example_event("customer.created"))
    other = local_schema_ids()[writer_schema_name("claim.closed")]
    error = refused(codec, value[:1] + other.to_bytes(4, "big") + value[5:], AVRO_HEADERS)
    assert isinstance(error, DecodeError | ValidationFailed)
    assert error.reason


def test_unsupported_content_type(codec: Codec) -> None:
    error = refused(codec, b"<xml/>", [("content-type", b"text/xml")])
    assert type(error) is DecodeError
    assert error.reason == "unsupported content-type 'text/xml'"


def test_json_that_is_not_an_object(codec: Codec) -> None:
    error = refused(codec, b"[1, 2]", JSON_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "the JSON value is not an object"


def test_unknown_event_type(codec: Codec) -> None:
    body = {**json_body(), "event_type": "policy.teleported"}
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is UnknownEventType
    assert error.reason == "unknown event type 'policy.teleported'"


def test_missing_event_type(codec: Codec) -> None:
    body = json_body()
    del body["event_type"]
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason == "event_type: Field required"


def test_json_missing_a_required_field(codec: Codec) -> None:
    body = json_body()
    del body["data"]["instalment_id"]
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason == "invalid premium.due: data.instalment_id: Field required"


def test_too_many_decimal_places(codec: Codec) -> None:
    body = json_body()
    body["data"]["amount"] = "1185.12345"
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert (
        error.reason
        == "invalid premium.due: data.amount: 1185.12345 has 5 decimal places; USD allows at most 2"
    )
    assert "amount: 1185.12345 has 5 decimal places; USD allows at most 2" in error.reason


def test_too_many_decimal_places_in_avro(codec: Codec) -> None:
    """The Avro decimal has scale 4: a USD amount with 4 places is refused as well."""
    good = example_event("premium.due")
    data = PremiumDue.model_construct(**{**dict(good.data), "amount": Decimal("1185.1234")})
    bad = Event.model_construct(**{**dict(good), "data": data})
    value, headers = codec.encode(bad)
    error = refused(codec, value, headers)
    assert type(error) is ValidationFailed
    assert (
        error.reason
        == "invalid premium.due: data.amount: 1185.1234 has 4 decimal places; USD allows at most 2"
    )


@pytest.mark.parametrize("number", ["1185.5", "1185", "1.1855e3"])
def test_json_numbers_are_not_money(codec: Codec, number: str) -> None:
    text = json.dumps(json_body()).replace('"amount": "1185.50"', f'"amount": {number}')
    assert f'"amount": {number}' in text
    error = refused(codec, text.encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason == "invalid premium.due: data.amount: money must be a decimal string"


def test_naive_datetime(codec: Codec) -> None:
    body = {**json_body(), "occurred_at": "2024-01-15T10:30:00"}
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason == (
        "invalid premium.due: occurred_at: must be timezone-aware: naive datetimes are rejected "
        "(send UTC, e.g. 2024-01-15T10:30:00Z)"
    )


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("schema_version", "1", "schema_version: Input should be a valid integer"),
        ("occurred_at", 1705314600, "occurred_at: Input should be a valid datetime"),
        ("event_id", "not-a-uuid", "event_id: Input should be a valid UUID"),
    ],
)
def test_json_is_decoded_strictly(codec: Codec, field: str, value: object, reason: str) -> None:
    body = {**json_body(), field: value}
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason.startswith(f"invalid premium.due: {reason}")


def test_dates_are_not_numbers_in_json(codec: Codec) -> None:
    body = json_body()
    body["data"]["due_date"] = 19737
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason.startswith("invalid premium.due: data.due_date: Input should be a valid date")


def test_subject_must_be_the_aggregate_id(codec: Codec) -> None:
    body = {**json_body(), "subject": "POL-OTHER"}
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert (
        error.reason
        == "invalid premium.due: subject must equal data.policy_id (the aggregate id and Kafka key)"
    )


def test_event_type_header_must_match(codec: Codec) -> None:
    value, _ = codec.encode(example_event("premium.due"), ContentType.JSON)
    error = refused(codec, value, [*JSON_HEADERS, ("event-type", b"refund.requested")])
    assert type(error) is ValidationFailed
    assert (
        error.reason
        == "event-type header 'refund.requested' does not match the event's event_type 'premium.due'"
    )


def test_many_errors_are_summarised(codec: Codec) -> None:
    body = json_body()
    body["data"] = {}
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    assert error.reason.startswith("invalid premium.due: data.policy_id: Field required; ")
    assert error.reason.endswith("; and 2 more")


def test_failures_are_chained_to_their_cause(codec: Codec) -> None:
    body = json_body()
    del body["data"]["instalment_id"]
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert isinstance(error.__cause__, ValidationError)


# --- personal data never reaches a reason --------------------------------------------------------


def test_bad_postal_code_does_not_leak_the_card_token_or_the_address(codec: Codec) -> None:
    body = json_body()
    method = body["data"]["payment_method"]
    assert method["card_token"] == TOKEN
    method["billing_address"]["postal_code"] = "!!62701!!"
    good = example_event("premium.due")
    due = good.data_as(PremiumDue)
    assert due.payment_method.billing_address is not None
    address = due.payment_method.billing_address.model_construct(
        **{**dict(due.payment_method.billing_address), "postal_code": "!!62701!!"}
    )
    method_model = due.payment_method.model_construct(
        **{**dict(due.payment_method), "billing_address": address}
    )
    bad = Event.model_construct(
        **{**dict(good), "data": PremiumDue.model_construct(**{**dict(due), "payment_method": method_model})}
    )
    for value, headers in [(json.dumps(body).encode(), JSON_HEADERS), codec.encode(bad, ContentType.AVRO)]:
        error = refused(codec, value, headers)
        assert type(error) is ValidationFailed
        assert error.reason.startswith(
            "invalid premium.due: data.payment_method.billing_address.postal_code: "
        )
        for secret in (TOKEN, "62701", "Main St", "Springfield"):
            assert secret not in error.reason
            assert secret not in str(error.__cause__)


@pytest.mark.parametrize("content_type", list(ContentType))
def test_card_number_instead_of_a_token_is_not_echoed(codec: Codec, content_type: ContentType) -> None:
    good = example_event("premium.due")
    method = good.data_as(PremiumDue).payment_method.model_construct(
        type="CREDIT_CARD", card_token="4242424242424242", billing_address=None
    )
    data = PremiumDue.model_construct(**{**dict(good.data), "payment_method": method})
    value, headers = codec.encode(Event.model_construct(**{**dict(good), "data": data}), content_type)
    error = refused(codec, value, headers)
    assert type(error) is ValidationFailed
    assert error.reason == (
        "invalid premium.due: data.payment_method.card_token: "
        "must be a payment gateway token, never a card number"
    )
    assert "4242424242" not in str(error.__cause__)


@pytest.mark.parametrize(
    ("event_type", "path", "value", "secret"),
    [
        ("customer.created", ("full_name",), "", None),
        ("customer.created", ("email",), "jane-at-example.com", "jane-at-example.com"),
        ("customer.created", ("date_of_birth",), "1985-13-45", "1985"),
        ("customer.kyc_requested", ("documents", 0, "document_number"), "A" * 65, "AAAAAAAA"),
        (
            "customer.kyc_requested",
            ("documents", 0, "front_image_url"),
            "ftp://docs/AB123456.jpg",
            "AB123456",
        ),
        ("premium.due", ("payment_method", "billing_address", "line1"), "", None),
        ("premium.due", ("payment_method", "billing_address", "country"), "Narnia", "Narnia"),
    ],
)
def test_personal_fields_are_named_but_never_quoted(
    codec: Codec, event_type: str, path: tuple[str | int, ...], value: str, secret: str | None
) -> None:
    body = json_body(event_type)
    target: Any = body["data"]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    error = refused(codec, json.dumps(body).encode(), JSON_HEADERS)
    assert type(error) is ValidationFailed
    dotted = "data." + ".".join(str(p) for p in path).replace(".0.", "[0].")
    assert error.reason.startswith(f"invalid {event_type}: {dotted}: "), error.reason
    if secret:
        assert secret not in error.reason
        assert secret not in str(error.__cause__)


# --- schema ids -----------------------------------------------------------------------------------


class CountingIds:
    """An in-memory id source that counts how often it is asked."""

    def __init__(self, schemas: dict[int, str] | None = None) -> None:
        self.schemas = dict(schemas or {})
        self.ids: dict[str, int] = {}
        self.id_calls: list[str] = []
        self.schema_calls: list[int] = []

    def id_for(self, subject: str, schema: str) -> int:
        self.id_calls.append(subject)
        schema_id = self.ids.setdefault(subject, 7000 + len(self.ids))
        self.schemas[schema_id] = schema
        return schema_id

    def schema_for(self, schema_id: int) -> str | None:
        self.schema_calls.append(schema_id)
        return self.schemas.get(schema_id)


def test_ids_come_from_the_source_and_are_cached() -> None:
    ids = CountingIds()
    codec = Codec(ids)
    event = example_event("premium.due")
    for _ in range(3):
        value, headers = codec.encode(event)
        assert codec.decode(value, headers) == event
    assert ids.id_calls == ["insurance.events.PremiumDueEvent"]
    assert ids.schema_calls == []  # its own writes decode without asking
    assert int.from_bytes(value[1:5], "big") == 7000

    reader = Codec(ids)
    for _ in range(3):
        assert reader.decode(value, headers) == event
    assert ids.schema_calls == [7000]


def test_prepare_resolves_every_writer_schema_up_front() -> None:
    ids = CountingIds()
    Codec(ids).prepare()
    assert sorted(ids.id_calls) == sorted(writer_schema_name(t) for t in EVENT_TYPES)


def test_an_older_writer_schema_is_resolved_against_the_current_one() -> None:
    """Schema evolution: a producer on a schema without an optional field still decodes."""
    old = writer_schema("policy.renewed")
    payload = old["fields"][-1]["type"]
    payload["fields"] = [f for f in payload["fields"] if f["name"] != "previous_policy_number"]
    event = example_event("policy.renewed")
    record = event.model_dump()
    del record["data"]["previous_policy_number"]
    body = BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), record)
    value = b"\x00" + (4242).to_bytes(4, "big") + body.getvalue()

    decoded = Codec(CountingIds({4242: json.dumps(old)})).decode(value, AVRO_HEADERS)
    assert decoded.event_type == "policy.renewed"
    assert decoded.data.previous_policy_number is None  # type: ignore[attr-defined]
    assert decoded.data.model_dump(exclude={"previous_policy_number"}) == event.data.model_dump(
        exclude={"previous_policy_number"}
    )


def test_a_schema_that_is_not_an_event_schema() -> None:
    other = {
        "type": "record",
        "name": "Invoice",
        "namespace": "billing",
        "fields": [{"name": "n", "type": "int"}],
    }
    codec = Codec(CountingIds({99: json.dumps(other), 98: "not json"}))
    error = refused(codec, b"\x00" + (99).to_bytes(4, "big") + b"\x02", AVRO_HEADERS)
    assert type(error) is UnknownEventType
    assert error.reason == "schema id 99 is 'billing.Invoice', not an event schema this project knows"
    error = refused(codec, b"\x00" + (98).to_bytes(4, "big") + b"\x02", AVRO_HEADERS)
    assert type(error) is DecodeError
    assert error.reason == "schema id 98 is not a valid Avro record schema"


def test_local_ids_serve_the_composed_schemas() -> None:
    ids = LocalSchemaIds()
    assert ids.id_for("insurance.events.PremiumDueEvent", "") == 1005
    assert ids.schema_for(1005) == writer_schema_text("premium.due")
    assert ids.schema_for(1) is None


def test_local_ids_refuse_collisions_and_gaps() -> None:
    from processors.errors import ConfigError

    with pytest.raises(ConfigError, match="schema id 1001 is given to both"):
        LocalSchemaIds({"a": 1001, "b": 1001})
    with pytest.raises(ConfigError, match=r"no schema id for insurance\.events\.PremiumDueEvent"):
        Codec(LocalSchemaIds({})).encode(example_event("premium.due"))


@pytest.mark.parametrize("content_type", list(ContentType))
def test_corrupted_messages_only_ever_raise_contract_errors(codec: Codec, content_type: ContentType) -> None:
    """Flip, drop and insert bytes of valid messages: decode returns an event or a ContractError."""
    rng = random.Random(20240115)
    reasons: list[tuple[str, str]] = []
    for event_type in ALL_TYPES:
        value, headers = codec.encode(example_event(event_type), content_type)
        for _ in range(150):
            data = bytearray(value)
            position = rng.randrange(len(data))
            action = rng.choice(("flip", "drop", "insert"))
            if action == "flip":
                data[position] ^= 1 << rng.randrange(8)
            elif action == "drop":
                del data[position : position + rng.randint(1, 8)]
            else:
                data[position:position] = rng.randbytes(rng.randint(1, 8))
            reasons.append(_outcome(codec, bytes(data), headers))
    kinds = {kind for kind, _ in reasons}
    assert kinds <= {"decoded", "DecodeError", "UnknownEventType", "ValidationFailed"}
    assert all(reason and TOKEN not in reason for _, reason in reasons)
    assert "DecodeError" in kinds
    assert "ValidationFailed" in kinds


def _outcome(codec: Codec, value: bytes, headers: Any) -> tuple[str, str]:
    try:
        return "decoded", codec.decode(value, headers).event_type
    except ContractError as exc:
        return type(exc).__name__, exc.reason
