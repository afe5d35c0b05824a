"""Base class for integration apps that consume contract events.

An ``EventApp`` decodes each record with the contract codec, checks that the Kafka key is the
event's subject, hands events of the types it handles to ``handle()`` and encodes what it
returns.  Everything that goes wrong ends in ``failure()``: today the app's dead-letter topic
with the reason in the headers.

Subclasses implement ``handle`` only; the mapping they call (event → request, response →
result) lives in modules that import neither Kafka nor an HTTP library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from processors.contract import Codec, ContentType, Event
from processors.errors import ValidationFailed
from processors.runtime.failures import dead_letter
from processors.runtime.message import KafkaMessage, OutRecord, header_value

__all__ = ["Emit", "EventApp"]

Emit = tuple[str, Event]
"""(topic, event) an app wants published, keyed by the event's subject."""

TP = tuple[str, int]


class EventApp:
    name: ClassVar[str]
    handles: ClassVar[frozenset[str]]

    def __init__(
        self,
        *,
        codec: Codec,
        sources: Sequence[str],
        dlq_topic: str,
        output_content_type: ContentType = ContentType.AVRO,
    ) -> None:
        self.codec = codec
        self._sources = tuple(sources)
        self.dlq_topic = dlq_topic
        self.output_content_type = output_content_type
        self.source = f"processors/{self.name}"

    @property
    def sources(self) -> Sequence[str]:
        return self._sources

    async def start(self) -> None:
        """Open connections (adapters).  No I/O happens in ``__init__``."""

    async def stop(self) -> None:
        """Close what ``start`` opened."""

    async def on_assigned(self, partitions: Sequence[TP]) -> None:
        """Partitions were assigned; stateful apps restore their store here."""

    async def on_revoked(self, partitions: Sequence[TP]) -> None:
        """Partitions were revoked or lost (their work is drained already)."""

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
        emitted = await self.handle(event)
        traceparent = header_value(headers, "traceparent")
        return [self.record(topic, out, traceparent=traceparent) for topic, out in emitted]

    def record(self, topic: str, event: Event, *, traceparent: str | None = None) -> OutRecord:
        value, headers = self.codec.encode(event, self.output_content_type, traceparent=traceparent)
        return OutRecord(topic=topic, key=event.subject.encode(), value=value, headers=headers)

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        attempts = getattr(exc, "attempts", 1)
        return [
            dead_letter(msg, exc, topic=self.dlq_topic, app=self.name, group=group, attempts=int(attempts))
        ]
