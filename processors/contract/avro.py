"""Avro schemas of the event contract, shipped as package data in ``schemas/``.

``Envelope.avsc`` holds the envelope; every payload record has its own file, and records
shared between payloads (``Address``, ``PaymentMethod``, ``KycDocument``, ``KycConsent``)
have theirs too.  The *writer schema* of an event type is composed here: the envelope
record renamed ``<Payload>Event`` (``insurance.events.PremiumDueEvent``) whose ``data``
field is the payload record, with every referenced named record inlined once.

``ids.json`` assigns each writer schema a stable id (from 1001, never reused) for use
without a Schema Registry.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import fastavro

from processors.contract.events import EVENT_TYPES, payload_model
from processors.errors import ConfigError

__all__ = [
    "NAMESPACE",
    "event_type_for_schema",
    "local_schema_ids",
    "parse_schema",
    "schema_records",
    "writer_schema",
    "writer_schema_name",
    "writer_schema_text",
]

NAMESPACE = "insurance.events"
_ENVELOPE = f"{NAMESPACE}.Envelope"
_PACKAGE = "processors.contract"

Schema = dict[str, Any]


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


@cache
def schema_records() -> Mapping[str, Schema]:
    """Every record defined in ``schemas/*.avsc``, by full name."""
    records: dict[str, Schema] = {}
    for entry in (resources.files(_PACKAGE) / "schemas").iterdir():
        if not entry.name.endswith(".avsc"):
            continue
        record = json.loads(entry.read_text(encoding="utf-8"))
        name = _full_name(record["name"], record.get("namespace"))
        if name in records:
            raise ConfigError(f"Avro record {name} is defined twice in the schema files")
        records[name] = record
    return MappingProxyType(records)


def writer_schema_name(event_type: str) -> str:
    """``insurance.events.<Payload>Event``: the full name (and registry subject) of the writer schema."""
    return f"{NAMESPACE}.{payload_model(event_type).__name__}Event"


@cache
def _schema_names() -> Mapping[str, str]:
    return MappingProxyType({writer_schema_name(event_type): event_type for event_type in EVENT_TYPES})


def event_type_for_schema(name: str) -> str | None:
    """The event type whose writer schema has this full name, if any."""
    return _schema_names().get(name)


def _inline(schema: Any, namespace: str, records: Mapping[str, Schema], defined: set[str]) -> Any:
    """``schema`` with each named record it references expanded at its first use."""
    if isinstance(schema, str):
        name = _full_name(schema, namespace)
        if name in records and name not in defined:
            return _inline(records[name], namespace, records, defined)
        return schema
    if isinstance(schema, list):
        return [_inline(branch, namespace, records, defined) for branch in schema]
    kind = schema.get("type")
    if kind == "record":
        own_namespace = schema.get("namespace", namespace)
        defined.add(_full_name(schema["name"], own_namespace))
        fields = [
            {**field, "type": _inline(field["type"], own_namespace, records, defined)}
            for field in schema["fields"]
        ]
        return {**schema, "fields": fields}
    if kind == "array":
        return {**schema, "items": _inline(schema["items"], namespace, records, defined)}
    if kind == "map":
        return {**schema, "values": _inline(schema["values"], namespace, records, defined)}
    return schema


@cache
def _writer_schema(event_type: str) -> Schema:
    records = schema_records()
    payload_name = f"{NAMESPACE}.{payload_model(event_type).__name__}"
    if payload_name not in records:
        raise ConfigError(f"no Avro schema file defines {payload_name} (event type {event_type})")
    envelope = records[_ENVELOPE]
    payload = _inline(records[payload_name], NAMESPACE, records, {_ENVELOPE})
    fields = [
        {**field, "type": payload} if field["name"] == "data" else field for field in envelope["fields"]
    ]
    return {
        "type": "record",
        "name": writer_schema_name(event_type).rpartition(".")[2],
        "namespace": NAMESPACE,
        "doc": f"A {event_type} event: the envelope with its {payload['name']} payload.",
        "fields": fields,
    }


def writer_schema(event_type: str) -> Schema:
    """The full writer schema of ``event_type`` (a fresh copy: callers may change it)."""
    return copy.deepcopy(_writer_schema(event_type))


@cache
def writer_schema_text(event_type: str) -> str:
    """The writer schema as compact JSON: what is registered in a Schema Registry."""
    return json.dumps(_writer_schema(event_type), separators=(",", ":"))


def parse_schema(schema: Schema) -> Any:
    """``schema`` parsed for fastavro, with its own table of named types."""
    return fastavro.parse_schema(schema, named_schemas={})


@cache
def local_schema_ids() -> Mapping[str, int]:
    """``ids.json``: writer schema full name → schema id."""
    text = (resources.files(_PACKAGE) / "schemas" / "ids.json").read_text(encoding="utf-8")
    ids = json.loads(text)
    if not isinstance(ids, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in ids.values()
    ):
        raise ConfigError("schemas/ids.json must map schema names to integer ids")
    return MappingProxyType(ids)
