"""The portal projector against an in-memory Kafka (the real-broker runs are in
tests/integration/test_portal.py): resume points, skipped records, caught-up, metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.portal.metrics import PortalMetrics
from processors.portal.projector import PortalTopics, Projector
from processors.portal.records import Coordinates, Source, decode
from processors.portal.store import PortalStore, PortalStoreError
from tests import portal_samples as samples

TOPICS = PortalTopics()


class Message:
    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._at = (topic, partition, offset)
        self._key, self._value = key, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class Described:
    def __init__(self, partitions: int) -> None:
        self.partitions = dict.fromkeys(range(partitions))
        self.error = None


class Metadata:
    def __init__(self, topics: dict[str, Described]) -> None:
        self.topics = topics


class Result:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def result(self) -> Result:
        return self


class Cluster:
    """One partition per topic; a consumer and an admin over it."""

    def __init__(self) -> None:
        self.logs: dict[str, list[tuple[bytes | None, bytes | None]]] = {
            name: [] for name in TOPICS.sources()
        }
        self.assigned: list[tuple[str, int, int]] = []
        self.confs: list[dict[str, Any]] = []

    def add(self, topic: str, key: bytes | str | None, value: bytes | None) -> None:
        self.logs[topic].append((key.encode() if isinstance(key, str) else key, value))

    def consumer(self, conf: dict[str, Any]) -> Consumer:
        self.confs.append(conf)
        return Consumer(self)

    def admin(self, conf: dict[str, Any]) -> Admin:
        return Admin(self)

    def metadata(self, topic: str) -> Metadata:
        return Metadata({topic: Described(1)} if topic in self.logs else {})


class Consumer:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.at: dict[str, int] = {}

    def list_topics(self, topic: str, timeout: float) -> Metadata:
        return self.cluster.metadata(topic)

    def incremental_assign(self, tps: Sequence[confluent_kafka.TopicPartition]) -> None:
        for tp in tps:
            start = 0 if tp.offset == confluent_kafka.OFFSET_BEGINNING else tp.offset
            self.at[tp.topic] = start
            self.cluster.assigned.append((tp.topic, tp.partition, start))

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        out: list[Message] = []
        for topic in sorted(self.at):
            records = self.cluster.logs[topic]
            while self.at[topic] < len(records) and len(out) < num_messages:
                key, value = records[self.at[topic]]
                out.append(Message(topic, 0, self.at[topic], key, value))
                self.at[topic] += 1
        return out

    def position(self, tps: Sequence[confluent_kafka.TopicPartition]) -> list[confluent_kafka.TopicPartition]:
        return [
            confluent_kafka.TopicPartition(tp.topic, tp.partition, self.at.get(tp.topic, -1001)) for tp in tps
        ]

    def close(self) -> None:
        pass


class Admin:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def list_topics(self, topic: str, timeout: float) -> Metadata:
        return self.cluster.metadata(topic)

    def list_offsets(self, wanted: dict[confluent_kafka.TopicPartition, Any], **_: Any) -> dict[Any, Result]:
        latest = type(next(iter(wanted.values()))).__name__ == "LatestSpec"
        return {tp: Result(len(self.cluster.logs[tp.topic]) if latest else 0) for tp in wanted}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PortalStore]:
    made = PortalStore(f"sqlite:///{tmp_path / 'portal.db'}")
    try:
        yield made
    finally:
        made.close()


def projector(cluster: Cluster, store: PortalStore, **options: Any) -> Projector:
    return Projector(
        KafkaClients("127.0.0.1:9"),
        TOPICS,
        store,
        consumer_factory=cluster.consumer,
        admin_factory=cluster.admin,
        **options,
    )


def test_it_reads_without_a_group_and_only_committed_records(store: PortalStore) -> None:
    cluster = Cluster()
    projector(cluster, store).run_to_end(timeout_s=10)
    (conf,) = cluster.confs
    assert conf["enable.auto.commit"] is False
    assert conf["isolation.level"] == "read_committed"
    assert {(t, p) for t, p, _ in cluster.assigned} == {(t, 0) for t in TOPICS.sources()}


def test_a_restart_resumes_from_the_stored_offsets(store: PortalStore) -> None:
    cluster = Cluster()
    partner = samples.partner()
    cluster.add(TOPICS.partners, partner.id, partner.to_record())
    sub = samples.subscription(partner.id)
    cluster.add(TOPICS.subscriptions, sub.id, sub.to_record())
    for n in range(5):
        cluster.add(TOPICS.deliveries, sub.id, samples.delivery_line(sub.id, n))
    projector(cluster, store, batch_size=2).run_to_end(timeout_s=10)
    assert store.offsets()[(TOPICS.deliveries, 0)] == 5

    for n in range(5, 8):
        cluster.add(TOPICS.deliveries, sub.id, samples.delivery_line(sub.id, n))
    cluster.assigned.clear()
    stats = projector(cluster, store).run_to_end(timeout_s=10)

    assert (TOPICS.deliveries, 0, 5) in cluster.assigned
    assert (TOPICS.partners, 0, 1) in cluster.assigned
    assert stats.applied == {TOPICS.deliveries: 3}
    assert stats.stale == 0
    assert store.counts()["deliveries"] == 8


def test_an_unreadable_record_is_counted_and_logged_with_its_coordinates_only(
    store: PortalStore, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = Cluster()
    partner = samples.partner()
    cluster.add(TOPICS.partners, partner.id, partner.to_record())
    cluster.add(TOPICS.partners, partner.id, b'{"type": "partner", "name": "SECRET-CONTENT"')
    cluster.add(TOPICS.deliveries, "ep_x", b"SECRET-CONTENT")
    made = projector(cluster, store)

    with caplog.at_level(logging.WARNING, logger="processors.portal"):
        stats = made.run_to_end(timeout_s=10)

    assert dict(stats.skipped) == {TOPICS.partners: 1, TOPICS.deliveries: 1}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any(f"{TOPICS.partners}[0]@1 skipped" in line for line in lines)
    assert any(f"{TOPICS.deliveries}[0]@0 skipped" in line for line in lines)
    assert not any("SECRET-CONTENT" in r.getMessage() for r in caplog.records)
    assert store.counts()["skipped"] == 2
    samples_by_name = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in PortalMetrics(made).collect()
        for s in family.samples
    }
    key = ("processors_portal_records_total", (("outcome", "skipped"), ("topic", TOPICS.partners)))
    assert samples_by_name[key] == 1
    applied = ("processors_portal_records_total", (("outcome", "applied"), ("topic", TOPICS.partners)))
    assert samples_by_name[applied] == 1


def test_a_store_built_from_other_topics_is_refused(store: PortalStore) -> None:
    store.migrate()
    store.apply(
        [decode(Source.DELIVERIES, Coordinates("other.integrations.webhook.deliveries", 0, 0), None, b"x")]
    )
    with pytest.raises(ConfigError, match="other topics"):
        projector(Cluster(), store).run_to_end(timeout_s=10)


async def test_start_wait_caught_up_and_stop(store: PortalStore) -> None:
    cluster = Cluster()
    partner = samples.partner()
    cluster.add(TOPICS.partners, partner.id, partner.to_record())
    made = projector(cluster, store, poll_timeout_s=0.01, idle_check_s=0.0)
    assert await made.wait_caught_up(1) is False  # not running yet
    await made.start()
    try:
        assert await made.wait_caught_up(10)
        assert store.counts()["partners"] == 1
        other = samples.partner("Other")
        cluster.add(TOPICS.partners, other.id, other.to_record())
        assert await made.wait_caught_up(10)
        assert store.counts()["partners"] == 2
        assert made.caught_up()
    finally:
        await made.stop()
    assert not made.caught_up()
    assert await made.wait_caught_up(1) is False


class FlakyStore(PortalStore):
    """Fails its second batch once, as a database that restarts would."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches = 0

    def apply(self, changes: Any) -> Any:
        self.batches += 1
        if self.batches == 2:
            raise PortalStoreError("portal store: OperationalError: the database restarted")
        return super().apply(changes)


