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


def test_one_store_restores_tombstones_and_its_key_filter_from_where_it_was() -> None:
    entries: list[tuple[str, bytes | None]] = [
        ("mine:a", b"old"),  # read before: the store's position is past it
        ("mine:a", b"1"),
        ("other:b", b"2"),
        ("mine:c", b"3"),
        ("mine:c", None),
        ("mine:d", b"4"),
    ]
    consumer = _Changelog(entries)
    store = ChangelogStore("changelog", 0, key_filter=lambda key: key.startswith("mine:"))
    store.base = {"mine:a": b"old", "mine:gone": b"x"}
    store.position = 1
    entries.append(("mine:gone", None))
    stats = restore(consumer, [store])
    assert consumer.assigned == []
    assert store.base == {"mine:a": b"1", "mine:d": b"4"}
    assert store.position == 7
    assert stats.records == 6


class _TwoPartitions(_Changelog):
    """Partition 0 of ``changelog`` interleaved with entries of partition 1 already restored."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[StaticMessage]:
        out: list[StaticMessage] = []
        for entry in super().consume(num_messages, timeout):
            out.append(_Entry("changelog", 1, entry.offset(), b"elsewhere", b"not mine"))
            out.append(entry)
        return out


def test_entries_of_another_partition_in_the_batch_are_not_applied() -> None:
    consumer = _TwoPartitions([("k", b"1"), ("k", b"2")])
    store = ChangelogStore("changelog", 0)
    stats = restore(consumer, [store])
    assert store.base == {"k": b"2"}
    assert stats.records == 2


class _Broken(_Changelog):
    """One good entry, then an error the client cannot retry."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[StaticMessage]:
        good = super().consume(1, timeout)
        return [*good, _Failing("changelog", 0, 1, None, None)] if good else []


class _Failing(StaticMessage):
    def error(self) -> KafkaError:
        return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)


def test_an_error_mid_batch_ends_the_restore_with_the_store_at_the_last_entry_applied() -> None:
    consumer = _Broken([("k", b"1"), ("k", b"2")])
    store = ChangelogStore("changelog", 0)
    with pytest.raises(BrokerError, match=r"restoring changelog\[0\]"):
        restore(consumer, [store])
    assert store.base == {"k": b"1"}
    assert store.position == 1
    assert consumer.assigned == []


class _FromTheStart(_Changelog):
    """A consumer that starts at the partition's beginning whatever offset it was given."""

    def assign(self, tps: list[TopicPartition]) -> None:
        super().assign(tps)
        self.next = 0


def test_entries_before_the_store_position_are_not_applied_again() -> None:
    consumer = _FromTheStart([("k", b"old"), ("k", b"new")])
    store = ChangelogStore("changelog", 0)
    store.base = {"k": b"kept"}
    store.position = 1
    restore(consumer, [store])
    assert store.base == {"k": b"new"}
    consumer = _FromTheStart([("k", b"old"), ("j", b"1")])
    store = ChangelogStore("changelog", 0)
    store.base = {"k": b"kept"}
    store.position = 1
    restore(consumer, [store])
    assert store.base == {"k": b"kept", "j": b"1"}
