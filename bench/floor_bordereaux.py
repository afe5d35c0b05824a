"""The stripped prototype of the bordereaux plumbing: the cheapest code that keeps its guarantees.

``bench/bench_bordereaux.py`` runs it as the ``plumbing-floor`` stage next to ``plumbing`` (the
product's :class:`~processors.streams.loop.TransactionalLoop` running the product's
:class:`~processors.bordereaux.topology.RouteTask` and the bench's ``_DecodeAndKeep``), on the
same published events, into fresh topics of its own every run, timed the same way, so the ratio
of the two says how far the product's exactly-once path is from its floor.  It is a measuring
stick, never a second implementation to run: it does nothing the comparison does not need.

Written directly on confluent_kafka: no ``TransactionalLoop``, no ``RouteTask`` object, no
``ChangelogStore``.  The product's structure, kept so the comparison is like for like:

* **One consumer, one transactional producer** for both stages, as the loop has: the consumer
  (the plumbing stage's settings, with :meth:`KafkaClients.exactly_once_consumer`'s invariants:
  ``read_committed``, no automatic offset commit or store) subscribes to the source topics and
  the by-policy topic together, cooperative-sticky; the producer (the plumbing stage's settings:
  idempotent, acks=all, lz4, linger 5 ms, ``murmur2_random``) runs every transaction.  Two
  consumers and producers (one per stage) would double the transactions and commits per record
  read and compare a different design, not the product's cost.
* **Batches and commits**: each call of the product's :func:`~processors.kafka.consume.fetch`
  (up to ``batch_size`` records, waiting only while none is there, 0.2 s) is one transaction
  holding everything that batch caused, whatever stages its records belong to: the routed
  events, the watermark records, both changelogs' entries, and the batch's input offsets
  (``send_offsets_to_transaction`` with the consumer's group metadata, so a zombie of an older
  generation is fenced).  No commit on a timer: the product has none either.
* **Fencing**: ``init_transactions`` before the consumer subscribes (an earlier incarnation with
  the same transactional id is fenced and its open transaction aborted); a fenced or fatal
  producer error stops the run.
* **Route** (per source partition, what ``RouteTask`` does): ``Codec.peek``; an unexpected
  event type, a missing ``policy_id`` or an event more than ``FUTURE_TOLERANCE`` in the future
  is dead-lettered with the product's reason; otherwise the value goes out unchanged to the
  by-policy topic, keyed by the policy id (partition: the producer's partitioner, as the
  product leaves it), with the input headers less the route's own plus ``x-record: event``,
  ``x-source`` and the source partition's watermark before the event.  At the end of the batch,
  every source partition whose watermark moved sends one watermark record to every by-policy
  partition and writes its watermark to the route changelog (key ``topic:partition``,
  changelog partition = source partition).  The watermark is restored from the route changelog
  on assignment (the routed headers depend on it).
* **Decode and keep** (per by-policy partition, what ``_DecodeAndKeep`` does): records whose
  ``x-record`` is not ``event`` are skipped (read and committed); each event is decoded with the
  product's :class:`~processors.contract.Codec` (the bench's ``CODEC``, defined here), and its
  id kept: one ledger-changelog entry per distinct id in the batch (key: the id's text, value
  ``b"1"``, no headers, changelog partition = by-policy partition), exactly what a
  ``ChangelogStore`` writes for the loop.
* **Failures**: any error of a record (undecodable, refused) dead-letters it with the product's
  :func:`~processors.runtime.failures.dead_letter` record, in the same transaction; a failed
  transaction is aborted, its state changes dropped and its partitions sought back.

Left out, none of it on the measured path: the lag statistics callback (metrics); the
transaction watchdog thread (liveness after a hung broker call); replacing a fatally broken
producer (the run stops instead); a store per partition with savepoints and undo logs (the
route's only state is a watermark it changes after the record succeeded, the keeper's writes
are made after the decode succeeded: there is nothing half-applied to roll back); folding each
batch into a committed in-memory view and restoring the ledger changelog (nothing here reads
the kept ids back); keeping revoked stores for a quick return; idle-partition notices (off in
the plumbing stage).

:func:`plumbing_floor_run` times exactly as the bench's ``_measure``: from the first fetched
batch to the moment the decode-and-keep stage has kept ``total`` events (the rest of that
batch and its commit not counted), wall and process CPU.  Afterwards it checks, read
committed, that the by-policy topic holds ``total`` events and the ledger changelog holds
exactly the entries committed, one per distinct routed event id, so a floor that drops work
cannot look fast.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Final

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.common import isolated_catalogue
from bench.harness import Run, Stopwatch
from processors.bordereaux.topology import (
    FUTURE_TOLERANCE,
    LEDGER_EVENT_TYPES,
    RECORD_HEADER,
    SOURCE_HEADER,
    WATERMARK_HEADER,
    BordereauxTopics,
    RejectedInput,
)
from processors.contract import Codec, LocalSchemaIds
from processors.errors import ValidationFailed
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.runtime.closing import close_group_consumer
from processors.runtime.failures import dead_letter

__all__ = [
    "CODEC",
    "FloorPlumbing",
    "SourceRoute",
    "client_confs",
    "plumbing_floor_run",
    "reading",
    "watermark_value",
]

CODEC = Codec(LocalSchemaIds())
"""The codec every stage of the bordereaux bench decodes with."""

APP: Final = "plumbing-floor"
POLL_TIMEOUT_S: Final = 0.2
"""The loop's ``poll_timeout_s``."""
TRANSACTION_TIMEOUT_S: Final = 30.0
"""The loop's ``transaction_timeout_s`` (every transaction call's timeout)."""
NO_RECORD_LIMIT_S: Final = 300.0
"""A run that fetches nothing for this long fails instead of waiting for ever."""
RESTORE_LIMIT_S: Final = 300.0
"""Restoring the route watermarks on assignment fails after this long (the product's restore deadline)."""

