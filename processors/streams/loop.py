"""Exactly-once consume-transform-produce for stateful apps.

One consumer (``read_committed``, one group per app) and one transactional producer per
instance. Each poll step is one Kafka transaction holding everything the step caused:

* the records the tasks produced (outputs, dead letters),
* the tasks' state changes, written to their compacted changelog partitions,
* the consumer offsets of the step (``send_offsets_to_transaction`` with the group's metadata,
  so a zombie of an older group generation is fenced).

A crash at any point leaves either the whole step committed or none of it; the records of an
aborted step are invisible to ``read_committed`` readers and the step is read again.

Work is split into **tasks**, one per assigned input partition. A task's store is restored
from its changelog partition (partition *n* backs input partition *n*) before the task sees a
record, and dropped when the partition is revoked. A revoked store is kept for a few minutes
and, if the partition comes back, only the changelog entries written since are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from processors.errors import EXIT_RESTART, BrokerError, RestartNeeded
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.kafka.stats import with_lag_statistics
from processors.runtime.closing import close_group_consumer
from processors.runtime.collector import collector_tuned
from processors.runtime.failures import dead_letter
from processors.streams.store import ChangelogStore, restore

__all__ = ["Emitter", "LoopStats", "StageSpec", "Task", "TransactionalLoop"]

log = logging.getLogger(__name__)

KEEP_REVOKED_STORE_S = 600.0
"""A revoked store is reused (read forward from its position) only within this time."""


class Emitter(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None: ...

    def dead_letter(self, msg: Any, exc: BaseException) -> None: ...


class Task(Protocol):
    """The work of one input partition.

    A task may also have ``on_idle()``: the loop calls it (in a transaction of its own) when
    the partition has had no record for ``idle_after_s`` and has nothing left to read, once per
    such quiet spell.
    """

    def process(self, msg: Any) -> None: ...

    def end_batch(self) -> None:
        """Called once per poll step after the step's records (before the commit)."""


TaskFactory = Callable[[str, int, "ChangelogStore | None", Emitter], Task]


@dataclass(frozen=True)
class StageSpec:
    """One stage of a topology: its input topics, its changelog and how to make a task."""

    name: str
    topics: tuple[str, ...]
    make_task: TaskFactory
    changelog: str | None = None
    key_filter: Callable[[str, int], Callable[[str], bool]] | None = None
    """For stages whose changelog partition is shared by several inputs (topic, partition)."""


@dataclass
class LoopStats:
    transactions: int = 0
    records: int = 0
    aborts: int = 0
    dead_letters: int = 0
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    """Dead letters by (error class, ``dead_letter``), as the engine's ``EngineStats.failures``."""
    outputs: int = 0
    """Records the tasks sent (reports, internal topics, dead letters) in committed transactions."""
    rebalances: int = 0
    restored_records: int = 0
    restore_seconds: float = 0.0
    assigned: list[tuple[str, int]] = field(default_factory=list)
    last_commit_at: float | None = None
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    """Per assigned partition, records not yet committed (librdkafka's statistics, every 5 s)."""
    first_step_perf: float | None = None
    """``time.perf_counter()`` when the first poll step with records began (measurements)."""
    producer_replacements: int = 0
    """Producers replaced after a fatal error (the step in flight was read again)."""


class _TxnEmitter:
    def __init__(self, loop: TransactionalLoop) -> None:
        self._loop = loop

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        self._loop._step_outputs += 1
        self._loop._produce(topic, key, value, headers=headers, partition=partition)

    def dead_letter(self, msg: Any, exc: BaseException) -> None:
        record = dead_letter(
            msg, exc, topic=self._loop.dlq_topic, app=self._loop.app, group=self._loop.group, attempts=1
        )
        stats = self._loop.stats
        stats.dead_letters += 1
        key = (type(exc).__name__[:64], "dead_letter")
        stats.failures[key] = stats.failures.get(key, 0) + 1
        log.warning(
            "%s: %s[%s]@%s dead-lettered: %s",
            self._loop.app,
            msg.topic(),
            msg.partition(),
            msg.offset(),
            type(exc).__name__,
        )
        self._produce_record(record)

    def _produce_record(self, record: Any) -> None:
        self._loop._step_outputs += 1
        self._loop._produce(record.topic, record.key, record.value, headers=record.headers)


STUCK_AFTER_S = 15.0
"""How long past its own timeout a transaction call may block before the watchdog acts."""

