"""The payments floor (``bench/floor_payments.py``) writes what the product writes.

The prototype skips the product's models on its hot path; these tests hold its pieces to the
product's own functions: the gateway request, the result event's Avro, the audit record's
JSON, the answered-id digest, and the offset bookkeeping.  No Kafka, no HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import pytest

from bench.floor_payments import (
    APP,
    SOURCE,
    ResultWriter,
    _Breaker,
    _Part,
    audit_record,
    method_wire,
    redacted,
    request_body,
    result_record,
)
from processors.adapters import jsonwire
from processors.adapters.http import HttpResponse
from processors.adapters.payment_gateway import PaymentOutcome, PaymentRequest, parse_response
from processors.apps.payments import mapping
from processors.contract import Address, Codec, Event, LocalSchemaIds, PaymentMethod
from processors.errors import Retriable, ValidationFailed
from processors.observability.audit import AuditEvent
from processors.runtime.app import EventApp
from processors_dev.samples import premium_due, premium_due_stream


def _request(event: Event) -> PaymentRequest:
    return mapping.payment_request(event, app=APP)


def _body(event: Event) -> bytes:
    request = _request(event)
    return request_body(
        policy_id=request.policy_id,
        amount=request.amount,
        currency=request.currency,
        method=method_wire(cast(Any, event.data).payment_method),
        key=request.idempotency_key,
        operation=request.transaction_type,
        reference=request.reference_id,
    )


@pytest.mark.parametrize(
    "method",
    [
        PaymentMethod(type="CREDIT_CARD", card_token="tok_visa_4242"),
        PaymentMethod(type="BANK_TRANSFER"),
        PaymentMethod(
            type="DEBIT_CARD",
            card_token="tok_x_1",
            billing_address=Address(line1="1 Main St", city="Austin", postal_code="73301", country="US"),
        ),
        PaymentMethod(
            type="DEBIT_CARD",
            card_token="tok_x_1",
            billing_address=Address(
                line1="1 Main St",
                line2="Flat 2",
                city="Austin",
                state="TX",
                postal_code="73301",
                country="US",
            ),
        ),
    ],
)
def test_the_payment_method_is_the_adapters(method: PaymentMethod) -> None:
    assert method_wire(method) == method.model_dump(mode="json", exclude_none=True)


def test_the_request_body_is_the_adapters_byte_for_byte() -> None:
    for event in premium_due_stream(20, 7, seed=3):
        request = _request(event)
        expected = jsonwire.dumps(
            {
                "policy_id": request.policy_id,
                "amount": request.amount,
                "currency": request.currency,
                "payment_method": request.payment_method,
                "idempotency_key": request.idempotency_key,
                "transaction_type": request.transaction_type,
                "reference_id": request.reference_id,
            }
        )
        assert _body(event) == expected


def test_a_non_ascii_body_carries_the_same_document() -> None:
    method = {"type": "CREDIT_CARD", "card_token": "tok_1", "billing_address": {"city": "Zürich"}}
    fields = {
        "policy_id": "POL-1",
        "amount": Decimal("1185.50"),
        "currency": "CHF",
        "payment_method": method,
        "idempotency_key": "idem_1",
        "transaction_type": "CHARGE",
        "reference_id": "R-1",
    }
    mine = request_body(
        policy_id="POL-1",
        amount=Decimal("1185.50"),
        currency="CHF",
        method=method,
        key="idem_1",
        operation="CHARGE",
        reference="R-1",
    )
    assert jsonwire.loads(mine) == jsonwire.loads(jsonwire.dumps(fields))
    assert b"1185.50" in mine  # digit for digit, a JSON number


def _answer(status: int, payload: dict[str, Any]) -> PaymentOutcome:
    return parse_response(HttpResponse(status, {}, jsonwire.dumps(payload)))


_OUTCOMES = {
    "completed": (
        200,
        {
            "payment_id": "PMT-2024-0000000000AB",
            "status": "COMPLETED",
            "gateway_reference": "ch_0123456789abcdef01234567",
            "amount": Decimal("1185.50"),
            "currency": "USD",
            "processed_at": "2024-03-01T10:00:00Z",
            "receipt_url": "https://receipts.sandbox.invalid/ch_0123456789abcdef01234567",
        },
    ),
    "pending": (202, {"payment_id": "PMT-2024-1", "status": "PENDING", "gateway_reference": "ch_1"}),
    "declined": (
        402,
        {
            "payment_id": "PMT-2024-2",
            "status": "DECLINED",
            "decline_code": "insufficient_funds",
            "decline_reason": "The card has insufficient funds to complete the payment.",
            "processed_at": "2024-03-01T10:00:00Z",
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(_OUTCOMES))
def test_the_result_is_the_codecs_avro_of_the_mappings_event(kind: str) -> None:
    codec = Codec(LocalSchemaIds())
    writer = ResultWriter(codec)  # checks itself against Codec.encode too
    event = premium_due(3, 2)
    request = _request(event)
    outcome = _answer(*_OUTCOMES[kind])
    expected = mapping.result_event(event, request, outcome, source=SOURCE)
    event_type, record = result_record(
        event_id=expected.event_id,
        occurred_at=expected.occurred_at,
        correlation_id=event.correlation_id or str(event.event_id),
        source_event_id=str(event.event_id),
        policy_id=request.policy_id,
        operation=request.transaction_type,
        reference_id=request.reference_id,
        amount=request.amount,
        currency=request.currency,
        key=request.idempotency_key,
        outcome=outcome,
    )
    value, headers = codec.encode(expected)
    assert event_type == expected.event_type
    assert writer.encode(event_type, record) == value
    assert headers == [("content-type", b"application/avro"), ("event-type", event_type.encode())]
    assert codec.decode(value, headers) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payment_id", "PMT 1"),
        ("payment_id", ""),
        ("gateway_reference", "x" * 129),
        ("receipt_url", "ftp://x"),
        ("payment_id", "PMT-1\n"),  # the models refuse a trailing newline; a `$` regex would not
        ("receipt_url", "https://r.invalid/1\n"),
    ],
)
def test_a_gateway_field_the_contract_refuses_is_refused(field: str, value: str) -> None:
    status, payload = _OUTCOMES["completed"]
    outcome = _answer(status, payload)
    outcome = PaymentOutcome(**{**{f: getattr(outcome, f) for f in outcome.__slots__}, field: value})
    with pytest.raises(ValidationFailed):
        result_record(
            event_id=UUID(int=1),
            occurred_at=datetime.now(UTC),
            correlation_id="c",
            source_event_id=str(UUID(int=2)),
            policy_id="POL-1",
            operation="CHARGE",
            reference_id="R-1",
            amount=Decimal("1.00"),
            currency="USD",
            key="idem_1",
            outcome=outcome,
        )


def _summary(request: PaymentRequest) -> dict[str, Any]:
    return {
        "policy_id": request.policy_id,
        "reference_id": request.reference_id,
        "amount": str(request.amount),
        "currency": request.currency,
        "payment_method": request.payment_method,
    }


def test_the_audit_record_is_the_audit_events_json() -> None:
    event = premium_due(5, 1)
    request = _request(event)
    outcome = _answer(*_OUTCOMES["completed"])
    audit_id, occurred_at = UUID("5455732c-257b-4d6b-8197-bb665be7f7a0"), datetime.now(UTC)
    response = {"payment_id": outcome.payment_id, "status": outcome.status, "decline_code": None}
    expected = AuditEvent(
        audit_id=audit_id,
        occurred_at=occurred_at,
        app=APP,
        direction="outbound",
        endpoint="payment-gateway",
        operation="charge",
        status="COMPLETED",
        outcome="success",
        latency_ms=21.417,
        attempt=1,
        idempotency_key=request.idempotency_key,
        breaker_state="closed",
        correlation_id=str(event.event_id),
        trace_id="0af7651916cd43dd8448eb211c80319c",
        request_summary=_summary(request),
        response_summary=response,
    ).to_json()
    mine = audit_record(
        operation="charge",
        key=request.idempotency_key,
        status="COMPLETED",
        outcome="success",
        latency_ms=21.417,
        attempt=1,
        breaker_state="closed",
        correlation_id=str(event.event_id),
        trace_id="0af7651916cd43dd8448eb211c80319c",
        request_summary=redacted(_summary(request)),
        response_summary=redacted(response),
        error=None,
        audit_id=audit_id,
        occurred_at=occurred_at,
    )
    assert mine == expected
    assert b"tok_" not in mine
    assert b"Main St" not in mine


def test_a_failed_attempts_audit_record_is_the_audit_events_json() -> None:
    error = Retriable("gateway answered 503 (token=tok_visa_4242 for jane@example.com)")
    audit_id, occurred_at = UUID(int=7, version=4), datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    expected = AuditEvent(
        audit_id=audit_id,
        occurred_at=occurred_at,
        app=APP,
        direction="outbound",
        endpoint="payment-gateway",
        operation="charge",
        status="retriable_error",
        outcome="failure",
        latency_ms=3.0,
        attempt=2,
        idempotency_key="idem_1",
        breaker_state="open",
        correlation_id="c-1",
        request_summary={"card_token": "tok_1"},
        error=f"{type(error).__name__}: {error}",
    ).to_json()
    mine = audit_record(
        operation="charge",
        key="idem_1",
        status="retriable_error",
        outcome="failure",
        latency_ms=3.0,
        attempt=2,
        breaker_state="open",
        correlation_id="c-1",
        trace_id=None,
        request_summary=redacted({"card_token": "tok_1"}),
        response_summary=redacted(None),
        error=f"{type(error).__name__}: {error}",
        audit_id=audit_id,
        occurred_at=occurred_at,
    )
    assert mine == expected
    assert json.loads(mine)["error"].count("***") >= 2


def test_the_marker_digest_is_the_apps() -> None:
    import hashlib

    from bench.floor_payments import _DIGEST_FIELDS

    event = premium_due(9, 4)
    mine = hashlib.sha256(event.model_dump_json(include=_DIGEST_FIELDS).encode()).digest()[:16]
    assert mine == EventApp.dedupe_digest(cast(Any, None), event)


def test_offsets_commit_only_past_the_contiguous_finished_run() -> None:
    part = _Part(0)
    for offset in (10, 11, 12, 13):
        assert part.track(offset)
    assert not part.track(12)  # fetched again: already in hand
    part.finish(12)
    assert part.commit_due() is None  # 10 and 11 are not finished
    part.finish(10)
    assert part.commit_due() == 11
    assert part.commit_due() is None  # nothing moved since
    part.finish(11)
    assert part.commit_due() == 13  # 12 finished earlier
    part.finish(13)
    assert part.commit_due() == 14
    assert not part.track(13)


def test_the_breaker_opens_after_consecutive_failures_and_probes_after_its_period() -> None:
    breaker = _Breaker(threshold=3, open_s=0.0001)
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()  # a success ends the run
    for _ in range(2):
        breaker.failed()
    assert breaker.admit()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.open_until
    import time

    time.sleep(0.001)
    assert breaker.admit()  # half-open: admitted again
    assert breaker.state == "half_open"
    breaker.failed()  # a failed probe reopens it at once
    assert breaker.open_until

    closed = _Breaker(threshold=1, open_s=60)
    closed.failed()
    assert not closed.admit()
    assert closed.state == "open"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_each_attempt_also_writes_the_products_audit_log_line(
    outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the audit log line on (``processors run`` logs at INFO, and the bench logs as it
    does), the floor writes the line the product writes for the record it produced."""
    from bench.floor_payments import FloorPayments
    from processors.observability.logs import log_extras

    produced: list[bytes] = []
    floor = object.__new__(FloorPayments)
    floor._producer = SimpleNamespace(produce=lambda _topic, value, _key: produced.append(value))  # type: ignore[attr-defined]
    floor.audit_topic = "audit"
    floor.audit_lost = 0
    caplog.set_level(logging.INFO, logger="processors.audit")
    floor._audit(
        operation="charge", key="idem_1", status="COMPLETED" if outcome == "success" else "timeout",
        outcome=outcome, started=time.perf_counter(), attempt=1, breaker_state="closed",
        correlation="corr-1", trace_id=None, request_summary={"amount": "1.00"},
        response_summary={}, error=None if outcome == "success" else "HttpTimeout: timed out",
    )  # fmt: skip
    [value] = produced
    [line] = [r for r in caplog.records if r.name == "processors.audit"]
    assert line.levelno == (logging.INFO if outcome == "success" else logging.WARNING)
    assert log_extras(line) == AuditEvent.from_json(value).log_fields()
