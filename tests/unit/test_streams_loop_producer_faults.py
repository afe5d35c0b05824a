"""The transactional loop when its producer fails: replaced and the step read again, or a clear
stop with the exit code that tells a supervisor what to do.

The loop runs its real code against fakes of librdkafka's consumer and producer (the loop's
``consumer_factory`` and ``producer_factory`` seams).  The fake consumer re-delivers from
wherever the loop seeks, as librdkafka does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from processors import cli
from processors.errors import EXIT_RESTART, BrokerError, RestartNeeded
from processors.streams.loop import MAX_PRODUCER_REPLACEMENTS, StageSpec, TransactionalLoop

TOPIC = "policy.events"


class FakeMessage:
    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self._offset = offset
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class FakeConsumer:
    """One partition holding ``messages``; assigned on the first ``consume``."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = messages
        self.position = 0
        self.seeks: list[int] = []
        self._on_assign: Callable[[Any, list[TopicPartition]], None] | None = None
        self._assigned = False
        self.closed = False
        self._idle = threading.Event()

    def subscribe(self, topics: list[str], *, on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self._on_assign = on_assign

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self._assigned and self._on_assign is not None:
            self._assigned = True
            self._on_assign(self, [TopicPartition(TOPIC, 0)])
        batch = self.messages[self.position : self.position + num_messages]
        self.position += len(batch)
        if not batch and timeout:
            self._idle.wait(min(timeout, 0.01))  # the broker's poll wait, shortened
        return batch

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp.offset)
        self.position = tp.offset

    def consumer_group_metadata(self) -> object:
        return object()

    def unsubscribe(self) -> None:
        pass

    def assignment(self) -> list[TopicPartition]:
        return []

    def close(self) -> None:
        self.closed = True


def _error(code: int, *, fatal: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "injected", fatal=fatal))


class FakeProducer:
    """``faults`` maps a transaction call's name to the exception it raises (once each)."""

    def __init__(self, faults: dict[str, KafkaException], committed: threading.Event) -> None:
        self.faults = dict(faults)
        self.committed = committed
        self.calls: list[str] = []
        self.produced: list[tuple[str, bytes | None]] = []
        self.purged = False
        self.flushed = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        fault = self.faults.pop(name, None)
        if fault is not None:
            raise fault

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append((topic, kwargs.get("value")))

    def poll(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, positions: Any, metadata: Any, timeout: float) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")
        self.committed.set()

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float) -> int:
        self.flushed = True
        if self.faults.get("flush") is not None:
            raise self.faults["flush"]
        return 0


class CountingTask:
    def __init__(self, seen: list[int], emitter: Any) -> None:
        self.seen = seen
        self.emitter = emitter

    def process(self, msg: Any) -> None:
        self.seen.append(msg.offset())
        self.emitter.send("out.topic", b"k", str(msg.offset()).encode())

    def end_batch(self) -> None:
        pass


