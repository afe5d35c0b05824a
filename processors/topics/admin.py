"""Make a Kafka cluster match the topic catalogue, or say how it differs.

* :func:`plan` lists what :func:`apply` would do; :func:`apply` does it and waits until the
  cluster shows the result, so callers can produce to new topics at once.  A second
  ``apply`` returns no changes.
* :func:`check` lists the drift between the cluster and the catalogue.

What ``apply`` changes: it creates missing topics, adds partitions, and sets every config
the catalogue manages (``TopicSpec.config``) with an incremental alter, leaving all other
configs alone.  What it never does: delete topics, remove partitions (Kafka cannot), or
change a replication factor (that needs a partition reassignment).  Those differences
are reported by :func:`check` as drift that ``apply`` cannot fix (``fixable=False``).
Topics the catalogue does not know are not drift; :func:`survey` lists them apart.

``replication_factor`` overrides the catalogue's value for every topic (for example 1 on
a single-broker development cluster).  A replication factor above the number of brokers
is refused rather than lowered behind the operator's back.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.topics.catalogue import Catalogue, TopicSpec

__all__ = ["Change", "Drift", "Survey", "apply", "check", "plan", "survey"]

ChangeAction = Literal["create", "add_partitions", "alter_config"]

log = logging.getLogger(__name__)

_POLL_FIRST_S = 0.05
_POLL_MAX_S = 0.5


@dataclass(frozen=True)
class Change:
    """One thing :func:`apply` does (or would do) to one topic."""

    topic: str
    action: ChangeAction
    detail: str

    def __str__(self) -> str:
        return f"{self.action} {self.topic}: {self.detail}"


@dataclass(frozen=True)
class Drift:
    """One way a topic differs from the catalogue; ``fixable`` when :func:`apply` can fix it."""

    topic: str
    problem: str
    fixable: bool = True

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


@dataclass(frozen=True)
class Survey:
    """The cluster compared with the catalogue."""

    changes: tuple[Change, ...]
    drift: tuple[Drift, ...]
    unmanaged: tuple[str, ...]
    """Topics in the cluster the catalogue does not list (internal ``_`` topics left out)."""
    broker_count: int


def plan(
    kafka: str | Mapping[str, Any] | KafkaClients,
    catalogue: Catalogue,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> list[Change]:
    """What :func:`apply` would change, in the order it would do it."""
    return list(survey(kafka, catalogue, replication_factor=replication_factor, timeout_s=timeout_s).changes)


def check(
    kafka: str | Mapping[str, Any] | KafkaClients,
    catalogue: Catalogue,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> list[Drift]:
    """Every difference between the cluster and the catalogue; empty when they match."""
    return list(survey(kafka, catalogue, replication_factor=replication_factor, timeout_s=timeout_s).drift)


def survey(
    kafka: str | Mapping[str, Any] | KafkaClients,
    catalogue: Catalogue,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> Survey:
    """Changes, drift and unmanaged topics in one look at the cluster."""
    cluster = _Cluster(kafka, timeout_s)
    target = catalogue.with_replication_factor(replication_factor)
    return cluster.survey(target, overridden=replication_factor is not None)


def apply(
    kafka: str | Mapping[str, Any] | KafkaClients,
    catalogue: Catalogue,
    *,
    replication_factor: int | None = None,
    dry_run: bool = False,
    timeout_s: float = 30.0,
) -> list[Change]:
    """Bring the cluster to the catalogue; return the changes made (or planned, if ``dry_run``).

    Raises :class:`BrokerError` naming each topic whose change failed (changes to other
    topics are still made), or when the cluster does not show the result within
    ``timeout_s``; :class:`ConfigError` when the replication factor is impossible.
    """
    cluster = _Cluster(kafka, timeout_s)
    target = catalogue.with_replication_factor(replication_factor)
    found = cluster.survey(target, overridden=replication_factor is not None)
    if dry_run or not found.changes:
        return list(found.changes)
    cluster.execute(target, found.changes)
    cluster.await_converged([target.topic(name) for name in dict.fromkeys(c.topic for c in found.changes)])
    return list(found.changes)


# --------------------------------------------------------------------------- internals


@dataclass
class _Observed:
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def _kafka_reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        error: KafkaError = exc.args[0]
        return f"{error.str()} ({error.name()})"
    return str(exc) or type(exc).__name__


def _kafka_code(exc: BaseException) -> int | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        code: int = exc.args[0].code()
        return code
    return None


def _same(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return False
    if key == "cleanup.policy":
        return sorted(p.strip() for p in have.split(",")) == sorted(p.strip() for p in want.split(","))
    if have == want:
        return True
    try:
        return Decimal(have) == Decimal(want)
    except InvalidOperation:
        return False


class _ClientLog(logging.Handler):
    """Keeps the client library's recent log lines for error messages; forwards them at DEBUG.

    Attached to a detached logger, so connection retries do not flood the operator's
    terminal while a broker is unreachable; the last line goes into the error instead.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.recent: deque[str] = deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.recent.append(message)
        log.debug("kafka client: %s", message)

    def logger(self) -> logging.Logger:
        detached = logging.Logger("processors.topics.kafka-client")
        detached.addHandler(self)
        return detached


