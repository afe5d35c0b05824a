"""The consume engine with a fake consumer behind its factory seam and a fake producer."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from processors.errors import Backpressure
from processors.runtime.engine import Engine, EngineSettings, Ordering
from processors.runtime.failures import EXCERPT_BYTES, H
from processors.runtime.message import KafkaMessage, OutRecord, StaticMessage
from processors.runtime.producer import RecordTooLarge

TOPIC = "in"


class FakeConsumer:
    """Hands out preloaded records of unpaused partitions; records pauses, seeks and commits."""

    def __init__(self, messages: Sequence[StaticMessage], partitions: Sequence[int]) -> None:
        self.log: dict[int, list[StaticMessage]] = {p: [] for p in partitions}
        for msg in messages:
            self.log[msg.partition()].append(msg)
        self.position = dict.fromkeys(partitions, 0)
        self.partitions = [TopicPartition(TOPIC, p) for p in partitions]
        self.paused: set[int] = set()
        self.pause_log: list[tuple[str, int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.commits: list[tuple[int, int]] = []
        self.closed = False
        self.consume_calls = 0
        self._assigned = False
        self._unsubscribed = False
        self._lock = threading.Lock()
        self.callbacks: dict[str, Any] = {}

    def __call__(self, _conf: dict[str, Any]) -> FakeConsumer:
        return self

    def subscribe(self, _topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[StaticMessage]:
        self.consume_calls += 1
        if self._unsubscribed:
            if self._assigned:  # like librdkafka: the revocation runs in the next consume()
                self._assigned = False
                self.callbacks["on_revoke"](self, self.partitions)
            return []
        if not self._assigned:
            self._assigned = True
            self.callbacks["on_assign"](self, self.partitions)
            return []
        out: list[StaticMessage] = []
        for partition, records in self.log.items():
            while partition not in self.paused and self.position[partition] < len(records):
                if len(out) >= num_messages:
                    break
                out.append(records[self.position[partition]])
                self.position[partition] += 1
        if not out:
            threading.Event().wait(timeout / 10)  # a real consume blocks up to its timeout
        return out

    def pause(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.paused.add(tp.partition)
            self.pause_log.append(("pause", tp.partition))

    def resume(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.paused.discard(tp.partition)
            self.pause_log.append(("resume", tp.partition))

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))
        records = self.log[tp.partition]
        self.position[tp.partition] = next(i for i, m in enumerate(records) if m.offset() >= tp.offset)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        with self._lock:
            self.commits.extend((tp.partition, tp.offset) for tp in offsets)

    def unsubscribe(self) -> None:
        self._unsubscribed = True

    def assignment(self) -> list[TopicPartition]:
        return self.partitions if self._assigned else []

    def close(self) -> None:
        if self._assigned:
            self._assigned = False
            self.callbacks["on_revoke"](self, self.partitions)
        self.closed = True

    def last_commit(self, partition: int) -> int | None:
        found = [off for p, off in self.commits if p == partition]
        return found[-1] if found else None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[OutRecord] = []

    async def send_all(self, records: list[OutRecord]) -> None:
        self.sent.extend(records)


class ScriptedProcessor:
    """Processes by calling ``behaviour(msg)``; records the order records were started and ended."""

    name = "test"
    sources = (TOPIC,)

    def __init__(self, behaviour: Any = None) -> None:
        self.started: list[tuple[bytes | None, int]] = []
        self.ended: list[tuple[bytes | None, int]] = []
        self.behaviour = behaviour
        self.assigned: list[tuple[str, int]] = []
        self.due: dict[tuple[int, int], float] = {}

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def on_assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.assigned.extend(partitions)

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        ident = (msg.key(), msg.offset() or 0)
        self.started.append(ident)
        if self.behaviour is not None:
            await self.behaviour(msg)
        self.ended.append(ident)
        return [OutRecord("out", msg.key(), msg.value())]

    def due_at(self, msg: KafkaMessage) -> float | None:
        return self.due.get((msg.partition() or 0, msg.offset() or 0))

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        return [OutRecord("dlq", msg.key(), msg.value(), [("x-error-class", type(exc).__name__.encode())])]


def _msg(partition: int, offset: int, key: str) -> StaticMessage:
    return StaticMessage(TOPIC, partition, offset, key.encode(), f"{key}@{offset}".encode())


def _engine(
    processor: ScriptedProcessor, consumer: FakeConsumer, producer: FakeProducer, **settings: Any
) -> Engine:
    return Engine(
        processor,  # type: ignore[arg-type]
        consumer_conf={"group.id": "g"},
        producer=producer,
        settings=EngineSettings(commit_interval_ms=0, **settings),
        consumer_factory=consumer,
    )


async def eventually(condition: Any, timeout_s: float = 20) -> None:
    """Await a condition the engine's progress makes true (polled; fails after ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def _run_until(engine: Engine, condition: Any) -> None:
    task = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: condition() or task.done())
        if task.done():
            task.result()
    finally:
        engine.stop()
        await task


