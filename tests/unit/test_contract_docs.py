"""docs/publishing-events.md stays true: its examples are valid events and its code runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from processors.contract import EVENT_TYPES, Codec, ContentType, Event, PremiumDue
from processors.contract.examples import EXAMPLE_PAYLOADS, example_event

DOC = Path(__file__).resolve().parents[2] / "docs" / "publishing-events.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_envelope_example_is_a_valid_event() -> None:
    envelopes = [text for text in blocks("json") if '"event_type"' in text]
    assert len(envelopes) == 1
    event = Codec().decode(envelopes[0].encode(), [("content-type", b"application/json")])
    assert event == example_event("premium.due")


def test_every_payload_example_is_the_valid_example_of_its_type() -> None:
    known = {json.dumps(json.loads(p.model_dump_json()), indent=2): t for t, p in EXAMPLE_PAYLOADS.items()}
    payloads = [text.strip() for text in blocks("json") if '"event_type"' not in text]
    assert payloads
    for text in payloads:
        assert text in known, f"not the JSON of a valid example payload:\n{text}"


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_type_is_documented(event_type: str) -> None:
    assert f"`{event_type}`" in DOC.read_text()


def test_the_python_example_publishes_a_premium_due(monkeypatch: pytest.MonkeyPatch) -> None:
    produced: list[dict[str, Any]] = []

    class Producer:
        def __init__(self, config: dict[str, Any]) -> None:
            assert config["enable.idempotence"] is True

        def produce(self, topic: str, **kwargs: Any) -> None:
            produced.append({"topic": topic, **kwargs})

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr("confluent_kafka.Producer", Producer)
    (code,) = blocks("python")
    exec(compile(code, str(DOC), "exec"), {})
    (record,) = produced
    assert record["topic"] == "insurance.billing.events"
    assert record["key"] == b"POL-2024-001234"
    assert dict(record["headers"]) == {"content-type": b"application/avro", "event-type": b"premium.due"}
    event = Codec().decode(record["value"], record["headers"])
    assert isinstance(event, Event)
    assert str(event.data_as(PremiumDue).amount) == "1185.50"
    assert event.data == EXAMPLE_PAYLOADS["premium.due"]
    assert ContentType(dict(record["headers"])["content-type"].decode()) is ContentType.AVRO
