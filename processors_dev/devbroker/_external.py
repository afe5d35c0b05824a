"""An existing Kafka cluster named by ``KAFKA_BOOTSTRAP_SERVERS``."""

from __future__ import annotations

from confluent_kafka import KafkaException

from processors.errors import BrokerError
from processors_dev.devbroker._model import BrokerInfo, BrokerKind, BrokerStartError, DevBroker
from processors_dev.devbroker._probe import fetch_broker_count

__all__ = ["ENV_BOOTSTRAP_SERVERS", "ExternalBroker"]

ENV_BOOTSTRAP_SERVERS = "KAFKA_BOOTSTRAP_SERVERS"


class ExternalBroker(DevBroker):
    """A cluster someone else runs.  ``start()`` checks that it answers; ``stop()`` only forgets it.

    The cluster is assumed to serve transactions (any real Kafka does).
    """

    kind = BrokerKind.EXTERNAL

    def __init__(self, bootstrap_servers: str, *, verify_timeout_s: float = 10.0) -> None:
        super().__init__()
        self._bootstrap_servers = bootstrap_servers
        self._verify_timeout_s = verify_timeout_s

    @property
    def running(self) -> bool:
        return self._info is not None

    def start(self) -> BrokerInfo:
        if self._info is not None:
            return self._info
        address = self._bootstrap_servers
        try:
            brokers = fetch_broker_count(address, self._verify_timeout_s)
        except KafkaException as exc:
            detail = exc.args[0] if exc.args else exc
            raise BrokerStartError(
                f"the Kafka cluster at {address} ({ENV_BOOTSTRAP_SERVERS}) did not answer a metadata "
                f"request within {self._verify_timeout_s:g} s: {detail}"
            ) from exc
        if brokers < 1:
            raise BrokerStartError(f"the Kafka cluster at {address} lists no broker")
        self._info = BrokerInfo(bootstrap_servers=address, kind=self.kind, supports_transactions=True)
        return self._info

    def stop(self, *, keep_data: bool = False) -> None:
        self._info = None

    def restart(self) -> None:
        raise BrokerError(
            f"the external Kafka cluster at {self._bootstrap_servers} cannot be restarted from here"
        )

    def pause_broker(self) -> None:
        raise BrokerError(
            f"the external Kafka cluster at {self._bootstrap_servers} cannot be paused from here"
        )

    def resume_broker(self) -> None:
        raise BrokerError(
            f"the external Kafka cluster at {self._bootstrap_servers} cannot be resumed from here"
        )