async def test_one_keys_records_run_in_order_while_other_keys_run_concurrently() -> None:
    b_started = asyncio.Event()

    async def behaviour(msg: KafkaMessage) -> None:
        if msg.key() == b"B":
            b_started.set()
        if msg.key() == b"A" and msg.offset() == 0:
            # A's first record cannot finish until B's record started: only concurrency gets here.
            await b_started.wait()

    msgs = [_msg(0, 0, "A"), _msg(0, 1, "A"), _msg(0, 2, "B"), _msg(0, 3, "A")]
    consumer, producer, proc = FakeConsumer(msgs, [0]), FakeProducer(), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer)
    await _run_until(engine, lambda: len(producer.sent) == 4)

    a_order = [off for key, off in proc.started if key == b"A"]
    assert a_order == [0, 1, 3]
    assert proc.ended[0] == (b"B", 2)  # B ran to completion while A0 was still running
    assert consumer.last_commit(0) == 4
    assert consumer.closed


async def test_partition_ordering_runs_one_record_at_a_time() -> None:
    running = 0
    peak = 0

    async def behaviour(_msg: KafkaMessage) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    msgs = [_msg(0, i, k) for i, k in enumerate("ABCDEF")]
    consumer, producer, proc = FakeConsumer(msgs, [0]), FakeProducer(), ScriptedProcessor(behaviour)
    await _run_until(
        _engine(proc, consumer, producer, ordering=Ordering.PARTITION), lambda: len(producer.sent) == 6
    )
    assert peak == 1
    assert [off for _, off in proc.started] == list(range(6))


async def test_commit_never_passes_an_unfinished_earlier_offset() -> None:
    release = asyncio.Event()

    async def behaviour(msg: KafkaMessage) -> None:
        if msg.offset() == 0:
            await release.wait()

    msgs = [_msg(0, i, f"K{i}") for i in range(5)]
    consumer, producer, proc = FakeConsumer(msgs, [0]), FakeProducer(), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: len(producer.sent) == 4)
    # Offsets 1..4 are done, 0 is not. Let the loop run several poll steps (each one commits
    # what is due, commit_interval_ms=0): still nothing may be committed.
    steps = consumer.consume_calls
    await eventually(lambda: consumer.consume_calls >= steps + 3)
    assert consumer.last_commit(0) is None
    release.set()
    await eventually(lambda: consumer.last_commit(0) == 5)
    engine.stop()
    await task


async def test_a_partition_is_paused_at_its_bound_and_resumed_when_it_drains() -> None:
    release = asyncio.Event()

    async def behaviour(_msg: KafkaMessage) -> None:
        await release.wait()

    msgs = [_msg(0, i, f"K{i}") for i in range(10)] + [_msg(1, i, f"L{i}") for i in range(3)]
    consumer, producer, proc = FakeConsumer(msgs, [0, 1]), FakeProducer(), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer, max_buffered_per_partition=4, max_buffered=100, poll_batch=1)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: ("pause", 0) in consumer.pause_log and len(proc.started) == 7)
    steps = consumer.consume_calls
    await eventually(lambda: consumer.consume_calls >= steps + 3)
    # Partition 0 stopped at its bound; partition 1 kept flowing.
    assert ("pause", 1) not in consumer.pause_log
    assert sum(1 for k, _ in proc.started if k and k.startswith(b"K")) == 4
    assert sum(1 for k, _ in proc.started if k and k.startswith(b"L")) == 3
    release.set()
    await eventually(lambda: len(producer.sent) == 13)
    engine.stop()
    await task
    assert ("resume", 0) in consumer.pause_log
    assert consumer.last_commit(0) == 10
    assert consumer.last_commit(1) == 3


async def test_a_failing_record_is_routed_by_the_processor_and_the_rest_continue() -> None:
    async def behaviour(msg: KafkaMessage) -> None:
        if msg.offset() == 1:
            raise ValueError("boom")

    msgs = [_msg(0, i, "A") for i in range(3)]
    consumer, producer, proc = FakeConsumer(msgs, [0]), FakeProducer(), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer)
    await _run_until(engine, lambda: len(producer.sent) == 3)
    assert [r.topic for r in producer.sent] == ["out", "dlq", "out"]
    assert producer.sent[1].headers == [("x-error-class", b"ValueError")]
    assert engine.stats.failed == 1
    assert consumer.last_commit(0) == 3


