"""Every call to the payment gateway lands on integrations.audit, with no personal data."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from processors.contract import (
    Address,
    CustomerCreated,
    Event,
    KycConsent,
    KycDocument,
    KycRequested,
    PaymentMethod,
    PremiumDue,
)
from processors.runner import Runner
from processors.samples import premium_due
from processors.sandbox.gateway import GatewayConfig
from processors.sandbox.kyc import KycConfig
from processors.sandbox.server import SandboxServer
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from tests.integration.helpers import Collector, decode, publish
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


NAME = "Wilhelmina Quackenbush"
BIRTH = date(1971, 3, 9)
PASSPORTS = ("PX7391846", "PX1234509")


async def test_no_personal_data_in_any_log_line_or_audit_record_across_apps(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    topics_file, prefix = isolated_topics(FAST_TIERS)
    catalogue = load_catalogue(topics_file)
    payments_results = f"{prefix}integrations.payment.results"
    kyc_results = f"{prefix}integrations.kyc.results"
    audit = f"{prefix}integrations.audit"

    customer = "CUST-PII-1"
    created = Event.create(
        "customer.created",
        subject=customer,
        data=CustomerCreated(
            customer_id=customer, full_name=NAME, date_of_birth=BIRTH, email="wq@example.com", country="US"
        ),
        source="crm",
    )

    def kyc(number: str, expiry: date) -> Event:
        return Event.create(
            "customer.kyc_requested",
            subject=customer,
            data=KycRequested(
                customer_id=customer,
                verification_type="IDENTITY",
                documents=[
                    KycDocument(
                        type="PASSPORT",
                        document_number=number,
                        issuing_country="US",
                        expiry_date=expiry,
                        front_image_url="https://storage.example.com/docs/wq-front.jpg",
                    )
                ],
                consent=KycConsent(
                    terms_accepted=True, data_processing_accepted=True, timestamp=datetime.now(UTC)
                ),
            ),
            source="crm",
        )

    publish(
        kafka_bootstrap,
        f"{prefix}insurance.customer.events",
        [created, kyc(PASSPORTS[0], date(2035, 1, 1)), kyc(PASSPORTS[1], date(2020, 1, 1))],
    )
    payment = _with_pii(1, 1)
    publish(kafka_bootstrap, f"{prefix}insurance.billing.events", [payment])
    collector = Collector(kafka_bootstrap, [payments_results, kyc_results, audit])
    async with SandboxServer(gateway=GatewayConfig(seed=1), kyc=KycConfig()) as sandbox:
        settings = load_settings(
            bootstrap_servers=kafka_bootstrap,
            topics_file=topics_file,
            group_prefix=prefix,
            payments={"gateway": {"base_url": sandbox.url}, "results_topic": payments_results},
            kyc={"provider": {"base_url": sandbox.url}, "results_topic": kyc_results},
        )
        runner = Runner(settings, ["payments", "kyc"], catalogue=catalogue)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            await collector.wait_for(
                lambda r: (
                    len(collector.on(payments_results)) >= 1
                    and len(collector.on(kyc_results)) >= 2
                    and len(collector.on(audit)) >= 2
                ),
                timeout_s=120,
            )
        finally:
            stop.set()
            await task
            collector.close()

    kinds = sorted(decode(m).event_type for m in collector.on(kyc_results))
    assert kinds == ["kyc.approved", "kyc.refused"]
    endpoints = {json.loads(m.value())["endpoint"] for m in collector.on(audit)}
    assert endpoints == {"payment-gateway", "kyc-provider"}
    audit_lines = [r for r in caplog.records if r.name == "processors.audit"]
    assert len(audit_lines) >= 2  # the log side of the audit trail was captured too
    everything = b"\n".join(m.value() for m in collector.on(audit)).decode() + caplog.text
    for secret in (CARD, STREET, POSTAL, NAME, BIRTH.isoformat(), *PASSPORTS, "wq-front.jpg"):
        assert secret not in everything, secret