class Harness:
    def __init__(self, producer_faults: list[dict[str, KafkaException]], messages: int = 3) -> None:
        self.consumer = FakeConsumer([FakeMessage(i) for i in range(messages)])
        self.committed = threading.Event()
        self.producers: list[FakeProducer] = []
        self._faults = list(producer_faults)
        self.seen: list[int] = []
        self.rebuilt = 0

        def make_task(topic: str, partition: int, store: Any, emitter: Any) -> CountingTask:
            self.rebuilt += 1
            return CountingTask(self.seen, emitter)

        def producer_factory(conf: dict[str, Any]) -> FakeProducer:
            faults = self._faults.pop(0) if self._faults else {}
            producer = FakeProducer(faults, self.committed)
            self.producers.append(producer)
            return producer

        def consumer_factory(conf: dict[str, Any]) -> Any:
            if conf.get("group.id"):
                return self.consumer
            return FakeConsumer([])  # the restorer: no changelog here

        self.loop = TransactionalLoop(
            app="bordereaux",
            stages=[StageSpec("only", (TOPIC,), make_task)],
            consumer_conf={"group.id": "g", "bootstrap.servers": "b:9092"},
            producer_conf={"transactional.id": "bordereaux-a", "bootstrap.servers": "b:9092"},
            dlq_topic="dlq",
            consumer_factory=consumer_factory,
            producer_factory=producer_factory,
            on_stuck=lambda what: pytest.fail(f"the watchdog fired on {what}"),
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.ended = threading.Event()

    def start(self) -> None:
        def run() -> None:
            try:
                self.loop.run(self.stop)
            except BaseException as exc:  # handed to the test's thread
                self.error = exc
            finally:
                self.ended.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def until_committed_then_stop(self) -> None:
        assert self.committed.wait(30) or self.ended.is_set(), "no transaction committed"
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()

    def until_ended(self) -> BaseException | None:
        assert self.ended.wait(30), "the loop did not stop on its own"
        self._thread.join(30)
        return self.error


FATAL_TXN_STATE = KafkaError.INVALID_TXN_STATE


def test_a_fatal_error_ending_the_transaction_replaces_the_producer_and_reads_the_step_again() -> None:
    run = Harness([{"commit_transaction": _error(FATAL_TXN_STATE, fatal=True)}])
    run.start()
    run.until_committed_then_stop()

    assert run.error is None
    broken, fresh = run.producers
    assert broken.purged  # nothing of the broken one leaves late
    assert not broken.flushed
    assert fresh.calls == [
        "init_transactions",
        "begin_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    assert run.consumer.seeks == [0]  # the step is read again from its first record
    assert run.seen == [0, 1, 2, 0, 1, 2]
    assert [value for _, value in fresh.produced] == [b"0", b"1", b"2"]
    assert run.loop.stats.producer_replacements == 1
    assert run.loop.stats.transactions == 1
    assert run.rebuilt == 2  # the task that saw the aborted step was rebuilt


def test_an_abort_that_fails_fatally_after_a_timeout_replaces_the_producer() -> None:
    """The case seen after a broker restart: adding the offsets timed out (abortable), and
    the abort then failed with a fatal INVALID_TXN_STATE."""
    run = Harness(
        [
            {
                "send_offsets_to_transaction": _error(KafkaError._TIMED_OUT),
                "abort_transaction": _error(FATAL_TXN_STATE, fatal=True),
            }
        ]
    )
    run.start()
    run.until_committed_then_stop()

    assert run.error is None
    broken, fresh = run.producers
    assert broken.calls[-1] == "abort_transaction"
    assert "commit_transaction" in fresh.calls
    assert run.consumer.seeks == [0]
    assert run.loop.stats.producer_replacements == 1
    assert run.loop.stats.transactions == 1


def test_a_plain_abortable_error_aborts_without_a_new_producer() -> None:
    run = Harness([{"commit_transaction": _error(KafkaError._TIMED_OUT)}])
    run.start()
    run.until_committed_then_stop()

    assert run.error is None
    assert len(run.producers) == 1
    assert run.producers[0].calls.count("abort_transaction") == 1
    assert run.loop.stats.producer_replacements == 0
    assert run.loop.stats.transactions == 1


def test_producers_that_keep_failing_end_in_restart_needed_not_in_a_loop() -> None:
    always = {"commit_transaction": _error(FATAL_TXN_STATE, fatal=True)}
    run = Harness([dict(always) for _ in range(MAX_PRODUCER_REPLACEMENTS + 5)])
    run.start()
    error = run.until_ended()

    assert isinstance(error, RestartNeeded), error
    assert "injected" in str(error)  # the last producer's error is named
    assert len(run.producers) == MAX_PRODUCER_REPLACEMENTS + 1
    assert run.loop.stats.transactions == 0
    assert run.consumer.closed


def test_a_new_producer_that_cannot_initialise_ends_in_restart_needed() -> None:
    run = Harness(
        [
            {"commit_transaction": _error(FATAL_TXN_STATE, fatal=True)},
            {"init_transactions": _error(KafkaError._TIMED_OUT)},
        ]
    )
    run.start()
    error = run.until_ended()

    assert isinstance(error, RestartNeeded), error
    assert "cannot initialise transactions" in str(error)


def test_no_broker_at_start_ends_in_restart_needed() -> None:
    run = Harness([{"init_transactions": _error(KafkaError._TIMED_OUT)}])
    run.start()
    error = run.until_ended()

    assert isinstance(error, RestartNeeded), error
    assert run.consumer.position == 0  # nothing was read without transactions


@pytest.mark.parametrize("code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED])
def test_a_fenced_instance_stops_and_does_not_fence_back(code: int) -> None:
    run = Harness([{"commit_transaction": _error(code, fatal=True)}])
    run.start()
    error = run.until_ended()

    assert isinstance(error, BrokerError), error
    assert not isinstance(error, RestartNeeded), error
    assert "bordereaux-a" in str(error)
    assert "fenced" in str(error)
    assert len(run.producers) == 1  # no new producer: it would fence the newer instance


def test_a_fatal_consumer_error_ends_in_restart_needed() -> None:
    run = Harness([])
    run.consumer.messages.insert(
        1, FakeMessage(1, KafkaError(KafkaError.FENCED_INSTANCE_ID, "static member fenced", fatal=True))
    )
    run.start()
    error = run.until_ended()

    assert isinstance(error, RestartNeeded), error
    assert "fatal consumer error" in str(error)


def test_a_failing_flush_at_close_does_not_hide_a_clean_stop() -> None:
    run = Harness([{"flush": _error(FATAL_TXN_STATE, fatal=True)}])
    run.start()
    run.until_committed_then_stop()

    assert run.error is None
    assert run.producers[0].flushed


def test_processors_run_exits_with_the_restart_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(args: object) -> int:
        raise RestartNeeded("bordereaux: cannot initialise transactions: timed out")

    monkeypatch.setattr(cli, "_cmd_run", fails)
    assert cli.main(["run", "bordereaux"]) == EXIT_RESTART == 75
    assert "restart" in capsys.readouterr().err
