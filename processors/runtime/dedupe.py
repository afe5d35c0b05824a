"""Answered event ids: an app answers each ``event_id`` once within a window.

``event_id`` is the contract's de-duplication key (``docs/publishing-events.md``).  An app
that declares ``dedupe: {window: 24h}`` in ``topics.yaml`` remembers the ids it *answered*
(its result was written) and drops a record whose id it already answered: an event a
publisher sent twice, or one redelivered after a crash once its result was acknowledged.

**Where the memory lives.**  With each answer the app writes a marker (key: the event id,
value: a digest of its content) to its ``integrations.<app>.dedupe`` topic, in the partition
of the same number as the source record (the retry tiers and the DLQ keep that number too), in the same
acknowledged batch as the result.  When the app is assigned source partition *n* it reads
partition *n* of the dedupe topic back from *now − window*, so the member that takes over a
partition after a crash or a rebalance knows every id answered there.  The topic is
compacted and deleted after the window, so it stays as small as the window.

**Same id, other content.**  The marker's value is a digest of the answered event's content.
A later record with the same id and a different digest is not a retry: it is refused as
:class:`~processors.errors.DuplicateEventId` and goes to the dead-letter topic with the reason,
so the upstream bug shows instead of being dropped quietly.

**What counts as answered.**  A result (including a decline, which is an answer), never a
dead letter: a dead-lettered event replayed or republished runs again.  The check happens
when the record is at the head of its key (behind the key-order gate), so a duplicate that
arrives while the first copy waits in a retry tier follows it and is dropped when it comes
due after the first copy was answered.

**Limits** (also in ``docs/publishing-events.md``): the two copies must reach the same
partition (the same key, the default partitioner); the ids are held per partition in memory,
bounded by ``max_per_partition`` (oldest dropped first, counted); with ``exactly_once`` output
(:mod:`processors.runtime.engine`) the markers commit in the same transaction as the results
and the offsets, otherwise a crash between the result and its marker's acknowledgement can
still answer twice (the external call stays behind its idempotency key either way).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from processors.runtime.message import KafkaMessage, OutRecord

__all__ = ["DEFAULT_MAX_PER_PARTITION", "AnsweredIds"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PER_PARTITION = 250_000
"""About 30 MB per partition at most (ids are 36-byte strings held with their expiry)."""

TP = tuple[str, int]

RangeReader = Callable[[Sequence[TP]], Sequence[KafkaMessage]]
"""Reads the dedupe topic's records of the last window in the given partitions."""


class AnsweredIds:
    """The event ids answered in each assigned partition within ``window_s`` (see the module doc).

    ``clock`` is epoch seconds (record timestamps are epoch milliseconds).  Called from one
    event loop; ``restore`` reads the topic on a worker thread.
    """

    def __init__(
        self,
        topic: str,
        window_s: float,
        reader: RangeReader | None,
        *,
        max_per_partition: int = DEFAULT_MAX_PER_PARTITION,
        clock: Callable[[], float],
    ) -> None:
        if window_s <= 0:
            raise ValueError("the dedupe window must be positive")
        if max_per_partition < 1:
            raise ValueError("max_per_partition must be at least 1")
        self.topic = topic
        self.window_s = window_s
        self.max_per_partition = max_per_partition
        self._reader = reader
        self._clock = clock
        # per partition number: id -> (expiry in epoch s, content digest); insertion order is
        # expiry order
        self._ids: dict[int, OrderedDict[bytes, tuple[float, bytes]]] = {}
        self.dropped = 0
        """Duplicates dropped since start."""
        self.evicted_early = 0
        """Ids forgotten for room before their window ended (each may let a duplicate through)."""

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def answered(self, partition: int, event_id: bytes) -> bytes | None:
        """The content digest ``event_id`` was answered with in ``partition`` (empty when it
        was remembered without one), or None when it was not answered within the window."""
        ids = self._ids.get(partition)
        if ids is None:
            return None
        entry = ids.get(event_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del ids[event_id]
            return None
        return entry[1]

    def marker(self, partition: int, event_id: bytes, digest: bytes = b"") -> OutRecord:
        """The record that remembers ``event_id`` (with its content ``digest``) as answered."""
        return OutRecord(topic=self.topic, key=event_id, value=digest, partition=partition)

    def remember(
        self, partition: int, event_id: bytes, at_s: float | None = None, digest: bytes = b""
    ) -> None:
        """``event_id`` was answered at ``at_s`` (now when None) in ``partition``."""
        expires = (self._clock() if at_s is None else at_s) + self.window_s
        ids = self._ids.setdefault(partition, OrderedDict())
        ids.pop(event_id, None)
        ids[event_id] = (expires, digest)
        self._expire(ids)
        while len(ids) > self.max_per_partition:
            ids.popitem(last=False)
            self.evicted_early += 1
            if self.evicted_early == 1 or self.evicted_early % 10_000 == 0:
                log.warning(
                    "answered ids of %s partition %d: %d ids, dropped the oldest before their window "
                    "ended (%d so far)",
                    self.topic,
                    partition,
                    self.max_per_partition,
                    self.evicted_early,
                )

    def acknowledged(self, records: Iterable[OutRecord]) -> None:
        """Outputs the broker acknowledged: their markers become answered ids."""
        for record in records:
            if record.topic == self.topic and record.key is not None and record.partition is not None:
                self.remember(record.partition, record.key, digest=record.value or b"")

    def _expire(self, ids: OrderedDict[bytes, tuple[float, bytes]]) -> None:
        now = self._clock()
        while ids:
            event_id, (expires, _digest) = next(iter(ids.items()))
            if expires > now:
                break
            del ids[event_id]

    async def restore(self, partitions: Iterable[int]) -> int:
        """Read back the ids answered in ``partitions`` within the window; returns how many."""
        wanted = sorted(set(partitions) - set(self._ids))
        if not wanted or self._reader is None:
            return 0
        reader = self._reader
        tps = [(self.topic, p) for p in wanted]
        records = await asyncio.get_running_loop().run_in_executor(None, reader, tps)
        for partition in wanted:
            self._ids.setdefault(partition, OrderedDict())
        loaded = 0
        for record in sorted(records, key=lambda r: r.timestamp()[1]):
            key, number, value = record.key(), record.partition(), record.value()
            if key is None or number is None or value is None:
                continue
            self.remember(number, key, record.timestamp()[1] / 1000, digest=value)
            loaded += 1
        return loaded

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions this member no longer holds."""
        for partition in partitions:
            self._ids.pop(partition, None)
