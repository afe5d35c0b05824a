"""Read a range of some partitions without joining a group (state rebuilds).

:class:`PendingRecordsReader` reads what a consumer group has not committed yet (the key-order
gate of the retry tiers); :class:`RecentRecordsReader` reads what was written since a time
(the answered event ids of :mod:`processors.runtime.dedupe`).  Both read to the end offsets
taken when they start, and retry transient broker errors (leader moves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import confluent_kafka

from processors.errors import BrokerError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.runtime.message import KafkaMessage

__all__ = ["PendingRecordsReader", "RecentRecordsReader"]

TP = tuple[str, int]

_TRANSIENT = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
        confluent_kafka.KafkaError.NOT_COORDINATOR,
    }
)


class _RangeReader:
    """``reader(partitions)`` → the records from a start offset per partition to the end.

    Uses a separate consumer that never joins a group (partitions are assigned, offsets are
    only read), so it can run inside the group's own rebalance callback.
    """

    _conf: dict[str, object]
    _timeout_s: float

    def __call__(self, partitions: Sequence[TP]) -> Sequence[KafkaMessage]:
        """Runs on a worker thread; transient broker errors (leader moves) are retried."""
        if not partitions:
            return []
        deadline = time.monotonic() + self._timeout_s
        backoff_s = 0.1
        while True:
            consumer = confluent_kafka.Consumer(self._conf)
            try:
                return self._read(consumer, partitions)
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, confluent_kafka.KafkaError) and (
                    error.retriable() or error.code() in _TRANSIENT
                )
                if not transient or time.monotonic() + backoff_s > deadline:
                    raise BrokerError(f"reading pending records failed: {exc}") from exc
            finally:
                consumer.close()
            time.sleep(backoff_s)  # a worker thread, waiting for the cluster to settle
            backoff_s = min(backoff_s * 2, 2.0)

    def _starts(
        self, consumer: confluent_kafka.Consumer, tps: list[confluent_kafka.TopicPartition]
    ) -> list[confluent_kafka.TopicPartition]:
        """Where each partition's range starts (a negative offset: its first record)."""
        raise NotImplementedError

    def _read(self, consumer: confluent_kafka.Consumer, partitions: Sequence[TP]) -> list[KafkaMessage]:
        tps = [confluent_kafka.TopicPartition(t, p) for t, p in partitions]
        start: list[confluent_kafka.TopicPartition] = []
        end: dict[TP, int] = {}
        for tp in self._starts(consumer, tps):
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
            for msg in fetch(consumer, 500, 0.5):
                if msg.error() is not None:
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                last = end.get(key)
                offset = msg.offset() or 0
                if last is None or offset >= last:
                    continue
                records.append(msg)
                if offset >= last - 1:
                    del end[key]
            # Transaction markers occupy offsets too: stop at the position, not the last record.
            for position in consumer.position([confluent_kafka.TopicPartition(t, p) for t, p in list(end)]):
                if position.offset >= end[(position.topic, position.partition)]:
                    del end[(position.topic, position.partition)]
        return records


class PendingRecordsReader(_RangeReader):
    """The records from the group's committed offset to the end (the group is never joined)."""

    def __init__(self, kafka: str | KafkaClients, group_id: str, *, timeout_s: float = 60.0) -> None:
        # the group's committed offsets are read, never written: the reader never joins it
        self._conf = KafkaClients.of(kafka).reader("pending-reader", group_id=group_id)
        self._timeout_s = timeout_s

    def _starts(
        self, consumer: confluent_kafka.Consumer, tps: list[confluent_kafka.TopicPartition]
    ) -> list[confluent_kafka.TopicPartition]:
        return list(consumer.committed(tps, timeout=self._timeout_s))


class RecentRecordsReader(_RangeReader):
    """The records written in the last ``window_s`` seconds (by record timestamp) to the end."""

    def __init__(
        self,
        kafka: str | KafkaClients,
        window_s: float,
        *,
        timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conf = KafkaClients.of(kafka).reader("recent-reader")
        self._timeout_s = timeout_s
        self._window_s = window_s
        self._clock = clock

    def _starts(
        self, consumer: confluent_kafka.Consumer, tps: list[confluent_kafka.TopicPartition]
    ) -> list[confluent_kafka.TopicPartition]:
        since_ms = int((self._clock() - self._window_s) * 1000)
        query = [confluent_kafka.TopicPartition(tp.topic, tp.partition, since_ms) for tp in tps]
        starts = []
        for tp in consumer.offsets_for_times(query, timeout=self._timeout_s):
            if tp.offset < 0:
                # nothing written since then: start at the end (an empty range)
                _low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
                tp = confluent_kafka.TopicPartition(tp.topic, tp.partition, high)
            starts.append(tp)
        return starts
