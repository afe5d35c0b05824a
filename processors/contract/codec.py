"""Bytes ⇄ :class:`Event`: Avro with Confluent framing, or JSON.

Encoding picks the format the caller asks for and returns the value with the
``content-type`` and ``event-type`` headers (and ``traceparent`` when given).  Decoding
follows the ``content-type`` header; without one it sniffs the first byte (``0x00``:
Confluent-framed Avro, ``{``: JSON).

Everything that can go wrong with an input is a :class:`~processors.errors.ContractError`
whose ``reason`` names the field and the problem and never quotes personal data:

* :class:`DecodeError`: empty value, unknown framing or schema id, truncated or corrupt Avro,
  malformed JSON;
* :class:`UnknownEventType`: an ``event_type`` (or Avro schema) this project does not know;
* :class:`ValidationFailed`: the event decoded but a field is missing or invalid.

Both paths validate a whole message in one pass, in strict mode, with the typed envelope
model of its event type; parsed Avro schemas and schema ids are cached per codec.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from io import BytesIO
from typing import Annotated, Any, Union

from fastavro import schemaless_reader, schemaless_writer
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from processors.adapters.jsonwire import JsonRejected, loads_strict
from processors.contract import avro
from processors.contract.events import (
    EVENT_TYPES,
    NO_WHITESPACE,
    PII_FIELDS,
    TYPED_ENVELOPES,
    Event,
    TypedEnvelope,
    as_event,
)
from processors.contract.registry import LocalSchemaIds, SchemaIdSource
from processors.errors import ConfigError, ContractError, DecodeError, UnknownEventType, ValidationFailed

__all__ = ["Codec", "ContentType", "EventRecord", "Headers", "validation_reason"]

Headers = Sequence[tuple[str, bytes | str | None]]
"""Kafka headers as confluent-kafka hands them over."""

_MAGIC = 0
_FRAMING_BYTES = 5
_MAX_ERRORS_IN_REASON = 5
_REDACTED = "<redacted>"


class ContentType(StrEnum):
    AVRO = "application/avro"
    JSON = "application/json"


_CONTENT_TYPE_HEADER = {
    ContentType.AVRO: ContentType.AVRO.value.encode(),
    ContentType.JSON: ContentType.JSON.value.encode(),
}


@dataclass(frozen=True, slots=True)
class _Writer:
    prefix: bytes  # magic byte + schema id
    schema: Any  # parsed by fastavro
    record_unions: tuple[tuple[tuple[str, ...], str], ...]  # (path, record name) of optional records


@dataclass(frozen=True, slots=True)
class _Reader:
    event_type: str
    writer: Any  # parsed writer schema
    reader: Any | None  # parsed local schema when it differs from the writer's, else None
    envelope: type[TypedEnvelope]


def _headers(content_type: ContentType, event_type: str, traceparent: str | None) -> list[tuple[str, bytes]]:
    headers = [
        ("content-type", _CONTENT_TYPE_HEADER[ContentType(content_type)]),
        ("event-type", event_type.encode()),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event in the form ``Event.model_dump()`` gives it, built without the models by a
    hot path that checked what it did not take from validated input (see
    ``processors.apps.payments.mapping.result_record``).  :meth:`Codec.encode_record` writes
    it; :meth:`to_event` validates it into the model."""

    event_type: str
    subject: str
    record: dict[str, Any]

    @property
    def key(self) -> bytes:
        """The Kafka key: the subject, UTF-8 encoded."""
        return self.subject.encode()

    def to_event(self) -> Event:
        """The model of this record (validated: a builder's mistake is refused here)."""
        return Event.model_validate(self.record)


def _any_envelope() -> TypeAdapter[TypedEnvelope]:
    members = tuple(TYPED_ENVELOPES.values())
    envelope: Any = Annotated[Union[members], Field(discriminator="event_type")]  # noqa: UP007
    return TypeAdapter(envelope, config=ConfigDict(hide_input_in_errors=True))


_JSON = _any_envelope()


@dataclass(frozen=True, slots=True)
class Peek:
    """What :meth:`Codec.peek` reads: not validated."""

    event_type: str
    occurred_at: datetime
    data: dict[str, Any]


