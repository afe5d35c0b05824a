"""One replay per DLQ at a time, with Kafka as the only coordinator.

The lock is membership of the consumer group ``processors-dlq-replay-lock.<dlq>``:

1. **look**: describe the group; if it has members, another replay holds the lock: refuse
   (without joining, so the holder is not disturbed by a rebalance);
2. **join**: subscribe to the DLQ in that group (assigned partitions are paused at once:
   the lock member never fetches) and wait for the assignment;
3. **check**: describe the group again; it must have exactly one member, this one.  Two
   replays that join at the same moment both see two members and both refuse: the lock
   errs on the side of refusing, never of letting two run.

While held, a background thread polls the lock consumer so that it answers rebalances and
heartbeats whatever the replay is doing.  ``release()`` closes the consumer, which leaves
the group at once.  A holder that dies without closing (``kill -9``, lost host) keeps the
group until its session times out (``session_timeout_ms``, 10 s by default), after which
the lock is free again.

The progress offsets live in another group (``processors-dlq-replay.<dlq>``, see
:mod:`processors.dlq.replay`): Kafka accepts offset commits from outside a group only
while the group has no members, so progress and lock cannot share one.

Limit: a holder frozen for longer than the session timeout (a stopped process, a long GC
pause of the host) loses its membership; another replay may then start.  The holder notices
(:meth:`ReplayLock.ensure_held`, called between batches) and stops with
:class:`ReplayLockLost`, having possibly sent one more batch.
"""

from __future__ import annotations

import getpass
import logging
import re
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import confluent_kafka
from confluent_kafka.admin import AdminClient

from processors.dlq._kafka import KafkaConfig, clients, retrying
from processors.errors import BrokerError, ConfigError, ProcessorsError

__all__ = ["LOCK_GROUP_PREFIX", "ReplayLock", "ReplayLockHeld", "ReplayLockLost", "lock_group"]

log = logging.getLogger(__name__)

LOCK_GROUP_PREFIX = "processors-dlq-replay-lock."
_KEEPER_POLL_S = 0.2
_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


def lock_group(dlq_topic: str) -> str:
    """The consumer group whose membership is the replay lock of ``dlq_topic``."""
    return LOCK_GROUP_PREFIX + dlq_topic


class ReplayLockHeld(ProcessorsError):
    """Another replay of the same DLQ holds the lock."""


class ReplayLockLost(ProcessorsError):
    """The lock was lost while replaying (session timeout); the replay stopped."""


def _holder_id(operator: str | None) -> str:
    who = operator or getpass.getuser()
    return _CLIENT_ID_UNSAFE.sub("-", f"processors-dlq-replay.{who}@{socket.gethostname()}")[:200]


