"""The sandbox partner receivers over real HTTP: local servers on ephemeral ports, no Kafka."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest
from pydantic import SecretStr

from processors.errors import ConfigError
from processors_dev.sandbox.cli import READY_PREFIX, partners_config_from_args, register_cli
from processors_dev.sandbox.partners import (
    CONTROL_PREFIX,
    DEFAULT_PARTNER_SECRET,
    PARTNER_SECRET_ENV,
    PartnerBehaviour,
    PartnerSandbox,
    PartnersConfig,
    PartnerSpec,
    closed_port_url,
)
from processors_dev.sandbox.server import SandboxServer

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
PLAIN_SECRET = "a-partner-chosen-secret-of-enough-length"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    text: str


def delivery_body(webhook_id: str, event_type: str = "policy.issued") -> bytes:
    document = {
        "webhook_id": webhook_id,
        "event_type": event_type,
        "timestamp": "2024-01-15T10:30:00Z",
        "data": {"policy_id": "POL-2024-001234", "premium": "1185.50"},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def signed_headers(
    body: bytes,
    webhook_id: str,
    secrets: list[str],
    *,
    event_type: str = "policy.issued",
    timestamp: int | None = None,
    standard: bool = True,
) -> dict[str, str]:
    """The delivery headers of the webhooks contract, signed with ``secrets`` (newest first)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "insurance-processors-webhooks/test",
        "X-Webhook-Id": webhook_id,
        "X-Webhook-Event-Type": event_type,
        "X-Webhook-Signature": "sha256=" + hmac.new(secrets[0].encode(), body, hashlib.sha256).hexdigest(),
    }
    if len(secrets) > 1:
        headers["X-Webhook-Signature-Previous"] = (
            "sha256=" + hmac.new(secrets[1].encode(), body, hashlib.sha256).hexdigest()
        )
    if standard:
        signed = f"{webhook_id}.{ts}.".encode() + body
        entries = [
            "v1," + base64.b64encode(hmac.new(standard_key(s), signed, hashlib.sha256).digest()).decode()
            for s in secrets
        ]
        headers |= {"webhook-id": webhook_id, "webhook-timestamp": ts, "webhook-signature": " ".join(entries)}
    return headers


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    webhook_id: str,
    *,
    secrets: list[str] | None = None,
    timeout_s: float | None = None,
    **signing: Any,
) -> Reply:
    body = delivery_body(webhook_id)
    headers = signed_headers(body, webhook_id, secrets or [SECRET], **signing)
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
    async with session.post(
        url, data=body, headers=headers, allow_redirects=False, timeout=timeout
    ) as response:
        return Reply(response.status, dict(response.headers), await response.text())


async def deliver_until_accepted(
    session: aiohttp.ClientSession, url: str, webhook_id: str, *, max_attempts: int
) -> list[int]:
    statuses: list[int] = []
    while not statuses or statuses[-1] != 200:
        assert len(statuses) < max_attempts, f"{webhook_id} not accepted within {max_attempts}: {statuses}"
        statuses.append((await deliver(session, url, webhook_id)).status)
    return statuses


@pytest.fixture
async def partners() -> AsyncIterator[PartnerSandbox]:
    async with PartnerSandbox() as sandbox:
        yield sandbox


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- modes ---------------------------------------------------------------------------------------


