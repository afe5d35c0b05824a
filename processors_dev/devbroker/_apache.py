"""A single-node Apache Kafka (KRaft) broker run from its Maven Central jars with the machine's Java."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from processors.errors import ConfigError
from processors_dev.devbroker._jars import ensure_kafka_jars, kafka_version
from processors_dev.devbroker._java import JavaRuntime, find_java
from processors_dev.devbroker._model import BrokerInfo, BrokerKind, BrokerStartError, DevBroker
from processors_dev.devbroker._ports import pick_free_ports
from processors_dev.devbroker._probe import NotReady, wait_until_ready
from processors_dev.devbroker._process import LOG_TAIL_LINES, BrokerProcess, log_tail, run_to_log

__all__ = ["ApacheKafkaBroker", "new_cluster_id"]

logger = logging.getLogger("processors_dev.devbroker")

_PORT_IN_USE = "Address already in use"
_FRESH_START_ATTEMPTS = 3
_FORMAT_TIMEOUT_S = 120.0
_LOG_FILE = "broker.log"
# The all-zero and all-ones UUIDs are reserved by Kafka.
_RESERVED_IDS = frozenset({bytes(16), b"\x00" * 15 + b"\x01"})


def new_cluster_id() -> str:
    """A random Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        # Kafka never issues ids starting with '-': they read like command-line options.
        if raw not in _RESERVED_IDS and not text.startswith("-"):
            return text


def _escape_property(text: str) -> str:
    if any(char in text for char in "\r\n"):
        raise ConfigError(f"broker setting {text!r} contains a line break")
    return text.replace("\\", "\\\\")


