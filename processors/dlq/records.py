"""A dead letter as the tooling sees it: coordinates, key, headers and the (never printed) value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from processors.dlq.rewrite import replay_count
from processors.runtime.failures import H
from processors.runtime.message import KafkaMessage, header_value

__all__ = ["DeadLetter", "format_key", "format_time", "headers_as_text", "parse_time"]


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime (naive means UTC); ``None`` if unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def format_time(when: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds, the format of ``x-failed-at`` (``None`` stays ``None``)."""
    return None if when is None else when.astimezone(UTC).isoformat(timespec="milliseconds")


def format_key(key: bytes | None) -> str | None:
    """A record key as text: UTF-8 when it is, else ``0x`` and hex digits."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + key.hex()


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic.

    ``value`` may hold personal data: it is kept out of the repr and of :meth:`summary`.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: tuple[tuple[str, bytes], ...] = field(repr=False, default=())
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: KafkaMessage) -> DeadLetter:
        ts_type, ts = msg.timestamp()
        headers = tuple((name, value if value is not None else b"") for name, value in msg.headers() or ())
        return cls(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            headers=headers,
            timestamp_ms=ts if ts_type else None,
        )

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text, or ``None``."""
        return header_value(self.headers, name)

    @property
    def error_class(self) -> str | None:
        return self.header(H.ERROR_CLASS)

    @property
    def error_message(self) -> str | None:
        return self.header(H.ERROR_MESSAGE)

    @property
    def original_topic(self) -> str | None:
        return self.header(H.ORIGINAL_TOPIC) or None

    @property
    def original_partition(self) -> int | None:
        return _int(self.header(H.ORIGINAL_PARTITION))

    @property
    def original_offset(self) -> int | None:
        return _int(self.header(H.ORIGINAL_OFFSET))

    @property
    def app(self) -> str | None:
        return self.header(H.APP)

    @property
    def replay_count_text(self) -> str | None:
        return self.header(H.REPLAY_COUNT)

    @property
    def timestamp(self) -> datetime | None:
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return None
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    @property
    def failed_at(self) -> datetime | None:
        """``x-failed-at``, or the record timestamp when the header is missing or unreadable."""
        return parse_time(self.header(H.FAILED_AT)) or self.timestamp

    @property
    def value_size(self) -> int:
        return len(self.value) if self.value is not None else 0

    def summary(self, *, message_chars: int | None = None) -> dict[str, Any]:
        """What ``dlq list`` shows of this record: everything but the value (JSON-safe)."""
        message = self.error_message
        if message is not None and message_chars is not None and len(message) > message_chars:
            message = message[: message_chars - 1] + "…"
        return {
            "partition": self.partition,
            "offset": self.offset,
            "failed_at": format_time(self.failed_at),
            "key": format_key(self.key),
            "error_class": self.error_class,
            "error_message": message,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "replay_count": replay_count(self.headers),
            "app": self.app,
        }


def headers_as_text(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """Header values as UTF-8 text, or ``0x`` and hex digits when they are not UTF-8."""
    shown: list[tuple[str, str]] = []
    for name, value in headers:
        try:
            shown.append((name, value.decode("utf-8")))
        except UnicodeDecodeError:
            shown.append((name, "0x" + value.hex()))
    return shown
