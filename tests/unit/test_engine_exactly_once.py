"""The engine's exactly-once output: offsets travel in the producer's transaction, never in
a consumer commit, and no batch is produced while a transaction commits."""

from __future__ import annotations

import asyncio
from typing import Any

import confluent_kafka

from processors.errors import BrokerError
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.producer import TransactionalProducer, TransactionFailed
from tests.unit.test_engine import FakeConsumer, ScriptedProcessor, _engine, _msg, eventually


class GroupMetadataConsumer(FakeConsumer):
    def consumer_group_metadata(self) -> str:
        return "group-metadata"


class FakeTransactions(TransactionalProducer):
    """The transactional producer's hold/release/commit protocol around an in-memory log."""

    def __init__(self, *, fail_commit: bool = False) -> None:
        super().__init__({"transactional.id": "t"})
        self.sent: list[OutRecord] = []
        self.transactions: list[tuple[list[tuple[int, int]], int]] = []
        """Per committed transaction: (offsets, records produced in it)."""
        self.in_open = 0
        self.producing_during_commit = 0
        self.committing = False
        self.fail_commit = fail_commit

    async def start(self) -> None:
        self._open = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._open.set()

    async def stop(self, timeout_s: float = 30.0) -> None: ...

    async def _produce_all(
        self, records: list[OutRecord]
    ) -> tuple[list[asyncio.Future[None]], list[OutRecord]]:
        if self.committing:
            self.producing_during_commit += 1
        self.sent.extend(records)
        self.in_open += len(records)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done], []

    def commit(self, offsets: list[confluent_kafka.TopicPartition], group_metadata: Any) -> None:
        assert group_metadata == "group-metadata"
        if not offsets and not self._dirty:
            return
        self.committing = True
        try:
            if self.fail_commit:
                raise TransactionFailed("transaction not committed: aborted")
            self.transactions.append(([(tp.partition, tp.offset) for tp in offsets], self.in_open))
            self.in_open = 0
            self._dirty = False
        finally:
            self.committing = False


async def test_offsets_commit_inside_the_transaction_with_the_outputs() -> None:
    msgs = [_msg(p, i, f"K{p}{i}") for p in (0, 1) for i in range(20)]
    consumer = GroupMetadataConsumer(msgs, [0, 1])
    producer = FakeTransactions()
    proc = ScriptedProcessor()
    engine = _engine(proc, consumer, producer)  # type: ignore[arg-type]
    await producer.start()
    task = asyncio.create_task(engine.run())
    await eventually(lambda: len(producer.sent) == 40)
    engine.stop()
    await task
    assert consumer.commits == []  # never through the consumer
    committed: dict[int, int] = {}
    for offsets, _records in producer.transactions:
        committed.update(dict(offsets))
    assert committed == {0: 20, 1: 20}
    assert sum(records for _offsets, records in producer.transactions) == 40
    assert producer.producing_during_commit == 0


async def test_a_failed_transaction_stops_the_engine_with_the_reason() -> None:
    async def slow(_msg: KafkaMessage) -> None:
        await asyncio.sleep(0)

    consumer = GroupMetadataConsumer([_msg(0, i, f"K{i}") for i in range(5)], [0])
    producer = FakeTransactions(fail_commit=True)
    engine = _engine(ScriptedProcessor(slow), consumer, producer)  # type: ignore[arg-type]
    await producer.start()
    task = asyncio.create_task(engine.run())
    await eventually(task.done)
    exc = task.exception()
    assert isinstance(exc, BrokerError)
    assert "transaction" in str(exc)
    assert consumer.commits == []
    assert consumer.closed


def test_exactly_once_is_refused_for_an_app_without_answered_ids() -> None:
    import pytest

    from processors.errors import ConfigError
    from processors.runner import check_exactly_once
    from processors.topics.catalogue import load_catalogue

    catalogue = load_catalogue()
    check_exactly_once(catalogue.app("payments"))
    with pytest.raises(ConfigError, match=r"webhooks: engine.exactly_once .* dedupe: \{window: 24h\}"):
        check_exactly_once(catalogue.app("webhooks"))
