"""Where failed input goes, and the headers that say why.

Every record the runtime writes to a retry or dead-letter topic carries the same provenance
headers (DESIGN.md §6).  They are *replaced*, never appended: a record that fails twice has
one ``x-error-class``, not two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from processors.errors import ContractError, Permanent, ProcessorsError
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord

__all__ = [
    "ERROR_MESSAGE_MAX_CHARS",
    "PROVENANCE_HEADERS",
    "H",
    "dead_letter",
    "describe_error",
    "strip_provenance",
]

ERROR_MESSAGE_MAX_CHARS = 480


class H:
    """Header names (all start with ``x-``)."""

    ORIGINAL_TOPIC = "x-original-topic"
    ORIGINAL_PARTITION = "x-original-partition"
    ORIGINAL_OFFSET = "x-original-offset"
    ORIGINAL_TIMESTAMP = "x-original-timestamp"
    GROUP = "x-consumer-group"
    APP = "x-app"
    ATTEMPTS = "x-attempts"
    FAILED_AT = "x-failed-at"
    DUE_AT = "x-due-at"
    ERROR_CLASS = "x-error-class"
    ERROR_MESSAGE = "x-error-message"
    REPLAY_COUNT = "x-replay-count"
    RETRY_HOPS = "x-retry-hops"
    """How many times the record itself failed into a retry tier (a record forwarded behind an
    earlier one of its key sits in that one's tier without having failed)."""
    VALUE_TRUNCATED = "x-value-truncated"
    """``true`` on a dead letter whose value is only an excerpt: the original was too large for
    the topic.  The full value stays at ``x-original-topic``/``-partition``/``-offset``."""
    VALUE_SIZE = "x-value-size"
    VALUE_SHA256 = "x-value-sha256"


PROVENANCE_HEADERS = frozenset(v for k, v in vars(H).items() if k.isupper())


def strip_provenance(headers: Sequence[tuple[str, bytes | None]] | None) -> HeaderList:
    """The message's own headers without any provenance header of ours."""
    kept: HeaderList = []
    for key, value in headers or ():
        if key not in PROVENANCE_HEADERS:
            kept.append((key, value if value is not None else b""))
    return kept


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(error class, short message) safe to put in headers and logs.

    Project errors are written to carry no PII; any other exception may, so only its type
    is recorded and the details stay in the (redacted) logs.
    """
    if isinstance(exc, ContractError):
        message = exc.reason
    elif isinstance(exc, ProcessorsError):
        message = str(exc)
    else:
        message = f"unexpected {type(exc).__name__} in the handler; see the processor's logs"
    if len(message) > ERROR_MESSAGE_MAX_CHARS:
        message = message[: ERROR_MESSAGE_MAX_CHARS - 1] + "…"
    return type(exc).__name__, message


def dead_letter(
    msg: KafkaMessage,
    exc: BaseException,
    *,
    topic: str,
    app: str,
    group: str,
    attempts: int,
    now: datetime | None = None,
) -> OutRecord:
    """The record that parks ``msg`` on ``topic`` (a DLQ) with the reason in its headers."""
    error_class, message = describe_error(exc)
    original = _original_provenance(msg)
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    headers = strip_provenance(msg.headers())
    headers.extend(
        [
            (H.ORIGINAL_TOPIC, original[0].encode()),
            (H.ORIGINAL_PARTITION, original[1].encode()),
            (H.ORIGINAL_OFFSET, original[2].encode()),
            (H.ORIGINAL_TIMESTAMP, original[3].encode()),
            (H.GROUP, group.encode()),
            (H.APP, app.encode()),
            (H.ATTEMPTS, str(attempts).encode()),
            (H.FAILED_AT, when.encode()),
            (H.ERROR_CLASS, error_class.encode()),
            (H.ERROR_MESSAGE, message.encode()),
            (H.REPLAY_COUNT, (_header(msg, H.REPLAY_COUNT) or "0").encode()),
        ]
    )
    return OutRecord(topic=topic, key=msg.key(), value=msg.value(), headers=headers)


EXCERPT_BYTES = 16 * 1024
"""How much of a too-large value a dead letter keeps: enough to see what it was, small enough to
fit any topic (Kafka's smallest useful ``max.message.bytes`` is far above it)."""


class OutputTooLarge(Permanent):
    """An output of the handler is larger than its topic accepts: the input is dead-lettered."""


def is_terminal_copy(record: OutRecord) -> bool:
    """A dead letter or parked record (failure headers, no due time), not a retry-tier copy."""
    names = {key for key, _ in record.headers}
    return H.ERROR_CLASS in names and H.DUE_AT not in names


def fitted(record: OutRecord, *, excerpt_bytes: int = EXCERPT_BYTES) -> OutRecord:
    """``record`` (a dead letter) with its value cut to an excerpt, and the whole value's size and
    sha256 in headers: the original stays where the provenance headers point.  Key and the other
    headers are kept."""
    value = record.value or b""
    headers = [
        (k, v) for k, v in record.headers if k not in (H.VALUE_TRUNCATED, H.VALUE_SIZE, H.VALUE_SHA256)
    ]
    headers.extend(
        [
            (H.VALUE_TRUNCATED, b"true"),
            (H.VALUE_SIZE, str(len(value)).encode()),
            (H.VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
    )
    return OutRecord(
        topic=record.topic,
        key=record.key,
        value=value[:excerpt_bytes],
        headers=headers,
        partition=record.partition,
    )


def _header(msg: KafkaMessage, name: str) -> str | None:
    for key, value in msg.headers() or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


def _original_provenance(msg: KafkaMessage) -> tuple[str, str, str, str]:
    """Where the record first entered: kept from its headers if it came through a retry topic."""
    topic = _header(msg, H.ORIGINAL_TOPIC)
    if topic is not None:
        return (
            topic,
            _header(msg, H.ORIGINAL_PARTITION) or "",
            _header(msg, H.ORIGINAL_OFFSET) or "",
            _header(msg, H.ORIGINAL_TIMESTAMP) or "",
        )
    ts_type, ts = msg.timestamp()
    return (msg.topic() or "", str(msg.partition()), str(msg.offset()), str(ts) if ts_type else "")
