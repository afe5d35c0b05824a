"""The schemas shipped for publishers in other languages: complete, valid and in sync."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
import yaml
from jsonschema import Draft202012Validator

from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.events import EVENT_TYPES
from processors.contract.examples import example_event
from processors.contract.published import PUBLISHED_DIR, json_schema, published_files
from processors.contract.topics import EVENT_TOPICS
from processors.topics.catalogue import load_catalogue

CODEC = Codec(LocalSchemaIds())


ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_schemas_match_the_models() -> None:
    """Fails when a model or topics.yaml changed and `processors schemas export` was not run."""
    expected = published_files(load_catalogue(ROOT / "topics.yaml"))
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


def _resolve(document: dict[str, object], ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), f"{ref} does not resolve"
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_the_asyncapi_document_covers_every_event_topic_and_every_reference_resolves() -> None:
    document = yaml.safe_load((PUBLISHED_DIR / "asyncapi.yaml").read_text())
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(EVENT_TOPICS.values())
    refs: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
                    refs.append(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(
        {k: v for k, v in document.items() if k != "components"}
        | {"components": {"messages": document["components"]["messages"]}}
    )
    assert len(refs) > 40
    for ref in refs:
        _resolve(document, ref)
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
        assert operation["messages"]
    for name, message in document["components"]["messages"].items():
        assert message["bindings"]["kafka"]["key"]["type"] == "string", name
        Draft202012Validator.check_schema(_resolve(document, message["payload"]["$ref"]))  # type: ignore[arg-type]
