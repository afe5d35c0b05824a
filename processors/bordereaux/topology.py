"""The bordereaux app's three transactional stages, wired for :class:`TransactionalLoop`.

``route``     source partitions of the policy and claim topics → ``by-policy`` (key policy id).
              Decodes and validates each event (invalid → DLQ), stamps it with its source
              partition's watermark and, once per step, tells every by-policy partition the
              new watermark.
``ledger``    one :class:`~processors.bordereaux.ledger.Ledger` per by-policy partition.
``assemble``  one :class:`~processors.bordereaux.assembler.Assembler` per partials partition.

See docs/bordereaux.md for what each number means and docs/architecture.md for the loop.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient

from processors.bordereaux.assembler import Assembler, ReportOut
from processors.bordereaux.ledger import Ledger, PartialOut, RejectOut
from processors.bordereaux.treaties import TreatyBook
from processors.contract.codec import Codec
from processors.errors import ConfigError, ContractError, ProcessorsError, ValidationFailed
from processors.kafka import KafkaClients
from processors.streams import ChangelogStore, Emitter, StageSpec, TransactionalLoop
from processors.streams.driver import MemoryMessage
from processors.topics.catalogue import Catalogue

__all__ = [
    "LEDGER_EVENT_TYPES",
    "RECORD_HEADER",
    "BordereauxLoop",
    "BordereauxTopics",
    "RejectedInput",
    "build_loop",
    "build_stages",
    "close_command",
    "send_close",
]

log = logging.getLogger(__name__)

RECORD_HEADER = "x-record"
"""On by-policy records: ``event``, ``watermark`` or ``close``."""
SOURCE_HEADER = "x-source"
"""On routed events: the source partition (``topic:partition``)."""
WATERMARK_HEADER = "x-source-watermark"
"""On routed events: the source partition's watermark before the event (absent: none yet)."""
_ROUTE_HEADERS = frozenset({RECORD_HEADER, SOURCE_HEADER, WATERMARK_HEADER})
FUTURE_TOLERANCE = timedelta(days=1)
"""Events stamped later than this after the wall clock are refused (dead-lettered)."""

LEDGER_EVENT_TYPES = frozenset(
    {
        "policy.issued",
        "policy.renewed",
        "policy.endorsed",
        "policy.cancelled",
        "claim.reported",
        "claim.reserved",
        "claim.paid",
        "claim.settled",
        "claim.closed",
    }
)

# Payload fields the ledger never needs: left out of the internal topic (free text, customer ids).
_DROPPED_FIELDS = {"customer_id", "cancellation_reason"}
_JSON = {"separators": (",", ":"), "ensure_ascii": False}


class RejectedInput(ProcessorsError):
    """An event the ledger could not count (the reason names ids only)."""


@dataclass(frozen=True)
class BordereauxTopics:
    policy_events: str = "insurance.policy.events"
    claim_events: str = "insurance.claim.events"
    by_policy: str = "integrations.bordereaux.by-policy"
    partials: str = "integrations.bordereaux.partials"
    bordereaux: str = "reinsurance.bordereaux"
    regulatory_files: str = "integrations.regulatory.files"
    route_changelog: str = "integrations.bordereaux.route-changelog"
    ledger_changelog: str = "integrations.bordereaux.ledger-changelog"
    assembler_changelog: str = "integrations.bordereaux.assembler-changelog"
    dlq: str = "integrations.bordereaux.dlq"

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue) -> BordereauxTopics:
        """The catalogue's names for every topic (whatever prefix it uses)."""
        names: dict[str, str] = {}
        for name, default in cls().__dict__.items():
            for topic in catalogue.topics:
                if topic.name == default or topic.name.endswith("." + default):
                    names[name] = topic.name
                    break
            else:
                raise ConfigError(f"the topic catalogue has no {default} topic")
        return cls(**names)

    @classmethod
    def with_prefix(cls, prefix: str) -> BordereauxTopics:
        """Every name with ``prefix`` in front (tests isolate runs this way)."""
        return cls(**{name: prefix + value for name, value in cls().__dict__.items()})


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _quoted(moment: datetime) -> bytes:
    return b'"' + moment.isoformat().encode() + b'"'


