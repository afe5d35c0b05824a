"""The audit record written without the model (``outbound_json``) is the model's record.

``AuditLogger.record_outbound`` writes an app's outbound calls straight to JSON on the hot
path.  These tests hold that writer to ``AuditEvent(...).to_json()`` byte for byte, and to the
model's refusals: whatever the model refuses, the writer leaves to the model.
"""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processors.observability.audit import (
    AuditEvent,
    KafkaAuditSink,
    MemoryAuditSink,
    _new_audit_id,
    audit_logger,
    outbound_json,
    trace_id_from_traceparent,
)
from processors.observability.logs import configure_logging

AUDIT_ID = UUID("5455732c-257b-4d6b-8197-bb665be7f7a0")
WHEN = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "app": "payments",
        "endpoint": "payment-gateway",
        "operation": "charge",
        "status": "COMPLETED",
        "outcome": "success",
        "latency_ms": 21.734,
        "attempt": 1,
        "idempotency_key": "idem_6f1c1f7e0a",
        "breaker_state": "closed",
        "correlation_id": "corr-7f3a9c",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "request_summary": {
            "policy_id": "POL-2024-000123",
            "amount": "120.50",
            "payment_method": {"type": "CREDIT_CARD", "card_token": CARD},
            "note": f"card {CARD} for {EMAIL}",
        },
        "response_summary": {"payment_id": "PMT-1", "status": "COMPLETED", "decline_code": None},
        "error": None,
    }
    fields.update(overrides)
    return fields


def _model_json(fields: dict[str, Any]) -> bytes:
    return AuditEvent(direction="outbound", audit_id=AUDIT_ID, occurred_at=WHEN, **fields).to_json()


def _fast(fields: dict[str, Any]) -> tuple[str, UUID, bytes] | None:
    return outbound_json(audit_id=AUDIT_ID, occurred_at=WHEN, **fields)


def test_a_payment_attempts_record_is_the_models_bytes() -> None:
    written = _fast(_fields())
    assert written is not None
    app, audit_id, value = written
    assert (app, audit_id) == ("payments", AUDIT_ID)
    assert value == _model_json(_fields())
    for secret in (CARD, EMAIL):
        assert secret not in value.decode()


def test_a_failed_attempts_record_is_the_models_bytes() -> None:
    fields = _fields(
        status="timeout",
        outcome="failure",
        response_summary=None,
        error=f"HttpTimeout: POST https://gw.invalid/pay for {EMAIL}: timed out " + "x" * 1200,
    )
    written = _fast(fields)
    assert written is not None
    assert written[2] == _model_json(fields)
    assert EMAIL not in written[2].decode()


@pytest.mark.parametrize(
    "override",
    [
        {"app": ""},
        {"operation": "o" * 257},
        {"status": 200},
        {"outcome": "maybe"},
        {"latency_ms": -1.0},
        {"latency_ms": float("nan")},
        {"latency_ms": float("inf")},
        {"attempt": -1},
        {"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736"},
        {"correlation_id": ""},
        {"request_summary": ["not", "a", "mapping"]},
    ],
)
def test_what_the_model_refuses_the_writer_leaves_to_the_model(override: dict[str, Any]) -> None:
    fields = _fields(**override)
    with pytest.raises(ValidationError):
        _model_json(fields)
    assert _fast(fields) is None


@pytest.mark.parametrize(
    "override",
    [
        {"latency_ms": 21},  # an int: the model writes 21.0
        {"request_summary": {"amount": Decimal("120.50")}},
        {"request_summary": {"due": date(2026, 3, 1)}},
        {"response_summary": {1: "a number as a key"}},
        {"attempt": True},
    ],
)
def test_values_the_writer_does_not_handle_take_the_models_path(override: dict[str, Any]) -> None:
    assert _fast(_fields(**override)) is None


_texts = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "charge", "payment-gateway", EMAIL, CARD, "12345678", "closed", "x" * 256]),
    st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True),
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    _texts,
    st.sampled_from([Decimal("1.10"), datetime(2026, 1, 2, tzinfo=UTC)]),
)
_summaries = st.one_of(
    st.none(),
    st.dictionaries(
        _texts,
        st.recursive(
            _leaves,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
            max_leaves=6,
        ),
        max_size=5,
    ),
)


_overrides = st.fixed_dictionaries(
    {},
    optional={
        "app": _texts,
        "endpoint": _texts,
        "operation": _texts,
        "status": _texts,
        "outcome": st.sampled_from(["success", "failure", "rejected", "other"]),
        "latency_ms": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
        "attempt": st.integers(-2, 10),
        "idempotency_key": st.one_of(st.none(), _texts),
        "breaker_state": st.one_of(st.none(), _texts),
        "correlation_id": st.one_of(st.none(), _texts),
        "trace_id": st.one_of(st.none(), st.from_regex(r"[0-9a-fA-F]{30,33}", fullmatch=True)),
        "request_summary": _summaries,
        "response_summary": _summaries,
        "error": st.one_of(st.none(), _texts, st.text(min_size=990, max_size=1100)),
    },
)


