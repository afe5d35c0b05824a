"""Failure routing to tiers / DLQ / parking, and the key-order gate."""

from __future__ import annotations

import time

import pytest

from processors.errors import DecodeError, Permanent, Retriable
from processors.runtime.failures import H
from processors.runtime.message import StaticMessage, header_value
from processors.runtime.routing import OrderingGate, RetryRouter, due_at_of, original_id, pending_from_tiers
from processors.topics.catalogue import AppTopics, RetryTier

TIERS = (
    RetryTier("app.retry.0-5s", 5_000, 0),
    RetryTier("app.retry.1-30s", 30_000, 1),
    RetryTier("app.retry.2-5m", 300_000, 2),
)
TOPICS = AppTopics("app", ("src",), TIERS, "app.dlq", "app.parked")


def _src(offset: int, key: str = "K", headers: tuple[tuple[str, bytes | None], ...] = ()) -> StaticMessage:
    return StaticMessage("src", 2, offset, key.encode(), b"v", headers, timestamp_ms=1_700_000_000_000)


def _moved(record_headers: list[tuple[str, bytes]], topic: str, offset: int) -> StaticMessage:
    return StaticMessage(topic, 2, offset, b"K", b"v", tuple(record_headers))


def test_retriable_goes_to_the_next_tier_with_a_due_time_and_keeps_the_partition() -> None:
    router = RetryRouter(TOPICS, app="app")
    before = time.time()
    out = router.failed(_src(7), Retriable("503"), group="g", attempts=3)
    assert out.topic == "app.retry.0-5s"
    assert out.partition == 2
    assert out.key == b"K"
    due = due_at_of(StaticMessage("x", 0, 0, None, None, tuple(out.headers)))
    assert due is not None
    assert before + 4.999 <= due <= time.time() + 5  # written with millisecond precision
    assert header_value(out.headers, H.ATTEMPTS) == "3"
    assert header_value(out.headers, H.ORIGINAL_OFFSET) == "7"
    # From the first tier it moves to the second, attempts accumulate, provenance is kept.
    again = router.failed(_moved(out.headers, "app.retry.0-5s", 0), Retriable("503"), group="g", attempts=3)
    assert again.topic == "app.retry.1-30s"
    assert header_value(again.headers, H.ATTEMPTS) == "6"
    assert header_value(again.headers, H.ORIGINAL_TOPIC) == "src"
    assert header_value(again.headers, H.ORIGINAL_OFFSET) == "7"
    names = [k for k, _ in again.headers]
    assert len(names) == len(set(names)), "provenance headers must be replaced, not appended"


def test_retry_after_longer_than_a_tier_skips_to_a_tier_that_waits_long_enough() -> None:
    router = RetryRouter(TOPICS, app="app")
    out = router.failed(_src(1), Retriable("429", retry_after_s=60), group="g", attempts=1)
    assert out.topic == "app.retry.2-5m"
    huge = router.failed(_src(2, "L"), Retriable("429", retry_after_s=3_600), group="g", attempts=1)
    assert huge.topic == "app.retry.2-5m"  # the longest tier, due no earlier than asked
    due = due_at_of(StaticMessage("x", 0, 0, None, None, tuple(huge.headers)))
    assert due is not None
    assert due >= time.time() + 3_590


def test_exhausted_tiers_permanent_and_poison_go_to_the_dlq() -> None:
    router = RetryRouter(TOPICS, app="app")
    last = router.failed(_src(1), Retriable("503"), group="g", attempts=1)
    for tier in TIERS:
        last = router.failed(_moved(last.headers, tier.topic, 0), Retriable("503"), group="g", attempts=1)
    assert last.topic == "app.dlq"
    assert router.failed(_src(2, "P"), Permanent("422"), group="g", attempts=1).topic == "app.dlq"
    poison = router.failed(_src(3, "Q"), DecodeError("garbage"), group="g", attempts=1)
    assert poison.topic == "app.dlq"
    assert header_value(poison.headers, H.ERROR_CLASS) == "DecodeError"
    assert header_value(poison.headers, H.DUE_AT) is None


def test_a_replayed_record_that_fails_again_past_the_limit_is_parked() -> None:
    router = RetryRouter(TOPICS, app="app", replay_limit=2)
    once = _src(1, headers=((H.REPLAY_COUNT, b"1"),))
    assert router.failed(once, Permanent("422"), group="g", attempts=1).topic == "app.dlq"
    twice = _src(2, "M", headers=((H.REPLAY_COUNT, b"2"),))
    parked = router.failed(twice, Permanent("422"), group="g", attempts=1)
    assert parked.topic == "app.parked"
    assert header_value(parked.headers, H.REPLAY_COUNT) == "2"