class _StartFailed(Exception):
    """Internal: one start attempt failed; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApacheKafkaBroker(DevBroker):
    """Apache Kafka in KRaft mode (one process, broker and controller roles) on 127.0.0.1.

    Each fresh start gets a temporary run directory (configuration, data, ``broker.log``), two free
    ports and a new cluster id.  ``stop(keep_data=True)`` keeps all three so that ``start()``
    brings the same broker back on the same address with its data.
    """

    kind = BrokerKind.APACHE

    def __init__(
        self,
        *,
        version: str | None = None,
        java: str | os.PathLike[str] | None = None,
        libs_dir: str | os.PathLike[str] | None = None,
        heap_max: str = "1536m",
        start_timeout_s: float = 90.0,
        stop_grace_s: float = 30.0,
        extra_config: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__()
        self._version = kafka_version(version)
        self._java = java
        self._libs_dir = Path(libs_dir) if libs_dir is not None else None
        self._heap_max = heap_max
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._extra_config = dict(extra_config or {})
        self._host = host
        self._run_dir: Path | None = None
        self._ports: tuple[int, int] | None = None
        self._process: BrokerProcess | None = None

    @property
    def version(self) -> str:
        return self._version

    @property
    def log_path(self) -> Path | None:
        """The broker's log file while the run directory exists."""
        return self._run_dir / _LOG_FILE if self._run_dir is not None else None

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_description() is None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> BrokerInfo:
        if self.running:
            return self.info
        if self._process is not None:
            # The process died on its own: reap it, then start again on the same address.
            self._process.stop(self._stop_grace_s)
            self._process = None
        java = find_java(self._java)
        libs = self._libs_dir if self._libs_dir is not None else ensure_kafka_jars(self._version)
        if self._run_dir is not None:
            return self._resume(java, libs)
        for attempt in range(1, _FRESH_START_ATTEMPTS + 1):
            run_dir = Path(tempfile.mkdtemp(prefix="processors-kafka-"))
            broker_port, controller_port = pick_free_ports(2, host=self._host)
            self._run_dir, self._ports = run_dir, (broker_port, controller_port)
            try:
                self._write_config(run_dir)
                self._format_storage(java, libs, run_dir)
                return self._launch(java, libs)
            except _StartFailed as exc:
                tail = log_tail(run_dir / _LOG_FILE)
                self._discard_run_dir()
                if _PORT_IN_USE in tail and attempt < _FRESH_START_ATTEMPTS:
                    logger.warning("port %d or %d was taken; starting again", broker_port, controller_port)
                    continue
                raise BrokerStartError(self._failure_message(exc.reason, broker_port, tail)) from None
            except BaseException:
                self._discard_run_dir()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, *, keep_data: bool = False) -> None:
        if self._process is not None:
            self._process.stop(self._stop_grace_s)
            self._process = None
            logger.info("stopped Apache Kafka %s%s", self._version, " (data kept)" if keep_data else "")
        if not keep_data:
            self._discard_run_dir()

    def kill_broker(self) -> None:
        """SIGKILL the broker's JVM: no controlled shutdown, its data kept for ``resume_broker()``."""
        if self._process is not None:
            self._process.kill()
            self._process = None
            logger.info("killed Apache Kafka %s (SIGKILL, data kept)", self._version)

    # -- internals -------------------------------------------------------------------------------

    def _resume(self, java: JavaRuntime, libs: Path) -> BrokerInfo:
        assert self._run_dir is not None
        assert self._ports is not None
        try:
            return self._launch(java, libs)
        except _StartFailed as exc:
            tail = log_tail(self._run_dir / _LOG_FILE)
            raise BrokerStartError(self._failure_message(exc.reason, self._ports[0], tail)) from None

    def _failure_message(self, reason: str, broker_port: int, tail: str) -> str:
        shown = tail if tail else "(the broker wrote nothing)"
        return (
            f"Apache Kafka {self._version} did not start on {self._host}:{broker_port}: {reason}\n"
            f"--- last {LOG_TAIL_LINES} lines of the broker log ---\n{shown}"
        )

    def _discard_run_dir(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = None
        self._ports = None
        self._info = None

    def _settings(self, run_dir: Path) -> dict[str, str]:
        assert self._ports is not None
        broker_port, controller_port = self._ports
        host = self._host
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
            "listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(run_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        settings.update(self._extra_config)
        return settings

    def _write_config(self, run_dir: Path) -> None:
        lines = [
            f"{_escape_property(key)}={_escape_property(value)}"
            for key, value in self._settings(run_dir).items()
        ]
        (run_dir / "server.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log4j = resources.files("processors_dev.devbroker").joinpath("resources", "log4j2.xml").read_text()
        (run_dir / "log4j2.xml").write_text(log4j, encoding="utf-8")

    def _java_command(
        self, java: JavaRuntime, libs: Path, run_dir: Path, *, heap: str, level: str
    ) -> list[str]:
        return [
            str(java.executable),
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dlog4j2.configurationFile={run_dir / 'log4j2.xml'}",
            f"-Dprocessors_dev.devbroker.level={level}",
            "-cp",
            f"{libs}{os.sep}*",
        ]

    def _format_storage(self, java: JavaRuntime, libs: Path, run_dir: Path) -> None:
        command = [
            *self._java_command(java, libs, run_dir, heap="256m", level="WARN"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(run_dir / "server.properties"),
            "--standalone",
        ]
        try:
            code = run_to_log(command, log_path=run_dir / _LOG_FILE, cwd=run_dir, timeout_s=_FORMAT_TIMEOUT_S)
        except OSError as exc:
            raise _StartFailed(f"cannot run {java.executable}: {exc}") from exc
        if code != 0:
            raise _StartFailed(f"formatting the storage failed with exit code {code}")

    def _launch(self, java: JavaRuntime, libs: Path) -> BrokerInfo:
        assert self._run_dir is not None
        assert self._ports is not None
        run_dir = self._run_dir
        address = f"{self._host}:{self._ports[0]}"
        command = [
            *self._java_command(java, libs, run_dir, heap=self._heap_max, level="INFO"),
            "kafka.Kafka",
            str(run_dir / "server.properties"),
        ]
        process = BrokerProcess(command, log_path=run_dir / _LOG_FILE, cwd=run_dir)
        started = time.monotonic()
        try:
            process.spawn()
        except OSError as exc:
            raise _StartFailed(f"cannot run {java.executable}: {exc}") from exc
        self._process = process
        try:
            wait_until_ready(
                address,
                timeout_s=self._start_timeout_s,
                transactions=True,
                process_exited=process.exit_description,
            )
        except NotReady as exc:
            process.stop(self._stop_grace_s)
            self._process = None
            raise _StartFailed(str(exc)) from exc
        except BaseException:
            process.stop(self._stop_grace_s)
            self._process = None
            raise
        self._info = BrokerInfo(bootstrap_servers=address, kind=self.kind, supports_transactions=True)
        logger.info(
            "Apache Kafka %s ready at %s in %.1f s (pid %s, run dir %s)",
            self._version,
            address,
            time.monotonic() - started,
            process.pid,
            run_dir,
        )
        return self._info
