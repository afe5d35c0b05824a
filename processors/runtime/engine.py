"""The consume loop of one integration app.

One ``Engine`` = one consumer group = one app.  The engine

* polls in a dedicated thread (all consumer calls happen there, librdkafka consumers are not
  thread-safe) while handlers run concurrently on the asyncio loop.  The thread keeps fetching
  on its own: each batch is handed to the loop as one callback, and the next fetch starts as
  soon as the loop has taken it in, not after a round trip through the poll coroutine (which
  costs the loop two more turns per batch: a record's wait from the broker to its handler is
  about halved under load).  It goes back to the loop when the loop has pauses, resumes or
  seeks for it, when commits are due, and on stopping;
* keeps each key's records in order (``Ordering.KEY``), or each partition's
  (``Ordering.PARTITION``), or none (``Ordering.UNORDERED``);
* bounds buffered work per partition and per app, and *pauses partitions* at the bound instead
  of blocking the poll loop;
* commits an offset only when it and every earlier offset of its partition finished and their
  outputs were acknowledged by the broker;
* on revocation drains the partitions' running work and commits it before giving them up; on
  SIGTERM stops fetching, drains within a grace period, commits and closes.

A handler failure never stops the engine: the processor's failure route (the app's DLQ today,
retry tiers on top of it) receives the record and the reason.

**Exactly-once output** (``exactly_once``, given a :class:`TransactionalProducer`): outputs go
into a Kafka transaction that also carries the committed offsets, so a result, its
answered-id marker (:mod:`processors.runtime.dedupe`) and the offset past its record become
visible together or not at all.  A record that finished after the offsets were taken has its
outputs and marker in the transaction but not its offset: redelivered after a crash, its
marker drops it.  An aborted transaction or lost partitions stop the engine (exit non-zero):
the next member starts again from the committed offsets.  External calls stay at-least-once
behind their idempotency keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, cast

import confluent_kafka
from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors.errors import Backpressure, BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.kafka.stats import with_lag_statistics
from processors.observability import tracing
from processors.runtime.closing import close_group_consumer
from processors.runtime.failures import H, OutputTooLarge, fitted, is_terminal_copy
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.producer import RecordTooLarge, TransactionalProducer
from processors.runtime.tracker import PartitionState

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = [
    "ConsumerFactory",
    "Engine",
    "EngineSettings",
    "EngineStats",
    "Ordering",
    "OutputProducer",
    "Processor",
]

log = logging.getLogger(__name__)

TP = tuple[str, int]


class Ordering(StrEnum):
    KEY = "key"
    PARTITION = "partition"
    UNORDERED = "unordered"


class EngineSettings(BaseModel):
    """How one app consumes.  Defaults suit an HTTP-bound integration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ordering: Ordering = Ordering.KEY
    max_concurrency: int = Field(default=64, ge=1, le=10_000)
    max_buffered_per_partition: int = Field(default=2_000, ge=1)
    max_buffered: int = Field(default=10_000, ge=1)
    commit_interval_ms: int = Field(default=500, ge=0)
    poll_batch: int = Field(default=500, ge=1, le=100_000)
    poll_timeout_ms: int = Field(default=100, ge=1, le=10_000)
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    output_retry_backoff_ms: int = Field(default=1_000, ge=1)
    linger_ms: int | None = Field(default=None, ge=0, le=1_000)
    """How long the output producer waits to fill a batch (librdkafka ``linger.ms``); None: the
    client default (5 ms).  Every output waits up to this long before it is sent, so an app a
    partner waits on uses less.  A ``producer.linger.ms`` client override wins."""
    exactly_once: bool = False
    """Outputs, answered ids and offsets commit in one transaction (apps that declare
    ``dedupe``); see the module doc."""
    instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    """With ``exactly_once``: stable per instance (default: the host name).  The transactional
    id is ``<group>.<instance_id>``, so a restarted instance aborts its crashed predecessor's
    open transaction at once (otherwise readers wait for its timeout).  Two instances of one
    app on one host need different ids (``--workers`` gives each worker its own)."""

    @model_validator(mode="after")
    def _bounds(self) -> EngineSettings:
        if self.max_buffered < self.max_buffered_per_partition:
            raise ValueError("max_buffered must be ≥ max_buffered_per_partition")
        return self


