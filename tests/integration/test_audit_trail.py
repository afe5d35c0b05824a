"""Every external interaction lands on integrations.audit, and no personal data reaches it or a log.

The outbound calls (payment gateway, KYC provider) and the inbound webhook requests (accepted,
duplicate and refused) are fed recognisable personal data; afterwards every audit record and
every captured log line (messages, tracebacks and ``extra`` fields, rendered as the JSON log
handler writes them) is searched for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import confluent_kafka
import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.api.inbound import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
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
from processors.observability.logs import JsonFormatter, RedactingFilter
from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from processors_dev.samples import premium_due
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.kyc import KycConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, decode, publish
from tests.integration.test_failure_path import FAST_TIERS, _resilience, running_payments

pytestmark = pytest.mark.timeout(180)

CARD = "tok_visa_unmistakable_7731"
STREET = "742 Evergreen Terrace"
POSTAL = "49007-3321"  # ZIP+4: a bare five-digit number could be a port in a log line


def value_of(msg: confluent_kafka.Message) -> bytes:
    value = msg.value()
    assert value is not None
    return value


@pytest.fixture
def raw_log_records() -> Iterator[None]:
    """Root handlers that redact records in place (left by ``configure_logging`` elsewhere) are
    detached for the test, so ``caplog`` sees the records exactly as the code logged them."""
    root = logging.getLogger()
    redacting = [h for h in root.handlers if any(isinstance(f, RedactingFilter) for f in h.filters)]
    for handler in redacting:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in redacting:
            root.addHandler(handler)


def captured_output(audit: Sequence[confluent_kafka.Message], caplog: pytest.LogCaptureFixture) -> str:
    """Every audit record, the captured log text, and each log record as a JSON log line
    (``caplog.text`` leaves out the ``extra`` fields; the JSON line has them)."""
    formatter = JsonFormatter()
    return "\n".join(
        [
            b"\n".join(value_of(m) for m in audit).decode(),
            caplog.text,
            *(formatter.format(record) for record in caplog.records),
        ]
    )


def leaked(secrets: Sequence[str], text: str) -> dict[str, str]:
    """Each secret found in ``text``, with the line around its first occurrence."""
    found = {}
    for secret in secrets:
        at = text.find(secret)
        if at >= 0:
            start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
            found[secret] = text[start : end if end >= 0 else len(text)][:500]
    return found


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


@pytest.mark.usefixtures("raw_log_records")
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

    records = [json.loads(value_of(m)) for m in collector.on(audit)]
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
    assert leaked((CARD, STREET, POSTAL), captured_output(collector.on(audit), caplog)) == {}


NAME = "Wilhelmina Quackenbush"
BIRTH = date(1971, 3, 9)
PASSPORTS = ("PX7391846", "PX1234509")


@pytest.mark.usefixtures("raw_log_records")
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
    endpoints = {json.loads(value_of(m))["endpoint"] for m in collector.on(audit)}
    assert endpoints == {"payment-gateway", "kyc-provider"}
    audit_lines = [r for r in caplog.records if r.name == "processors.audit"]
    assert len(audit_lines) >= 2  # the log side of the audit trail was captured too
    secrets = (CARD, STREET, POSTAL, NAME, BIRTH.isoformat(), *PASSPORTS, "wq-front.jpg")
    assert leaked(secrets, captured_output(collector.on(audit), caplog)) == {}


# -- the inbound side ----------------------------------------------------------------------------

PENDING_CARD = "tok_pending_unmistakable_7731"
IMAGE = "wq-front.jpg"
INBOUND_PII = (PENDING_CARD, STREET, POSTAL, NAME, BIRTH.isoformat(), *PASSPORTS, IMAGE)
PAYMENT_SECRET = SecretStr("whsec_audit_trail_payments")
KYC_SECRET = SecretStr("whsec_audit_trail_kyc")
INBOUND = "/api/v1/inbound/"


def personal_details() -> dict[str, Any]:
    """Every PII string, under the keys a careless callback would use and in free text."""
    return {
        "full_name": NAME,
        "date_of_birth": BIRTH.isoformat(),
        "passport_number": PASSPORTS[0],
        "card_token": PENDING_CARD,
        "billing_address": {"line1": STREET, "city": "Springfield", "postal_code": POSTAL, "country": "US"},
        "front_image_url": f"https://storage.example.com/docs/{IMAGE}",
        "remarks": (
            f"{NAME} (born {BIRTH.isoformat()}, passports {PASSPORTS[0]} and {PASSPORTS[1]}),"
            f" card {PENDING_CARD}, {STREET} {POSTAL}, scan {IMAGE}"
        ),
    }


def confirmation_body(event_id: str) -> bytes:
    """A completed payment confirmation carrying personal data besides the fields we read."""
    return jsonwire.dumps(
        {
            "event_id": event_id,
            "event_type": "payment.confirmed",
            "created_at": "2024-06-10T06:13:20Z",
            "data": {
                "payment_id": f"PMT-{event_id}",
                "status": "COMPLETED",
                "gateway_reference": f"ch_{event_id}",
                "amount": "250.00",
                "currency": "USD",
                "transaction_type": "CHARGE",
                "policy_id": "POL-2024-009901",
                "reference_id": "POL-2024-009901-I001",
                "idempotency_key": f"idem_{event_id}",
                "processed_at": "2024-06-10T06:13:20Z",
                **personal_details(),
            },
        }
    )


def kyc_callback_body(event_id: str, customer: str, **changes: Any) -> bytes:
    """A KYC decision (REVIEW: a PEP match on the customer's name) carrying personal data."""
    data: dict[str, Any] = {
        "verification_id": f"VRF-2024-{event_id[-6:].upper()}",
        "customer_id": customer,
        "idempotency_key": f"idem_{event_id}",
        "client_reference": "5b0f7f8e-5d1c-4a3e-9a57-0c2d7d8e1100",
        "status": "REVIEW",
        "risk_score": 55,
        "risk_level": "MEDIUM",
        "checks": [
            {"type": "DOCUMENT_AUTHENTICITY", "status": "PASSED", "confidence": "0.97"},
            {
                "type": "PEP_CHECK",
                "status": "REVIEW",
                "matches": [{"name": NAME, "list_name": "PEP-GLOBAL", "score": "0.91"}],
            },
        ],
        "verified_at": "2024-06-10T06:13:20Z",
        "documents": [
            {
                "type": "PASSPORT",
                "document_number": PASSPORTS[1],
                "front_image_url": f"https://storage.example.com/docs/{IMAGE}",
            }
        ],
        **personal_details(),
    }
    data.update(changes)
    created_at = "2024-06-10T06:13:20Z"
    return jsonwire.dumps(
        {"event_id": event_id, "event_type": "verification.completed", "created_at": created_at, "data": data}
    )


def signed_headers(secret: SecretStr, event_id: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


@contextlib.asynccontextmanager
async def running(runner: Runner) -> AsyncIterator[Runner]:
    """``runner`` running (engines and API up, as ``processors run --api``) until the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(runner.run(stop, on_ready=ready.set))
    waiting = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait([task, waiting], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # the runner failed to start: its error
        assert ready.is_set(), "the runner did not start within 60 s"
        yield runner
    finally:
        waiting.cancel()
        stop.set()
        await task


@pytest.mark.usefixtures("raw_log_records")
async def test_no_personal_data_in_any_log_line_or_audit_record_from_the_inbound_endpoints(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Payments and KYC with the API (``processors run payments kyc --api``):

    (a) the sandbox KYC provider, asynchronous, posts signed decisions to our endpoint for a
    customer whose documents carry the passport numbers, name, birth date and image URL;
    (b) the sandbox gateway answers PENDING for a ``tok_pending_…`` card and confirms later
    through our endpoint (both providers deliver every callback twice: a duplicate each);
    (c) hand-made callbacks full of personal data for each provider: one validly signed, one
    with a bad signature (401) and one malformed (400).
    """
    caplog.set_level(logging.DEBUG)
    topics_file, prefix = isolated_topics(FAST_TIERS)
    payments_results = f"{prefix}integrations.payment.results"
    kyc_results = f"{prefix}integrations.kyc.results"
    audit = f"{prefix}integrations.audit"
    customer = "CUST-PII-2"
    created = Event.create(
        "customer.created",
        subject=customer,
        data=CustomerCreated(
            customer_id=customer, full_name=NAME, date_of_birth=BIRTH, email="wq@example.com", country="US"
        ),
        source="crm",
    )
    requests = [
        Event.create(
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
                        front_image_url=f"https://storage.example.com/docs/{IMAGE}",
                    )
                ],
                consent=KycConsent(
                    terms_accepted=True, data_processing_accepted=True, timestamp=datetime.now(UTC)
                ),
            ),
            source="crm",
        )
        # The first goes to the provider (approved, by callback); the second has expired.
        for number, expiry in ((PASSPORTS[0], date(2035, 1, 1)), (PASSPORTS[1], date(2020, 1, 1)))
    ]
    payment = _with_pii(7, 1, token=PENDING_CARD)

    pay_ok, pay_bad, pay_malformed = "evt_pii_pay_ok", "evt_pii_pay_bad_sig", "evt_pii_pay_malformed"
    kyc_ok, kyc_bad, kyc_malformed = "evt_pii_kyc_ok", "evt_pii_kyc_bad_sig", "evt_pii_kyc_malformed"

    def hand_made_request(
        provider: str, event_id: str, body: bytes, secret: SecretStr, *, signed_body: bytes | None = None
    ) -> tuple[str, str, bytes, SecretStr, bytes]:
        """What to POST, and how to sign it (at the time it is sent)."""
        return provider, event_id, body, secret, signed_body or body

    hand_made = [
        hand_made_request("payment-gateway", pay_ok, confirmation_body(pay_ok), PAYMENT_SECRET),
        # Signed with a secret that is not ours.
        hand_made_request("payment-gateway", pay_bad, confirmation_body(pay_bad), SecretStr("whsec_a_guess")),
        # Malformed: the JSON stops half-way, after the personal data.
        hand_made_request(
            "payment-gateway", pay_malformed, confirmation_body(pay_malformed)[:-3], PAYMENT_SECRET
        ),
        hand_made_request("kyc-provider", kyc_ok, kyc_callback_body(kyc_ok, customer), KYC_SECRET),
        # The signature is of another body (the same callback, approved).
        hand_made_request(
            "kyc-provider",
            kyc_bad,
            kyc_callback_body(kyc_bad, customer),
            KYC_SECRET,
            signed_body=kyc_callback_body(kyc_bad, customer, status="APPROVED"),
        ),
        # Malformed: valid JSON, but the request reference is a passport number, not a UUID.
        hand_made_request(
            "kyc-provider",
            kyc_malformed,
            kyc_callback_body(kyc_malformed, customer, client_reference=PASSPORTS[0]),
            KYC_SECRET,
        ),
    ]

    # The inputs carry every string looked for (or the search below would prove nothing).
    # (The events as JSON: on the wire, Avro carries the date of birth as a day number.)
    published = "\n".join(e.model_dump_json() for e in [created, *requests, payment])
    assert [s for s in INBOUND_PII if s not in published] == []
    for _, event_id, body, _, _ in hand_made:
        assert [s for s in INBOUND_PII if s.encode() not in body] == [], event_id

    def audited(records: list[confluent_kafka.Message], direction: str) -> list[dict[str, Any]]:
        values = [json.loads(value_of(m)) for m in records if m.topic() == audit]
        return [r for r in values if r["direction"] == direction]

    def statuses(records: list[confluent_kafka.Message], endpoint: str) -> set[str]:
        return {r["status"] for r in audited(records, "inbound") if r["endpoint"] == endpoint}

    def types(topic: str) -> list[str]:
        return sorted(decode(m).event_type for m in collector.on(topic))

    expected_inbound = {"accepted", "duplicate", "signature_mismatch", "malformed"}

    payment_types = ["payment.confirmed", "payment.confirmed", "payment.pending"]
    kyc_types = ["kyc.approved", "kyc.pending", "kyc.refused", "kyc.review"]

    def has(topic: str, wanted: list[str]) -> bool:
        return not Counter(wanted) - Counter(types(topic))

    def done(records: list[confluent_kafka.Message]) -> bool:
        return (
            has(payments_results, payment_types)
            and has(kyc_results, kyc_types)
            and {r["endpoint"] for r in audited(records, "outbound")} == {"payment-gateway", "kyc-provider"}
            and statuses(records, "payment-gateway") >= expected_inbound
            and statuses(records, "kyc-provider") >= expected_inbound
        )

    answers: list[tuple[int, dict[str, Any]]] = []
    collector = Collector(kafka_bootstrap, [payments_results, kyc_results, audit])
    gateway = GatewayConfig(seed=3, webhook_secret=PAYMENT_SECRET, confirm_delay_ms=20, confirm_twice=True)
    kyc = KycConfig(webhook_secret=KYC_SECRET)
    try:
        async with SandboxServer(gateway=gateway, kyc=kyc) as sandbox, aiohttp.ClientSession() as client:
            settings = load_settings(
                bootstrap_servers=kafka_bootstrap,
                topics_file=topics_file,
                group_prefix=prefix,
                payments={"gateway": {"base_url": sandbox.url}, "results_topic": payments_results},
                kyc={"provider": {"base_url": sandbox.url}, "results_topic": kyc_results},
                api={
                    "enabled": True,
                    "port": 0,
                    "payment_gateway": {"secret": PAYMENT_SECRET},
                    "kyc_provider": {"secret": KYC_SECRET},
                },
            )
            runner = Runner(settings, ["payments", "kyc"], catalogue=load_catalogue(topics_file))
            async with running(runner):
                assert runner.api is not None
                sandbox.gateway.update_config(confirm_url=f"{runner.api.url}{INBOUND}payment-gateway")
                sandbox.kyc.update_config(
                    mode="async",
                    callback_url=f"{runner.api.url}{INBOUND}kyc-provider",
                    callback_delay_ms=20,
                    duplicate_callbacks=True,
                )
                publish(kafka_bootstrap, f"{prefix}insurance.customer.events", [created, *requests])
                publish(kafka_bootstrap, f"{prefix}insurance.billing.events", [payment])
                for provider, event_id, body, secret, signed_body in hand_made:
                    headers = signed_headers(secret, event_id, signed_body)
                    async with client.post(
                        f"{runner.api.url}{INBOUND}{provider}", data=body, headers=headers
                    ) as response:
                        answers.append((response.status, await response.json()))
                await collector.wait_for(done, timeout_s=120)
                await sandbox.kyc.wait_callbacks()
            kyc_deliveries = dict(sandbox.kyc.callbacks_by_status)
    finally:
        collector.close()

    # Each result published once (the providers' duplicate deliveries were not published again).
    assert types(payments_results) == payment_types
    assert types(kyc_results) == kyc_types
    assert [status for status, _ in answers] == [200, 401, 400] * 2
    errors = [answer.get("error") for _, answer in answers]
    assert errors == [None, "invalid_signature", "malformed"] * 2
    assert kyc_deliveries == {200: 2}  # the decision, and its duplicate, both accepted
    # The answers to refused requests name the problem, never a value from the body.
    assert leaked(INBOUND_PII, json.dumps(answers)) == {}

    records = collector.on(audit)
    inbound = audited(records, "inbound")
    assert {m.key() for m in records if json.loads(value_of(m))["direction"] == "inbound"} == {b"api"}
    assert {r["endpoint"] for r in inbound} == {"payment-gateway", "kyc-provider"}
    assert {r["operation"] for r in inbound} == {"webhook"}
    by_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in inbound:
        by_id.setdefault((r["endpoint"], r["request_summary"]["provider_event_id"]), []).append(r)
    for provider, ok, bad, malformed in (
        ("payment-gateway", pay_ok, pay_bad, pay_malformed),
        ("kyc-provider", kyc_ok, kyc_bad, kyc_malformed),
    ):
        assert [(r["status"], r["outcome"]) for r in by_id[(provider, ok)]] == [("accepted", "success")]
        refused = [*by_id[(provider, bad)], *by_id[(provider, malformed)]]
        assert [(r["status"], r["outcome"], r["request_summary"]["http_status"]) for r in refused] == [
            ("signature_mismatch", "rejected", 401),
            ("malformed", "rejected", 400),
        ]
        assert all(len(r["request_summary"]["body_sha256"]) == 64 for r in refused)
        # The sandbox's own callback: accepted once, then its second delivery as a duplicate.
        from_sandbox = [
            sorted(r["status"] for r in rs)
            for (endpoint, event_id), rs in by_id.items()
            if endpoint == provider and event_id not in (ok, bad, malformed)
        ]
        assert from_sandbox == [["accepted", "duplicate"]], from_sandbox

    assert leaked(INBOUND_PII, captured_output(records, caplog)) == {}
