"""The changelog-backed store: a transaction's writes stay apart until committed."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from processors.errors import BrokerError
from processors.runtime.message import StaticMessage
from processors.streams.store import ChangelogStore, restore


def test_reads_see_pending_writes_and_commit_folds_them_in() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("a", b"1")
    store.put("b", b"2")
    assert store.get("a") == b"1"
    assert len(store) == 0  # nothing committed yet
    store.commit()
    store.delete("a")
    assert store.get("a") is None
    assert dict(store.items()) == {"b": b"2"}
    assert list(store.changes()) == [("a", None)]
    store.commit()
    assert store.base == {"b": b"2"}


def test_abort_drops_the_transaction_and_keeps_what_was_committed() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("a", b"1")
    store.commit()
    store.put("a", b"changed")
    store.put("new", b"x")
    store.abort()
    assert dict(store.items()) == {"a": b"1"}
    assert list(store.changes()) == []


def test_a_savepoint_undoes_one_record_and_keeps_the_earlier_ones() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("kept", b"1")
    store.savepoint()
    store.put("kept", b"overwritten by the failing record")
    store.put("fresh", b"written by the failing record")
    store.rollback_to_savepoint()
    assert dict(store.items()) == {"kept": b"1"}
    store.commit()
    assert store.base == {"kept": b"1"}


def test_deleting_a_key_nobody_has_is_not_a_change() -> None:
    store = ChangelogStore("changelog", 0)
    store.delete("never")
    assert list(store.changes()) == []


def test_restored_entries_respect_the_key_filter_and_tombstones() -> None:
    store = ChangelogStore("changelog", 3, key_filter=lambda key: key.startswith("mine:"))
    store.apply("mine:a", b"1")
    store.apply("other:b", b"2")
    store.apply("mine:c", b"3")
    store.apply("mine:c", None)
    assert store.base == {"mine:a": b"1"}


class _LeaderMoving:
    """A consumer whose broker answers "not leader" a few times before it knows the end."""

    def __init__(self, failures: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.failures = failures
        self.code = code
        self.asked = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return (0, 0)


def test_restore_asks_again_while_the_partition_has_no_leader() -> None:
    consumer = _LeaderMoving(failures=2)
    stats = restore(consumer, [ChangelogStore("changelog", 0)], timeout_s=30)
    assert consumer.asked == 3
    assert stats.records == 0


def test_restore_stops_at_once_on_an_error_asking_again_cannot_cure() -> None:
    consumer = _LeaderMoving(failures=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(BrokerError, match="cannot read the end of changelog changelog\\[0\\]"):
        restore(consumer, [ChangelogStore("changelog", 0)], timeout_s=30)
    assert consumer.asked == 1


def test_restore_gives_up_on_a_leaderless_partition_at_its_deadline() -> None:
    consumer = _LeaderMoving(failures=10_000)
    with pytest.raises(BrokerError, match="NOT_LEADER"):
        restore(consumer, [ChangelogStore("changelog", 0)], timeout_s=0.5)
    assert 1 < consumer.asked < 10_000


class _Entry(StaticMessage):
    def error(self) -> None:
        return None


class _Changelog:
    """A consumer over one in-memory changelog partition (``fetch`` calls ``consume``)."""

    def __init__(self, entries: list[tuple[str, bytes | None]]) -> None:
        self.entries = entries
        self.next = 0
        self.assigned: list[tuple[str, int, int]] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return (0, len(self.entries))

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]
        self.next = tps[0].offset

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[StaticMessage]:
        out: list[StaticMessage] = [
            _Entry("changelog", 0, offset, key.encode(), value)
            for offset, (key, value) in enumerate(self.entries)
            if self.next <= offset < self.next + num_messages
        ]
        self.next += len(out)
        return out

    def poll(self, timeout: float = -1) -> StaticMessage | None:
        found = self.consume(1)
        return found[0] if found else None

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.next) for tp in tps]

    def unassign(self) -> None:
        self.assigned = []


def test_two_stores_on_one_changelog_partition_are_both_restored() -> None:
    # route tasks of two source topics share changelog partition 0, told apart by key filters
    entries: list[tuple[str, bytes | None]] = [
        ("policy:wm", b"10"),
        ("claim:wm", b"20"),
        ("policy:wm", b"11"),
        ("claim:wm", b"21"),
    ]
    consumer = _Changelog(entries)
    policies = ChangelogStore("changelog", 0, key_filter=lambda key: key.startswith("policy:"))
    claims = ChangelogStore("changelog", 0, key_filter=lambda key: key.startswith("claim:"))
    claims.base = {"claim:wm": b"20"}
    claims.position = 2  # a cached store that had read the first two entries already
    stats = restore(consumer, [policies, claims])
    assert consumer.assigned == []  # unassigned at the end
    assert policies.base == {"policy:wm": b"11"}
    assert claims.base == {"claim:wm": b"21"}
    assert (policies.position, claims.position) == (4, 4)
    assert stats.records == 4  # the partition was read once, from the lower position