async def test_a_database_failure_is_retried_from_the_stored_offsets(tmp_path: Path) -> None:
    cluster = Cluster()
    sub = samples.subscription(None)
    for n in range(9):
        cluster.add(TOPICS.deliveries, sub.id, samples.delivery_line(sub.id, n))
    store = FlakyStore(f"sqlite:///{tmp_path / 'portal.db'}")
    made = projector(cluster, store, batch_size=3, poll_timeout_s=0.01, idle_check_s=0.0)
    await made.start()
    try:
        assert await made.wait_caught_up(20)
    finally:
        await made.stop()
        store.close()
    assert made.stats.store_errors == 1
    assert made.stats.applied == {TOPICS.deliveries: 9}
    assert sorted(d["log_offset"] for d in store.snapshot()["deliveries"]) == list(range(9))
    # the consumer was made again, at the offset after the last committed batch
    assert (TOPICS.deliveries, 0, 3) in cluster.assigned


def test_a_rebuild_drops_nothing_while_the_cluster_does_not_answer(store: PortalStore) -> None:
    cluster = Cluster()
    partner = samples.partner()
    cluster.add(TOPICS.partners, partner.id, partner.to_record())
    projector(cluster, store).run_to_end(timeout_s=10)

    def unreachable(topic: str) -> Metadata:
        raise confluent_kafka.KafkaException(
            confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT)
        )

    cluster.metadata = unreachable  # type: ignore[method-assign]
    with pytest.raises(BrokerError):
        projector(cluster, store).run_to_end(timeout_s=10, from_scratch=True)
    assert store.counts()["partners"] == 1

    del cluster.metadata  # the cluster is back
    other = samples.partner("Other")
    cluster.add(TOPICS.partners, other.id, other.to_record())
    cluster.add(TOPICS.deliveries, None, b"unreadable")
    stats = projector(cluster, store).run_to_end(timeout_s=10, from_scratch=True)
    assert stats.applied == {TOPICS.partners: 2}
    assert (store.counts()["partners"], store.counts()["skipped"]) == (2, 1)
    assert (TOPICS.partners, 0, 0) in cluster.assigned[-len(TOPICS.sources()) :]
