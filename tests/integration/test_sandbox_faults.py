"""The sandbox gateway's deterministic fault tokens."""

from __future__ import annotations

import aiohttp

from processors.adapters import jsonwire
from processors_dev.sandbox.server import SandboxServer


async def _pay(session: aiohttp.ClientSession, url: str, key: str, token: str) -> int:
    body = jsonwire.dumps(
        {
            "policy_id": "POL-1",
            "amount": "10.00",
            "currency": "USD",
            "payment_method": {"type": "CREDIT_CARD", "card_token": token},
            "idempotency_key": key,
        }
    ).replace(b'"10.00"', b"10.00")
    headers = {
        "Authorization": "Bearer sandbox-token",
        "Idempotency-Key": key,
        "Content-Type": "application/json",
    }
    async with session.post(url + "/api/v1/payments", data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_unavailable_token_fails_n_times_then_charges_once() -> None:
    async with SandboxServer() as sandbox, aiohttp.ClientSession() as session:
        statuses = [await _pay(session, sandbox.url, "k1", "tok_unavailable_2") for _ in range(4)]
        assert statuses == [503, 503, 200, 200]
        assert sandbox.gateway.charges_by_key == {"k1": 1}


async def test_invalid_token_is_refused_every_time_without_a_charge() -> None:
    async with SandboxServer() as sandbox, aiohttp.ClientSession() as session:
        statuses = [await _pay(session, sandbox.url, "k2", "tok_invalid_card") for _ in range(3)]
        assert statuses == [400, 400, 400]
        assert sandbox.gateway.charges_by_key == {}
