"""The schemas a publisher in any language uses as they are: one file per event type.

* ``schemas/published/avro/<event_type>.avsc``: the complete Avro writer schema of the event
  (the envelope with its typed payload, every nested record inlined), as the codec writes it;
  a Java or Go producer registers it (or uses the shipped id) and writes with it.
* ``schemas/published/json/<event_type>.schema.json``: the JSON Schema (2020-12) of the event
  on the JSON path (``content-type: application/json``), from the same models the processors
  validate with.

``processors schemas export`` writes them; a test fails when the committed files drift from
the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from processors.contract import avro
from processors.contract.events import EVENT_TYPES, TYPED_ENVELOPES

if TYPE_CHECKING:
    from processors.topics.catalogue import Catalogue

__all__ = ["PUBLISHED_DIR", "export", "json_schema", "published_files"]

PUBLISHED_DIR = Path(__file__).resolve().parent / "schemas" / "published"


def json_schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = TYPED_ENVELOPES[event_type].model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:insurance-processors:event:{event_type}",
        **schema,
        "title": event_type,
    }


def published_files(catalogue: Catalogue | None = None) -> dict[str, str]:
    """Relative path → content of every published schema (and, given the topic catalogue, the
    AsyncAPI document of the event topics)."""
    files: dict[str, str] = {}
    if catalogue is not None:
        from processors.contract.asyncapi import asyncapi_document

        document = asyncapi_document(catalogue, version=_version())
        files["asyncapi.yaml"] = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    for event_type in sorted(EVENT_TYPES):
        files[f"avro/{event_type}.avsc"] = json.dumps(avro.writer_schema(event_type), indent=2) + "\n"
        files[f"json/{event_type}.schema.json"] = (
            json.dumps(json_schema(event_type), indent=2, sort_keys=True) + "\n"
        )
    return files


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("insurance-integration-processors")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def export(directory: Path = PUBLISHED_DIR, catalogue: Catalogue | None = None) -> list[Path]:
    """Write every published schema under ``directory``; returns the paths written."""
    written = []
    for relative, content in published_files(catalogue).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
