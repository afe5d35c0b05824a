"""The broker kinds, what a started broker tells its clients, and the common broker life cycle."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self

from processors.errors import BrokerError

__all__ = [
    "BrokerInfo",
    "BrokerKind",
    "BrokerStartError",
    "BrokerUnavailableError",
    "DevBroker",
    "JarFetchError",
]

logger = logging.getLogger("processors_dev.devbroker")

#: The consumer session timeout the embedded broker needs: with the client default (45 s) the
#: first group join waits about 23 s for the rebalance to settle.
EMBEDDED_SESSION_TIMEOUT_MS = 6000


class BrokerKind(StrEnum):
    """Where a development broker comes from, in the order the harness tries them."""

    EXTERNAL = "external"
    DOCKER = "docker"
    APACHE = "apache"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class BrokerInfo:
    """The address of a started broker and what it can do."""

    bootstrap_servers: str
    kind: BrokerKind
    supports_transactions: bool

    def client_overrides(self) -> dict[str, str]:
        """Client settings every consumer of this broker should add to its configuration."""
        if self.kind is BrokerKind.EMBEDDED:
            return {"session.timeout.ms": str(EMBEDDED_SESSION_TIMEOUT_MS)}
        return {}


class BrokerStartError(BrokerError):
    """A development broker did not start or did not become ready.

    The message carries the end of the broker's log when there is one.
    """


class BrokerUnavailableError(BrokerError):
    """A kind of development broker cannot be used on this machine (no Java, no Docker, ...)."""


class JarFetchError(BrokerStartError):
    """The Apache Kafka jars could not be fetched from Maven Central."""


class DevBroker(ABC):
    """A Kafka broker for development and tests, driven through a synchronous life cycle.

    ``start()`` returns once the broker answers; ``stop()`` releases everything.  A broker stopped
    with ``stop(keep_data=True)`` keeps its address and data, and ``start()`` brings it back on the
    same address: this is what ``restart()``, ``pause_broker()`` and ``resume_broker()`` do.
    """

    kind: ClassVar[BrokerKind]

    def __init__(self) -> None:
        self._info: BrokerInfo | None = None

    @abstractmethod
    def start(self) -> BrokerInfo:
        """Start the broker (or bring a paused one back) and wait until it is ready."""

    @abstractmethod
    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the broker.  With ``keep_data`` the address and the data survive for ``start()``."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """Whether the broker is started and its process (if any) is still alive."""

    @property
    def info(self) -> BrokerInfo:
        """The started (or paused) broker's address; raises if it was never started or was stopped."""
        if self._info is None:
            raise BrokerError(f"the {self.kind} broker is not started")
        return self._info

    def restart(self) -> None:
        """Stop the broker and start it again on the same address, keeping its data."""
        self.stop(keep_data=True)
        self.start()

    def pause_broker(self) -> None:
        """Take the broker down, keeping its address and data for ``resume_broker()``."""
        self.stop(keep_data=True)

    def kill_broker(self) -> None:
        """Take the broker down as a crash would (SIGKILL where the broker is a local process),
        keeping its data and address for ``resume_broker()``."""
        self.stop(keep_data=True)

    def resume_broker(self) -> None:
        """Bring a paused broker back on the same address."""
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        address = self._info.bootstrap_servers if self._info is not None else None
        return f"{type(self).__name__}(bootstrap_servers={address!r}, running={self.running})"
