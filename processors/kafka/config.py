"""Every librdkafka client configuration of the product, rendered in one place.

The rest of the package asks :class:`KafkaClients` for a configuration by role and never writes
a librdkafka key itself (a test enforces it).  Each role states the settings its guarantees rest
on; an operator's ``client_overrides`` tune the rest.

Roles
=====
=====================  ========================================================================
``group_consumer``     a member of an app's consumer group: cooperative-sticky assignment,
                       offsets stored and committed only by the engine, read_committed
``reader``             an assigned-only consumer that never joins its group nor commits (tails
                       a topic, reads a range, restores state)
``member``             a consumer that joins a group only to hold partitions (the replay lock)
``producer``           idempotent, acks=all; never gives up on a record on its own unless the
                       caller bounds it (``delivery_timeout_s``)
``transactional``      ``producer`` plus a transactional id (exactly-once loops)
``admin``              metadata, topic checks, end offsets
=====================  ========================================================================

Precedence, lowest first: the role's defaults, the operator's overrides for that role
(``consumer.<key>``, ``producer.<key>``, ``admin.<key>``, ``client.<key>`` for all), what one
client needs (named arguments in units, such as the subscription store's ``linger_ms=0``), and
last the role's *invariants*.  An override that contradicts an invariant (for example
``consumer.enable.auto.commit=true``, which would commit offsets of unfinished work) is refused
at start-up with the setting's name, never silently applied or silently dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from processors.errors import ConfigError

__all__ = ["ClientRole", "KafkaClients"]

ClientRole = Literal["consumer", "producer", "admin"]

_ROLES: Final = ("consumer", "producer", "admin", "client")

#: librdkafka's "wait for ever": a record the runtime has not seen acknowledged is never
#: abandoned by the client; the runtime does not commit past it and health shows the outage.
_FOREVER_MS: Final = 2_147_483_647

_GROUP_CONSUMER: Final[Mapping[str, Any]] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # Failover: a member that dies without leaving (SIGKILL, a lost host) holds its partitions
    # until its session times out; 45 s (the client default) measured 45-48 s of idle
    # partitions (bench/bench_failover.py), 6 s (the broker's lowest allowed) about 7.
    # Heartbeats come from librdkafka's own thread, not the Python loop, so a busy app is not
    # evicted by mistake.  On a network that drops heartbeats for seconds, raise it with
    # consumer.session.timeout.ms (and heartbeat.interval.ms to a third of it).
    "session.timeout.ms": 6_000,
    "heartbeat.interval.ms": 2_000,
    "max.poll.interval.ms": 300_000,
    "enable.partition.eof": False,
}
_CONSUMER_INVARIANTS: Final[Mapping[str, Any]] = {
    # the engine stores and commits offsets itself, only past finished, acknowledged work
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # outputs of aborted transactions (and retry-tier copies of them) are never read
    "isolation.level": "read_committed",
}
_READER: Final[Mapping[str, Any]] = {
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}
_RESTORE_PARTITION_FETCH_BYTES: Final = 32 * 1024 * 1024
_RESTORE_FETCH_BYTES: Final = 64 * 1024 * 1024
_PRODUCER: Final[Mapping[str, Any]] = {
    "linger.ms": 5,
    "compression.type": "lz4",
    "delivery.timeout.ms": _FOREVER_MS,
    "message.timeout.ms": 0,
}
_PRODUCER_INVARIANTS: Final[Mapping[str, Any]] = {
    # no duplicates or reordering from the client's own retries
    "enable.idempotence": True,
    "acks": "all",
}


@dataclass(frozen=True)
class KafkaClients:
    """The cluster address, the operator's overrides, and every client configuration derived from them.

    ``overrides`` are ``<role>.<librdkafka key>`` entries (``Settings.client_overrides``); an
    unknown role prefix is a start-up error.  ``common`` holds settings every client gets
    (security, for example), as Kafka's own tools read them from a ``--command-config`` file.
    """

    bootstrap_servers: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    common: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        servers = (self.bootstrap_servers or "").strip()
        if not servers:
            raise ConfigError("no Kafka cluster: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")
        object.__setattr__(self, "bootstrap_servers", servers)
        for key in self.overrides:
            role, dot, name = key.partition(".")
            if not dot or not name or role not in _ROLES:
                raise ConfigError(
                    f"client_overrides: {key!r} must be named consumer.<key>, producer.<key>, "
                    "admin.<key> or client.<key>"
                )
        if "bootstrap.servers" in self.common:
            raise ConfigError("the common client settings must not repeat bootstrap.servers")

    @classmethod
    def from_properties(
        cls, properties: Mapping[str, Any], *, bootstrap_servers: str | None = None
    ) -> KafkaClients:
        """From a full librdkafka property set (``bootstrap.servers`` plus common settings);
        ``bootstrap_servers``, when given, replaces the set's own."""
        props = dict(properties)
        servers = str(props.pop("bootstrap.servers", "") or "")
        return cls((bootstrap_servers or "").strip() or servers, common=props)

    @classmethod
    def of(cls, kafka: str | Mapping[str, Any] | KafkaClients) -> KafkaClients:
        """Bootstrap servers, a property set, or clients already made."""
        if isinstance(kafka, KafkaClients):
            return kafka
        if isinstance(kafka, str):
            return cls(kafka)
        return cls.from_properties(kafka)

    # --- roles ------------------------------------------------------------------------------

    def group_consumer(
        self,
        group_id: str,
        *,
        key_ordered: bool = False,
        static_member: str | None = None,
        max_poll_interval_s: float | None = None,
        max_fetch_bytes: int | None = None,
        session_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """A member of ``group_id`` whose offsets only the processors commit.

        ``key_ordered``: the range assignor, so source partition n and retry-tier partition n
        land on the same member (the key-order gate needs both).  ``static_member``: a stable
        ``group.instance.id``, so a restarted instance takes its partitions back without a
        rebalance.  ``max_poll_interval_s``, ``max_fetch_bytes`` and ``session_timeout_s`` (6 s
        otherwise) are defaults an operator may still override.
        """
        defaults: dict[str, Any] = dict(_GROUP_CONSUMER)
        if max_poll_interval_s is not None:
            defaults["max.poll.interval.ms"] = _ms(max_poll_interval_s)
        if max_fetch_bytes is not None:
            defaults["fetch.max.bytes"] = max_fetch_bytes
        if session_timeout_s is not None:
            defaults["session.timeout.ms"] = _ms(session_timeout_s)
            defaults["heartbeat.interval.ms"] = max(1_000, _ms(session_timeout_s) // 3)
        tuning: dict[str, Any] = {}
        if key_ordered:
            tuning["partition.assignment.strategy"] = "range"
        if static_member is not None:
            tuning["group.instance.id"] = static_member
        user = self.role_overrides("consumer")
        if "session.timeout.ms" in user and "heartbeat.interval.ms" not in user:
            # a session set by the operator alone keeps heartbeats at a third of it (a heartbeat
            # interval derived from the default session could exceed the operator's session)
            defaults["heartbeat.interval.ms"] = max(500, int(user["session.timeout.ms"]) // 3)
        return self._render("consumer", defaults, tuning, {**_CONSUMER_INVARIANTS, "group.id": group_id})

    def reader(
        self,
        name: str,
        *,
        group_id: str | None = None,
        eof: bool = False,
        fetch_wait_ms: int | None = None,
    ) -> dict[str, Any]:
        """An assigned-only consumer: it never subscribes or joins a group, and commits only
        when its owner calls ``commit()`` explicitly (the DLQ replay's progress).

        ``group_id`` only where that group's committed offsets are read; otherwise a throw-away
        id that never reaches the group coordinator.  ``eof``: tell the end of each partition.
        ``fetch_wait_ms``: how long an idle fetch may wait on the broker (someone waits on it).
        """
        suffix = uuid.uuid4().hex[:12]
        tuning: dict[str, Any] = {}
        if fetch_wait_ms is not None:
            tuning["fetch.wait.max.ms"] = fetch_wait_ms
        invariants = {
            **_CONSUMER_INVARIANTS,
            "group.id": group_id or f"{name}-{suffix}",
            "client.id": f"{name}-{suffix[:8]}",
            "enable.partition.eof": eof,
        }
        return self._render("consumer", _READER, tuning, invariants)

    def member(self, group_id: str, *, client_id: str, session_timeout_ms: int) -> dict[str, Any]:
        """A consumer that joins ``group_id`` only to hold partitions (a lock); it never commits.
        A member that dies frees them after ``session_timeout_ms``."""
        tuning = {
            "client.id": client_id,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(500, session_timeout_ms // 10),
        }
        invariants = {"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False}
        return self._render("consumer", {"auto.offset.reset": "latest"}, tuning, invariants)

    def producer(
        self,
        *,
        delivery_timeout_s: float | None = None,
        linger_ms: int | None = None,
        max_message_bytes: int | None = None,
        java_partitioner: bool = False,
        default_linger_ms: int | None = None,
    ) -> dict[str, Any]:
        """Idempotent, acks=all.

        ``delivery_timeout_s``: a record not acknowledged in that time fails (someone waits on
        the answer); ``None``: the client never gives up on it.  ``linger_ms``: batching delay
        (default 5).  ``default_linger_ms``: the same as a default the operator's
        ``producer.linger.ms`` override may change (an app's engine setting).
        ``max_message_bytes``: the largest record this producer must send.
        ``java_partitioner``: murmur2, so keys land where any other Kafka client puts them.
        """
        tuning = _producer_tuning(linger_ms, max_message_bytes, java_partitioner)
        if delivery_timeout_s is not None:
            tuning["delivery.timeout.ms"] = _ms(delivery_timeout_s)
            tuning["message.timeout.ms"] = _ms(delivery_timeout_s)
        defaults = _PRODUCER if default_linger_ms is None else {**_PRODUCER, "linger.ms": default_linger_ms}
        return self._render("producer", defaults, tuning, _PRODUCER_INVARIANTS)

    def transactional(
        self,
        transactional_id: str,
        *,
        max_message_bytes: int | None = None,
        java_partitioner: bool = False,
    ) -> dict[str, Any]:
        """A transactional producer (fences an earlier incarnation with the same id)."""
        defaults = {**_PRODUCER, "transaction.timeout.ms": 30_000, "linger.ms": 5}
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms: keep its default bound
        defaults.pop("delivery.timeout.ms")
        defaults.pop("message.timeout.ms")
        invariants = {**_PRODUCER_INVARIANTS, "transactional.id": transactional_id}
        tuning = _producer_tuning(None, max_message_bytes, java_partitioner)
        return self._render("producer", defaults, tuning, invariants)

    def admin(self) -> dict[str, Any]:
        return self._render("admin", {}, {}, {})

    # --- exactly-once loops ---------------------------------------------------------------------

    @staticmethod
    def exactly_once_consumer(consumer_conf: Mapping[str, Any]) -> dict[str, Any]:
        """``consumer_conf`` with what a consume-transform-produce loop cannot do without."""
        return {**consumer_conf, **_CONSUMER_INVARIANTS}

    @staticmethod
    def restorer_of(consumer_conf: Mapping[str, Any]) -> dict[str, Any]:
        """An assigned-only consumer with ``consumer_conf``'s connection, for restoring changelogs
        (it must not join the loop's group, nor take its static member id)."""
        group = str(consumer_conf["group.id"])
        conf = {
            key: value
            for key, value in consumer_conf.items()
            if key not in ("group.id", "partition.assignment.strategy", "group.instance.id")
        }
        # A restore reads one partition from its start as fast as it can: with the default
        # 1 MiB per partition per fetch, 1,000,000 entries took 8.7-8.9 s, nearly all of it
        # waiting for fetch round trips (2.5 s of CPU); 32 MiB took 3.4-3.8 s
        # (bench/bench_bordereaux.py).  Values an operator set for the consumer are kept.
        conf.setdefault("max.partition.fetch.bytes", _RESTORE_PARTITION_FETCH_BYTES)
        conf["fetch.max.bytes"] = max(int(conf.get("fetch.max.bytes", 0)), _RESTORE_FETCH_BYTES)
        return {**conf, **_CONSUMER_INVARIANTS, "group.id": f"{group}.restore-unused"}

    @staticmethod
    def group_of(consumer_conf: Mapping[str, Any]) -> str:
        return str(consumer_conf["group.id"])

    @staticmethod
    def is_transactional(producer_conf: Mapping[str, Any]) -> bool:
        return bool(producer_conf.get("transactional.id"))

    @staticmethod
    def transactional_id_of(producer_conf: Mapping[str, Any]) -> str | None:
        value = producer_conf.get("transactional.id")
        return None if value is None else str(value)

    # --- rendering ---------------------------------------------------------------------------

    def role_overrides(self, role: ClientRole) -> dict[str, str]:
        """The operator's overrides that apply to ``role`` (``client.*`` first, then the role's)."""
        found: dict[str, str] = {}
        for prefix in ("client", role):
            for key, value in self.overrides.items():
                if key.startswith(prefix + "."):
                    found[key.split(".", 1)[1]] = value
        return found

    def _render(
        self,
        role: ClientRole,
        defaults: Mapping[str, Any],
        tuning: Mapping[str, Any],
        invariants: Mapping[str, Any],
    ) -> dict[str, Any]:
        user = self.role_overrides(role)
        for key, value in user.items():
            given = f"{role}.{key}" if f"{role}.{key}" in self.overrides else f"client.{key}"
            if key == "bootstrap.servers":
                raise ConfigError(f"client_overrides: {given}: set KAFKA_BOOTSTRAP_SERVERS instead")
            if key in invariants and not _same(value, invariants[key]):
                raise ConfigError(
                    f"client_overrides: {given}={value!r} is not allowed: the processors' "
                    f"guarantees need {key}={_show(invariants[key])}"
                )
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **self.common,
            **defaults,
            **user,
            **tuning,
            **invariants,
        }


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _producer_tuning(
    linger_ms: int | None, max_message_bytes: int | None, java_partitioner: bool
) -> dict[str, Any]:
    tuning: dict[str, Any] = {}
    if linger_ms is not None:
        tuning["linger.ms"] = linger_ms
    if max_message_bytes is not None:
        tuning["message.max.bytes"] = max_message_bytes
    if java_partitioner:
        tuning["partitioner"] = "murmur2_random"
    return tuning


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _same(given: Any, required: Any) -> bool:
    return _show(given).strip().lower() == _show(required).lower()
