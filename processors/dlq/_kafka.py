"""Client configurations and error translation for the dead-letter tooling."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import confluent_kafka

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients

__all__ = [
    "KafkaConfig",
    "clients",
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

KafkaConfig = str | Mapping[str, Any] | KafkaClients
"""Bootstrap servers, a full librdkafka property set (security settings and the like, as Kafka's
own tools read from ``--command-config``), or clients already made."""

_CONSUMER_ONLY = ("group.", "enable.auto", "auto.", "isolation.", "session.", "heartbeat.", "max.poll")


def clients(kafka: KafkaConfig, *, bootstrap_servers: str | None = None) -> KafkaClients:
    """The client configurations of the dead-letter tooling.  Consumer-only settings in a given
    property set are left out: each client's role sets its own.  ``bootstrap_servers``, when
    given, replaces the set's own."""
    if isinstance(kafka, KafkaClients):
        return kafka
    if isinstance(kafka, str):
        return KafkaClients(bootstrap_servers or kafka)
    props = {k: v for k, v in kafka.items() if not k.startswith(_CONSUMER_ONLY)}
    return KafkaClients.from_properties(props, bootstrap_servers=bootstrap_servers)


def consumer_config(kafka: KafkaConfig, *, group_id: str | None = None) -> dict[str, Any]:
    """A reader of committed records that never commits on its own (``group_id``: the group
    whose offsets it reads and, asked explicitly, writes; it never joins it)."""
    return clients(kafka).reader("processors-dlq-reader", group_id=group_id, eof=True)


def producer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """Idempotent, acks=all; a delivery that does not succeed within 2 minutes fails."""
    return clients(kafka).producer(delivery_timeout_s=120.0, linger_ms=5)


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