class RouteTask:
    """One source partition: validate, re-key by policy id, stamp and publish watermarks."""

    def __init__(
        self,
        topic: str,
        partition: int,
        store: ChangelogStore | None,
        out: Emitter,
        *,
        codec: Codec,
        topics: BordereauxTopics,
        by_policy_partitions: int,
    ) -> None:
        assert store is not None
        self.source = f"{topic}:{partition}"
        self._store = store
        self._out = out
        self._codec = codec
        self._topics = topics
        self._partitions = by_policy_partitions
        raw = store.get(self.source)
        self.watermark: datetime | None = datetime.fromisoformat(raw.decode()) if raw else None
        self._watermark_bytes = b"" if self.watermark is None else _iso(self.watermark).encode()
        self._source_bytes = self.source.encode()
        self._moved = False
        self._latest_allowed = datetime.now(UTC) + FUTURE_TOLERANCE

    def process(self, msg: Any) -> None:
        # Only what routing needs is read here (no validation); the ledger decodes in full.
        try:
            peek = self._codec.peek(msg.value(), msg.headers())
        except ContractError as exc:
            self._out.dead_letter(msg, exc)
            return
        if peek.event_type not in LEDGER_EVENT_TYPES:
            self._out.dead_letter(
                msg, RejectedInput(f"event type {peek.event_type[:80]!r} is not expected on {msg.topic()}")
            )
            return
        policy_id = peek.data.get("policy_id")
        if not isinstance(policy_id, str) or not policy_id:
            self._out.dead_letter(msg, ValidationFailed("data.policy_id is missing or not a string"))
            return
        if peek.occurred_at > self._latest_allowed:
            # One event from the far future would close every period up to it.
            self._out.dead_letter(
                msg, ValidationFailed(f"occurred_at is more than {FUTURE_TOLERANCE} in the future")
            )
            return
        headers = [h for h in msg.headers() or () if h[0] not in _ROUTE_HEADERS]
        headers.append((RECORD_HEADER, b"event"))
        headers.append((SOURCE_HEADER, self._source_bytes))
        if self.watermark is not None:
            headers.append((WATERMARK_HEADER, self._watermark_bytes))
        self._out.send(self._topics.by_policy, policy_id.encode(), msg.value(), headers=headers)
        if self.watermark is None or peek.occurred_at > self.watermark:
            self.watermark = peek.occurred_at
            self._watermark_bytes = _iso(peek.occurred_at).encode()
            self._moved = True

    def on_idle(self) -> None:
        """The source partition went quiet and is read to its end: tell every ledger partition,
        so it stops holding event time back until it sends again."""
        value = json.dumps({"src": self.source}, **_JSON).encode()  # type: ignore[arg-type]
        for partition in range(self._partitions):
            self._out.send(
                self._topics.by_policy,
                None,
                value,
                headers=[(RECORD_HEADER, b"idle")],
                partition=partition,
            )

    def end_batch(self) -> None:
        self._latest_allowed = datetime.now(UTC) + FUTURE_TOLERANCE
        if not self._moved or self.watermark is None:
            return
        self._moved = False
        self._store.put(self.source, _iso(self.watermark).encode())
        value = json.dumps({"src": self.source, "wm": _iso(self.watermark)}, **_JSON).encode()  # type: ignore[arg-type]
        for partition in range(self._partitions):
            self._out.send(
                self._topics.by_policy,
                None,
                value,
                headers=[(RECORD_HEADER, b"watermark")],
                partition=partition,
            )


class LedgerTask:
    """One by-policy partition's ledger."""

    def __init__(
        self,
        partition: int,
        store: ChangelogStore | None,
        out: Emitter,
        *,
        book: TreatyBook,
        codec: Codec,
        topics: BordereauxTopics,
        partitions: int,
        sources: Collection[str],
    ) -> None:
        assert store is not None
        self._out = out
        self._topics = topics
        self._codec = codec
        self.ledger = Ledger(book, store, partition=partition, partitions=partitions, sources=sources)

    def process(self, msg: Any) -> None:
        kind = b"event"
        for name, value in msg.headers() or ():
            if name == RECORD_HEADER and value is not None:
                kind = value
                break
        raw = msg.value() or b""
        outs: list[PartialOut | RejectOut]
        if kind == b"watermark":
            mark = json.loads(raw)
            outs = self.ledger.on_watermark(mark["src"], datetime.fromisoformat(mark["wm"]))
        elif kind == b"close":
            command = json.loads(raw)
            outs = self.ledger.on_close(command.get("treaty"), command["period"])
        elif kind == b"idle":
            outs = self.ledger.on_idle(json.loads(raw)["src"])
        else:
            outs = self._count(msg, raw)
        for item in outs:
            if isinstance(item, PartialOut):
                self._out.send(self._topics.partials, item.key.encode(), item.value)
            elif item.raw is not None:
                # A claim that waited in state (its own record was consumed long ago): the
                # dead letter carries the stored input, the current record is not at fault.
                stored = MemoryMessage(
                    msg.topic(), msg.partition(), -1, None, item.raw, [(RECORD_HEADER, b"event")]
                )
                self._out.dead_letter(stored, RejectedInput(item.reason))
            else:
                self._out.dead_letter(msg, RejectedInput(item.reason))

    def _count(self, msg: Any, raw: bytes) -> list[PartialOut | RejectOut]:
        """Decode the routed event against the contract (once) and count it."""
        headers = msg.headers() or ()
        source = ""
        watermark: datetime | None = None
        for name, value in headers:
            if name == SOURCE_HEADER and value is not None:
                source = value.decode()
            elif name == WATERMARK_HEADER and value:
                watermark = datetime.fromisoformat(value.decode())
        try:
            event = self._codec.decode(raw, headers)
        except ContractError as exc:
            self._out.dead_letter(msg, exc)
            return []

        def encode() -> bytes:
            # The form a waiting claim is kept in: free text and customer ids left out.
            return b"".join(
                (
                    b'{"id":"',
                    str(event.event_id).encode(),
                    b'","type":"',
                    event.event_type.encode(),
                    b'","at":"',
                    _iso(event.occurred_at).encode(),
                    b'","src":"',
                    source.encode(),
                    b'","w":',
                    b"null" if watermark is None else _quoted(watermark),
                    b',"d":',
                    event.data.model_dump_json(exclude=_DROPPED_FIELDS).encode(),
                    b"}",
                )
            )

        return self.ledger.on_decoded(event, source, watermark, encode)

    def end_batch(self) -> None:
        return None