def test_later_events_of_a_key_wait_behind_the_one_in_retry_in_order() -> None:
    router = RetryRouter(TOPICS, app="app")
    assert router.gate.idle
    head = router.failed(_src(10), Retriable("503"), group="g", attempts=3)
    assert not router.gate.idle
    # Offsets 11 and 12 of the same key arrive: both follow the head into its tier, in order.
    f11 = router.follow(_src(11))
    f12 = router.follow(_src(12))
    assert f11 is not None
    assert f12 is not None
    assert f11.topic == f12.topic == "app.retry.0-5s"
    assert header_value(f11.headers, H.DUE_AT) == header_value(head.headers, H.DUE_AT)
    assert header_value(f11.headers, H.ERROR_CLASS) == "WaitingBehind"
    # Another key is not held up.
    assert router.follow(_src(13, "OTHER")) is None
    # The head fails again and moves on; its follower coming due moves behind it again.
    head2 = router.failed(_moved(head.headers, "app.retry.0-5s", 0), Retriable("503"), group="g", attempts=3)
    follower = _moved(f11.headers, "app.retry.0-5s", 1)
    moved = router.follow(follower)
    assert moved is not None
    assert moved.topic == head2.topic == "app.retry.1-30s"
    # The head succeeds: the first follower is now the head and runs; the second still waits.
    router.succeeded(_moved(head2.headers, "app.retry.1-30s", 0))
    assert router.follow(_moved(moved.headers, "app.retry.1-30s", 1)) is None
    assert router.follow(_moved(f12.headers, "app.retry.0-5s", 2)) is not None
    router.succeeded(_moved(moved.headers, "app.retry.1-30s", 1))
    assert router.follow(_moved(f12.headers, "app.retry.1-30s", 2)) is None
    router.succeeded(_moved(f12.headers, "app.retry.1-30s", 2))
    assert len(router.gate) == 0
    assert router.gate.idle  # the last key out leaves nothing to look up
    assert router.follow(_src(14)) is None
    assert not router.already_in_retry(_src(14))
    # A new failure closes the gate again for its key.
    router.failed(_src(15), Retriable("503"), group="g", attempts=1)
    assert not router.gate.idle
    assert router.already_in_retry(_src(15))
    assert router.follow(_src(16)) is not None


def test_a_dead_lettered_head_releases_its_followers() -> None:
    router = RetryRouter(TOPICS, app="app")
    router.failed(_src(1), Retriable("503"), group="g", attempts=1)
    follower = router.follow(_src(2))
    assert follower is not None
    router.failed(_src(1), Permanent("422"), group="g", attempts=1)
    assert router.follow(_moved(follower.headers, "app.retry.0-5s", 5)) is None


def test_without_key_order_nothing_waits() -> None:
    router = RetryRouter(TOPICS, app="app", keep_key_order=False)
    router.failed(_src(1), Retriable("503"), group="g", attempts=1)
    assert router.follow(_src(2)) is None


def test_the_gate_is_rebuilt_from_pending_tier_records() -> None:
    router = RetryRouter(TOPICS, app="app")
    head = router.failed(_src(10), Retriable("503"), group="g", attempts=1)
    follower = router.follow(_src(11))
    assert follower is not None
    later = router.failed(_moved(head.headers, "app.retry.0-5s", 0), Retriable("503"), group="g", attempts=1)
    # A fresh instance sees: head in tier 0 (not yet committed) and tier 1, follower in tier 0.
    pending = [
        _moved(head.headers, "app.retry.0-5s", 0),
        _moved(follower.headers, "app.retry.0-5s", 1),
        _moved(later.headers, "app.retry.1-30s", 0),
    ]
    fresh = RetryRouter(TOPICS, app="app")
    fresh.gate.rebuild(pending_from_tiers(pending, TIERS))
    queue = fresh.gate.queue(("src", 2, 10), b"K")
    assert queue is not None
    assert [rid[2] for rid in queue.ids] == [10, 11]
    assert queue.head_topic == "app.retry.1-30s"
    moved = fresh.follow(_moved(follower.headers, "app.retry.0-5s", 1))
    assert moved is not None
    assert moved.topic == "app.retry.1-30s"
    fresh.gate.drop_partitions([2])
    assert len(fresh.gate) == 0


def test_original_id_prefers_provenance_headers() -> None:
    plain = _src(5)
    assert original_id(plain) == ("src", 2, 5)
    moved = StaticMessage(
        "tier",
        2,
        0,
        b"K",
        b"",
        ((H.ORIGINAL_TOPIC, b"src"), (H.ORIGINAL_PARTITION, b"2"), (H.ORIGINAL_OFFSET, b"5")),
    )
    assert original_id(moved) == ("src", 2, 5)


