"""The bordereaux stages run in memory: bad input lands in the DLQ with its reason, good input
is counted once, and a store rebuilt mid-stream gives the same reports."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from processors.bordereaux.topology import BordereauxTopics, build_stages
from processors.bordereaux.treaties import load_treaty_book
from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.contract.events import EVENT_TYPES
from processors.runtime.failures import H
from processors.streams.driver import MemoryDriver

ROOT = Path(__file__).resolve().parents[2]
BOOK = load_treaty_book(ROOT / "tests" / "fixtures" / "treaties_test.yaml")
CODEC = Codec(LocalSchemaIds())
TOPICS = BordereauxTopics()
COUNTS = {TOPICS.policy_events: 2, TOPICS.claim_events: 2, TOPICS.by_policy: 3, TOPICS.partials: 2}


def _driver() -> MemoryDriver:
    stages = build_stages(book=BOOK, codec=CODEC, topics=TOPICS, partition_counts=COUNTS)
    return MemoryDriver(
        stages, {**COUNTS, TOPICS.bordereaux: 1, TOPICS.regulatory_files: 1}, dlq_topic=TOPICS.dlq
    )


def _issued(policy: str, at: datetime, *, premium: str = "1000.00") -> Event:
    data = EVENT_TYPES["policy.issued"](
        policy_id=policy,
        policy_number=policy.replace("POL", "INS"),
        customer_id="CUST-1",
        line_of_business="PROPERTY",
        territory="US",
        inception_date=at.date(),
        expiry_date=at.date() + timedelta(days=364),
        currency="USD",
        gross_premium=Decimal(premium),
        sum_insured=Decimal("500000.00"),
    )
    return Event(
        event_id=f"00000000-0000-4000-8000-{abs(hash((policy, at))) % 10**12:012d}",
        event_type="policy.issued",
        source="policy-admin",
        occurred_at=at,
        subject=policy,
        data=data,
    )


def _publish(
    driver: MemoryDriver, topic: str, partition: int, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    driver.publish([(topic, partition, b"k", value, headers)])


def _dead(driver: MemoryDriver) -> list[tuple[str, str]]:
    out = []
    for msg in driver.output(TOPICS.dlq):
        headers = dict(msg.headers())
        out.append((headers[H.ERROR_CLASS].decode(), headers[H.ERROR_MESSAGE].decode()))
    return out


def test_undecodable_unknown_and_misplaced_events_are_dead_lettered_with_a_reason() -> None:
    driver = _driver()
    _publish(driver, TOPICS.policy_events, 0, b"\x07garbage", [])
    _publish(driver, TOPICS.policy_events, 0, b'{"event_type": "policy.issued"}', [])
    premium_due = json.dumps(
        {"event_type": "premium.due", "occurred_at": "2024-01-05T10:00:00+00:00", "data": {"policy_id": "P"}}
    ).encode()
    _publish(driver, TOPICS.policy_events, 1, premium_due, [])
    driver.run()
    dead = _dead(driver)
    assert [cls for cls, _ in dead] == ["DecodeError", "DecodeError", "RejectedInput"]
    assert "premium.due" in dead[2][1]
    assert driver.output(TOPICS.by_policy) == []


def test_an_invalid_field_passes_routing_and_is_dead_lettered_by_the_ledger() -> None:
    driver = _driver()
    value, headers = CODEC.encode(_issued("POL-1", datetime(2024, 1, 5, tzinfo=UTC)), ContentType.JSON)
    broken = json.loads(value)
    broken["data"]["gross_premium"] = "-5.00"
    _publish(driver, TOPICS.policy_events, 0, json.dumps(broken).encode(), headers)
    good, good_headers = CODEC.encode(_issued("POL-2", datetime(2024, 1, 6, tzinfo=UTC)), ContentType.JSON)
    _publish(driver, TOPICS.policy_events, 0, good, good_headers)
    driver.run()
    dead = _dead(driver)
    assert len(dead) == 1
    assert dead[0][0] == "ValidationFailed"
    assert "gross_premium" in dead[0][1]
    # The refused event's bytes are kept as published, for inspection and replay.
    assert json.loads(driver.output(TOPICS.dlq)[0].value())["data"]["gross_premium"] == "-5.00"
    assert (
        len([m for m in driver.output(TOPICS.by_policy) if dict(m.headers()).get("x-record") == b"event"])
        == 2
    )


def test_an_event_from_the_far_future_is_refused_before_it_moves_event_time() -> None:
    driver = _driver()
    future = datetime.now(UTC) + timedelta(days=30)
    value, headers = CODEC.encode(_issued("POL-9", future), ContentType.JSON)
    _publish(driver, TOPICS.policy_events, 0, value, headers)
    driver.run()
    assert [cls for cls, _ in _dead(driver)] == ["ValidationFailed"]
    assert "future" in _dead(driver)[0][1]
    assert driver.output(TOPICS.by_policy) == []


def test_avro_and_json_inputs_give_the_same_routed_event() -> None:
    at = datetime(2024, 2, 1, 9, 30, tzinfo=UTC)
    event = _issued("POL-3", at)
    for content_type in (ContentType.AVRO, ContentType.JSON):
        value, headers = CODEC.encode(event, content_type)
        peek = CODEC.peek(value, headers)
        assert (peek.event_type, peek.occurred_at, peek.data["policy_id"]) == ("policy.issued", at, "POL-3")


def test_the_watermark_travels_in_headers_and_closes_periods_once_every_source_moved() -> None:
    driver = _driver()
    records = []
    # Every source partition (2 policy + 2 claim) sees January, then March.
    for topic in (TOPICS.policy_events, TOPICS.claim_events):
        for partition in range(2):
            for n, day in enumerate((date(2024, 1, 10), date(2024, 3, 20))):
                at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
                policy = f"POL-{topic[10:16]}-{partition}-{n}"
                value, headers = CODEC.encode(_issued(policy, at), ContentType.JSON)
                if topic == TOPICS.claim_events:
                    # Claims topics carry claims only: a claim on an unknown policy waits.
                    data = EVENT_TYPES["claim.reported"](
                        claim_id=f"CLM-{partition}-{n}",
                        policy_id=policy,
                        policy_number="INS-X",
                        date_of_loss=day,
                        currency="USD",
                        reserve_amount=Decimal("10.00"),
                        paid_amount=Decimal("0.00"),
                        paid_to_date=Decimal("0.00"),
                        status="OPEN",
                    )
                    claim = Event(
                        event_id=f"00000000-0000-4000-9000-{partition}{n:011d}",
                        event_type="claim.reported",
                        source="claims",
                        occurred_at=at,
                        subject=f"CLM-{partition}-{n}",
                        data=data,
                    )
                    value, headers = CODEC.encode(claim, ContentType.JSON)
                records.append((topic, partition, b"k", value, headers))
    driver.publish(records)
    driver.run()
    reports = [json.loads(m.value()) for m in driver.output(TOPICS.bordereaux)]
    closed = {(r["treaty_number"], r["period"]["id"], r["report_type"]) for r in reports}
    # January closed for the monthly quota share (end + 5 days < 20 March everywhere); March is open.
    assert ("TRY-2024-001", "2024-01", "PREMIUM_BORDEREAUX") in closed
    assert not any(period == "2024-03" for _, period, _ in closed)
    january = next(r for r in reports if r["report_id"] == "BRD-TRY-2024-001-2024-01-P")
    assert [row["policy_number"] for row in january["policies"]] == ["INS-policy-0-0", "INS-policy-1-0"]
    assert len({r["report_id"] for r in reports}) == len(reports)
