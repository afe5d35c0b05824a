"""Running the bordereaux app against a real broker, and reading what it committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from processors.bordereaux.topology import BordereauxTopics, build_stages
from processors.bordereaux.treaties import load_treaty_book
from processors.contract import ContentType
from processors.streams.driver import MemoryDriver
from tests.bordereaux_oracle import Published
from tests.integration.helpers import CODEC, start_processor, watermarks

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "tests" / "fixtures" / "treaties_test.yaml"


def publish_in_order(bootstrap: str, prefix: str, published: Sequence[Published]) -> None:
    """Each event to its own partition, in the generator's order (JSON, like many upstreams)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20}
    )
    for item in published:
        value, headers = CODEC.encode(item.event, ContentType.JSON)
        while True:
            try:
                producer.produce(
                    prefix + item.topic,
                    key=item.key.encode(),
                    value=value,
                    headers=headers,
                    partition=item.partition,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def reference_reports(
    published: Sequence[Published], *, then_idle: bool = False
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The same task code run in memory, in one clean pass: (report id → bytes, day → file job).

    ``then_idle``: afterwards every source partition is told it went quiet, as a running app
    does once it has read everything and ``idle_source_after_s`` has passed."""
    topics = BordereauxTopics()
    counts = {
        topics.policy_events: 6,
        topics.claim_events: 6,
        topics.by_policy: 6,
        topics.partials: 6,
    }
    stages = build_stages(book=load_treaty_book(BOOK), codec=CODEC, topics=topics, partition_counts=counts)
    driver = MemoryDriver(stages, {**counts, topics.bordereaux: 6, topics.regulatory_files: 6})
    records = []
    for item in published:
        value, headers = CODEC.encode(item.event, ContentType.JSON)
        records.append((item.topic, item.partition, item.key.encode(), value, headers))
    driver.publish(records)
    driver.run()
    if then_idle:
        for topic in (topics.policy_events, topics.claim_events):
            for partition in range(counts[topic]):
                assert driver.idle(topic, partition)
        driver.run()
    dead = driver.output(driver.dlq_topic)
    assert not dead, f"{len(dead)} generated events were dead-lettered: {dead[0].headers()}"
    reports = {json.loads(m.value())["report_id"]: m.value() for m in driver.output(topics.bordereaux)}
    files = {m.key().decode(): m.value() for m in driver.output(topics.regulatory_files)}  # type: ignore[union-attr]
    return reports, files


def app_env(
    bootstrap: str, prefix: str, topics_file: Path, instance: str, *, book: Path = BOOK
) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PROCESSORS_TOPICS_FILE": str(topics_file),
        "PROCESSORS_GROUP_PREFIX": prefix,
        "PROCESSORS_BORDEREAUX__TREATIES_FILE": str(book),
        "PROCESSORS_BORDEREAUX__INSTANCE_ID": instance,
        "PROCESSORS_LOG_LEVEL": "INFO",
        # A stopped static member's partitions move after this long (tests stop members on purpose).
        "PROCESSORS_CLIENT_OVERRIDES": json.dumps({"consumer.session.timeout.ms": "8000"}),
    }


_STARTED: dict[int, tuple[Path, int]] = {}
READY_LINE = b'"msg": "running bordereaux"'


def start_app(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = start_processor(env, "run", "bordereaux", log_path=log_path)
    _STARTED[proc.pid] = (log_path, offset)
    return proc


def wait_ready(proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until the app logged that it runs (its signal handlers are in place by then)."""
    log_path, offset = _STARTED[proc.pid]
    deadline = time.monotonic() + timeout_s
    while True:
        with log_path.open("rb") as log:
            log.seek(offset)
            if READY_LINE in log.read():
                return
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise AssertionError(f"the app was not ready within {timeout_s:.0f} s")
        time.sleep(0.1)  # polling a log file: there is no event to await


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM once the app runs; its exit code (0 when it drained and closed cleanly)."""
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


class CommittedReader:
    """Reads topics from the beginning with ``read_committed``, incrementally."""

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        self._topics = list(topics)
        self.records: list[Any] = []
        assignment = []
        for topic in self._topics:
            partitions = self._consumer.list_topics(topic, timeout=15).topics[topic].partitions
            assignment += [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(assignment)

    def poll(self, timeout_s: float = 0.3) -> int:
        got = 0
        for msg in self._consumer.consume(1_000, timeout_s):
            if msg.error() is None:
                self.records.append(msg)
                got += 1
        return got

    def on(self, topic: str) -> list[Any]:
        return [m for m in self.records if m.topic() == topic]

    def positions(self) -> str:
        """Where this reader stands in each partition (for a failure message)."""
        try:
            assigned = self._consumer.position(self._consumer.assignment())
        except confluent_kafka.KafkaException as exc:
            return f"reader positions unknown: {exc}"
        return "reader at: " + " ".join(f"{tp.topic}[{tp.partition}]={tp.offset}" for tp in assigned)

    def wait_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout_s: float,
        alive: Sequence[subprocess.Popen[bytes]] = (),
        what: str = "condition",
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for proc in alive:
                if proc.poll() is not None:
                    raise AssertionError(f"the app exited with {proc.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} not reached within {timeout_s:.0f} s ({len(self.records)} records)"
                )
            self.poll()

    def close(self) -> None:
        self._consumer.close()


def high_watermark_sum(bootstrap: str, topic: str) -> int:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions)
    finally:
        consumer.close()


def partition_table(bootstrap: str, topics: Iterable[str]) -> str:
    """Per partition of ``topics``: log start, end, last stable offset and what each consumer
    group committed; for a test's failure message, to tell a stalled app from a transaction
    left open (last stable offset below the end) or a reader stuck behind one."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    groups = sorted(
        g.group_id
        for g in admin.list_consumer_groups(request_timeout=10).result().valid
        if not g.group_id.startswith(("reader-", "probe-"))
    )
    plain = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"}
    )
    stable = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",  # ListOffsets answers the last stable offset
        }
    )
    lines = [f"groups: {', '.join(groups) or 'none'}"]
    try:
        wanted = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(plain.list_topics(topic, timeout=10).topics[topic].partitions)
        ]
        committed: dict[tuple[str, int], list[str]] = {}
        for group in groups:
            reader = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
            try:
                for tp in reader.committed(wanted, timeout=10):
                    if tp.offset >= 0:
                        committed.setdefault((tp.topic, tp.partition), []).append(f"{group}={tp.offset}")
            finally:
                reader.close()
        for tp in wanted:
            start, end = watermarks(plain, tp)
            _, last_stable = watermarks(stable, tp)
            flag = "  <- open transaction" if last_stable < end else ""
            groups_at = " ".join(committed.get((tp.topic, tp.partition), [])) or "-"
            lines.append(
                f"{tp.topic}[{tp.partition}] start={start} end={end} stable={last_stable} "
                f"committed: {groups_at}{flag}"
            )
    except Exception as exc:  # a diagnostic must not hide the failure it explains
        lines.append(f"(partition table incomplete: {type(exc).__name__}: {exc})")
    finally:
        plain.close()
        stable.close()
    return "\n".join(lines)


