"""The operator view of deliveries: parsing, ordering, bounds, failed_since; redelivery headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from processors.errors import ConfigError
from processors.webhooks.attempts import (
    AttemptsView,
    DeliveryAttempt,
    FailedMessage,
    JobRef,
    RedeliveryReport,
    redelivery_headers,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DISPATCH = "integrations.webhooks.dispatch"


def record(
    webhook_id: str = "msg_a",
    *,
    sub: str = "sub_1",
    attempt: int = 1,
    status: str = "failed",
    at: datetime = T0,
    nxt: str | None = None,
    offset: int = 0,
    partition: int = 0,
    **extra: Any,
) -> bytes:
    value: dict[str, Any] = {
        "subscription_id": sub,
        "webhook_id": webhook_id,
        "event_id": f"evt-{webhook_id}",
        "event_type": "policy.issued",
        "subject": "POL-1",
        "attempt": attempt,
        "status": status,
        "http_status": 500 if status == "failed" else 200 if status == "delivered" else None,
        "latency_ms": 12.5,
        "error": "HTTP 500" if status == "failed" else None,
        "response_excerpt": "oops" if status == "failed" else None,
        "attempted_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "url_host": "partner.example",
        "next": nxt,
        "job": {"topic": DISPATCH, "partition": partition, "offset": offset},
    }
    value.update(extra)
    return json.dumps(value, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ parsing


def test_parse_reads_every_documented_field() -> None:
    attempt = DeliveryAttempt.parse(record(nxt="retry", offset=42, partition=3))
    assert attempt is not None
    assert attempt.subscription_id == "sub_1"
    assert attempt.webhook_id == "msg_a"
    assert attempt.event_id == "evt-msg_a"
    assert attempt.subject == "POL-1"
    assert attempt.attempt == 1
    assert attempt.status == "failed"
    assert attempt.http_status == 500
    assert attempt.latency_ms == 12.5
    assert attempt.error == "HTTP 500"
    assert attempt.response_excerpt == "oops"
    assert attempt.attempted_at == T0
    assert attempt.attempted_at.tzinfo is not None
    assert attempt.url_host == "partner.example"
    assert attempt.next_step == "retry"
    assert attempt.job == JobRef(DISPATCH, 3, 42)


def test_parse_normalises_offsets_to_utc_and_ignores_unknown_fields() -> None:
    paris = timezone(timedelta(hours=1))
    value = json.loads(record())
    value["attempted_at"] = "2025-03-01T13:00:00+01:00"
    value["added_later"] = {"x": 1}
    attempt = DeliveryAttempt.parse(json.dumps(value).encode())
    assert attempt is not None
    assert attempt.attempted_at == datetime(2025, 3, 1, 13, tzinfo=paris)
    assert attempt.attempted_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        json.dumps({"subscription_id": "sub_1"}).encode(),
        record(status="sending"),
        record(attempt=-1),
        record(nxt="later"),
        record(attempted_at="2025-03-01T12:00:00"),  # naive
        record(job={"topic": DISPATCH, "partition": 0}),
        record(webhook_id=""),
    ],
    ids=[
        "none",
        "empty",
        "text",
        "list",
        "fields-missing",
        "unknown-status",
        "negative-attempt",
        "unknown-next",
        "naive-time",
        "job-without-offset",
        "empty-webhook-id",
    ],
)
def test_unparsable_records_are_skipped_and_counted(value: bytes | None) -> None:
    view = AttemptsView()
    assert view.apply(value) is None
    assert view.skipped == 1
    assert view.applied == 0
    assert view.endpoints() == []


def test_to_json_has_the_operator_fields() -> None:
    attempt = DeliveryAttempt.parse(record(at=T0 + timedelta(microseconds=1500)))
    assert attempt is not None
    assert attempt.to_json() == {
        "webhook_id": "msg_a",
        "event_type": "policy.issued",
        "attempt": 1,
        "status": "failed",
        "http_status": 500,
        "latency_ms": 12.5,
        "error": "HTTP 500",
        "response_excerpt": "oops",
        "attempted_at": "2025-03-01T12:00:00.001Z",
        "next": None,
    }


# ------------------------------------------------------------------------------ queries


def test_for_endpoint_lists_newest_first_by_time_then_log_order() -> None:
    view = AttemptsView()
    view.apply(record("msg_b", at=T0 + timedelta(seconds=2)))
    view.apply(record("msg_a", at=T0))
    view.apply(record("msg_c", at=T0 + timedelta(seconds=2)))  # same time, later in the log
    view.apply(record("msg_d", at=T0 + timedelta(seconds=1)))
    ids = [a.webhook_id for a in view.for_endpoint("sub_1")]
    assert ids == ["msg_c", "msg_b", "msg_d", "msg_a"]


def test_for_endpoint_filters_and_limits() -> None:
    view = AttemptsView()
    for i in range(10):
        status = "delivered" if i % 2 else "failed"
        view.apply(record(f"msg_{i}", status=status, at=T0 + timedelta(minutes=i)))
    view.apply(record("msg_other", sub="sub_2", status="delivered", at=T0 + timedelta(hours=1)))

    delivered = view.for_endpoint("sub_1", status="delivered")
    assert [a.webhook_id for a in delivered] == ["msg_9", "msg_7", "msg_5", "msg_3", "msg_1"]
    recent = view.for_endpoint("sub_1", since=T0 + timedelta(minutes=7))
    assert [a.webhook_id for a in recent] == ["msg_9", "msg_8", "msg_7"]
    assert [a.webhook_id for a in view.for_endpoint("sub_1", limit=2)] == ["msg_9", "msg_8"]
    both = view.for_endpoint("sub_1", status="failed", since=T0 + timedelta(minutes=5), limit=1)
    assert [a.webhook_id for a in both] == ["msg_8"]
    assert view.for_endpoint("sub_unknown") == []
    assert [a.webhook_id for a in view.for_endpoint("sub_2")] == ["msg_other"]


def test_queries_refuse_naive_times_and_bad_limits() -> None:
    view = AttemptsView()
    view.apply(record())
    with pytest.raises(ValueError, match="timezone-aware"):
        view.for_endpoint("sub_1", since=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        view.failed_since("sub_1", datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        view.for_endpoint("sub_1", limit=0)


def test_for_message_and_latest_follow_one_message() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", attempt=1, status="failed", nxt="retry", at=T0))
    view.apply(record("msg_b", attempt=1, status="delivered", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, status="failed", nxt="retry", at=T0 + timedelta(seconds=5)))
    view.apply(record("msg_a", attempt=3, status="delivered", at=T0 + timedelta(seconds=65)))

    history = view.for_message("sub_1", "msg_a")
    assert [(a.attempt, a.status) for a in history] == [(3, "delivered"), (2, "failed"), (1, "failed")]
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert (latest.attempt, latest.status) == (3, "delivered")
    assert view.latest("sub_1", "msg_unknown") is None
    assert view.latest("sub_unknown", "msg_a") is None
    assert view.for_message("sub_1", "msg_unknown") == []
    assert view.for_message("sub_2", "msg_a") == []


def test_latest_is_the_last_logged_attempt_even_with_an_earlier_timestamp() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", attempt=1, status="failed", nxt="retry", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, status="delivered", at=T0))  # clocks differ between hosts
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert latest.status == "delivered"
    assert view.failed_since("sub_1", T0 - timedelta(hours=1)) == []


# ------------------------------------------------------------------------------ bounds


def test_history_is_bounded_per_endpoint_oldest_evicted() -> None:
    view = AttemptsView(max_attempts_per_endpoint=3)
    for i in range(5):
        view.apply(record(f"msg_{i}", at=T0 + timedelta(seconds=i)))
    view.apply(record("msg_x", sub="sub_2"))

    assert [a.webhook_id for a in view.for_endpoint("sub_1")] == ["msg_4", "msg_3", "msg_2"]
    assert view.attempts_kept("sub_1") == 3
    assert view.attempts_kept("sub_2") == 1  # another endpoint's bound is its own
    assert view.evicted == 2
    assert view.applied == 6
    # An evicted message is gone entirely: no stale latest status, no recovery.
    assert view.latest("sub_1", "msg_0") is None
    assert view.for_message("sub_1", "msg_1") == []
    assert [m.webhook_id for m in view.failed_since("sub_1", T0)] == ["msg_2", "msg_3", "msg_4"]


def test_eviction_drops_a_message_s_oldest_attempts_first() -> None:
    view = AttemptsView(max_attempts_per_endpoint=3)
    view.apply(record("msg_a", attempt=1, nxt="retry", at=T0))
    view.apply(record("msg_b", attempt=1, status="delivered", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, nxt="retry", at=T0 + timedelta(seconds=2)))
    view.apply(record("msg_a", attempt=3, nxt="dlq", at=T0 + timedelta(seconds=3)))  # evicts msg_a #1

    assert [a.attempt for a in view.for_message("sub_1", "msg_a")] == [3, 2]
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert latest.attempt == 3
    view.apply(record("msg_c", status="delivered", at=T0 + timedelta(seconds=4)))  # evicts msg_b
    assert view.latest("sub_1", "msg_b") is None
    assert [a.webhook_id for a in view.for_endpoint("sub_1")] == ["msg_c", "msg_a", "msg_a"]


def test_bound_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        AttemptsView(max_attempts_per_endpoint=0)


# ------------------------------------------------------------------------------ failed_since


def test_failed_since_takes_each_failed_message_once_by_its_latest_attempt() -> None:
    view = AttemptsView()
    since = T0 + timedelta(minutes=10)
    # Failed three times after `since`: recovered once, with its dispatch record.
    view.apply(record("msg_retrying", attempt=1, nxt="retry", at=since, offset=1))
    view.apply(record("msg_retrying", attempt=2, nxt="retry", at=since + timedelta(minutes=1), offset=1))
    view.apply(record("msg_retrying", attempt=3, nxt="dlq", at=since + timedelta(minutes=2), offset=1))
    # Failed, then delivered by a later retry: NOT recovered.
    view.apply(record("msg_recovered", attempt=1, nxt="retry", at=since + timedelta(seconds=1), offset=2))
    view.apply(
        record("msg_recovered", attempt=2, status="delivered", at=since + timedelta(minutes=5), offset=2)
    )
    # Other terminal decisions.
    view.apply(record("msg_refused", attempt=0, status="refused", nxt="dlq", at=since, offset=3))
    view.apply(record("msg_skipped", attempt=0, status="skipped", at=since + timedelta(seconds=3), offset=4))
    view.apply(record("msg_disabled", status="disabled", at=since + timedelta(seconds=4), offset=5))
    # Failed exactly at `since` (inclusive) and before it (excluded).
    view.apply(record("msg_at", nxt="dlq", at=since, offset=6, partition=2))
    view.apply(record("msg_before", nxt="dlq", at=since - timedelta(milliseconds=1), offset=7))
    # Delivered only.
    view.apply(record("msg_ok", status="delivered", at=since + timedelta(minutes=1), offset=8))
    # Another endpoint's failure.
    view.apply(record("msg_elsewhere", sub="sub_2", nxt="dlq", at=since, offset=9))

    failed = view.failed_since("sub_1", since)
    assert sorted(m.webhook_id for m in failed) == [
        "msg_at",
        "msg_disabled",
        "msg_refused",
        "msg_retrying",
        "msg_skipped",
    ]
    assert len(failed) == len({m.webhook_id for m in failed})
    by_id = {m.webhook_id: m for m in failed}
    assert by_id["msg_retrying"] == FailedMessage("msg_retrying", JobRef(DISPATCH, 0, 1))
    assert by_id["msg_at"].job == JobRef(DISPATCH, 2, 6)
    # Oldest failure first.
    assert failed[-1].webhook_id == "msg_retrying"
    assert [m.webhook_id for m in view.failed_since("sub_2", since)] == ["msg_elsewhere"]
    assert view.failed_since("sub_unknown", since) == []


def test_failed_since_uses_the_latest_attempt_s_dispatch_record() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", nxt="dlq", at=T0, offset=5))
    view.apply(record("msg_a", nxt="dlq", at=T0 + timedelta(hours=1), offset=77))  # an operator copy failed
    assert view.failed_since("sub_1", T0) == [FailedMessage("msg_a", JobRef(DISPATCH, 0, 77))]
    # The latest attempt is before `since`: not listed even though an older one is also before.
    assert view.failed_since("sub_1", T0 + timedelta(hours=2)) == []


def test_a_failure_with_next_dlq_counts_whatever_its_status() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", status="delivered", nxt="dlq", at=T0))
    assert [m.webhook_id for m in view.failed_since("sub_1", T0)] == ["msg_a"]


# ------------------------------------------------------------------------------ redelivery


def test_redelivery_headers_keep_identity_drop_failure_provenance_and_mark_the_copy() -> None:
    at = datetime(2025, 3, 2, 8, 30, 0, 250_000, tzinfo=UTC)
    original = [
        ("content-type", b"application/json"),
        ("x-subscription-id", b"sub_1"),
        ("x-webhook-id", b"msg_a"),
        ("x-event-id", b"evt-1"),
        ("x-event-type", b"policy.issued"),
        ("x-subject", b"POL-1"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-original-topic", b"integrations.webhooks.dispatch"),
        ("x-original-partition", b"3"),
        ("x-original-offset", b"9"),
        ("x-error-class", b"Retriable"),
        ("x-error-message", b"HTTP 503"),
        ("x-attempts", b"4"),
        ("x-due-at", b"123"),
        ("x-redelivery", b"operator"),
        ("x-redelivered-at", b"2025-03-01T00:00:00.000Z"),
        ("x-empty", None),
    ]
    headers = redelivery_headers(original, at)
    assert headers == [
        ("content-type", b"application/json"),
        ("x-subscription-id", b"sub_1"),
        ("x-webhook-id", b"msg_a"),
        ("x-event-id", b"evt-1"),
        ("x-event-type", b"policy.issued"),
        ("x-subject", b"POL-1"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-empty", b""),
        ("x-redelivery", b"operator"),
        ("x-redelivered-at", b"2025-03-02T08:30:00.250Z"),
    ]


def test_report_json_counts_and_names() -> None:
    report = RedeliveryReport(("msg_a", "msg_b"), (JobRef(DISPATCH, 1, 99),))
    assert report.redelivered_count == 2
    assert report.missing_count == 1
    assert report.to_json() == {
        "redelivered": 2,
        "missing": 1,
        "webhook_ids": ["msg_a", "msg_b"],
        "missing_jobs": [{"topic": DISPATCH, "partition": 1, "offset": 99}],
        "mismatched_jobs": [],
    }