async def test_partitions_are_announced_to_the_app_before_their_records_run() -> None:
    seen_assigned: list[list[tuple[str, int]]] = []
    proc = ScriptedProcessor()

    async def behaviour(_msg: KafkaMessage) -> None:
        seen_assigned.append(list(proc.assigned))

    proc.behaviour = behaviour
    consumer, producer = FakeConsumer([_msg(0, 0, "A")], [0]), FakeProducer()
    await _run_until(_engine(proc, consumer, producer), lambda: len(producer.sent) == 1)
    assert seen_assigned == [[(TOPIC, 0)]]


def test_settings_refuse_an_app_bound_below_the_partition_bound() -> None:
    with pytest.raises(ValueError, match="max_buffered"):
        EngineSettings(max_buffered=10, max_buffered_per_partition=20)


async def test_a_record_not_yet_due_pauses_its_partition_and_runs_when_due() -> None:
    started_at: dict[int, float] = {}

    async def behaviour(msg: KafkaMessage) -> None:
        started_at[msg.offset() or 0] = time.time()

    class DueLater(ScriptedProcessor):
        """Partition 0's head record (offset 0) falls due 0.3 s after the engine first asks, so it
        is not yet due when first fetched however loaded the machine is; partition 1's is due."""

        due_at_first_ask: float | None = None

        def due_at(self, msg: KafkaMessage) -> float | None:
            if (msg.partition(), msg.offset()) != (0, 0):
                return None
            if self.due_at_first_ask is None:
                self.due_at_first_ask = time.time() + 0.3
            return self.due_at_first_ask

    msgs = [_msg(0, 0, "A"), _msg(0, 1, "B"), _msg(1, 0, "C")]
    consumer, producer, proc = FakeConsumer(msgs, [0, 1]), FakeProducer(), DueLater(behaviour)
    engine = _engine(proc, consumer, producer)
    await _run_until(engine, lambda: len(producer.sent) == 3)
    assert ("pause", 0) in consumer.pause_log
    assert ("resume", 0) in consumer.pause_log
    assert (0, 0) in consumer.seeks  # back to the record that was not due
    assert ("pause", 1) not in consumer.pause_log
    assert proc.due_at_first_ask is not None
    assert started_at[0] >= proc.due_at_first_ask  # never before it is due
    assert [off for key, off in proc.started if key in (b"A", b"B")] == [0, 1]
    assert consumer.last_commit(0) == 2


class _Refusing(Backpressure):
    def __init__(self, ready: asyncio.Event) -> None:
        super().__init__("circuit open")
        self.endpoint = "gateway"
        self._ready = ready

    async def wait_ready(self) -> None:
        await self._ready.wait()


async def test_backpressure_pauses_every_partition_holds_the_record_and_retries_it() -> None:
    ready = asyncio.Event()
    refused: list[int] = []

    async def behaviour(msg: KafkaMessage) -> None:
        if not ready.is_set():
            refused.append(msg.offset() or 0)
            raise _Refusing(ready)

    msgs = [_msg(0, 0, "A"), _msg(0, 1, "A"), _msg(1, 0, "B")]
    consumer, producer, proc = FakeConsumer(msgs, [0, 1]), FakeProducer(), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: ("pause", 0) in consumer.pause_log and ("pause", 1) in consumer.pause_log)
    await eventually(lambda: len(refused) >= 2)
    assert producer.sent == []  # nothing dead-lettered, nothing routed
    assert engine.stats.failed == 0
    ready.set()
    await eventually(lambda: len(producer.sent) == 3)
    await eventually(lambda: ("resume", 0) in consumer.pause_log and ("resume", 1) in consumer.pause_log)
    engine.stop()
    await task
    assert [r.topic for r in producer.sent] == ["out", "out", "out"]
    assert [off for key, off in proc.ended if key == b"A"] == [0, 1]
    assert consumer.last_commit(0) == 2
    assert consumer.last_commit(1) == 1


