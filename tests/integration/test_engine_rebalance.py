"""A partition the engine paused when it was taken away is fetched again when it comes back.

librdkafka keeps a partition's pause across its revocation and a later assignment; the engine
starts each assignment with no pause reason.  Without the engine resuming on assignment, a
partition paused by backpressure at a rebalance (for instance after a broker restart, when
the group loses and regains everything) came back paused for good and its records were never
fetched.  Real broker, two partitions, both paused by backpressure, a second member joins
(the first loses a partition) and leaves (it comes back); then every record must be handled.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from processors.kafka import KafkaClients
from processors.runtime.engine import Engine, EngineSettings
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.producer import AsyncProducer

pytestmark = pytest.mark.timeout(180)

PER_PARTITION = 10


class GatedProcessor:
    """Handles nothing until ``gate`` opens; remembers every (partition, offset) it handled."""

    name = "gated"

    def __init__(self, topic: str) -> None:
        self.sources = [topic]
        self.gate = asyncio.Event()
        self.handled: set[tuple[int, int]] = set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        await self.gate.wait()
        self.handled.add((msg.partition() or 0, msg.offset() or 0))
        return ()

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        raise AssertionError(f"nothing fails here: {exc!r}")

    def due_at(self, msg: KafkaMessage) -> float | None:
        return None

    async def on_assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        return None

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        return None


async def _until(condition: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("key_ordered", [False, True], ids=["cooperative-sticky", "range"])
async def test_a_partition_paused_when_revoked_is_fetched_when_it_comes_back(
    kafka_bootstrap: str, key_ordered: bool
) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.engine-rebalance"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    for n in range(2 * PER_PARTITION):
        producer.produce(topic, key=f"k{n}".encode(), value=b"v", partition=n % 2)
    assert producer.flush(30) == 0

    kafka = KafkaClients(kafka_bootstrap)
    group = f"{topic}.group"
    conf = kafka.group_consumer(group, key_ordered=key_ordered)
    processor = GatedProcessor(topic)
    output = AsyncProducer(kafka.producer())
    await output.start()
    engine = Engine(
        processor,
        consumer_conf=conf,
        producer=output,
        settings=EngineSettings(
            poll_batch=1, max_buffered_per_partition=2, max_buffered=100, shutdown_grace_s=0.5
        ),
    )
    run = asyncio.create_task(engine.run())
    other: confluent_kafka.Consumer | None = None
    stop_other = threading.Event()
    try:
        tps = [(topic, 0), (topic, 1)]
        await _until(lambda: engine.assigned == tps, "the engine owns both partitions")
        await _until(
            lambda: all(tp in engine._parts and engine._parts[tp].paused for tp in tps),
            "both partitions paused by backpressure",
        )
        rebalances = engine.stats.rebalances

        # a second member joins: the engine gives up at least one (paused) partition ...
        other = confluent_kafka.Consumer(conf)
        other.subscribe([topic])
        member = other

        def poll_other() -> None:
            while not stop_other.is_set():
                member.poll(0.1)

        poller = asyncio.get_running_loop().run_in_executor(None, poll_other)
        await _until(lambda: len(engine.assigned) < 2, "a partition moved to the other member")
        # ... and leaves: everything comes back to the engine
        stop_other.set()
        await poller
        await asyncio.get_running_loop().run_in_executor(None, member.close)
        other = None
        await _until(lambda: engine.assigned == tps, "both partitions back with the engine")
        assert engine.stats.rebalances > rebalances

        processor.gate.set()
        expected = {(p, o) for p in (0, 1) for o in range(PER_PARTITION)}
        await _until(lambda: expected <= processor.handled, "every record handled", timeout_s=90)
    finally:
        stop_other.set()
        if other is not None:
            other.close()
        processor.gate.set()
        engine.stop()
        await run
        await output.stop()
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result(timeout=60)
