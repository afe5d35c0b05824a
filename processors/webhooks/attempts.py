"""The operator view of partner deliveries: attempts per endpoint and per message, and redelivery.

Three parts, each usable alone:

* :class:`AttemptsView` — pure, in memory: ``apply()`` one delivery-log record (the value of a
  ``integrations.webhook.deliveries`` record), then query attempts per endpoint (subscription)
  and per message (``webhook_id``).  Each endpoint keeps a bounded history (the newest
  ``max_attempts_per_endpoint`` attempts; older ones are evicted with their messages), and the
  view as a whole keeps at most ``max_attempts`` (the oldest across every endpoint go first, so
  the endpoints of deleted subscriptions age out).
* :class:`AttemptsFeed` — tails the delivery log from its beginning on a background thread
  (every partition assigned, no consumer group, nothing committed) into a view;
  ``wait_caught_up()`` answers whether the view holds everything the log held at the call.
* :class:`Redeliverer` — reads dispatch records back by their coordinates (the ``job`` of a
  delivery-log record) and produces an operator copy of each to the dispatch topic.

An unparsable delivery-log record is skipped and counted; its content is never logged.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, get_args

import confluent_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    OffsetSpec,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.kafka.threaded import ThreadBoundConsumer
from processors.runtime.engine import OutputProducer
from processors.runtime.failures import PROVENANCE_HEADERS
from processors.runtime.message import HeaderList, OutRecord, header_value
from processors.runtime.producer import ProducerSlot

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_ATTEMPTS_PER_ENDPOINT",
    "FAILED_STATUSES",
    "REDELIVERED_AT_HEADER",
    "REDELIVERY_HEADER",
    "STATUSES",
    "AttemptsFeed",
    "AttemptsView",
    "DeliveryAttempt",
    "FailedMessage",
    "FetchedRecord",
    "JobRef",
    "Redeliverer",
    "RedeliveryReport",
    "Status",
    "redelivery_headers",
]

log = logging.getLogger(__name__)

Status = Literal["delivered", "failed", "refused", "skipped", "disabled"]
NextStep = Literal["retry", "dlq"]

STATUSES: Final[frozenset[str]] = frozenset(get_args(Status))
FAILED_STATUSES: Final[frozenset[str]] = frozenset({"failed", "refused", "skipped", "disabled"})
"""A message whose latest attempt has one of these statuses (or ``next == "dlq"``) has failed."""

DEFAULT_MAX_ATTEMPTS_PER_ENDPOINT: Final = 20_000
DEFAULT_MAX_ATTEMPTS: Final = 500_000
"""Attempts one view keeps over every endpoint (a few hundred bytes each)."""

REDELIVERY_HEADER: Final = "x-redelivery"
REDELIVERED_AT_HEADER: Final = "x-redelivered-at"
_SUBSCRIPTION_HEADER: Final = "x-subscription-id"
_TRANSIENT: Final = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
    }
)
_READ_ON_MAX_RECORDS: Final = 1_000
"""Redelivery reads on to a wanted offset this close instead of assigning the partition again."""
_WEBHOOK_HEADER: Final = "x-webhook-id"


# --------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, order=True)
class JobRef:
    """Where a dispatch record is: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


