"""``Subscription.feed`` executed by strawberry, without a broker or a socket.

The resolver runs inside the schema (with the portal's :class:`ErrorCodes` extension) against a
real :class:`~processors.portal.live.LiveFeed` whose Kafka consumer is the fake of
``tests/unit/test_portal_live.py``; keys are checked by a fake authenticator that can be
revoked.  What the WebSocket adds is tested in ``tests/integration/test_portal_feed.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import strawberry
from pydantic import SecretStr
from strawberry.schema.config import StrawberryConfig

from processors.kafka import KafkaClients
from processors.partners.auth import EXPIRED, REVOKED, SUSPENDED, UNAVAILABLE, Caller, KeyRefused
from processors.partners.table import PartnerTable
from processors.portal.config import LiveFeedSettings
from processors.portal.graphql.context import PortalContext, PortalServices
from processors.portal.graphql.errors import ErrorCodes
from processors.portal.graphql.scalars import SCALAR_MAP
from processors.portal.graphql.subscription import ENDPOINT_NOT_FOUND, Subscription
from processors.portal.live import LiveFeed
from tests.unit.test_portal_live import (
    DELIVERIES,
    DISPATCH,
    EP_A1,
    EP_A2,
    EP_B,
    EP_OPERATOR,
    OWNERS,
    A,
    B,
    Cluster,
    FakeConsumer,
    dispatched,
    event_id_of,
    logged,
)

FEED = """
subscription Feed($endpointId: ID, $eventTypes: [String!]) {
  feed(endpointId: $endpointId, eventTypes: $eventTypes) {
    __typename
    ... on FeedEvent { endpointId webhookId eventType eventId body at }
    ... on FeedOutcome {
      attempt { id endpointId webhookId eventType status httpStatus latencyMs attemptedAt }
    }
  }
}
"""


@strawberry.type
class Query:
    ok: bool = True


SCHEMA = strawberry.Schema(
    query=Query,
    subscription=Subscription,
    extensions=[ErrorCodes],
    config=StrawberryConfig(scalar_map=SCALAR_MAP),
)


class Keys:
    """A partner authenticator whose answer the test changes (revocation, expiry...)."""

    def __init__(self) -> None:
        self.answer: Caller | KeyRefused = Caller(partner_id=A, key_id="k3x9q2ma")
        self.checks = 0
        self.checked = asyncio.Event()

    async def authenticate(self, key: str) -> Caller | KeyRefused:
        assert key == "pk_live_k3x9q2ma_secret"
        self.checks += 1
        self.checked.set()
        return self.answer


@pytest.fixture
async def live() -> AsyncIterator[LiveFeed]:
    cluster = Cluster()
    feed = LiveFeed(
        KafkaClients("unused:9092"),
        dispatch_topic=DISPATCH,
        deliveries_topic=DELIVERIES,
        endpoints=OWNERS,
        settings=LiveFeedSettings(queue_size=4, key_check_interval_s=0.05, max_subscriptions_per_partner=2),
        consumer_factory=lambda conf: FakeConsumer(cluster, conf),
        poll_timeout_s=0.01,
    )
    feed.cluster = cluster  # type: ignore[attr-defined]
    await feed.start()
    yield feed
    await feed.stop()


def context(live: LiveFeed | None, keys: Keys, partner_id: str = A) -> PortalContext:
    services = PortalServices(queries=None, partners=PartnerTable(), keys=keys, live=live)  # type: ignore[arg-type]
    return PortalContext(
        caller=Caller(partner_id=partner_id, key_id="k3x9q2ma"),
        key=SecretStr("pk_live_k3x9q2ma_secret"),
        services=services,
        request_id="req-1",
    )


async def stream(ctx: PortalContext, **variables: Any) -> Any:
    result = await SCHEMA.subscribe(FEED, variable_values=variables, context_value=ctx)
    assert hasattr(result, "__anext__"), result
    return result


async def only_error(ctx: PortalContext, **variables: Any) -> dict[str, Any]:
    """The one error a feed that fails at once ends with."""
    results = [r async for r in await stream(ctx, **variables)]
    assert len(results) == 1
    (error,) = results[0].errors
    assert results[0].data is None
    return {"message": error.message, "code": error.extensions["code"]}


async def test_events_and_outcomes_arrive_as_feed_items(live: LiveFeed) -> None:
    keys = Keys()
    results = await stream(context(live, keys))
    first = asyncio.ensure_future(results.__anext__())
    assert await live.wait_subscribed(A, 1, timeout_s=10)
    live.cluster.put(dispatched(EP_A1, "policy.issued", offset=3), logged(EP_A2, "claim.paid", offset=4))  # type: ignore[attr-defined]
    event = (await first).data["feed"]
    outcome = (await results.__anext__()).data["feed"]
    await results.aclose()

    assert event["__typename"] == "FeedEvent"
    assert (event["endpointId"], event["eventType"]) == (EP_A1, "policy.issued")
    assert event["body"]["webhook_id"] == event["webhookId"]
    assert event["body"]["data"]["gross_premium"] == "14226.00"  # money stays a decimal string
    assert event["at"].endswith("+00:00")
    assert outcome["__typename"] == "FeedOutcome"
    attempt = outcome["attempt"]
    assert (attempt["id"], attempt["endpointId"], attempt["eventType"]) == ("1:4", EP_A2, "claim.paid")
    assert (attempt["status"], attempt["httpStatus"], attempt["latencyMs"]) == ("DELIVERED", 200, 12.5)
    assert live.router.count(A) == 0  # closing the stream closed the feed


async def test_another_partners_endpoint_is_answered_like_one_that_does_not_exist(live: LiveFeed) -> None:
    keys = Keys()
    answers = [
        await only_error(context(live, keys), endpointId=endpoint)
        for endpoint in (EP_B, EP_OPERATOR, "ep_" + "9" * 24, "not-an-id")
    ]
    assert answers == [{"message": ENDPOINT_NOT_FOUND, "code": "NOT_FOUND"}] * 4
    assert live.router.count() == 0


async def test_bad_filters_are_bad_user_input(live: LiveFeed) -> None:
    error = await only_error(context(live, Keys()), eventTypes=["policy.issued", "policy"])
    assert error["code"] == "BAD_USER_INPUT"
    assert "eventTypes" in error["message"]


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (REVOKED, "UNAUTHENTICATED"),
        (EXPIRED, "UNAUTHENTICATED"),
        (SUSPENDED, "UNAUTHENTICATED"),
        (UNAVAILABLE, "UNAVAILABLE"),
    ],
)
async def test_a_key_refused_when_the_feed_opens_ends_it(
    live: LiveFeed, refusal: KeyRefused, code: str
) -> None:
    keys = Keys()
    keys.answer = refusal
    assert await only_error(context(live, keys)) == {"message": refusal.message, "code": code}


async def test_a_key_revoked_while_the_feed_is_open_ends_it_on_the_next_check(live: LiveFeed) -> None:
    keys = Keys()
    results = await stream(context(live, keys))
    end = asyncio.ensure_future(results.__anext__())
    assert await live.wait_subscribed(A, 1, timeout_s=10)
    keys.checked.clear()
    await keys.checked.wait()  # checked on its interval while nothing arrives
    keys.answer = REVOKED
    result = await end
    (error,) = result.errors
    assert (error.message, error.extensions["code"]) == (REVOKED.message, "UNAUTHENTICATED")
    assert result.data is None
    with pytest.raises(StopAsyncIteration):
        await results.__anext__()
    assert live.router.count(A) == 0


async def test_a_registry_change_makes_the_feed_check_its_key_before_handing_out_more(live: LiveFeed) -> None:
    live.settings = LiveFeedSettings(key_check_interval_s=0.9)  # the interval alone would be late
    keys = Keys()
    results = await stream(context(live, keys))
    end = asyncio.ensure_future(results.__anext__())
    assert await live.wait_subscribed(A, 1, timeout_s=10)
    keys.answer = REVOKED
    live.router.request_check(A)  # what the registry store's listener does
    live.cluster.put(dispatched(EP_A1, offset=8))  # type: ignore[attr-defined]
    result = await end
    assert result.errors[0].extensions["code"] == "UNAUTHENTICATED"  # not the event


async def test_a_reader_that_falls_behind_gets_what_was_queued_then_lagged(live: LiveFeed) -> None:
    results = await stream(context(live, Keys()))
    first = asyncio.ensure_future(results.__anext__())
    assert await live.wait_subscribed(A, 1, timeout_s=10)
    (feed,) = live.router.feeds(A)
    live.cluster.put(*(dispatched(EP_A1, offset=n) for n in range(10)))  # type: ignore[attr-defined]
    # routed by the feed's own task while nothing here reads: the queue fills, the feed ends
    assert await live.router.wait_for(lambda: live.router.count(A) == 0, timeout_s=10)
    assert feed.ended is not None
    got = [await first] + [r async for r in results]
    events = [r.data["feed"] for r in got[:-1]]
    # a gap-free run from the first record: the queue's 4, and the one taken before it filled
    assert 4 <= len(events) <= 5
    assert [e["eventId"] for e in events] == [
        str(event_id_of("policy.issued", n)) for n in range(len(events))
    ]
    assert got[-1].errors[0].extensions["code"] == "LAGGED"


async def test_feeds_per_partner_are_limited(live: LiveFeed) -> None:
    keys = Keys()
    open_ = [await stream(context(live, keys)) for _ in range(2)]
    waiting = [asyncio.ensure_future(r.__anext__()) for r in open_]
    assert await live.wait_subscribed(A, 2, timeout_s=10)
    error = await only_error(context(live, keys))
    assert error["code"] == "RATE_LIMITED"
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for r in open_:
        await r.aclose()


async def test_without_a_live_feed_the_answer_is_unavailable() -> None:
    assert (await only_error(context(None, Keys())))["code"] == "UNAVAILABLE"


async def test_partner_b_sees_its_own_endpoint_only(live: LiveFeed) -> None:
    keys = Keys()
    keys.answer = Caller(partner_id=B, key_id="k3x9q2ma")
    results = await stream(context(live, keys, partner_id=B), endpointId=EP_B)
    first = asyncio.ensure_future(results.__anext__())
    assert await live.wait_subscribed(B, 1, timeout_s=10)
    live.cluster.put(dispatched(EP_A1, offset=1), dispatched(EP_B, offset=2))  # type: ignore[attr-defined]
    assert (await first).data["feed"]["endpointId"] == EP_B
    await results.aclose()
