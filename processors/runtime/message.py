"""The shape of a Kafka record as the runtime sees it.

``KafkaMessage`` is a Protocol so that handlers and the scheduler can be unit-tested with a
tiny fake; ``confluent_kafka.Message`` satisfies it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["HeaderList", "KafkaMessage", "OutRecord", "StaticMessage", "header_value"]

HeaderList = list[tuple[str, bytes]]


class KafkaMessage(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record the app wants produced.  Offsets are committed only once it is acknowledged."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: HeaderList = field(default_factory=list)
    partition: int | None = None
    """Explicit partition (retry, DLQ and parking topics keep the source's partition number so
    a key stays co-partitioned whatever partitioner its producer used); None: by key."""


@dataclass(frozen=True, slots=True)
class StaticMessage:
    """An in-memory ``KafkaMessage`` (tests, replays, synthetic inputs)."""

    topic_: str
    partition_: int
    offset_: int
    key_: bytes | None
    value_: bytes | None
    headers_: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int = 0

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> Sequence[tuple[str, bytes | None]]:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.timestamp_ms)


def header_value(headers: Sequence[tuple[str, bytes | str | None]] | None, name: str) -> str | None:
    """The last value of header ``name`` decoded as UTF-8, or None."""
    if not headers:
        return None
    found: str | None = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return found
