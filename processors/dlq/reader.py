"""Reading a dead-letter topic without disturbing it.

A :class:`DlqReader` assigns partitions explicitly (it never joins a consumer group) and
reads each one from a start offset up to the high watermark captured when the command
started, so it terminates even while new dead letters arrive.  It commits nothing unless
asked to (:meth:`DlqReader.commit`, used by replay progress only).  Records are read with
``isolation.level=read_committed``.

:func:`scan` and :func:`stats` are the read-only commands' API; :func:`read_dead_letter`
fetches one record by its coordinates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, Self

import confluent_kafka
from confluent_kafka import KafkaError, TopicPartition

from processors.dlq._kafka import KafkaConfig, consumer_config, partition_counts, retrying
from processors.dlq.filters import DlqFilter
from processors.dlq.records import DeadLetter
from processors.dlq.summary import DlqStats
from processors.errors import BrokerError, ConfigError
from processors.kafka.consume import fetch

__all__ = ["Committed", "DlqReader", "Scan", "read_dead_letter", "scan", "stats"]

log = logging.getLogger(__name__)

_BATCH = 500
_POLL_S = 0.5
_FATAL_CODES = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
    }
)


@dataclass(frozen=True)
class Committed:
    """A committed offset of the reader's group and the metadata stored with it."""

    offset: int
    metadata: str


class DlqReader:
    """Reads one topic by explicit assignment.  ``open()``/``close()`` or ``with``.

    ``group_id`` names the group whose offsets :meth:`committed` reads and :meth:`commit`
    writes; the reader never joins it.  Without one, nothing can be committed.
    """

    def __init__(
        self, kafka: KafkaConfig, topic: str, *, group_id: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.timeout_s = timeout_s
        self._config = consumer_config(kafka, group_id=group_id)
        self._consumer: Any = None

    def __repr__(self) -> str:
        return f"DlqReader({self.topic!r}, group_id={self.group_id!r})"

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> Self:
        if self._consumer is None:
            try:
                self._consumer = confluent_kafka.Consumer(self._config)
            except confluent_kafka.KafkaException as exc:
                raise ConfigError(f"invalid Kafka client configuration: {exc}") from exc
        return self

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def consumer(self) -> Any:
        if self._consumer is None:
            raise RuntimeError("DlqReader is not open")
        return self._consumer

    # -- positions ---------------------------------------------------------------------------

    def partitions(self) -> list[int]:
        """The topic's partitions; :class:`ConfigError` if the cluster does not have the topic."""
        count = partition_counts(self.consumer, {self.topic}, timeout_s=self.timeout_s)[self.topic]
        return list(range(count))

    def watermarks(self, partitions: list[int] | None = None) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}``: the offsets the partition holds now are ``[low, high)``."""
        marks: dict[int, tuple[int, int]] = {}
        for partition in partitions if partitions is not None else self.partitions():
            try:
                ask = partial(
                    self.consumer.get_watermark_offsets,
                    TopicPartition(self.topic, partition),
                    timeout=self.timeout_s,
                    cached=False,
                )
                low, high = retrying(ask, timeout_s=self.timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise BrokerError(f"cannot read the offsets of {self.topic} [{partition}]: {exc}") from exc
            marks[partition] = (int(low), int(high))
        return marks

    def ranges(self, flt: DlqFilter) -> dict[int, tuple[int, int]]:
        """``{partition: (start, end)}`` to read for ``flt``, ends captured now."""
        marks = self.watermarks()
        if flt.partition is not None and flt.partition not in marks:
            raise ConfigError(f"{self.topic} has no partition {flt.partition} (it has 0–{len(marks) - 1})")
        return {p: flt.offset_range(low, high) for p, (low, high) in marks.items() if flt.wants_partition(p)}

    def committed(self, partitions: list[int]) -> dict[int, Committed]:
        """The group's committed offsets (partitions without one are left out)."""
        if self.group_id is None:
            return {}
        try:
            found = retrying(
                lambda: self.consumer.committed(
                    [TopicPartition(self.topic, p) for p in partitions], timeout=self.timeout_s
                ),
                timeout_s=self.timeout_s,
            )
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot read the committed offsets of {self.group_id}: {exc}") from exc
        result: dict[int, Committed] = {}
        for tp in found:
            if tp.error is not None:
                raise BrokerError(
                    f"cannot read the committed offset of {self.topic} [{tp.partition}]: {tp.error}"
                )
            if tp.offset >= 0:
                result[tp.partition] = Committed(int(tp.offset), tp.metadata or "")
        return result

    def commit(self, positions: Mapping[int, int], *, metadata: str = "") -> None:
        """Store ``positions`` (the next offset to read) as the group's offsets; synchronous."""
        if self.group_id is None:
            raise RuntimeError("this reader has no group to commit to")
        if not positions:
            return
        offsets = [TopicPartition(self.topic, p, o, metadata=metadata) for p, o in sorted(positions.items())]
        try:
            answer = retrying(
                lambda: self.consumer.commit(offsets=offsets, asynchronous=False), timeout_s=self.timeout_s
            )
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot commit replay progress to {self.group_id}: {exc}") from exc
        for tp in answer or ():
            if tp.error is not None:
                raise BrokerError(
                    f"cannot commit replay progress of {self.topic} [{tp.partition}]: {tp.error}"
                )

    # -- reading -----------------------------------------------------------------------------

    def read(self, ranges: Mapping[int, tuple[int, int]]) -> Iterator[DeadLetter]:
        """Every record of ``[start, end)`` of each partition, in offset order per partition."""
        pending = {p: (start, end) for p, (start, end) in ranges.items() if start < end}
        if not pending:
            return
        consumer = self.consumer
        try:
            assignment = [TopicPartition(self.topic, p, start) for p, (start, _) in pending.items()]
            consumer.assign(assignment)
            consumer.resume(assignment)  # a pause from an earlier read survives unassign/assign
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot read {self.topic}: {exc}") from exc
        idle_since = time.monotonic()
        try:
            while pending:
                try:
                    batch = fetch(consumer, _BATCH, _POLL_S)
                except confluent_kafka.KafkaException as exc:
                    raise BrokerError(f"cannot read {self.topic}: {exc}") from exc
                if batch:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.timeout_s:
                    where = ", ".join(f"[{p}] from {s} to {e}" for p, (s, e) in sorted(pending.items()))
                    raise BrokerError(f"no progress reading {self.topic} for {self.timeout_s:g}s ({where})")
                for msg in batch:
                    partition = msg.partition()
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            # Everything readable has been read (with read_committed the end can
                            # be an open transaction's first offset, below the high watermark).
                            self._done(pending, partition)
                        elif error.fatal() or error.code() in _FATAL_CODES:
                            raise BrokerError(f"cannot read {self.topic}: {error.str()}")
                        else:
                            log.warning("reading %s: %s", self.topic, error.str())
                        continue
                    bounds = pending.get(partition)
                    if bounds is None:
                        continue
                    offset = msg.offset()
                    if offset >= bounds[1]:
                        self._done(pending, partition)
                        continue
                    yield DeadLetter.from_message(msg)
                    if offset + 1 >= bounds[1]:
                        self._done(pending, partition)
        finally:
            try:
                consumer.unassign()
            except confluent_kafka.KafkaException:  # closing anyway
                log.debug("unassign failed", exc_info=True)

    def _done(self, pending: dict[int, tuple[int, int]], partition: int) -> None:
        if pending.pop(partition, None) is not None:
            try:
                self.consumer.pause([TopicPartition(self.topic, partition)])
            except confluent_kafka.KafkaException:  # only saves a fetch
                log.debug("pause failed", exc_info=True)

    def read_one(self, partition: int, offset: int) -> DeadLetter:
        """The record at ``partition``/``offset``; :class:`ConfigError` if there is none."""
        marks = self.watermarks()
        if partition not in marks:
            raise ConfigError(f"{self.topic} has no partition {partition} (it has 0–{len(marks) - 1})")
        low, high = marks[partition]
        if not low <= offset < high:
            held = f"offsets {low}–{high - 1}" if high > low else "no records"
            raise ConfigError(
                f"no record at {self.topic} [{partition}] offset {offset}: the partition holds {held}"
            )
        for record in self.read({partition: (offset, offset + 1)}):
            if record.offset == offset:
                return record
        raise ConfigError(
            f"no record at {self.topic} [{partition}] offset {offset} (a transaction marker, "
            "an aborted record or compacted away)"
        )


