"""The sandbox KYC provider over real HTTP, driven through the project's adapter and its control API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.adapters.http import AiohttpTransport
from processors.adapters.kyc_provider import KycOutcome, KycProvider, KycProviderSettings, KycRequest
from processors.errors import Permanent, Retriable
from processors.resilience.classify import PermanentHttpStatus, RetriableHttpStatus
from processors_dev.sandbox import SandboxProcess
from processors_dev.sandbox.kyc import KycConfig
from processors_dev.sandbox.server import SandboxServer

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec_sandbox_test"


def request(*numbers: str, expiry: str = "2035-01-01", terms: bool = True) -> KycRequest:
    return KycRequest(
        verification_type="IDENTITY",
        documents=tuple(
            {
                "type": "PASSPORT",
                "document_number": number,
                "issuing_country": "US",
                "expiry_date": expiry,
                "front_image_url": "https://storage.example.com/docs/front.jpg",
            }
            for number in numbers or ("AB123456",)
        ),
        consent={
            "terms_accepted": terms,
            "data_processing_accepted": True,
            "timestamp": "2024-01-15T10:30:00Z",
        },
        client_reference="0b4f3e0e-0000-4000-8000-000000000001",
    )


class Receiver:
    """Records callbacks; answers ``failures`` 500s first, then 204."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        self.arrived.set()
        return web.Response(status=204)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/cb", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/cb"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def signed_correctly(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    message = headers["X-Signature-Timestamp"].encode() + b"." + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Signature"], f"sha256={digest}")


@pytest.fixture
async def provider_for() -> AsyncIterator[Any]:
    providers: list[KycProvider] = []

    def make(url: str, token: str = "sandbox-token") -> KycProvider:
        provider = KycProvider(KycProviderSettings(base_url=url, token=SecretStr(token)), AiohttpTransport())
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


async def test_sync_decisions_are_idempotent_per_key(provider_for: Any) -> None:
    async with SandboxServer(kyc=KycConfig()) as sandbox:
        provider = provider_for(sandbox.url)
        first = await provider.verify("CUST-1", request("SANC0001"), "idem_a")
        again = await provider.verify("CUST-1", request("SANC0001"), "idem_a")
        other = await provider.verify("CUST-1", request("AB0001"), "idem_b")
        assert first.decision is not None
        assert first.decision.status == "REJECTED"
        assert again == first
        assert other.decision is not None
        assert other.decision.status == "APPROVED"
        assert sandbox.kyc.verifications_by_key == {"idem_a": 1, "idem_b": 1}
        with pytest.raises(PermanentHttpStatus, match="idempotency_key_reused") as info:
            await provider.verify("CUST-1", request("PEP0001"), "idem_a")
        assert info.value.status == 422


@pytest.mark.parametrize(
    ("kyc_request", "error"),
    [
        (request(expiry="2020-01-01"), "document_expired"),
        (request(terms=False), "consent_required"),
    ],
)
async def test_the_provider_refuses_what_the_app_never_sends(
    provider_for: Any, kyc_request: KycRequest, error: str
) -> None:
    async with SandboxServer(kyc=KycConfig()) as sandbox:
        with pytest.raises(PermanentHttpStatus, match=error) as info:
            await provider_for(sandbox.url).verify("CUST-1", kyc_request, "idem_x")
        assert info.value.status == 422
        assert sandbox.kyc.verifications_by_key == {}
        assert sandbox.kyc.requests_by_status == {422: 1}


async def test_wrong_token_outage_and_injected_errors(provider_for: Any) -> None:
    async with SandboxServer(kyc=KycConfig(token=SecretStr("right"))) as sandbox:
        with pytest.raises(Permanent, match="401"):
            await provider_for(sandbox.url, token="wrong").verify("C", request(), "k1")
        provider = provider_for(sandbox.url, token="right")
        sandbox.kyc.update_config(outage=True)
        with pytest.raises(RetriableHttpStatus) as info:
            await provider.verify("C", request(), "k1")
        assert info.value.retry_after_s == 1.0
        sandbox.kyc.update_config(outage=False, error_rate=1.0)
        with pytest.raises(Retriable):
            await provider.verify("C", request(), "k1")
        assert sandbox.kyc.verifications_by_key == {}
        sandbox.kyc.update_config(error_rate=0.0)
        outcome = await provider.verify("C", request(), "k1")  # the same key works once it is healthy
        assert outcome.decision is not None
        assert sandbox.kyc.verifications_by_key == {"k1": 1}


async def test_concurrent_requests_with_one_key_verify_once(provider_for: Any) -> None:
    async with SandboxServer(kyc=KycConfig(latency_ms=100)) as sandbox:
        provider = provider_for(sandbox.url)
        answers = await asyncio.gather(
            *(provider.verify("C", request("PEP1"), "same-key") for _ in range(5)), return_exceptions=True
        )
        done = [a for a in answers if isinstance(a, KycOutcome)]
        busy = [a for a in answers if isinstance(a, RetriableHttpStatus) and a.status == 409]
        assert len(done) + len(busy) == 5  # a decision (first or replayed) or "still in progress"
        assert len(done) >= 1
        assert {outcome.verification_id for outcome in done} == {done[0].verification_id}
        assert sandbox.kyc.verifications_by_key == {"same-key": 1}


async def test_async_mode_answers_pending_then_posts_a_signed_decision(provider_for: Any) -> None:
    async with Receiver(failures=1) as receiver:
        config = KycConfig(
            mode="async",
            callback_url=receiver.url,
            webhook_secret=SecretStr(SECRET),
            callback_delay_ms=10,
            callback_retry_delay_ms=10,
        )
        async with SandboxServer(kyc=config) as sandbox:
            outcome = await provider_for(sandbox.url).verify("CUST-9", request("FACEX1"), "idem_async")
            assert outcome.status == "PENDING"
            await asyncio.wait_for(receiver.arrived.wait(), 30)
            await sandbox.kyc.wait_callbacks()
            assert sandbox.kyc.callbacks_by_status == {500: 1, 204: 1}  # retried after the 500
    (h1, b1), (h2, b2) = receiver.calls
    assert b1 == b2
    assert h1["X-Provider-Event-Id"] == h2["X-Provider-Event-Id"]
    assert signed_correctly(h1, b1)
    assert signed_correctly(h2, b2)
    assert not signed_correctly(h2, b2, secret="another-secret")
    payload = jsonwire.loads(b2)
    assert payload["event_type"] == "verification.completed"
    assert payload["event_id"] == h2["X-Provider-Event-Id"]
    data = payload["data"]
    assert data["verification_id"] == outcome.verification_id
    assert (data["customer_id"], data["idempotency_key"]) == ("CUST-9", "idem_async")
    assert data["client_reference"] == "0b4f3e0e-0000-4000-8000-000000000001"
    assert data["status"] == "REJECTED"
    assert {c["type"]: c["status"] for c in data["checks"]}["FACE_MATCH"] == "FAILED"


async def test_duplicate_callbacks_repeat_the_event_id() -> None:
    async with Receiver() as receiver:
        config = KycConfig(
            mode="async",
            callback_url=receiver.url,
            webhook_secret=SecretStr(SECRET),
            callback_delay_ms=0,
            duplicate_callbacks=True,
        )
        async with SandboxServer(kyc=config) as sandbox, aiohttp.ClientSession() as session:
            for n in range(3):
                async with session.post(
                    f"{sandbox.url}/api/v1/customers/CUST-{n}/kyc",
                    data=jsonwire.dumps(request(f"AB{n}").body()),
                    headers={"Authorization": "Bearer sandbox-token", "Idempotency-Key": f"k{n}"},
                ) as response:
                    assert response.status == 202
                    assert (await response.json())["status"] == "PENDING"
            await sandbox.kyc.wait_callbacks()
    ids = [headers["X-Provider-Event-Id"] for headers, _ in receiver.calls]
    assert len(ids) == 6
    assert len(set(ids)) == 3
    assert all(signed_correctly(headers, body) for headers, body in receiver.calls)


async def test_control_api() -> None:
    async with SandboxServer(kyc=KycConfig(webhook_secret=SecretStr(SECRET))) as sandbox:
        base = f"{sandbox.url}/_sandbox/kyc"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/config") as response:
                config = await response.json()
                assert config["mode"] == "sync"
                assert SECRET not in await response.text()
            async with session.put(f"{base}/config", json={"mode": "async"}) as response:
                assert response.status == 400
                assert "callback_url" in (await response.json())["message"]
            async with session.put(f"{base}/config", json={"latency_ms": 5}) as response:
                assert (await response.json())["latency_ms"] == 5
            async with session.post(
                f"{sandbox.url}/api/v1/customers/C1/kyc",
                data=jsonwire.dumps(request().body()),
                headers={"Authorization": "Bearer sandbox-token", "Idempotency-Key": "k1"},
            ) as response:
                assert response.status == 200
            async with session.post(
                f"{sandbox.url}/api/v1/customers/C1/kyc",
                data=b"{}",
                headers={"Authorization": "Bearer sandbox-token", "Idempotency-Key": "k2"},
            ) as response:
                assert response.status == 400
            async with session.get(f"{base}/verifications", params={"key": "k1"}) as response:
                assert await response.json() == {"key": "k1", "verifications": 1}
            async with session.get(f"{base}/verifications") as response:
                assert (await response.json())["total"] == 1
            async with session.get(f"{base}/requests") as response:
                assert await response.json() == {"total": 2, "by_status": {"200": 1, "400": 1}}
            async with session.get(f"{base}/callbacks") as response:
                assert await response.json() == {"delivered": 0, "outstanding": 0, "by_status": {}}
            async with session.post(f"{base}/reset") as response:
                assert response.status == 200
            async with session.get(f"{base}/verifications") as response:
                assert (await response.json())["total"] == 0


async def test_sandbox_process_serves_the_kyc_provider_with_its_secret_from_the_environment() -> None:
    async with Receiver() as receiver:
        config = KycConfig(
            mode="async", callback_url=receiver.url, webhook_secret=SecretStr(SECRET), callback_delay_ms=0
        )
        sandbox = SandboxProcess(kyc=config)
        loop = asyncio.get_running_loop()
        url = await loop.run_in_executor(None, sandbox.start)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/_sandbox/kyc/config") as response:
                    public = await response.json()
                assert (public["mode"], public["callback_url"]) == ("async", receiver.url)
                async with session.post(
                    f"{url}/api/v1/customers/C1/kyc",
                    data=jsonwire.dumps(request().body()),
                    headers={"Authorization": "Bearer sandbox-token", "Idempotency-Key": "k1"},
                ) as response:
                    assert response.status == 202
            await asyncio.wait_for(receiver.arrived.wait(), 30)
        finally:
            await loop.run_in_executor(None, sandbox.stop)
    ((headers, body),) = receiver.calls
    assert signed_correctly(headers, body)