class OutputProducer(Protocol):
    async def send_all(self, records: list[OutRecord]) -> None: ...


ConsumerFactory = Callable[[dict[str, Any]], Any]
"""Builds the consumer (``confluent_kafka.Consumer``; a fake in unit tests)."""


class Processor(Protocol):
    """What an engine runs: decode, call out, and say what to produce.

    ``process`` raises to signal failure; ``failure`` turns the failed record and the error
    into the record(s) that park it (DLQ, retry tier).  Both are called on the event loop.
    """

    @property
    def name(self) -> str: ...
    @property
    def sources(self) -> Sequence[str]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]: ...
    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]: ...
    def due_at(self, msg: KafkaMessage) -> float | None:
        """Epoch seconds before which ``msg`` must not be processed (retry tiers), or None."""
        ...

    async def on_assigned(self, partitions: Sequence[TP]) -> None: ...
    async def on_revoked(self, partitions: Sequence[TP]) -> None: ...


@dataclass
class EngineStats:
    processed: int = 0
    failed: int = 0
    outputs: int = 0
    rebalances: int = 0
    commits: int = 0
    backpressure_pauses: int = 0
    last_success_at: float | None = None
    partitions: list[TP] = field(default_factory=list)
    lag: dict[TP, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    """Failed records by (error class, ``retry``, ``dead_letter`` or ``parked``): where the failure
    route sent them."""
    """Per assigned partition, records not yet committed (librdkafka's statistics, every 5 s)."""


class Engine:
    def __init__(
        self,
        processor: Processor,
        *,
        consumer_conf: Mapping[str, Any],
        producer: OutputProducer,
        settings: EngineSettings | None = None,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
    ) -> None:
        self.processor = processor
        self.settings = settings or EngineSettings()
        self.group = KafkaClients.group_of(consumer_conf)
        self.stats = EngineStats()
        self._consumer_conf = dict(consumer_conf)
        self._producer = producer
        self._consumer_factory = consumer_factory
        self._transactional = producer if isinstance(producer, TransactionalProducer) else None
        self._parked_topic: str | None = getattr(getattr(processor, "topics", None), "parked", None)
        self._fatal: BaseException | None = None
        self._acknowledged: Callable[[Sequence[OutRecord]], None] | None = getattr(
            processor, "acknowledged", None
        )
        self._consumer: confluent_kafka.Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"poll-{processor.name}")
        self._parts: dict[TP, PartitionState] = {}
        self._lanes: dict[Hashable, deque[KafkaMessage]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(self.settings.max_concurrency)
        self._buffered = 0
        self._to_pause: set[TP] = set()
        self._to_resume: set[TP] = set()
        self._to_seek: dict[TP, int] = {}
        self._endpoint_waiters: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self._wake = threading.Event()  # set on the loop: it has changes for the poll thread
        self._taken = threading.Event()  # set on the loop: it took the batch the thread handed over
        self._draining = False
        self._last_commit = 0.0
        self._assigned_once = asyncio.Event()
        self._revoke_grace_s = self.settings.shutdown_grace_s
        self._lane_key: Callable[[KafkaMessage], Hashable] = {
            Ordering.KEY: _key_lane,
            Ordering.PARTITION: _partition_lane,
            Ordering.UNORDERED: _offset_lane,
        }[self.settings.ordering]

    # ------------------------------------------------------------------ lifecycle

    @property
    def transactions(self) -> tuple[int, int] | None:
        """(committed, aborted) Kafka transactions with ``exactly_once``; None without."""
        producer = self._transactional
        return None if producer is None else (producer.commits, producer.aborts)

    @property
    def assigned(self) -> list[TP]:
        return sorted(self._parts)

    async def wait_assigned(self) -> None:
        """Return once the group gave this engine its first assignment."""
        await self._assigned_once.wait()

    def stop(self) -> None:
        """Ask the engine to stop: no more fetching; ``run()`` drains, commits and returns."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Consume until ``stop()``; always drains, commits and closes on the way out."""
        self._loop = asyncio.get_running_loop()
        await self.processor.start()
        try:
            self._consumer = await self._loop.run_in_executor(self._executor, self._create_consumer)
            await self._poll_loop()
        finally:
            await self._shutdown()

    def _create_consumer(self) -> confluent_kafka.Consumer:
        try:
            conf = with_lag_statistics(
                self._consumer_conf, self._store_lag, transactional=self._transactional is not None
            )
            consumer: confluent_kafka.Consumer = self._consumer_factory(conf)
            consumer.subscribe(
                list(self.processor.sources),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"app {self.processor.name}: cannot create consumer: {exc}") from exc
        return consumer

    def _store_lag(self, lag: dict[TP, int]) -> None:
        # on the poll thread; replaced whole, so a reader never sees a table half written
        self.stats.lag = {tp: value for tp, value in lag.items() if tp in self._parts}

    async def _poll_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        interval_s = self.settings.commit_interval_ms / 1000
        while not self._stopping.is_set():
            if self._fatal is not None:
                raise self._fatal
            self._wake.clear()  # before taking the changes: one made after them wakes the thread
            pause, resume = self._take_pause_changes()
            seeks = self._take_seeks()
            commits: list[confluent_kafka.TopicPartition] = []
            now = time.monotonic()
            if now - self._last_commit >= interval_s:
                commits = self._due_commits()
                self._last_commit = now
                if self._transactional is not None:
                    await self._commit_transaction(commits)
                    commits = []
            until = self._last_commit + interval_s
            await loop.run_in_executor(self._executor, self._poll_step, pause, resume, seeks, commits, until)

    def _poll_step(
        self,
        pause: list[TP],
        resume: list[TP],
        seeks: list[confluent_kafka.TopicPartition],
        commits: list[confluent_kafka.TopicPartition],
        until: float,
    ) -> None:
        """Runs on the poll thread: the only place consumer methods are called (with callbacks).

        Applies the loop's changes, then fetches and hands each batch to the loop
        (:meth:`_take`), waiting until the loop has taken it before fetching again (so a
        partition the batch filled to its bound is paused before anything more is fetched).
        Returns when the loop has changes (``_wake``), when commits are due (``until``,
        monotonic), on stopping or a fatal error."""
        consumer = self._consumer
        assert consumer is not None
        if pause:
            _pause_resume(consumer.pause, pause)
        for position in seeks:
            # Back to a record that is not due yet: it is fetched again when the partition resumes.
            try:
                consumer.seek(position)
            except confluent_kafka.KafkaException as exc:
                log.warning("app %s: seek %s failed: %s", self.processor.name, position, exc)
        if resume:
            _pause_resume(consumer.resume, resume)
        if commits:
            self._commit(consumer, commits, asynchronous=True)
        loop = self._loop
        assert loop is not None
        batch, timeout_s = self.settings.poll_batch, self.settings.poll_timeout_ms / 1000
        wake, taken, stopping = self._wake, self._taken, self._stopping
        while True:
            msgs = fetch(consumer, batch, timeout_s)
            if msgs:
                taken.clear()
                loop.call_soon_threadsafe(self._take, msgs)
                while not taken.wait(1.0):
                    if loop.is_closed():
                        return
            if wake.is_set() or stopping.is_set() or self._fatal is not None or time.monotonic() >= until:
                return

    def _take(self, msgs: Sequence[Any]) -> None:
        """On the loop: the batch the poll thread fetched, dispatched in order."""
        try:
            for msg in msgs:
                # confluent_kafka.Message satisfies KafkaMessage; its stub types headers more loosely.
                self._dispatch(cast(KafkaMessage, msg))
        except BaseException as exc:  # a fatal consumer error: the poll loop raises it
            self._fatal = self._fatal or exc
            self._wake.set()
        finally:
            self._taken.set()

    def _commit(
        self,
        consumer: confluent_kafka.Consumer,
        offsets: list[confluent_kafka.TopicPartition],
        *,
        asynchronous: bool,
    ) -> None:
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except confluent_kafka.KafkaException as exc:
            # Not fatal: the next commit carries a later offset; a lost one means re-processing,
            # which idempotency keys make harmless.
            log.warning("app %s: commit failed: %s", self.processor.name, exc)

    async def _commit_transaction(self, offsets: list[confluent_kafka.TopicPartition]) -> None:
        """Commit the open transaction with ``offsets`` (exactly-once output), on the poll thread."""
        producer = self._transactional
        loop = self._loop
        assert producer is not None
        assert loop is not None
        await producer.hold()
        try:
            await loop.run_in_executor(self._executor, self._commit_transaction_step, offsets)
        except BaseException:
            self._fatal = self._fatal or BrokerError(f"app {self.processor.name}: transaction failed")
            raise
        finally:
            producer.release()

    def _commit_transaction_step(self, offsets: list[confluent_kafka.TopicPartition]) -> None:
        producer = self._transactional
        consumer = self._consumer
        assert producer is not None
        assert consumer is not None
        producer.commit(offsets, consumer.consumer_group_metadata())
        if offsets:
            self.stats.commits += 1

    def _due_commits(self) -> list[confluent_kafka.TopicPartition]:
        due = []
        for state in self._parts.values():
            offset = state.commit_due()
            if offset is not None:
                due.append(confluent_kafka.TopicPartition(state.topic, state.partition, offset))
                state.committed = offset
        return due

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, msg: KafkaMessage) -> None:
        err = msg.error() if hasattr(msg, "error") else None
        if err is not None:
            if err.fatal():
                raise BrokerError(f"app {self.processor.name}: fatal consumer error: {err.str()}")
            log.warning("app %s: consumer error: %s", self.processor.name, err.str())
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        state = self._parts.get((topic, partition))
        if state is None or state.revoked:
            return  # fetched just before the partition went elsewhere: its new owner reads it
        if state.deferred_until is not None:
            return  # behind a record that is not due yet: fetched again after the seek
        due = self.processor.due_at(msg)
        if due is not None and due > time.time():
            self._defer(state, offset, due)
            return
        if not state.track(offset):
            return  # fetched twice (a re-fetch after a consumer error): already in hand
        self._buffered += 1
        # A lane belongs to one assignment of its partition: a partition taken back while the
        # previous assignment's lane is still finishing (past the revoke grace, logged as an
        # error) gets new lanes.  Appended to the old one, its records would never run (that
        # lane stops at its halted state) and the partition's commits would stall for good.
        lane_key = (id(state), self._lane_key(msg))
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = deque((msg,))
            self._lanes[lane_key] = lane
            task = asyncio.create_task(self._run_lane(lane_key, lane, state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            lane.append(msg)
        if state.unfinished >= self.settings.max_buffered_per_partition:
            self._pause(state, "partition-buffer")
        if self._buffered >= self.settings.max_buffered:
            for other in self._parts.values():
                self._pause(other, "app-buffer")

    async def _run_lane(self, lane_key: Hashable, lane: deque[KafkaMessage], state: PartitionState) -> None:
        try:
            while lane and not self._halted(state):
                msg = lane[0]
                await self._sem.acquire()
                if self._halted(state):  # revoked or stopping while waiting for a slot
                    self._sem.release()
                    break
                state.started()
                waiting: Backpressure | None = None
                try:
                    # The slot bounds concurrent handler work (external calls); waiting for the
                    # broker to acknowledge the outputs does not hold one.
                    try:
                        outputs = await self._process_one(msg)
                    except Backpressure as exc:
                        waiting = exc
                    finally:
                        self._sem.release()
                    if waiting is None and outputs:
                        await self._send(outputs, msg)
                finally:
                    state.stopped()
                if waiting is not None:
                    # The endpoint refuses calls: hold this record (no attempt spent, nothing
                    # dead-lettered), stop fetching, and try it again once the endpoint admits calls.
                    if not await self._wait_for_endpoint(waiting, state):
                        break
                    continue
                lane.popleft()
                offset = msg.offset()
                assert offset is not None
                state.finish(offset)
                self._buffered -= 1
                self._maybe_resume(state)
        finally:
            if self._lanes.get(lane_key) is lane:
                del self._lanes[lane_key]

    def _defer(self, state: PartitionState, offset: int, due: float) -> None:
        """Pause a retry partition until its head record is due; the poll loop never sleeps."""
        loop = self._loop
        assert loop is not None
        state.deferred_until = due
        self._pause(state, "not-due")
        self._to_seek[state.tp] = offset
        self._wake.set()
        state.deferred_timer = loop.call_later(max(0.0, due - time.time()), self._undefer, state)

    def _undefer(self, state: PartitionState) -> None:
        state.deferred_until = None
        state.deferred_timer = None
        if self._parts.get(state.tp) is state:
            self._unpause(state, "not-due")

    def _take_seeks(self) -> list[confluent_kafka.TopicPartition]:
        seeks = [
            confluent_kafka.TopicPartition(t, p, off)
            for (t, p), off in self._to_seek.items()
            if (t, p) in self._parts
        ]
        self._to_seek.clear()
        return seeks

    def _halted(self, state: PartitionState) -> bool:
        return state.revoked or self._draining

    async def _process_one(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        """The outputs for ``msg``: the handler's, or the failure route's when it raised.

        With tracing on, one consume span covers both, and each output gets a producer span
        under it (:mod:`processors.observability.tracing`); off, this is one attribute read.
        """
        tracer = tracing.tracer()
        if tracer is None:
            return await self._outputs_of(msg)
        span = tracing.consume_span(tracer, msg, app=self.processor.name, group=self.group)
        try:
            with tracing.current(span):
                outputs = await self._outputs_of(msg, span)
            return tracing.stamp(tracer, outputs, span)
        except BaseException as exc:
            tracing.failed(span, exc)
            raise
        finally:
            span.end()

    async def _outputs_of(self, msg: KafkaMessage, span: Span | None = None) -> Sequence[OutRecord]:
        processor = self.processor
        try:
            outputs = await processor.process(msg)
            self.stats.processed += 1
            self.stats.last_success_at = time.time()
        except (asyncio.CancelledError, Backpressure):
            raise
        except Exception as exc:
            self.stats.failed += 1
            log.warning(
                "app %s: %s[%s]@%s failed: %s",
                processor.name,
                msg.topic(),
                msg.partition(),
                msg.offset(),
                type(exc).__name__,
            )
            if span is not None:
                tracing.failed(span, exc)
            outputs = processor.failure(msg, exc, group=self.group)
            self._count_failures(outputs)
        return outputs

    def _count_failures(self, outputs: Sequence[OutRecord]) -> None:
        for record in outputs:
            headers = dict(record.headers)
            error_class = headers.get(H.ERROR_CLASS)
            if error_class is None:
                continue  # an answer the app publishes for a failure, not the failed record
            destination = "retry" if H.DUE_AT in headers else "dead_letter"
            if record.topic == self._parked_topic:
                destination = "parked"  # failed again after the replay limit
            key = (error_class.decode("utf-8", "replace")[:64], destination)
            self.stats.failures[key] = self.stats.failures.get(key, 0) + 1

    async def _wait_for_endpoint(self, exc: Backpressure, state: PartitionState) -> bool:
        """Pause every partition while ``exc.endpoint`` refuses calls; False if halted meanwhile."""
        endpoint = exc.endpoint or "endpoint"
        reason = f"endpoint:{endpoint}"
        count = self._endpoint_waiters.get(endpoint, 0)
        self._endpoint_waiters[endpoint] = count + 1
        if count == 0:
            log.warning("app %s: %s refuses calls; pausing all partitions", self.processor.name, endpoint)
            self.stats.backpressure_pauses += 1
            for other in self._parts.values():
                self._pause(other, reason)
        ready = asyncio.ensure_future(exc.wait_ready())
        halted = asyncio.ensure_future(state.halted.wait())
        try:
            await asyncio.wait({ready, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            halted.cancel()
            self._endpoint_waiters[endpoint] -= 1
            if self._endpoint_waiters[endpoint] == 0:
                for other in self._parts.values():
                    self._unpause(other, reason)
        return not self._halted(state)

    async def _send(self, outputs: Sequence[OutRecord], msg: KafkaMessage) -> None:
        """Produce and await acknowledgement; a broker failure is retried, never skipped.

        A record refused for its size is never retried as it is (it would wedge its partition
        for ever): a dead letter is sent again as an excerpt with the whole value's size and
        sha256 (:func:`fitted`; the original stays at its source offset), and any other output
        (a result, a retry-tier copy) sends ``msg`` to the failure route instead.
        """
        records = list(outputs)
        while True:
            try:
                await self._producer.send_all(records)
                self.stats.outputs += len(records)
                if self._acknowledged is not None:
                    self._acknowledged(records)
                return
            except RecordTooLarge as exc:
                self.stats.outputs += len(records) - len(exc.records)
                log.error("app %s: %s", self.processor.name, exc)
                if all(is_terminal_copy(r) for r in exc.records):
                    records = [fitted(r) for r in exc.records]
                    continue
                sizes = ", ".join(f"{r.topic} ({len(r.value or b'')} bytes)" for r in exc.records)
                too_large = OutputTooLarge(f"output larger than its topic accepts: {sizes}")
                records = list(self.processor.failure(msg, too_large, group=self.group))
            except BrokerError as exc:
                log.error("app %s: output not acknowledged, retrying: %s", self.processor.name, exc)
                await asyncio.sleep(self.settings.output_retry_backoff_ms / 1000)

    # ------------------------------------------------------------------ pause / resume

    def _pause(self, state: PartitionState, reason: str) -> None:
        if self._parts.get(state.tp) is not state:
            return  # an assignment that is over: its partition is not this state's to pause
        was_paused = state.paused
        state.pause_reasons.add(reason)
        if not was_paused:
            self._to_resume.discard(state.tp)
            self._to_pause.add(state.tp)
            self._wake.set()

    def _unpause(self, state: PartitionState, reason: str) -> None:
        if reason not in state.pause_reasons or self._parts.get(state.tp) is not state:
            return
        state.pause_reasons.discard(reason)
        if not state.paused:
            self._to_pause.discard(state.tp)
            self._to_resume.add(state.tp)
            self._wake.set()

    def pause_partitions(self, partitions: Sequence[TP], reason: str) -> None:
        """Pause fetching for ``partitions`` until ``resume_partitions`` with the same reason."""
        for tp in partitions:
            state = self._parts.get(tp)
            if state is not None:
                self._pause(state, reason)

    def resume_partitions(self, partitions: Sequence[TP], reason: str) -> None:
        for tp in partitions:
            state = self._parts.get(tp)
            if state is not None:
                self._unpause(state, reason)

    def _maybe_resume(self, state: PartitionState) -> None:
        if "partition-buffer" in state.pause_reasons and (
            state.unfinished <= self.settings.max_buffered_per_partition // 2
        ):
            self._unpause(state, "partition-buffer")
        if self._buffered <= self.settings.max_buffered // 2:
            for other in self._parts.values():
                if "app-buffer" in other.pause_reasons:
                    self._unpause(other, "app-buffer")

    def _take_pause_changes(self) -> tuple[list[TP], list[TP]]:
        pause = [tp for tp in self._to_pause if tp in self._parts]
        resume = [tp for tp in self._to_resume if tp in self._parts]
        self._to_pause.clear()
        self._to_resume.clear()
        return pause, resume

    # ------------------------------------------------------------------ rebalance (poll thread)

    def _on_assign(self, consumer: confluent_kafka.Consumer, partitions: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        if partitions:
            # librdkafka keeps a partition paused across its revocation (or loss) and a later
            # assignment, while every assignment starts here with no pause reason: a partition
            # paused when it went (backpressure, a retry record not due yet) would come back
            # paused for good, its records never fetched.  Start each assignment fetching.
            _pause_resume(consumer.resume, tps)
        self._call_on_loop(self._assigned(tps))

    def _on_revoke(self, consumer: confluent_kafka.Consumer, partitions: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        offsets = self._call_on_loop(self._revoked(tps, commit=True))
        producer = self._transactional
        if producer is not None:
            if self._fatal is not None:
                return
            # The revoked partitions' finished work commits with its outputs before they go.
            self._call_on_loop(producer.hold())
            try:
                producer.commit(offsets, consumer.consumer_group_metadata())
            except BrokerError as exc:
                log.error("app %s: %s", self.processor.name, exc)
                self._fatal = exc
                self._stopping.set()
            finally:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(producer.release)
            return
        if offsets:
            self._commit(consumer, offsets, asynchronous=False)

    def _on_lost(self, _consumer: confluent_kafka.Consumer, partitions: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._call_on_loop(self._revoked(tps, commit=False))
        if self._transactional is not None:
            # The open transaction holds outputs of partitions this member no longer owns:
            # it can only be aborted, with the work of the others.  Stop; a new member resumes.
            self._fatal = BrokerError(
                f"app {self.processor.name}: partitions lost ({_fmt(tps)}); the open transaction "
                "is abandoned and the app stops"
            )
            self._stopping.set()

    def _call_on_loop(self, coro: Awaitable[Any]) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self._loop)
        return future.result()

    async def _assigned(self, tps: list[TP]) -> None:
        self.stats.rebalances += 1
        for tp in tps:
            self._parts[tp] = PartitionState(*tp)
            self._forget_pending(tp)
        if tps:
            log.info("app %s: assigned %s", self.processor.name, _fmt(tps))
            # Stateful apps restore their store here, before any record of these partitions runs.
            await self.processor.on_assigned(tps)
        self.stats.partitions = self.assigned
        self._assigned_once.set()

    async def _revoked(self, tps: list[TP], *, commit: bool) -> list[confluent_kafka.TopicPartition]:
        self.stats.rebalances += 1
        states = [self._parts[tp] for tp in tps if tp in self._parts]
        for state in states:
            state.revoked = True
            state.halted.set()
            if state.deferred_timer is not None:
                state.deferred_timer.cancel()
        await self._wait_idle(states, self._revoke_grace_s)
        offsets = []
        for state in states:
            self._buffered -= state.unfinished
            del self._parts[state.tp]
            self._forget_pending(state.tp)
            offset = state.commit_due()
            if commit and offset is not None:
                offsets.append(confluent_kafka.TopicPartition(state.topic, state.partition, offset))
                state.committed = offset
        if tps:
            log.info("app %s: %s %s", self.processor.name, "revoked" if commit else "lost", _fmt(tps))
            await self.processor.on_revoked(tps)
        self.stats.partitions = self.assigned
        return offsets

    def _forget_pending(self, tp: TP) -> None:
        """Drop the pause, resume and seek queued for an assignment of ``tp`` that is over: a
        later assignment starts fetching from the committed offset, unpaused."""
        self._to_pause.discard(tp)
        self._to_resume.discard(tp)
        self._to_seek.pop(tp, None)

    async def _wait_idle(self, states: Sequence[PartitionState], timeout_s: float) -> bool:
        busy = [s.idle.wait() for s in states if s.running]
        if not busy:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*busy), timeout_s)
        except TimeoutError:
            log.error("app %s: in-flight work did not finish within %.1fs", self.processor.name, timeout_s)
            return False
        return True

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self) -> None:
        loop = self._loop
        assert loop is not None
        self._draining = True
        self._wake.set()  # a poll step still running (the poll loop was cancelled) hands back at once
        for state in self._parts.values():
            state.halted.set()
            if state.deferred_timer is not None:
                state.deferred_timer.cancel()
        finished = await self._wait_idle(list(self._parts.values()), self.settings.shutdown_grace_s)
        if not finished:
            for task in list(self._tasks):
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            commits = [
                confluent_kafka.TopicPartition(s.topic, s.partition, off)
                for s in self._parts.values()
                if (off := s.commit_due()) is not None
            ]
            await loop.run_in_executor(self._executor, self._close_consumer, commits)
        self._executor.shutdown(wait=False)
        await self.processor.stop()
        log.info(
            "app %s: stopped (processed=%d failed=%d)",
            self.processor.name,
            self.stats.processed,
            self.stats.failed,
        )

    def _close_consumer(self, commits: list[confluent_kafka.TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        producer = self._transactional
        if producer is not None:
            if self._fatal is None:
                try:  # every lane has finished: nothing is producing
                    producer.commit(commits, consumer.consumer_group_metadata())
                except BrokerError as exc:
                    log.error("app %s: %s", self.processor.name, exc)
        elif commits:
            self._commit(consumer, commits, asynchronous=False)
        close_group_consumer(consumer, what=f"app {self.processor.name}")
        self._consumer = None


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _pause_resume(method: Callable[[list[confluent_kafka.TopicPartition]], None], tps: list[TP]) -> None:
    try:
        method([confluent_kafka.TopicPartition(t, p) for t, p in tps])
    except confluent_kafka.KafkaException as exc:
        log.warning("pause/resume of %s failed: %s", _fmt(tps), exc)


def _key_lane(msg: KafkaMessage) -> Hashable:
    key = msg.key()
    if key is None:
        return (msg.topic(), msg.partition(), msg.offset())
    return (msg.topic(), msg.partition(), key)


def _partition_lane(msg: KafkaMessage) -> Hashable:
    return (msg.topic(), msg.partition())


def _offset_lane(msg: KafkaMessage) -> Hashable:
    return (msg.topic(), msg.partition(), msg.offset())


def _fmt(tps: Sequence[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))
