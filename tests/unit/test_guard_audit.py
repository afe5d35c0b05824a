"""Every attempt through the endpoint guard is audited, redacted."""

from __future__ import annotations

import pytest

from processors.errors import Retriable
from processors.observability.audit import MemoryAuditSink, configure_audit_sink
from processors.resilience.config import EndpointPolicy
from processors.resilience.guard import CallContext, EndpointGuard, Unguarded
from processors.resilience.retry import RetriesExhausted, RetryPolicy

CARD = "tok_visa_secret_4242"
PASSPORT = "XK99887766"


@pytest.fixture
def sink() -> MemoryAuditSink:
    memory = MemoryAuditSink()
    configure_audit_sink(memory)
    yield memory  # type: ignore[misc]
    configure_audit_sink(None)


def _context() -> CallContext:
    return CallContext(
        app="payments",
        operation="charge",
        idempotency_key="idem_1",
        correlation_id="corr-1",
        request_summary={
            "payment_method": {"card_token": CARD},
            "document_number": PASSPORT,
            "amount": "10.00",
        },
        describe=lambda result: ("COMPLETED", {"payment_id": result}),
    )


async def test_a_successful_call_is_audited_without_personal_data(sink: MemoryAuditSink) -> None:
    guard = EndpointGuard("payment-gateway", EndpointPolicy())

    async def op() -> str:
        return "PMT-1"

    assert await guard.call(op, context=_context()) == "PMT-1"
    [event] = sink.events
    assert (event.app, event.endpoint, event.operation, event.status) == (
        "payments",
        "payment-gateway",
        "charge",
        "COMPLETED",
    )
    assert (event.outcome, event.attempt, event.idempotency_key, event.breaker_state) == (
        "success",
        1,
        "idem_1",
        "closed",
    )
    text = event.to_json().decode()
    assert CARD not in text
    assert PASSPORT not in text
    assert "PMT-1" in text


async def test_each_failed_attempt_is_audited(sink: MemoryAuditSink) -> None:
    policy = EndpointPolicy(retry=RetryPolicy(max_attempts=3, initial_delay_ms=0))
    guard = EndpointGuard("payment-gateway", policy)

    async def op() -> str:
        raise Retriable(f"503 for {CARD}")

    with pytest.raises(RetriesExhausted):
        await guard.call(op, context=_context())
    assert [e.attempt for e in sink.events] == [1, 2, 3]
    assert {e.outcome for e in sink.events} == {"failure"}
    assert {e.status for e in sink.events} == {"retriable_error"}
    assert all(CARD not in e.to_json().decode() for e in sink.events)


async def test_without_a_context_nothing_is_audited(sink: MemoryAuditSink) -> None:
    guard = EndpointGuard("payment-gateway", EndpointPolicy())

    async def op() -> int:
        return 1

    await guard.call(op)
    assert sink.events == []


async def test_without_the_resilience_layer_the_one_attempt_is_still_audited(sink: MemoryAuditSink) -> None:
    guard = Unguarded("payment-gateway", EndpointPolicy())

    async def op() -> str:
        return "PMT-2"

    assert await guard.call(op, context=_context()) == "PMT-2"

    async def failing() -> str:
        raise Retriable(f"503 for {CARD}")

    with pytest.raises(Retriable):  # no retry: the failure propagates as it is
        await guard.call(failing, context=_context())
    assert [(e.outcome, e.status) for e in sink.events] == [
        ("success", "COMPLETED"),
        ("failure", "retriable_error"),
    ]
    assert all(e.attempt >= 1 for e in sink.events)  # counted like any call
    assert all(CARD not in e.to_json().decode() for e in sink.events)
