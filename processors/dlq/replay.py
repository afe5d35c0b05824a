"""Replaying dead letters: safely, resumably, one replay per DLQ at a time, audited.

:func:`replay` runs in this order:

1. **resolve** the app's topics from the catalogue: the target (the app's *first* retry tier,
   or each record's ``x-original-topic``, which must be one of the app's sources), the
   parking topic, and the audit topic; check they exist and have enough partitions;
2. **lock** the DLQ (not for a dry run; see :mod:`processors.dlq.lock`);
3. **plan**: capture each partition's high watermark, start after the progress committed
   by earlier runs (unless ``restart``), and read the range once to count what would move
   (the same breakdown as :func:`~processors.dlq.reader.stats`, plus replay vs park).
   Records that cannot be routed stop a real run before anything moves;
4. **confirm** (optional callback), then **move**: each selected record is produced to the
   same partition number it has in the DLQ (``--to original``: to its original partition,
   where its key's other events are) with the headers of
   :func:`~processors.dlq.rewrite.replay_headers`, at most ``rate_per_s`` per second; a
   record replayed ``replay_limit`` times already goes to the parking topic unchanged;
5. **checkpoint** every ``batch_size`` moved records or ``commit_interval_s``: flush the
   producer (every record acknowledged), then commit the next offset of each partition as
   the offsets of the group ``processors-dlq-replay.<dlq>`` (a group nobody joins: the
   consumer assigns partitions and commits explicitly).  An interrupted run re-sends at most
   the records of one batch when run again;
6. **audit**: one JSON record (``event_type`` ``dlq.replayed``) on the audit topic, key =
   the app name, for every run including dry runs and interrupted runs.

Progress is shared by every run over the same DLQ, and records the filters that decide which
records are selected (error class, time window, key).  A run whose selection differs from
the one that recorded the progress is refused (:class:`ProgressMismatch`): resuming it would
silently pass over records the earlier run ignored.  ``restart=True`` starts from the
beginning of the range instead.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import confluent_kafka

from processors.dlq._kafka import KafkaConfig, partition_counts, producer_config
from processors.dlq.filters import DlqFilter
from processors.dlq.lock import ReplayLock
from processors.dlq.ratelimit import TokenBucket
from processors.dlq.reader import Committed, DlqReader
from processors.dlq.records import DeadLetter, format_time
from processors.dlq.rewrite import DEFAULT_REPLAY_LIMIT, replay_headers, should_park
from processors.dlq.summary import DlqStats
from processors.errors import BrokerError, ConfigError, ProcessorsError
from processors.observability import tracing
from processors.runtime.failures import H
from processors.runtime.message import HeaderList
from processors.topics.catalogue import AppTopics, Catalogue

__all__ = [
    "AUDIT_EVENT_TYPE",
    "DEFAULT_RATE_PER_S",
    "PROGRESS_GROUP_PREFIX",
    "ProgressMismatch",
    "ReplayAborted",
    "ReplayPlan",
    "ReplayProgress",
    "ReplayReport",
    "ReplayTarget",
    "audit_topic_for",
    "default_operator",
    "progress_group",
    "replay",
]

log = logging.getLogger(__name__)

PROGRESS_GROUP_PREFIX = "processors-dlq-replay."
AUDIT_EVENT_TYPE = "dlq.replayed"
AUDIT_TOPIC = "integrations.audit"
DEFAULT_RATE_PER_S = 50.0
_MAX_PROBLEMS_SHOWN = 10
_METADATA_MAX_CHARS = 3_000  # brokers accept 4096 bytes of offset metadata by default


def progress_group(dlq_topic: str) -> str:
    """The consumer group whose committed offsets are the replay progress of ``dlq_topic``."""
    return PROGRESS_GROUP_PREFIX + dlq_topic


class ReplayTarget(StrEnum):
    RETRY = "retry"
    """The app's first retry tier: due at once, processed beside live traffic."""
    ORIGINAL = "original"
    """The topic the record was first consumed from (``x-original-topic``)."""


class ProgressMismatch(ConfigError):
    """Earlier replay progress was recorded with other filters; resuming would skip records."""


class ReplayAborted(ProcessorsError):
    """The confirmation was declined; nothing was moved."""


@dataclass(frozen=True)
class _Move:
    topic: str
    partition: int
    park: bool


