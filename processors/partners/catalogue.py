"""The partner-facing event catalogue: what a subscriber with given grants receives.

Pure code: no Kafka, no HTTP.  For every event type of the contract and a grant set, the JSON
Schema of the webhook body that subscriber receives (derived from the published schema of
the event, :func:`processors.contract.published.json_schema`, by the same projection plan
fan-out applies), a projected example body (the contract's example event, fanned out as
fan-out would), and, per data class not granted, the fields withheld::

    entries = event_catalogue(frozenset({DataClass.CONTACT}))
    entries[0]["schema"], entries[0]["example"], entries[0]["withheld"]

The catalogue ends with the test event (``webhook.test``): what an endpoint receives when a
test is asked for (the partner portal's ``sendTestEvent``); it carries no personal data, so
nothing of it is withheld whatever the grants.

The API serves it at ``GET /api/v1/event-types`` (:mod:`processors.api.webhooks`); each grant
set's catalogue is built once and kept (there are at most 2³ grant sets).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

from processors.contract.events import EVENT_TYPES
from processors.contract.examples import example_event
from processors.contract.published import json_schema
from processors.partners.projection import (
    DATA_CLASSES,
    Grants,
    Plan,
    classified_paths,
    grant_list,
    plan_for,
)
from processors.webhooks.delivery import (
    TEST_EVENT_TYPE,
    delivery_body,
    event_data_json,
    webhook_test_body,
)
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.subscriptions import ID_PATTERN as ENDPOINT_ID_PATTERN

__all__ = [
    "EXAMPLE_SUBSCRIPTION",
    "catalogue_json",
    "event_catalogue",
    "projected_schema",
    "webhook_test_schema",
]

EXAMPLE_SUBSCRIPTION: Final = "ep_" + "0" * 24
"""The subscription id the example bodies are made for (their ``webhook_id`` derives from it)."""

_WEBHOOK_ID_PATTERN: Final = r"^msg_[0-9a-f]{26}$"
_TEST_EXAMPLE_EVENT_ID: Final = "00000000-0000-4000-8000-000000000000"
_TEST_EXAMPLE_AT: Final = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def projected_schema(event_type: str, grants: Grants) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the webhook body of ``event_type`` for ``grants``: the
    published payload schema with every field the projection leaves out taken out of
    ``properties`` and ``required`` (``additionalProperties: false`` stays)."""
    published = json_schema(event_type)
    definitions: dict[str, Any] = published["$defs"]
    payload = _ref_name(published["properties"]["data"]["$ref"])
    projected: dict[str, Any] = {}
    _project(definitions, payload, plan_for(event_type, grants), projected)
    granted = ", ".join(grant_list(grants)) or "none"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:insurance-processors:webhook:{event_type}",
        "title": f"{event_type} webhook delivery",
        "description": (
            f"The body of a {event_type} webhook delivery for a subscriber granted: {granted}. "
            "data is the event's payload without the personal data of classes not granted."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["webhook_id", "event_type", "timestamp", "data"],
        "properties": {
            "webhook_id": {"type": "string", "pattern": _WEBHOOK_ID_PATTERN},
            "event_type": {"const": event_type},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {"$ref": f"#/$defs/{payload}"},
        },
        "$defs": dict(sorted(projected.items())),
    }


def webhook_test_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a test event's body (``webhook.test``; the same for every
    grant set: it carries no personal data)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:insurance-processors:webhook:{TEST_EVENT_TYPE}",
        "title": f"{TEST_EVENT_TYPE} webhook delivery",
        "description": (
            "A test event, sent to one endpoint when a test is asked for, signed and delivered "
            "like any other delivery. It carries no insurance data and no personal data."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["webhook_id", "event_type", "timestamp", "data"],
        "properties": {
            "webhook_id": {"type": "string", "pattern": _WEBHOOK_ID_PATTERN},
            "event_type": {"const": TEST_EVENT_TYPE},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {"$ref": "#/$defs/WebhookTest"},
        },
        "$defs": {
            "WebhookTest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["endpoint_id", "message"],
                "properties": {
                    "endpoint_id": {"type": "string", "pattern": ENDPOINT_ID_PATTERN},
                    "message": {"type": "string"},
                },
            }
        },
    }