class ReplayLock:
    """The replay lock of one DLQ; see the module doc.  ``acquire()``/``release()`` or ``with``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        dlq_topic: str,
        *,
        operator: str | None = None,
        session_timeout_ms: int = 10_000,
        timeout_s: float = 30.0,
    ) -> None:
        self.dlq_topic = dlq_topic
        self.group = lock_group(dlq_topic)
        self.timeout_s = timeout_s
        self._kafka = clients(kafka)
        self._admin_config = self._kafka.admin()
        self._client_id = _holder_id(operator)
        self._session_timeout_ms = session_timeout_ms
        self._consumer: Any = None
        self._admin: Any = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._assigned = threading.Event()
        self._lost = threading.Event()
        self._lost_reason = ""

    def __repr__(self) -> str:
        state = "held" if self.held else "free"
        return f"ReplayLock({self.dlq_topic!r}, {state})"

    @property
    def held(self) -> bool:
        return self._thread is not None and not self._lost.is_set()

    # -- acquire / release -------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock or raise :class:`ReplayLockHeld` (or :class:`BrokerError`)."""
        if self._consumer is not None:
            raise RuntimeError("the lock is already acquired")
        try:
            self._admin = AdminClient(self._admin_config)
        except confluent_kafka.KafkaException as exc:
            raise ConfigError(f"invalid Kafka client configuration: {exc}") from exc
        holders = self._members()
        if holders:
            raise ReplayLockHeld(self._held_message(holders))
        self._join()
        try:
            members = self._members()
            own = self._joined_consumer().memberid()
            others = [m for m in members if m.member_id != own]
            if others or not members:
                raise ReplayLockHeld(self._held_message(others or members))
        except BaseException:
            self.release()
            raise
        self._running.set()
        self._thread = threading.Thread(target=self._keep, name=f"dlq-lock-{self.dlq_topic}", daemon=True)
        self._thread.start()
        log.debug("replay lock of %s acquired (group %s)", self.dlq_topic, self.group)

    def release(self) -> None:
        """Leave the group (idempotent)."""
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (confluent_kafka.KafkaException, RuntimeError):
                log.warning("closing the replay lock consumer of %s failed", self.dlq_topic, exc_info=True)
        self._admin = None

    def ensure_held(self) -> None:
        """Raise :class:`ReplayLockLost` if the lock was lost since :meth:`acquire`."""
        if self._lost.is_set():
            raise ReplayLockLost(
                f"the replay lock of {self.dlq_topic} was lost ({self._lost_reason}); the replay "
                "stopped. Progress up to the last committed batch is kept: check that no other "
                "replay is running, then run the same command again to continue"
            )

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------

    def _members(self) -> list[Any]:
        try:
            description = retrying(
                lambda: self._admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)[
                    self.group
                ].result(),
                timeout_s=self.timeout_s,
            )
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if (
                isinstance(error, confluent_kafka.KafkaError)
                and error.code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND
            ):
                return []
            raise BrokerError(f"cannot describe the replay lock group {self.group}: {exc}") from exc
        return list(description.members or ())

    def _held_message(self, members: list[Any]) -> str:
        who = (
            ", ".join(sorted(f"{m.client_id} (from {m.host.lstrip('/')})" for m in members))
            or "another client"
        )
        return (
            f"another replay of {self.dlq_topic} is running: {who}. Wait for it to finish "
            f"(a killed replay frees the lock within {self._session_timeout_ms // 1000} s), "
            f"or check the group with: kafka-consumer-groups.sh --describe --members --group {self.group}"
        )

    def _join(self) -> None:
        conf = self._kafka.member(
            self.group, client_id=self._client_id, session_timeout_ms=self._session_timeout_ms
        )
        try:
            self._consumer = confluent_kafka.Consumer(conf)
            self._consumer.subscribe(
                [self.dlq_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        except confluent_kafka.KafkaException as exc:
            self.release()
            raise BrokerError(f"cannot join the replay lock group {self.group}: {exc}") from exc
        deadline = time.monotonic() + self.timeout_s
        while not self._assigned.is_set():
            if time.monotonic() > deadline:
                self.release()
                raise ReplayLockHeld(
                    f"could not join the replay lock group {self.group} within {self.timeout_s:g} s "
                    "(another replay may be starting); try again"
                )
            self._serve(0.1)
            if self._lost.is_set():
                self.release()
                raise BrokerError(f"cannot join the replay lock group {self.group}: {self._lost_reason}")

    def _joined_consumer(self) -> Any:
        if self._consumer is None:
            raise RuntimeError("the lock group was not joined")
        return self._consumer

    def _serve(self, timeout_s: float) -> None:
        msg = self._joined_consumer().poll(timeout_s)
        if msg is None:
            return
        error = msg.error()
        if error is not None and (error.fatal() or error.code() == confluent_kafka.KafkaError._FATAL):
            self._mark_lost(error.str())
        # records are never fetched (partitions are paused); anything else is ignored

    def _keep(self) -> None:
        while self._running.is_set():
            try:
                self._serve(_KEEPER_POLL_S)
            except (confluent_kafka.KafkaException, RuntimeError) as exc:
                self._mark_lost(str(exc))
                return

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            log.error("replay lock of %s lost: %s", self.dlq_topic, reason)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)
        self._assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        return None  # an ordinary rebalance (someone else is joining): membership continues

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._mark_lost("the group session expired")
