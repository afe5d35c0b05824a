"""Realistic sample events for the demo, the benchmarks and the tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal

from processors.contract import Address, Event, PaymentMethod, PremiumDue, RefundRequested

__all__ = [
    "CARD_TOKENS",
    "MIXED_TYPES",
    "mixed_events",
    "policy_id",
    "premium_due",
    "premium_due_stream",
    "refund_requested",
]

CARD_TOKENS = {
    "ok": "tok_visa_4242",
    "declined": "tok_decline_insufficient_funds",
    "expired": "tok_decline_card_expired",
    "pending": "tok_pending_3ds",
}

_CITIES = [("Springfield", "IL", "62701"), ("Portland", "OR", "97201"), ("Austin", "TX", "73301")]


def policy_id(n: int) -> str:
    return f"POL-2024-{n:06d}"


def _method(rng: random.Random, token: str) -> PaymentMethod:
    city, state, postal = rng.choice(_CITIES)
    return PaymentMethod(
        type="CREDIT_CARD",
        card_token=token,
        billing_address=Address(
            line1=f"{rng.randint(1, 999)} Main St",
            line2=None,
            city=city,
            state=state,
            postal_code=postal,
            country="US",
        ),
    )


def premium_due(
    policy: int,
    instalment: int,
    *,
    amount: Decimal | None = None,
    currency: str = "USD",
    token: str = CARD_TOKENS["ok"],
    rng: random.Random | None = None,
) -> Event:
    rng = rng or random.Random(policy * 1000 + instalment)
    pid = policy_id(policy)
    value = amount if amount is not None else Decimal(rng.randint(5_000, 250_000)) / 100
    data = PremiumDue(
        policy_id=pid,
        policy_number=f"INS-2024-{policy:06d}",
        instalment_id=f"{pid}-I{instalment:03d}",
        due_date=date(2024, 1, 15) + timedelta(days=30 * instalment),
        amount=value,
        currency=currency,
        payment_method=_method(rng, token),
    )
    return Event.create("premium.due", subject=pid, data=data, source="billing-system")


def refund_requested(policy: int, refund: int, *, amount: Decimal, token: str = CARD_TOKENS["ok"]) -> Event:
    rng = random.Random(policy * 7 + refund)
    pid = policy_id(policy)
    data = RefundRequested(
        policy_id=pid,
        policy_number=f"INS-2024-{policy:06d}",
        refund_id=f"{pid}-R{refund:03d}",
        amount=amount,
        currency="USD",
        reason="mid-term cancellation",
        payment_method=_method(rng, token),
        original_payment_id=None,
    )
    return Event.create("refund.requested", subject=pid, data=data, source="billing-system")


def premium_due_stream(
    count: int, policies: int, *, seed: int = 7, token_mix: dict[str, float] | None = None
) -> Iterator[Event]:
    """``count`` premium.due events spread over ``policies`` policies, instalments in order."""
    rng = random.Random(seed)
    mix = token_mix or {"ok": 1.0}
    kinds, weights = zip(*mix.items(), strict=True)
    next_instalment = [0] * policies
    for i in range(count):
        policy = i % policies
        next_instalment[policy] += 1
        token = CARD_TOKENS[rng.choices(kinds, weights)[0]]
        yield premium_due(policy + 1, next_instalment[policy], token=token, rng=rng)


MIXED_TYPES = (
    "policy.issued",
    "policy.endorsed",
    "policy.renewed",
    "policy.cancelled",
    "premium.due",
    "claim.reported",
    "claim.reserved",
    "claim.paid",
    "claim.settled",
)


def mixed_events(count: int, entities: int, *, seed: int = 11) -> Iterator[Event]:
    """``count`` policy, billing and claim events over ``entities`` policies and as many claims.

    Payloads are the contract's examples with the ids changed, so every event is valid; each
    event has its own ``event_id``.  Used for partner webhook fan-out.
    """
    from processors.contract.examples import EXAMPLE_PAYLOADS, EXAMPLE_SOURCES

    rng = random.Random(seed)
    for _ in range(count):
        event_type = rng.choice(MIXED_TYPES)
        n = rng.randrange(entities) + 1
        base = EXAMPLE_PAYLOADS[event_type]
        changes: dict[str, object] = {"policy_id": policy_id(n), "policy_number": f"INS-2024-{n:06d}"}
        if event_type.startswith("claim."):
            changes["claim_id"] = f"CLM-2024-{n:06d}"
        elif event_type == "premium.due":
            changes["instalment_id"] = f"{policy_id(n)}-I{rng.randrange(1, 13):03d}"
        data = base.model_copy(update=changes)
        yield Event.create(
            event_type,
            subject=data.aggregate_id,
            data=data,
            source=EXAMPLE_SOURCES[event_type.partition(".")[0]],
        )
