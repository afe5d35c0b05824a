"""Partners and partner keys against a real broker: two API instances, the CLI, the topic.

Each API instance has its own partner store and subscription store on the same (isolated)
topics, as two processes would.  Partners and keys are made through the REST API (and the
CLI); what one instance writes, the other must honour: a revoked key or a suspended partner is
refused by the instance that did not make the change, once its table shows it (polled with a
deadline, never slept on).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import confluent_kafka
import pytest

from processors.api.partners import PartnerRoutes
from processors.api.server import ApiServer
from processors.api.webhooks import WebhookRoutes
from processors.cli import main
from processors.settings import load_settings
from processors.webhooks.secrets import SecretBox
from processors.webhooks.store import SubscriptionStore
from tests.integration.helpers import watermarks

pytestmark = pytest.mark.timeout(240)

TOKEN = "operator-t0ken-for-partner-tests"
URL = "https://partner.example.com/hooks"
BOX = SecretBox.ephemeral()
T = TypeVar("T")


@dataclass(frozen=True)
class Topics:
    file: Path
    partners: str
    subscriptions: str


async def allow_every_url(_url: str) -> None:
    return None


@pytest.fixture
def topics(isolated_topics: Callable[..., tuple[Path, str]]) -> Topics:
    path, prefix = isolated_topics()
    return Topics(path, f"{prefix}integrations.partners", f"{prefix}integrations.webhook.subscriptions")


def instance(bootstrap: str, topics: Topics) -> ApiServer:
    """One API process: its own partner store and subscription store on the shared topics."""
    settings = load_settings(bootstrap_servers=bootstrap, api={"port": 0, "auth_token": TOKEN})
    partners = PartnerRoutes.create(bootstrap, topics.partners)
    webhooks = WebhookRoutes(
        SubscriptionStore(bootstrap, topics.subscriptions),
        BOX,
        allow_every_url,
        owns_store=True,
        partners=partners.table,
    )
    return ApiServer(settings, extra_routes=[partners, webhooks])


@pytest.fixture
async def apis(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[tuple[ApiServer, ApiServer]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(instance(kafka_bootstrap, topics))
        second = await stack.enter_async_context(instance(kafka_bootstrap, topics))
        yield first, second


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession,
    api: ApiServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = TOKEN,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, api.url + path, json=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def created(
    session: aiohttp.ClientSession, api: ApiServer, path: str, body: Any, *, token: str = TOKEN
) -> Any:
    status, document = await call(session, api, "POST", path, body, token=token)
    assert status == 201, document
    return document


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, *, timeout_s: float = 20.0) -> T:
    """Poll ``check`` until it returns something, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.05)


def raw_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every value of ``topic`` (one partition) up to its end, read with a plain consumer."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        tp = confluent_kafka.TopicPartition(topic, 0)
        _low, high = watermarks(consumer, tp)
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        values: list[bytes] = []
        last = -1
        deadline = time.monotonic() + 30
        while last < high - 1:
            assert time.monotonic() < deadline, "the topic was not read in time"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            values.append(msg.value() or b"")
            last = msg.offset() or 0
        return values
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------- tests


async def test_partner_b_cannot_touch_partner_a_and_a_revoked_key_is_refused_everywhere(
    apis: tuple[ApiServer, ApiServer], session: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics
) -> None:
    first, second = apis
    a = await created(session, first, "/api/v1/partners", {"name": "Partner A", "kind": "broker"})
    b = await created(
        session,
        first,
        "/api/v1/partners",
        {"name": "Partner B", "kind": "reinsurer", "reinsurer_code": "RE001"},
    )
    key_a = await created(session, first, f"/api/v1/partners/{a['id']}/keys", {"name": "portal"})
    key_b = await created(session, first, f"/api/v1/partners/{b['id']}/keys", {})
    sub = await created(
        session, first, "/api/v1/webhooks", {"url": URL, "events": ["policy.*"]}, token=key_a["key"]
    )
    assert sub["partner_id"] == a["id"]

    # Partner B, on both instances, at everything of A's.
    attempts = 0
    successes = 0
    for api in (first, second):
        for method, path, body in (
            ("GET", "/api/v1/webhooks", None),
            ("GET", f"/api/v1/webhooks/{sub['id']}", None),
            ("PATCH", f"/api/v1/webhooks/{sub['id']}", {"url": "https://attacker.example.com/hooks"}),
            ("PATCH", f"/api/v1/webhooks/{sub['id']}", {"active": False}),
            ("POST", f"/api/v1/webhooks/{sub['id']}/rotate-secret", {}),
            ("DELETE", f"/api/v1/webhooks/{sub['id']}", None),
        ):
            status, document = await call(session, api, method, path, body, token=key_b["key"])
            attempts += 1
            listed_a = status == 200 and any(w["id"] == sub["id"] for w in document.get("webhooks", []))
            if (
                (status < 300 and method != "GET")
                or listed_a
                or (status == 200 and document.get("id") == sub["id"])
            ):
                successes += 1
            assert status in (200, 404), (method, path, status, document)
    assert attempts == 12
    assert successes == 0

    # A's subscription is as A made it, on both instances.
    for api in (first, second):
        status, seen = await call(session, api, "GET", f"/api/v1/webhooks/{sub['id']}", token=key_a["key"])
        assert status == 200, seen
        assert (seen["url"], seen["active"], seen["version"], seen["partner_id"]) == (URL, True, 1, a["id"])

    # Revoked through the first instance, refused by the second.
    status, _ = await call(session, first, "DELETE", f"/api/v1/partners/{a['id']}/keys/{key_a['id']}")
    assert status == 204

    async def refused_by_second() -> dict[str, Any] | None:
        status, document = await call(session, second, "GET", "/api/v1/webhooks", token=key_a["key"])
        return document if status == 401 else None

    refusal = await eventually(refused_by_second, "the second instance refuses the revoked key")
    assert refusal == {"error": "unauthorized", "reason": "key_revoked", "message": "the API key was revoked"}
    assert (await call(session, second, "GET", "/api/v1/webhooks", token=key_b["key"]))[0] == 200

    # The topic holds digests, never a key.
    values = await asyncio.get_running_loop().run_in_executor(
        None, raw_values, kafka_bootstrap, topics.partners
    )
    assert values
    for key in (key_a["key"], key_b["key"]):
        assert all(key.encode() not in value for value in values)
        assert all(key[17:].encode() not in value for value in values)


