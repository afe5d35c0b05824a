"""The live feed through a broker outage: it keeps trying, says so, and keeps its subscribers.

A broker of this module's own (Apache Kafka) is reached by the feed through a fault-injecting
TCP proxy (the set-up of ``test_fault_broker_network.py``); the test's producer uses the
broker's own listener.  A partner's feed is open; one dispatch record arrives; then the proxy
resets every connection (the cluster is away for the feed) while a second record is written;
then the network comes back.  The feed must log the outage and its end, keep the subscriber
open throughout, and hand over the record written during the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import confluent_kafka
import pytest

from processors.contract.examples import example_event
from processors.kafka import KafkaClients
from processors.portal.live import LiveEvent, LiveFeed
from processors.webhooks.delivery import Target, dispatch_records
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, SubscriptionTable
from tests.integration.test_fault_broker_network import ProxiedBroker, proxied_broker  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(300)

PARTNER = "prt_" + "a" * 24
ENDPOINT = "ep_" + "a" * 24
T = TypeVar("T")


@pytest.fixture(scope="module")
def kafka_bootstrap(proxied_broker: ProxiedBroker) -> str:  # noqa: F811 - the imported fixture
    """This module's topics live on its own broker."""
    return proxied_broker.direct


async def eventually(check: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    """Ask ``check`` until it answers (a condition with no event to await), or fail."""
    deadline = time.monotonic() + timeout_s
    while (found := check()) is None:
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.05)
    return found


def produce(bootstrap: str, topic: str, event_number: int) -> str:
    """One dispatch record for the partner's endpoint, as the webhooks app writes it; its webhook id."""
    event = example_event("policy.issued").model_copy(
        update={"event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"outage/{event_number}")}
    )
    (record,) = dispatch_records(event, [Target(ENDPOINT, ordered=False)], topic=topic)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=record.key, value=record.value, headers=record.headers)
    assert producer.flush(30) == 0
    return dict(record.headers)["x-webhook-id"].decode()


async def next_event(feed: Any, timeout_s: float = 60) -> LiveEvent:
    got = await feed.next(timeout_s)
    assert isinstance(got, LiveEvent), got
    return got


async def test_the_feed_rides_out_a_broker_outage_and_keeps_its_subscribers(
    proxied_broker: ProxiedBroker,  # noqa: F811 - the imported fixture
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="processors.portal.live")
    _, prefix = isolated_topics()
    dispatch = f"{prefix}integrations.webhooks.dispatch"
    table = SubscriptionTable()
    box = SecretBox.ephemeral()
    now = datetime.now(UTC)
    secret = StoredSecret(box.encrypt("whsec_" + "A" * 43, associated=ENDPOINT), created_at=now)
    table.put(
        ENDPOINT,
        Subscription.create(
            id=ENDPOINT, partner_id=PARTNER, url="https://p.example/h", events=["*"], secrets=[secret]
        ),
    )
    live = LiveFeed(
        KafkaClients(proxied_broker.proxied),
        dispatch_topic=dispatch,
        deliveries_topic=f"{prefix}integrations.webhook.deliveries",
        endpoints=table,
        broker_timeout_s=2.0,
    )
    await live.start()
    try:
        assert await live.wait_ready(60)
        feed = live.subscribe(PARTNER)

        first = produce(kafka_bootstrap, dispatch, 1)
        assert (await next_event(feed)).webhook_id == first

        proxied_broker.proxy.set("reset")
        await eventually(lambda: True if live.outage else None, "the feed notices the outage")
        second = produce(kafka_bootstrap, dispatch, 2)  # written while the feed cannot read
        assert await feed.next(0.5) is None  # nothing yet, and the feed is still open
        assert feed.ended is None
        assert live.router.count(PARTNER) == 1

        proxied_broker.proxy.set("pass")
        assert (await next_event(feed)).webhook_id == second
        await eventually(lambda: True if not live.outage else None, "the feed notices the end of the outage")
        assert feed.ended is None
    finally:
        proxied_broker.proxy.set("pass")
        await live.stop()

    messages = [r.getMessage() for r in caplog.records if r.name == "processors.portal.live"]
    assert any("does not answer" in m and "1 open feed(s) kept" in m for m in messages), messages
    assert any("answers again" in m for m in messages), messages