def read_to_end(bootstrap: str, group: str, topics: Iterable[str]) -> bool:
    """Whether ``group`` has committed, for every partition of ``topics``, the end of the log."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        wanted: list[TopicPartition] = []
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                wanted.append(TopicPartition(topic, p))
                ends[(topic, p)] = watermarks(consumer, TopicPartition(topic, p))[1]
        committed = consumer.committed(wanted, timeout=10)
        return all(
            tp.offset >= ends[(tp.topic, tp.partition)] or ends[(tp.topic, tp.partition)] == 0
            for tp in committed
        )
    finally:
        consumer.close()


def count_records(bootstrap: str, topics: Iterable[str], *, committed: bool, timeout_s: float = 120) -> int:
    """Data records on ``topics`` up to their end now: those of committed transactions only
    (``read_committed``), or every record written, aborted transactions' included."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"counter-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    try:
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=15).topics[topic].partitions:
                low, high = watermarks(consumer, TopicPartition(topic, p))
                if high > low:
                    ends[(topic, p)] = high
                    assignment.append(TopicPartition(topic, p, low))
        if not assignment:
            return 0
        consumer.assign(assignment)
        count = 0
        deadline = time.monotonic() + timeout_s
        while True:
            count += sum(1 for msg in consumer.consume(1_000, 0.5) if msg.error() is None)
            # the position passes control records (transaction markers) a reader never sees
            positions = consumer.position([TopicPartition(t, p) for t, p in ends])
            if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions):
                return count
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {sorted(ends)} to the end within {timeout_s:.0f} s")
    finally:
        consumer.close()
