"""Client configurations and error translation for the dead-letter tooling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import confluent_kafka

from processors.errors import BrokerError, ConfigError

__all__ = [
    "KafkaConfig",
    "admin_config",
    "base_config",
    "consumer_config",
    "partition_counts",
    "producer_config",
    "retrying",
]

T = TypeVar("T")

_TRANSIENT = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
        confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
        confluent_kafka.KafkaError.NOT_COORDINATOR,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._WAIT_COORD,
    }
)

KafkaConfig = str | Mapping[str, Any]
"""Bootstrap servers, or a full librdkafka configuration (security settings and the like)."""

_CONSUMER_ONLY = ("group.", "enable.auto", "auto.", "isolation.", "session.", "heartbeat.", "max.poll")


def base_config(kafka: KafkaConfig) -> dict[str, Any]:
    """The common client settings: ``bootstrap.servers`` and whatever else was given."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka} if isinstance(kafka, str) else dict(kafka)
    servers = str(conf.get("bootstrap.servers") or "").strip()
    if not servers:
        raise ConfigError("no Kafka cluster: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")
    conf["bootstrap.servers"] = servers
    return {k: v for k, v in conf.items() if not k.startswith(_CONSUMER_ONLY)}


def consumer_config(kafka: KafkaConfig, *, group_id: str | None = None) -> dict[str, Any]:
    """A consumer that never commits on its own and reads committed records only.

    Without ``group_id`` the consumer gets a throw-away group id that never reaches the
    broker: it assigns partitions explicitly and never subscribes or commits.
    """
    return {
        **base_config(kafka),
        "group.id": group_id or f"processors-dlq-reader.{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }


def producer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """Idempotent, acks=all; a delivery that does not succeed within 2 minutes fails."""
    return {
        **base_config(kafka),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120_000,
    }


def admin_config(kafka: KafkaConfig) -> dict[str, Any]:
    return base_config(kafka)


def partition_counts(client: Any, topics: set[str], *, timeout_s: float) -> dict[str, int]:
    """Partitions of each topic; :class:`ConfigError` for a topic the cluster does not have."""
    counts: dict[str, int] = {}
    for topic in sorted(topics):
        try:
            metadata = client.list_topics(topic, timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot read the metadata of {topic}: {exc}") from exc
        described = metadata.topics.get(topic)
        error = getattr(described, "error", None)
        if described is None or (error is not None and error.code() != confluent_kafka.KafkaError.NO_ERROR):
            if error is not None and error.code() not in (
                confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
                confluent_kafka.KafkaError._UNKNOWN_TOPIC,
            ):
                raise BrokerError(f"cannot read the metadata of {topic}: {error.str()}")
            raise ConfigError(
                f"topic {topic} does not exist on the cluster (create it with `processors topics apply`)"
            )
        if not described.partitions:
            raise ConfigError(f"topic {topic} has no partitions on the cluster")
        counts[topic] = len(described.partitions)
    return counts


def retrying(call: Callable[[], T], *, timeout_s: float) -> T:
    """``call()``, tried again while it fails with a transient Kafka error (a leader moving,
    a coordinator loading) for up to ``timeout_s``; other errors are raised at once."""
    deadline = time.monotonic() + timeout_s
    delay_s = 0.05
    while True:
        try:
            return call()
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, confluent_kafka.KafkaError) and (
                error.code() in _TRANSIENT or error.retriable()
            )
            if not transient or time.monotonic() + delay_s > deadline:
                raise
        time.sleep(delay_s)
        delay_s = min(1.0, delay_s * 2)
