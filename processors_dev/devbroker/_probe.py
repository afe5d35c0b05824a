"""Readiness probes: does a broker answer metadata requests, can a transactional producer start."""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

__all__ = ["NotReady", "fetch_broker_count", "wait_until_ready"]


class _DebugLevel(logging.LoggerAdapter[logging.Logger]):
    """Logs every record at DEBUG: while a broker boots, client errors are expected, not news."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


# librdkafka's own log lines (connection refused while a broker boots, coordinator loading, ...)
# go to this logger at DEBUG instead of the process's standard error.
_client_logger = _DebugLevel(logging.getLogger("processors_dev.devbroker.client"), {})

_PROBE_SETTINGS: dict[str, Any] = {
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
    "socket.connection.setup.timeout.ms": 2000,
    "logger": _client_logger,
}

#: Pause between two probes that failed fast (connection refused answers at once).
_RETRY_PAUSE_S = 0.1


class NotReady(Exception):  # internal signal, translated by the broker classes
    """The broker did not become ready; the message says what was last observed."""


def fetch_broker_count(bootstrap_servers: str, timeout_s: float) -> int:
    """Ask for cluster metadata once; return the number of brokers.  Raises ``KafkaException``."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **_PROBE_SETTINGS})
    metadata = admin.list_topics(timeout=timeout_s)
    return len(metadata.brokers)


def _init_transactions(bootstrap_servers: str, timeout_s: float) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": f"processors-devbroker-ready-{uuid.uuid4().hex}",
            **_PROBE_SETTINGS,
        }
    )
    try:
        producer.init_transactions(timeout_s)
    finally:
        # A probe that timed out or met a loading coordinator leaves its init in progress, and
        # closing then warns that the abort conflicts with it: expected here, and the probe is
        # tried again.  (Where warnings are errors, as in the tests, the warning raised inside
        # the client's close() and surfaced as a SystemError instead of the retriable error.)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Producer abort_transaction failed during close", category=RuntimeWarning
            )
            producer.close()


def wait_until_ready(
    bootstrap_servers: str,
    *,
    timeout_s: float,
    transactions: bool,
    process_exited: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll until the broker answers metadata with a broker (and, if asked, serves transactions).

    ``process_exited`` returns a description when the broker's process has died, which ends the
    wait at once.  Raises :class:`NotReady` when the deadline passes or the process exits.
    """
    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **_PROBE_SETTINGS})
    last_problem = "no answer yet"
    metadata_ok = False
    while True:
        exited = process_exited()
        if exited is not None:
            raise NotReady(exited)
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise NotReady(f"not ready within {timeout_s:g} s ({last_problem})")
        attempt_s = min(remaining_s, 2.0)
        started = time.monotonic()
        try:
            if not metadata_ok:
                brokers = len(admin.list_topics(timeout=attempt_s).brokers)
                if brokers < 1:
                    last_problem = "metadata lists no broker"
                else:
                    metadata_ok = True
            if metadata_ok:
                if not transactions:
                    return
                _init_transactions(bootstrap_servers, min(remaining_s, 10.0))
                return
        except KafkaException as exc:
            last_problem = str(exc.args[0]) if exc.args else repr(exc)
        if time.monotonic() - started < _RETRY_PAUSE_S:
            time.sleep(_RETRY_PAUSE_S)
