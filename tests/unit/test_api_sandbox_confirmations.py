"""The sandbox gateway's signed confirmations of pending charges, received by a local recorder."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.api.inbound import verify_signature
from processors.errors import ConfigError
from processors_dev.sandbox.gateway import DEFAULT_WEBHOOK_SECRET, GatewayConfig
from processors_dev.sandbox.server import SandboxServer

SECRET = "whsec_sandbox_unit"


class Recorder:
    """A confirm_url that records what it receives and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True}, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/confirm", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/confirm"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def answered(sandbox: SandboxServer, count: int) -> dict[int, int]:
    """The gateway's count of answered confirmations, once it reaches ``count``."""
    async with asyncio.timeout(10):
        while sum(sandbox.gateway.confirmations_by_status.values()) < count:
            await asyncio.sleep(0.01)
    return dict(sandbox.gateway.confirmations_by_status)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def pay(
    client: aiohttp.ClientSession, sandbox: SandboxServer, key: str, token: str
) -> tuple[int, dict[str, Any]]:
    body = {
        "policy_id": "POL-1",
        "amount": Decimal("10.00"),
        "currency": "USD",
        "reference_id": "POL-1-I001",
        "payment_method": {"type": "CREDIT_CARD", "card_token": token},
        "idempotency_key": key,
    }
    headers = {"Authorization": "Bearer sandbox-token", "Idempotency-Key": key}
    async with client.post(f"{sandbox.url}/api/v1/payments", data=jsonwire.dumps(body), headers=headers) as r:
        return r.status, jsonwire.loads(await r.read())


def config(recorder: Recorder, **changes: Any) -> GatewayConfig:
    return GatewayConfig(
        confirm_url=recorder.url, webhook_secret=SecretStr(SECRET), confirm_delay_ms=0, **changes
    )


async def test_a_pending_charge_is_confirmed_with_a_signed_callback(
    recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    async with SandboxServer(gateway=config(recorder)) as sandbox:
        status, pending = await pay(client, sandbox, "idem_p1", "tok_pending_1")
        answers = await answered(sandbox, 1)

    assert status == 202
    headers, body = recorder.received[0]
    verify_signature(
        SecretStr(SECRET),
        headers["X-Signature-Timestamp"],
        body,
        headers["X-Signature"],
        now=time.time(),
    )
    payload = jsonwire.loads(body)
    assert payload["event_id"] == headers["X-Provider-Event-Id"]
    assert payload["event_type"] == "payment.confirmed"
    data = payload["data"]
    assert data["payment_id"] == pending["payment_id"]
    assert data["gateway_reference"] == pending["gateway_reference"]
    assert data["status"] == "COMPLETED"
    assert data["amount"] == Decimal("10.00")
    assert (data["policy_id"], data["reference_id"], data["idempotency_key"]) == (
        "POL-1",
        "POL-1-I001",
        "idem_p1",
    )
    assert answers == {200: 1}


async def test_confirm_twice_sends_the_same_event_twice(
    recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    async with SandboxServer(gateway=config(recorder, confirm_twice=True)) as sandbox:
        await pay(client, sandbox, "idem_p2", "tok_pending_2")
        assert await answered(sandbox, 2) == {200: 2}

    first, second = (json.loads(body) for _, body in recorder.received)
    assert first == second
    assert recorder.received[0][0]["X-Provider-Event-Id"] == recorder.received[1][0]["X-Provider-Event-Id"]


async def test_completed_charges_and_replays_send_no_confirmation(
    recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    async with SandboxServer(gateway=config(recorder)) as sandbox:
        assert (await pay(client, sandbox, "idem_ok", "tok_visa_4242"))[0] == 200
        assert (await pay(client, sandbox, "idem_p3", "tok_pending_3"))[0] == 202
        assert (await pay(client, sandbox, "idem_p3", "tok_pending_3"))[0] == 202  # an idempotent replay
        # Confirmations are scheduled before the payment is answered: exactly one so far.
        gateway = sandbox.gateway
        assert gateway.confirmations_pending + sum(gateway.confirmations_by_status.values()) == 1
        await answered(sandbox, 1)

    assert len(recorder.received) == 1
    assert jsonwire.loads(recorder.received[0][1])["data"]["idempotency_key"] == "idem_p3"


async def test_the_receivers_answer_is_counted(recorder: Recorder, client: aiohttp.ClientSession) -> None:
    recorder.status = 401
    async with SandboxServer(gateway=config(recorder)) as sandbox:
        await pay(client, sandbox, "idem_p4", "tok_pending_4")

        assert await answered(sandbox, 1) == {401: 1}
        assert len(recorder.received) == 1


def test_the_webhook_secret_is_masked_and_validated() -> None:
    default = GatewayConfig()
    assert default.webhook_secret.get_secret_value() == DEFAULT_WEBHOOK_SECRET
    assert DEFAULT_WEBHOOK_SECRET not in json.dumps(default.public_dict())
    assert default.confirm_url is None

    with pytest.raises(ConfigError, match="webhook_secret"):
        GatewayConfig.from_mapping({"webhook_secret": " spaced "})
    with pytest.raises(ConfigError, match="confirm_url"):
        GatewayConfig.from_mapping({"confirm_url": "ftp://elsewhere"})
    assert GatewayConfig().updated({"confirm_twice": True}).confirm_twice is True
