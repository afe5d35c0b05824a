"""Helpers for integration tests: publish, collect, run the processor as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import confluent_kafka

from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.dlq._kafka import retrying

CODEC = Codec(LocalSchemaIds())


def publish(
    bootstrap: str,
    topic: str,
    events: Iterable[Event],
    *,
    fmt: ContentType = ContentType.AVRO,
    raw: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = (),
) -> int:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    count = 0
    for event in events:
        value, headers = CODEC.encode(event, fmt)
        producer.produce(topic, key=event.subject.encode(), value=value, headers=headers)
        producer.poll(0)
        count += 1
    for key, value, headers in raw:
        producer.produce(topic, key=key, value=value, headers=headers or None)
        count += 1
    assert producer.flush(30) == 0
    return count


class Collector:
    """Reads topics from the beginning in a background thread; tests await conditions on it."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.records: list[confluent_kafka.Message] = []
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"collector-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.subscribe(topics)

    def poll(self, timeout_s: float = 0.2) -> None:
        for msg in self._consumer.consume(500, timeout_s):
            if msg.error() is None:
                self.records.append(msg)

    async def wait_for(
        self, condition: Callable[[list[confluent_kafka.Message]], bool], *, timeout_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while not condition(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met within {timeout_s}s ({len(self.records)} records seen)"
                )
            await loop.run_in_executor(None, self.poll)

    def close(self) -> None:
        self._consumer.close()

    def on(self, topic: str) -> list[confluent_kafka.Message]:
        return [m for m in self.records if m.topic() == topic]


def decode(msg: confluent_kafka.Message) -> Event:
    return CODEC.decode(msg.value(), msg.headers())


def header(msg: confluent_kafka.Message, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name and value is not None:
            return bytes(value).decode()
    return None


def start_processor(env: Mapping[str, str], *args: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``processors run ...`` as a real child process with its own environment."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(  # the command is fixed, not user input
            [sys.executable, "-m", "processors.cli", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def sandbox_env(prefix: str, topics_file: Path, bootstrap: str, gateway_url: str) -> dict[str, Any]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PROCESSORS_TOPICS_FILE": str(topics_file),
        "PROCESSORS_GROUP_PREFIX": prefix,
        "PROCESSORS_PAYMENTS__RESULTS_TOPIC": f"{prefix}integrations.payment.results",
        "PROCESSORS_PAYMENTS__GATEWAY__BASE_URL": gateway_url,
    }


def watermarks(consumer: Any, tp: confluent_kafka.TopicPartition, *, cached: bool = False) -> tuple[int, int]:
    """``consumer.get_watermark_offsets(tp)``, asked again for up to 30 s while the broker
    answers with a transient error (a just-created topic may have no leader for a moment)."""
    return retrying(lambda: consumer.get_watermark_offsets(tp, timeout=10, cached=cached), timeout_s=30)  # type: ignore[no-any-return]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: watermarks(consumer, confluent_kafka.TopicPartition(topic, p))[1] for p in partitions}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in partitions], timeout=10
        )
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def group_members(bootstrap: str, group: str) -> int:
    """Members of ``group`` that hold partitions (0 while the group is not formed yet)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        described = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    except Exception:  # not created yet, or its coordinator still loading
        return 0
    return sum(1 for member in described.members or [] if member.assignment.topic_partitions)


def group_caught_up(bootstrap: str, group: str, topic: str) -> Callable[[object], bool]:
    """A condition for ``Collector.wait_for``: ``group`` committed every record of ``topic``
    (its lag is 0; partitions that never held a record are left out)."""

    def caught_up(_records: object) -> bool:
        done = committed_offsets(bootstrap, group, topic)
        ends = end_offsets(bootstrap, topic)
        return all(done.get(p, -1) >= end for p, end in ends.items() if end > 0)

    return caught_up


def read_topics(
    bootstrap: str, topics: Iterable[str], *, timeout_s: float = 60
) -> list[confluent_kafka.Message]:
    """Every record of ``topics`` from the beginning to the end offsets taken at the call."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        targets: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=15).topics[topic]
            for partition in metadata.partitions:
                low, high = watermarks(consumer, confluent_kafka.TopicPartition(topic, partition))
                if high > low:
                    targets[(topic, partition)] = high
                    assignment.append(confluent_kafka.TopicPartition(topic, partition, low))
        records: list[confluent_kafka.Message] = []
        if not assignment:
            return records
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        remaining = dict(targets)
        while remaining:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {sorted(remaining)} to the end within {timeout_s}s")
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    records.append(msg)
            # transaction markers and aborted records take offsets too: compare positions
            for tp in consumer.position([confluent_kafka.TopicPartition(t, p) for t, p in remaining]):
                if tp.offset >= remaining[(tp.topic, tp.partition)]:
                    del remaining[(tp.topic, tp.partition)]
        return records
    finally:
        consumer.close()
