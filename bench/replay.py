"""Dead-letter replay rate against a plain copy of the same records (the ceiling)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import confluent_kafka

from bench.common import isolated_catalogue
from bench.harness import Run, Stopwatch
from processors.contract import Codec, LocalSchemaIds
from processors.dlq import DlqFilter, replay
from processors.runtime.failures import dead_letter
from processors.runtime.message import StaticMessage
from processors_dev.samples import premium_due_stream


def _fill_dlq(bootstrap: str, dlq: str, source: str, count: int) -> None:
    codec = Codec(LocalSchemaIds())
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, event in enumerate(premium_due_stream(count, 500, seed=3)):
        value, headers = codec.encode(event)
        msg = StaticMessage(source, i % 6, i, event.subject.encode(), value, tuple(headers), timestamp_ms=1)
        record = dead_letter(msg, RuntimeError("bench"), topic=dlq, app="payments", group="bench", attempts=3)
        producer.produce(
            record.topic, key=record.key, value=record.value, headers=record.headers, partition=i % 6
        )
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def _copy(bootstrap: str, source: str, target: str, count: int) -> Run:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"copy-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    consumer.assign(
        [confluent_kafka.TopicPartition(source, p, confluent_kafka.OFFSET_BEGINNING) for p in range(6)]
    )
    copied = 0
    watch = Stopwatch()
    while copied < count:
        for msg in consumer.consume(500, 1.0):
            if msg.error() is None:
                producer.produce(
                    target, key=msg.key(), value=msg.value(), headers=msg.headers(), partition=msg.partition()
                )
                copied += 1
        producer.poll(0)
    producer.flush(60)
    run = watch.stop(copied)
    consumer.close()
    return run


def copy_stage(bootstrap: str, count: int) -> Run:
    """The ceiling: a plain consume-and-produce copy of ``count`` dead letters (fresh topics)."""
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, _path, prefix = isolated_catalogue(bootstrap, Path(tmp))
        app = catalogue.app("payments")
        _fill_dlq(bootstrap, app.dlq, f"{prefix}insurance.billing.events", count)
        return _copy(bootstrap, app.dlq, app.retry_tiers[1].topic, count)


def replay_stage(bootstrap: str, count: int) -> Run:
    """``processors dlq replay`` of ``count`` dead letters with no rate limit (fresh topics)."""
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, _path, prefix = isolated_catalogue(bootstrap, Path(tmp))
        app = catalogue.app("payments")
        _fill_dlq(bootstrap, app.dlq, f"{prefix}insurance.billing.events", count)
        watch = Stopwatch()
        report = replay(
            bootstrap, catalogue, "payments", DlqFilter.build(), operator="bench", rate_per_s=1_000_000
        )
        run = watch.stop(report.replayed)
        assert report.replayed == count, report
        return run