@settings(max_examples=600, deadline=None)
@given(overrides=_overrides)
def test_the_writer_writes_the_models_bytes_or_leaves_it_to_the_model(overrides: dict[str, Any]) -> None:
    """Each example changes some fields of a valid record (so most examples are written)."""
    fields = _fields(**overrides)
    try:
        expected: bytes | None = _model_json(fields)
    except ValidationError:
        expected = None
    written = _fast(fields)
    if written is None:
        return  # the model's path: it writes (or refuses) the record itself
    assert expected is not None, "the writer wrote a record the model refuses"
    assert written[2] == expected
    assert written[0] == json.loads(expected)["app"]


# -- the logger's choice of path ------------------------------------------------------------


def _record(audit: Any, **overrides: Any) -> None:
    fields = _fields(**overrides)
    fields.pop("trace_id")
    fields.pop("app")  # the logger's own
    fields["error"] = None if fields["error"] is None else RuntimeError(fields["error"])
    audit.record_outbound(traceparent=TRACEPARENT, **fields)


def test_a_kafka_sink_gets_the_models_bytes_without_the_model() -> None:
    sent: list[tuple[str, bytes | None, bytes]] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append((topic, key, value)), "integrations.audit")
    logging.getLogger("processors.audit").setLevel(logging.WARNING)
    try:
        _record(audit_logger("payments", sink))
    finally:
        logging.getLogger("processors.audit").setLevel(logging.NOTSET)
    [(topic, key, value)] = sent
    assert (topic, key, sink.emitted) == ("integrations.audit", b"payments", 1)
    record = json.loads(value)
    assert record["trace_id"] == trace_id_from_traceparent(TRACEPARENT)
    again = AuditEvent.from_json(value)
    assert again.to_json() == value  # the model reads it back to the same record
    assert CARD not in value.decode()
    assert EMAIL not in value.decode()


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_with_the_audit_log_line_on_the_fast_writer_still_writes_the_record_and_the_line(
    outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``processors run`` logs at INFO: the audit line is on for every call, and the record still
    skips the model; the line carries exactly the fields the model's ``log_fields()`` gives."""
    built: list[object] = []
    original = AuditEvent.__init__

    def spy(self: AuditEvent, **values: Any) -> None:
        built.append(values)
        original(self, **values)

    monkeypatch.setattr(AuditEvent, "__init__", spy)
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    sent: list[bytes] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append(value), "integrations.audit")
    try:
        _record(audit_logger("payments", sink), outcome=outcome)
    finally:
        configure_logging("WARNING", stream=io.StringIO())
    assert built == []  # no model on the way
    [value] = sent
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if '"processors.audit"' in x]
    assert line["level"] == ("INFO" if outcome == "success" else "WARNING")
    core = {"ts", "level", "logger", "msg"}
    assert {k: v for k, v in line.items() if k not in core} == AuditEvent.from_json(value).log_fields()
    assert line["msg"].startswith("outbound payment-gateway charge: ")
    assert CARD not in stream.getvalue()
    assert EMAIL not in stream.getvalue()


def test_with_the_audit_log_line_on_the_record_is_logged_with_its_error_redacted() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    sent: list[bytes] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append(value), "integrations.audit")
    try:
        _record(audit_logger("payments", sink), status="timeout", outcome="failure", error=f"to {EMAIL}")
    finally:
        configure_logging("WARNING", stream=io.StringIO())
    [value] = sent
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if '"processors.audit"' in x]
    assert line["level"] == "WARNING"
    assert line["audit_id"] == json.loads(value)["audit_id"]
    assert line["error"] == "RuntimeError: to ***"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_handlers_of_the_audit_logger_get_a_record_with_every_field(outcome: str) -> None:
    """The line's record is made without ``Logger.log``: a handler of its own (an operator's,
    on the audit logger or the root) still gets the fields as attributes, its level and where
    it was logged."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    keep = Keep()
    audit_log = logging.getLogger("processors.audit")
    audit_log.addHandler(keep)
    configure_logging("INFO", stream=io.StringIO())
    sent: list[bytes] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append(value), "integrations.audit")
    try:
        _record(audit_logger("payments", sink), outcome=outcome)
    finally:
        audit_log.removeHandler(keep)
        configure_logging("WARNING", stream=io.StringIO())
    [record] = got
    [value] = sent
    assert record.levelno == (logging.INFO if outcome == "success" else logging.WARNING)
    assert record.name == "processors.audit"
    assert record.pathname.endswith(os.path.join("observability", "audit.py"))
    assert record.funcName == "_log_line"
    fields = AuditEvent.from_json(value).log_fields()
    assert {key: getattr(record, key) for key in fields} == fields
    assert record.getMessage().startswith(f"outbound payment-gateway charge: {fields['status']} ({outcome})")


def test_a_sink_without_json_gets_the_model() -> None:
    sink = MemoryAuditSink()
    _record(audit_logger("payments", sink))
    [event] = sink.events
    assert event.status == "COMPLETED"
    assert CARD not in event.to_json().decode()
    assert EMAIL not in event.to_json().decode()


def test_a_record_the_model_refuses_is_not_written_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[bytes] = []
    sink = KafkaAuditSink(lambda topic, key, value: sent.append(value), "integrations.audit")
    with caplog.at_level(logging.ERROR, logger="processors.observability.audit"):
        _record(audit_logger("payments", sink), operation="")
    assert sent == []
    assert any("not recorded" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_draws_audit_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running the parent's cleanup
        os.write(write, _new_audit_id().bytes)
        os._exit(0)
    os.close(write)
    child = UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert child != _new_audit_id()  # without a reseed both draw the same next id
