"""Every call to the payment gateway lands on integrations.audit, with no personal data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.contract import Address, Event, PaymentMethod, PremiumDue
from processors.samples import premium_due
from processors.sandbox.gateway import GatewayConfig
from processors.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, publish
from tests.integration.test_failure_path import FAST_TIERS, _resilience, running_payments

pytestmark = pytest.mark.timeout(180)

CARD = "tok_visa_unmistakable_7731"
STREET = "742 Evergreen Terrace"
POSTAL = "49007"


def _with_pii(policy: int, instalment: int, token: str = CARD) -> Event:
    base = premium_due(policy, instalment)
    data = base.data
    assert isinstance(data, PremiumDue)
    method = PaymentMethod(
        type="CREDIT_CARD",
        card_token=token,
        billing_address=Address(
            line1=STREET, line2=None, city="Springfield", state="IL", postal_code=POSTAL, country="US"
        ),
    )
    return Event.create(
        "premium.due",
        subject=data.policy_id,
        data=data.model_copy(update={"payment_method": method}),
        source="billing-system",
    )


async def test_gateway_calls_are_audited_on_kafka_and_no_personal_data_leaks(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    audit = f"{prefix}integrations.audit"
    events = [_with_pii(p, 1) for p in range(1, 11)]
    declined = _with_pii(11, 1, token="tok_decline_insufficient_funds")
    publish(kafka_bootstrap, billing, [*events, declined])
    collector = Collector(kafka_bootstrap, [results, audit])
    async with SandboxServer(gateway=GatewayConfig(seed=2)) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(
                    lambda r: len(collector.on(results)) >= 11 and len(collector.on(audit)) >= 11,
                    timeout_s=120,
                )
        finally:
            collector.close()

    records = [json.loads(m.value()) for m in collector.on(audit)]
    assert {m.key() for m in collector.on(audit)} == {b"payments"}
    assert {r["endpoint"] for r in records} == {"payment-gateway"}
    assert {r["direction"] for r in records} == {"outbound"}
    assert sorted(r["status"] for r in records).count("COMPLETED") == 10
    assert [r["status"] for r in records].count("DECLINED") == 1
    assert all(r["idempotency_key"].startswith("idem_") for r in records)
    assert all(r["latency_ms"] >= 0 for r in records)
    # The request is there, with its personal parts masked.
    assert {r["request_summary"]["payment_method"]["card_token"] for r in records} == {"***"}
    assert {r["request_summary"]["payment_method"]["billing_address"] for r in records} == {"***"}
    assert {r["request_summary"]["currency"] for r in records} == {"USD"}
    everything = b"\n".join(m.value() for m in collector.on(audit)).decode() + caplog.text
    for secret in (CARD, STREET, POSTAL):
        assert secret not in everything