class AssembleTask:
    """One partials partition: completes periods into reports and day files."""

    def __init__(
        self, store: ChangelogStore | None, out: Emitter, *, book: TreatyBook, topics: BordereauxTopics
    ) -> None:
        assert store is not None
        self._out = out
        self._topics = topics
        self.assembler = Assembler(book, store)

    def process(self, msg: Any) -> None:
        for report in self.assembler.on_partial(msg.value() or b""):
            self._send(report)

    def _send(self, report: ReportOut) -> None:
        topic = self._topics.bordereaux if report.topic == "bordereaux" else self._topics.regulatory_files
        self._out.send(topic, report.key.encode(), report.value)

    def end_batch(self) -> None:
        return None


def _route_filter(topic: str, partition: int) -> Any:
    source = f"{topic}:{partition}"
    return lambda key: key == source


def build_stages(
    *,
    book: TreatyBook,
    codec: Codec,
    topics: BordereauxTopics,
    partition_counts: Mapping[str, int],
) -> list[StageSpec]:
    """The three stages; ``partition_counts`` gives the partitions of each topic involved."""
    by_policy_partitions = partition_counts[topics.by_policy]
    sources = [
        f"{topic}:{p}"
        for topic in (topics.policy_events, topics.claim_events)
        for p in range(partition_counts[topic])
    ]
    return [
        StageSpec(
            name="route",
            topics=(topics.policy_events, topics.claim_events),
            changelog=topics.route_changelog,
            key_filter=_route_filter,
            make_task=lambda topic, partition, store, out: RouteTask(
                topic,
                partition,
                store,
                out,
                codec=codec,
                topics=topics,
                by_policy_partitions=by_policy_partitions,
            ),
        ),
        StageSpec(
            name="ledger",
            topics=(topics.by_policy,),
            changelog=topics.ledger_changelog,
            make_task=lambda topic, partition, store, out: LedgerTask(
                partition,
                store,
                out,
                book=book,
                codec=codec,
                topics=topics,
                partitions=by_policy_partitions,
                sources=sources,
            ),
        ),
        StageSpec(
            name="assemble",
            topics=(topics.partials,),
            changelog=topics.assembler_changelog,
            make_task=lambda topic, partition, store, out: AssembleTask(store, out, book=book, topics=topics),
        ),
    ]


def partition_counts(kafka: KafkaClients, topics: BordereauxTopics) -> dict[str, int]:
    """Partitions of every topic the stages need; a missing one is a start-up error."""
    admin = AdminClient(kafka.admin())
    try:
        metadata = admin.list_topics(timeout=15)
    except confluent_kafka.KafkaException as exc:
        raise ConfigError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc
    needed = [
        topics.policy_events,
        topics.claim_events,
        topics.by_policy,
        topics.partials,
        topics.bordereaux,
        topics.regulatory_files,
        topics.route_changelog,
        topics.ledger_changelog,
        topics.assembler_changelog,
        topics.dlq,
    ]
    missing = [t for t in needed if t not in metadata.topics]
    if missing:
        raise ConfigError(f"missing topic(s): {', '.join(missing)}; run `processors topics apply` first")
    counts = {t: len(metadata.topics[t].partitions) for t in needed}
    for source, changelog in (
        (topics.policy_events, topics.route_changelog),
        (topics.claim_events, topics.route_changelog),
        (topics.by_policy, topics.ledger_changelog),
        (topics.partials, topics.assembler_changelog),
    ):
        if counts[changelog] < counts[source]:
            raise ConfigError(
                f"{changelog} has {counts[changelog]} partitions but {source} has {counts[source]}: "
                "each input partition needs its own changelog partition"
            )
    return counts


