"""Inbound payment confirmations against a real broker: verified, de-duplicated, published once.

"Nothing published" is checked with a marker: every request in a test concerns the same policy
(the same key, so the same partition), and a valid marker confirmation is sent last.  Once the
marker is on the results topic, anything published before it would be there too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.api.server import ApiServer, RejectedRequest
from processors.contract import PaymentConfirmed
from processors.settings import load_settings
from processors_dev.samples import premium_due
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, decode, header

pytestmark = pytest.mark.timeout(180)

SECRET = "whsec_integration_secret"
POLICY = "POL-2024-000042"


def body_for(event_id: str, **data_changes: Any) -> bytes:
    data: dict[str, Any] = {
        "payment_id": f"PMT-{event_id}",
        "status": "COMPLETED",
        "gateway_reference": f"ch_{event_id}",
        "amount": Decimal("250.00"),
        "currency": "EUR",
        "transaction_type": "CHARGE",
        "policy_id": POLICY,
        "reference_id": f"{POLICY}-I001",
        "idempotency_key": f"idem_{event_id}",
        "processed_at": "2024-06-10T06:13:20Z",
    }
    data.update(data_changes)
    return jsonwire.dumps({"event_id": event_id, "event_type": "payment.confirmed", "data": data})


def signed(
    body: bytes, event_id: str, *, secret: str = SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Provider-Event-Id": event_id,
        "X-Signature-Timestamp": ts,
        "X-Signature": f"sha256={digest}",
    }


@pytest.fixture
def topics(isolated_topics: Callable[..., tuple[Path, str]]) -> tuple[Path, str]:
    return isolated_topics()


@pytest.fixture
def results(topics: tuple[Path, str]) -> str:
    return f"{topics[1]}integrations.payment.results"


@pytest.fixture
def rejected() -> list[RejectedRequest]:
    return []


@pytest.fixture
async def api(
    kafka_bootstrap: str, results: str, rejected: list[RejectedRequest]
) -> AsyncIterator[ApiServer]:
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        payments={"results_topic": results},
        api={"port": 0, "auth_token": "t0ken", "payment_gateway": {"secret": SECRET}},
    )
    async with ApiServer(settings, on_rejected=rejected.append) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def collector(kafka_bootstrap: str, results: str) -> Iterator[Collector]:
    c = Collector(kafka_bootstrap, [results])
    yield c
    c.close()


async def post(
    client: aiohttp.ClientSession, api: ApiServer, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    url = f"{api.url}/api/v1/inbound/payment-gateway"
    async with client.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def send_marker_and_collect(
    client: aiohttp.ClientSession, api: ApiServer, collector: Collector, results: str
) -> list[Any]:
    marker = body_for("evt_marker")
    assert (await post(client, api, marker, signed(marker, "evt_marker")))[0] == 200
    await collector.wait_for(
        lambda _: any(header(m, "x-provider-event-id") == "evt_marker" for m in collector.on(results)),
        timeout_s=60,
    )
    return [header(m, "x-provider-event-id") for m in collector.on(results)]


async def test_a_replayed_confirmation_is_published_once(
    api: ApiServer, client: aiohttp.ClientSession, collector: Collector, results: str
) -> None:
    body = body_for("evt_replayed")
    headers = signed(body, "evt_replayed")

    # Two deliveries at once (a retry overtaking the first), then two later replays.
    concurrent = await asyncio.gather(post(client, api, body, headers), post(client, api, body, headers))
    later = [await post(client, api, body, signed(body, "evt_replayed")) for _ in range(2)]

    assert all(status == 200 for status, _ in [*concurrent, *later])
    assert sorted(answer["duplicate"] for _, answer in [*concurrent, *later]) == [False, True, True, True]
    seen = await send_marker_and_collect(client, api, collector, results)
    assert seen == ["evt_replayed", "evt_marker"]
    confirmed = decode(collector.on(results)[0])
    assert confirmed.event_type == "payment.confirmed"
    assert confirmed.subject == POLICY
    assert collector.on(results)[0].key() == POLICY.encode()
    data = confirmed.data_as(PaymentConfirmed)
    assert (data.amount, data.currency) == (Decimal("250.00"), "EUR")
    assert data.payment_id == "PMT-evt_replayed"


async def test_tampered_wrong_secret_and_stale_confirmations_are_refused_and_nothing_is_published(
    api: ApiServer,
    client: aiohttp.ClientSession,
    collector: Collector,
    results: str,
    rejected: list[RejectedRequest],
) -> None:
    original = body_for("evt_tampered")
    tampered = original.replace(b"250.00", b"2.50")
    wrong_secret = body_for("evt_wrong_secret")
    stale = body_for("evt_stale")

    answers = [
        await post(client, api, tampered, signed(original, "evt_tampered")),
        await post(client, api, wrong_secret, signed(wrong_secret, "evt_wrong_secret", secret="whsec_guess")),
        await post(client, api, stale, signed(stale, "evt_stale", timestamp=int(time.time()) - 360)),
    ]

    assert [status for status, _ in answers] == [401, 401, 401]
    assert [answer["error"] for _, answer in answers] == ["invalid_signature"] * 3
    assert [r.reason for r in rejected] == ["signature_mismatch", "signature_mismatch", "stale_timestamp"]
    assert await send_marker_and_collect(client, api, collector, results) == ["evt_marker"]


async def test_malformed_confirmations_are_400_and_nothing_is_published(
    api: ApiServer, client: aiohttp.ClientSession, collector: Collector, results: str
) -> None:
    bad_json = b'{"event_id": "evt_bad_json", '
    missing_amount = body_for("evt_no_amount", amount=None)

    answers = [
        await post(client, api, bad_json, signed(bad_json, "evt_bad_json")),
        await post(client, api, missing_amount, signed(missing_amount, "evt_no_amount")),
    ]

    assert [status for status, _ in answers] == [400, 400]
    assert "not valid JSON" in answers[0][1]["message"]
    assert "data.amount" in answers[1][1]["message"]
    assert await send_marker_and_collect(client, api, collector, results) == ["evt_marker"]


async def test_a_pending_sandbox_payment_is_confirmed_through_the_api_end_to_end(
    api: ApiServer, client: aiohttp.ClientSession, collector: Collector, results: str
) -> None:
    """Sandbox gateway → 202 PENDING → signed callback (sent twice) → one payment.confirmed."""
    gateway = GatewayConfig(
        confirm_url=f"{api.url}/api/v1/inbound/payment-gateway",
        webhook_secret=SecretStr(SECRET),
        confirm_delay_ms=50,
        confirm_twice=True,
    )
    event = premium_due(42, 1, amount=Decimal("99.90"), token="tok_pending_3ds")
    request = {
        "policy_id": POLICY,
        "amount": Decimal("99.90"),
        "currency": "USD",
        "transaction_type": "CHARGE",
        "reference_id": f"{POLICY}-I001",
        "payment_method": event.data.payment_method.model_dump(mode="json", exclude_none=True),  # type: ignore[attr-defined]
        "idempotency_key": "idem_e2e_pending",
    }
    async with SandboxServer(gateway=gateway) as sandbox:
        headers = {
            "Authorization": "Bearer sandbox-token",
            "Idempotency-Key": "idem_e2e_pending",
            "Content-Type": "application/json",
        }
        async with client.post(
            f"{sandbox.url}/api/v1/payments", data=jsonwire.dumps(request), headers=headers
        ) as response:
            assert response.status == 202
            pending = jsonwire.loads(await response.read())
        assert pending["status"] == "PENDING"

        await collector.wait_for(lambda _: len(collector.on(results)) >= 1, timeout_s=60)
        async with asyncio.timeout(60):
            while sum(sandbox.gateway.confirmations_by_status.values()) < 2:
                await asyncio.sleep(0.05)
        answers = dict(sandbox.gateway.confirmations_by_status)

    assert answers == {200: 2}
    seen = await send_marker_and_collect(client, api, collector, results)
    assert len(seen) == 2, seen  # the confirmation once, then the marker
    confirmed = decode(collector.on(results)[0])
    data = confirmed.data_as(PaymentConfirmed)
    assert confirmed.event_type == "payment.confirmed"
    assert confirmed.subject == POLICY
    assert data.payment_id == pending["payment_id"]
    assert data.gateway_reference == pending["gateway_reference"]
    assert (data.amount, data.currency) == (Decimal("99.90"), "USD")
    assert data.idempotency_key == "idem_e2e_pending"
    assert data.reference_id == f"{POLICY}-I001"
    assert data.receipt_url is not None
