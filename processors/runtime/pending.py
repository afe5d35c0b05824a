"""Read what a consumer group has not committed yet in some partitions (state rebuilds)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka

from processors.errors import BrokerError
from processors.runtime.message import KafkaMessage

__all__ = ["PendingRecordsReader"]

TP = tuple[str, int]


class PendingRecordsReader:
    """``reader(partitions)`` → the records from the group's committed offset to the end.

    Uses a separate consumer that never joins the group (partitions are assigned, offsets are
    only read), so it can run inside the group's own rebalance callback.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        *,
        overrides: Mapping[str, Any] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self._conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "client.id": f"pending-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            **(overrides or {}),
        }
        self._timeout_s = timeout_s

    def __call__(self, partitions: Sequence[TP]) -> Sequence[KafkaMessage]:
        if not partitions:
            return []
        consumer = confluent_kafka.Consumer(self._conf)
        try:
            return self._read(consumer, partitions)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"reading pending records failed: {exc}") from exc
        finally:
            consumer.close()

    def _read(self, consumer: confluent_kafka.Consumer, partitions: Sequence[TP]) -> list[KafkaMessage]:
        tps = [confluent_kafka.TopicPartition(t, p) for t, p in partitions]
        committed = consumer.committed(tps, timeout=self._timeout_s)
        start: list[confluent_kafka.TopicPartition] = []
        end: dict[TP, int] = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
            first = tp.offset if tp.offset >= 0 else low
            if first < high:
                start.append(confluent_kafka.TopicPartition(tp.topic, tp.partition, first))
                end[(tp.topic, tp.partition)] = high
        if not start:
            return []
        consumer.assign(start)
        records: list[KafkaMessage] = []
        deadline = time.monotonic() + self._timeout_s
        while end:
            if time.monotonic() > deadline:
                raise BrokerError(f"pending records of {sorted(end)} not read within {self._timeout_s:g} s")
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                last = end.get(key)
                offset = msg.offset() or 0
                if last is None or offset >= last:
                    continue
                records.append(msg)  # type: ignore[arg-type]
                if offset >= last - 1:
                    del end[key]
            # Transaction markers occupy offsets too: stop at the position, not the last record.
            for position in consumer.position([confluent_kafka.TopicPartition(t, p) for t, p in list(end)]):
                if position.offset >= end[(position.topic, position.partition)]:
                    del end[(position.topic, position.partition)]
        return records