class _WireJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: str = Field(min_length=1)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class _WireAttempt(BaseModel):
    """The delivery-log record as written (``docs/webhooks.md``); unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subscription_id: str = Field(min_length=1)
    webhook_id: str = Field(min_length=1)
    event_id: str
    event_type: str
    subject: str
    attempt: int = Field(ge=0)
    status: Status
    http_status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_excerpt: str | None = None
    attempted_at: AwareDatetime
    url_host: str
    next: NextStep | None = None
    job: _WireJob


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One delivery-log record: an attempt (``attempt`` ≥ 1) or a decision without a request (0)."""

    subscription_id: str
    webhook_id: str
    event_id: str
    event_type: str
    subject: str
    attempt: int
    status: Status
    http_status: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None
    attempted_at: datetime
    """Timezone-aware, UTC."""
    url_host: str
    next_step: NextStep | None
    """The record's ``next``: ``retry``, ``dlq`` or None."""
    job: JobRef
    """The dispatch record this attempt delivered."""

    @classmethod
    def parse(cls, value: bytes | str | None) -> DeliveryAttempt | None:
        """The attempt in a delivery-log record value, or None when it is not one."""
        if not value:
            return None
        try:
            wire = _WireAttempt.model_validate_json(value)
        except ValidationError:
            return None
        return cls(
            subscription_id=sys.intern(wire.subscription_id),
            webhook_id=wire.webhook_id,
            event_id=wire.event_id,
            event_type=sys.intern(wire.event_type),
            subject=wire.subject,
            attempt=wire.attempt,
            status=wire.status,
            http_status=wire.http_status,
            latency_ms=wire.latency_ms,
            error=wire.error,
            response_excerpt=wire.response_excerpt,
            attempted_at=wire.attempted_at.astimezone(UTC),
            url_host=sys.intern(wire.url_host),
            next_step=wire.next,
            job=JobRef(sys.intern(wire.job.topic), wire.job.partition, wire.job.offset),
        )

    @property
    def failed(self) -> bool:
        """The attempt ended the message's delivery without success, or parked it."""
        return self.status in FAILED_STATUSES or self.next_step == "dlq"

    def to_json(self) -> dict[str, Any]:
        """The operator view of this attempt (JSON-ready)."""
        return {
            "webhook_id": self.webhook_id,
            "event_type": self.event_type,
            "attempt": self.attempt,
            "status": self.status,
            "http_status": self.http_status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "response_excerpt": self.response_excerpt,
            "attempted_at": _iso(self.attempted_at),
            "next": self.next_step,
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------- view


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """A message to recover: its id and the dispatch record that carries it."""

    webhook_id: str
    job: JobRef


@dataclass(slots=True)
class _Entry:
    seq: int
    attempt: DeliveryAttempt
    kept: bool = True
    """False once evicted (the view's log-order queue drops such entries lazily)."""


@dataclass(slots=True)
class _Endpoint:
    history: deque[_Entry] = field(default_factory=deque)
    """Every kept attempt in log order."""
    messages: dict[str, deque[_Entry]] = field(default_factory=dict)
    """Per ``webhook_id``, its kept attempts in log order (the last one is the latest)."""


def _newest_first(entries: Iterable[_Entry], limit: int | None = None) -> list[DeliveryAttempt]:
    def key(entry: _Entry) -> tuple[datetime, int]:
        return (entry.attempt.attempted_at, entry.seq)

    if limit is None:
        ordered = sorted(entries, key=key, reverse=True)
    else:
        ordered = heapq.nlargest(limit, entries, key=key)
    return [entry.attempt for entry in ordered]


class AttemptsView:
    """Delivery attempts in memory, per endpoint and per message.

    Queries list attempts newest first: by ``attempted_at``, then by log order.  The *latest*
    attempt of a message is the last one in log order (one message's attempts are logged one
    after the other).  Not thread-safe: apply and query from one thread (the event loop).

    Bounded twice: each endpoint keeps its newest ``max_attempts_per_endpoint`` attempts, and
    the view keeps at most ``max_attempts`` in all, evicting the oldest in log order whatever
    its endpoint; an endpoint whose last attempt is evicted is forgotten.  Every eviction is
    counted in ``evicted``.
    """

    def __init__(
        self,
        *,
        max_attempts_per_endpoint: int = DEFAULT_MAX_ATTEMPTS_PER_ENDPOINT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if max_attempts_per_endpoint < 1:
            raise ConfigError("max_attempts_per_endpoint must be at least 1")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        self.max_attempts_per_endpoint = max_attempts_per_endpoint
        self.max_attempts = max_attempts
        self.applied = 0
        """Attempts taken in."""
        self.skipped = 0
        """Records that were not a delivery-log record (unparsable), skipped."""
        self.evicted = 0
        """Attempts dropped to keep an endpoint's history, or the whole view, within its bound."""
        self._endpoints: dict[str, _Endpoint] = {}
        self._seq = 0
        self._kept = 0
        self._order: deque[_Entry] = deque()
        """Every kept entry in log order, plus evicted ones not dropped yet (at most as many
        again as are kept, see ``_compact``)."""

    def apply(self, value: bytes | str | None) -> DeliveryAttempt | None:
        """Take in one delivery-log record value; None (and counted) when it is unparsable."""
        attempt = DeliveryAttempt.parse(value)
        if attempt is None:
            self.skipped += 1
            return None
        self.add(attempt)
        return attempt

    def add(self, attempt: DeliveryAttempt) -> None:
        """Take in an attempt that is already parsed."""
        endpoint = self._endpoints.get(attempt.subscription_id)
        if endpoint is None:
            endpoint = self._endpoints[attempt.subscription_id] = _Endpoint()
        self._seq += 1
        entry = _Entry(self._seq, attempt)
        endpoint.history.append(entry)
        message = endpoint.messages.get(attempt.webhook_id)
        if message is None:
            message = endpoint.messages[attempt.webhook_id] = deque()
        message.append(entry)
        self._order.append(entry)
        self._kept += 1
        self.applied += 1
        while len(endpoint.history) > self.max_attempts_per_endpoint:
            self._evict_oldest(endpoint)
        while self._kept > self.max_attempts:
            self._evict_globally_oldest()
        if len(self._order) > 2 * self._kept + 1024:
            self._compact()

    @property
    def attempts_kept_total(self) -> int:
        """Attempts held over every endpoint (at most ``max_attempts``)."""
        return self._kept

    def _evict_oldest(self, endpoint: _Endpoint) -> None:
        oldest = endpoint.history.popleft()
        webhook_id = oldest.attempt.webhook_id
        attempts = endpoint.messages[webhook_id]
        # A message's attempts are a subsequence of the history: its oldest goes first.
        assert attempts[0] is oldest
        attempts.popleft()
        if not attempts:
            del endpoint.messages[webhook_id]
        oldest.kept = False
        self._kept -= 1
        self.evicted += 1

    def _evict_globally_oldest(self) -> None:
        entry = self._order.popleft()
        while not entry.kept:
            entry = self._order.popleft()
        sub_id = entry.attempt.subscription_id
        endpoint = self._endpoints[sub_id]
        # The oldest kept attempt of all is the oldest of its endpoint (both in log order).
        assert endpoint.history[0] is entry
        self._evict_oldest(endpoint)
        if not endpoint.history:
            del self._endpoints[sub_id]

    def _compact(self) -> None:
        """Drop the evicted entries from the log-order queue (amortised: it at least halves)."""
        self._order = deque(entry for entry in self._order if entry.kept)

    # ------------------------------------------------------------------------ queries

    def endpoints(self) -> list[str]:
        """Subscription ids with at least one kept attempt."""
        return sorted(self._endpoints)

    def attempts_kept(self, sub_id: str) -> int:
        endpoint = self._endpoints.get(sub_id)
        return len(endpoint.history) if endpoint is not None else 0

    def for_endpoint(
        self,
        sub_id: str,
        *,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[DeliveryAttempt]:
        """The endpoint's newest ``limit`` attempts, optionally with this status, at or after ``since``."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        _require_aware(since)
        endpoint = self._endpoints.get(sub_id)
        if endpoint is None:
            return []
        entries: Iterable[_Entry] = endpoint.history
        if status is not None:
            entries = (e for e in entries if e.attempt.status == status)
        if since is not None:
            entries = (e for e in entries if e.attempt.attempted_at >= since)
        return _newest_first(entries, limit)

    def for_message(self, sub_id: str, webhook_id: str) -> list[DeliveryAttempt]:
        """Every kept attempt of one message, newest first."""
        endpoint = self._endpoints.get(sub_id)
        if endpoint is None:
            return []
        return _newest_first(endpoint.messages.get(webhook_id, ()))

    def latest(self, sub_id: str, webhook_id: str) -> DeliveryAttempt | None:
        """The message's last logged attempt (its current status and dispatch record), or None."""
        endpoint = self._endpoints.get(sub_id)
        attempts = endpoint.messages.get(webhook_id) if endpoint is not None else None
        return attempts[-1].attempt if attempts else None

    def failed_since(self, sub_id: str, since: datetime) -> list[FailedMessage]:
        """Messages whose latest attempt failed (see :data:`FAILED_STATUSES`) at or after ``since``.

        Each message once, oldest failure first.  A message that failed and later succeeded
        is not in the list: only its latest attempt counts.
        """
        _require_aware(since)
        endpoint = self._endpoints.get(sub_id)
        if endpoint is None:
            return []
        found: list[_Entry] = []
        for attempts in endpoint.messages.values():
            last = attempts[-1]
            if last.attempt.failed and last.attempt.attempted_at >= since:
                found.append(last)
        found.sort(key=lambda e: (e.attempt.attempted_at, e.seq))
        return [FailedMessage(e.attempt.webhook_id, e.attempt.job) for e in found]


def _require_aware(value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError("times must be timezone-aware")


# --------------------------------------------------------------------------------- feed


@dataclass(slots=True)
class _Step:
    """What one turn of the poll thread brings back to the event loop."""

    attempts: list[DeliveryAttempt]
    skipped: int
    positions: dict[int, int]


Offsets = dict[int, tuple[int, int]]
"""Per partition, its (first, end) offsets: log start and last stable offset."""


_EARLIEST: Final = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: Final = OffsetSpec.latest()  # type: ignore[no-untyped-call]

ConsumerFactory = Callable[[dict[str, Any]], Any]
AdminFactory = Callable[[dict[str, Any]], Any]


class AttemptsFeed:
    """Tails the delivery log into ``view`` from the beginning, on a background poll thread.

    Every partition of ``topic`` is assigned (new partitions are picked up every
    ``metadata_refresh_s``); nothing is committed.  All consumer calls happen on the poll
    thread; the view is updated on the event loop.  The end offsets ``wait_caught_up()``
    compares with are asked of the cluster by a separate admin client, so the question never
    queues behind the consumer's long-polling fetches.  ``client_overrides`` are librdkafka
    settings named ``consumer.<key>`` or ``client.<key>``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        view: AttemptsView,
        *,
        client_overrides: Mapping[str, str] | None = None,
        poll_batch: int = 1_000,
        poll_timeout_ms: int = 100,
        metadata_refresh_s: float = 30.0,
        broker_timeout_s: float = 5.0,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
        admin_factory: AdminFactory = AdminClient,
    ) -> None:
        self.topic = topic
        self.view = view
        kafka = KafkaClients(bootstrap_servers, client_overrides or {})
        self._conf = kafka.reader("webhook-attempts")
        self._admin_conf = kafka.admin()
        self._poll_batch = poll_batch
        self._poll_timeout_s = poll_timeout_ms / 1000
        self._metadata_refresh_s = metadata_refresh_s
        self._broker_timeout_s = broker_timeout_s
        self._consumer_factory = consumer_factory
        self._admin_factory = admin_factory
        self._thread = ThreadBoundConsumer("webhook-attempts")
        self._admin: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._partitions: frozenset[int] = frozenset()
        """Replaced, never changed in place: the event loop reads it while the poll thread runs."""
        self._metadata_at = float("-inf")
        self._told_missing = False
        self._positions: dict[int, int] = {}
        self._waiters: list[tuple[asyncio.Future[bool], Offsets]] = []
        self._error: BaseException | None = None

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the feed, if one did."""
        return self._error

    @property
    def running(self) -> bool:
        return self._alive()

    def _alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def start(self) -> None:
        """Create the clients and start tailing; returns without waiting for the broker."""
        if self._task is not None:
            raise RuntimeError("an AttemptsFeed starts once")
        try:
            await self._thread.open(self._consumer_factory, self._conf)
            self._admin = self._admin_factory(self._admin_conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            await self._thread.close()
            raise ConfigError(f"webhook attempts feed: cannot create its Kafka clients: {exc}") from exc
        self._task = asyncio.create_task(self._run(), name=f"webhook-attempts:{self.topic}")

    async def stop(self) -> None:
        """Stop tailing and close the consumer; waiters are answered False."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._answer_all(False)
        await self._thread.close()
        self._admin = None

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the view holds every record the topic held when this was called.

        False when that did not happen within ``timeout_s`` (the view may be stale), when the
        cluster did not say where the topic ends, or when the feed is not running.
        """
        if not self.running:
            return False
        loop = asyncio.get_running_loop()
        waiter: tuple[asyncio.Future[bool], Offsets] | None = None
        try:
            async with asyncio.timeout(timeout_s):
                targets = await self._ask_end_offsets()
                if not targets.keys() <= self._partitions:
                    self._metadata_at = float("-inf")  # new partitions: assign them on the next poll
                if self._reached(targets):
                    return True
                if not self._alive():
                    return False
                waiter = (loop.create_future(), targets)
                self._waiters.append(waiter)
                return await waiter[0]
        except TimeoutError:
            return False
        finally:
            if waiter is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _ask_end_offsets(self) -> Offsets:
        """Where each partition ends now; asked again while the cluster cannot say (a new topic)."""
        loop = asyncio.get_running_loop()
        backoff_s = 0.05
        while True:
            try:
                targets = await loop.run_in_executor(None, self._end_offsets)
            except confluent_kafka.KafkaException as exc:
                log.debug("webhook attempts feed: end offsets of %s not known yet: %s", self.topic, exc)
            else:
                if targets is not None:
                    return targets
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 1.0)

    def _end_offsets(self) -> Offsets | None:
        """Runs on a worker thread: each partition's first offset and last stable offset now."""
        admin = self._admin
        if admin is None:
            return None
        metadata = admin.list_topics(self.topic, timeout=self._broker_timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            log.debug("webhook attempts feed: topic %s is not available", self.topic)
            return None
        tps = [confluent_kafka.TopicPartition(self.topic, p) for p in sorted(topic.partitions)]
        asked = {
            name: admin.list_offsets(
                dict.fromkeys(tps, spec),
                isolation_level=confluent_kafka.IsolationLevel.READ_COMMITTED,
                request_timeout=self._broker_timeout_s,
            )
            for name, spec in (("first", _EARLIEST), ("end", _LATEST))
        }
        found: dict[str, dict[int, int]] = {name: {} for name in asked}
        for name, futures in asked.items():
            for tp, future in futures.items():
                found[name][tp.partition] = future.result().offset
        return {p: (found["first"][p], found["end"][p]) for p in found["end"]}

    def _reached(self, targets: Offsets) -> bool:
        return all(
            end <= first or self._positions.get(partition, -1) >= end
            for partition, (first, end) in targets.items()
        )

    # ------------------------------------------------------------------------ loop

    async def _run(self) -> None:
        backoff_s = 0.1
        while not self._stopping:
            try:
                step = await self._thread.call(self._poll_step)
            except BrokerError as exc:
                log.error("webhook attempts feed stopped: %s", exc)
                self._error = exc
                break
            except confluent_kafka.KafkaException as exc:
                log.warning("webhook attempts feed: %s; retrying", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            backoff_s = 0.1
            for attempt in step.attempts:
                self.view.add(attempt)
            if step.skipped:
                self.view.skipped += step.skipped
                log.warning("webhook attempts feed: skipped %d unparsable delivery-log records", step.skipped)
            for partition, position in step.positions.items():
                if position > self._positions.get(partition, -1):
                    self._positions[partition] = position
            self._answer_caught_up()
        self._answer_all(False)

    def _answer_caught_up(self) -> None:
        for waiter in list(self._waiters):
            future, targets = waiter
            if not future.done() and self._reached(targets):
                future.set_result(True)
                self._waiters.remove(waiter)

    def _answer_all(self, result: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for future, _ in waiters:
            if not future.done():
                future.set_result(result)

    # ------------------------------------------------------------------------ poll thread

    def _poll_step(self) -> _Step:
        """Runs on the poll thread: the only place the consumer is used."""
        consumer = self._thread.consumer
        now = time.monotonic()
        refresh_s = self._metadata_refresh_s if self._partitions else min(1.0, self._metadata_refresh_s)
        if now - self._metadata_at >= refresh_s:
            self._refresh_partitions(consumer)
            self._metadata_at = now
        partitions = self._partitions
        if not partitions:
            time.sleep(self._poll_timeout_s)  # the poll thread waits for the topic to appear
            return _Step([], 0, {})
        attempts: list[DeliveryAttempt] = []
        skipped = 0
        for msg in fetch(consumer, self._poll_batch, self._poll_timeout_s):
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"fatal consumer error on {self.topic}: {error.str()}")
                log.warning("webhook attempts feed: consumer error: %s", error.str())
                continue
            attempt = DeliveryAttempt.parse(msg.value())
            if attempt is None:
                skipped += 1
                log.debug(
                    "unparsable delivery-log record at %s[%s]@%s", msg.topic(), msg.partition(), msg.offset()
                )
            else:
                attempts.append(attempt)
        # The position is the offset after the last record handed out: caught up at the end offset.
        positions = {
            tp.partition: tp.offset
            for tp in consumer.position(
                [confluent_kafka.TopicPartition(self.topic, p) for p in sorted(partitions)]
            )
            if tp.offset >= 0
        }
        return _Step(attempts, skipped, positions)

    def _refresh_partitions(self, consumer: Any) -> None:
        metadata = consumer.list_topics(self.topic, timeout=self._broker_timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            if not self._partitions and not self._told_missing:
                log.warning("webhook attempts feed: topic %s is not available yet", self.topic)
                self._told_missing = True
            return
        new = sorted(set(topic.partitions) - self._partitions)
        if not new:
            return
        consumer.incremental_assign(
            [confluent_kafka.TopicPartition(self.topic, p, confluent_kafka.OFFSET_BEGINNING) for p in new]
        )
        self._partitions = self._partitions | frozenset(new)
        log.info("webhook attempts feed: reading %s partitions %s from the beginning", self.topic, new)


# --------------------------------------------------------------------------------- redelivery


@dataclass(frozen=True, slots=True)
class RedeliveryReport:
    """What a redelivery did.

    ``redelivered``: the ``webhook_id`` of every copy produced (acknowledged by the broker).
    ``missing``: dispatch records that are no longer there (retention) or never were.
    ``mismatched``: records found at the coordinates that belong to another subscription
    than the one asked for (the topic was recreated): not redelivered.
    """

    redelivered: tuple[str, ...] = ()
    missing: tuple[JobRef, ...] = ()
    mismatched: tuple[JobRef, ...] = ()

    @property
    def redelivered_count(self) -> int:
        return len(self.redelivered)

    @property
    def missing_count(self) -> int:
        return len(self.missing)

    def to_json(self) -> dict[str, Any]:
        return {
            "redelivered": self.redelivered_count,
            "missing": self.missing_count,
            "webhook_ids": list(self.redelivered),
            "missing_jobs": [job.to_json() for job in self.missing],
            "mismatched_jobs": [job.to_json() for job in self.mismatched],
        }


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    """A dispatch record read back at its coordinates (:meth:`Redeliverer.read`)."""

    job: JobRef
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def subscription_id(self) -> str | None:
        """The ``x-subscription-id`` header: the subscription the record was made for."""
        return header_value(self.headers, _SUBSCRIPTION_HEADER)


def redelivery_headers(headers: Iterable[tuple[str, bytes | None]], at: datetime) -> HeaderList:
    """A dispatch record's own headers for its operator copy.

    Keeps the record's headers (content type, ``x-*`` identity headers, ``traceparent``), drops
    failure provenance (``x-original-*``, ``x-error-*``...) and any earlier redelivery marks, and
    adds ``x-redelivery: operator`` and ``x-redelivered-at``.
    """
    dropped = PROVENANCE_HEADERS | {REDELIVERY_HEADER, REDELIVERED_AT_HEADER}
    kept: HeaderList = [
        (name, value if value is not None else b"")
        for name, value in headers
        if name not in dropped and not name.startswith("x-original-")
    ]
    kept.append((REDELIVERY_HEADER, b"operator"))
    kept.append((REDELIVERED_AT_HEADER, _iso(at).encode()))
    return kept


class Redeliverer:
    """Produce operator copies of dispatch records, found by their coordinates.

    ``start()`` creates the producer, ``stop()`` flushes and closes it (a ``producer`` given
    here is used as it is and left open).  Each ``redeliver()`` reads with a short-lived
    consumer on a worker thread (assigned to the exact partitions and offsets; never in a
    group, never committing).  ``client_overrides`` are librdkafka settings
    named ``producer.<key>``, ``consumer.<key>`` or ``client.<key>``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        dispatch_topic: str,
        *,
        client_overrides: Mapping[str, str] | None = None,
        fetch_timeout_s: float = 15.0,
        produce_timeout_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
        producer: OutputProducer | None = None,
    ) -> None:
        self.dispatch_topic = dispatch_topic
        self._kafka = KafkaClients(bootstrap_servers, client_overrides or {})
        self._fetch_timeout_s = fetch_timeout_s
        self._produce_timeout_s = produce_timeout_s
        self._clock = clock
        self._consumer_factory = consumer_factory
        # An operator waits for the answer: a copy that cannot be written fails, it does not linger.
        self._slot = ProducerSlot(
            producer,
            lambda: self._kafka.producer(delivery_timeout_s=produce_timeout_s),
            stop_timeout_s=produce_timeout_s,
        )

    async def start(self) -> None:
        """Create the producer (unless one was given)."""
        await self._slot.start()

    async def stop(self) -> None:
        """Flush and close the producer this created (a given one is left to its owner)."""
        await self._slot.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def read(self, jobs: Sequence[JobRef]) -> list[FetchedRecord]:
        """The dispatch records at ``jobs`` (each once, in coordinate order) that are still on
        their topic, read as :meth:`redeliver` reads them (no producer needed).  Raises
        BrokerError when they cannot be read."""
        unique = sorted(set(jobs))
        if not unique:
            return []
        loop = asyncio.get_running_loop()
        fetched, _missing = await loop.run_in_executor(None, self._fetch, unique)
        return fetched

    async def redeliver(
        self, jobs: Sequence[JobRef], *, expect_subscription: str | None = None
    ) -> RedeliveryReport:
        """Copy each dispatch record at ``jobs`` (each once) to the dispatch topic; wait for acks.

        With ``expect_subscription``, a record whose ``x-subscription-id`` differs is not
        copied (reported as mismatched).  Copies are produced in coordinate order, so records of
        one dispatch partition keep their relative order.  Raises BrokerError when the records
        cannot be read or the copies are not acknowledged in time.
        """
        producer = self._slot.producer
        if producer is None:
            raise BrokerError("the redeliverer is not started")
        unique = sorted(set(jobs))
        if not unique:
            return RedeliveryReport()
        loop = asyncio.get_running_loop()
        fetched, missing = await loop.run_in_executor(None, self._fetch, unique)
        at = self._clock()
        copies: list[OutRecord] = []
        webhook_ids: list[str] = []
        mismatched: list[JobRef] = []
        for record in fetched:
            subscription = header_value(record.headers, _SUBSCRIPTION_HEADER)
            if expect_subscription is not None and subscription != expect_subscription:
                mismatched.append(record.job)
                continue
            copies.append(
                OutRecord(
                    topic=self.dispatch_topic,
                    key=record.key,
                    value=record.value,
                    headers=redelivery_headers(record.headers, at),
                )
            )
            webhook_ids.append(header_value(record.headers, _WEBHOOK_HEADER) or "")
        if copies:
            try:
                async with asyncio.timeout(self._produce_timeout_s + 5.0):
                    await producer.send_all(copies)
            except TimeoutError as exc:
                raise BrokerError(
                    f"redelivery to {self.dispatch_topic} not acknowledged "
                    f"within {self._produce_timeout_s:g} s"
                ) from exc
        if mismatched:
            log.warning(
                "redelivery: %d record(s) belong to another subscription; not copied", len(mismatched)
            )
        log.info("redelivery to %s: %d copied, %d missing", self.dispatch_topic, len(copies), len(missing))
        return RedeliveryReport(tuple(webhook_ids), tuple(missing), tuple(mismatched))

    # ------------------------------------------------------------------------ worker thread

    def _fetch(self, jobs: Sequence[JobRef]) -> tuple[list[FetchedRecord], list[JobRef]]:
        """Runs on a worker thread; a transient broker error (a leader moving) is tried again."""
        deadline = time.monotonic() + self._fetch_timeout_s
        backoff_s = 0.1
        while True:
            try:
                return self._fetch_once(jobs, deadline)
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, confluent_kafka.KafkaError) and (
                    error.retriable() or error.code() in _TRANSIENT
                )
                if not transient or time.monotonic() + backoff_s > deadline:
                    raise BrokerError(f"redelivery: reading dispatch records failed: {exc}") from exc
            time.sleep(backoff_s)  # a worker thread, waiting for the cluster to settle
            backoff_s = min(backoff_s * 2, 2.0)

    def _fetch_once(
        self, jobs: Sequence[JobRef], deadline: float
    ) -> tuple[list[FetchedRecord], list[JobRef]]:
        conf = self._kafka.reader("webhook-redeliver", eof=True)
        try:
            consumer = self._consumer_factory(conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"redelivery: cannot create consumer: {exc}") from exc
        fetched: list[FetchedRecord] = []
        missing: list[JobRef] = []
        try:
            groups = list(_by_partition(jobs))
            # Where each partition starts and ends, asked before any fetch keeps the connection busy.
            bounds = {tp: self._bounds(consumer, tp, deadline) for tp, _ in groups}
            for (topic, partition), offsets in groups:
                found, gone = self._fetch_partition(
                    consumer, topic, partition, offsets, bounds[(topic, partition)], deadline
                )
                fetched.extend(found)
                missing.extend(gone)
        finally:
            consumer.close()
        return fetched, missing

    def _fetch_partition(
        self,
        consumer: Any,
        topic: str,
        partition: int,
        offsets: list[int],
        bounds: tuple[int, int] | None,
        deadline: float,
    ) -> tuple[list[FetchedRecord], list[JobRef]]:
        """The records at ``offsets`` (ascending) of one partition, and the offsets not there.

        Reads from the first wanted offset; a later one that is close is reached by reading on,
        a far one by assigning the partition again at that offset.
        """
        if bounds is None:
            return [], [JobRef(topic, partition, o) for o in offsets]
        low, high = bounds
        wanted = frozenset(offsets)
        found: dict[int, FetchedRecord] = {}
        gone: list[int] = []
        passed = -1  # the highest offset settled since the partition was last assigned
        assigned = False
        for target in offsets:
            if not low <= target < high:
                gone.append(target)  # deleted by retention, or never written
                continue
            if target > passed and (not assigned or target - passed > _READ_ON_MAX_RECORDS):
                consumer.assign([confluent_kafka.TopicPartition(topic, partition, target)])
                assigned = True
                passed = target - 1
            while passed < target:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"redelivery: {topic}[{partition}] not read within {self._fetch_timeout_s:g} s"
                    )
                for msg in fetch(consumer, 500, min(0.5, _remaining(deadline))):
                    error = msg.error()
                    if error is not None:
                        if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                            # The end: every offset before it was returned already.
                            end = msg.offset()
                            passed = max(passed, target, (end if end is not None else high) - 1)
                        elif error.fatal():
                            raise BrokerError(f"redelivery: fatal consumer error: {error.str()}")
                        continue
                    offset = msg.offset()
                    if offset is None or offset <= passed:
                        continue
                    passed = offset
                    if offset in wanted:
                        found[offset] = FetchedRecord(
                            JobRef(topic, partition, offset),
                            msg.key(),
                            msg.value(),
                            tuple((k, v if v is not None else b"") for k, v in (msg.headers() or ())),
                        )
            if target not in found:
                gone.append(target)  # passed without being seen: removed (compaction, aborted write)
        return [found[o] for o in sorted(found)], [JobRef(topic, partition, o) for o in gone]

    def _bounds(self, consumer: Any, tp: tuple[str, int], deadline: float) -> tuple[int, int] | None:
        """The partition's (low, high) watermarks, or None when it does not exist."""
        topic, partition = tp
        metadata = consumer.list_topics(topic, timeout=_remaining(deadline))
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or partition not in found.partitions:
            return None
        low, high = consumer.get_watermark_offsets(
            confluent_kafka.TopicPartition(topic, partition), timeout=_remaining(deadline), cached=False
        )
        return int(low), int(high)


def _by_partition(jobs: Sequence[JobRef]) -> Iterator[tuple[tuple[str, int], list[int]]]:
    groups: dict[tuple[str, int], list[int]] = {}
    for job in jobs:
        groups.setdefault((job.topic, job.partition), []).append(job.offset)
    for tp in sorted(groups):
        yield tp, sorted(set(groups[tp]))


def _remaining(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())
