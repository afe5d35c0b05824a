"""The live feed over a real WebSocket: a partner's events, projected, and their outcomes; and
the end of the feed when the partner's key is revoked.

The webhooks app and the API run in a ``Runner`` on a real broker (``processors run webhooks
--api``); two partners each subscribe one endpoint to ``*`` with their own key, delivering to
sandbox receivers.  Partner A opens ``Subscription.feed`` over graphql-transport-ws.  Every
event type the webhooks app consumes is published once with a distinctive marker in each of
its personal-data fields (``tests/pii_markers.py``; the markers are first shown to be in the
inputs).  A's feed must carry, for each of A's deliveries, the event with exactly the body A's
receiver got (no marker in it) and the delivery's outcome, and nothing of B's.  Then the
operator revokes A's key over REST; the feed must end with ``UNAUTHENTICATED`` (the time from
the revocation request to the end is printed, not asserted).  Every wait is on an event (a
message, the feed's readiness), bounded by a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.contract import EVENT_TYPES
from processors.partners.auth import REVOKED
from processors.webhooks.signing import webhook_id_for
from tests.integration.graphql_ws import Closed, GraphqlWs
from tests.integration.portal_feed_env import FAMILIES, FEED, feed_item, item_endpoint, item_webhook, running
from tests.pii_markers import marked_event

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_a_partner_feed_carries_its_projected_events_and_outcomes_and_ends_when_its_key_is_revoked(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    topics_file, prefix = isolated_topics()
    consumed = [t for t in sorted(EVENT_TYPES) if t.partition(".")[0] in FAMILIES]
    marked = {t: marked_event(t) for t in consumed}
    every_marker = set().union(*(m.all_markers() for m in marked.values()))
    assert every_marker
    for m in marked.values():  # the markers are there to leak: each is in its event's data
        assert all(marker in m.data_json() for marker in m.all_markers())

    async with running(kafka_bootstrap, topics_file, prefix, tmp_path, session) as env:
        a = await env.partner("Feed Brokers A", ["*"])
        b = await env.partner("Feed Brokers B", ["*"])

        async with GraphqlWs.connect(session, env.graphql_url, a.key) as ws:
            feed = await ws.subscribe(FEED)
            assert await env.live.wait_subscribed(a.partner_id, 1, timeout_s=30)

            env.publish([m.event for m in marked.values()])
            expected = {webhook_id_for(a.endpoint_id, str(m.event.event_id)) for m in marked.values()}
            events: dict[str, dict[str, Any]] = {}
            outcomes: dict[str, list[dict[str, Any]]] = {}
            items: list[dict[str, Any]] = []
            async with asyncio.timeout(180):
                while not (expected <= events.keys() and expected <= _delivered(outcomes)):
                    item = feed_item(await feed.receive())
                    items.append(item)
                    if item["__typename"] == "FeedEvent":
                        events[item["webhookId"]] = item
                    else:
                        outcomes.setdefault(item["attempt"]["webhookId"], []).append(item["attempt"])

            received = env.receiver_bodies(a.endpoint_id)

            # Revoked through the REST API; the feed ends on its own.
            started = time.perf_counter()
            ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()

            async def await_end() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                result = await feed.end(timeout_s=60)
                ended.set_result(time.perf_counter())
                return result

            end = asyncio.create_task(await_end())
            await env.revoke(a)
            payloads, errors = await end
            ms = (ended.result() - started) * 1000
            print(f"feed ended {ms:.0f} ms after revocation")

            # The same connection takes no new operation with the revoked key.
            refused = await ws.subscribe(FEED)
            with pytest.raises(Closed) as closed:
                await refused.receive(timeout_s=30)

    # Only A's items, and everything of A's: each event as A's receiver got it, and its outcome.
    assert {item_endpoint(i) for i in items} == {a.endpoint_id}
    assert b.endpoint_id not in json.dumps(items)
    assert set(events) == expected
    assert set(received) == expected
    for webhook_id, event in events.items():
        assert event["body"] == received[webhook_id]
        assert event["eventType"] == received[webhook_id]["event_type"]
        assert event["at"].endswith("+00:00")
    for webhook_id in expected:
        delivered = [o for o in outcomes[webhook_id] if o["status"] == "DELIVERED"]
        assert delivered, outcomes[webhook_id]
        assert delivered[0]["httpStatus"] == 200
        assert delivered[0]["eventId"] == events[webhook_id]["eventId"]
        assert ":" in delivered[0]["id"]
    assert all(item_webhook(i) in expected for i in items)

    # Projected for A (no grants): not one marker in anything the feed carried.
    text = json.dumps(items)
    assert sorted(marker for marker in every_marker if marker in text) == []

    # The end: after the last item, an error with UNAUTHENTICATED, then complete.
    assert all(not p.get("data") for p in payloads)
    assert [(e["message"], e["extensions"]["code"]) for e in errors] == [(REVOKED.message, "UNAUTHENTICATED")]
    assert feed.received[-1]["type"] == "complete"
    assert closed.value.code == 4403


def _delivered(outcomes: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {w for w, attempts in outcomes.items() if any(a["status"] == "DELIVERED" for a in attempts)}
