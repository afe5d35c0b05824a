"""A local key-value store backed by a compacted changelog partition.

The store keeps the committed view in memory (``base``) and the current transaction's writes
apart (``pending``). Reads see both. When the transaction commits, the runtime writes the
pending entries to the changelog inside that same Kafka transaction and then folds them into
``base``; when it aborts, they are dropped, so memory never holds state the changelog lacks.

Restoring reads the changelog partition with ``read_committed`` from where the store last
was (or the beginning) up to the last stable offset: entries of aborted transactions are
never seen, and an entry of a transaction still open is not read until it is decided.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from processors.errors import BrokerError
from processors.kafka.consume import fetch

__all__ = ["ChangelogStore", "RestoreStats", "restore"]

log = logging.getLogger(__name__)

_DELETED = None
_MISSING = object()


class RestoreStats:
    """What one restore read."""

    __slots__ = ("records", "seconds")

    def __init__(self, records: int = 0, seconds: float = 0.0) -> None:
        self.records = records
        self.seconds = seconds


class ChangelogStore:
    """The state of one task, keyed by strings, values as bytes."""

    def __init__(
        self,
        changelog: str,
        partition: int,
        *,
        key_filter: Callable[[str], bool] | None = None,
    ) -> None:
        self.changelog = changelog
        self.partition = partition
        self.key_filter = key_filter
        self.base: dict[str, bytes] = {}
        self.pending: dict[str, bytes | None] = {}
        self._undo: dict[str, object] | None = None
        self.position = 0
        """The changelog offset after the last entry this store has applied."""
        self.released_at: float | None = None
        """Monotonic time the task was revoked (a cached store is reused only for a while)."""

    def __len__(self) -> int:
        return len(self.base)

    def get(self, key: str) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.base.get(key)

    def put(self, key: str, value: bytes) -> None:
        if self._undo is not None and key not in self._undo:
            self._undo[key] = self.pending.get(key, _MISSING)
        self.pending[key] = value

    def delete(self, key: str) -> None:
        if key in self.base or self.pending.get(key) is not None:
            if self._undo is not None and key not in self._undo:
                self._undo[key] = self.pending.get(key, _MISSING)
            self.pending[key] = _DELETED

    def savepoint(self) -> None:
        """Start recording what the next record changes, so it can be undone alone."""
        self._undo = {}

    def rollback_to_savepoint(self) -> None:
        for key, before in (self._undo or {}).items():
            if before is _MISSING:
                self.pending.pop(key, None)
            else:
                self.pending[key] = before  # type: ignore[assignment]
        self._undo = None

    def items(self) -> Iterator[tuple[str, bytes]]:
        """The current view: committed entries with this transaction's writes over them."""
        for key, value in self.base.items():
            if key in self.pending:
                continue
            yield key, value
        for key, pending in self.pending.items():
            if pending is not None:
                yield key, pending

    # --- transaction hooks ---------------------------------------------------------------

    def changes(self) -> Iterable[tuple[str, bytes | None]]:
        return self.pending.items()

    def commit(self) -> None:
        for key, value in self.pending.items():
            if value is None:
                self.base.pop(key, None)
            else:
                self.base[key] = value
        self.pending.clear()

    def abort(self) -> None:
        self.pending.clear()
        self._undo = None

    def apply(self, key: str, value: bytes | None) -> None:
        """One changelog entry read back while restoring."""
        if self.key_filter is not None and not self.key_filter(key):
            return
        if value is None:
            self.base.pop(key, None)
        else:
            self.base[key] = value


def restore(
    consumer: Any,
    stores: Iterable[ChangelogStore],
    *,
    timeout_s: float = 300.0,
    batch: int = 10_000,
) -> RestoreStats:
    """Bring every store up to the end of its changelog partition.

    ``consumer`` is a group-less ``read_committed`` consumer used for nothing else. Each
    store reads from its own position; the end is the partition's last stable offset as the
    broker reports it for ``read_committed`` readers.  Several stores may share one changelog
    partition (each keeps the keys its filter selects): the partition is read once, from the
    lowest of their positions, and each entry goes to every store it is new to.
    """
    started = time.monotonic()
    stats = RestoreStats()
    todo: dict[tuple[str, int], list[ChangelogStore]] = {}
    ends: dict[tuple[str, int], int] = {}
    deadline = started + timeout_s
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for store in stores:
        tp = (store.changelog, store.partition)
        if tp not in marks:  # one query per partition, however many stores it backs
            marks[tp] = _watermarks(consumer, tp, deadline)
        low, high = marks[tp]
        if store.position < low:
            # Entries before `low` were deleted by retention: start afresh from what is left.
            store.base.clear()
            store.position = low
        if store.position >= high:
            continue
        ends[tp] = high
        todo.setdefault(tp, []).append(store)
    if not todo:
        return stats
    consumer.assign([TopicPartition(t, p, min(s.position for s in todo[(t, p)])) for (t, p) in todo])
    try:
        while todo:
            if time.monotonic() > deadline:
                names = ", ".join(f"{t}[{p}]" for t, p in todo)
                raise BrokerError(f"restoring {names} took longer than {timeout_s:.0f} s")
            stats.records += _apply(fetch(consumer, batch, 0.5), todo)
            for tp, targets in list(todo.items()):
                if min(t.position for t in targets) >= ends[tp]:
                    del todo[tp]
                    continue
                # Transaction markers and aborted entries are skipped by the consumer: its
                # position, not the last record's offset, tells when the end was reached.
                position = consumer.position([TopicPartition(*tp)])[0].offset
                if position >= ends[tp]:
                    for target in targets:
                        target.position = max(target.position, position)
                    del todo[tp]
    finally:
        consumer.unassign()
    stats.seconds = time.monotonic() - started
    return stats