async def test_a_suspension_through_one_instance_is_refused_by_the_other(
    apis: tuple[ApiServer, ApiServer], session: aiohttp.ClientSession
) -> None:
    first, second = apis
    partner = await created(session, second, "/api/v1/partners", {"name": "Acme", "kind": "service_provider"})
    key = (await created(session, second, f"/api/v1/partners/{partner['id']}/keys", {}))["key"]
    # made on the second instance, used at once on the first: an unknown id waits for the table
    assert (await call(session, first, "GET", "/api/v1/webhooks", token=key))[0] == 200

    status, _ = await call(
        session, second, "PATCH", f"/api/v1/partners/{partner['id']}", {"status": "suspended"}
    )
    assert status == 200

    async def refused_by_first() -> str | None:
        status, document = await call(session, first, "GET", "/api/v1/webhooks", token=key)
        return str(document["reason"]) if status == 401 else None

    assert await eventually(refused_by_first, "the first instance refuses a suspended partner") == (
        "partner_suspended"
    )

    async def last_use_shown() -> str | None:
        _, listed = await call(session, first, "GET", f"/api/v1/partners/{partner['id']}/keys")
        return listed["keys"][0]["last_used_at"]

    assert await eventually(last_use_shown, "the key's last use is recorded")


async def test_the_cli_manages_partners_that_a_running_api_honours(
    kafka_bootstrap: str,
    topics: Topics,
    session: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--bootstrap-servers", kafka_bootstrap, "--topics-file", str(topics.file)]
    loop = asyncio.get_running_loop()

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await loop.run_in_executor(None, main, ["partners", *argv, *common])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await cli(
        "create", "--name", "Reinsurance Corp", "--kind", "reinsurer", "--reinsurer-code", "RE001", "--json"
    )
    assert code == 0, out
    partner = json.loads(out)
    code, out, err = await cli("keys", "create", partner["id"], "--name", "bordereaux", "--json")
    assert code == 0
    key = json.loads(out)
    assert "shown once" in err

    async with instance(kafka_bootstrap, topics) as api:
        assert (await call(session, api, "GET", "/api/v1/webhooks", token=key["key"]))[0] == 200

        code, out, _ = await cli("suspend", partner["id"])
        assert (code, out) == (0, f"partner {partner['id']} is suspended\n")

        async def reason() -> str | None:
            status, document = await call(session, api, "GET", "/api/v1/webhooks", token=key["key"])
            return str(document["reason"]) if status == 401 else None

        assert await eventually(reason, "a suspension made with the CLI is honoured") == "partner_suspended"

        assert (await cli("activate", partner["id"]))[0] == 0
        assert (await cli("keys", "revoke", partner["id"], key["prefix"]))[0] == 0

        async def revoked() -> str | None:
            found = await reason()
            return found if found == "key_revoked" else None

        assert await eventually(revoked, "a revocation made with the CLI is honoured") == "key_revoked"

    code, out, _ = await cli("keys", "list", partner["id"], "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(k["id"], k["state"], k["name"]) for k in listed] == [(key["id"], "revoked", "bordereaux")]
    code, out, _ = await cli("show", partner["id"])
    assert code == 0
    assert "Reinsurance Corp" in out
    assert key["prefix"] in out
    assert key["key"] not in out
    code, out, _ = await cli("list")
    assert code == 0
    assert partner["id"] in out
    assert out.endswith("1 partner\n")

    code, _, err = await cli("show", "prt_000000000000000000000000")
    assert code == 1
    assert err.strip().splitlines()[-1] == "error: no such partner"
    code, _, err = await cli("create", "--name", "Copy", "--kind", "reinsurer", "--reinsurer-code", "RE001")
    assert code == 1
    assert "has this code already" in err
    code, _, err = await cli("create", "--name", "Bad", "--kind", "reinsurer", "--reinsurer-code", "bad code")
    assert code == 2
    assert "reinsurer_code" in err

    # grants: set, shown, cleared; and given at creation
    code, out, _ = await cli("grants", partner["id"], "--grant", "identity", "--grant", "contact")
    assert (code, out) == (0, f"partner {partner['id']} grants: contact, identity\n")
    code, out, _ = await cli("show", partner["id"], "--json")
    assert (code, json.loads(out)["grants"]) == (0, ["contact", "identity"])
    code, out, _ = await cli("grants", partner["id"], "--none", "--json")
    assert (code, json.loads(out)["grants"], json.loads(out)["version"]) == (0, [], partner["version"] + 4)
    code, out, _ = await cli(
        "create", "--name", "Granted", "--kind", "broker", "--grant", "payment_instrument", "--json"
    )
    assert (code, json.loads(out)["grants"]) == (0, ["payment_instrument"])
