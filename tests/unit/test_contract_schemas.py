"""Avro schemas: composed from the envelope and payload files, consistent with the models, with ids."""

from __future__ import annotations

import datetime
import json
import types
import typing
import uuid
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

import fastavro
import pytest
from pydantic import BaseModel

from processors.contract import EVENT_TYPES, writer_schema, writer_schema_name
from processors.contract.avro import (
    NAMESPACE,
    event_type_for_schema,
    local_schema_ids,
    schema_records,
    writer_schema_text,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(str(resources.files("processors.contract") / "schemas"))
ALL_TYPES = sorted(EVENT_TYPES)
ENVELOPE_FIELDS = [
    "event_id",
    "event_type",
    "source",
    "occurred_at",
    "subject",
    "correlation_id",
    "schema_version",
]
MONEY = {"type": "bytes", "logicalType": "decimal", "precision": 22, "scale": 4}


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_writer_schema_is_the_envelope_around_the_payload(event_type: str) -> None:
    schema = writer_schema(event_type)
    payload = EVENT_TYPES[event_type].__name__
    assert writer_schema_name(event_type) == f"insurance.events.{payload}Event"
    assert (schema["namespace"], schema["name"]) == (NAMESPACE, f"{payload}Event")
    names = [field["name"] for field in schema["fields"]]
    assert names == [*ENVELOPE_FIELDS, "data"]
    data = schema["fields"][-1]["type"]
    assert data["type"] == "record"
    assert data["name"] == payload
    parsed: Any = fastavro.parse_schema(schema, named_schemas={})
    assert parsed["name"] == f"insurance.events.{payload}Event"
    assert event_type_for_schema(parsed["name"]) == event_type
    assert json.loads(writer_schema_text(event_type)) == schema


def test_writer_schema_returns_a_copy() -> None:
    schema = writer_schema("premium.due")
    schema["fields"].clear()
    assert writer_schema("premium.due")["fields"]


def test_envelope_fields_live_only_in_the_envelope_file() -> None:
    envelope = json.loads((SCHEMA_DIR / "Envelope.avsc").read_text())
    assert [f["name"] for f in envelope["fields"]] == [*ENVELOPE_FIELDS, "data"]
    for path in SCHEMA_DIR.glob("*.avsc"):
        if path.name == "Envelope.avsc":
            continue
        names = {field["name"] for field in json.loads(path.read_text())["fields"]}
        assert not names & {"event_id", "occurred_at", "subject", "schema_version"}, path.name


def test_every_payload_and_shared_record_has_its_file() -> None:
    records = schema_records()
    expected = {f"{NAMESPACE}.{model.__name__}" for model in EVENT_TYPES.values()}
    expected |= {
        f"{NAMESPACE}.{name}"
        for name in (
            "Envelope",
            "Address",
            "PaymentMethod",
            "KycDocument",
            "KycConsent",
            "KycCheck",
            "KycMatch",
        )
    }
    assert set(records) == expected
    for name, record in records.items():
        assert record["namespace"] == NAMESPACE
        assert (SCHEMA_DIR / f"{name.rpartition('.')[2]}.avsc").is_file()


def test_shared_records_are_defined_once_per_writer_schema() -> None:
    text = writer_schema_text("refund.requested")
    assert text.count('"name":"Address"') == 1
    assert text.count('"name":"PaymentMethod"') == 1
    assert writer_schema_text("customer.kyc_requested").count('"name":"KycDocument"') == 1


# --- ids -----------------------------------------------------------------------------------------


def test_every_writer_schema_has_an_id_and_ids_never_collide() -> None:
    ids = local_schema_ids()
    names = {writer_schema_name(event_type) for event_type in EVENT_TYPES}
    missing = names - ids.keys()
    assert not missing, f"schemas without an id in ids.json: {sorted(missing)}"
    assert not ids.keys() - names, (
        "ids.json names a schema that does not exist (ids are never reused: keep it retired)"
    )
    assert len(set(ids.values())) == len(ids), "two schemas share an id"
    assert min(ids.values()) >= 1001


def test_ids_json_is_the_file_shipped_in_the_package() -> None:
    assert json.loads((SCHEMA_DIR / "ids.json").read_text()) == dict(local_schema_ids())


def test_repository_root_schemas_points_at_the_package_schemas() -> None:
    link = ROOT / "schemas"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "processors" / "contract" / "schemas").resolve()
    assert (link / "Envelope.avsc").is_file()


# --- consistency with the pydantic models ---------------------------------------------------------


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) < len(get_args(annotation)):
            return True, args[0]
    return False, annotation


def _base_type(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _check(annotation: Any, avro_type: Any, path: str, records: dict[str, Any]) -> None:
    optional, inner = _is_optional(annotation)
    if optional:
        assert isinstance(avro_type, list), f"{path}: optional in the model, not nullable in Avro"
        assert avro_type[0] == "null", f"{path}: null must be the first branch (default null)"
        (avro_type,) = avro_type[1:]
    else:
        assert not isinstance(avro_type, list), f"{path}: nullable in Avro, required in the model"
    inner = _base_type(inner)
    if isinstance(avro_type, str) and avro_type in records:
        avro_type = records[avro_type]
    if inner is Decimal:
        assert avro_type == MONEY, path
    elif inner is datetime.datetime:
        assert avro_type == {"type": "long", "logicalType": "timestamp-micros"}, path
    elif inner is datetime.date:
        assert avro_type == {"type": "int", "logicalType": "date"}, path
    elif inner is uuid.UUID:
        assert avro_type == {"type": "string", "logicalType": "uuid"}, path
    elif inner is bool:
        assert avro_type == "boolean", path
    elif inner is int:
        assert avro_type in ("int", "long"), path
    elif inner is str or get_origin(inner) is typing.Literal:
        assert avro_type == "string", path
    elif get_origin(inner) is list:
        assert avro_type["type"] == "array", path
        _check(get_args(inner)[0], avro_type["items"], f"{path}[]", records)
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        _check_record(inner, avro_type, path, records)
    else:
        raise AssertionError(f"{path}: no Avro mapping for {inner!r}")


def _check_record(model: type[BaseModel], record: dict[str, Any], path: str, records: dict[str, Any]) -> None:
    assert record["type"] == "record", path
    assert record["name"].rpartition(".")[2] == model.__name__, path
    avro_fields = {field["name"]: field for field in record["fields"]}
    assert list(avro_fields) == list(model.model_fields), f"{path}: fields differ from {model.__name__}"
    for name, info in model.model_fields.items():
        field = avro_fields[name]
        _check(info.annotation, field["type"], f"{path}.{name}", records)
        if not info.is_required():
            assert "default" in field, f"{path}.{name}: optional without an Avro default"


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_payload_schemas_match_the_models(event_type: str) -> None:
    records = dict(schema_records())
    model = EVENT_TYPES[event_type]
    _check_record(model, records[f"{NAMESPACE}.{model.__name__}"], event_type, records)


def test_money_in_every_schema_is_a_decimal_with_scale_4() -> None:
    found = 0
    for event_type in EVENT_TYPES:
        text = writer_schema_text(event_type)
        found += text.count('"logicalType":"decimal"')
        assert text.count('"logicalType":"decimal"') == text.count('"precision":22,"scale":4')
        assert "float" not in text
        assert "double" not in text
    assert found > 0
