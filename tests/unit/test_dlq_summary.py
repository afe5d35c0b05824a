"""Breakdowns of dead letters by error class, UTC day and original topic."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from processors.dlq import DeadLetter, DlqStats
from processors.dlq.summary import UNKNOWN, print_breakdown
from processors.errors import Permanent, Retriable
from processors.runtime.failures import dead_letter
from processors.runtime.message import StaticMessage


def make(exc: Exception, failed_at: datetime, topic: str = "insurance.billing.events") -> DeadLetter:
    source = StaticMessage(topic, 0, 1, b"k", b"v", (), 0)
    out = dead_letter(source, exc, topic="dlq", app="payments", group="g", attempts=1, now=failed_at)
    return DeadLetter.from_message(StaticMessage("dlq", 0, 0, out.key, out.value, tuple(out.headers), 0))


def test_counts_by_class_day_and_topic_with_oldest_and_newest() -> None:
    late_evening = datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC)
    counts = DlqStats()
    for record in (
        make(Retriable("t"), late_evening),
        make(Retriable("t"), late_evening + timedelta(seconds=2)),
        make(Permanent("p"), late_evening - timedelta(days=3), topic="insurance.policy.events"),
    ):
        counts.add(record)
    assert counts.as_dict() == {
        "total": 3,
        "oldest": "2024-04-28T23:59:59.000+00:00",
        "newest": "2024-05-02T00:00:01.000+00:00",
        "by_error_class": {"Retriable": 2, "Permanent": 1},
        "by_day": {"2024-04-28": 1, "2024-05-01": 1, "2024-05-02": 1},
        "by_original_topic": {"insurance.billing.events": 2, "insurance.policy.events": 1},
    }


def test_records_without_headers_are_counted_as_unknown() -> None:
    counts = DlqStats()
    counts.add(DeadLetter(topic="dlq", partition=0, offset=0, key=None, value=None, timestamp_ms=None))
    assert counts.as_dict()["by_error_class"] == {UNKNOWN: 1}
    assert counts.as_dict()["by_day"] == {UNKNOWN: 1}
    assert counts.oldest is None


def test_the_human_breakdown_names_every_bucket() -> None:
    counts = DlqStats()
    counts.add(make(Permanent("p"), datetime(2024, 5, 1, tzinfo=UTC)))
    out = io.StringIO()
    print_breakdown(counts, out)
    text = out.getvalue()
    assert "total   1" in text
    assert "Permanent" in text
    assert "2024-05-01" in text
    assert "insurance.billing.events" in text


def test_an_empty_breakdown_says_zero() -> None:
    out = io.StringIO()
    print_breakdown(DlqStats(), out)
    assert out.getvalue() == "total   0\n"