async def test_healthy_partner_accepts_and_records_each_delivery(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    acme = partners.add("acme", PartnerBehaviour(), [SECRET])
    url = partners.url("acme")
    assert url == f"{partners.base_url}/partners/acme"

    first = await deliver(client, url, "msg_1")
    second = await deliver(client, url, "msg_2")
    again = await deliver(client, url, "msg_1")

    assert [first.status, second.status, again.status] == [200, 200, 200]
    received = acme.received()
    assert [d.webhook_id for d in received] == ["msg_1", "msg_2", "msg_1"]
    assert [d.seq for d in received] == sorted(d.seq for d in received)
    assert [d.attempt for d in received] == [1, 1, 2]
    assert all(d.signature_valid and d.signature_reason is None for d in received)
    assert all(d.event_type == "policy.issued" for d in received)
    assert received[0].body == delivery_body("msg_1")
    assert received[0].headers is not None
    assert received[0].headers["webhook-id"] == "msg_1"
    assert [d.status for d in acme.accepted()] == [200, 200, 200]
    assert acme.unique_ids() == {"msg_1", "msg_2"}
    assert acme.duplicates_count == 1
    assert acme.by_status == {200: 3}


async def test_slow_partner_answers_after_its_delay_and_after_a_prompt_one(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    slow = partners.add("slow", PartnerBehaviour(mode="slow", delay_ms=600_000), [SECRET])
    partners.add("quick", PartnerBehaviour(), [SECRET])

    pending = asyncio.create_task(deliver(client, partners.url("slow"), "msg_slow"))
    await slow.wait_for(1)
    quick = await deliver(client, partners.url("quick"), "msg_quick")

    assert quick.status == 200
    assert not pending.done()
    assert slow.received()[0].status == 0  # arrived, not answered yet
    assert partners.receivers.waiting == 1
    assert partners.receivers.release_waiting() == 1  # end the delay instead of waiting 10 minutes
    assert (await pending).status == 200
    assert slow.received()[0].status == 200


async def test_slow_partner_with_a_short_delay_accepts(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    slow = partners.add("slow", PartnerBehaviour(mode="slow", delay_ms=30), [SECRET])
    replies = await asyncio.gather(*(deliver(client, partners.url("slow"), f"msg_{i}") for i in range(5)))
    assert [reply.status for reply in replies] == [200] * 5
    assert slow.accepted_count == 5


async def test_flaky_partner_fails_at_most_its_bound_then_accepts(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    behaviour = PartnerBehaviour(mode="flaky", failure_rate=1.0, max_consecutive_failures=3, retry_after_s=2)
    flaky = partners.add("flaky", behaviour, [SECRET])
    replies = [await deliver(client, partners.url("flaky"), "msg_a") for _ in range(4)]

    assert [reply.status for reply in replies] == [503, 503, 503, 200]
    assert all(reply.headers.get("Retry-After") == "2" for reply in replies[:3])
    assert "Retry-After" not in replies[3].headers
    assert flaky.accepted_ids() == {"msg_a"}
    assert [d.attempt for d in flaky.received()] == [1, 2, 3, 4]


async def flaky_run(client: aiohttp.ClientSession, seed: int, ids: list[str]) -> list[list[int]]:
    async with PartnerSandbox() as sandbox:
        behaviour = PartnerBehaviour(mode="flaky", failure_rate=0.5, max_consecutive_failures=2, seed=seed)
        partner = sandbox.add("flaky", behaviour, [SECRET])
        runs = [
            await deliver_until_accepted(client, sandbox.url("flaky"), webhook_id, max_attempts=3)
            for webhook_id in ids
        ]
        assert partner.accepted_ids() == set(ids)
        assert partner.duplicates_count == 0
        return runs


async def test_flaky_partner_is_reproducible_with_its_seed(client: aiohttp.ClientSession) -> None:
    ids = [f"msg_{i:03d}" for i in range(40)]
    first = await flaky_run(client, 7, ids)
    second = await flaky_run(client, 7, ids)
    other_seed = await flaky_run(client, 8, ids)

    assert first == second
    assert first != other_seed
    failures = sum(len(statuses) - 1 for statuses in first)
    assert 0 < failures < 2 * len(ids)  # some, but not every request failed
    assert all(statuses[-1] == 200 and set(statuses[:-1]) <= {503} for statuses in first)


async def test_gone_partner_answers_410(partners: PartnerSandbox, client: aiohttp.ClientSession) -> None:
    gone = partners.add("gone", PartnerBehaviour(mode="gone"), [SECRET])
    reply = await deliver(client, partners.url("gone"), "msg_1")
    assert reply.status == 410
    assert gone.accepted() == []
    assert gone.received()[0].status == 410


@pytest.mark.parametrize("status", [302, 307])
async def test_redirecting_partner_answers_3xx_with_location(
    partners: PartnerSandbox, client: aiohttp.ClientSession, status: Literal[302, 307]
) -> None:
    target = "https://partner.example.com/new-webhooks"
    behaviour = PartnerBehaviour(mode="redirect", redirect_to=target, redirect_status=status)
    partner = partners.add("moved", behaviour, [SECRET])
    reply = await deliver(client, partners.url("moved"), "msg_1")
    assert reply.status == status
    assert reply.headers["Location"] == target
    assert partner.received()[0].status == status


async def test_timeout_partner_never_answers_before_the_client_gives_up(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("silent", PartnerBehaviour(mode="timeout"), [SECRET])
    with pytest.raises(TimeoutError):
        await deliver(client, partners.url("silent"), "msg_1", timeout_s=0.3)
    assert partner.received_count == 1
    assert partner.received()[0].status == 0
    assert partner.accepted() == []
    # The client closed its connection: the held request ends on the server too.
    async with asyncio.timeout(10):
        while partners.receivers.waiting:
            await asyncio.sleep(0.05)
    assert partner.by_status == {}


async def test_a_held_request_does_not_hold_the_shutdown(client: aiohttp.ClientSession) -> None:
    sandbox = PartnerSandbox(shutdown_timeout_s=60.0)
    await sandbox.start()
    partner = sandbox.add("silent", PartnerBehaviour(mode="timeout"), [SECRET])
    pending = asyncio.create_task(deliver(client, sandbox.url("silent"), "msg_1", timeout_s=60.0))
    await partner.wait_for(1)
    async with asyncio.timeout(30):  # well below the 60 s shutdown timeout
        await sandbox.stop()
    with pytest.raises(aiohttp.ClientError):  # the connection is dropped, never answered
        await pending
    assert partner.received()[0].status == 0


async def test_error_partner_answers_its_status_every_time(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partners.add("broken", PartnerBehaviour(mode="error"), [SECRET])
    partners.add("limited", PartnerBehaviour(mode="error", status=429, retry_after_s=5), [SECRET])
    broken = [await deliver(client, partners.url("broken"), "msg_1") for _ in range(3)]
    limited = await deliver(client, partners.url("limited"), "msg_1")
    assert [reply.status for reply in broken] == [500, 500, 500]
    assert "Retry-After" not in broken[0].headers
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "5"


async def test_changing_behaviour_applies_to_the_next_request(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("acme", PartnerBehaviour(), [SECRET])
    assert (await deliver(client, partners.url("acme"), "msg_1")).status == 200
    partners.update("acme", PartnerBehaviour(mode="gone"))
    assert (await deliver(client, partners.url("acme"), "msg_2")).status == 410
    partners.remove("acme")
    assert (await deliver(client, partners.url("acme"), "msg_3")).status == 404
    assert partner.received_count == 2
    assert partners.receivers.unknown_requests == 1


# -- signatures ----------------------------------------------------------------------------------


async def test_correct_signatures_are_accepted_in_both_schemes(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("acme", PartnerBehaviour(accept_seed=True), [SECRET])
    standard = await deliver(client, partners.url("acme"), "msg_1")
    seed_only = await deliver(client, partners.url("acme"), "msg_2", standard=False)
    assert [standard.status, seed_only.status] == [200, 200]
    assert [d.signature_valid for d in partner.received()] == [True, True]


async def test_a_seed_only_request_is_refused_unless_the_partner_accepts_the_seed_scheme(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    """A request stripped of its timestamped headers is a downgrade (replayable): refused by default."""
    partner = partners.add("acme", PartnerBehaviour(), [SECRET])
    seed_only = await deliver(client, partners.url("acme"), "msg_1", standard=False)
    assert seed_only.status == 401
    assert partner.accepted() == []


async def test_a_wrong_signature_is_refused_with_401_and_recorded(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("acme", PartnerBehaviour(), [SECRET])
    reply = await deliver(client, partners.url("acme"), "msg_1", secrets=[OLD_SECRET])

    assert reply.status == 401
    assert json.loads(reply.text)["error"] == "invalid_signature"
    delivery = partner.received()[0]
    assert delivery.signature_valid is False
    assert delivery.signature_reason is not None
    assert "signature" in delivery.signature_reason
    assert delivery.status == 401
    assert partner.invalid_signatures == 1
    assert partner.accepted() == []


async def test_a_stale_timestamp_is_refused(partners: PartnerSandbox, client: aiohttp.ClientSession) -> None:
    partner = partners.add("acme", PartnerBehaviour(), [SECRET])
    reply = await deliver(client, partners.url("acme"), "msg_1", timestamp=int(time.time()) - 301 - 60)
    assert reply.status == 401
    reason = partner.received()[0].signature_reason
    assert reason is not None
    assert "stale" in reason


async def test_a_tampered_body_is_refused(partners: PartnerSandbox, client: aiohttp.ClientSession) -> None:
    partner = partners.add("acme", PartnerBehaviour(), [SECRET])
    headers = signed_headers(delivery_body("msg_1"), "msg_1", [SECRET])
    async with client.post(partners.url("acme"), data=delivery_body("msg_2"), headers=headers) as reply:
        assert reply.status == 401
    assert partner.received()[0].signature_valid is False


async def test_rotation_accepts_the_previous_secret_until_it_is_dropped(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partners.add("acme", PartnerBehaviour(), [SECRET, OLD_SECRET])
    url = partners.url("acme")
    assert (await deliver(client, url, "msg_1", secrets=[OLD_SECRET])).status == 200
    assert (await deliver(client, url, "msg_2", secrets=[SECRET, OLD_SECRET])).status == 200
    assert (await deliver(client, url, "msg_3", secrets=[PLAIN_SECRET], standard=False)).status == 401

    partners.update("acme", secrets=[SECRET])
    assert (await deliver(client, url, "msg_4", secrets=[OLD_SECRET])).status == 401
    assert (await deliver(client, url, "msg_5", secrets=[SECRET])).status == 200


async def test_unconditional_modes_answer_whatever_the_signature(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    gone = partners.add("gone", PartnerBehaviour(mode="gone"), [SECRET])
    reply = await deliver(client, partners.url("gone"), "msg_1", secrets=[OLD_SECRET])
    assert reply.status == 410
    assert gone.received()[0].signature_valid is False


async def test_without_recorded_bodies_counts_are_kept(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("bench", PartnerBehaviour(delay_ms=1), [SECRET], record_bodies=False)
    for webhook_id in ("msg_1", "msg_2", "msg_1"):
        assert (await deliver(client, partners.url("bench"), webhook_id)).status == 200
    assert all(d.body is None and d.headers is None for d in partner.received())
    assert partner.unique_ids() == {"msg_1", "msg_2"}
    assert partner.duplicates_count == 1
    assert partner.received()[0].event_type == "policy.issued"


async def test_wait_helpers_return_once_the_condition_holds(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    partner = partners.add("acme", PartnerBehaviour(mode="flaky", failure_rate=1.0), [SECRET])
    waiting = asyncio.create_task(partner.wait_for_accepted_ids(2))
    await deliver_until_accepted(client, partners.url("acme"), "msg_1", max_attempts=4)
    assert not waiting.done()
    await deliver_until_accepted(client, partners.url("acme"), "msg_2", max_attempts=4)
    async with asyncio.timeout(10):
        await waiting
    assert partner.accepted_ids() == {"msg_1", "msg_2"}


# -- control API ---------------------------------------------------------------------------------


async def test_control_api_creates_lists_changes_shows_and_deletes_partners(
    partners: PartnerSandbox, client: aiohttp.ClientSession
) -> None:
    control = partners.base_url + CONTROL_PREFIX
    create = {"name": "acme", "behaviour": {"mode": "healthy"}, "secrets": [SECRET]}
    async with client.post(control, json=create) as response:
        assert response.status == 201
        created = await response.json()
    assert created["url"] == partners.url("acme")
    assert created["secrets"] == 1
    assert SECRET not in json.dumps(created)
    async with client.post(control, json=create) as response:
        assert response.status == 409
    async with client.post(control, json={"name": "bad name", "secrets": [SECRET]}) as response:
        assert response.status == 400
    async with client.post(control, json={"name": "nosecret", "secrets": []}) as response:
        assert response.status == 400
    bad_behaviour = {"name": "x", "secrets": [SECRET], "behaviour": {"mode": "redirect"}}
    async with client.post(control, json=bad_behaviour) as response:
        assert response.status == 400
        assert "redirect_to" in (await response.json())["message"]

    assert (await deliver(client, partners.url("acme"), "msg_1")).status == 200
    assert (await deliver(client, partners.url("acme"), "msg_1")).status == 200
    assert (await deliver(client, partners.url("acme"), "msg_2", secrets=[OLD_SECRET])).status == 401

    async with client.get(control) as response:
        listed = (await response.json())["partners"]
    assert [entry["name"] for entry in listed] == ["acme"]
    assert listed[0]["received"] == 3
    assert listed[0]["accepted"] == 2
    assert listed[0]["unique_ids"] == 2
    assert listed[0]["duplicates"] == 1
    assert listed[0]["invalid_signatures"] == 1
    assert listed[0]["by_status"] == {"200": 2, "401": 1}

    patch = {"behaviour": {"mode": "error", "status": 503, "retry_after_s": 1}}
    async with client.patch(f"{control}/acme", json=patch) as response:
        assert response.status == 200
        assert (await response.json())["behaviour"]["mode"] == "error"
    reply = await deliver(client, partners.url("acme"), "msg_3")
    assert (reply.status, reply.headers["Retry-After"]) == (503, "1")
    async with client.patch(f"{control}/acme", json={"behaviour": {"delay_ms": -1}}) as response:
        assert response.status == 400
    async with client.patch(f"{control}/acme", json={"secrets": [OLD_SECRET]}) as response:
        assert response.status == 200
    assert partners.partner("acme").secrets_count == 1

    async with client.get(f"{control}/acme/deliveries") as response:
        deliveries = (await response.json())["deliveries"]
    assert [d["webhook_id"] for d in deliveries] == ["msg_1", "msg_1", "msg_2", "msg_3"]
    assert [d["status"] for d in deliveries] == [200, 200, 401, 503]
    assert deliveries[0]["body"] == delivery_body("msg_1").decode()
    assert deliveries[2]["signature_valid"] is False
    async with client.get(f"{control}/acme/deliveries", params={"after": deliveries[2]["seq"]}) as response:
        assert [d["webhook_id"] for d in (await response.json())["deliveries"]] == ["msg_3"]

    async with client.delete(f"{control}/acme/deliveries") as response:
        assert (await response.json())["cleared"] == 4
    assert partners.partner("acme").received() == []

    async with client.delete(f"{control}/acme") as response:
        assert response.status == 200
    async with client.get(f"{control}/acme") as response:
        assert response.status == 404
    async with client.get(control) as response:
        assert (await response.json())["partners"] == []
    assert (await deliver(client, partners.url("acme"), "msg_4")).status == 404


async def test_adding_twice_or_with_bad_values_is_a_config_error(partners: PartnerSandbox) -> None:
    partners.add("acme", PartnerBehaviour(), [SECRET])
    with pytest.raises(ConfigError):
        partners.add("acme", PartnerBehaviour(), [SECRET])
    with pytest.raises(ConfigError):
        partners.add("other", PartnerBehaviour(), [])
    with pytest.raises(ConfigError):
        partners.add("with space", PartnerBehaviour(), [SECRET])
    with pytest.raises(ConfigError):
        PartnerBehaviour.from_mapping({"mode": "slow"})
    with pytest.raises(KeyError):
        partners.partner("nobody")
    assert SECRET not in repr(partners.partner("acme"))


# -- dead partners -------------------------------------------------------------------------------


async def test_a_dead_url_refuses_connections(client: aiohttp.ClientSession) -> None:
    url = closed_port_url()
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(aiohttp.ClientConnectorError):
        await deliver(client, url, "msg_1", timeout_s=10)


# -- mounted in the sandbox ----------------------------------------------------------------------


async def test_the_sandbox_server_serves_partners(client: aiohttp.ClientSession) -> None:
    config = PartnersConfig(partners=(PartnerSpec(name="demo", secrets=(SecretStr(SECRET),)),))
    async with SandboxServer(partners=config) as sandbox:
        assert sandbox.partners.url("demo") == f"{sandbox.url}/partners/demo"
        sandbox.partners.add("late", PartnerBehaviour(mode="gone"), [SECRET])
        assert (await deliver(client, sandbox.partners.url("demo"), "msg_1")).status == 200
        assert (await deliver(client, sandbox.partners.url("late"), "msg_1")).status == 410
        async with client.get(sandbox.url + CONTROL_PREFIX) as response:
            names = [entry["name"] for entry in (await response.json())["partners"]]
        assert names == ["demo", "late"]
        assert sandbox.partners.partner("demo").accepted_ids() == {"msg_1"}


def _sandbox_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sandbox", *argv])


def test_cli_flags_create_demo_partners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARTNER_SECRET_ENV, raising=False)
    assert partners_config_from_args(_sandbox_args()).partners == ()

    config = partners_config_from_args(
        _sandbox_args("--partner", "acme", "--partner", "turtle:slow", "--partner", "shaky:flaky")
    )
    by_name = {spec.name: spec for spec in config.partners}
    assert by_name["acme"].behaviour == PartnerBehaviour()
    assert by_name["turtle"].behaviour.mode == "slow"
    assert by_name["turtle"].behaviour.delay_ms > 0
    assert by_name["shaky"].behaviour.failure_rate > 0
    assert [s.get_secret_value() for s in by_name["acme"].secrets] == [DEFAULT_PARTNER_SECRET]
    assert config.record_bodies is True

    monkeypatch.setenv(PARTNER_SECRET_ENV, PLAIN_SECRET)
    config = partners_config_from_args(
        _sandbox_args("--partner", "acme", "--partner-delay-ms", "20", "--partner-no-bodies")
    )
    assert config.partners[0].behaviour.delay_ms == 20
    assert [s.get_secret_value() for s in config.partners[0].secrets] == [PLAIN_SECRET]
    assert config.record_bodies is False

    for bad in (["--partner", "x:redirect"], ["--partner", "a", "--partner", "a"], ["--partner", "b c"]):
        with pytest.raises(ConfigError):
            partners_config_from_args(_sandbox_args(*bad))


async def test_processors_sandbox_command_serves_demo_partners(client: aiohttp.ClientSession) -> None:
    env = {**os.environ, PARTNER_SECRET_ENV: SECRET}
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "processors_dev.sandbox.cli", "--port", "0", "--partner", "acme"],
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            line = (await process.stdout.readline()).decode()
        assert line.startswith(READY_PREFIX)
        base = line[len(READY_PREFIX) :].strip()
        assert (await deliver(client, f"{base}/partners/acme", "msg_1")).status == 200
        assert (await deliver(client, f"{base}/partners/acme", "msg_2", secrets=[OLD_SECRET])).status == 401
        async with client.get(f"{base}{CONTROL_PREFIX}/acme") as response:
            summary = await response.json()
        assert (summary["accepted"], summary["invalid_signatures"]) == (1, 1)
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0