@pytest.mark.parametrize("value", [None, b"", b"not a time"])
def test_unreadable_due_time_means_due_now(value: bytes | None) -> None:
    msg = StaticMessage("t", 0, 0, None, None, ((H.DUE_AT, value),) if value is not None else ())
    assert due_at_of(msg) is None


def test_gate_ignores_unknown_records() -> None:
    gate = OrderingGate()
    gate.done(("src", 0, 1), b"K")
    assert gate.follow(("src", 0, 1), b"K") is None


def test_a_source_record_redelivered_while_its_copy_is_in_retry_is_skipped() -> None:
    router = RetryRouter(TOPICS, app="app")
    head = router.failed(_src(10), Retriable("503"), group="g", attempts=3)
    assert router.follow(_src(11)) is not None
    # After a crash the source offsets 10 and 11 come again; both already have copies in retry.
    assert router.already_in_retry(_src(10))
    assert router.already_in_retry(_src(11))
    assert not router.already_in_retry(_src(12))
    assert not router.already_in_retry(_moved(head.headers, "app.retry.0-5s", 0))  # the copy itself runs


def test_a_follower_that_fails_itself_stays_at_its_heads_tier_instead_of_drifting_deeper() -> None:
    router = RetryRouter(TOPICS, app="app")
    head = router.failed(_src(10), Retriable("503"), group="g", attempts=1)
    head2 = router.failed(_moved(head.headers, "app.retry.0-5s", 0), Retriable("503"), group="g", attempts=1)
    assert head2.topic == "app.retry.1-30s"
    assert header_value(head2.headers, H.RETRY_HOPS) == "2"
    follower = router.follow(_src(11))
    assert follower is not None
    assert follower.topic == "app.retry.1-30s"
    assert header_value(follower.headers, H.RETRY_HOPS) == "0"  # waiting, not failed
    router.succeeded(_moved(head2.headers, "app.retry.1-30s", 0))
    # Its own first failure: the tier it waits in, not one deeper.
    own = router.failed(
        _moved(follower.headers, "app.retry.1-30s", 1), Retriable("503"), group="g", attempts=1
    )
    assert own.topic == "app.retry.1-30s"
    assert header_value(own.headers, H.RETRY_HOPS) == "2"
    # Failing again from there moves on as usual, and the tiers still run out.
    deeper = router.failed(_moved(own.headers, "app.retry.1-30s", 2), Retriable("503"), group="g", attempts=1)
    assert deeper.topic == "app.retry.2-5m"
    last = router.failed(_moved(deeper.headers, "app.retry.2-5m", 3), Retriable("503"), group="g", attempts=1)
    assert last.topic == "app.dlq"


def test_a_tier_record_without_the_hops_header_counts_its_tier_as_its_own() -> None:
    router = RetryRouter(TOPICS, app="app")
    legacy = StaticMessage("app.retry.1-30s", 2, 4, b"K", b"v", ((H.ORIGINAL_TOPIC, b"src"),))
    assert router.failed(legacy, Retriable("503"), group="g", attempts=1).topic == "app.retry.2-5m"


def test_a_deferred_record_waits_without_using_up_its_retries() -> None:
    from processors.runtime.routing import Deferred

    router = RetryRouter(TOPICS, app="app")
    busy = Deferred("busy", max_tier_index=1)
    first = router.failed(_src(1), busy, group="g", attempts=0)
    assert first.topic == "app.retry.0-5s"
    assert header_value(first.headers, H.RETRY_HOPS) == "0"
    moved = first
    for offset in range(2, 12):  # deferred again and again: never deeper than tier 1, never the DLQ
        moved = router.failed(_moved(moved.headers, moved.topic, offset), busy, group="g", attempts=0)
        assert moved.topic == "app.retry.0-5s"
    # A real failure after that still starts the record's own schedule at the first tier.
    failed = router.failed(_moved(moved.headers, moved.topic, 20), Retriable("503"), group="g", attempts=1)
    assert failed.topic == "app.retry.0-5s"
    assert header_value(failed.headers, H.RETRY_HOPS) == "1"
    # Deeper in its own schedule, a deferral waits in the tier it is in (copies never move back).
    deep = StaticMessage("app.retry.2-5m", 2, 30, b"K", b"v", ((H.RETRY_HOPS, b"3"),))
    assert router.failed(deep, busy, group="g", attempts=0).topic == "app.retry.2-5m"
    early = StaticMessage("app.retry.0-5s", 2, 31, b"L", b"v", ((H.RETRY_HOPS, b"3"),))
    assert router.failed(early, busy, group="g", attempts=0).topic == "app.retry.1-30s"  # capped
