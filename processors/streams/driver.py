"""Run a topology's stages in memory, without Kafka.

The same task code as in :class:`~processors.streams.TransactionalLoop`, fed from in-memory
partitions: for tests that need many runs, for recomputing reports offline, and as the
reference a Kafka run must match byte for byte. Each step takes up to ``batch`` records of
one partition; partitions take turns, so stages interleave as they would on a broker.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.runtime.failures import dead_letter
from processors.streams.loop import StageSpec, Task
from processors.streams.store import ChangelogStore

__all__ = ["InputRecord", "MemoryDriver", "MemoryMessage"]

InputRecord = tuple[str, int, bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass
class MemoryMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]] = field(default_factory=list)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def error(self) -> None:
        return None


class MemoryDriver:
    """Topics are lists of partitions; ``run()`` processes until nothing is left to read."""

    def __init__(
        self,
        stages: Sequence[StageSpec],
        partitions: Mapping[str, int],
        *,
        dlq_topic: str = "dlq",
        batch: int = 500,
    ) -> None:
        self.stages = list(stages)
        self.partitions = dict(partitions)
        self.dlq_topic = dlq_topic
        self.batch = batch
        self.topics: dict[str, list[list[MemoryMessage]]] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._tasks: dict[tuple[str, int], Task] = {}
        self._stores: dict[tuple[str, int], ChangelogStore] = {}
        for stage in self.stages:
            for topic in stage.topics:
                for partition in range(self.partitions[topic]):
                    store = None
                    if stage.changelog is not None:
                        key_filter = stage.key_filter(topic, partition) if stage.key_filter else None
                        store = ChangelogStore(stage.changelog, partition, key_filter=key_filter)
                    self._stores[(topic, partition)] = store  # type: ignore[assignment]
                    self._tasks[(topic, partition)] = stage.make_task(topic, partition, store, self)

    # --- Emitter ---------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        count = self.partitions.get(topic, 1)
        if partition is None:
            partition = zlib.crc32(key or b"") % count
        log = self.topics.setdefault(topic, [[] for _ in range(count)])[partition]
        log.append(MemoryMessage(topic, partition, len(log), key, value, list(headers or ())))

    def dead_letter(self, msg: Any, exc: BaseException) -> None:
        record = dead_letter(msg, exc, topic=self.dlq_topic, app="memory", group="memory", attempts=1)
        self.send(record.topic, record.key, record.value, headers=record.headers)

    # --- running ---------------------------------------------------------------------------

    def publish(
        self, records: Iterable[tuple[str, int, bytes | None, bytes, list[tuple[str, bytes]]]]
    ) -> None:
        """Append input records ``(topic, partition, key, value, headers)`` in order."""
        for topic, partition, key, value, headers in records:
            self.send(topic, key, value, headers=headers, partition=partition)

    def run(self) -> int:
        """Process until every stage input is read; returns the records processed."""
        done = 0
        while True:
            progressed = False
            for (topic, partition), task in self._tasks.items():
                log = self.topics.get(topic, [[]] * self.partitions[topic])[partition]
                start = self._positions.get((topic, partition), 0)
                if start >= len(log):
                    continue
                chunk = log[start : start + self.batch]
                store = self._stores.get((topic, partition))
                for msg in chunk:
                    if store is not None:
                        store.savepoint()
                    try:
                        task.process(msg)
                    except Exception as exc:  # the loop dead-letters too
                        if store is not None:
                            store.rollback_to_savepoint()
                        self.dead_letter(msg, exc)
                task.end_batch()
                if store is not None:
                    store.commit()
                self._positions[(topic, partition)] = start + len(chunk)
                done += len(chunk)
                progressed = True
            if not progressed:
                return done

    def idle(self, topic: str, partition: int) -> bool:
        """Tell the task of ``topic[partition]`` its partition went quiet, as the loop does after
        ``idle_after_s`` (False when the task has no ``on_idle``); ``run()`` again to follow it."""
        task = self._tasks[(topic, partition)]
        on_idle = getattr(task, "on_idle", None)
        if on_idle is None:
            return False
        on_idle()
        store = self._stores.get((topic, partition))
        if store is not None:
            store.commit()
        return True

    def output(self, topic: str) -> list[MemoryMessage]:
        """Every record written to ``topic``, partition by partition."""
        return [msg for log in self.topics.get(topic, []) for msg in log]

    def store(self, topic: str, partition: int) -> ChangelogStore | None:
        return self._stores.get((topic, partition))