def _test_event_entry() -> dict[str, Any]:
    webhook_id = webhook_id_for(EXAMPLE_SUBSCRIPTION, _TEST_EXAMPLE_EVENT_ID)
    example = json.loads(webhook_test_body(webhook_id, EXAMPLE_SUBSCRIPTION, _TEST_EXAMPLE_AT))
    return {
        "event_type": TEST_EVENT_TYPE,
        "withheld": {},
        "schema": webhook_test_schema(),
        "example": example,
    }


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _refs(schema: Any) -> list[str]:
    """The ``$defs`` names ``schema`` refers to, anywhere inside it."""
    if isinstance(schema, dict):
        found = [_ref_name(schema["$ref"])] if isinstance(schema.get("$ref"), str) else []
        return found + [name for value in schema.values() for name in _refs(value)]
    if isinstance(schema, list):
        return [name for value in schema for name in _refs(value)]
    return []


def _project(definitions: dict[str, Any], name: str, plan: Plan, out: dict[str, Any]) -> None:
    # One model has one plan per grant set, so a definition is projected the same way wherever
    # it is used; the first projection stands.
    if name in out:
        return
    original = definitions[name]
    properties: dict[str, Any] = {}
    for field, sub in plan.items():
        schema = original["properties"][field]
        properties[field] = schema
        refs = _refs(schema)
        if sub is None:
            for ref in refs:
                _copy(definitions, ref, out)
        else:
            for ref in refs:
                _project(definitions, ref, sub, out)
    document = {**original, "properties": properties}
    required = [field for field in original.get("required", ()) if field in properties]
    if required:
        document["required"] = required
    else:
        document.pop("required", None)
    out[name] = document


def _copy(definitions: dict[str, Any], name: str, out: dict[str, Any]) -> None:
    if name in out:
        return
    out[name] = definitions[name]
    for ref in _refs(definitions[name]):
        _copy(definitions, ref, out)


def _example(event_type: str, grants: Grants) -> dict[str, Any]:
    event = example_event(event_type)
    webhook_id = webhook_id_for(EXAMPLE_SUBSCRIPTION, str(event.event_id))
    body: dict[str, Any] = json.loads(delivery_body(webhook_id, event, event_data_json(event, grants)))
    return body


def _withheld(event_type: str, grants: Grants) -> dict[str, list[str]]:
    paths = classified_paths(event_type)
    withheld: dict[str, list[str]] = {}
    for data_class in DATA_CLASSES:
        if data_class in grants:
            continue
        fields = [path for path, kind in paths.items() if kind == data_class]
        if fields:
            withheld[str(data_class)] = fields
    return withheld


@cache
def catalogue_json(grants: Grants) -> bytes:
    """``{"grants": [...], "event_types": [...], "count": n}`` as JSON (built once per grant set)."""
    entries = [
        {
            "event_type": event_type,
            "withheld": _withheld(event_type, grants),
            "schema": projected_schema(event_type, grants),
            "example": _example(event_type, grants),
        }
        for event_type in sorted(EVENT_TYPES)
    ]
    entries.append(_test_event_entry())
    document = {"grants": grant_list(grants), "event_types": entries, "count": len(entries)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def event_catalogue(grants: Grants) -> list[dict[str, Any]]:
    """Per event type (sorted, then the test event ``webhook.test``): ``event_type``,
    ``withheld`` (data class → the fields of that class left out), ``schema``
    (:func:`projected_schema`) and ``example`` (a projected body)."""
    entries: list[dict[str, Any]] = json.loads(catalogue_json(grants))["event_types"]
    return entries
