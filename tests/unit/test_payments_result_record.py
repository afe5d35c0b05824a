"""The payments result written without the models (``result_record``) is the models' result.

The payments app builds its result event as an :class:`EventRecord` on the hot path and the
codec writes it straight to Avro.  These tests hold that path to ``result_event`` and
``Codec.encode``: the same bytes (Avro and JSON) for every gateway answer the models accept,
and a refusal (``ValidationFailed``) for every answer they refuse.  They also hold the two
contracts together: the fields the record copies from the input event, unchecked, must be
validated there under the same field types as in the result.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.adapters.payment_gateway import PaymentOutcome
from processors.apps.payments import mapping
from processors.contract import (
    EVENT_TYPES,
    Codec,
    ContentType,
    Event,
    EventRecord,
    PaymentResultData,
    PremiumDue,
    RefundRequested,
)
from processors.contract.examples import example_event
from processors.errors import ValidationFailed
from processors_dev.samples import premium_due, refund_requested

CODEC = Codec()
SOURCE = "processors/payments"
EVENT_ID = UUID("0b5e7f4e-37a2-4d6e-9c1b-2f0d6a1e8c55")
WHEN = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
INPUTS = [
    premium_due(7, 2, amount=Decimal("1185.50")),
    refund_requested(8, 1, amount=Decimal("42.07")),
    premium_due(9, 1, amount=Decimal("0.01")).model_copy(update={"correlation_id": "corr-from-upstream"}),
]


def _model_result(event: Event, outcome: PaymentOutcome) -> Event | None:
    """``result_event`` with the record's id and time, or None when the models refuse it."""
    request = mapping.payment_request(event, app="payments")
    try:
        result = mapping.result_event(event, request, outcome, source=SOURCE, now=WHEN)
    except ValueError:  # pydantic's ValidationError
        return None
    return result.model_copy(update={"event_id": EVENT_ID, "occurred_at": WHEN})


def _record(event: Event, outcome: PaymentOutcome) -> EventRecord:
    request = mapping.payment_request(event, app="payments")
    return mapping.result_record(event, request, outcome, source=SOURCE, now=WHEN, event_id=EVENT_ID)


def _assert_same(event: Event, outcome: PaymentOutcome) -> None:
    expected = _model_result(event, outcome)
    if expected is None:
        with pytest.raises(ValidationFailed, match=r"^invalid gateway answer for payment"):
            _record(event, outcome)
        return
    record = _record(event, outcome)
    for content_type in ContentType:
        assert CODEC.encode_record(record, content_type, traceparent="00-a-b-01") == CODEC.encode(
            expected, content_type, traceparent="00-a-b-01"
        ), content_type
    assert record.to_event() == expected
    assert record.key == expected.key


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "outcome",
    [
        PaymentOutcome("COMPLETED", "PMT-1", "ch_1", None, None, WHEN, receipt_url="https://r.example/1"),
        PaymentOutcome("COMPLETED", "PMT-1", "ch_1", None, None, None),
        PaymentOutcome("PENDING", "PMT-2", None, None, None, None),
        PaymentOutcome(
            "DECLINED", None, None, None, None, WHEN, decline_code="card_expired", decline_reason="x"
        ),
        PaymentOutcome("DECLINED", None, None, None, None, None),
    ],
    ids=["completed", "completed-no-time", "pending", "declined", "declined-defaults"],
)
@pytest.mark.parametrize("event", INPUTS, ids=["charge", "refund", "upstream-correlation"])
def test_each_accepted_answer_is_the_models_result_byte_for_byte(
    event: Event, outcome: PaymentOutcome
) -> None:
    assert _model_result(event, outcome) is not None
    _assert_same(event, outcome)


@pytest.mark.parametrize(
    ("outcome", "field"),
    [
        (PaymentOutcome("COMPLETED", "PMT 1", "ch_1", None, None, WHEN), "payment_id"),
        (PaymentOutcome("COMPLETED", "PMT-1", "ch\n", None, None, WHEN), "gateway_reference"),
        (PaymentOutcome("COMPLETED", "P" * 129, "ch_1", None, None, WHEN), "payment_id"),
        (
            PaymentOutcome("COMPLETED", "PMT-1", "ch_1", None, None, WHEN, receipt_url="ftp://x"),
            "receipt_url",
        ),
        (PaymentOutcome("COMPLETED", "PMT-1", "ch_1", None, None, datetime(2026, 3, 1)), "processed_at"),
        (PaymentOutcome("PENDING", 1234, None, None, None, None), "payment_id"),  # type: ignore[arg-type]
        (PaymentOutcome("DECLINED", None, None, None, None, WHEN, decline_code="c" * 65), "decline_code"),
        (
            PaymentOutcome("DECLINED", None, None, None, None, WHEN, decline_reason="r" * 1001),
            "decline_reason",
        ),
    ],
)
def test_each_answer_the_models_refuse_is_refused_with_its_field_named(
    outcome: PaymentOutcome, field: str
) -> None:
    event = INPUTS[0]
    assert _model_result(event, outcome) is None
    with pytest.raises(ValidationFailed) as refused:
        _record(event, outcome)
    assert f"{field}:" in refused.value.reason
    assert "PMT 1" not in refused.value.reason  # never the value itself


