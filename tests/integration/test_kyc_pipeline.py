"""The KYC slice end to end: 500 requests through a real broker, the KYC app in-process and the
sandbox provider, in sync and in async mode.

Every decision is checked against the outcome its document numbers chose; refused requests
(no consent, an expired document) are checked never to reach the provider.  In async mode the
app publishes ``kyc.pending`` and the sandbox posts signed callbacks to a receiver in this test,
which checks each signature and maps each callback with ``decision_from_callback`` (what the
inbound webhook endpoint does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.apps.kyc import mapping
from processors.contract import (
    CustomerCreated,
    Event,
    KycConsent,
    KycDecision,
    KycDocument,
    KycPending,
    KycRefused,
    KycRequested,
)
from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from processors_dev.sandbox.kyc import KycConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, decode, publish

pytestmark = pytest.mark.timeout(300)

REQUESTS = 500
SECRET = "whsec_kyc_pipeline_test"

# What the test expects each document-number prefix to choose, written down independently of the
# sandbox: (decision, the check that is not PASSED, its status, the list that matched).
PREFIXES: dict[str, tuple[str, str | None, str | None, str | None]] = {
    "SANC": ("REJECTED", "SANCTIONS_SCREENING", "FAILED", "OFAC-SDN"),
    "FORGE": ("REJECTED", "DOCUMENT_AUTHENTICITY", "FAILED", None),
    "FACEX": ("REJECTED", "FACE_MATCH", "FAILED", None),
    "FACE": ("REVIEW", "FACE_MATCH", "REVIEW", None),
    "PEP": ("REVIEW", "PEP_CHECK", "REVIEW", "PEP-GLOBAL"),
    "AB": ("APPROVED", None, None, None),
}
SEVERITY = {"APPROVED": 0, "REVIEW": 1, "REJECTED": 2}
LEVELS = {"APPROVED": ("LOW", 0, 29), "REVIEW": ("MEDIUM", 40, 69), "REJECTED": ("HIGH", 75, 100)}

# Each case: document-number prefixes (several documents when more than one), or a refusal.
CASES: list[tuple[str, ...]] = [
    ("AB",),
    ("SANC",),
    ("FORGE",),
    ("FACEX",),
    ("FACE",),
    ("PEP",),
    ("AB", "PEP"),
    ("PEP", "SANC"),
    ("FACE", "FORGE"),
    ("refuse:terms",),
    ("refuse:processing",),
    ("refuse:expired",),
]


@dataclass(frozen=True)
class Expected:
    event: Event
    case: tuple[str, ...]
    refusal: str | None  # reason code, or None when the provider decides
    status: str | None  # APPROVED / REVIEW / REJECTED
    not_passed: dict[str, tuple[str, str | None]]  # check type → (status, list name)


def _prefix(number: str) -> str:
    # The longest prefix first: FACEX before FACE.
    return next(p for p in sorted(PREFIXES, key=len, reverse=True) if number.startswith(p))


def _document(number: str, expiry: date) -> KycDocument:
    return KycDocument(
        type="PASSPORT",
        document_number=number,
        issuing_country="US",
        expiry_date=expiry,
        front_image_url="https://storage.example.com/docs/front.jpg",
    )


def build_requests(count: int) -> list[Expected]:
    """``count`` requests over count/2 customers (two each, so key order shows), every case covered."""
    out: list[Expected] = []
    far = date(2035, 1, 1)
    for i in range(count):
        case = CASES[i % len(CASES)]
        customer = f"CUST-{i // 2:06d}"
        refusal: str | None = None
        terms = processing = True
        expiry = far
        if case[0].startswith("refuse:"):
            kind = case[0].partition(":")[2]
            refusal = "document_expired" if kind == "expired" else "consent_missing"
            terms, processing = kind != "terms", kind != "processing"
            if kind == "expired":
                expiry = date(2020, 1, 1)
            numbers = [f"AB{i:06d}"]
        else:
            numbers = [f"{prefix}{i:06d}D{n}" for n, prefix in enumerate(case)]
        data = KycRequested(
            customer_id=customer,
            verification_type="IDENTITY",
            documents=[_document(number, expiry) for number in numbers],
            consent=KycConsent(
                terms_accepted=terms, data_processing_accepted=processing, timestamp=datetime.now(UTC)
            ),
        )
        event = Event.create("customer.kyc_requested", subject=customer, data=data, source="crm")
        status = None
        not_passed: dict[str, tuple[str, str | None]] = {}
        if refusal is None:
            chosen = [PREFIXES[_prefix(number)] for number in numbers]
            status = max((c[0] for c in chosen), key=SEVERITY.__getitem__)
            for _, check, check_status, list_name in chosen:
                if check is not None and check_status is not None:
                    previous = not_passed.get(check)
                    if previous is None or previous[0] == "REVIEW":
                        not_passed[check] = (check_status, list_name)
        out.append(Expected(event, case, refusal, status, not_passed))
    return out


def customer_created(n: int) -> Event:
    data = CustomerCreated(
        customer_id=f"CUST-{n:06d}",
        full_name="Jane Example",
        date_of_birth=date(1985, 4, 12),
        email="jane@example.com",
        country="US",
    )
    return Event.create("customer.created", subject=data.customer_id, data=data, source="crm")


def check_decision(expected: Expected, event: Event) -> None:
    """``event`` is the decision the input chose: type, status, risk band, checks and matches."""
    assert expected.status is not None
    assert event.event_type == f"kyc.{expected.status.lower()}", expected.case
    decision = event.data_as(KycDecision)
    assert decision.status == expected.status
    assert decision.customer_id == expected.event.subject == event.subject
    assert decision.source_event_id == expected.event.event_id
    assert decision.idempotency_key == mapping.idempotency_key(expected.event.event_id)
    level, low, high = LEVELS[expected.status]
    assert decision.risk_level == level
    assert low <= decision.risk_score <= high
    checks = {check.type: check for check in decision.checks}
    assert set(checks) == {"DOCUMENT_AUTHENTICITY", "FACE_MATCH", "SANCTIONS_SCREENING", "PEP_CHECK"}
    for kind, check in checks.items():
        want, list_name = expected.not_passed.get(kind, ("PASSED", None))
        assert check.status == want, (expected.case, kind)
        if list_name is not None:
            assert check.matches, (expected.case, kind)
            assert {match.list_name for match in check.matches} == {list_name}
            assert all(match.name for match in check.matches)
        else:
            assert check.matches == [], (expected.case, kind)


class CallbackReceiver:
    """A small HTTP receiver that records the sandbox's callbacks and checks their signatures."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.received: list[tuple[str, dict[str, Any]]] = []  # (provider event id, payload)
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Signature-Timestamp", "")
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Signature", ""), f"sha256={expected}"):
            self.bad_signatures += 1
            return web.Response(status=401)
        payload = jsonwire.loads(body)
        event_id = request.headers["X-Provider-Event-Id"]
        assert payload["event_id"] == event_id
        self.received.append((event_id, payload))
        self._changed.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/kyc", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/kyc"

    async def wait_for(self, count: int, *, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def running_kyc(
    bootstrap: str, topics_file: Path, prefix: str, provider_url: str, *, api: dict[str, Any] | None = None
) -> AsyncIterator[Runner]:
    settings = load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        group_prefix=prefix,
        kyc={"provider": {"base_url": provider_url}, "results_topic": f"{prefix}integrations.kyc.results"},
        payments={"results_topic": f"{prefix}integrations.payment.results"},
        **({"api": api} if api is not None else {}),
    )
    runner = Runner(settings, ["kyc"], catalogue=load_catalogue(topics_file))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(60):
            while not runner.engines or (api is not None and runner.api is None):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield runner
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_500_requests_get_the_decisions_their_documents_chose(
    mode: str, kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]]
) -> None:
    topics_file, prefix = isolated_topics()
    source = f"{prefix}insurance.customer.events"
    results = f"{prefix}integrations.kyc.results"
    dlq = f"{prefix}integrations.kyc.dlq"
    tiers = [tier.topic for tier in load_catalogue(topics_file).app("kyc").retry_tiers]

    expected = build_requests(REQUESTS)
    by_event_id = {e.event.event_id: e for e in expected}
    refused = [e for e in expected if e.refusal is not None]
    sent = [e for e in expected if e.refusal is None]
    covered = {e.case for e in expected}
    assert covered == set(CASES)
    assert {number for e in sent for number in e.case} == set(PREFIXES)  # every sandbox outcome
    events: list[Event] = []
    for n, item in enumerate(expected):  # customer.created events interleaved: the app ignores them
        events.append(item.event)
        if n % 10 == 0:
            events.append(customer_created(n // 2))
    publish(kafka_bootstrap, source, events)

    receiver = CallbackReceiver(SECRET)
    await receiver.start()
    kyc = KycConfig(
        mode=mode,  # type: ignore[arg-type]
        callback_url=receiver.url if mode == "async" else None,
        webhook_secret=SecretStr(SECRET),
        callback_delay_ms=20,
        duplicate_callbacks=mode == "async",  # providers send duplicates: each callback twice
    )
    collector = Collector(kafka_bootstrap, [results, dlq, *tiers])
    try:
        async with SandboxServer(kyc=kyc) as sandbox:
            async with running_kyc(kafka_bootstrap, topics_file, prefix, sandbox.url):
                await collector.wait_for(lambda r: len(collector.on(results)) >= REQUESTS, timeout_s=180)
                if mode == "async":
                    await receiver.wait_for(2 * len(sent), timeout_s=60)
                    await sandbox.kyc.wait_callbacks()
                collector.poll(0.5)
            verifications = dict(sandbox.kyc.verifications_by_key)
            answers = dict(sandbox.kyc.requests_by_status)
    finally:
        collector.close()
        await receiver.stop()

    assert collector.on(dlq) == []
    assert all(collector.on(tier) == [] for tier in tiers)
    outputs = [decode(msg) for msg in collector.on(results)]
    assert len(outputs) == REQUESTS
    for msg, event in zip(collector.on(results), outputs, strict=True):
        assert msg.key() == event.subject.encode()
    by_source = {event.data.source_event_id: event for event in outputs}  # type: ignore[attr-defined]
    assert by_source.keys() == by_event_id.keys()

    # Refusals: published with the reason, and never sent to the provider.
    for item in refused:
        event = by_source[item.event.event_id]
        assert event.event_type == "kyc.refused"
        assert event.data_as(KycRefused).reason_code == item.refusal
    keys_sent = {mapping.idempotency_key(item.event.event_id) for item in sent}
    assert verifications == dict.fromkeys(keys_sent, 1)  # each request verified exactly once
    assert answers == {200 if mode == "sync" else 202: len(sent)}  # no refusal reached the provider

    # One customer's results come in the order of its requests.
    order: dict[str, list[Any]] = defaultdict(list)
    for event in outputs:
        order[event.subject].append(event.data.source_event_id)  # type: ignore[attr-defined]
    for customer, ids in order.items():
        published = [e.event.event_id for e in expected if e.event.subject == customer]
        assert ids == published, customer

    if mode == "sync":
        for item in sent:
            check_decision(item, by_source[item.event.event_id])
        return

    # Async: a kyc.pending per request sent; each verification's decision arrives by signed callback.
    pending = {item.event.event_id: by_source[item.event.event_id] for item in sent}
    assert {event.event_type for event in pending.values()} == {"kyc.pending"}
    assert receiver.bad_signatures == 0
    deliveries = Counter(event_id for event_id, _ in receiver.received)
    assert len(deliveries) == len(sent)
    assert set(deliveries.values()) == {2}  # the duplicate carries the same provider event id
    decisions: dict[Any, Event] = {}
    for _, payload in receiver.received:
        decision = mapping.decision_from_callback(payload)
        assert decision is not None
        source_event_id = decision.data_as(KycDecision).source_event_id
        if source_event_id in decisions:
            assert decisions[source_event_id] == decision  # a duplicate maps to the same event
        decisions[source_event_id] = decision
    assert decisions.keys() == pending.keys()
    for item in sent:
        decision = decisions[item.event.event_id]
        check_decision(item, decision)
        waiting = pending[item.event.event_id].data_as(KycPending)
        assert decision.data_as(KycDecision).verification_id == waiting.verification_id
        assert waiting.idempotency_key == mapping.idempotency_key(item.event.event_id)


async def test_async_decisions_reach_kafka_through_the_inbound_webhook_endpoint(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]]
) -> None:
    """The whole asynchronous path: pending → signed duplicated callbacks → the API → one decision each."""
    topics_file, prefix = isolated_topics()
    source = f"{prefix}insurance.customer.events"
    results = f"{prefix}integrations.kyc.results"
    dlq = f"{prefix}integrations.kyc.dlq"
    expected = build_requests(len(CASES) * 10)
    sent = [e for e in expected if e.refusal is None]
    collector = Collector(kafka_bootstrap, [results, dlq])
    api = {"enabled": True, "port": 0, "kyc_provider": {"secret": SECRET}, "kyc_results_topic": results}
    try:
        async with SandboxServer(kyc=KycConfig(webhook_secret=SecretStr(SECRET))) as sandbox:
            async with running_kyc(kafka_bootstrap, topics_file, prefix, sandbox.url, api=api) as runner:
                assert runner.api is not None
                sandbox.kyc.update_config(
                    mode="async",
                    callback_url=f"{runner.api.url}/api/v1/inbound/kyc-provider",
                    callback_delay_ms=20,
                    duplicate_callbacks=True,
                )
                publish(kafka_bootstrap, source, [e.event for e in expected])
                want = len(expected) + len(sent)  # a pending and a decision per request sent
                await collector.wait_for(lambda r: len(collector.on(results)) >= want, timeout_s=120)
                await sandbox.kyc.wait_callbacks()
                collector.poll(1.0)
            delivered = dict(sandbox.kyc.callbacks_by_status)
    finally:
        collector.close()

    assert collector.on(dlq) == []
    assert delivered == {200: 2 * len(sent)}  # every callback accepted, duplicates included
    by_source: dict[Any, list[Event]] = defaultdict(list)
    for msg in collector.on(results):
        event = decode(msg)
        assert msg.key() == event.subject.encode()
        by_source[event.data.source_event_id].append(event)  # type: ignore[attr-defined]
    for item in expected:
        events = by_source[item.event.event_id]
        if item.refusal is not None:
            assert [e.event_type for e in events] == ["kyc.refused"]
            continue
        types = sorted(e.event_type for e in events)
        assert len(types) == 2, types  # the duplicate callback was published once
        assert "kyc.pending" in types
        (decision,) = [e for e in events if e.event_type != "kyc.pending"]
        check_decision(item, decision)
