"""Isolation of the live feed: with partner A's key, nothing of partner B's comes through.

Real broker, the webhooks app with the API in a ``Runner``, sandbox receivers, and WebSocket
clients speaking graphql-transport-ws.  A's endpoint takes ``policy.*``, B's takes ``claim.*``,
and an operator's endpoint (no partner) takes ``claim.*`` too.  With A's key, every attempt
the test can think of at B's feed:

* B's endpoint id (inline, as a variable, under an alias, with filters), the operator's
  endpoint id — each must be answered exactly like an id that does not exist;
* two feeds in one operation (aliases) — refused by validation;
* open feeds without a filter, with ``*``, and with event types only B's endpoint receives,
  several at once on one connection and one on a second connection, while B's endpoint
  receives every published event (B's own feed shows them arriving).

Every attempt and every item received is counted.  A's feeds are also counted on the server
(items queued for them): a leaked item could not hide in a buffer.  The end is awaited as
events: B's feed has every item, then an event only A's endpoint receives reaches A's
unfiltered feeds (so anything routed to them before it was delivered first).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.contract import EVENT_TYPES
from processors.contract.examples import example_event
from processors.portal.graphql.subscription import ENDPOINT_NOT_FOUND
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import webhook_id_for
from processors_dev.sandbox.partners import PartnerBehaviour
from tests.integration.graphql_ws import GraphqlWs, Operation
from tests.integration.portal_feed_env import FEED, feed_item, item_endpoint, running

pytestmark = pytest.mark.timeout(300)

ROUNDS = 3
"""Each claim event type is published this many times for B."""

SELECTION = (
    "{ __typename ... on FeedEvent { endpointId webhookId } ... on FeedOutcome { attempt { endpointId } } }"
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def not_found(errors: list[dict[str, Any]]) -> bool:
    return [(e.get("message"), (e.get("extensions") or {}).get("code")) for e in errors] == [
        (ENDPOINT_NOT_FOUND, "NOT_FOUND")
    ]


def pending(operation: Operation) -> list[dict[str, Any]]:
    """The messages of ``operation`` that arrived and were not read yet (without waiting)."""
    found = []
    while not operation.messages.empty():
        found.append(operation.messages.get_nowait())
    return found


async def test_partner_a_gets_nothing_of_partner_b_through_the_feed(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    topics_file, prefix = isolated_topics()
    claim_types = sorted(t for t in EVENT_TYPES if t.startswith("claim."))
    attempts = 0
    successes = 0
    a_items: list[dict[str, Any]] = []

    async with running(kafka_bootstrap, topics_file, prefix, tmp_path, session) as env:
        a = await env.partner("Isolated A", ["policy.*"])
        b = await env.partner("Isolated B", ["claim.*"])
        secret = generate_secret().get_secret_value()
        env.sandbox.add("operator", PartnerBehaviour(), [secret])
        operator = await env.ok(
            "POST",
            "/api/v1/webhooks",
            {"url": env.sandbox.url("operator"), "events": ["claim.*"], "secret": secret},
        )
        assert operator["partner_id"] is None
        unknown = "ep_" + uuid.uuid4().hex[:24]

        async with (
            GraphqlWs.connect(session, env.graphql_url, a.key) as ws_a,
            GraphqlWs.connect(session, env.graphql_url, a.key) as ws_a2,
            GraphqlWs.connect(session, env.graphql_url, b.key) as ws_b,
        ):
            # -- ids that are not A's: each answered as the unknown one is
            refusals: list[tuple[str, dict[str, Any] | None]] = [
                (FEED, {"endpointId": unknown}),  # the control: an id that does not exist
                (FEED, {"endpointId": b.endpoint_id}),
                (FEED, {"endpointId": b.endpoint_id, "eventTypes": ["claim.*"]}),
                (FEED, {"endpointId": b.endpoint_id, "eventTypes": ["*"]}),
                (FEED, {"endpointId": operator["id"]}),
                (f'subscription {{ feed(endpointId: "{b.endpoint_id}") {SELECTION} }}', None),
                (f'subscription {{ mine: feed(endpointId: "{b.endpoint_id}") {SELECTION} }}', None),
            ]
            for query, variables in refusals:
                payloads, errors = await (await ws_a.subscribe(query, variables)).end(timeout_s=30)
                attempts += 1
                if any(p.get("data") for p in payloads):
                    successes += 1
                assert not_found(errors), (variables, errors)

            # -- two feeds in one operation: refused before anything runs
            two = f'subscription {{ x: feed {SELECTION} y: feed(endpointId: "{b.endpoint_id}") {SELECTION} }}'
            payloads, errors = await (await ws_a.subscribe(two)).end(timeout_s=30)
            attempts += 1
            successes += sum(1 for p in payloads if p.get("data"))
            assert errors
            assert errors[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

            # -- open feeds while B's endpoint receives events
            unfiltered = [
                await ws_a.subscribe(FEED),
                await ws_a.subscribe(FEED, {"eventTypes": ["*"]}),
                await ws_a.subscribe(f"subscription {{ alias: feed {SELECTION} }}"),
            ]
            only_b = [
                await ws_a.subscribe(FEED, {"eventTypes": ["claim.*"]}),
                await ws_a.subscribe(FEED, {"eventTypes": claim_types}),
                await ws_a2.subscribe(FEED, {"eventTypes": ["claim.*"]}),
            ]
            attempts += len(unfiltered) + len(only_b)
            b_feed = await ws_b.subscribe(FEED)
            assert await env.live.wait_subscribed(a.partner_id, len(unfiltered) + len(only_b), timeout_s=30)
            assert await env.live.wait_subscribed(b.partner_id, 1, timeout_s=30)

            events = [
                example_event(t).model_copy(update={"event_id": uuid.uuid4()})
                for _ in range(ROUNDS)
                for t in claim_types
            ]
            env.publish(events)
            expected_b = {webhook_id_for(b.endpoint_id, str(e.event_id)) for e in events}
            b_events: set[str] = set()
            b_delivered: set[str] = set()
            b_items = 0
            async with asyncio.timeout(180):
                while not (expected_b <= b_events and expected_b <= b_delivered):
                    item = feed_item(await b_feed.receive())
                    b_items += 1
                    assert item_endpoint(item) == b.endpoint_id  # B sees its own only (not the operator's)
                    if item["__typename"] == "FeedEvent":
                        b_events.add(item["webhookId"])
                    elif item["attempt"]["status"] == "DELIVERED":
                        b_delivered.add(item["attempt"]["webhookId"])
            # Every one of B's items has been routed: none was queued for any of A's feeds.
            assert [f.queued for f in env.live.router.feeds(a.partner_id)] == [0] * 6

            # One event for A: its unfiltered feeds get it after anything routed to them before.
            sentinel = example_event("policy.issued").model_copy(update={"event_id": uuid.uuid4()})
            env.publish([sentinel])
            sentinel_id = webhook_id_for(a.endpoint_id, str(sentinel.event_id))
            for operation in unfiltered:
                async with asyncio.timeout(120):
                    while True:
                        item = feed_item(await operation.receive())
                        a_items.append(item)
                        if item["__typename"] == "FeedEvent" and item["webhookId"] == sentinel_id:
                            break
            for operation in only_b:
                for message in pending(operation):
                    a_items.append(feed_item(message))
            claim_only = [
                f.queued
                for f in env.live.router.feeds(a.partner_id)
                if f.event_types and all(t.startswith("claim.") for t in f.event_types)
            ]
            for operation in [*unfiltered, *only_b, b_feed]:
                await operation.complete()

    b_in_a = [i for i in a_items if item_endpoint(i) != a.endpoint_id]
    successes += len(b_in_a)
    assert b_in_a == []
    assert b.endpoint_id not in json.dumps(a_items)
    assert operator["id"] not in json.dumps(a_items)
    assert {item_endpoint(i) for i in a_items} == {a.endpoint_id}  # the feeds worked: A's own arrived
    assert claim_only == [0] * len(only_b)  # nothing queued for the filters only B's endpoint matches
    assert b_items >= 2 * len(events)
    assert successes == 0
    print(f"isolation (feed): 0 of {attempts} attempts succeeded")
    feeds = len(unfiltered) + len(only_b)
    print(f"isolation (feed): {b_items} items of B's reached B's feed, 0 reached A's {feeds} open feeds")
