"""Audit events: redaction on the way in, JSON, trace ids, sinks and the audit logger."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from processors.adapters.http import ConnectFailed, HttpTimeout
from processors.contract.examples import example_event
from processors.errors import Backpressure, Permanent, Retriable
from processors.observability import (
    AUDIT_EVENT_TYPE,
    AuditEvent,
    KafkaAuditSink,
    MemoryAuditSink,
    audit_logger,
    clear_secrets,
    configure_audit_sink,
    configure_logging,
    register_secret,
    status_for_error,
    trace_id_from_traceparent,
)
from processors.resilience.guard import DeadlineExceeded

CARD_TOKEN = "tok_visa_4242"
PASSPORT = "P98765432"
NAME = "Jane Q. Doe"
DOB = "1985-03-12"
EMAIL = "jane.doe@example.com"
PII = (CARD_TOKEN, PASSPORT, NAME, DOB, EMAIL)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "app": "kyc",
        "direction": "outbound",
        "endpoint": "kyc-provider",
        "operation": "verify",
        "status": "200",
        "outcome": "success",
        "latency_ms": 12.5,
    }
    fields.update(overrides)
    return fields


PII_SUMMARY = {
    "customer": {"full_name": NAME, "date_of_birth": DOB, "email": EMAIL},
    "documents": [{"type": "PASSPORT", "document_number": PASSPORT, "issuing_country": "GB"}],
    "payment_method": {"type": "CREDIT_CARD", "card_token": CARD_TOKEN},
    "note": f"card {CARD_TOKEN} for {EMAIL}",
}


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    clear_secrets()
    configure_audit_sink(None)
    yield
    configure_audit_sink(None)
    clear_secrets()
    root.handlers[:] = handlers
    root.setLevel(level)


# -- the event refuses to carry personal data --------------------------------------------------


def test_an_audit_event_carries_no_personal_data() -> None:
    event = AuditEvent(
        **_fields(),
        request_summary=PII_SUMMARY,
        response_summary={"verification_id": "VRF-1", "matches": [{"name": NAME, "list_name": "PEP-GLOBAL"}]},
        error=f"provider said: passport {PASSPORT} ({EMAIL}, card {CARD_TOKEN}) rejected",
        correlation_id=f"corr-{EMAIL}",
    )
    text = event.to_json().decode()
    for value in PII:
        assert value not in text
    assert event.request_summary["documents"] == [
        {"type": "PASSPORT", "document_number": "***", "issuing_country": "GB"}
    ]
    assert event.response_summary["matches"] == [{"name": "***", "list_name": "PEP-GLOBAL"}]
    assert event.correlation_id == "***"
    assert event.error == "provider said: passport P*** (***, card ***) rejected"


def test_building_by_model_validate_construct_or_copy_redacts_too() -> None:
    built = [
        AuditEvent.model_validate(_fields(request_summary=PII_SUMMARY)),
        AuditEvent.model_construct(**_fields(request_summary=PII_SUMMARY)),
        AuditEvent(**_fields()).model_copy(update={"request_summary": PII_SUMMARY}),
    ]
    for event in built:
        assert event.request_summary["customer"]["full_name"] == "***"
        text = event.to_json().decode()
        for value in PII:
            assert value not in text


def test_a_summary_may_be_a_pydantic_model() -> None:
    data = example_event("premium.due").data
    event = AuditEvent(**_fields(request_summary=data))
    assert event.request_summary["payment_method"] == {
        "type": "CREDIT_CARD",
        "card_token": "***",
        "billing_address": "***",
    }
    assert event.request_summary["amount"] == "1185.50"


def test_a_summary_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError, match="summary must be a mapping"):
        AuditEvent(**_fields(request_summary=["a", "b"]))


def test_registered_secrets_never_reach_an_audit_event() -> None:
    register_secret("gw-token-Hq7Lm")
    event = AuditEvent(
        **_fields(error="401 for key gw-token-Hq7Lm"), request_summary={"detail": "sent gw-token-Hq7Lm"}
    )
    assert b"gw-token-Hq7Lm" not in event.to_json()


def test_the_json_value_keeps_money_as_strings_and_round_trips() -> None:
    event = AuditEvent(
        **_fields(idempotency_key="kyc:verify:abc", attempt=2, breaker_state="closed", trace_id="a" * 32),
        request_summary={"amount": Decimal("1185.50"), "due": date(2024, 2, 15)},
    )
    value = json.loads(event.to_json())
    assert value["event_type"] == AUDIT_EVENT_TYPE
    assert value["request_summary"] == {"amount": "1185.50", "due": "2024-02-15"}
    assert value["occurred_at"].endswith("Z")
    assert value["attempt"] == 2
    again = AuditEvent.from_json(event.to_json())
    assert again.audit_id == event.audit_id
    assert again.idempotency_key == "kyc:verify:abc"
    assert again.request_summary == {"amount": "1185.50", "due": "2024-02-15"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"latency_ms": -1.0},
        {"latency_ms": float("nan")},
        {"direction": "sideways"},
        {"outcome": "maybe"},
        {"attempt": -1},
        {"status": ""},
        {"trace_id": "not-a-trace-id"},
        {"unexpected": 1},
    ],
)
def test_invalid_fields_are_refused_without_quoting_the_input(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        AuditEvent(**_fields(**overrides))
    assert "input_value" not in str(info.value)


def test_an_event_is_frozen() -> None:
    event = AuditEvent(**_fields())
    with pytest.raises(ValidationError):
        event.status = "500"  # type: ignore[misc]


# -- trace context ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (TRACEPARENT, "4bf92f3577b34da6a3ce929d0e0e4736"),
        (TRACEPARENT.encode(), "4bf92f3577b34da6a3ce929d0e0e4736"),
        (f" {TRACEPARENT} ", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (None, None),
        ("", None),
        ("garbage", None),
        (TRACEPARENT + "-extra", None),  # version 00 has exactly four fields
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", None),
        (b"\xff\xfe", None),
    ],
)
def test_trace_id_from_traceparent(traceparent: str | bytes | None, expected: str | None) -> None:
    assert trace_id_from_traceparent(traceparent) == expected


# -- failure vocabulary -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Backpressure("circuit open"), ("circuit_open", "rejected")),
        (HttpTimeout("read timed out"), ("timeout", "failure")),
        (DeadlineExceeded("deadline"), ("timeout", "failure")),
        (TimeoutError(), ("timeout", "failure")),
        (ConnectFailed("refused"), ("connect_failed", "failure")),
        (Retriable("503"), ("retriable_error", "failure")),
        (Permanent("422"), ("permanent_error", "failure")),
        (ValueError("bug"), ("error", "failure")),
    ],
)
def test_status_for_error(exc: BaseException, expected: tuple[str, str]) -> None:
    assert status_for_error(exc) == expected


# -- sinks ------------------------------------------------------------------------------------


def test_the_kafka_sink_hands_topic_app_key_and_json_to_the_producer() -> None:
    sent: list[tuple[str, bytes | None, bytes]] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append((topic, key, value)), "integrations.audit")
    event = AuditEvent(**_fields(app="payments"), request_summary=PII_SUMMARY)
    sink.emit(event)
    assert [(topic, key) for topic, key, _ in sent] == [("integrations.audit", b"payments")]
    assert AuditEvent.from_json(sent[0][2]).audit_id == event.audit_id
    assert sink.emitted == 1
    assert sink.failed == 0


def test_the_kafka_sink_counts_and_logs_failures_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    def broken(topic: str, key: bytes | None, value: bytes) -> None:
        raise BufferError(f"queue full while sending {EMAIL}")

    sink = KafkaAuditSink(broken, "integrations.audit")
    with caplog.at_level(logging.WARNING, logger="processors.observability.audit"):
        sink.emit(AuditEvent(**_fields()))
        sink.emit(AuditEvent(**_fields()))
    assert sink.failed == 2
    assert sink.emitted == 0
    warnings = [r for r in caplog.records if r.name == "processors.observability.audit"]
    assert len(warnings) == 1  # at most one line per interval
    assert "BufferError" in warnings[0].getMessage()
    assert EMAIL not in warnings[0].getMessage()


def test_the_memory_sink_keeps_events_and_their_payloads() -> None:
    sink = MemoryAuditSink()
    event = AuditEvent(**_fields())
    sink.emit(event)
    assert sink.events == [event]
    assert sink.payloads() == [event.to_json()]
    sink.clear()
    assert sink.events == []


# -- the audit logger -------------------------------------------------------------------------


def _log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_record_emits_to_the_sink_and_writes_one_structured_line() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    sink = MemoryAuditSink()
    audit = audit_logger("payments", sink)
    event = audit.record_interaction(
        direction="outbound",
        endpoint="payment-gateway",
        operation="charge",
        status="200",
        outcome="success",
        latency_ms=41.7,
        attempt=2,
        idempotency_key="payments:charge:6f1c1f7e",
        breaker_state="closed",
        correlation_id="corr-7f3a9c",
        traceparent=TRACEPARENT,
        request_summary=PII_SUMMARY,
    )
    assert event is not None
    assert sink.events == [event]
    [line] = [entry for entry in _log_lines(stream) if entry["logger"] == "processors.audit"]
    assert line["level"] == "INFO"
    assert line["msg"] == "outbound payment-gateway charge: 200 (success) in 41.7 ms"
    expected = {
        "app": "payments",
        "direction": "outbound",
        "endpoint": "payment-gateway",
        "operation": "charge",
        "idempotency_key": "payments:charge:6f1c1f7e",
        "status": "200",
        "outcome": "success",
        "latency_ms": 41.7,
        "attempt": 2,
        "breaker_state": "closed",
        "correlation_id": "corr-7f3a9c",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "audit_id": str(event.audit_id),
    }
    assert {key: line[key] for key in expected} == expected
    everything = stream.getvalue() + b"".join(sink.payloads()).decode()
    for value in PII:
        assert value not in everything


def test_failures_are_logged_as_warnings_with_the_redacted_error() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    audit = audit_logger("kyc", MemoryAuditSink())
    audit.record_interaction(
        direction="inbound",
        endpoint="kyc-provider-webhook",
        operation="kyc.result",
        status="signature_invalid",
        outcome="rejected",
        latency_ms=0.4,
        error=ValueError(f"bad signature for {EMAIL}"),
    )
    [line] = _log_lines(stream)
    assert line["level"] == "WARNING"
    assert line["error"] == "ValueError: bad signature for ***"


def test_the_configured_default_sink_is_used_at_record_time() -> None:
    audit = audit_logger("payments")  # built before the sink exists, as apps are
    sink = MemoryAuditSink()
    configure_audit_sink(sink)
    audit.record(AuditEvent(**_fields(app="payments")))
    assert [event.app for event in sink.events] == ["payments"]


def test_a_sink_that_raises_does_not_break_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(self, event: AuditEvent) -> None:
            raise RuntimeError("sink down")

    audit = audit_logger("payments", Broken())
    with caplog.at_level(logging.INFO):
        audit.record(AuditEvent(**_fields(app="payments")))
    assert any("audit sink Broken raised" in r.getMessage() for r in caplog.records)
    assert any(r.name == "processors.audit" for r in caplog.records)  # still logged


def test_invalid_interaction_fields_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = MemoryAuditSink()
    audit = audit_logger("payments", sink)
    with caplog.at_level(logging.ERROR, logger="processors.observability.audit"):
        result = audit.record_interaction(
            direction="outbound",
            endpoint="payment-gateway",
            operation="charge",
            status="200",
            outcome="success",
            latency_ms=-5.0,
        )
    assert result is None
    assert sink.events == []
    assert any("not recorded" in r.getMessage() for r in caplog.records)


def test_the_memory_sink_keeps_only_its_latest_events() -> None:
    sink = MemoryAuditSink(max_events=10)
    events = [AuditEvent(**{**_fields(), "operation": f"op-{n}"}) for n in range(25)]
    for event in events:
        sink.emit(event)
    assert len(sink.events) <= 10
    assert sink.events[-1] == events[-1]
