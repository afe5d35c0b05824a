"""What the live-feed tests share: the webhooks app with the API (``processors run webhooks
--api``) on isolated topics, partner receivers, partners and their keys made over REST, and the
GraphQL ``Subscription.feed`` document.

Everything is real: the broker the harness starts, the ``Runner`` with the webhooks app and the
API server (whose ``/graphql`` carries the feed), the partner sandbox's HTTP receivers, and a
WebSocket client speaking graphql-transport-ws (:mod:`tests.integration.graphql_ws`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from processors.contract import Event
from processors.portal.graphql.view import GRAPHQL_PATH, GraphqlRoutes
from processors.portal.live import LiveFeed
from processors.runner import Runner
from processors.settings import Settings, load_settings
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from tests.integration.helpers import publish
from tests.integration.test_webhooks_fanout import RESILIENCE, started

TOKEN = "feed-operator-t0ken"

FEED = """
subscription Feed($endpointId: ID, $eventTypes: [String!]) {
  feed(endpointId: $endpointId, eventTypes: $eventTypes) {
    __typename
    ... on FeedEvent { endpointId webhookId eventType eventId body at }
    ... on FeedOutcome {
      attempt {
        id webhookId endpointId eventId eventType attempt status httpStatus latencyMs attemptedAt urlHost
      }
    }
  }
}
"""

FAMILIES = {
    "policy": "policy",
    "premium": "billing",
    "refund": "billing",
    "customer": "customer",
    "claim": "claim",
}
"""The input topic of each event family the webhooks app consumes."""


def feed_settings(bootstrap: str, topics_file: Path, prefix: str, tmp_path: Path) -> Settings:
    resilience = topics_file.with_name(f"{prefix}resilience.yaml")
    resilience.write_text(RESILIENCE)
    return load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
        portal={"database_url": f"sqlite:///{tmp_path / 'portal.db'}"},
    )


@dataclass
class Registered:
    """A partner with one key and one endpoint delivering to a sandbox receiver."""

    name: str
    partner_id: str
    key: str
    key_id: str
    endpoint_id: str
    secret: str


class Env:
    """The running webhooks app and API, its live feed, the receivers, and a REST client."""

    def __init__(
        self,
        runner: Runner,
        sandbox: PartnerSandbox,
        session: aiohttp.ClientSession,
        bootstrap: str,
        prefix: str,
    ) -> None:
        assert runner.api is not None
        self.runner = runner
        self.api = runner.api
        self.sandbox = sandbox
        self.session = session
        self.bootstrap = bootstrap
        self.prefix = prefix
        found = [p for p in self.api.extra_routes if isinstance(p, GraphqlRoutes)]
        assert len(found) == 1, "the API serves no /graphql"
        live = found[0].services.live
        assert isinstance(live, LiveFeed), "the GraphQL routes have no live feed"
        self.live: LiveFeed = live

    @property
    def graphql_url(self) -> str:
        return self.api.url + GRAPHQL_PATH

    async def call(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.api.url + path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> Any:
        status, document = await self.call(method, path, body, token=token)
        assert status in (200, 201, 204), (method, path, status, document)
        return document

    async def partner(self, name: str, events: Sequence[str]) -> Registered:
        """A broker partner, its key, and one endpoint (made with its own key) to a receiver."""
        partner = await self.ok("POST", "/api/v1/partners", {"name": name, "kind": "broker"})
        key = await self.ok("POST", f"/api/v1/partners/{partner['id']}/keys", {"name": "feed"})
        secret = generate_secret().get_secret_value()
        receiver = f"r{uuid.uuid4().hex[:8]}"
        self.sandbox.add(receiver, PartnerBehaviour(), [secret])
        endpoint = await self.ok(
            "POST",
            "/api/v1/webhooks",
            {"url": self.sandbox.url(receiver), "events": list(events), "secret": secret},
            token=key["key"],
        )
        assert endpoint["partner_id"] == partner["id"]
        registered = Registered(name, partner["id"], key["key"], key["id"], endpoint["id"], secret)
        self.receivers[registered.endpoint_id] = receiver
        return registered

    receivers: dict[str, str]

    def receiver_bodies(self, endpoint_id: str) -> dict[str, Any]:
        """What the endpoint's receiver got: webhook id → the body, parsed."""
        found: dict[str, Any] = {}
        for delivery in self.sandbox.partner(self.receivers[endpoint_id]).received():
            assert delivery.body is not None
            body = json.loads(delivery.body)
            found[body["webhook_id"]] = body
        return found

    async def revoke(self, who: Registered) -> None:
        status, document = await self.call("DELETE", f"/api/v1/partners/{who.partner_id}/keys/{who.key_id}")
        assert status == 204, document

    def publish(self, events: Sequence[Event]) -> None:
        """Publish each event to its family's input topic."""
        by_topic: dict[str, list[Event]] = {}
        for event in events:
            family = FAMILIES[event.event_type.partition(".")[0]]
            by_topic.setdefault(f"{self.prefix}insurance.{family}.events", []).append(event)
        for topic, batch in by_topic.items():
            publish(self.bootstrap, topic, batch)


@contextlib.asynccontextmanager
async def running(
    bootstrap: str, topics_file: Path, prefix: str, tmp_path: Path, session: aiohttp.ClientSession
) -> AsyncIterator[Env]:
    """The webhooks app with the API, until the block ends; the live feed tailing its topics."""
    settings = feed_settings(bootstrap, topics_file, prefix, tmp_path)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    async with PartnerSandbox() as sandbox:
        stop, task = await started(runner)
        try:
            env = Env(runner, sandbox, session, bootstrap, prefix)
            env.receivers = {}
            assert await env.live.wait_ready(60), "the live feed did not find its topics"
            yield env
        finally:
            stop.set()
            await task


def feed_item(message: dict[str, Any]) -> dict[str, Any]:
    """The ``feed`` item of a ``next`` message that carries one (and no error)."""
    assert message["type"] == "next", message
    payload = message["payload"]
    assert not payload.get("errors"), payload
    (item,) = payload["data"].values()  # ``feed``, or its alias
    assert isinstance(item, dict)
    return item


def item_endpoint(item: dict[str, Any]) -> str:
    endpoint: str = item["endpointId"] if item["__typename"] == "FeedEvent" else item["attempt"]["endpointId"]
    return endpoint


def item_webhook(item: dict[str, Any]) -> str:
    webhook: str = item["webhookId"] if item["__typename"] == "FeedEvent" else item["attempt"]["webhookId"]
    return webhook
