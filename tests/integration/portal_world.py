"""A running webhooks app with the API and ``/graphql``, partners and a GraphQL client.

What the portal's write-side integration tests share: the runner (``processors run webhooks
--api``) on isolated topics and its own SQLite query store, two partners made through the
operator REST API with a key each, HTTP helpers for REST and GraphQL, and a reader of
``integrations.audit``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from processors.contract import Event
from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from tests.integration.helpers import publish, read_topics
from tests.integration.portal_read_env import fresh_policy_issued
from tests.integration.test_webhooks_fanout import RESILIENCE, started

TOKEN = "portal-write-t0ken"
"""The operator token (the REST API's; refused on /graphql)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class PartnerKey:
    partner_id: str
    key: str
    key_id: str


class Portal:
    """The API of a running runner: REST (operator token or a partner key) and GraphQL."""

    def __init__(self, url: str, session: aiohttp.ClientSession, bootstrap: str, prefix: str) -> None:
        self.url = url
        self.session = session
        self.bootstrap = bootstrap
        self.prefix = prefix

    async def rest(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def graphql(self, key: str, document: str, **variables: Any) -> dict[str, Any]:
        """The response document (asserting the HTTP status is 200: a GraphQL answer)."""
        async with self.session.post(
            self.url + "/graphql",
            json={"query": document, "variables": variables},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            body = await response.json()
            assert response.status == 200, (response.status, body)
            return dict(body)

    async def partner(self, name: str) -> PartnerKey:
        status, partner = await self.rest("POST", "/api/v1/partners", {"name": name, "kind": "broker"})
        assert status == 201, partner
        status, key = await self.rest("POST", f"/api/v1/partners/{partner['id']}/keys", {"name": "portal"})
        assert status == 201, key
        return PartnerKey(partner["id"], key["key"], key["id"])

    def publish_policy_issued(self, count: int = 1) -> list[Event]:
        """``count`` new policy.issued events on the policy topic (fresh event ids)."""
        chosen = fresh_policy_issued(count)
        publish(self.bootstrap, f"{self.prefix}insurance.policy.events", chosen)
        return chosen

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record on the audit topic now, as JSON."""
        records = read_topics(self.bootstrap, [f"{self.prefix}integrations.audit"])
        values = [m.value() for m in records]
        return [json.loads(value) for value in values if value]


async def eventually(probe: Callable[[], Awaitable[_T | None]], *, timeout_s: float = 60, what: str) -> _T:
    """The first non-None answer of ``probe``, asked again as long as it answers None (the
    portal's store and the delivery log are read by other tasks: the test waits for what they
    show, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.2)  # between two reads of state another task changes


@asynccontextmanager
async def running_portal(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    *,
    webhooks_retry_tiers: str = "[1h]",
) -> AsyncIterator[Portal]:
    """The webhooks app with the API (REST and ``/graphql``) on isolated topics.

    One retry tier of an hour by default: a failed delivery waits there, so what reaches a
    receiver again within a test was redelivered, not retried.
    """
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=webhooks_retry_tiers)
    resilience = topics_file.with_name(f"{prefix}resilience.yaml")
    resilience.write_text(RESILIENCE)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
        portal={"database_url": f"sqlite:///{tmp_path / f'{prefix}portal.db'}"},
    )
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    stop, task = await started(runner)
    try:
        assert runner.api is not None
        async with aiohttp.ClientSession() as session:
            yield Portal(runner.api.url, session, kafka_bootstrap, prefix)
    finally:
        stop.set()
        await task
