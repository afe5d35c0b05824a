"""Dead-letter filters and time parsing, on in-memory dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.dlq import DeadLetter, DlqFilter, parse_time_bound
from processors.dlq.filters import format_time_bound
from processors.errors import ConfigError, Permanent, Retriable
from processors.runtime.failures import H, dead_letter
from processors.runtime.message import StaticMessage

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def make(
    *,
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = b"POL-1",
    exc: Exception | None = None,
    failed_at: datetime = NOW,
    headers: tuple[tuple[str, bytes | None], ...] = (),
    timestamp_ms: int = 0,
) -> DeadLetter:
    source = StaticMessage("insurance.billing.events", 3, 42, key, b"value", headers, 1_700_000_000_000)
    out = dead_letter(
        source, exc or Retriable("timeout"), topic="integrations.payments.dlq", app="payments", group="g",
        attempts=3, now=failed_at,
    )  # fmt: skip
    stored = StaticMessage(out.topic, partition, offset, out.key, out.value, tuple(out.headers), timestamp_ms)
    return DeadLetter.from_message(stored)


# --------------------------------------------------------------------------- time bounds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("45s", timedelta(seconds=45)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_relative_times_are_durations_before_now(text: str, expected: timedelta) -> None:
    assert parse_time_bound(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T08:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01T08:00:00.250+00:00", datetime(2024, 5, 1, 8, 0, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_iso_times_are_utc(text: str, expected: datetime) -> None:
    parsed = parse_time_bound(text)
    assert parsed == expected
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2x", "-2h", "2024-13-01", "", "2 h", "10y"])
def test_bad_times_are_config_errors_that_show_the_forms(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_time_bound(text)
    message = str(caught.value)
    assert "2h" in message or "30s" in message
    assert "ISO-8601" in message


def test_zero_relative_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="longer than zero"):
        parse_time_bound("0h")


@pytest.mark.parametrize("text", ["2h", "3d", "90m", "2024-05-01T08:00:00.000+00:00"])
def test_time_bounds_print_back_as_written(text: str) -> None:
    assert format_time_bound(parse_time_bound(text)) == text


# --------------------------------------------------------------------------- matching


def test_an_empty_filter_matches_everything() -> None:
    assert DlqFilter().matches(make(), now=NOW)


def test_error_class_matches_the_header_exactly_and_is_repeatable() -> None:
    retriable, permanent = make(exc=Retriable("x")), make(exc=Permanent("y"))
    one = DlqFilter.build(error_classes=["Permanent"])
    both = DlqFilter.build(error_classes=["Permanent", "Retriable"])
    lower = DlqFilter.build(error_classes=["permanent"])
    assert [one.matches(r, now=NOW) for r in (retriable, permanent)] == [False, True]
    assert [both.matches(r, now=NOW) for r in (retriable, permanent)] == [True, True]
    assert not lower.matches(permanent, now=NOW)


def test_since_is_inclusive_and_until_exclusive_on_x_failed_at() -> None:
    at = datetime(2024, 5, 1, 8, tzinfo=UTC)
    record = make(failed_at=at)
    assert DlqFilter(since=at).matches(record, now=NOW)
    assert not DlqFilter(until=at).matches(record, now=NOW)
    assert DlqFilter(until=at + timedelta(milliseconds=1)).matches(record, now=NOW)
    assert not DlqFilter(since=at + timedelta(milliseconds=1)).matches(record, now=NOW)


def test_relative_since_resolves_against_the_given_now() -> None:
    flt = DlqFilter.build(since="2h")
    assert flt.matches(make(failed_at=NOW - timedelta(minutes=119)), now=NOW)
    assert not flt.matches(make(failed_at=NOW - timedelta(minutes=121)), now=NOW)
    assert flt.window(NOW) == (NOW - timedelta(hours=2), None)


def test_failed_at_falls_back_to_the_record_timestamp() -> None:
    stamp = datetime(2024, 5, 9, 23, 0, tzinfo=UTC)
    record = DeadLetter(
        topic="dlq", partition=0, offset=0, key=b"k", value=b"v",
        headers=((H.ERROR_CLASS, b"Permanent"), (H.FAILED_AT, b"not a time")),
        timestamp_ms=int(stamp.timestamp() * 1000),
    )  # fmt: skip
    assert record.failed_at == stamp
    assert DlqFilter(since=stamp).matches(record, now=NOW)
    assert not DlqFilter(since=stamp + timedelta(seconds=1)).matches(record, now=NOW)


def test_a_record_without_any_time_never_matches_a_time_filter() -> None:
    record = DeadLetter(topic="dlq", partition=0, offset=0, key=None, value=None, timestamp_ms=None)
    assert DlqFilter().matches(record, now=NOW)
    assert not DlqFilter.build(since="3d").matches(record, now=NOW)


def test_key_partition_and_offsets() -> None:
    record = make(partition=2, offset=10, key=b"POL-7")
    assert DlqFilter(key="POL-7").matches(record, now=NOW)
    assert not DlqFilter(key="POL-70").matches(record, now=NOW)
    assert not DlqFilter(key="POL-7").matches(make(key=None), now=NOW)
    assert DlqFilter(partition=2).matches(record, now=NOW)
    assert not DlqFilter(partition=1).matches(record, now=NOW)
    assert DlqFilter(from_offset=10, to_offset=10).matches(record, now=NOW)
    assert not DlqFilter(from_offset=11).matches(record, now=NOW)
    assert not DlqFilter(to_offset=9).matches(record, now=NOW)


def test_offset_range_clips_to_the_partition_and_the_filter() -> None:
    assert DlqFilter().offset_range(5, 20) == (5, 20)
    assert DlqFilter(from_offset=8, to_offset=12).offset_range(5, 20) == (8, 13)
    assert DlqFilter(from_offset=2).offset_range(5, 20) == (5, 20)
    assert DlqFilter(to_offset=30).offset_range(5, 20) == (5, 20)
    assert DlqFilter(from_offset=25).offset_range(5, 20) == (25, 25)  # nothing to read
    assert DlqFilter(to_offset=3).offset_range(5, 20) == (5, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_offset": 5, "to_offset": 4}, "from-offset 5 is after to-offset 4"),
        ({"partition": -1}, "partition must be ≥ 0"),
        ({"limit": 0}, "limit must be ≥ 1"),
        (
            {"since": datetime(2024, 5, 2, tzinfo=UTC), "until": datetime(2024, 5, 1, tzinfo=UTC)},
            "before until",
        ),
        ({"since": timedelta(hours=1), "until": timedelta(hours=2)}, "before until"),
        ({"since": datetime(2024, 5, 1)}, "timezone-aware"),
    ],
)
def test_inconsistent_filters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DlqFilter(**kwargs)  # type: ignore[arg-type]


def test_describe_and_selection() -> None:
    flt = DlqFilter.build(
        error_classes=["Retriable", "Permanent"],
        since="2h",
        key="POL-1",
        partition=3,
        from_offset=4,
        limit=10,
    )
    assert flt.describe() == {
        "error_class": ["Permanent", "Retriable"],
        "since": "2h",
        "key": "POL-1",
        "partition": 3,
        "from_offset": 4,
        "limit": 10,
    }
    assert flt.selection() == {"error_class": ["Permanent", "Retriable"], "since": "2h", "key": "POL-1"}


def test_the_fingerprint_ignores_where_to_read_but_not_what_to_select() -> None:
    base = DlqFilter.build(error_classes=["Retriable"], since="2h")
    narrower = DlqFilter.build(error_classes=["Retriable"], since="2h", partition=1, to_offset=9, limit=5)
    other = DlqFilter.build(error_classes=["Permanent"], since="2h")
    assert base.selection_fingerprint() == narrower.selection_fingerprint()
    assert base.selection_fingerprint() != other.selection_fingerprint()