class BordereauxLoop(TransactionalLoop):
    """The bordereaux topology's loop, which can also tell how late its periods close."""

    def period_close_lag(self, now: datetime | None = None) -> dict[str, float]:
        """Per calendar (``treaty:<number>``, and ``regulatory`` for the day files): how many
        seconds the oldest period still open on this instance's ledger partitions is past its
        closing time (``end + grace``) by the wall clock; 0 when none is past it.  Empty while
        this instance holds no ledger partition.  Safe to call from another thread.

        Periods close in event time (the lowest watermark of the source partitions), so this
        grows when event time stalls behind the wall clock: no events (or a silent source
        partition not idle yet), a stuck loop, an upstream that publishes late.
        """
        moment = now if now is not None else datetime.now(UTC)
        lag: dict[str, float] = {}
        for task in self.tasks_of("ledger"):
            if not isinstance(task, LedgerTask):
                continue
            for treaty, due in task.ledger.closing_due():
                name = "regulatory" if treaty is None else f"treaty:{treaty}"
                seconds = max(0.0, (moment - due).total_seconds())
                lag[name] = max(lag.get(name, 0.0), seconds)
        return lag


def build_loop(
    *,
    bootstrap_servers: str,
    group_id: str,
    instance_id: str | None,
    book: TreatyBook,
    codec: Codec,
    topics: BordereauxTopics,
    client_overrides: Mapping[str, str] | None = None,
    batch_size: int = 10_000,
    idle_source_after_s: float | None = None,
) -> BordereauxLoop:
    """The bordereaux app as a :class:`TransactionalLoop` (``run(stop)`` in a thread).

    ``idle_source_after_s``: a source partition with nothing to read for that long stops
    holding event time back (``None``: never)."""
    kafka = KafkaClients(bootstrap_servers, client_overrides or {})
    counts = partition_counts(kafka, topics)
    instance = instance_id or socket.gethostname()
    consumer_conf = kafka.group_consumer(
        group_id,
        # Static membership: a restarted instance takes its partitions back without a rebalance.
        static_member=instance,
        max_poll_interval_s=600.0,
        max_fetch_bytes=64 * 1024 * 1024,
        # A static member that stops (or restarts) keeps its partitions for the session: a
        # restart within it costs no rebalance, and nothing of the exactly-once state moves.
        session_timeout_s=45.0,
    )
    producer_conf = kafka.transactional(
        f"{group_id}.{instance}",
        max_message_bytes=16 * 1024 * 1024,
        # Java clients' partitioner: keys land where any other Kafka client would put them.
        java_partitioner=True,
    )
    stages = build_stages(book=book, codec=codec, topics=topics, partition_counts=counts)
    return BordereauxLoop(
        app="bordereaux",
        stages=stages,
        consumer_conf=consumer_conf,
        producer_conf=producer_conf,
        dlq_topic=topics.dlq,
        batch_size=batch_size,
        idle_after_s=idle_source_after_s,
    )


def close_command(treaty: str | None, period: str) -> bytes:
    return json.dumps({"treaty": treaty, "period": period}, **_JSON).encode()  # type: ignore[arg-type]


def send_close(
    kafka: str | KafkaClients,
    topics: BordereauxTopics,
    *,
    treaty: str | None,
    period: str,
) -> int:
    """Ask every ledger partition to close ``period`` of ``treaty`` (``None``: a regulatory day).

    Returns the number of partitions told.
    """
    if treaty is None:
        try:
            date.fromisoformat(period)
        except ValueError as exc:
            raise ConfigError(f"a regulatory day is written YYYY-MM-DD, not {period!r}") from exc
    producer = confluent_kafka.Producer(KafkaClients.of(kafka).producer(delivery_timeout_s=30.0))
    metadata = producer.list_topics(topics.by_policy, timeout=15)
    described = metadata.topics.get(topics.by_policy)
    if described is None or described.error is not None or not described.partitions:
        raise ConfigError(f"topic {topics.by_policy} not found; run `processors topics apply` first")
    errors: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    value = close_command(treaty, period)
    for partition in sorted(described.partitions):
        producer.produce(
            topics.by_policy,
            value=value,
            partition=partition,
            headers=[(RECORD_HEADER, b"close")],
            on_delivery=report,
        )
    left = producer.flush(30)
    if left or errors:
        raise ConfigError(f"the close command was not accepted by Kafka: {errors or 'timed out'}")
    return len(described.partitions)
