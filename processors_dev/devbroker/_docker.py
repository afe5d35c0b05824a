"""Kafka in a Docker container through testcontainers, when a Docker engine answers.

The engine check never hangs: it looks for the engine's socket and sends one ``/_ping`` with a
short deadline, so machines with only the docker CLI (or a stopped engine) skip this quickly.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from processors_dev.devbroker._model import BrokerInfo, BrokerKind, BrokerStartError, DevBroker
from processors_dev.devbroker._ports import pick_free_ports
from processors_dev.devbroker._probe import NotReady, wait_until_ready

__all__ = ["DEFAULT_KAFKA_IMAGE", "DockerKafkaBroker", "docker_engine_problem"]

logger = logging.getLogger("processors_dev.devbroker")

#: The image testcontainers' Kafka module runs in KRaft mode.  The module drives the Confluent
#: image's start scripts, so an override (``$PROCESSORS_KAFKA_IMAGE``) must be
#: ``confluentinc/cp-kafka`` 7.0 or newer.
DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
_DEFAULT_SOCKET = Path("/var/run/docker.sock")
_CONTAINER_PORT = 9093
_LOG_TAIL_LINES = 60


def _ping(sock: socket.socket, deadline: float) -> str | None:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    response = b""
    while b"\r\n" not in response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "the Docker engine did not answer /_ping in time"
        sock.settimeout(remaining)
        chunk = sock.recv(256)
        if not chunk:
            break
        response += chunk
    status_line = response.split(b"\r\n", 1)[0].decode("latin-1", errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or parts[1] != "200":
        return f"the Docker engine answered /_ping with {status_line or 'nothing'!r}"
    return None


def docker_engine_problem(timeout_s: float = 2.0) -> str | None:
    """``None`` if a Docker engine answers a ping within ``timeout_s``, else why not.

    Honours ``DOCKER_HOST`` (``unix://`` or ``tcp://``); with TLS configured
    (``DOCKER_TLS_VERIFY``) a TCP connection is taken as the answer.
    """
    deadline = time.monotonic() + timeout_s
    docker_host = os.environ.get("DOCKER_HOST", "")
    try:
        if docker_host.startswith("tcp://"):
            parts = urlsplit(docker_host)
            host, port = parts.hostname or "localhost", parts.port or 2375
            with socket.create_connection((host, port), timeout=timeout_s) as sock:
                if os.environ.get("DOCKER_TLS_VERIFY"):
                    return None
                return _ping(sock, deadline)
        if docker_host and not docker_host.startswith("unix://"):
            return f"DOCKER_HOST={docker_host} is neither unix:// nor tcp://"
        path = Path(docker_host.removeprefix("unix://")) if docker_host else _DEFAULT_SOCKET
        if not path.exists():
            return f"no Docker engine socket at {path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            return _ping(sock, deadline)
    except OSError as exc:
        return f"the Docker engine did not answer: {exc}"


class DockerKafkaBroker(DevBroker):
    """Kafka (KRaft) in a container started by testcontainers' Kafka module.

    The container's client port is bound to a fixed free host port, so stopping and starting the
    same container (``stop(keep_data=True)`` then ``start()``) keeps the address and the data.
    """

    kind = BrokerKind.DOCKER

    def __init__(
        self,
        *,
        image: str | None = None,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 30.0,
    ) -> None:
        super().__init__()
        self._image = image or os.environ.get("PROCESSORS_KAFKA_IMAGE") or DEFAULT_KAFKA_IMAGE
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._container: Any = None
        self._stopped_with_data = False

    @property
    def running(self) -> bool:
        if self._container is None or self._stopped_with_data:
            return False
        try:
            self._container.reload()
            return bool(self._container.status == "running")
        except Exception:  # any Docker error: not known to be running
            return False

    def _logs_tail(self) -> str:
        try:
            stdout, stderr = self._container.get_logs()
        except Exception as exc:  # best effort, for an error message
            return f"(container logs unavailable: {exc})"
        text = (stdout + stderr).decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def _fail(self, reason: str) -> BrokerStartError:
        return BrokerStartError(
            f"Kafka in Docker ({self._image}) did not start: {reason}\n"
            f"--- last {_LOG_TAIL_LINES} lines of the container log ---\n{self._logs_tail()}"
        )

    def start(self) -> BrokerInfo:
        if self.running and self._info is not None:
            return self._info
        if self._container is not None and self._stopped_with_data:
            return self._resume()
        from testcontainers.community.kafka import KafkaContainer  # only when Docker is used

        (host_port,) = pick_free_ports(1)
        container = (
            KafkaContainer(self._image)
            .with_kraft()
            .with_bind_ports(_CONTAINER_PORT, host_port)
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            .with_env("KAFKA_NUM_PARTITIONS", "1")
        )
        self._container = container
        try:
            container.start(timeout=int(self._start_timeout_s))
            address = str(container.get_bootstrap_server())
            self._await_ready(address)
        except BrokerStartError:
            self._remove_container()
            raise
        except Exception as exc:
            error = self._fail(f"{type(exc).__name__}: {exc}")
            self._remove_container()
            raise error from exc
        self._info = BrokerInfo(bootstrap_servers=address, kind=self.kind, supports_transactions=True)
        logger.info("Kafka in Docker (%s) ready at %s", self._image, address)
        return self._info

    def _await_ready(self, address: str) -> None:
        try:
            wait_until_ready(address, timeout_s=self._start_timeout_s, transactions=True)
        except NotReady as exc:
            raise self._fail(str(exc)) from exc

    def _resume(self) -> BrokerInfo:
        assert self._info is not None
        try:
            self._container.get_wrapped_container().start()
        except Exception as exc:
            raise self._fail(f"{type(exc).__name__}: {exc}") from exc
        self._stopped_with_data = False
        self._await_ready(self._info.bootstrap_servers)
        return self._info

    def _remove_container(self) -> None:
        if self._container is not None:
            try:
                self._container.stop()
            except Exception as exc:  # best effort; Ryuk reaps leftovers
                logger.warning("could not remove the Kafka container: %s", exc)
        self._container = None
        self._stopped_with_data = False
        self._info = None

    def stop(self, *, keep_data: bool = False) -> None:
        if self._container is None:
            return
        if keep_data:
            if not self._stopped_with_data:
                self._container.get_wrapped_container().stop(timeout=int(self._stop_grace_s))
                self._stopped_with_data = True
            return
        self._remove_container()
