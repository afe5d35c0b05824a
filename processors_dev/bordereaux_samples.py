"""Sample policy and claim events for the shipped ``treaties.yaml``.

``processors samples publish --kind bordereaux`` publishes them.

Policies of every treaty's line and territory (and some no treaty takes) are issued over
``months`` months from January 2024, with endorsements, cancellations (return premiums) and
claims (reported, reserved, paid, closed). A last month of activity moves every source
partition's event time past the earlier months' grace, so their periods close and the reports
appear without a close command.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from processors.contract import Event
from processors.contract.events import EVENT_TYPES

__all__ = ["bordereaux_stream"]

_NAMESPACE = UUID("6f0d52a4-3a51-4c55-9b1e-0c1a7d3e9b21")
# (line of business, territory, currency, sum insured range): a mix every treaty sees.
_RISKS = (
    ("PROPERTY", "US", "USD", (150_000, 900_000)),
    ("PROPERTY", "CA", "EUR", (100_000, 600_000)),
    ("MOTOR", "DE", "EUR", (20_000, 80_000)),
    ("MOTOR", "GB", "GBP", (15_000, 60_000)),
    ("PROPERTY", "GB", "GBP", (120_000, 2_000_000)),
    ("PROPERTY", "FR", "EUR", (200_000, 1_500_000)),
    ("MARINE", "NO", "EUR", (500_000, 12_000_000)),
    ("LIABILITY", "US", "USD", (250_000, 1_000_000)),
)


def _money(value: float) -> Decimal:
    return Decimal(str(round(value, 2))).quantize(Decimal("0.01"))


def _event(event_type: str, subject: str, at: datetime, payload: dict[str, Any]) -> Event:
    return Event(
        event_id=uuid5(_NAMESPACE, f"{event_type}|{subject}|{at.isoformat()}"),
        event_type=event_type,
        source="policy-admin" if event_type.startswith("policy.") else "claims-system",
        occurred_at=at,
        subject=subject,
        data=EVENT_TYPES[event_type](**payload),
    )


def _at(day: date, rng: random.Random) -> datetime:
    return datetime.combine(day, time(rng.randint(8, 17), rng.randint(0, 59)), tzinfo=UTC)


def bordereaux_stream(policies: int = 200, *, months: int = 3, seed: int = 7) -> Iterator[Event]:
    """Events in event-time order (``months`` ≥ 1, from 2024-01-01, plus one month that closes them)."""
    rng = random.Random(seed)
    start = date(2024, 1, 1)
    span = (date(2024, 1 + months, 1) if months < 12 else date(2025, 1, 1)) - start
    closing_month = start + span
    timeline: list[tuple[datetime, int, Event]] = []

    def add(at: datetime, event: Event) -> None:
        timeline.append((at, len(timeline), event))

    for n in range(1, policies + 1):
        lob, territory, currency, (low, high) = _RISKS[n % len(_RISKS)]
        policy_id = f"POL-S-{n:06d}"
        base = {
            "policy_id": policy_id,
            "policy_number": f"INS-S-{n:06d}",
            "customer_id": f"CUST-S-{n:06d}",
            "line_of_business": lob,
            "territory": territory,
            "currency": currency,
        }
        inception = start + timedelta(days=rng.randrange(span.days))
        expiry = inception + timedelta(days=364)
        sum_insured = _money(rng.uniform(low, high))
        gross = _money(float(sum_insured) * rng.uniform(0.002, 0.01))
        term = {**base, "inception_date": inception, "expiry_date": expiry}
        issued_at = _at(inception, rng)
        add(
            issued_at,
            _event(
                "policy.issued",
                policy_id,
                issued_at,
                {**term, "gross_premium": gross, "sum_insured": sum_insured},
            ),
        )
        roll = rng.random()
        if roll < 0.2:
            change = _money(float(gross) * rng.uniform(-0.2, 0.3))
            day = min(inception + timedelta(days=rng.randint(5, 40)), closing_month + timedelta(days=20))
            at = _at(day, rng)
            add(
                at,
                _event(
                    "policy.endorsed",
                    policy_id,
                    at,
                    {
                        **term,
                        "gross_premium": gross + change,
                        "sum_insured": sum_insured,
                        "effective_date": day,
                        "premium_change": change,
                    },
                ),
            )
        elif roll < 0.3:
            day = min(inception + timedelta(days=rng.randint(10, 50)), closing_month + timedelta(days=20))
            refund = -_money(float(gross) * (expiry - day).days / 365)
            at = _at(day, rng)
            add(
                at,
                _event(
                    "policy.cancelled",
                    policy_id,
                    at,
                    {
                        **term,
                        "gross_premium": gross + refund,
                        "sum_insured": sum_insured,
                        "effective_date": day,
                        "premium_change": refund,
                        "cancellation_reason": "customer request",
                    },
                ),
            )
        if rng.random() < 0.35:
            claim_id = f"CLM-S-{n:06d}"
            loss = inception + timedelta(days=rng.randint(1, 30))
            reserve = _money(float(sum_insured) * rng.uniform(0.005, 0.05))
            claim = {
                "claim_id": claim_id,
                "policy_id": policy_id,
                "policy_number": base["policy_number"],
                "date_of_loss": loss,
                "currency": currency,
            }
            reported = _at(loss + timedelta(days=1), rng)
            add(
                reported,
                _event(
                    "claim.reported",
                    claim_id,
                    reported,
                    {
                        **claim,
                        "reserve_amount": reserve,
                        "paid_amount": Decimal("0.00"),
                        "paid_to_date": Decimal("0.00"),
                        "status": "OPEN",
                    },
                ),
            )
            paid = _money(float(reserve) * rng.uniform(0.3, 1.0))
            paid_at = _at(loss + timedelta(days=rng.randint(10, 35)), rng)
            add(
                paid_at,
                _event(
                    "claim.paid",
                    claim_id,
                    paid_at,
                    {
                        **claim,
                        "reserve_amount": reserve - paid,
                        "paid_amount": paid,
                        "paid_to_date": paid,
                        "status": "OPEN",
                    },
                ),
            )
    # The closing month: a late-issued policy per risk and claim touches on every policy partition.
    for n in range(policies + 1, policies + 1 + max(60, policies // 4)):
        lob, territory, currency, (low, high) = _RISKS[n % len(_RISKS)]
        policy_id = f"POL-S-{n:06d}"
        day = closing_month + timedelta(days=rng.randint(20, 27))
        sum_insured = _money(rng.uniform(low, high))
        at = _at(day, rng)
        add(
            at,
            _event(
                "policy.issued",
                policy_id,
                at,
                {
                    "policy_id": policy_id,
                    "policy_number": f"INS-S-{n:06d}",
                    "customer_id": f"CUST-S-{n:06d}",
                    "line_of_business": lob,
                    "territory": territory,
                    "currency": currency,
                    "inception_date": day,
                    "expiry_date": day + timedelta(days=364),
                    "gross_premium": _money(float(sum_insured) * 0.004),
                    "sum_insured": sum_insured,
                },
            ),
        )
        claim_id = f"CLM-S-{n:06d}"
        reported = _at(day + timedelta(days=1), rng)
        add(
            reported,
            _event(
                "claim.reported",
                claim_id,
                reported,
                {
                    "claim_id": claim_id,
                    "policy_id": policy_id,
                    "policy_number": f"INS-S-{n:06d}",
                    "date_of_loss": day,
                    "currency": currency,
                    "reserve_amount": _money(float(sum_insured) * 0.01),
                    "paid_amount": Decimal("0.00"),
                    "paid_to_date": Decimal("0.00"),
                    "status": "OPEN",
                },
            ),
        )
    timeline.sort(key=lambda item: (item[0], item[1]))
    for _, _, event in timeline:
        yield event