def test_a_non_utc_processing_time_is_written_as_the_same_instant_in_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    outcome = PaymentOutcome("COMPLETED", "PMT-1", "ch_1", None, None, local)
    record = _record(INPUTS[0], outcome)
    assert record.record["data"]["processed_at"] == WHEN
    assert record.record["data"]["processed_at"].tzinfo == UTC
    _assert_same(INPUTS[0], outcome)


# --------------------------------------------------------------------------- property

identifiers = st.one_of(
    st.none(),
    st.text(max_size=130),
    st.from_regex(r"\A[A-Za-z0-9_\-]{1,128}\Z"),
    st.sampled_from(
        ["", "a b", "x\x00", "x\x7f", "ok\n", "é-ü", "\u00a0x", "x\u2028", "\x1cx", "P" * 128, "P" * 129]
    ),
    st.integers(),
)
texts = st.one_of(
    st.none(),
    st.text(max_size=70),
    st.text(min_size=990, max_size=1010),
    st.sampled_from(["", " ", "x" * 64, "x" * 65, "declined\n", "\x00"]),
    st.integers(),
)
urls = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(lambda tail: "https://" + tail, st.text(max_size=40)),
    st.sampled_from(
        ["http://x", "https://", "https://a b", "HTTPS://x", "https://x\n", "https://" + "x" * 2040]
    ),
)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
times = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1), timezones=offsets),
    st.datetimes(),  # naive: refused
)
outcomes = st.builds(
    PaymentOutcome,
    status=st.sampled_from(["COMPLETED", "PENDING", "DECLINED"]),
    payment_id=identifiers,
    gateway_reference=identifiers,
    amount=st.none(),
    currency=st.none(),
    processed_at=times,
    receipt_url=urls,
    decline_code=texts,
    decline_reason=texts,
)


@settings(max_examples=800, deadline=None)
@given(event=st.sampled_from(INPUTS), outcome=outcomes)
def test_any_gateway_answer_gives_the_models_bytes_or_their_refusal(
    event: Event, outcome: PaymentOutcome
) -> None:
    _assert_same(event, outcome)


# --------------------------------------------------------------------------- contracts


@pytest.mark.parametrize(
    ("model", "copied"),
    [
        (
            PremiumDue,
            {
                "policy_id": "policy_id",
                "instalment_id": "reference_id",
                "currency": "currency",
                "amount": "amount",
            },
        ),
        (
            RefundRequested,
            {
                "policy_id": "policy_id",
                "refund_id": "reference_id",
                "currency": "currency",
                "amount": "amount",
            },
        ),
    ],
)
def test_copied_fields_are_validated_on_input_under_the_results_field_types(
    model: type[Any], copied: dict[str, str]
) -> None:
    """The record copies these without checking them again: the input's types must be the
    result's, or an input could carry a value the result's model would refuse."""
    for source, target in copied.items():
        given_field, result_field = model.model_fields[source], PaymentResultData.model_fields[target]
        assert given_field.annotation == result_field.annotation, (source, target)
        assert given_field.metadata == result_field.metadata, (source, target)
    money = list(model.money_fields)
    assert money == ["amount"]
    assert list(PaymentResultData.money_fields) == ["amount"]


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_any_event_in_its_record_form_encodes_as_the_event(event_type: str) -> None:
    event = example_event(event_type)
    record = EventRecord(event.event_type, event.subject, event.model_dump())
    for content_type in ContentType:
        assert CODEC.encode_record(record, content_type) == CODEC.encode(event, content_type)


def test_a_record_the_model_refuses_is_refused_by_to_event() -> None:
    event = INPUTS[0]
    dumped = event.model_dump()
    dumped["subject"] = "POL-2024-999999"  # not the payload's policy_id
    with pytest.raises(ValueError, match="subject"):
        EventRecord(event.event_type, "POL-2024-999999", dumped).to_event()
