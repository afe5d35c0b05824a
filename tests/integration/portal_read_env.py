"""What the portal's read-side integration tests share: a running webhooks app with the API and
``/graphql`` on isolated topics, its query store on SQLite or PostgreSQL, a local receiver
partners register as their endpoint, partners made through the operator REST API, and
GraphQL over HTTP.

Everything is real: the runner (``processors run webhooks --api``), the broker, the webhooks
app's fan-out and delivery to the receiver, the delivery log, the projector and the store.
Bordereaux and their delivery results are written to their topics as the reinsurance wing
writes them (a bordereau in a Kafka transaction).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import confluent_kafka
from aiohttp import web
from aiohttp.test_utils import TestServer

from processors.contract import Event
from processors.kafka import KafkaClients
from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from processors_dev.samples import mixed_events
from tests.integration.helpers import publish
from tests.integration.test_webhooks_fanout import RESILIENCE, started

TOKEN = "portal-read-t0ken"
_T = TypeVar("_T")


def fresh_policy_issued(count: int) -> list[Event]:
    """``count`` policy.issued events with fresh ids: the first ``count`` of that type in a
    sample stream of 10,000 mixed events (thousands of them are policy.issued, whatever the seed)."""
    seed = uuid.uuid4().int % 1_000_000
    issued = (e for e in mixed_events(10_000, 1_000, seed=seed) if e.event_type == "policy.issued")
    chosen = list(itertools.islice(issued, count))
    assert len(chosen) == count, f"the sample stream had fewer than {count} policy.issued events"
    return chosen


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A partner's webhook receiver: records every request; a path under ``/fail/`` answers 500."""

    server: TestServer | None = None
    received: list[Received] = field(default_factory=list)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body))
        if request.path.startswith("/fail/"):
            return web.Response(status=500, text="receiver down for maintenance")
        return web.Response(status=200, text="ok")


@dataclass(frozen=True)
class Member:
    """A partner made through the REST API, with one key."""

    id: str
    key: str
    key_id: str


class PortalEnv:
    def __init__(
        self, url: str, session: aiohttp.ClientSession, bootstrap: str, prefix: str, receiver: Receiver
    ) -> None:
        self.url = url
        self.session = session
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.receiver = receiver

    async def rest(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            text = await response.text()
            try:
                return response.status, (json.loads(text) if text else None)
            except ValueError:
                return response.status, text

    async def graphql(
        self, key: str, document: str, variables: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            self.url + "/graphql",
            json={"query": document, "variables": variables or {}},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            return response.status, dict(await response.json())

    async def data(self, key: str, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of an answer that must have no error."""
        status, answer = await self.graphql(key, document, variables)
        assert status == 200, answer
        assert not answer.get("errors"), answer
        return dict(answer["data"])

    async def partner(self, name: str, kind: str = "broker", **fields: Any) -> Member:
        status, partner = await self.rest("POST", "/api/v1/partners", {"name": name, "kind": kind, **fields})
        assert status == 201, partner
        status, key = await self.rest("POST", f"/api/v1/partners/{partner['id']}/keys", {"name": "portal"})
        assert status == 201, key
        return Member(partner["id"], key["key"], key["id"])

    async def endpoint(self, member: Member, path: str, events: list[str]) -> str:
        status, created = await self.rest(
            "POST", "/api/v1/webhooks", {"url": self.receiver.url(path), "events": events}, token=member.key
        )
        assert status == 201, created
        return str(created["id"])

    def publish_policy_issued(self, count: int) -> list[Event]:
        chosen = fresh_policy_issued(count)
        publish(self.bootstrap, f"{self.prefix}insurance.policy.events", chosen)
        return chosen

    def write_bordereau(self, treaty: str, report: bytes) -> None:
        """A bordereau on its topic, in a committed Kafka transaction (as the bordereaux app)."""
        producer = confluent_kafka.Producer(
            KafkaClients(self.bootstrap).transactional(f"portal-read-{uuid.uuid4().hex}")
        )
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(f"{self.prefix}reinsurance.bordereaux", key=treaty.encode(), value=report)
        assert producer.flush(30) == 0
        producer.commit_transaction(30)

    def write_bordereau_result(self, treaty: str, result: bytes) -> None:
        producer = confluent_kafka.Producer(KafkaClients(self.bootstrap).producer())
        producer.produce(
            f"{self.prefix}integrations.reinsurance.deliveries", key=treaty.encode(), value=result
        )
        assert producer.flush(30) == 0

    async def deliveries_of(self, member: Member, count: int, what: str) -> list[dict[str, Any]]:
        """``member``'s delivery log once it holds at least ``count`` lines (newest first)."""
        query = """query { deliveries(first: 100) { edges { cursor node {
            id webhookId endpointId eventId eventType attempt status httpStatus latencyMs error
            responseBody attemptedAt urlHost nextStep } } pageInfo { hasNextPage endCursor } } }"""

        async def probe() -> list[dict[str, Any]] | None:
            edges = (await self.data(member.key, query))["deliveries"]["edges"]
            return [edge["node"] for edge in edges] if len(edges) >= count else None

        return await eventually(probe, what=what)


async def eventually(probe: Callable[[], Awaitable[_T | None]], *, timeout_s: float = 90, what: str) -> _T:
    """The first answer of ``probe`` that is not None (the store is filled by the projector:
    the test waits for what it shows, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.2)  # between two reads of a store another task fills


@asynccontextmanager
async def portal_env(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    database_url: str,
    **graphql: Any,
) -> AsyncIterator[PortalEnv]:
    """The webhooks app with the API (REST and ``/graphql``) on isolated topics; the query
    store at ``database_url``; ``graphql`` settings (``portal.graphql``) as given."""
    topics_file, prefix = isolated_topics(webhooks_retry_tiers="[1h]")
    resilience = topics_file.with_name(f"{prefix}resilience.yaml")
    resilience.write_text(RESILIENCE)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
        portal={"database_url": database_url, "graphql": graphql},
    )
    receiver = Receiver()
    await receiver.start()
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    stop, task = await started(runner)
    try:
        assert runner.api is not None
        async with aiohttp.ClientSession() as session:
            yield PortalEnv(runner.api.url, session, kafka_bootstrap, prefix, receiver)
    finally:
        stop.set()
        await task
        await receiver.stop()
