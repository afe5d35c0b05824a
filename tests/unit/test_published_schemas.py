"""The schemas shipped for publishers in other languages: complete, valid and in sync."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from jsonschema import Draft202012Validator

from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.events import EVENT_TYPES
from processors.contract.examples import example_event
from processors.contract.published import PUBLISHED_DIR, json_schema, published_files

CODEC = Codec(LocalSchemaIds())


def test_the_committed_schemas_match_the_models() -> None:
    """Fails when a model changed and `processors schemas export` was not run."""
    expected = published_files()
    committed = {
        str(path.relative_to(PUBLISHED_DIR)): path.read_text(encoding="utf-8")
        for path in PUBLISHED_DIR.rglob("*")
        if path.is_file()
    }
    assert sorted(committed) == sorted(expected), (
        "schema files added or missing: run processors schemas export"
    )
    drifted = sorted(name for name, text in expected.items() if committed[name] != text)
    assert not drifted, f"out of date (run processors schemas export): {drifted}"


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_each_avro_writer_schema_is_complete_and_reads_what_the_codec_writes(event_type: str) -> None:
    schema = json.loads((PUBLISHED_DIR / "avro" / f"{event_type}.avsc").read_text())
    parsed = fastavro.parse_schema(schema)  # every named type is inlined: parses on its own
    value, _ = CODEC.encode(example_event(event_type), ContentType.AVRO)
    record = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, None)
    assert record["event_type"] == event_type


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_each_json_schema_accepts_the_example_and_refuses_a_broken_one(event_type: str) -> None:
    schema = json_schema(event_type)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    value, _ = CODEC.encode(example_event(event_type), ContentType.JSON)
    document = json.loads(value)
    assert list(validator.iter_errors(document)) == []
    del document["event_id"]
    assert list(validator.iter_errors(document)), "a document without event_id must be refused"


def test_the_published_directory_is_shipped_with_the_package() -> None:
    assert Path(PUBLISHED_DIR).is_dir()
    assert len(list((PUBLISHED_DIR / "avro").glob("*.avsc"))) == len(EVENT_TYPES)