@dataclass(frozen=True)
class ReplayProgress:
    """Where a running replay is: ``done`` of ``total`` selected records moved."""

    done: int
    total: int
    replayed: int
    parked: int
    elapsed_s: float

    @property
    def rate_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class ReplayPlan:
    """What a replay will move (computed before anything moves; a dry run stops here)."""

    app: str
    dlq: str
    target: ReplayTarget
    target_topic: str | None
    parked_topic: str
    ranges: dict[int, tuple[int, int]]
    resumed_from: dict[int, int]
    breakdown: DlqStats = field(default_factory=DlqStats)
    to_replay: int = 0
    to_park: int = 0
    scanned: int = 0
    destinations: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def selected(self) -> int:
        return self.breakdown.total


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of :func:`replay` (also what the audit record and ``--json`` say)."""

    replay_id: str
    app: str
    dlq: str
    target: ReplayTarget
    target_topic: str | None
    parked_topic: str
    audit_topic: str
    operator: str
    dry_run: bool
    filters: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    selected: int
    to_replay: int
    to_park: int
    replayed: int
    parked: int
    completed: bool
    resumed: bool
    restart: bool
    breakdown: DlqStats
    destinations: dict[str, int]
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "app": self.app,
            "dlq": self.dlq,
            "target": str(self.target),
            "target_topic": self.target_topic,
            "parked_topic": self.parked_topic,
            "audit_topic": self.audit_topic,
            "operator": self.operator,
            "dry_run": self.dry_run,
            "filters": self.filters,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "selected": self.selected,
            "to_replay": self.to_replay,
            "to_park": self.to_park,
            "replayed": self.replayed,
            "parked": self.parked,
            "completed": self.completed,
            "resumed": self.resumed,
            "restart": self.restart,
            "breakdown": self.breakdown.as_dict(),
            "destinations": self.destinations,
            "problems": list(self.problems),
        }


def default_operator() -> str:
    """Who runs a replay when nobody says: ``$USER``, else the login name."""
    name = os.environ.get("USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError) as exc:
        raise ConfigError("cannot tell who is running the replay: name the operator (--operator)") from exc


def audit_topic_for(catalogue: Catalogue, app: AppTopics) -> str:
    """The catalogue's ``integrations.audit`` topic, under the same name prefix as the app's DLQ."""
    marker = app.dlq.find("integrations.")
    candidates = []
    if marker >= 0:
        candidates.append(app.dlq[:marker] + AUDIT_TOPIC)
    candidates.append(AUDIT_TOPIC)
    for name in candidates:
        if name in catalogue:
            return name
    suffixed = sorted(t.name for t in catalogue.topics if t.name.endswith("." + AUDIT_TOPIC))
    if len(suffixed) == 1:
        return suffixed[0]
    raise ConfigError(
        f"cannot tell the audit topic of app '{app.name}' (looked for {', '.join(candidates)}"
        f"{' and found ' + ', '.join(suffixed) if suffixed else ''}); name it with --audit-topic"
    )


# --------------------------------------------------------------------------- entry point


def replay(
    kafka: KafkaConfig,
    catalogue: Catalogue,
    app: str,
    flt: DlqFilter | None = None,
    *,
    target: ReplayTarget | str = ReplayTarget.RETRY,
    dry_run: bool = False,
    rate_per_s: float = DEFAULT_RATE_PER_S,
    replay_limit: int = DEFAULT_REPLAY_LIMIT,
    operator: str | None = None,
    restart: bool = False,
    audit_topic: str | None = None,
    max_records: int | None = None,
    stop: threading.Event | None = None,
    confirm: Callable[[ReplayPlan], bool] | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    progress_interval_s: float = 5.0,
    batch_size: int = 100,
    commit_interval_s: float = 1.0,
    timeout_s: float = 30.0,
    lock_session_timeout_ms: int = 10_000,
) -> ReplayReport:
    """Replay the dead letters of ``app`` selected by ``flt``; see the module doc.

    ``operator`` (for the audit trail) defaults to :func:`default_operator`.

    ``max_records`` stops after that many records were moved (replayed or parked), like an
    interruption; ``stop`` (an event, e.g. set by a signal handler) stops at the next record.
    Either way the work done is flushed, committed and audited, and the report says
    ``completed=False``; running the same replay again continues.  ``on_progress`` is
    called every ``progress_interval_s`` while records move, and once at the end.

    Raises :class:`ConfigError` (bad arguments, unknown app or topic, unroutable records,
    :class:`ProgressMismatch`), :class:`~processors.dlq.lock.ReplayLockHeld`,
    :class:`~processors.dlq.lock.ReplayLockLost`, :class:`ReplayAborted` (``confirm``
    returned False) and :class:`BrokerError`.
    """
    job = _Replay(
        kafka,
        catalogue,
        app,
        flt or DlqFilter(),
        target=ReplayTarget(target),
        dry_run=dry_run,
        rate_per_s=rate_per_s,
        replay_limit=replay_limit,
        operator=operator if operator is not None else default_operator(),
        restart=restart,
        audit_topic=audit_topic,
        max_records=max_records,
        stop=stop or threading.Event(),
        confirm=confirm,
        on_progress=on_progress,
        progress_interval_s=progress_interval_s,
        batch_size=batch_size,
        commit_interval_s=commit_interval_s,
        timeout_s=timeout_s,
        lock_session_timeout_ms=lock_session_timeout_ms,
    )
    return job.run()


# --------------------------------------------------------------------------- implementation


class _Replay:
    def __init__(
        self,
        kafka: KafkaConfig,
        catalogue: Catalogue,
        app: str,
        flt: DlqFilter,
        *,
        target: ReplayTarget,
        dry_run: bool,
        rate_per_s: float,
        replay_limit: int,
        operator: str,
        restart: bool,
        audit_topic: str | None,
        max_records: int | None,
        stop: threading.Event,
        confirm: Callable[[ReplayPlan], bool] | None,
        on_progress: Callable[[ReplayProgress], None] | None,
        progress_interval_s: float,
        batch_size: int,
        commit_interval_s: float,
        timeout_s: float,
        lock_session_timeout_ms: int,
    ) -> None:
        if replay_limit < 1:
            raise ConfigError(f"replay limit must be ≥ 1 (got {replay_limit})")
        if max_records is not None and max_records < 0:
            raise ConfigError(f"max_records must be ≥ 0 (got {max_records})")
        if batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1 (got {batch_size})")
        if not operator.strip():
            raise ConfigError("the operator must be named (--operator)")
        self.kafka = kafka
        self.app = catalogue.app(app)
        self.flt = flt
        self.target = target
        self.dry_run = dry_run
        self.bucket = TokenBucket(rate_per_s)
        self.replay_limit = replay_limit
        self.operator = operator.strip()
        self.restart = restart
        self.max_records = max_records
        self.stop = stop
        self.confirm = confirm
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.batch_size = batch_size
        self.commit_interval_s = commit_interval_s
        self.timeout_s = timeout_s
        self.lock_session_timeout_ms = lock_session_timeout_ms
        self.replay_id = str(uuid.uuid4())
        self.started_at = datetime.now(UTC)
        self.now = self.started_at  # relative time filters resolve once, for both passes
        if target == ReplayTarget.RETRY:
            tier = self.app.next_tier()
            if tier is None:
                raise ConfigError(f"app '{self.app.name}' has no retry tiers; replay --to original")
            self.target_topic: str | None = tier.topic
        else:
            self.target_topic = None
        self.audit_topic = audit_topic or audit_topic_for(catalogue, self.app)
        self.partitions: dict[str, int] = {}
        self.replayed = 0
        self.parked = 0
        self.completed = False
        self.resumed = False
        self._moving = False
        self._lock: ReplayLock | None = None
        self._producer: Any = None
        self._delivery_errors: list[str] = []

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> ReplayReport:
        reader = DlqReader(
            self.kafka, self.app.dlq, group_id=progress_group(self.app.dlq), timeout_s=self.timeout_s
        )
        plan: ReplayPlan | None = None
        try:
            with reader:
                self.partitions = self._check_topics(reader)
                if not self.dry_run:
                    self._lock = ReplayLock(
                        self.kafka,
                        self.app.dlq,
                        operator=self.operator,
                        session_timeout_ms=self.lock_session_timeout_ms,
                        timeout_s=self.timeout_s,
                    )
                    self._lock.acquire()
                plan = self._plan(reader)
                if self.dry_run:
                    self.completed = True
                    return self._finish(plan)
                if plan.problems:
                    raise ConfigError(_problems_message(plan))
                if plan.selected:
                    if self.confirm is not None and not self.confirm(plan):
                        raise ReplayAborted("replay not confirmed; nothing was moved")
                    self._moving = True
                    self._execute(reader, plan)
                else:
                    self.completed = True  # nothing to move: progress stays where it was
                return self._finish(plan)
        except BaseException as exc:
            if plan is not None and self._moving:
                self._audit_after_failure(plan, exc)
            raise
        finally:
            if self._lock is not None:
                self._lock.release()
            self._close_producer()

    def _check_topics(self, reader: DlqReader) -> dict[str, int]:
        topics = {self.app.dlq, self.app.parked, self.audit_topic}
        if self.target_topic is not None:
            topics.add(self.target_topic)
        else:
            topics.update(self.app.sources)
        return partition_counts(reader.consumer, topics, timeout_s=self.timeout_s)

    # -- plan --------------------------------------------------------------------------------

    def _plan(self, reader: DlqReader) -> ReplayPlan:
        ranges = reader.ranges(self.flt)
        resumed_from: dict[int, int] = {}
        if not self.restart:
            committed = reader.committed(sorted(ranges))
            self._check_progress_filters(committed, ranges)
            for partition, (start, end) in ranges.items():
                done = committed.get(partition)
                if done is not None and done.offset > start:
                    resumed_from[partition] = done.offset
                    ranges[partition] = (min(done.offset, end), end)
        self.resumed = bool(resumed_from)
        plan = ReplayPlan(
            app=self.app.name,
            dlq=self.app.dlq,
            target=self.target,
            target_topic=self.target_topic,
            parked_topic=self.app.parked,
            ranges=ranges,
            resumed_from=resumed_from,
        )
        for record, selected in self._select(reader.read(ranges)):
            plan.scanned += 1
            if not selected:
                continue
            plan.breakdown.add(record)
            move = self._route(record)
            if isinstance(move, str):
                plan.problems.append(move)
                continue
            plan.destinations[move.topic] += 1
            if move.park:
                plan.to_park += 1
            else:
                plan.to_replay += 1
        return plan

    def _check_progress_filters(
        self, committed: Mapping[int, Committed], ranges: Mapping[int, tuple[int, int]]
    ) -> None:
        wanted = self.flt.selection_fingerprint()
        for partition, done in sorted(committed.items()):
            start = ranges.get(partition, (0, 0))[0]
            if done.offset <= start:
                continue  # the earlier progress does not reach into this run's range
            stored = _read_metadata(done.metadata)
            if stored is None or stored.get("selection") == wanted:
                continue
            raise ProgressMismatch(
                f"{self.app.dlq} [{partition}] has replay progress up to offset {done.offset} recorded "
                f"by a replay with other filters ({json.dumps(stored.get('filters', {}), sort_keys=True)}; "
                f"this run: {json.dumps(self.flt.selection(), sort_keys=True)}). Resuming would pass over "
                "records that replay ignored. Re-run with the same filters to resume it, or add --restart "
                "to select from the start of the DLQ (narrow it with --since/--from-offset so records "
                "already replayed are not sent again)"
            )

    def _select(self, records: Iterable[DeadLetter]) -> Iterator[tuple[DeadLetter, bool]]:
        """Every record read, and whether the filter selects it; stops at the filter's limit."""
        limit = self.flt.limit
        count = 0
        for record in records:
            selected = self.flt.matches(record, now=self.now)
            yield record, selected
            if selected:
                count += 1
                if limit is not None and count >= limit:
                    return

    def _route(self, record: DeadLetter) -> _Move | str:
        """Where ``record`` goes, or why it cannot be replayed."""
        where = f"{record.topic} [{record.partition}] offset {record.offset}"
        if record.header(H.VALUE_TRUNCATED) == "true":
            return (
                f"{where}: holds only an excerpt of a {record.header(H.VALUE_SIZE)}-byte value (too large "
                f"for the dead-letter topic); the whole record is at {record.original_topic} "
                f"[{record.header(H.ORIGINAL_PARTITION)}] offset {record.header(H.ORIGINAL_OFFSET)} "
                f"(sha256 {record.header(H.VALUE_SHA256)}): republish it from there, and leave this "
                "one out of the replay (--to-offset / --from-offset)"
            )
        if should_park(record.headers, self.replay_limit):
            topic, partition, park = self.app.parked, record.partition, True
        elif self.target_topic is not None:
            topic, partition, park = self.target_topic, record.partition, False
        else:
            original = record.original_topic
            if original is None:
                return f"{where}: no x-original-topic header; replay it --to retry"
            if original not in self.app.sources:
                return (
                    f"{where}: original topic {original} is not a source of app '{self.app.name}' "
                    f"({', '.join(self.app.sources)}); replay it --to retry"
                )
            topic, park = original, False
            home = record.original_partition
            partition = home if home is not None and 0 <= home < self.partitions[topic] else record.partition
        if partition >= self.partitions[topic]:
            return (
                f"{where}: {topic} has {self.partitions[topic]} partitions, so the record cannot keep "
                f"partition {partition}; add partitions to {topic} (processors topics apply)"
            )
        return _Move(topic, partition, park)

    # -- move --------------------------------------------------------------------------------

    def _execute(self, reader: DlqReader, plan: ReplayPlan) -> None:
        self._producer = self._new_producer()
        total = plan.to_replay + plan.to_park
        positions: dict[int, int] = {}
        dirty: set[int] = set()
        unflushed = 0
        started = time.monotonic()
        last_checkpoint = last_progress = started
        metadata = self._progress_metadata()
        lock = self._lock
        try:
            for record, selected in self._select(reader.read(plan.ranges)):
                if self.stop.is_set():
                    break
                if lock is not None:
                    lock.ensure_held()
                if selected:
                    if self.max_records is not None and self.replayed + self.parked >= self.max_records:
                        break
                    move = self._route(record)
                    if isinstance(move, str):  # the plan saw the same records; only if they changed
                        raise ConfigError(move)
                    if not move.park:
                        wait_s = self.bucket.reserve()
                        if wait_s > 0 and self.stop.wait(wait_s):
                            break
                    self._produce(record, move)
                    unflushed += 1
                positions[record.partition] = record.offset + 1
                dirty.add(record.partition)
                now = time.monotonic()
                if unflushed >= self.batch_size or now - last_checkpoint >= self.commit_interval_s:
                    self._checkpoint(reader, {p: positions[p] for p in dirty}, metadata)
                    dirty.clear()
                    unflushed = 0
                    last_checkpoint = now
                if self.on_progress is not None and now - last_progress >= self.progress_interval_s:
                    last_progress = now
                    self.on_progress(self._progress(total, now - started))
            else:
                self.completed = True
        except KeyboardInterrupt:
            log.warning("replay of %s interrupted; saving progress", self.app.dlq)
        self._checkpoint(reader, {p: positions[p] for p in dirty}, metadata)
        if self.on_progress is not None:
            self.on_progress(self._progress(total, time.monotonic() - started))

    def _produce(self, record: DeadLetter, move: _Move) -> None:
        headers: HeaderList = (
            list(record.headers) if move.park else replay_headers(record.headers, now=datetime.now(UTC))
        )
        tracer = tracing.tracer()
        if tracer is not None and not move.park:
            headers = tracing.continued(tracer, move.topic, headers, operation="replay")
        while True:
            try:
                self._producer.produce(
                    move.topic,
                    key=record.key,
                    value=record.value,
                    headers=headers,
                    partition=move.partition,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
            except confluent_kafka.KafkaException as exc:
                raise BrokerError(f"produce to {move.topic} failed: {exc}") from exc
        self._producer.poll(0)
        if move.park:
            self.parked += 1
        else:
            self.replayed += 1

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _flush(self) -> None:
        deadline = time.monotonic() + 150.0  # longer than message.timeout.ms: every record reports
        remaining = self._producer.flush(self.timeout_s)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(self.timeout_s)
        if remaining:
            raise BrokerError(f"{remaining} records were not acknowledged by the cluster")
        if self._delivery_errors:
            errors = Counter(self._delivery_errors)
            raise BrokerError(
                "the cluster refused replayed records: " + "; ".join(f"{e} (×{n})" for e, n in errors.items())
            )

    def _checkpoint(self, reader: DlqReader, positions: dict[int, int], metadata: str) -> None:
        """Flush, then commit ``positions``: progress never runs ahead of acknowledged records."""
        if self._producer is not None:
            self._flush()
        if not positions:
            return
        if self._lock is not None:
            self._lock.ensure_held()
        reader.commit(positions, metadata=metadata)

    def _progress(self, total: int, elapsed_s: float) -> ReplayProgress:
        return ReplayProgress(
            done=self.replayed + self.parked,
            total=total,
            replayed=self.replayed,
            parked=self.parked,
            elapsed_s=elapsed_s,
        )

    def _progress_metadata(self) -> str:
        stored: dict[str, Any] = {
            "v": 1,
            "selection": self.flt.selection_fingerprint(),
            "filters": self.flt.selection(),
            "replay_id": self.replay_id,
            "operator": self.operator,
            "at": format_time(self.started_at),
        }
        text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
        if len(text) > _METADATA_MAX_CHARS:
            stored["filters"] = {"too_long": True}
            text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
        return text

    # -- report and audit --------------------------------------------------------------------

    def _report(self, plan: ReplayPlan) -> ReplayReport:
        return ReplayReport(
            replay_id=self.replay_id,
            app=self.app.name,
            dlq=self.app.dlq,
            target=self.target,
            target_topic=self.target_topic,
            parked_topic=self.app.parked,
            audit_topic=self.audit_topic,
            operator=self.operator,
            dry_run=self.dry_run,
            filters=self.flt.describe(),
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            selected=plan.selected,
            to_replay=plan.to_replay,
            to_park=plan.to_park,
            replayed=self.replayed,
            parked=self.parked,
            completed=self.completed,
            resumed=self.resumed,
            restart=self.restart,
            breakdown=plan.breakdown,
            destinations=dict(plan.destinations.most_common()),
            problems=tuple(plan.problems),
        )

    def _finish(self, plan: ReplayPlan) -> ReplayReport:
        report = self._report(plan)
        self._write_audit(report)
        return report

    def _audit_value(self, report: ReplayReport, error: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "event_type": AUDIT_EVENT_TYPE,
            "occurred_at": format_time(report.finished_at),
            "operator": report.operator,
            "app": report.app,
            "dlq": report.dlq,
            "target": report.target_topic or str(report.target),
            "filters": report.filters,
            "dry_run": report.dry_run,
            "selected": report.selected,
            "replayed": report.replayed,
            "parked": report.parked,
            "replay_id": report.replay_id,
            "to_replay": report.to_replay,
            "to_park": report.to_park,
            "completed": report.completed,
            "resumed": report.resumed,
            "restart": report.restart,
            "rate_per_s": self.bucket.rate_per_s,
            "replay_limit": self.replay_limit,
            "started_at": format_time(report.started_at),
        }
        if error is not None:
            value["error"] = error
        return value

    def _write_audit(self, report: ReplayReport, error: str | None = None) -> None:
        if self._producer is None:
            self._producer = self._new_producer()
        value = json.dumps(self._audit_value(report, error), sort_keys=True).encode()
        try:
            self._producer.produce(
                self.audit_topic,
                key=self.app.name.encode(),
                value=value,
                headers=[("content-type", b"application/json"), ("event-type", AUDIT_EVENT_TYPE.encode())],
                on_delivery=self._on_delivery,
            )
        except (BufferError, confluent_kafka.KafkaException) as exc:
            raise BrokerError(f"cannot write the audit record to {self.audit_topic}: {exc}") from exc
        try:
            self._flush()
        except BrokerError as exc:
            raise BrokerError(f"cannot write the audit record to {self.audit_topic}: {exc}") from exc

    def _audit_after_failure(self, plan: ReplayPlan, exc: BaseException) -> None:
        """Best effort: a run that failed half-way still leaves an audit record of what it moved."""
        self.completed = False
        error = str(exc) if isinstance(exc, ProcessorsError) else type(exc).__name__
        try:
            self._delivery_errors.clear()
            self._write_audit(self._report(plan), error=error)
        except (ProcessorsError, confluent_kafka.KafkaException, BufferError, RuntimeError):
            log.exception("could not write the audit record of the failed replay %s", self.replay_id)

    def _new_producer(self) -> Any:
        try:
            return confluent_kafka.Producer(producer_config(self.kafka))
        except confluent_kafka.KafkaException as exc:
            raise ConfigError(f"invalid Kafka client configuration: {exc}") from exc

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(5.0)


def _read_metadata(text: str) -> dict[str, Any] | None:
    try:
        stored = json.loads(text) if text else None
    except ValueError:
        return None
    return stored if isinstance(stored, dict) else None


def _problems_message(plan: ReplayPlan) -> str:
    shown = plan.problems[:_MAX_PROBLEMS_SHOWN]
    more = len(plan.problems) - len(shown)
    lines = [f"{len(plan.problems)} selected dead letters cannot be replayed; nothing was moved:"]
    lines.extend(f"  {problem}" for problem in shown)
    if more:
        lines.append(f"  … and {more} more")
    lines.append("narrow the selection with filters (--error-class, --from-offset, ...) or change --to")
    return "\n".join(lines)