class _Cluster:
    """One admin client, one deadline, and the operations on them."""

    def __init__(self, kafka: str | Mapping[str, Any] | KafkaClients, timeout_s: float) -> None:
        clients = KafkaClients.of(kafka)
        conf = clients.admin()
        self.bootstrap = clients.bootstrap_servers
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.client_log = _ClientLog()
        conf.setdefault("logger", self.client_log.logger())  # accepted by the Python client
        try:
            self.admin = AdminClient(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Kafka admin config: {_kafka_reason(exc)}") from exc

    def remaining_s(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    def metadata(self) -> Any:
        try:
            return self.admin.list_topics(timeout=self.remaining_s())
        except KafkaException as exc:
            raise BrokerError(
                f"cannot read cluster metadata from {self.bootstrap}: {_kafka_reason(exc)}"
                + self.last_client_log()
            ) from exc

    def last_client_log(self) -> str:
        """``"; last client log: ..."`` when the client logged something, else ``""``."""
        self.admin.poll(0)
        if not self.client_log.recent:
            return ""
        return f"; last client log: {self.client_log.recent[-1]}"

    # ---- looking

    def observe(self, specs: Iterable[TopicSpec], metadata: Any) -> dict[str, _Observed]:
        """The partitions, replication and managed configs of those specs that exist."""
        observed: dict[str, _Observed] = {}
        for spec in specs:
            topic = metadata.topics.get(spec.name)
            if topic is None or not topic.partitions:
                continue
            replicas = max(len(p.replicas) for p in topic.partitions.values())
            observed[spec.name] = _Observed(len(topic.partitions), replicas)
        if observed:
            wanted = {spec.name: spec for spec in specs if spec.name in observed}
            for name, config in self.describe_configs(list(wanted)).items():
                observed[name].config = {k: config[k] for k in wanted[name].config if k in config}
        return observed

    def describe_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        try:
            futures = self.admin.describe_configs(resources, request_timeout=self.remaining_s())
        except KafkaException as exc:
            raise BrokerError(f"cannot describe topic configs: {_kafka_reason(exc)}") from exc
        results: dict[str, dict[str, str]] = {}

        def keep(resource: Any, entries: Any) -> None:
            results[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}

        self.wait(futures, lambda r: str(r.name), "describe configs", on_result=keep)
        return results

    def survey(self, target: Catalogue, *, overridden: bool) -> Survey:
        metadata = self.metadata()
        brokers = len(metadata.brokers)
        widest = max((t.replication_factor for t in target.topics), default=1)
        if widest > brokers:
            source = "the requested" if overridden else "the catalogue's"
            if brokers == 1:
                hint = "pass --replication-factor 1 for a single-broker cluster"
            elif brokers > 1:
                hint = f"pass --replication-factor {brokers} or less, or start the missing brokers"
            else:
                hint = "check that the brokers are up"
            raise ConfigError(
                f"{source} replication factor {widest} exceeds the {brokers} live broker(s) at "
                f"{self.bootstrap}; {hint}"
            )
        observed = self.observe(target.topics, metadata)
        changes: list[Change] = []
        drift: list[Drift] = []
        for spec in target.topics:
            spec_changes, spec_drift = _diff(spec, observed.get(spec.name))
            changes.extend(spec_changes)
            drift.extend(spec_drift)
        order = {"create": 0, "add_partitions": 1, "alter_config": 2}
        changes.sort(key=lambda c: order[c.action])
        unmanaged = sorted(n for n in metadata.topics if n not in target and not n.startswith("_"))
        return Survey(tuple(changes), tuple(drift), tuple(unmanaged), brokers)

    # ---- changing

    def execute(self, target: Catalogue, changes: Iterable[Change]) -> None:
        creates: list[NewTopic] = []
        partitions: list[NewPartitions] = []
        alters: list[ConfigResource] = []
        for change in changes:
            spec = target.topic(change.topic)
            if change.action == "create":
                creates.append(
                    NewTopic(
                        spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=spec.replication_factor,
                        config=dict(spec.config),
                    )
                )
            elif change.action == "add_partitions":
                partitions.append(NewPartitions(spec.name, spec.partitions))
            else:
                entries = [
                    ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                    for key, value in spec.config.items()
                ]
                alters.append(ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=entries))
        failures: list[str] = []
        if creates:
            failures += self.submit(
                lambda: self.admin.create_topics(
                    creates, operation_timeout=self.remaining_s(), request_timeout=self.remaining_s()
                ),
                str,
                "create",
                ignore_codes=(KafkaError.TOPIC_ALREADY_EXISTS,),
            )
        if partitions:
            failures += self.submit(
                lambda: self.admin.create_partitions(
                    partitions, operation_timeout=self.remaining_s(), request_timeout=self.remaining_s()
                ),
                str,
                "add partitions",
            )
        if alters:
            failures += self.submit(
                lambda: self.admin.incremental_alter_configs(alters, request_timeout=self.remaining_s()),
                lambda r: str(r.name),
                "alter configs",
            )
        if failures:
            raise BrokerError("; ".join(failures))

    def submit(
        self,
        call: Callable[[], Mapping[Any, Future[Any]]],
        name_of: Callable[[Any], str],
        action: str,
        *,
        ignore_codes: tuple[int, ...] = (),
    ) -> list[str]:
        try:
            futures = call()
        except KafkaException as exc:
            return [f"{action} failed: {_kafka_reason(exc)}"]
        try:
            self.wait(futures, name_of, action, ignore_codes=ignore_codes)
        except BrokerError as exc:
            return [str(exc)]
        return []

    def wait(
        self,
        futures: Mapping[Any, Future[Any]],
        name_of: Callable[[Any], str],
        action: str,
        *,
        ignore_codes: tuple[int, ...] = (),
        on_result: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Wait for every future; raise one :class:`BrokerError` naming each failed topic."""
        failures: list[str] = []
        cause: BaseException | None = None
        for key, future in futures.items():
            try:
                result = future.result(timeout=self.remaining_s())
            except TimeoutError as exc:
                failures.append(f"topic '{name_of(key)}': {action} timed out after {self.timeout_s:g}s")
                cause = exc
                continue
            except KafkaException as exc:
                if _kafka_code(exc) in ignore_codes:
                    continue
                failures.append(f"topic '{name_of(key)}': {action} failed: {_kafka_reason(exc)}")
                cause = exc
                continue
            if on_result is not None:
                on_result(key, result)
        if failures:
            raise BrokerError("; ".join(failures)) from cause

    def await_converged(self, specs: list[TopicSpec]) -> None:
        """Poll until every spec is visible with leaders and its configs, or the deadline."""
        pause_s = _POLL_FIRST_S
        while True:
            pending = self.pending(specs)
            if not pending:
                return
            if time.monotonic() >= self.deadline:
                raise BrokerError(
                    f"the cluster did not show the changes within {self.timeout_s:g}s: "
                    + "; ".join(f"topic '{n}': {why}" for n, why in pending.items())
                )
            time.sleep(min(pause_s, self.remaining_s()))
            pause_s = min(pause_s * 2, _POLL_MAX_S)

    def pending(self, specs: list[TopicSpec]) -> dict[str, str]:
        metadata = self.metadata()
        waiting: dict[str, str] = {}
        for spec in specs:
            topic = metadata.topics.get(spec.name)
            if topic is None or len(topic.partitions) < spec.partitions:
                waiting[spec.name] = "partitions not in metadata yet"
            elif any(p.leader < 0 for p in topic.partitions.values()):
                waiting[spec.name] = "partitions without a leader"
        ready = [s for s in specs if s.name not in waiting]
        if ready:
            try:
                observed = self.observe(ready, metadata)
            except BrokerError as exc:
                return {s.name: str(exc) for s in ready} | waiting
            for spec in ready:
                changes, _ = _diff(spec, observed.get(spec.name))
                if changes:
                    waiting[spec.name] = "; ".join(c.detail for c in changes)
        return waiting


def _diff(spec: TopicSpec, have: _Observed | None) -> tuple[list[Change], list[Drift]]:
    if have is None:
        detail = f"{spec.partitions} partitions, replication factor {spec.replication_factor}, " + ", ".join(
            f"{k}={v}" for k, v in spec.config.items()
        )
        return [Change(spec.name, "create", detail)], [Drift(spec.name, "missing (apply creates it)")]
    changes: list[Change] = []
    drift: list[Drift] = []
    if have.partitions < spec.partitions:
        detail = f"{have.partitions} → {spec.partitions} partitions"
        changes.append(Change(spec.name, "add_partitions", detail))
        drift.append(Drift(spec.name, f"has {have.partitions} partitions, catalogue says {spec.partitions}"))
    elif have.partitions > spec.partitions:
        drift.append(
            Drift(
                spec.name,
                f"has {have.partitions} partitions, catalogue says {spec.partitions}; Kafka cannot "
                f"remove partitions: set partitions to {have.partitions} in the catalogue or recreate "
                "the topic",
                fixable=False,
            )
        )
    if have.replication_factor != spec.replication_factor:
        drift.append(
            Drift(
                spec.name,
                f"replication factor is {have.replication_factor}, catalogue says "
                f"{spec.replication_factor}; apply does not change replication (reassign the "
                "partitions with kafka-reassign-partitions)",
                fixable=False,
            )
        )
    differing = {
        key: (have.config.get(key), want)
        for key, want in spec.config.items()
        if not _same(key, have.config.get(key), want)
    }
    if differing:
        detail = "; ".join(f"{key}: {old} → {new}" for key, (old, new) in differing.items())
        changes.append(Change(spec.name, "alter_config", detail))
        drift.append(Drift(spec.name, f"config differs: {detail}"))
    return changes, drift
