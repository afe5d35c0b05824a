"""The webhooks app's pure mapping: dispatch records, outcomes, delivery-log lines."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.contract.examples import example_event
from processors.errors import ValidationFailed
from processors.runtime.message import StaticMessage, header_value
from processors.webhooks.delivery import (
    DispatchJob,
    Target,
    classify_status,
    dispatch_records,
    excerpt,
    log_record,
)


def test_one_dispatch_record_per_subscription_with_the_seed_payload() -> None:
    event = example_event("policy.issued")
    records = dispatch_records(
        event,
        [Target("ep_a", ordered=False), Target("ep_b", ordered=True)],
        topic="dispatch",
        traceparent="00-x",
    )
    assert [r.topic for r in records] == ["dispatch", "dispatch"]
    first, second = (json.loads(r.value or b"") for r in records)
    expected_id = "msg_" + hashlib.sha256(f"ep_a:{event.event_id}".encode()).hexdigest()[:26]
    assert first["webhook_id"] == expected_id
    assert first["event_type"] == "policy.issued"
    assert first["timestamp"].endswith("Z")
    assert first["data"]["policy_id"] == event.subject
    # Money is a string, exactly as in the event.
    assert Decimal(first["data"]["gross_premium"]) == event.data.gross_premium  # type: ignore[attr-defined]
    assert first["webhook_id"] != second["webhook_id"]
    # Unordered: a unique key; ordered: subscription and entity, so one entity stays in order.
    assert records[0].key == f"ep_a|{expected_id}".encode()
    assert records[1].key == f"ep_b|{event.subject}".encode()
    assert header_value(records[1].headers, "x-ordering") == "entity"
    assert header_value(records[0].headers, "x-ordering") == "none"
    assert header_value(records[0].headers, "traceparent") == "00-x"


def test_the_same_event_gives_the_same_bytes_every_time() -> None:
    event = example_event("claim.paid")
    once = dispatch_records(event, [Target("ep_a", ordered=False)], topic="d")
    again = dispatch_records(event, [Target("ep_a", ordered=False)], topic="d")
    assert once[0].value == again[0].value
    assert once[0].key == again[0].key


def test_no_subscription_no_record() -> None:
    assert dispatch_records(example_event("policy.issued"), [], topic="d") == []


def test_a_dispatch_record_reads_back() -> None:
    record = dispatch_records(example_event("policy.issued"), [Target("ep_a", ordered=True)], topic="d")[0]
    msg = StaticMessage("d", 2, 9, record.key, record.value, tuple(record.headers))
    job = DispatchJob.from_message(msg)
    assert job.subscription_id == "ep_a"
    assert job.ordered
    assert job.event_type == "policy.issued"
    assert job.body == record.value


def test_a_dispatch_record_without_its_headers_is_refused() -> None:
    msg = StaticMessage("d", 0, 0, b"k", b"{}")
    with pytest.raises(ValidationFailed, match="x-subscription-id"):
        DispatchJob.from_message(msg)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, "delivered"), (204, "delivered"), (299, "delivered"), (410, "gone"), (301, "retry"),
     (302, "retry"), (400, "retry"), (429, "retry"), (500, "retry"), (503, "retry")],
)  # fmt: skip
def test_only_2xx_is_success_and_410_disables(status: int, kind: str) -> None:
    assert classify_status(status, None, retry_after_cap_s=60).kind == kind


def test_redirects_say_they_are_not_followed() -> None:
    assert "not followed" in classify_status(302, None, retry_after_cap_s=60).reason


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert classify_status(503, 30.0, retry_after_cap_s=60).retry_after_s == 30.0
    assert classify_status(429, 86_400.0, retry_after_cap_s=60).retry_after_s == 60
    assert classify_status(503, None, retry_after_cap_s=60).retry_after_s is None


def test_the_response_excerpt_is_short_and_masked() -> None:
    body = b'{"error": "bad", "card_token": "tok_visa_4242", "authorization": "Bearer abc.def"}' + b"x" * 1000
    text = excerpt(body, 120)
    assert text is not None
    assert len(text) <= 120
    assert "tok_visa_4242" not in text
    assert "abc.def" not in text
    assert excerpt(b"", 100) is None


def test_a_log_line_has_the_documented_fields() -> None:
    record = dispatch_records(example_event("policy.issued"), [Target("ep_a", ordered=False)], topic="d")[0]
    job = DispatchJob.from_message(StaticMessage("d", 1, 5, record.key, record.value, tuple(record.headers)))
    line = log_record(
        "deliveries", job, status="failed", attempt=2, url_host="partner.example",
        job_coordinates=("d", 1, 5), http_status=503, latency_ms=12.3456, error="HTTP 503", next_step="retry",
    )  # fmt: skip
    assert line.key == b"ep_a"
    value = json.loads(line.value or b"")
    assert set(value) == {
        "subscription_id", "webhook_id", "event_id", "event_type", "subject", "attempt", "status",
        "http_status", "latency_ms", "error", "response_excerpt", "attempted_at", "url_host", "next", "job",
    }  # fmt: skip
    assert value["job"] == {"topic": "d", "partition": 1, "offset": 5}
    assert value["latency_ms"] == 12.346
    assert value["attempted_at"].endswith("Z")


def _dumped_line(job: DispatchJob, **fields: Any) -> bytes:
    """The delivery-log value as ``json.dumps`` writes the documented fields, in their order."""
    latency = fields.get("latency_ms")
    topic, partition, offset = fields["job_coordinates"]
    value = {
        "subscription_id": job.subscription_id,
        "webhook_id": job.webhook_id,
        "event_id": job.event_id,
        "event_type": job.event_type,
        "subject": job.subject,
        "attempt": fields["attempt"],
        "status": fields["status"],
        "http_status": fields.get("http_status"),
        "latency_ms": None if latency is None else round(latency, 3),
        "error": fields.get("error"),
        "response_excerpt": fields.get("response_excerpt"),
        "attempted_at": fields["attempted_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "url_host": fields["url_host"],
        "next": fields.get("next_step"),
        "job": {"topic": topic, "partition": partition, "offset": offset},
    }
    return json.dumps(value, separators=(",", ":")).encode()


_TEXT = st.one_of(st.none(), st.text(max_size=40))


@settings(max_examples=500, deadline=None)
@given(
    error=_TEXT,
    excerpt_text=_TEXT,
    url_host=st.text(max_size=30),
    http_status=st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    latency_ms=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    attempt=st.integers(min_value=1, max_value=10**6),
    offset=st.integers(min_value=0, max_value=2**62),
    next_step=st.sampled_from([None, "retry", "dlq"]),
    subject=st.text(min_size=1, max_size=30),
)
def test_a_log_line_is_byte_for_byte_what_json_dumps_writes(
    error: str | None,
    excerpt_text: str | None,
    url_host: str,
    http_status: int | None,
    latency_ms: float | None,
    attempt: int,
    offset: int,
    next_step: Literal["retry", "dlq"] | None,
    subject: str,
) -> None:
    record = dispatch_records(example_event("policy.issued"), [Target('ep_é"', ordered=False)], topic="d")[0]
    job = dataclasses.replace(
        DispatchJob.from_message(StaticMessage("d", 1, 5, record.key, record.value, tuple(record.headers))),
        subject=subject,
    )
    fields: dict[str, Any] = {
        "status": "failed",
        "attempt": attempt,
        "url_host": url_host,
        "job_coordinates": ("d\u2028", 3, offset),
        "http_status": http_status,
        "latency_ms": latency_ms,
        "error": error,
        "response_excerpt": excerpt_text,
        "next_step": next_step,
        "attempted_at": datetime(2026, 12, 7, 16, 30, 1, 234567, tzinfo=UTC),
    }
    line = log_record("deliveries", job, **fields)
    assert line.value == _dumped_line(job, **fields)