_E = confluent_kafka.KafkaError
_PASSING_ERRORS = frozenset(
    {
        _E.NOT_LEADER_FOR_PARTITION,
        _E.LEADER_NOT_AVAILABLE,
        _E.BROKER_NOT_AVAILABLE,
        _E.REQUEST_TIMED_OUT,
        _E._TIMED_OUT,
        _E._TRANSPORT,
    }
)
"""Errors a watermark query answers with while a leader moves (the client does not mark them)."""


def _apply(batch: list[Any], todo: dict[tuple[str, int], list[ChangelogStore]]) -> int:
    """Apply one fetched batch to the stores still restoring; how many entries it held for them.

    One partition read into one store (every restore but the shared route-task changelog) takes
    the short path: at a million entries the per-entry work here is most of a restore's CPU.
    """
    if len(todo) == 1:
        (((topic, partition), only),) = todo.items()
        if len(only) == 1:
            return _apply_to_one(batch, topic, partition, only[0])
    applied = 0
    for msg in batch:
        err = msg.error()
        if err is not None:
            _entry_error(msg, err)
            continue
        targets = todo.get((msg.topic(), msg.partition()))
        if targets is None:
            continue
        key = msg.key()
        text = key.decode() if key is not None else ""
        value = msg.value()
        offset = msg.offset()
        for target in targets:
            if offset >= target.position:
                target.apply(text, value)
                target.position = offset + 1
        applied += 1
    return applied


def _apply_to_one(batch: list[Any], topic: str, partition: int, store: ChangelogStore) -> int:
    """:func:`_apply` for one store: :meth:`ChangelogStore.apply` inlined."""
    base = store.base
    keep = store.key_filter
    position = store.position
    applied = 0
    try:
        for msg in batch:
            err = msg.error()
            if err is not None:
                _entry_error(msg, err)
                continue
            if msg.partition() != partition or msg.topic() != topic:
                continue  # a partition already restored, still assigned
            applied += 1
            offset = msg.offset()
            if offset < position:
                continue
            position = offset + 1
            key = msg.key()
            text = key.decode() if key is not None else ""
            if keep is not None and not keep(text):
                continue
            value = msg.value()
            if value is None:
                base.pop(text, None)
            else:
                base[text] = value
    finally:
        store.position = position
    return applied


def _entry_error(msg: Any, err: Any) -> None:
    """``err`` in place of a changelog entry: the end of a partition and what the client retries
    itself pass; anything else ends the restore."""
    if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
        return
    if err.retriable() and not err.fatal():
        # A leader moving, a broker restarting: the client tries again itself.
        log.info("restoring %s[%s]: %s; going on", msg.topic(), msg.partition(), err)
        return
    raise BrokerError(f"restoring {msg.topic()}[{msg.partition()}]: {err}")


def _watermarks(consumer: Any, tp: tuple[str, int], deadline: float) -> tuple[int, int]:
    """The partition's (low, high) offsets; retriable errors are tried again until ``deadline``.

    Right after a topic is created, or while its leader moves, the broker answers "not leader"
    for a moment: that must not stop a restore.
    """
    pause_s = 0.1
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=15, cached=False)
            return int(low), int(high)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, confluent_kafka.KafkaError) and (
                error.retriable() or error.code() in _PASSING_ERRORS
            )
            if not retriable or time.monotonic() + pause_s > deadline:
                raise BrokerError(f"cannot read the end of changelog {tp[0]}[{tp[1]}]: {exc}") from exc
            log.info("reading the end of changelog %s[%s]: %s; trying again", tp[0], tp[1], exc)
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 2.0)