class Scan:
    """The records of a DLQ that match a filter; iterate once.  ``scanned``/``matched`` count."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        flt: DlqFilter | None = None,
        *,
        now: datetime | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self.filter = flt or DlqFilter()
        self.now = now
        self.timeout_s = timeout_s
        self.scanned = 0
        self.matched = 0

    def __iter__(self) -> Iterator[DeadLetter]:
        now = self.now or datetime.now(UTC)
        limit = self.filter.limit
        with DlqReader(self._kafka, self.topic, timeout_s=self.timeout_s) as reader:
            for record in reader.read(reader.ranges(self.filter)):
                self.scanned += 1
                if self.filter.matches(record, now=now):
                    self.matched += 1
                    yield record
                    if limit is not None and self.matched >= limit:
                        return


def scan(
    kafka: KafkaConfig,
    topic: str,
    flt: DlqFilter | None = None,
    *,
    now: datetime | None = None,
    timeout_s: float = 30.0,
) -> Scan:
    """The dead letters of ``topic`` selected by ``flt``, read up to the ends seen at the start.

    ``now`` resolves relative times (default: when iteration starts).  Raises
    :class:`ConfigError` for a topic or partition the cluster does not have and
    :class:`BrokerError` when the cluster fails.
    """
    return Scan(kafka, topic, flt, now=now, timeout_s=timeout_s)


def stats(
    kafka: KafkaConfig,
    topic: str,
    flt: DlqFilter | None = None,
    *,
    now: datetime | None = None,
    timeout_s: float = 30.0,
) -> DlqStats:
    """Counts of the selected dead letters by error class, UTC day and original topic."""
    counts = DlqStats()
    for record in scan(kafka, topic, flt, now=now, timeout_s=timeout_s):
        counts.add(record)
    return counts


def read_dead_letter(
    kafka: KafkaConfig, topic: str, partition: int, offset: int, *, timeout_s: float = 30.0
) -> DeadLetter:
    """The dead letter at ``partition``/``offset`` of ``topic``."""
    with DlqReader(kafka, topic, timeout_s=timeout_s) as reader:
        return reader.read_one(partition, offset)
