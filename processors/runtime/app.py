"""Base class for integration apps that consume contract events.

An ``EventApp`` decodes each record with the contract codec, checks that the Kafka key is the
event's subject, keeps one key's events in order across retries (see ``routing``), hands
events of the types it handles to ``handle()`` and encodes what it returns.  Everything that
goes wrong ends in ``failure()``: the next retry tier, the dead-letter topic or the parking
topic, with the reason in the headers.

Subclasses implement ``handle`` only; the mapping they call (event → request, response →
result) lives in modules that import neither Kafka nor an HTTP library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import ClassVar

from processors.contract import Codec, ContentType, Event
from processors.errors import ValidationFailed
from processors.resilience.guard import ATTEMPTS, TRACEPARENT
from processors.runtime.failures import H
from processors.runtime.message import KafkaMessage, OutRecord, header_value
from processors.runtime.routing import RetryRouter, pending_from_tiers
from processors.topics.catalogue import AppTopics

__all__ = ["ATTEMPTS", "Emit", "EventApp", "PendingReader", "RetryGateMixin"]

Emit = tuple[str, Event]
"""(topic, event) an app wants published, keyed by the event's subject."""

TP = tuple[str, int]

_CURRENT: ContextVar[tuple[str | None, int | None, int | None] | None] = ContextVar(
    "processors_record", default=None
)
"""The record the current lane is processing (so attempts add up across backpressure waits)."""

PendingReader = Callable[[Sequence[TP]], Sequence[KafkaMessage]]
"""Reads the records still pending (past the group's committed offsets) in the given partitions."""


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


class EventApp(RetryGateMixin):
    name: ClassVar[str]
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
    ) -> None:
        self.codec = codec
        self.topics = topics
        self.router = RetryRouter(
            topics, app=self.name, replay_limit=replay_limit, keep_key_order=keep_key_order
        )
        self.output_content_type = output_content_type
        self.source = f"processors/{self.name}"
        self._sources = (*topics.sources, *(tier.topic for tier in topics.retry_tiers))
        self._pending_reader = pending_reader

    @property
    def sources(self) -> Sequence[str]:
        """The app's input topics and its retry tiers: one consumer group reads them all."""
        return self._sources

    async def start(self) -> None:
        """Open connections (adapters).  No I/O happens in ``__init__``."""

    async def stop(self) -> None:
        """Close what ``start`` opened."""

    async def handle(self, event: Event) -> Sequence[Emit]:
        raise NotImplementedError

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        headers = msg.headers()
        event = self.codec.decode(msg.value(), headers)
        key = msg.key()
        if key is None:
            raise ValidationFailed(f"message key is missing; it must be the subject ({event.event_type})")
        if key != event.subject.encode():
            raise ValidationFailed(f"message key does not match the event subject ({event.event_type})")
        if event.event_type not in self.handles:
            return ()
        if self.router.already_in_retry(msg):
            return ()
        forward = self.router.follow(msg)
        if forward is not None:
            return [forward]
        identity = (msg.topic(), msg.partition(), msg.offset())
        if _CURRENT.get() != identity:  # a new record, not the same one again after a backpressure wait
            _CURRENT.set(identity)
            ATTEMPTS.set(0)
        TRACEPARENT.set(header_value(headers, "traceparent"))
        emitted = await self.handle(event)
        self.router.succeeded(msg)
        previous = header_value(headers, H.ATTEMPTS)
        attempts = (int(previous) if previous and previous.isdigit() else 0) + max(ATTEMPTS.get(), 1)
        traceparent = header_value(headers, "traceparent")
        return [self.record(topic, out, traceparent=traceparent, attempts=attempts) for topic, out in emitted]

    def record(
        self, topic: str, event: Event, *, traceparent: str | None = None, attempts: int = 1
    ) -> OutRecord:
        value, headers = self.codec.encode(event, self.output_content_type, traceparent=traceparent)
        headers.append((H.ATTEMPTS, str(attempts).encode()))
        return OutRecord(topic=topic, key=event.subject.encode(), value=value, headers=headers)

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        identity = (msg.topic(), msg.partition(), msg.offset())
        attempts = ATTEMPTS.get() if _CURRENT.get() == identity else 0
        return [self.router.failed(msg, exc, group=group, attempts=max(attempts, 1))]