EXIT_STUCK = EXIT_RESTART
"""The exit code of a process whose transaction call never returned (EX_TEMPFAIL: restart it)."""

MAX_PRODUCER_REPLACEMENTS = 3
"""Producers replaced after fatal errors with no committed transaction in between, before the
loop gives up with :class:`~processors.errors.RestartNeeded`."""

_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _fenced(error: KafkaError | None) -> bool:
    return error is not None and error.code() in _FENCED


def _exit_stuck(_what: str) -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_STUCK)


class TransactionalLoop:
    """Runs a topology of stages with exactly-once semantics. ``run()`` blocks; call it in a thread."""

    def __init__(
        self,
        *,
        app: str,
        stages: Sequence[StageSpec],
        consumer_conf: Mapping[str, Any],
        producer_conf: Mapping[str, Any],
        dlq_topic: str,
        batch_size: int = 10_000,
        poll_timeout_s: float = 0.2,
        transaction_timeout_s: float = 30.0,
        consumer_factory: Callable[[dict[str, Any]], Any] = confluent_kafka.Consumer,
        producer_factory: Callable[[dict[str, Any]], Any] = confluent_kafka.Producer,
        idle_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        """``idle_after_s``: see :class:`Task` (``None`` or 0: tasks are never told they are idle).
        ``on_stuck(what)``: called from a watchdog thread when a transaction call has not returned
        ``STUCK_AFTER_S`` past its own timeout (default: the process exits with
        :data:`EXIT_STUCK`)."""
        self.app = app
        self.stages = list(stages)
        self.group = KafkaClients.group_of(consumer_conf)
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.transaction_timeout_s = transaction_timeout_s
        self.stats = LoopStats()
        self._consumer_conf = KafkaClients.exactly_once_consumer(consumer_conf)
        self._producer_conf = dict(producer_conf)
        if not KafkaClients.is_transactional(self._producer_conf):
            raise BrokerError("a transactional loop needs producer transactional.id")
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._by_topic = {topic: stage for stage in self.stages for topic in stage.topics}
        self._tasks: dict[tuple[str, int], Task] = {}
        self._stores: dict[tuple[str, int], ChangelogStore] = {}
        self._cached: dict[tuple[str, int], ChangelogStore] = {}
        self._touched: set[tuple[str, int]] = set()
        self._step_outputs = 0
        self.idle_after_s = idle_after_s or None
        self._clock = clock
        self._last_record: dict[tuple[str, int], float] = {}
        self._idle_told: set[tuple[str, int]] = set()
        self._next_idle_check = 0.0
        self._consumer: Any = None
        self._producer: Any = None
        self._restorer: Any = None
        self._emitter = _TxnEmitter(self)
        self.ready = threading.Event()
        """Set once the first assignment was restored (or nothing was assigned yet)."""
        self._ready_lock = threading.Lock()
        self._ready_callbacks: list[Callable[[], None]] = []
        self._on_stuck = on_stuck or _exit_stuck
        self._txn_call: tuple[str, float] | None = None
        """The transaction call in progress and when it started (monotonic), for the watchdog."""
        self._replacements_in_a_row = 0
        self._producer_broken = False

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the loop's thread, or now) once ``ready`` is set."""
        with self._ready_lock:
            if not self.ready.is_set():
                self._ready_callbacks.append(callback)
                return
        callback()

    def tasks_of(self, stage: str) -> list[Task]:
        """The current tasks of ``stage``: a snapshot, safe to take from another thread."""
        tasks = self._tasks.copy()  # one C call: never sees the dict half changed
        return [task for (topic, _), task in tasks.items() if self._by_topic[topic].name == stage]

    def _set_ready(self) -> None:
        with self._ready_lock:
            if self.ready.is_set():
                return
            self.ready.set()
            callbacks, self._ready_callbacks = self._ready_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("%s: a ready callback failed", self.app)

    # --- lifecycle -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        # Stateful tasks keep many small, long-lived objects: Python's default collector
        # thresholds would scan them over and over (about 13 % of the CPU time in the
        # bordereaux topology). Collections still happen, less often.
        with collector_tuned():
            self._run(stop)

    def _run(self, stop: threading.Event) -> None:
        watchdog = threading.Thread(
            target=self._watch, args=(stop,), name=f"{self.app}-txn-watchdog", daemon=True
        )
        watchdog.start()
        # Fences an earlier incarnation with the same transactional id and aborts what it left
        # open, before this one reads any state.
        self._start_producer()
        self._consumer = self._consumer_factory(
            with_lag_statistics(self._consumer_conf, self._store_lag, transactional=True)
        )
        self._restorer = self._consumer_factory(KafkaClients.restorer_of(self._consumer_conf))
        self._consumer.subscribe(
            sorted(self._by_topic),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not stop.is_set():
                msgs = fetch(self._consumer, self.batch_size, self.poll_timeout_s)
                if msgs:
                    self._step(msgs)
                if self.idle_after_s is not None and self._clock() >= self._next_idle_check:
                    self._next_idle_check = self._clock() + min(1.0, self.idle_after_s / 4)
                    self._tell_idle()
        finally:
            self._close()

    def _watched(self, what: str, call: Callable[[], Any]) -> Any:
        self._txn_call = (what, time.monotonic())
        try:
            return call()
        finally:
            self._txn_call = None

    def _watch(self, stop: threading.Event) -> None:
        """A transaction call that outlives its own timeout by ``STUCK_AFTER_S`` will not return:
        librdkafka can block in ``send_offsets_to_transaction`` past its timeout after the group
        coordinator went away (seen after a broker restart).  The state is safe in Kafka (the
        open transaction is aborted by the next incarnation's fencing), so the process stops
        and its restart resumes from the last committed transaction."""
        while not stop.wait(1.0):
            call = self._txn_call
            if call is None:
                continue
            what, started = call
            if time.monotonic() - started > self.transaction_timeout_s + STUCK_AFTER_S:
                log.critical(
                    "%s: %s has not returned %.0f s past its %.0f s timeout; stopping so a restart "
                    "resumes from the last committed transaction",
                    self.app,
                    what,
                    STUCK_AFTER_S,
                    self.transaction_timeout_s,
                )
                self._on_stuck(what)
                return

    def _store_lag(self, lag: dict[tuple[str, int], int]) -> None:
        self.stats.lag = lag

    def _close(self) -> None:
        if self._consumer is not None:
            close_group_consumer(self._consumer, what=self.app)
            self._consumer = None
        if self._restorer is not None:
            self._restorer.close()
            self._restorer = None
        if self._producer is not None:
            # Between steps nothing is left to send; a producer in a fatal state has nothing
            # it could still send.  Neither may hide why the loop stopped.
            if not self._producer_broken:
                try:
                    self._producer.flush(10)
                except KafkaException as exc:
                    log.warning("%s: producer flush at close: %s", self.app, exc)
            # librdkafka's producer closes when the last reference goes: drop it now, not when
            # this loop object is collected (it would go on reconnecting to a stopped cluster)
            self._producer = None

    def _start_producer(self) -> None:
        """A new transactional producer, its transactions initialised.  ``init_transactions``
        bumps the id's epoch: any earlier producer with the same transactional id is fenced
        and the transaction it left open is aborted."""
        self._producer = self._producer_factory(self._producer_conf)
        self._producer_broken = False
        try:
            self._watched(
                "init_transactions", lambda: self._producer.init_transactions(self.transaction_timeout_s)
            )
        except KafkaException as exc:
            self._producer_broken = True
            if _fenced(_kafka_error(exc)):
                raise self._fenced_error(exc) from exc
            raise RestartNeeded(f"{self.app}: cannot initialise transactions: {exc}") from exc

    def _replace_producer(self, cause: KafkaException) -> None:
        """Swap a producer that can no longer run transactions for a new one.

        After a broker restart librdkafka may declare the producer fatally broken (seen:
        ``INVALID_TXN_STATE`` when ending the transaction the restart interrupted).  Its open
        transaction is aborted by the new producer's ``init_transactions``; the caller then
        forgets the step and reads it again, as after any abort.
        """
        self._replacements_in_a_row += 1
        if self._replacements_in_a_row > MAX_PRODUCER_REPLACEMENTS:
            self._producer_broken = True
            raise RestartNeeded(
                f"{self.app}: {MAX_PRODUCER_REPLACEMENTS} new producers in a row failed to commit "
                f"a transaction; last error: {cause}"
            ) from cause
        log.warning("%s: the producer cannot run transactions any more (%s); replacing it", self.app, cause)
        old, self._producer = self._producer, None
        with contextlib.suppress(KafkaException, RuntimeError):
            old.purge()  # nothing of a broken producer may be sent late
        del old
        self.stats.producer_replacements += 1
        self._start_producer()

    def _fenced_error(self, exc: KafkaException) -> BrokerError:
        return BrokerError(
            f"{self.app}: fenced: another instance runs with the same transactional id "
            f"{KafkaClients.transactional_id_of(self._producer_conf)!r} (give each instance its own "
            f"instance id); this one stops: {exc}"
        )

    # --- rebalance -----------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        new: list[tuple[StageSpec, str, int]] = []
        stores: list[ChangelogStore] = []
        for tp in partitions:
            stage = self._by_topic[tp.topic]
            key = (tp.topic, tp.partition)
            new.append((stage, tp.topic, tp.partition))
            if stage.changelog is None:
                continue
            store = self._cached.pop(key, None)
            if store is None or (
                store.released_at is not None and time.monotonic() - store.released_at > KEEP_REVOKED_STORE_S
            ):
                key_filter = stage.key_filter(tp.topic, tp.partition) if stage.key_filter else None
                store = ChangelogStore(stage.changelog, tp.partition, key_filter=key_filter)
            store.released_at = None
            self._stores[key] = store
            stores.append(store)
        stats = restore(self._restorer, stores)
        self.stats.restored_records += stats.records
        self.stats.restore_seconds += stats.seconds
        for stage, topic, partition in new:
            key = (topic, partition)
            self._tasks[key] = stage.make_task(topic, partition, self._stores.get(key), self._emitter)
            self._last_record[key] = self._clock()
            self._idle_told.discard(key)
        self.stats.assigned = sorted(set(self.stats.assigned) | {(t, p) for _, t, p in new})
        if partitions:
            self.stats.rebalances += 1
        if partitions:
            log.info(
                "%s: assigned %d partition(s), restored %d state entries in %.2f s",
                self.app,
                len(partitions),
                stats.records,
                time.monotonic() - started,
            )
        self._set_ready()

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._release(partitions, keep=True)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._release(partitions, keep=False)

    def _release(self, partitions: list[TopicPartition], *, keep: bool) -> None:
        now = time.monotonic()
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._tasks.pop(key, None)
            store = self._stores.pop(key, None)
            if store is not None and keep:
                store.abort()
                store.released_at = now
                self._cached[key] = store
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.stats.assigned = [tp for tp in self.stats.assigned if tp not in gone]
        if partitions:
            self.stats.rebalances += 1

    # --- one step, one transaction ---------------------------------------------------------

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _step(self, msgs: list[Any]) -> None:
        if self.stats.first_step_perf is None:
            self.stats.first_step_perf = time.perf_counter()
        first: dict[tuple[str, int], int] = {}
        offsets: dict[tuple[str, int], int] = {}
        self._step_outputs = 0
        try:
            self._producer.begin_transaction()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise RestartNeeded(f"{self.app}: fatal consumer error: {err.str()}")
                    raise KafkaException(err)
                key = (msg.topic(), msg.partition())
                task = self._tasks.get(key)
                if task is None:
                    continue
                first.setdefault(key, msg.offset())
                offsets[key] = msg.offset() + 1
                self._touched.add(key)
                if self.idle_after_s is not None:
                    self._last_record[key] = self._clock()
                    self._idle_told.discard(key)
                store = self._stores.get(key)
                if store is not None:
                    store.savepoint()
                try:
                    task.process(msg)
                except (KafkaException, BrokerError):
                    raise
                except Exception as exc:  # a bad record must not stop the app
                    log.exception("%s: record %s[%s]@%s failed", self.app, key[0], key[1], msg.offset())
                    if store is not None:
                        store.rollback_to_savepoint()
                    self._rebuild(key)
                    self._emitter.dead_letter(msg, exc)
            for key in list(self._touched):
                task = self._tasks.get(key)
                if task is not None:
                    task.end_batch()
            self._commit_transaction(offsets)
        except KafkaException as exc:
            self._abort(exc, first)
            return
        self._committed()
        self.stats.records += len(msgs)

    def _commit_transaction(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Write the touched stores' changes to their changelogs, add ``offsets``, commit."""
        for key in self._touched:
            store = self._stores.get(key)
            if store is None:
                continue
            for entry, value in store.changes():
                self._produce(store.changelog, entry.encode(), value, partition=store.partition)
        if offsets:
            positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            metadata = self._consumer.consumer_group_metadata()
            self._watched(
                "send_offsets_to_transaction",
                lambda: self._producer.send_offsets_to_transaction(
                    positions, metadata, self.transaction_timeout_s
                ),
            )
        self._watched(
            "commit_transaction", lambda: self._producer.commit_transaction(self.transaction_timeout_s)
        )

    def _committed(self) -> None:
        """The transaction is in: the stores take its writes."""
        for key in self._touched:
            store = self._stores.get(key)
            if store is not None:
                store.commit()
        self._touched.clear()
        self._replacements_in_a_row = 0
        self.stats.transactions += 1
        self.stats.outputs += self._step_outputs
        self.stats.last_commit_at = time.time()

    # --- quiet partitions --------------------------------------------------------------------

    def _tell_idle(self) -> None:
        """One transaction telling every task whose partition went quiet (and has nothing left
        to read) that it is idle."""
        assert self.idle_after_s is not None
        now = self._clock()
        ends: dict[tuple[str, int], int] = {}
        for key, task in self._tasks.items():
            if (
                hasattr(task, "on_idle")
                and key not in self._idle_told
                and now - self._last_record.get(key, now) >= self.idle_after_s
            ):
                end = self._read_to_end_at(key)
                if end is not None:
                    ends[key] = end
        quiet = sorted(ends)
        if not quiet:
            return
        self._step_outputs = 0
        try:
            self._producer.begin_transaction()
            for key in quiet:
                self._tasks[key].on_idle()  # type: ignore[attr-defined]
                self._touched.add(key)
            # The partitions' own (unchanged) positions go with it: the group coordinator then
            # refuses the transaction if this instance no longer owns them.
            self._commit_transaction(ends)
        except KafkaException as exc:
            self._abort(exc, {})
            return
        self._committed()
        self._idle_told.update(quiet)
        log.info(
            "%s: %d quiet partition(s) told they are idle: %s",
            self.app,
            len(quiet),
            ", ".join(f"{t}[{p}]" for t, p in quiet),
        )

    def _read_to_end_at(self, key: tuple[str, int]) -> int | None:
        """The partition's next offset to read if nothing is left to read, else ``None``.

        The consumer's position is unknown until a record of the current assignment was
        fetched (after a restart, a partition read to its end has none): then the group's
        committed offset stands for it, or the start of the log when nothing was committed.
        """
        tp = TopicPartition(*key)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # nothing fetched yet: ask the broker
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            position = self._consumer.position([tp])[0].offset
            if position < 0:
                position = self._consumer.committed([tp], timeout=5)[0].offset
                if position < 0:
                    position = low
        except KafkaException as exc:
            log.debug("%s: cannot tell whether %s[%s] is read to its end: %s", self.app, *key, exc)
            return None
        return int(position) if position >= high else None

    def _rebuild(self, key: tuple[str, int]) -> None:
        """A task whose record raised may hold half-applied memory: rebuild it from its store.

        The store keeps the step's earlier writes (those records succeeded); the failed
        record's own writes were rolled back to the savepoint taken before it.
        """
        topic, partition = key
        stage = self._by_topic[topic]
        self._tasks[key] = stage.make_task(topic, partition, self._stores.get(key), self._emitter)

    def _abort(self, exc: KafkaException, first: Mapping[tuple[str, int], int]) -> None:
        error = _kafka_error(exc)
        self.stats.aborts += 1
        log.warning("%s: transaction failed (%s); aborting the step", self.app, error)
        if _fenced(error):
            # A newer incarnation with the same transactional id runs: it owns the work now
            # (and aborts this one's open transaction); this instance must not fence it back.
            self._producer_broken = True
            raise self._fenced_error(exc) from exc
        if error is not None and error.fatal():
            self._replace_producer(exc)
        else:
            try:
                self._watched(
                    "abort_transaction", lambda: self._producer.abort_transaction(self.transaction_timeout_s)
                )
            except KafkaException as abort_exc:
                if _fenced(_kafka_error(abort_exc)):
                    self._producer_broken = True
                    raise self._fenced_error(abort_exc) from abort_exc
                self._replace_producer(abort_exc)
        # Forget the step: stores drop its writes, tasks are rebuilt from their stores and the
        # consumer goes back to the step's first records.
        for key in self._touched:
            store = self._stores.get(key)
            if store is not None:
                store.abort()
            if key in self._tasks:
                self._rebuild(key)
        self._touched.clear()
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._tasks:
                self._consumer.seek(TopicPartition(topic, partition, offset))
