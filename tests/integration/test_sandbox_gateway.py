"""The sandbox payment gateway over real HTTP: a local server on an ephemeral port, no Kafka."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors_dev.sandbox import GatewayConfig, SandboxProcess, SandboxServer

pytestmark = pytest.mark.integration

TOKEN = "sandbox-token"
AUTH = f"Bearer {TOKEN}"
_UNSET: Any = object()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text, parse_float=Decimal)


def payment_body(key: str, *, token: str | None = "tok_visa_4242", **overrides: Any) -> dict[str, Any]:
    method: dict[str, Any] = {
        "type": "CREDIT_CARD",
        "billing_address": {
            "line1": "123 Main St",
            "city": "Springfield",
            "state": "IL",
            "postal_code": "62701",
            "country": "US",
        },
    }
    if token is not None:
        method["card_token"] = token
    body: dict[str, Any] = {
        "policy_id": "POL-2024-001234",
        "amount": Decimal("1185.50"),
        "currency": "USD",
        "payment_method": method,
        "idempotency_key": key,
    }
    for name, value in overrides.items():
        if value is _UNSET:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(gateway=GatewayConfig(seed=7)) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def pay(sandbox: SandboxServer, client: aiohttp.ClientSession) -> Callable[..., Any]:
    async def send(
        key: str = "idem_1",
        *,
        body: dict[str, Any] | bytes | None = None,
        header_key: str | None = _UNSET,
        authorization: str | None = AUTH,
        **body_overrides: Any,
    ) -> Reply:
        raw = body if isinstance(body, bytes) else jsonwire.dumps(body or payment_body(key, **body_overrides))
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        idem = key if header_key is _UNSET else header_key
        if idem is not None:
            headers["Idempotency-Key"] = idem
        async with client.post(f"{sandbox.url}/api/v1/payments", data=raw, headers=headers) as response:
            return Reply(response.status, dict(response.headers), await response.text())

    return send


async def control(client: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    async with client.request(method, url, data=data) as response:
        return response.status, await response.json()


# -- outcomes by card token ----------------------------------------------------------------------


async def test_completed_payment_has_the_seed_fields(pay: Any, sandbox: SandboxServer) -> None:
    reply = await pay("idem_ok", reference_id="POL-2024-001234-I001")

    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "COMPLETED"
    assert body["payment_id"].startswith("PMT-")
    assert body["gateway_reference"].startswith("ch_")
    assert body["receipt_url"].endswith(body["gateway_reference"])
    assert body["amount"] == Decimal("1185.50")
    assert body["currency"] == "USD"
    assert body["processed_at"].endswith("Z")
    assert body["transaction_type"] == "CHARGE"
    assert body["reference_id"] == "POL-2024-001234-I001"
    assert sandbox.gateway.charges_by_key == {"idem_ok": 1}


async def test_decline_is_402_and_a_retry_gets_the_same_decline(pay: Any, sandbox: SandboxServer) -> None:
    first = await pay("idem_decl", token="tok_decline_insufficient_funds")
    again = await pay("idem_decl", token="tok_decline_insufficient_funds")

    assert first.status == 402
    body = first.json()
    assert body["status"] == "DECLINED"
    assert body["decline_code"] == "insufficient_funds"
    assert "insufficient funds" in body["decline_reason"]
    assert body["payment_id"].startswith("PMT-")
    assert body["amount"] == Decimal("1185.50")
    assert body["currency"] == "USD"
    assert body["processed_at"].endswith("Z")
    assert (again.status, again.text) == (402, first.text)
    assert sandbox.gateway.charges_by_key == {"idem_decl": 1}


@pytest.mark.parametrize(
    ("code", "words"),
    [("card_expired", "expired"), ("do_not_honor", "declined"), ("made_up_code", "declined")],
)
async def test_decline_codes_come_from_the_token(pay: Any, code: str, words: str) -> None:
    reply = await pay(f"idem_{code}", token=f"tok_decline_{code}")

    assert reply.status == 402
    assert reply.json()["decline_code"] == code
    assert words in reply.json()["decline_reason"]


async def test_pending_token_answers_202(pay: Any, sandbox: SandboxServer) -> None:
    reply = await pay("idem_pending", token="tok_pending_3ds")

    assert reply.status == 202
    assert reply.json()["status"] == "PENDING"
    assert reply.json()["payment_id"].startswith("PMT-")
    assert sandbox.gateway.charges_by_key == {"idem_pending": 1}


async def test_a_method_without_a_card_completes(pay: Any) -> None:
    body = payment_body("idem_bank", token=None)
    body["payment_method"]["type"] = "BANK_TRANSFER"

    reply = await pay("idem_bank", body=body)

    assert reply.status == 200
    assert reply.json()["status"] == "COMPLETED"


async def test_a_refund_is_processed_and_says_so(pay: Any) -> None:
    reply = await pay("idem_refund", transaction_type="REFUND", reference_id="PMT-2024-00AA")

    assert reply.status == 200
    assert reply.json()["transaction_type"] == "REFUND"


# -- idempotency ---------------------------------------------------------------------------------


async def test_same_key_twice_charges_once_and_answers_identically(pay: Any, sandbox: SandboxServer) -> None:
    first = await pay("idem_twice")
    second = await pay("idem_twice")

    assert (first.status, second.status) == (200, 200)
    assert second.text == first.text
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert sandbox.gateway.charges_by_key == {"idem_twice": 1}


async def test_same_amount_written_differently_is_the_same_request(pay: Any, sandbox: SandboxServer) -> None:
    first = await pay("idem_digits", amount=Decimal("1185.50"))
    second = await pay("idem_digits", amount=Decimal("1185.5"))

    assert second.status == 200
    assert second.text == first.text
    assert sandbox.gateway.charges_by_key == {"idem_digits": 1}


@pytest.mark.parametrize(
    "change",
    [
        {"amount": Decimal("1185.51")},
        {"currency": "EUR"},
        {"policy_id": "POL-2024-009999"},
        {"transaction_type": "REFUND"},
        {"token": "tok_mastercard_4444"},
    ],
)
async def test_same_key_with_other_parameters_is_422(
    pay: Any, sandbox: SandboxServer, change: dict[str, Any]
) -> None:
    first = await pay("idem_reuse")
    reused = await pay("idem_reuse", **change)

    assert first.status == 200
    assert reused.status == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert sandbox.gateway.charges_by_key == {"idem_reuse": 1}


async def test_concurrent_same_key_gets_409_while_the_first_is_processed(
    pay: Any, sandbox: SandboxServer
) -> None:
    gateway = sandbox.gateway
    gateway.update_config(latency_ms=60_000)  # the first request waits until released below
    first = asyncio.create_task(pay("idem_race"))
    await gateway.wait_until_in_progress("idem_race")

    second = await pay("idem_race")

    assert second.status == 409
    assert second.json()["error"] == "request_in_progress"
    assert second.headers.get("Retry-After") == "1"
    assert gateway.in_progress("idem_race")
    assert gateway.charges_by_key == {}
    assert gateway.release_waiting() == 1
    done = await first
    assert done.status == 200
    assert gateway.charges_by_key == {"idem_race": 1}
    assert not gateway.in_progress("idem_race")


# -- auth and validation -------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", TOKEN, "Basic c2FuZGJveDp0b2tlbg=="])
async def test_missing_or_wrong_bearer_is_401(
    pay: Any, sandbox: SandboxServer, authorization: str | None
) -> None:
    reply = await pay("idem_auth", authorization=authorization)

    assert reply.status == 401
    assert reply.json()["error"] == "unauthorized"
    assert sandbox.gateway.charges_by_key == {}


async def test_a_configured_token_replaces_the_default(pay: Any, sandbox: SandboxServer) -> None:
    sandbox.gateway.update_config(token="s3cret")

    assert (await pay("idem_tok")).status == 401
    assert (await pay("idem_tok", authorization="Bearer s3cret")).status == 200


def _method(**fields: Any) -> dict[str, Any]:
    return {"type": "CREDIT_CARD", "card_token": "tok_visa_4242", **fields}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"policy_id": _UNSET}, "policy_id is required"),
        ({"policy_id": 1234}, "policy_id must be a string"),
        ({"policy_id": ""}, "policy_id must be 1 to 255"),
        ({"amount": _UNSET}, "amount is required"),
        ({"amount": 0}, "amount must be positive"),
        ({"amount": Decimal("-10.00")}, "amount must be positive"),
        ({"amount": "1185.50"}, "amount must be a JSON number"),
        ({"amount": True}, "amount must be a JSON number"),
        ({"amount": Decimal("1.0000001")}, "at most 6 decimal places"),
        ({"amount": Decimal("1E+15")}, "amount must be below"),
        ({"currency": _UNSET}, "currency is required"),
        ({"currency": "usd"}, "currency must be a three-letter"),
        ({"currency": "US1"}, "currency must be a three-letter"),
        ({"currency": 840}, "currency must be a three-letter"),
        ({"payment_method": _UNSET}, "payment_method is required"),
        ({"payment_method": "card"}, "payment_method must be an object"),
        ({"payment_method": {"card_token": "tok_visa_4242"}}, "payment_method.type"),
        ({"payment_method": {"type": "CREDIT_CARD"}}, "card_token is required for CREDIT_CARD"),
        ({"payment_method": _method(card_token=4242)}, "card_token must be a string"),
        ({"payment_method": _method(billing_address="Springfield")}, "billing_address must be an object"),
        ({"transaction_type": "CAPTURE"}, "transaction_type must be CHARGE or REFUND"),
        ({"reference_id": 17}, "reference_id must be a string"),
        ({"idempotency_key": _UNSET}, "idempotency_key is required"),
        ({"idempotency_key": 5}, "idempotency_key must be a string"),
        ({"idempotency_key": "idem_other"}, "header and idempotency_key differ"),
    ],
)
async def test_invalid_requests_are_400_with_a_reason(
    pay: Any, sandbox: SandboxServer, overrides: dict[str, Any], reason: str
) -> None:
    reply = await pay("idem_bad", **overrides)

    assert reply.status == 400
    assert reply.json()["error"] == "validation_error"
    assert reason in reply.json()["message"]
    assert sandbox.gateway.charges_by_key == {}


async def test_the_idempotency_key_header_is_required(pay: Any) -> None:
    reply = await pay("idem_nohdr", header_key=None)

    assert reply.status == 400
    assert "Idempotency-Key header is required" in reply.json()["message"]


@pytest.mark.parametrize(
    ("raw", "reason"), [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object")]
)
async def test_unreadable_bodies_are_400(pay: Any, raw: bytes, reason: str) -> None:
    reply = await pay("idem_raw", body=raw)

    assert reply.status == 400
    assert reason in reply.json()["message"]


def raw_payment(amount: str, key: str) -> bytes:
    """A request body with ``amount`` written exactly as given."""
    method = '{"type":"CREDIT_CARD","card_token":"tok_visa_4242"}'
    return (
        f'{{"policy_id":"POL-2024-001234","amount":{amount},"currency":"USD",'
        f'"payment_method":{method},"idempotency_key":"{key}"}}'
    ).encode()


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_amounts_are_400(pay: Any, amount: str) -> None:
    reply = await pay("idem_nan", body=raw_payment(amount, "idem_nan"))

    assert reply.status == 400
    assert f"{amount.lstrip('-')} is not a JSON value" in reply.json()["message"]


# -- fault injection ----------------------------------------------------------------------------


async def test_error_rate_one_answers_503_and_charges_nothing(pay: Any, sandbox: SandboxServer) -> None:
    sandbox.gateway.update_config(error_rate=1.0)

    replies = [await pay(f"idem_err_{i}") for i in range(3)]

    assert [r.status for r in replies] == [503, 503, 503]
    assert sandbox.gateway.charges_by_key == {}
    sandbox.gateway.update_config(error_rate=0.0)
    retry = await pay("idem_err_0")
    assert retry.status == 200
    assert "Idempotent-Replayed" not in retry.headers  # nothing was stored by the 503
    assert sandbox.gateway.charges_by_key == {"idem_err_0": 1}


async def test_error_after_charge_is_500_and_the_retry_gets_the_stored_answer(
    pay: Any, sandbox: SandboxServer
) -> None:
    sandbox.gateway.update_config(error_after_charge_rate=1.0)

    failed = await pay("idem_ambiguous")

    assert failed.status == 500
    assert failed.json()["error"] == "internal_error"
    assert sandbox.gateway.charges_by_key == {"idem_ambiguous": 1}
    sandbox.gateway.update_config(error_after_charge_rate=0.0)
    retry = await pay("idem_ambiguous")
    assert retry.status == 200
    assert retry.json()["status"] == "COMPLETED"
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert sandbox.gateway.charges_by_key == {"idem_ambiguous": 1}


async def test_outage_answers_503_with_retry_after(pay: Any, sandbox: SandboxServer) -> None:
    sandbox.gateway.update_config(outage=True)

    reply = await pay("idem_outage")

    assert reply.status == 503
    assert reply.headers.get("Retry-After") == "1"
    assert sandbox.gateway.charges_by_key == {}


async def test_rate_limit_answers_429_with_retry_after(pay: Any, sandbox: SandboxServer) -> None:
    sandbox.gateway.update_config(rate_limit_per_s=0.001)  # one request, then one per 1000 s

    first = await pay("idem_rl_1")
    second = await pay("idem_rl_2")

    assert first.status == 200
    assert second.status == 429
    assert second.json()["error"] == "rate_limited"
    assert int(second.headers["Retry-After"]) >= 1
    assert sandbox.gateway.charges_by_key == {"idem_rl_1": 1}


async def test_a_seed_makes_payment_ids_reproducible(client: aiohttp.ClientSession) -> None:
    async def first_payment_id(seed: int) -> str:
        async with SandboxServer(gateway=GatewayConfig(seed=seed)) as server:
            headers = {"Authorization": AUTH, "Idempotency-Key": "idem_seed"}
            url = f"{server.url}/api/v1/payments"
            async with client.post(
                url, data=jsonwire.dumps(payment_body("idem_seed")), headers=headers
            ) as response:
                return str((await response.json())["payment_id"])

    assert await first_payment_id(11) == await first_payment_id(11)
    assert await first_payment_id(11) != await first_payment_id(12)


# -- exact money ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1185.50", "0.10", "100", "250.000", "99999999999999.999999"])
async def test_amounts_round_trip_digit_for_digit(pay: Any, amount: str) -> None:
    reply = await pay("idem_exact", body=raw_payment(amount, "idem_exact"))

    assert reply.status == 200
    assert f'"amount":{amount},' in reply.text


# -- control API ----------------------------------------------------------------------------------


async def test_charges_endpoint_counts_by_key(
    pay: Any, sandbox: SandboxServer, client: aiohttp.ClientSession
) -> None:
    await pay("idem_a")
    await pay("idem_a")
    await pay("idem_b", token="tok_decline_card_expired")
    base = f"{sandbox.url}/_sandbox/gateway"

    assert await control(client, "GET", f"{base}/charges") == (
        200,
        {"total": 2, "keys": 2, "by_key": {"idem_a": 1, "idem_b": 1}},
    )
    assert await control(client, "GET", f"{base}/charges?key=idem_a") == (
        200,
        {"key": "idem_a", "charges": 1},
    )
    assert await control(client, "GET", f"{base}/charges?key=unknown") == (
        200,
        {"key": "unknown", "charges": 0},
    )
    assert await control(client, "GET", f"{base}/requests") == (
        200,
        {"total": 3, "by_status": {"200": 2, "402": 1}},
    )


async def test_reset_forgets_keys_and_counters(
    pay: Any, sandbox: SandboxServer, client: aiohttp.ClientSession
) -> None:
    await pay("idem_reset")
    base = f"{sandbox.url}/_sandbox/gateway"

    status, _ = await control(client, "POST", f"{base}/reset")

    assert status == 200
    assert sandbox.gateway.charges_by_key == {}
    assert await control(client, "GET", f"{base}/requests") == (200, {"total": 0, "by_status": {}})
    again = await pay("idem_reset")
    assert "Idempotent-Replayed" not in again.headers
    assert sandbox.gateway.charges_by_key == {"idem_reset": 1}


async def test_config_get_masks_the_token_and_put_applies_a_partial_update(
    pay: Any, sandbox: SandboxServer, client: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/_sandbox/gateway/config"

    status, before = await control(client, "GET", url)
    assert status == 200
    assert before["token"] == "**********"
    assert TOKEN not in json.dumps(before)

    status, after = await control(client, "PUT", url, {"outage": True, "latency_ms": 5})
    assert status == 200
    assert after == {**before, "outage": True, "latency_ms": 5.0}
    assert sandbox.gateway.config.outage is True
    assert (await pay("idem_put")).status == 503


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_after_charge_rate": -0.1}, "error_after_charge_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"rate_limit_per_s": 0}, "rate_limit_per_s"),
        ({"token": ""}, "token"),
        ({"no_such_knob": 1}, "no_such_knob"),
        ([1, 2], "JSON object"),
        (b"{oops", "not valid JSON"),
    ],
)
async def test_config_put_rejects_bad_input_and_keeps_the_config(
    sandbox: SandboxServer, client: aiohttp.ClientSession, body: Any, reason: str
) -> None:
    before = sandbox.gateway.config

    status, answer = await control(client, "PUT", f"{sandbox.url}/_sandbox/gateway/config", body)

    assert status == 400
    assert answer["error"] == "validation_error"
    assert reason in answer["message"]
    assert sandbox.gateway.config == before


async def test_config_put_never_echoes_a_rejected_token(
    sandbox: SandboxServer, client: aiohttp.ClientSession
) -> None:
    status, answer = await control(
        client, "PUT", f"{sandbox.url}/_sandbox/gateway/config", {"token": " leaked-secret "}
    )

    assert status == 400
    assert "leaked-secret" not in json.dumps(answer)


async def test_health(sandbox: SandboxServer, client: aiohttp.ClientSession) -> None:
    assert await control(client, "GET", f"{sandbox.url}/_sandbox/health") == (200, {"status": "ok"})


async def test_logs_hold_no_card_tokens_or_secrets(
    pay: Any, sandbox: SandboxServer, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await pay("idem_log_1", token="tok_decline_card_expired")
    await pay("idem_log_2", currency="usd")
    await control(client, "PUT", f"{sandbox.url}/_sandbox/gateway/config", {"token": "new-secret-value"})
    await control(client, "POST", f"{sandbox.url}/_sandbox/gateway/reset")

    assert "config changed" in caplog.text
    assert "tok_" not in caplog.text
    assert "new-secret-value" not in caplog.text
    assert "Main St" not in caplog.text


# -- out of process -------------------------------------------------------------------------------


async def test_sandbox_process_serves_from_its_own_process(client: aiohttp.ClientSession) -> None:
    sandbox = SandboxProcess(gateway=GatewayConfig(token=SecretStr("proc-token")))
    loop = asyncio.get_running_loop()
    url = await loop.run_in_executor(None, sandbox.start)
    try:
        headers = {"Authorization": "Bearer proc-token", "Idempotency-Key": "idem_proc"}
        async with client.post(
            f"{url}/api/v1/payments", data=jsonwire.dumps(payment_body("idem_proc")), headers=headers
        ) as response:
            assert response.status == 200
        status, charges = await control(client, "GET", f"{url}/_sandbox/gateway/charges")
        assert (status, charges["by_key"]) == (200, {"idem_proc": 1})
    finally:
        await loop.run_in_executor(None, sandbox.stop)
    assert sandbox.pid is None


async def test_cli_prints_the_url_and_exits_0_on_sigterm(client: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processors_dev.sandbox.cli",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first_line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert first_line.startswith("sandbox listening on http://127.0.0.1:")
        url = first_line.split()[-1]
        assert await control(client, "GET", f"{url}/_sandbox/health") == (200, {"status": "ok"})
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_refuses_bad_knobs_with_exit_code_2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processors_dev.sandbox.cli",
        "--error-rate",
        "2",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    assert b"error_rate" in stderr