class Codec:
    """Encodes and decodes events.  Safe to share between threads and apps.

    ``schema_ids`` maps Avro writer schemas to the ids in the Confluent framing: by default
    :class:`LocalSchemaIds` (``ids.json``), or a :class:`SchemaRegistryClient`.
    """

    def __init__(self, schema_ids: SchemaIdSource | None = None) -> None:
        self._ids: SchemaIdSource = schema_ids if schema_ids is not None else LocalSchemaIds()
        self._writers: dict[str, _Writer] = {}
        self._readers: dict[int, _Reader] = {}
        self._local: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Codec({self._ids!r})"

    # -- encode ------------------------------------------------------------------------------

    def encode(
        self,
        event: Event,
        content_type: ContentType = ContentType.AVRO,
        *,
        traceparent: str | None = None,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """``(value, headers)`` for producing ``event`` (the key is ``event.key``)."""
        if content_type == ContentType.AVRO:
            value = self._avro(event.event_type, event.model_dump())
        elif content_type == ContentType.JSON:
            value = event.__pydantic_serializer__.to_json(event)
        else:
            raise ConfigError(f"unsupported content type {content_type!r}")
        return value, _headers(content_type, event.event_type, traceparent)

    def encode_record(
        self,
        record: EventRecord,
        content_type: ContentType = ContentType.AVRO,
        *,
        traceparent: str | None = None,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """``(value, headers)`` for an event already in its record form: the bytes
        :meth:`encode` writes for ``record.to_event()``.  Avro is written from the record as it
        is (its builder checked it); JSON, and an event type with optional nested records,
        go through the model."""
        if content_type == ContentType.AVRO:
            writer = self._writers.get(record.event_type) or self._writer(record.event_type)
            if not writer.record_unions:
                value = self._write(writer, record.event_type, record.record)
                return value, _headers(content_type, record.event_type, traceparent)
        return self.encode(record.to_event(), content_type, traceparent=traceparent)

    def _avro(self, event_type: str, record: dict[str, Any]) -> bytes:
        """Confluent-framed Avro of ``record`` (an ``Event.model_dump()``; its optional nested
        records are tagged in place)."""
        writer = self._writers.get(event_type) or self._writer(event_type)
        for path, name in writer.record_unions:
            _tag_union_branch(record, path, name)
        return self._write(writer, event_type, record)

    @staticmethod
    def _write(writer: _Writer, event_type: str, record: dict[str, Any]) -> bytes:
        buffer = BytesIO()
        buffer.write(writer.prefix)
        try:
            schemaless_writer(buffer, writer.schema, record)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValidationFailed(f"{event_type} cannot be written as Avro ({type(exc).__name__})") from exc
        return buffer.getvalue()

    def prepare(self, event_types: Iterable[str] | None = None) -> None:
        """Resolve (register) the writer schemas of these event types now instead of on first use."""
        for event_type in EVENT_TYPES if event_types is None else event_types:
            if event_type not in self._writers:
                self._writer(event_type)

    def _writer(self, event_type: str) -> _Writer:
        schema = self._local_schema(event_type)
        schema_id = self._ids.id_for(avro.writer_schema_name(event_type), avro.writer_schema_text(event_type))
        writer = _Writer(
            prefix=bytes([_MAGIC]) + schema_id.to_bytes(4, "big"),
            schema=schema,
            record_unions=tuple(_record_unions(avro.writer_schema(event_type), ())),
        )
        self._writers[event_type] = writer
        # A message this codec wrote decodes without asking the id source.
        self._readers.setdefault(schema_id, _Reader(event_type, schema, None, TYPED_ENVELOPES[event_type]))
        return writer

    def _local_schema(self, event_type: str) -> Any:
        parsed = self._local.get(event_type)
        if parsed is None:
            parsed = self._local[event_type] = avro.parse_schema(avro.writer_schema(event_type))
        return parsed

    # -- decode ------------------------------------------------------------------------------

    def decode(self, value: bytes | None, headers: Headers | None) -> Event:
        """The event in ``value``; raises a ``ContractError`` subclass with a readable ``reason``."""
        if not value:
            raise DecodeError("empty message")
        content_type: bytes | str | None = None
        event_type_header: bytes | str | None = None
        for name, header in headers or ():
            lowered = name.lower()
            if lowered == "content-type":
                content_type = header
            elif lowered == "event-type":
                event_type_header = header
        if content_type is not None:
            kind = _text(content_type).partition(";")[0].strip().lower()
            if kind == ContentType.AVRO:
                event = self._decode_avro(value)
            elif kind == ContentType.JSON:
                event = self._decode_json(value)
            else:
                raise DecodeError(f"unsupported content-type '{_clip(kind)}'")
        elif value[0] == _MAGIC:
            event = self._decode_avro(value)
        elif value.lstrip()[:1] == b"{":
            event = self._decode_json(value)
        else:
            raise DecodeError(
                "cannot tell the encoding: no content-type header, and the value is neither "
                "Confluent-framed Avro (magic byte 0x00) nor a JSON object"
            )
        if event_type_header is not None and _text(event_type_header) != event.event_type:
            raise ValidationFailed(
                f"event-type header '{_clip(_text(event_type_header))}' does not match "
                f"the event's event_type '{event.event_type}'"
            )
        return event

    def peek(self, value: bytes | None, headers: Headers | None) -> Peek:
        """Event type, time and payload fields without validating the event: for routing.

        Much cheaper than :meth:`decode` (no model validation); the receiver of a routed
        record still decodes it in full. Raises ``DecodeError`` when the bytes are not an
        event envelope at all.
        """
        if not value:
            raise DecodeError("empty message")
        content_type: bytes | str | None = None
        for name, header in headers or ():
            if name.lower() == "content-type":
                content_type = header
        kind = _text(content_type).partition(";")[0].strip().lower() if content_type is not None else None
        if kind == ContentType.AVRO or (kind is None and value[0] == _MAGIC):
            record = self._avro_record(value)
        elif kind == ContentType.JSON or (kind is None and value.lstrip()[:1] == b"{"):
            try:
                record = loads_strict(value, decimals=False)
            except JsonRejected as exc:
                raise DecodeError(str(exc)) from exc
        else:
            raise DecodeError("cannot tell the encoding of the message")
        try:
            event_type = record["event_type"]
            occurred = record["occurred_at"]
            data = record["data"]
            if isinstance(occurred, str):
                occurred = datetime.fromisoformat(occurred)
            if (
                not isinstance(event_type, str)
                or not isinstance(data, dict)
                or not isinstance(occurred, datetime)
            ):
                raise TypeError
            if occurred.tzinfo is None:
                raise ValueError
            occurred = occurred.astimezone(UTC)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DecodeError("no event envelope (event_type, occurred_at with a zone, data)") from exc
        return Peek(event_type, occurred, data)

    def _avro_record(self, value: bytes) -> Any:
        if len(value) < _FRAMING_BYTES or value[0] != _MAGIC:
            raise DecodeError("not Confluent-framed Avro")
        schema_id = int.from_bytes(value[1:_FRAMING_BYTES], "big")
        reader = self._readers.get(schema_id) or self._reader(schema_id)
        stream = BytesIO(value)
        stream.seek(_FRAMING_BYTES)
        try:
            return schemaless_reader(stream, reader.writer, reader.reader)
        except Exception as exc:  # any failure to read untrusted bytes is a decode error
            raise DecodeError(f"corrupt Avro data (schema id {schema_id}: {type(exc).__name__})") from exc

    def _decode_avro(self, value: bytes) -> Event:
        if len(value) < _FRAMING_BYTES:
            raise DecodeError(
                f"truncated message: {len(value)} bytes, shorter than the 5-byte Confluent framing"
            )
        if value[0] != _MAGIC:
            raise DecodeError(f"wrong magic byte 0x{value[0]:02x}; Confluent-framed Avro starts with 0x00")
        schema_id = int.from_bytes(value[1:_FRAMING_BYTES], "big")
        reader = self._readers.get(schema_id) or self._reader(schema_id)
        stream = BytesIO(value)  # shares the bytes until written to: no copy
        stream.seek(_FRAMING_BYTES)
        try:
            record = schemaless_reader(stream, reader.writer, reader.reader)
        except EOFError as exc:
            raise DecodeError(f"truncated Avro data (schema id {schema_id})") from exc
        except Exception as exc:  # any failure to read untrusted bytes is a decode error
            raise DecodeError(f"corrupt Avro data (schema id {schema_id}: {type(exc).__name__})") from exc
        left = len(value) - stream.tell()
        if left:
            raise DecodeError(f"{left} unexpected bytes after the Avro record (schema id {schema_id})")
        try:
            envelope = reader.envelope.model_validate(record, strict=True)
        except ValidationError as exc:
            raise ValidationFailed(_reason(exc, reader.event_type, tagged=False)) from exc
        return as_event(envelope)

    def _reader(self, schema_id: int) -> _Reader:
        text = self._ids.schema_for(schema_id)
        if text is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        try:
            raw = json.loads(text)
            writer = avro.parse_schema(raw)
            name = writer["name"]
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} is not a valid Avro record schema") from exc
        event_type = avro.event_type_for_schema(name)
        if event_type is None:
            raise UnknownEventType(
                f"schema id {schema_id} is '{_clip(str(name))}', not an event schema this project knows"
            )
        local = self._local_schema(event_type)
        same = _without_docs(raw) == _without_docs(avro.writer_schema(event_type))
        reader = _Reader(event_type, writer, None if same else local, TYPED_ENVELOPES[event_type])
        self._readers[schema_id] = reader
        return reader

    def _decode_json(self, value: bytes) -> Event:
        try:
            # pydantic keeps the last of two equal keys and has no depth limit of its own: read
            # the document once strictly first, so both are refused with their reason
            loads_strict(value, decimals=False)
        except JsonRejected as exc:
            raise DecodeError(f"invalid JSON: {exc}") from exc
        try:
            envelope = _JSON.validate_json(value, strict=True)
        except ValidationError as exc:
            raise _json_failure(exc) from exc
        return as_event(envelope)


# -- Avro helpers --------------------------------------------------------------------------------


def _record_unions(schema: Any, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], str]]:
    """Paths (through records) of the fields typed ``["null", <record>]``, with the record's full name.

    fastavro picks a union branch for a dict by validating it against each record branch; a
    ``(name, value)`` tuple names the branch instead, which makes encoding ~10 % faster.
    """
    namespace = schema.get("namespace", "")
    for field in schema["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "record":
            yield from _record_unions(kind, (*path, field["name"]))
        elif isinstance(kind, list):
            records = [
                branch for branch in kind if isinstance(branch, dict) and branch.get("type") == "record"
            ]
            if len(records) == 1 and len(kind) == 2 and "null" in kind:
                name = records[0]["name"]
                yield (*path, field["name"]), name if "." in name else f"{namespace}.{name}"


def _tag_union_branch(record: dict[str, Any], path: tuple[str, ...], name: str) -> None:
    parent: Any = record
    for key in path[:-1]:
        parent = parent[key]
        if parent is None:
            return
    value = parent[path[-1]]
    if value is not None:
        parent[path[-1]] = (name, value)


# -- failures -----------------------------------------------------------------------------------


def _json_failure(exc: ValidationError) -> ContractError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed")
        return DecodeError(f"invalid JSON: {_clip(str(detail))}")
    if kind in ("model_attributes_type", "model_type", "dict_type") and not first["loc"]:
        return DecodeError("the JSON value is not an object")
    if kind == "union_tag_not_found":
        return ValidationFailed("event_type: Field required")
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag", "")
        return UnknownEventType(f"unknown event type '{_clip(str(tag))}'")
    return ValidationFailed(_reason(exc, str(first["loc"][0]) if first["loc"] else None, tagged=True))


def validation_reason(exc: ValidationError, what: str) -> str:
    """``invalid <what>: <path>: <problem>; ...`` for ``exc``, as the codec words its own
    refusals: no input values, no personal data."""
    return _reason(exc, what, tagged=False)


def _reason(exc: ValidationError, event_type: str | None, *, tagged: bool) -> str:
    """``invalid <type>: <path>: <problem>; ...`` without any personal data."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:_MAX_ERRORS_IN_REASON]:
        loc = error["loc"][1:] if tagged else error["loc"]
        if (
            error["type"] == "string_pattern_mismatch"
            and error.get("ctx", {}).get("pattern") == NO_WHITESPACE
        ):
            message = "must not contain whitespace or control characters"
        else:
            message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if PII_FIELDS.intersection(part for part in loc if isinstance(part, str)):
            message = _scrub(message, error.get("input"))
        path = _path(loc)
        parts.append(f"{path}: {message}" if path else message)
    if len(errors) > _MAX_ERRORS_IN_REASON:
        parts.append(f"and {len(errors) - _MAX_ERRORS_IN_REASON} more")
    prefix = f"invalid {event_type}: " if event_type else "invalid event: "
    return prefix + "; ".join(parts)


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _scrub(message: str, value: object) -> str:
    if isinstance(value, str) and len(value) >= 3 and value in message:
        return message.replace(value, _REDACTED)
    return message


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_docs(item) for key, item in schema.items() if key != "doc"}
    if isinstance(schema, list):
        return [_without_docs(item) for item in schema]
    return schema
