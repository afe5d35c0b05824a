"""What ``dlq show`` reveals of a dead letter's value: the event with personal data masked.

A value that decodes with the contract's :class:`~processors.contract.Codec` is shown as its
event type, id, subject and data, with the value of every field named in
:data:`~processors.contract.PII_FIELDS` replaced by ``***`` (at any depth).  A value that
does not decode is shown as its length and a hex preview of its first bytes, with the
decoder's reason (reasons are written to carry no personal data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processors.contract import PII_FIELDS, Codec
from processors.dlq.records import DeadLetter, format_key, format_time, headers_as_text
from processors.errors import ContractError, ProcessorsError
from processors.observability.redact import redact, redact_headers, redact_text

__all__ = ["HEX_PREVIEW_BYTES", "MASK", "ValueView", "describe_value", "mask_pii", "show_document"]

MASK = "***"
HEX_PREVIEW_BYTES = 64


def mask_pii(data: Any, fields: frozenset[str] = PII_FIELDS) -> Any:
    """A copy of ``data`` (JSON-like) with the value of every key in ``fields`` replaced by ``***``."""
    if isinstance(data, Mapping):
        return {key: MASK if key in fields else mask_pii(value, fields) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [mask_pii(item, fields) for item in data]
    return data


@dataclass(frozen=True)
class ValueView:
    """The printable view of a value: the masked event, or its size and first bytes."""

    size: int
    event_type: str | None = None
    event_id: str | None = None
    subject: str | None = None
    data: Any = None
    decode_error: str | None = None
    hex_preview: str | None = None
    text_preview: str | None = None

    @property
    def decoded(self) -> bool:
        return self.event_type is not None

    def as_dict(self) -> dict[str, Any]:
        if self.decoded:
            return {
                "size": self.size,
                "decoded": True,
                "event_type": self.event_type,
                "event_id": self.event_id,
                "subject": self.subject,
                "data": self.data,
            }
        shown: dict[str, Any] = {"size": self.size, "decoded": False, "decode_error": self.decode_error}
        if self.text_preview is not None:
            shown["text_preview"] = self.text_preview
        else:
            shown["hex_preview"] = self.hex_preview
        return shown


def describe_value(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...] | None, codec: Codec
) -> ValueView:
    """Decode ``value`` with ``codec`` and mask it; fall back to a hex preview."""
    size = len(value) if value is not None else 0
    try:
        event = codec.decode(value, headers)
    except ContractError as exc:
        reason: str = exc.reason
    except ProcessorsError as exc:  # e.g. a schema registry that cannot be reached
        reason = f"{type(exc).__name__}: {exc}"
    else:
        dumped = event.model_dump(mode="json")
        return ValueView(
            size=size,
            event_type=event.event_type,
            event_id=str(event.event_id),
            subject=event.subject,
            # the contract's personal-data fields by name, then everything else the redaction
            # finds (sensitive keys, and patterns inside free-text values)
            data=redact(mask_pii(dumped.get("data"))),
        )
    head = (value or b"")[:HEX_PREVIEW_BYTES]
    if not head:
        return ValueView(size=size, decode_error=reason, hex_preview="")
    text = _text_of((value or b"")[:TEXT_CONTEXT_BYTES])
    if text is None:
        return ValueView(size=size, decode_error=reason, hex_preview=head.hex(" "))
    # readable text (a JSON body that failed validation, say): shown redacted, never as hex,
    # which would only hide personal data from the eye.  Redacted in a wide window first and
    # cut afterwards, so a value is never cut in half before the redaction could see it whole.
    return ValueView(size=size, decode_error=reason, text_preview=_redacted_text(text)[:TEXT_PREVIEW_CHARS])


def _redacted_text(text: str) -> str:
    """JSON redacted as a structure (by key, and strings inside by pattern, nested JSON text
    included), anything else as free text."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return redact_text(text)
    return json.dumps(_redact_nested(document), ensure_ascii=False)


def _redact_nested(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return redact(_redact_nested(json.loads(value)))
        except (ValueError, RecursionError):
            return redact(value)
    if isinstance(value, dict):
        return redact({key: _redact_nested(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_redact_nested(item) for item in value]
    return redact(value)


TEXT_CONTEXT_BYTES = 16 * 1024
TEXT_PREVIEW_CHARS = 240


def _text_of(data: bytes) -> str | None:
    """``data`` as text when it is printable UTF-8 (a multi-byte character cut at the end of the
    window is dropped); None for binary data."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 3:
            return None
        text = data[: exc.start].decode("utf-8")
    printable = text.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return text if printable.isprintable() else None


def show_document(record: DeadLetter, view: ValueView) -> dict[str, Any]:
    """The JSON document ``dlq show --json`` prints."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": format_time(record.timestamp),
        "key": format_key(record.key),
        "headers": [
            {"name": name, "value": value}
            for name, value in redact_headers(headers_as_text(record.headers)).items()
        ],
        "value": view.as_dict(),
    }
