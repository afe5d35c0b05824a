"""The app template: the per-record pipeline every engine app shares, written once.

:class:`RecordApp` owns the pipeline: decode, skip what is not for the app, the key-order
gate across retry tiers (see ``routing``), the record context (:mod:`processors.context`:
calls, attempts, traceparent), outputs stamped with ``x-attempts`` and ``traceparent``, and
the failure route (the next retry tier, the dead-letter topic or the parking topic, with the
reason in the headers), and, for an app that declares ``dedupe`` in ``topics.yaml``, dropping
event ids it already answered (:mod:`processors.runtime.dedupe`).  An app supplies only
``decode`` and ``handle`` (and, if it answers for failures on a topic of its own,
``on_failed``; if it de-duplicates, ``dedupe_key``).

:class:`EventApp` is the template for apps that consume contract events: it decodes with the
contract codec, checks that the Kafka key is the event's subject, hands events of the types it
handles to ``handle()`` and encodes what it returns.  The mapping apps call (event → request,
response → result) lives in modules that import neither Kafka nor an HTTP library.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

from processors import context as record_context
from processors.context import RecordContext
from processors.contract import Codec, ContentType, Event, EventRecord
from processors.errors import DuplicateEventId, ValidationFailed
from processors.runtime.dedupe import AnsweredIds
from processors.runtime.failures import H
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.routing import RetryRouter, pending_from_tiers
from processors.topics.catalogue import AppTopics

__all__ = ["Emit", "EventApp", "PendingReader", "RecentReader", "RecordApp", "RetryGateMixin"]

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

Emit = tuple[str, Event | EventRecord]
"""(topic, event) an app wants published, keyed by the event's subject; a hot path may hand
the event over in its record form (:class:`~processors.contract.EventRecord`)."""

TP = tuple[str, int]

PendingReader = Callable[[Sequence[TP]], Sequence[KafkaMessage]]
"""Reads the records still pending (past the group's committed offsets) in the given partitions."""

RecentReader = Callable[[Sequence[TP]], Sequence[KafkaMessage]]
"""Reads the records of the last dedupe window in the given partitions."""


class RetryGateMixin:
    """``on_assigned``, ``on_revoked`` and ``due_at`` for an app that owns a :class:`RetryRouter`.

    The app sets ``router``, ``topics`` and ``_pending_reader`` (None: nothing to rebuild from)
    in its constructor.  On assignment the key-order gate is rebuilt from the records still
    pending in the assigned retry-tier partitions; on revocation the revoked partitions leave it.
    """

    router: RetryRouter
    topics: AppTopics
    _pending_reader: PendingReader | None

    async def on_assigned(self, partitions: Sequence[TP]) -> None:
        """Rebuild the key-order gate from the retry tiers before any record runs."""
        await self.rebuild_gate(partitions)

    async def rebuild_gate(
        self, partitions: Sequence[TP], *, only: Callable[[KafkaMessage], bool] | None = None
    ) -> None:
        """Rebuild the gate from the pending records of the retry tiers among ``partitions``.

        ``only`` keeps the records that take part in key order (all of them when None).
        """
        if not self.router.keep_key_order or self._pending_reader is None:
            return
        tiers = [tp for tp in partitions if tp[0] in self.router.tier_topics]
        if not tiers:
            return
        reader = self._pending_reader
        records = await asyncio.get_running_loop().run_in_executor(None, reader, tiers)
        if only is not None:
            records = [record for record in records if only(record)]
        self.router.gate.rebuild(pending_from_tiers(records, self.topics.retry_tiers))

    async def on_revoked(self, partitions: Sequence[TP]) -> None:
        self.router.gate.drop_partitions({p for _, p in partitions})

    def due_at(self, msg: KafkaMessage) -> float | None:
        return self.router.due_at(msg)


class RecordApp(RetryGateMixin, Generic[In, Out]):
    """The per-record pipeline of an engine app; see the module doc.

    A subclass sets ``name``, builds ``router``/``topics``/``_pending_reader``/``_sources`` by
    calling :meth:`setup`, and implements :meth:`decode`, :meth:`handle` and :meth:`records`.
    """

    name: ClassVar[str]

    def setup(
        self,
        topics: AppTopics,
        *,
        replay_limit: int,
        keep_key_order: bool,
        pending_reader: PendingReader | None,
        recent_reader: RecentReader | None = None,
    ) -> None:
        """``recent_reader`` reads the dedupe topic back on assignment (None: the app starts
        each partition with no answered ids, as in unit tests)."""
        self.topics = topics
        self.router = RetryRouter(
            topics, app=self.name, replay_limit=replay_limit, keep_key_order=keep_key_order
        )
        self._sources = (*topics.sources, *(tier.topic for tier in topics.retry_tiers))
        self._pending_reader = pending_reader
        self._assigned: set[TP] = set()
        self.answered: AnsweredIds | None = None
        if topics.dedupe is not None:
            self.answered = AnsweredIds(
                topics.dedupe, topics.dedupe_window_ms / 1000, recent_reader, clock=time.time
            )

    @property
    def sources(self) -> Sequence[str]:
        """The app's input topics and its retry tiers: one consumer group reads them all."""
        return self._sources

    async def start(self) -> None:
        """Open connections (adapters).  No I/O happens in ``__init__``."""

    async def stop(self) -> None:
        """Close what ``start`` opened."""

    # --- what an app supplies ---------------------------------------------------------------

    def decode(self, msg: KafkaMessage) -> In | None:
        """The record's content, or None when it is not for this app (skipped, committed).
        Raises a ``ContractError`` for an invalid record (dead-lettered with the reason)."""
        raise NotImplementedError

    async def handle(self, item: In) -> Sequence[Out]:
        raise NotImplementedError

    def records(self, msg: KafkaMessage, outputs: Sequence[Out], context: RecordContext) -> list[OutRecord]:
        """The Kafka records for what ``handle`` returned (stamped afterwards)."""
        raise NotImplementedError

    def on_failed(self, msg: KafkaMessage, exc: Exception, moved: OutRecord) -> Sequence[OutRecord]:
        """What to publish for a record that failed: ``moved`` (its retry-tier, dead-letter or
        parking copy) and anything the app answers for failures with."""
        return [moved]

    def counts_as_attempt(self, exc: Exception) -> bool:
        """Whether a failure without any external call still counts one attempt."""
        return True

    def dedupe_key(self, item: In) -> bytes | None:
        """The id answered once per window (apps that declare ``dedupe``); None: never dropped."""
        return None

    def dedupe_digest(self, item: In) -> bytes:
        """A digest of ``item``'s content: a record with an answered id and another digest is
        refused as :class:`DuplicateEventId` instead of dropped."""
        return b""

    # --- assignment --------------------------------------------------------------------------

    async def on_assigned(self, partitions: Sequence[TP]) -> None:
        """Read back the answered ids, then rebuild the key-order gate, before any record runs."""
        self._assigned.update(partitions)
        if self.answered is not None:
            loaded = await self.answered.restore({p for _, p in partitions})
            if loaded:
                log.info("app %s: %d answered event ids read back", self.name, loaded)
        await self.rebuild_gate(partitions)

    async def on_revoked(self, partitions: Sequence[TP]) -> None:
        await super().on_revoked(partitions)
        self._assigned.difference_update(partitions)
        if self.answered is not None:
            held = {p for _, p in self._assigned}
            self.answered.drop({p for _, p in partitions} - held)

    def acknowledged(self, records: Sequence[OutRecord]) -> None:
        """The broker acknowledged ``records`` (the engine calls this after each batch)."""
        if self.answered is not None:
            self.answered.acknowledged(records)

    # --- the pipeline -----------------------------------------------------------------------

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        item = self.decode(msg)
        if item is None:
            return ()
        if self.router.already_in_retry(msg):
            return ()
        forward = self.router.follow(msg)
        if forward is not None:
            return [forward]
        answered = self.answered
        event_id = None if answered is None else self.dedupe_key(item)
        digest = b""
        if event_id is not None:
            assert answered is not None
            digest = self.dedupe_digest(item)
            before = answered.answered(msg.partition() or 0, event_id)
            if before is not None:
                if before and before != digest:
                    raise DuplicateEventId(
                        f"event id {event_id.decode('ascii', 'replace')} was answered before with "
                        "different content: an id reused for another event"
                    )
                # answered before: like a success that writes nothing (the key moves on)
                answered.dropped += 1
                self.router.succeeded(msg)
                return ()
        context = record_context.enter(msg, attempts_header=H.ATTEMPTS)
        outputs = await self.handle(item)
        self.router.succeeded(msg)
        records = [_stamp(record, context) for record in self.records(msg, outputs, context)]
        if event_id is not None:
            assert answered is not None
            records.append(answered.marker(msg.partition() or 0, event_id, digest))
        return records

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        attempts = record_context.calls_for(msg)
        if self.counts_as_attempt(exc):
            attempts = max(attempts, 1)
        moved = self.router.failed(msg, exc, group=group, attempts=attempts)
        return self.on_failed(msg, exc, moved)


def _stamp(record: OutRecord, context: RecordContext) -> OutRecord:
    """``record`` with ``x-attempts`` (replaced) and the record's ``traceparent`` (kept if set)."""
    headers = [(k, v) for k, v in record.headers if k != H.ATTEMPTS]
    headers.append((H.ATTEMPTS, str(context.attempts).encode()))
    if context.traceparent is not None and not any(k == "traceparent" for k, _ in headers):
        headers.append(("traceparent", context.traceparent.encode()))
    return OutRecord(topic=record.topic, key=record.key, value=record.value, headers=headers)


class EventApp(RecordApp[Event, Emit]):
    """An app of contract events: decoded by the codec, keyed by their subject."""

    handles: ClassVar[frozenset[str]]

    def __init__(
        self,
        *,
        codec: Codec,
        topics: AppTopics,
        output_content_type: ContentType = ContentType.AVRO,
        replay_limit: int = 3,
        keep_key_order: bool = True,
        pending_reader: PendingReader | None = None,
        recent_reader: RecentReader | None = None,
    ) -> None:
        self.codec = codec
        self.output_content_type = output_content_type
        self.source = f"processors/{self.name}"
        self.setup(
            topics,
            replay_limit=replay_limit,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
            recent_reader=recent_reader,
        )

    def dedupe_key(self, item: Event) -> bytes | None:
        return str(item.event_id).encode()

    def dedupe_digest(self, item: Event) -> bytes:
        # the event's content whatever its encoding (Avro or JSON, any schema version)
        content = item.model_dump_json(include={"event_type", "subject", "data"}).encode()
        return hashlib.sha256(content).digest()[:16]

    def decode(self, msg: KafkaMessage) -> Event | None:
        event = self.codec.decode(msg.value(), msg.headers())
        key = msg.key()
        if key is None:
            raise ValidationFailed(f"message key is missing; it must be the subject ({event.event_type})")
        if key != event.subject.encode():
            raise ValidationFailed(f"message key does not match the event subject ({event.event_type})")
        if event.event_type not in self.handles:
            return None
        return event

    def records(self, msg: KafkaMessage, outputs: Sequence[Emit], context: RecordContext) -> list[OutRecord]:
        return [self.record(topic, event, traceparent=context.traceparent) for topic, event in outputs]

    def record(self, topic: str, event: Event | EventRecord, *, traceparent: str | None = None) -> OutRecord:
        if isinstance(event, EventRecord):
            value, headers = self.codec.encode_record(
                event, self.output_content_type, traceparent=traceparent
            )
        else:
            value, headers = self.codec.encode(event, self.output_content_type, traceparent=traceparent)
        return OutRecord(topic=topic, key=event.subject.encode(), value=value, headers=headers)
