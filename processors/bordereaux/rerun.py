"""Send a closed regulatory day's file job again (``processors regulatory rerun``).

The job is read back from the compacted ``integrations.regulatory.files`` topic and published
again unchanged: the regulatory app writes byte-identical files and skips an upload the
regulator already holds.
"""

from __future__ import annotations

from datetime import date

import confluent_kafka
from confluent_kafka import TopicPartition

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch

__all__ = ["find_job", "rerun_day"]


def find_job(kafka: str | KafkaClients, topic: str, day: date) -> bytes | None:
    """The latest committed file job for ``day``, or None."""
    consumer = confluent_kafka.Consumer(KafkaClients.of(kafka).reader("regulatory-rerun"))
    wanted = day.isoformat().encode()
    found: bytes | None = None
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise ConfigError(f"topic {topic} not found; run `processors topics apply` first")
        ends: dict[int, int] = {}
        for partition in described.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
            if high > low:
                ends[partition] = high
        if not ends:
            return None
        consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in ends])
        left = dict(ends)
        idle = 0
        while left and idle < 20:
            msgs = fetch(consumer, 1_000, 0.5)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error() is not None:
                    raise BrokerError(f"reading {topic}: {msg.error()}")
                if msg.key() == wanted:
                    found = msg.value()
            for partition in list(left):
                if consumer.position([TopicPartition(topic, partition)])[0].offset >= left[partition]:
                    del left[partition]
    finally:
        consumer.close()
    return found


def rerun_day(kafka: str | KafkaClients, topic: str, day: date) -> bool:
    """Publish ``day``'s file job again; False when there is none (the day is not closed)."""
    clients = KafkaClients.of(kafka)
    job = find_job(clients, topic, day)
    if job is None:
        return False
    producer = confluent_kafka.Producer(
        clients.producer(delivery_timeout_s=30.0, max_message_bytes=16 * 1024 * 1024, java_partitioner=True)
    )
    errors: list[str] = []
    producer.produce(
        topic,
        key=day.isoformat().encode(),
        value=job,
        on_delivery=lambda err, _msg: errors.append(str(err)) if err is not None else None,
    )
    if producer.flush(30) or errors:
        raise BrokerError(f"the file job for {day} was not accepted by Kafka: {errors or 'timed out'}")
    return True
