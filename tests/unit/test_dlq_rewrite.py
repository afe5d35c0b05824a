"""Headers of replayed dead letters, and the replay-count loop guard."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from processors.dlq import replay_count, replay_headers, should_park
from processors.errors import Permanent
from processors.runtime.failures import PROVENANCE_HEADERS, H, dead_letter
from processors.runtime.message import StaticMessage

NOW = datetime(2024, 5, 10, 12, 0, 0, 123_000, tzinfo=UTC)


def dlq_headers(replays: str | None = "0") -> list[tuple[str, bytes]]:
    own: tuple[tuple[str, bytes | None], ...] = (
        ("content-type", b"application/json"),
        ("traceparent", b"00-abc-def-01"),
    )
    if replays is not None:
        own = (*own, (H.REPLAY_COUNT, replays.encode()))
    source = StaticMessage("insurance.billing.events", 4, 77, b"POL-1", b"{}", own, 1_700_000_000_000)
    out = dead_letter(
        source, Permanent("declined"), topic="dlq", app="payments", group="g", attempts=3,
        now=NOW - timedelta(hours=1),
    )  # fmt: skip
    return out.headers


def as_dict(headers: list[tuple[str, bytes]]) -> dict[str, bytes]:
    return dict(headers)


def test_replay_count_increments_due_at_is_now_and_attempts_reset() -> None:
    before = dlq_headers("1")
    after = as_dict(replay_headers(before, now=NOW))
    assert after[H.REPLAY_COUNT] == b"2"
    assert after[H.DUE_AT] == b"2024-05-10T12:00:00.123+00:00"
    assert after[H.ATTEMPTS] == b"0"


def test_due_at_uses_the_format_of_x_failed_at() -> None:
    headers = dlq_headers()
    failed_at = as_dict(headers)[H.FAILED_AT].decode()
    due_at = as_dict(replay_headers(headers, now=NOW))[H.DUE_AT].decode()
    assert len(due_at) == len(failed_at)
    assert datetime.fromisoformat(due_at) == NOW
    assert datetime.fromisoformat(failed_at).utcoffset() == datetime.fromisoformat(due_at).utcoffset()


def test_a_missing_replay_count_counts_as_zero() -> None:
    headers = [(k, v) for k, v in dlq_headers() if k != H.REPLAY_COUNT]
    assert replay_count(headers) == 0
    assert as_dict(replay_headers(headers, now=NOW))[H.REPLAY_COUNT] == b"1"


def test_every_other_header_is_kept_with_its_value() -> None:
    before = as_dict(dlq_headers())
    after = as_dict(replay_headers(list(before.items()), now=NOW))
    changed = {H.REPLAY_COUNT, H.DUE_AT, H.ATTEMPTS}
    for name in (
        H.ORIGINAL_TOPIC, H.ORIGINAL_PARTITION, H.ORIGINAL_OFFSET, H.ORIGINAL_TIMESTAMP,
        H.ERROR_CLASS, H.ERROR_MESSAGE, H.FAILED_AT, H.APP, H.GROUP, "content-type", "traceparent",
    ):  # fmt: skip
        assert after[name] == before[name], name
    assert set(after) == set(before) | changed
    assert after[H.ORIGINAL_TOPIC] == b"insurance.billing.events"
    assert after[H.ORIGINAL_PARTITION] == b"4"
    assert after[H.ORIGINAL_OFFSET] == b"77"


def test_no_provenance_header_is_duplicated_even_when_the_input_repeats_them() -> None:
    repeated = [*dlq_headers("0"), (H.REPLAY_COUNT, b"2"), (H.ATTEMPTS, b"5"), (H.ERROR_CLASS, b"Retriable")]
    after = replay_headers(repeated, now=NOW)
    counts = Counter(name for name, _ in after)
    assert all(counts[name] == 1 for name in PROVENANCE_HEADERS if name in counts)
    values = as_dict(after)
    assert values[H.REPLAY_COUNT] == b"3"  # the last value (2) wins, then +1
    assert values[H.ERROR_CLASS] == b"Retriable"
    assert values[H.ATTEMPTS] == b"0"


def test_the_event_headers_keep_their_order_and_come_first() -> None:
    after = replay_headers(dlq_headers(), now=NOW)
    assert [name for name, _ in after[:2]] == ["content-type", "traceparent"]


def test_replaying_twice_counts_twice() -> None:
    once = replay_headers(dlq_headers(), now=NOW)
    twice = replay_headers(once, now=NOW + timedelta(seconds=1))
    assert replay_count(twice) == 2
    assert len(twice) == len(once)


def test_the_input_is_not_modified() -> None:
    headers = dlq_headers()
    copy = list(headers)
    replay_headers(headers, now=NOW)
    assert headers == copy


@pytest.mark.parametrize(
    ("count", "limit", "park"),
    [(None, 3, False), ("0", 3, False), ("2", 3, False), ("3", 3, True), ("7", 3, True), ("0", 1, False),
     ("1", 1, True), ("x", 3, True), ("-1", 3, True)],
)  # fmt: skip
def test_records_replayed_limit_times_are_parked(count: str | None, limit: int, park: bool) -> None:
    assert should_park(dlq_headers(count), limit) is park


def test_unreadable_counts_are_none() -> None:
    assert replay_count([(H.REPLAY_COUNT, b"two")]) is None
    assert replay_count([(H.REPLAY_COUNT, b"")]) is None
    assert should_park([(H.REPLAY_COUNT, None)], 3)
    assert replay_count([(H.REPLAY_COUNT, b" 4 ")]) == 4
    assert replay_count(None) == 0


def test_a_replay_starts_the_retry_schedule_again() -> None:
    from processors.dlq.rewrite import replay_headers
    from processors.runtime.failures import H as headers_of

    out = replay_headers([(headers_of.RETRY_HOPS, b"7"), (headers_of.REPLAY_COUNT, b"0")])
    assert headers_of.RETRY_HOPS not in [name for name, _ in out]
