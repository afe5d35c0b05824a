"""The AsyncAPI 3 document of the event topics, generated from ``topics.yaml`` and the models.

One channel per topic that carries contract events (the inputs upstream systems publish to and
the result topics the processors write), one message per event type with its JSON Schema
payload, its headers and its key, and one operation per channel and direction.  ``processors
schemas export`` writes it to ``schemas/published/asyncapi.yaml``; a test fails when it drifts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.contract.events import EVENT_TYPES
from processors.contract.published import json_schema
from processors.contract.topics import EVENT_TOPICS
from processors.topics.catalogue import Catalogue

__all__ = ["asyncapi_document"]

_HEADERS: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "content-type": {
            "type": "string",
            "enum": ["application/avro", "application/json"],
            "description": "The encoding of the value (Confluent-framed Avro, or a UTF-8 JSON object).",
        },
        "event-type": {"type": "string", "description": "The envelope's event_type; must match the body."},
        "traceparent": {"type": "string", "description": "W3C trace context, carried to what is published."},
    },
    "required": ["content-type"],
}


def _message_id(event_type: str) -> str:
    return event_type.replace(".", "_")


def asyncapi_document(catalogue: Catalogue, *, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every topic in ``catalogue`` that carries contract events."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    by_topic: dict[str, list[str]] = {}
    for event_type, topic in sorted(EVENT_TOPICS.items()):
        if event_type in EVENT_TYPES:
            by_topic.setdefault(topic, []).append(event_type)
    for event_type in sorted(EVENT_TYPES):
        message = _message_id(event_type)
        schemas[message] = json_schema(event_type)
        messages[message] = {
            "name": event_type,
            "title": event_type,
            "contentType": "application/json",
            "headers": dict(_HEADERS),
            "payload": {"$ref": f"#/components/schemas/{message}"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "the event's subject (its aggregate id)"},
                    "bindingVersion": "0.5.0",
                }
            },
            "description": f"Avro writer schema: schemas/published/avro/{event_type}.avsc",
        }
    for topic, event_types in sorted(by_topic.items()):
        if topic not in catalogue:
            continue
        spec = catalogue.topic(topic)
        channel = topic.replace(".", "_")
        policy = spec.config.get("cleanup.policy", "delete")
        config: dict[str, Any] = {"cleanup.policy": [part.strip() for part in policy.split(",")]}
        retention = spec.retention_ms
        if retention is not None:
            config["retention.ms"] = retention
        channels[channel] = {
            "address": topic,
            "description": spec.description,
            "messages": {
                _message_id(t): {"$ref": f"#/components/messages/{_message_id(t)}"} for t in event_types
            },
            "bindings": {
                "kafka": {
                    "topic": topic,
                    "partitions": spec.partitions,
                    "replicas": spec.replication_factor,
                    "topicConfiguration": config,
                    "bindingVersion": "0.5.0",
                }
            },
        }
        upstream = topic.startswith("insurance.")
        operations[f"{'publish' if upstream else 'consume'}_{channel}"] = {
            "action": "send" if upstream else "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": (
                f"Upstream systems publish to {topic}; the processors consume it."
                if upstream
                else f"The processors publish to {topic}; downstream systems consume it."
            ),
            "messages": [{"$ref": f"#/channels/{channel}/messages/{_message_id(t)}"} for t in event_types],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Insurance integration processors: event topics",
            "version": version,
            "description": "Topics, keys, headers and message schemas of the contract events. "
            "Keys are the event's subject; values are Avro (Confluent framing) or JSON.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "Any Kafka cluster: set its address in KAFKA_BOOTSTRAP_SERVERS.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