class LimitedProducer(FakeProducer):
    """Refuses, like a broker, every record whose value is over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused: list[OutRecord] = []

    async def send_all(self, records: list[OutRecord]) -> None:
        fitting = [r for r in records if len(r.value or b"") <= self.limit]
        refused = [r for r in records if len(r.value or b"") > self.limit]
        self.sent.extend(fitting)
        if refused:
            self.refused.extend(refused)
            raise RecordTooLarge(refused)


async def test_a_dead_letter_too_large_for_its_topic_goes_as_an_excerpt_and_the_partition_moves_on() -> None:
    async def behaviour(msg: KafkaMessage) -> None:
        if msg.offset() == 1:
            raise ValueError("boom")

    big = StaticMessage(TOPIC, 0, 1, b"A", b"x" * 100_000)
    msgs = [_msg(0, 0, "A"), big, _msg(0, 2, "A"), _msg(0, 3, "A")]
    consumer, producer, proc = FakeConsumer(msgs, [0]), LimitedProducer(50_000), ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer)
    await _run_until(engine, lambda: consumer.last_commit(0) == 4)

    assert [r.topic for r in producer.sent] == ["out", "dlq", "out", "out"]
    letter = producer.sent[1]
    assert len(letter.value or b"") == EXCERPT_BYTES
    headers = dict(letter.headers)
    assert headers[H.VALUE_TRUNCATED] == b"true"
    assert headers[H.VALUE_SIZE] == b"100000"
    assert headers[H.VALUE_SHA256] == hashlib.sha256(b"x" * 100_000).hexdigest().encode()
    assert headers["x-error-class"] == b"ValueError"  # the reason is kept


async def test_a_result_too_large_for_its_topic_dead_letters_the_input() -> None:
    big = StaticMessage(TOPIC, 0, 0, b"A", b"y" * 80_000)  # echoed as a result: too large for "out"
    msgs = [big, _msg(0, 1, "A")]
    consumer, producer, proc = FakeConsumer(msgs, [0]), LimitedProducer(50_000), ScriptedProcessor()
    engine = _engine(proc, consumer, producer)
    await _run_until(engine, lambda: consumer.last_commit(0) == 2)

    assert [r.topic for r in producer.sent] == ["dlq", "out"]
    letter = dict(producer.sent[0].headers)
    assert letter["x-error-class"] == b"OutputTooLarge"
    # the input itself was too large for the dead-letter topic too: an excerpt went
    assert letter[H.VALUE_TRUNCATED] == b"true"
    assert [r.topic for r in producer.refused] == ["out", "dlq"]


async def test_a_partition_taken_back_while_its_old_work_outlives_the_grace_gets_new_lanes() -> None:
    release = asyncio.Event()

    async def behaviour(msg: KafkaMessage) -> None:
        if msg.offset() == 0:
            await release.wait()  # outlives the revoke grace

    consumer, producer = FakeConsumer([_msg(0, 0, "A")], [0]), FakeProducer()
    proc = ScriptedProcessor(behaviour)
    engine = _engine(proc, consumer, producer, shutdown_grace_s=0.05)
    task = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: proc.started == [(b"A", 0)])
        # the partition goes and comes back while A@0 still runs (librdkafka calls these on the
        # poll thread; here from a worker thread)
        await asyncio.to_thread(engine._on_revoke, consumer, consumer.partitions)
        await asyncio.to_thread(engine._on_assign, consumer, consumer.partitions)
        consumer.log[0].append(_msg(0, 1, "A"))
        # the same key's next record runs in a lane of the new assignment, not behind A@0
        await eventually(lambda: (b"A", 1) in proc.ended)
        assert (b"A", 0) not in proc.ended
    finally:
        release.set()
        engine.stop()
        await task


async def test_the_poll_thread_fetches_again_once_the_loop_took_a_batch_not_after_a_poll_step() -> None:
    """Between two commits, with nothing to pause or seek, one poll step fetches batch after
    batch: each is handed to the loop and the next fetch follows as soon as the loop took it,
    without a round trip through the poll coroutine for every batch."""
    msgs = [_msg(0, i, f"K{i}") for i in range(12)]
    consumer, producer, proc = FakeConsumer(msgs, [0]), FakeProducer(), ScriptedProcessor()
    engine = Engine(
        proc,  # type: ignore[arg-type]
        consumer_conf={"group.id": "g"},
        producer=producer,
        settings=EngineSettings(commit_interval_ms=60_000, poll_batch=1),
        consumer_factory=consumer,
    )
    steps = 0
    step = engine._poll_step

    def counted(*args: Any) -> Any:
        nonlocal steps
        steps += 1
        return step(*args)

    engine._poll_step = counted  # type: ignore[method-assign]
    await _run_until(engine, lambda: len(producer.sent) == 12)
    assert len(proc.started) == 12
    assert consumer.consume_calls >= 12  # one record per fetch (poll_batch 1)
    assert steps <= 2  # the first step fetched them all (a second one at most, once stopping)
    assert consumer.last_commit(0) == 12  # committed on the way out