ROUTE_HEADERS: Final = frozenset({RECORD_HEADER, SOURCE_HEADER, WATERMARK_HEADER})
_EVENT: Final = (RECORD_HEADER, b"event")
_WATERMARK: Final = [(RECORD_HEADER, b"watermark")]
_KEPT: Final = b"1"
_FENCED: Final = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})
_PASSING: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
"""What a watermark query answers while a new partition's leader is not known yet (the
product's restore passes the same)."""


def reading(topics: BordereauxTopics, source_prefix: str) -> BordereauxTopics:
    """``topics`` reading the events published under ``source_prefix``."""
    return dataclasses.replace(
        topics,
        policy_events=f"{source_prefix}insurance.policy.events",
        claim_events=f"{source_prefix}insurance.claim.events",
    )


def client_confs(bootstrap: str, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(consumer, producer) settings: the plumbing stage's values, the consumer with the
    exactly-once loop's invariants; the group and transactional id are this stage's own."""
    consumer = KafkaClients.exactly_once_consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}{APP}",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    producer = {
        "bootstrap.servers": bootstrap,
        "transactional.id": f"{prefix}{APP}.bench",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
    }
    return consumer, producer


def watermark_value(source: str, watermark: str) -> bytes:
    """The value of a watermark record: ``{"src": ..., "wm": ...}`` as the route stage writes it."""
    return json.dumps({"src": source, "wm": watermark}, separators=(",", ":"), ensure_ascii=False).encode()


class SourceRoute:
    """One source partition's routing: its event-time watermark (its route-changelog entry)."""

    __slots__ = (
        "committed",
        "moved",
        "partition",
        "source",
        "source_bytes",
        "topic",
        "watermark",
        "watermark_bytes",
    )

    def __init__(self, topic: str, partition: int, restored: bytes | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.source = f"{topic}:{partition}"
        self.source_bytes = self.source.encode()
        self.watermark: datetime | None = datetime.fromisoformat(restored.decode()) if restored else None
        self.watermark_bytes = b"" if self.watermark is None else self.watermark.isoformat().encode()
        self.committed = (self.watermark, self.watermark_bytes)
        self.moved = False

    def route(
        self, codec: Codec, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None, latest: datetime
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The by-policy key and headers of one source event (the value goes unchanged); raises
        what the record is dead-lettered with.  ``latest``: the latest ``occurred_at`` allowed."""
        peek = codec.peek(value, headers)
        if peek.event_type not in LEDGER_EVENT_TYPES:
            raise RejectedInput(f"event type {peek.event_type[:80]!r} is not expected on {self.topic}")
        policy_id = peek.data.get("policy_id")
        if not isinstance(policy_id, str) or not policy_id:
            raise ValidationFailed("data.policy_id is missing or not a string")
        occurred_at = peek.occurred_at
        if occurred_at > latest:
            raise ValidationFailed(f"occurred_at is more than {FUTURE_TOLERANCE} in the future")
        out = [h for h in headers or () if h[0] not in ROUTE_HEADERS]
        out.append(_EVENT)
        out.append((SOURCE_HEADER, self.source_bytes))
        watermark = self.watermark
        if watermark is not None:
            out.append((WATERMARK_HEADER, self.watermark_bytes))
        if watermark is None or occurred_at > watermark:
            self.watermark = occurred_at
            self.watermark_bytes = occurred_at.isoformat().encode()
            self.moved = True
        return policy_id.encode(), out

    def commit(self) -> None:
        self.committed = (self.watermark, self.watermark_bytes)
        self.moved = False

    def abort(self) -> None:
        self.watermark, self.watermark_bytes = self.committed
        self.moved = False


def _error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


class FloorPlumbing:
    """Both stages over one consumer and one transactional producer, one transaction per batch."""

    def __init__(
        self,
        *,
        consumer: Any,
        producer: Any,
        restorer: Any,
        topics: BordereauxTopics,
        by_policy_partitions: int,
        total: int,
        group: str,
        app: str = APP,
        codec: Codec = CODEC,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.restorer = restorer
        self.topics = topics
        self.sources = frozenset({topics.policy_events, topics.claim_events})
        self.by_policy_partitions = by_policy_partitions
        self.total = total
        self.group = group
        self.app = app
        self.codec = codec
        self.routes: dict[tuple[str, int], SourceRoute] = {}
        self.kept_ids: dict[int, dict[str, bytes]] = {}
        """Per by-policy partition, the ids kept in the open transaction (its changelog entries)."""
        self.kept = 0
        """Events the decode-and-keep stage kept in committed transactions."""
        self.entries = 0
        """Ledger-changelog entries written in committed transactions."""
        self.transactions = 0
        self.records = 0
        self.watch: Stopwatch | None = None
        self.run: Run | None = None
        """Taken when ``kept`` reaches ``total`` (the measurement)."""
        self.failure: Exception | None = None
        """What went wrong in a rebalance callback (the run loop raises it)."""

    # --- rebalance (called from the consumer's poll, between batches) ------------------------

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        sources = [(tp.topic, tp.partition) for tp in partitions if tp.topic in self.sources]
        try:
            restored = self._restore_watermarks(sources)
        except Exception as exc:
            # Raised inside the client's poll it would not reach the caller as an exception
            # (the run's thread dies and the bench waits for ever): the run loop raises it.
            self.failure = exc
            return
        for tp in partitions:
            if tp.topic == self.topics.by_policy:
                self.kept_ids[tp.partition] = {}
            elif tp.topic in self.sources:
                restored_mark = restored.get(f"{tp.topic}:{tp.partition}")
                self.routes[(tp.topic, tp.partition)] = SourceRoute(tp.topic, tp.partition, restored_mark)

    def on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.routes.pop((tp.topic, tp.partition), None)
            if tp.topic == self.topics.by_policy:
                self.kept_ids.pop(tp.partition, None)

    def _restore_watermarks(self, sources: list[tuple[str, int]]) -> dict[str, bytes]:
        """The route changelog's last committed watermark of each source partition (source
        partition n is kept in changelog partition n, shared by both source topics)."""
        changelog = self.topics.route_changelog
        wanted = {f"{topic}:{partition}" for topic, partition in sources}
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        deadline = time.monotonic() + RESTORE_LIMIT_S
        for partition in sorted({partition for _, partition in sources}):
            low, high = self._watermarks(TopicPartition(changelog, partition), deadline)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(changelog, partition, low))
        found: dict[str, bytes] = {}
        if not ends:
            return found
        self.restorer.assign(starts)
        try:
            while ends:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.app}: restoring {changelog} took longer than {RESTORE_LIMIT_S:.0f} s"
                    )
                for msg in self.restorer.consume(10_000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                            continue
                        raise KafkaException(err)
                    key = (msg.key() or b"").decode()
                    if key in wanted:
                        value = msg.value()
                        if value is None:
                            found.pop(key, None)
                        else:
                            found[key] = value
                for partition, end in list(ends.items()):
                    if self.restorer.position([TopicPartition(changelog, partition)])[0].offset >= end:
                        del ends[partition]
        finally:
            self.restorer.unassign()
        return found

    def _watermarks(self, tp: TopicPartition, deadline: float) -> tuple[int, int]:
        """The partition's (low, high) offsets, asked again while its leader is not known yet
        (right after the run's topics were created), as the product's restore does."""
        pause_s = 0.1
        while True:
            try:
                low, high = self.restorer.get_watermark_offsets(tp, timeout=15, cached=False)
                return int(low), int(high)
            except KafkaException as exc:
                error = _error(exc)
                passing = error is not None and (error.retriable() or error.code() in _PASSING)
                if not passing or time.monotonic() + pause_s > deadline:
                    raise
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 2.0)

    # --- one batch, one transaction ---------------------------------------------------------

    def step(self, msgs: list[Any]) -> None:
        producer = self.producer
        produce = producer.produce
        by_policy = self.topics.by_policy
        ledger_changelog = self.topics.ledger_changelog
        routes = self.routes
        kept_ids = self.kept_ids
        codec = self.codec
        decode = codec.decode
        latest = datetime.now(UTC) + FUTURE_TOLERANCE
        offsets: dict[tuple[str, int], int] = {}
        moved: list[SourceRoute] = []
        kept = self.kept
        entries = 0
        try:
            producer.begin_transaction()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise RuntimeError(f"{self.app}: fatal consumer error: {err.str()}")
                    raise KafkaException(err)
                topic = msg.topic()
                partition = msg.partition()
                if topic == by_policy:
                    ids = kept_ids.get(partition)
                    if ids is None:
                        continue  # revoked
                    offsets[(topic, partition)] = msg.offset() + 1
                    headers = msg.headers()
                    if dict(headers or ()).get(RECORD_HEADER) != b"event":
                        continue  # the route stage's watermark records
                    try:
                        event = decode(msg.value(), headers)
                    except Exception as exc:
                        self._dead_letter(msg, exc)
                        continue
                    ids[str(event.event_id)] = _KEPT
                    kept += 1
                    if kept == self.total and self.watch is not None:
                        self.run = self.watch.stop(kept)
                else:
                    route = routes.get((topic, partition))
                    if route is None:
                        continue  # revoked
                    offsets[(topic, partition)] = msg.offset() + 1
                    value = msg.value()
                    try:
                        key, headers = route.route(codec, value, msg.headers(), latest)
                    except Exception as exc:
                        self._dead_letter(msg, exc)
                        continue
                    try:
                        produce(by_policy, key=key, value=value, headers=headers)
                    except BufferError:
                        self._send(by_policy, key, value, headers, None)
            # The batch's end: every watermark that moved goes to every by-policy partition.
            moved = [route for route in routes.values() if route.moved]
            for route in moved:
                assert route.watermark is not None
                mark = watermark_value(route.source, route.watermark.isoformat())
                for partition in range(self.by_policy_partitions):
                    self._send(by_policy, None, mark, _WATERMARK, partition)
            # The state changes: the route watermarks, the kept ids.
            for route in moved:
                self._send(
                    self.topics.route_changelog,
                    route.source.encode(),
                    route.watermark_bytes,
                    None,
                    route.partition,
                )
            for partition, ids in kept_ids.items():
                for text in ids:
                    try:
                        produce(ledger_changelog, key=text.encode(), value=_KEPT, partition=partition)
                    except BufferError:
                        self._send(ledger_changelog, text.encode(), _KEPT, None, partition)
                entries += len(ids)
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    self.consumer.consumer_group_metadata(),
                    TRANSACTION_TIMEOUT_S,
                )
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            self._abort(exc, msgs)
            return
        for route in moved:
            route.commit()
        for ids in kept_ids.values():
            ids.clear()
        self.kept = kept
        self.entries += entries
        self.transactions += 1
        self.records += len(msgs)

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None,
    ) -> None:
        """One record into the open transaction, waiting while the producer's queue is full."""
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _dead_letter(self, msg: Any, exc: BaseException) -> None:
        record = dead_letter(msg, exc, topic=self.topics.dlq, app=self.app, group=self.group, attempts=1)
        self._send(record.topic, record.key, record.value, record.headers, None)

    def _abort(self, exc: KafkaException, msgs: list[Any]) -> None:
        """Drop the batch: abort its transaction, forget its state changes, read it again."""
        error = _error(exc)
        if error is not None and (error.code() in _FENCED or error.fatal()):
            raise RuntimeError(f"{self.app}: the producer cannot go on: {exc}") from exc
        self.producer.abort_transaction(TRANSACTION_TIMEOUT_S)
        for route in self.routes.values():
            route.abort()
        for ids in self.kept_ids.values():
            ids.clear()
        self.run = None  # ``kept`` is still the committed count: the batch is read again
        first: dict[tuple[str, int], int] = {}
        for msg in msgs:
            if msg.error() is None:
                first.setdefault((msg.topic(), msg.partition()), msg.offset())
        for (topic, partition), offset in first.items():
            if (topic, partition) in self.routes or (
                topic == self.topics.by_policy and partition in self.kept_ids
            ):
                self.consumer.seek(TopicPartition(topic, partition, offset))


def _read_committed(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of ``topic``, read to the end of each partition."""
    consumer = confluent_kafka.Consumer(KafkaClients(bootstrap).reader(f"{APP}-check", eof=True))
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions])
        left = set(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 120
        while left:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{APP}: reading {topic} back took longer than 120 s")
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    records.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    left.discard(msg.partition())
                else:
                    raise KafkaException(err)
        return records
    finally:
        consumer.close()


def _check(bootstrap: str, topics: BordereauxTopics, total: int, entries: int) -> None:
    """The work was done and committed: ``total`` routed events on by-policy, and on the ledger
    changelog exactly the entries committed, one per distinct routed event id."""
    routed = [
        m
        for m in _read_committed(bootstrap, topics.by_policy)
        if dict(m.headers() or ()).get(RECORD_HEADER) == b"event"
    ]
    if len(routed) != total:
        raise AssertionError(f"{APP}: {len(routed):,} routed events committed, not {total:,}")
    ids = {str(CODEC.decode(m.value(), m.headers()).event_id) for m in routed}
    kept = _read_committed(bootstrap, topics.ledger_changelog)
    keys = {(m.key() or b"").decode() for m in kept}
    if len(kept) != entries or keys != ids or any(m.value() != _KEPT or m.headers() for m in kept):
        raise AssertionError(
            f"{APP}: the ledger changelog holds {len(kept):,} entries for {len(keys):,} ids; "
            f"{entries:,} entries were committed for {len(ids):,} distinct routed event ids"
        )


def plumbing_floor_run(bootstrap: str, source_prefix: str, total: int, batch_size: int) -> Run:
    """The floor over the published events, into fresh topics of its own, timed from its first
    record to its ``total``-th kept event, then checked."""
    with TemporaryDirectory() as tmp:
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
    topics = reading(BordereauxTopics.with_prefix(prefix), source_prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=15)
    by_policy_partitions = len(metadata.topics[topics.by_policy].partitions)
    consumer_conf, producer_conf = client_confs(bootstrap, prefix)
    launched = time.perf_counter()
    producer = confluent_kafka.Producer(producer_conf)
    producer.init_transactions(TRANSACTION_TIMEOUT_S)
    consumer = confluent_kafka.Consumer(consumer_conf)
    restorer = confluent_kafka.Consumer(KafkaClients.restorer_of(consumer_conf))
    floor = FloorPlumbing(
        consumer=consumer,
        producer=producer,
        restorer=restorer,
        topics=topics,
        by_policy_partitions=by_policy_partitions,
        total=total,
        group=KafkaClients.group_of(consumer_conf),
    )
    consumer.subscribe(
        sorted({*floor.sources, topics.by_policy}),
        on_assign=floor.on_assign,
        on_revoke=floor.on_revoke,
        on_lost=floor.on_revoke,
    )
    first = 0.0
    try:
        quiet_since = time.monotonic()
        while floor.run is None:
            msgs = fetch(consumer, batch_size, POLL_TIMEOUT_S)
            if floor.failure is not None:
                raise RuntimeError(f"{APP}: assignment failed: {floor.failure}") from floor.failure
            if not msgs:
                if time.monotonic() - quiet_since > NO_RECORD_LIMIT_S:
                    raise RuntimeError(f"{APP}: no record for {NO_RECORD_LIMIT_S:.0f} s")
                continue
            if floor.watch is None:
                first = time.perf_counter()
                floor.watch = Stopwatch()
            floor.step(msgs)
            quiet_since = time.monotonic()
    finally:
        close_group_consumer(consumer, what=APP)
        restorer.close()
        producer.flush(10)
        del producer
    assert floor.run is not None
    print(
        f"  {APP}: start-up {first - launched:.1f} s before its first record (not counted); "
        f"{floor.transactions} transactions, {floor.records} records"
    )
    _check(bootstrap, topics, total, floor.entries)
    return floor.run
