"""The live feed without a broker: routing by owner, filters, bounded queues, the poll loop.

The records are made by the webhooks app's own pure functions (``dispatch_records``,
``log_record``), so the feed reads exactly the formats the app writes.  The Kafka consumer is a
fake behind the feed's ``consumer_factory`` seam; the subscription table is a real
:class:`~processors.webhooks.subscriptions.SubscriptionTable` or a small directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import confluent_kafka
import pytest

from processors.contract.examples import example_event
from processors.kafka import KafkaClients
from processors.partners.model import ApiKey, KeyUsage, Partner
from processors.portal.config import LiveFeedSettings
from processors.portal.live import (
    LAGGED,
    UNAVAILABLE,
    FeedEnd,
    FeedLimitReached,
    FeedRouter,
    FeedUnavailable,
    InvalidFeedFilter,
    LiveEvent,
    LiveFeed,
    LiveItem,
    LiveOutcome,
    check_event_filters,
    read_record,
)
from processors.runtime.message import StaticMessage
from processors.webhooks.attempts import DeliveryAttempt
from processors.webhooks.delivery import DispatchJob, Target, dispatch_records, log_record

DISPATCH = "integrations.webhooks.dispatch"
DELIVERIES = "integrations.webhook.deliveries"
A, B = "prt_aaaaaaaaaaaaaaaaaaaaaaaa", "prt_bbbbbbbbbbbbbbbbbbbbbbbb"
EP_A1, EP_A2, EP_B = "ep_" + "a1" * 12, "ep_" + "a2" * 12, "ep_" + "b0" * 12
EP_OPERATOR = "ep_" + "0f" * 12


@dataclass(frozen=True)
class Owned:
    partner_id: str | None


class Directory:
    """Endpoint id → owner (the subscription table's ``get``)."""

    def __init__(self, owners: dict[str, str | None]) -> None:
        self.owners = owners
        self.asked: list[str] = []

    def get(self, sub_id: str) -> Owned | None:
        self.asked.append(sub_id)
        return Owned(self.owners[sub_id]) if sub_id in self.owners else None


OWNERS = Directory({EP_A1: A, EP_A2: A, EP_B: B, EP_OPERATOR: None})


@dataclass(frozen=True, slots=True)
class Message(StaticMessage):
    error_: Any = None

    def error(self) -> Any:
        return self.error_


def event_id_of(event_type: str, offset: int) -> uuid.UUID:
    """The event id of the example event of ``event_type`` dispatched at ``offset``."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{event_type}/{offset}")


def dispatched(endpoint: str, event_type: str = "policy.issued", *, offset: int = 0) -> Message:
    event = example_event(event_type).model_copy(update={"event_id": event_id_of(event_type, offset)})
    (record,) = dispatch_records(event, [Target(endpoint, ordered=False)], topic=DISPATCH)
    headers = tuple((name, value) for name, value in record.headers)
    return Message(DISPATCH, 0, offset, record.key, record.value, headers, timestamp_ms=1_765_000_000_000)


def logged(
    endpoint: str, event_type: str = "policy.issued", *, offset: int = 0, status: str = "delivered"
) -> Message:
    job = DispatchJob(endpoint, f"msg_{offset}", f"evt-{offset}", event_type, "POL-1", False, b"{}")
    record = log_record(
        DELIVERIES,
        job,
        status=status,  # type: ignore[arg-type]
        attempt=1,
        url_host="partner.example",
        job_coordinates=(DISPATCH, 0, offset),
        http_status=200,
        latency_ms=12.5,
    )
    return Message(DELIVERIES, 1, offset, record.key, record.value, tuple(record.headers))


def event_item(endpoint: str, event_type: str = "policy.issued", n: int = 0) -> LiveEvent:
    return LiveEvent(endpoint, f"msg_{n}", event_type, f"evt-{n}", {"n": n}, datetime(2026, 1, 1, tzinfo=UTC))


def outcome_item(endpoint: str, event_type: str = "policy.issued", n: int = 0) -> LiveOutcome:
    attempt = DeliveryAttempt.parse(logged(endpoint, event_type, offset=n).value())
    assert attempt is not None
    return LiveOutcome(attempt, 1, n)


async def drain(feed: Any) -> list[LiveItem | FeedEnd]:
    """Everything a feed has for now (items, then its end if it ended)."""
    got: list[LiveItem | FeedEnd] = []
    while True:
        item = await feed.next(0)
        if item is None:
            return got
        got.append(item)
        if isinstance(item, FeedEnd):
            return got


# ------------------------------------------------------------------------------ filters


@pytest.mark.parametrize("value", ["*", "policy.*", "policy.issued", "customer.kyc_requested", "a.b.*"])
def test_a_filter_is_a_type_a_prefix_or_everything(value: str) -> None:
    assert check_event_filters([value, value]) == (value,)


@pytest.mark.parametrize(
    "value", ["", "policy", "policy.", ".*", "*.issued", "Policy.Issued", "policy.**", "x" * 200]
)
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(InvalidFeedFilter):
        check_event_filters(["policy.issued", value])


def test_at_most_a_hundred_filters() -> None:
    with pytest.raises(InvalidFeedFilter, match="at most 100"):
        check_event_filters([f"policy.t{i}" for i in range(101)])


# ------------------------------------------------------------------------------ routing


async def test_an_item_reaches_only_the_feeds_of_the_partner_that_owns_its_endpoint() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    feed_a = router.subscribe(A)
    feed_b = router.subscribe(B)
    assert router.watched == {A, B}

    assert router.route(A, event_item(EP_A1, n=1)) == 1
    assert router.route(B, event_item(EP_B, n=2)) == 1
    assert router.route(B, outcome_item(EP_B, n=3)) == 1

    got_a = await drain(feed_a)
    got_b = await drain(feed_b)
    assert [i.endpoint_id for i in got_a if not isinstance(i, FeedEnd)] == [EP_A1]
    assert [i.endpoint_id for i in got_b if not isinstance(i, FeedEnd)] == [EP_B, EP_B]


async def test_filters_by_endpoint_and_event_types() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    everything = router.subscribe(A)
    one_endpoint = router.subscribe(A, endpoint_id=EP_A2)
    claims = router.subscribe(A, event_types=["claim.*", "policy.cancelled"])
    items: list[LiveItem] = [
        event_item(EP_A1, "policy.issued", 1),
        event_item(EP_A2, "claim.paid", 2),
        outcome_item(EP_A1, "policy.cancelled", 3),
        outcome_item(EP_A2, "policy.issued", 4),
    ]
    for item in items:
        router.route(A, item)

    def ids(got: list[LiveItem | FeedEnd]) -> list[str]:
        return [i.webhook_id if isinstance(i, LiveEvent) else i.id for i in got if not isinstance(i, FeedEnd)]

    assert ids(await drain(everything)) == ["msg_1", "msg_2", "1:3", "1:4"]
    assert ids(await drain(one_endpoint)) == ["msg_2", "1:4"]
    assert ids(await drain(claims)) == ["msg_2", "1:3"]


async def test_a_feed_that_falls_behind_gets_what_it_had_then_lagged_and_nothing_more() -> None:
    router = FeedRouter(queue_size=3, max_per_partner=5)
    slow = router.subscribe(A)
    quick = router.subscribe(A)
    for n in range(3):
        router.route(A, event_item(EP_A1, n=n))
    assert len(await drain(quick)) == 3  # the quick one keeps up

    router.route(A, event_item(EP_A1, n=3))  # the slow one's queue is full: it ends
    for n in range(4, 6):
        router.route(A, event_item(EP_A1, n=n))
    assert router.count(A) == 1  # only the quick one is left

    got = await drain(slow)
    assert [i.webhook_id for i in got[:-1] if isinstance(i, LiveEvent)] == ["msg_0", "msg_1", "msg_2"]
    end = got[-1]
    assert isinstance(end, FeedEnd)
    assert end.code == LAGGED
    assert "3 items behind" in end.message
    assert await slow.next(0) == end  # the end stays
    assert [i.webhook_id for i in await drain(quick) if isinstance(i, LiveEvent)] == [
        f"msg_{n}" for n in range(3, 6)
    ]


async def test_handing_over_never_waits_for_a_reader() -> None:
    """``route`` is plain code: thousands of items to a feed nobody reads return at once."""
    router = FeedRouter(queue_size=100, max_per_partner=5)
    feed = router.subscribe(A)
    for n in range(5_000):
        router.route(A, event_item(EP_A1, n=n))
    assert feed.waiting == 100
    assert feed.ended is not None
    assert feed.ended.code == LAGGED


async def test_next_waits_for_an_item_and_answers_none_after_its_timeout_or_for_a_key_check() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    feed = router.subscribe(A)
    assert await feed.next(0.01) is None

    waiting = asyncio.create_task(feed.next(30))
    await asyncio.sleep(0)  # let it start waiting
    router.route(A, event_item(EP_A1, n=7))
    got = await waiting
    assert isinstance(got, LiveEvent)
    assert got.webhook_id == "msg_7"

    router.route(A, event_item(EP_A1, n=8))
    router.request_check(A)
    assert await feed.next(30) is None  # a key check comes before the item
    assert feed.check_requested()
    assert not feed.check_requested()
    got = await feed.next(30)
    assert isinstance(got, LiveEvent)
    assert got.webhook_id == "msg_8"


async def test_a_key_check_is_asked_of_that_partner_only_or_of_everyone() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    feed_a, feed_b = router.subscribe(A), router.subscribe(B)
    router.request_check(A)
    assert (feed_a.check_requested(), feed_b.check_requested()) == (True, False)
    router.request_check(None)
    assert (feed_a.check_requested(), feed_b.check_requested()) == (True, True)


async def test_open_feeds_per_partner_are_bounded_and_a_closed_one_frees_its_place() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=2)
    first = router.subscribe(A)
    router.subscribe(A)
    with pytest.raises(FeedLimitReached):
        router.subscribe(A)
    router.subscribe(B)  # another partner has its own places
    first.close()
    router.subscribe(A)
    assert router.count() == 3


async def test_wait_count_is_answered_when_a_feed_opens() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    waiting = asyncio.create_task(router.wait_count(A, 2, timeout_s=30))
    router.subscribe(A)
    await asyncio.sleep(0)
    assert not waiting.done()
    router.subscribe(A)
    assert await waiting
    assert not await router.wait_count(B, 1, timeout_s=0.01)


async def test_a_closed_feed_is_forgotten_and_stops_being_watched() -> None:
    router = FeedRouter(queue_size=10, max_per_partner=5)
    feed = router.subscribe(A)
    router.route(A, event_item(EP_A1))
    feed.close()
    assert router.watched == frozenset()
    assert router.route(A, event_item(EP_A1)) == 0
    assert feed.waiting == 0


# ------------------------------------------------------------------------------ records


def test_a_dispatch_record_becomes_the_body_its_endpoint_receives() -> None:
    msg = dispatched(EP_A1, "customer.created")
    read = read_record(msg, dispatch_topic=DISPATCH, endpoints=OWNERS, watched=frozenset({A}))
    assert read.owner == A
    item = read.item
    assert isinstance(item, LiveEvent)
    assert item.body == json.loads(msg.value() or b"", parse_float=Decimal)  # as sent
    assert item.body["event_type"] == "customer.created"
    assert "email" not in item.body["data"]  # the projection for a partner without grants
    assert (item.endpoint_id, item.event_type) == (EP_A1, "customer.created")
    assert item.webhook_id == item.body["webhook_id"]
    assert item.at == datetime.fromtimestamp(1_765_000_000, UTC)


def test_a_delivery_log_line_becomes_an_outcome_with_its_log_id() -> None:
    read = read_record(
        logged(EP_B, offset=41), dispatch_topic=DISPATCH, endpoints=OWNERS, watched=frozenset({B})
    )
    assert read.owner == B
    assert isinstance(read.item, LiveOutcome)
    assert read.item.id == "1:41"
    assert (read.item.attempt.status, read.item.attempt.http_status) == ("delivered", 200)


@pytest.mark.parametrize("make", [dispatched, logged])
def test_records_of_unwatched_unowned_or_unknown_endpoints_give_nothing(make: Any) -> None:
    for endpoint, watched in ((EP_B, {A}), (EP_OPERATOR, {A, B}), ("ep_" + "99" * 12, {A, B})):
        read = read_record(
            make(endpoint), dispatch_topic=DISPATCH, endpoints=OWNERS, watched=frozenset(watched)
        )
        assert (read.owner, read.item, read.skipped) == (None, None, False), endpoint


def test_undecodable_records_of_a_watched_partner_are_skipped() -> None:
    good = dispatched(EP_A1)
    broken = [
        Message(DISPATCH, 0, 1, good.key(), b"not json", tuple(good.headers())),
        Message(DISPATCH, 0, 2, good.key(), good.value(), ()),  # no headers: no endpoint
        Message(DELIVERIES, 0, 3, EP_A1.encode(), b'{"status": "delivered"}'),
        Message(DELIVERIES, 0, 4, None, logged(EP_A1).value()),
    ]
    for msg in broken:
        read = read_record(msg, dispatch_topic=DISPATCH, endpoints=OWNERS, watched=frozenset({A}))
        assert read.skipped, msg.offset()
        assert read.item is None


def test_a_record_whose_body_names_another_endpoint_than_its_key_is_skipped() -> None:
    """The log line's key says EP_A1 (A's) but the line is about B's endpoint: not A's to see."""
    line = logged(EP_B)
    forged = Message(DELIVERIES, 0, 5, EP_A1.encode(), line.value())
    read = read_record(forged, dispatch_topic=DISPATCH, endpoints=OWNERS, watched=frozenset({A, B}))
    assert read.skipped
    assert read.item is None


# ---------------------------------------------------------------------- the feed, with a fake consumer


class Error:
    def __init__(self, code: int, *, fatal: bool = False) -> None:
        self._code, self._fatal = code, fatal

    def code(self) -> int:
        return self._code

    def fatal(self) -> bool:
        return self._fatal

    def str(self) -> str:
        return f"error {self._code}"


@dataclass
class Cluster:
    """What the fake consumer reads: partitions, their end offsets, and records to hand out."""

    partitions: dict[str, list[int]] = field(default_factory=lambda: {DISPATCH: [0, 1], DELIVERIES: [0]})
    high: int = 17
    pending: list[Message] = field(default_factory=list)
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    metadata_calls: int = 0

    def put(self, *msgs: Message) -> None:
        with self.lock:
            self.pending.extend(msgs)


class FakeConsumer:
    def __init__(self, cluster: Cluster, conf: dict[str, Any]) -> None:
        self.cluster = cluster
        self.conf = conf
        self.assigned: list[tuple[str, int, int]] = []
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.cluster.metadata_calls += 1
        if self.cluster.down:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT)
            )
        parts = self.cluster.partitions.get(topic)
        topics = {topic: SimpleNamespace(error=None, partitions=dict.fromkeys(parts))} if parts else {}
        return SimpleNamespace(topics=topics)

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        assert cached is False
        return 0, self.cluster.high

    def incremental_assign(self, tps: list[Any]) -> None:
        self.assigned.extend((tp.topic, tp.partition, tp.offset) for tp in tps)

    def consume(self, num: int, timeout: float) -> list[Message]:
        with self.cluster.lock:
            batch, self.cluster.pending = self.cluster.pending[:num], self.cluster.pending[num:]
        if not batch and timeout:
            threading.Event().wait(min(timeout, 0.01))
        return batch

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
async def feed(cluster: Cluster) -> Iterator[LiveFeed]:  # type: ignore[misc]
    consumers: list[FakeConsumer] = []

    def factory(conf: dict[str, Any]) -> FakeConsumer:
        consumers.append(FakeConsumer(cluster, conf))
        return consumers[-1]

    live = LiveFeed(
        KafkaClients("unused:9092"),
        dispatch_topic=DISPATCH,
        deliveries_topic=DELIVERIES,
        endpoints=OWNERS,
        settings=LiveFeedSettings(queue_size=5, max_subscriptions_per_partner=3),
        consumer_factory=factory,
        poll_timeout_s=0.01,
    )
    live.consumers = consumers  # type: ignore[attr-defined]
    yield live
    await live.stop()
    assert all(c.closed for c in consumers)


async def test_the_feed_reads_without_a_group_from_the_end_of_every_partition(
    feed: LiveFeed, cluster: Cluster
) -> None:
    await feed.start()
    assert await feed.wait_ready(10)
    (consumer,) = feed.consumers  # type: ignore[attr-defined]
    assert sorted(consumer.assigned) == [(DELIVERIES, 0, 17), (DISPATCH, 0, 17), (DISPATCH, 1, 17)]
    assert consumer.conf["enable.auto.commit"] is False  # the reader role of the kafka layer
    assert consumer.conf["isolation.level"] == "read_committed"


async def test_the_feed_routes_what_it_reads_to_the_owners_feeds(feed: LiveFeed, cluster: Cluster) -> None:
    await feed.start()
    sub_a = feed.subscribe(A)
    sub_b = feed.subscribe(B, event_types=["claim.*"])
    cluster.put(
        dispatched(EP_A1, offset=1),
        dispatched(EP_B, offset=2),
        logged(EP_B, "claim.paid", offset=3),
        logged(EP_A2, offset=4),
        dispatched(EP_OPERATOR, offset=5),
    )
    first = await sub_a.next(10)
    second = await sub_a.next(10)
    assert isinstance(first, LiveEvent)
    assert first.endpoint_id == EP_A1
    assert isinstance(second, LiveOutcome)
    assert second.endpoint_id == EP_A2
    only_b = await sub_b.next(10)
    assert isinstance(only_b, LiveOutcome)
    assert only_b.endpoint_id == EP_B
    assert only_b.event_type == "claim.paid"
    assert await sub_a.next(0) is None
    assert await sub_b.next(0) is None


async def test_an_outage_is_logged_and_keeps_the_feeds(
    feed: LiveFeed, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processors.portal.live")
    await feed.start()
    assert await feed.wait_ready(10)
    sub = feed.subscribe(A)
    cluster.put(
        Message(DISPATCH, 0, 0, None, None, error_=Error(confluent_kafka.KafkaError._ALL_BROKERS_DOWN))
    )
    while not feed.outage:
        await asyncio.sleep(0.01)
    assert "does not answer" in caplog.text
    assert sub.ended is None
    assert feed.router.count(A) == 1
    cluster.put(dispatched(EP_A1, offset=9))
    got = await sub.next(10)  # the records written meanwhile arrive
    assert isinstance(got, LiveEvent)
    assert not feed.outage
    assert "answers again" in caplog.text


async def test_metadata_that_cannot_be_read_is_asked_again(
    feed: LiveFeed, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.down = True
    await feed.start()
    assert not await feed.wait_ready(0.3)
    assert "does not answer" in caplog.text
    cluster.down = False
    assert await feed.wait_ready(10)


async def test_a_fatal_error_ends_every_feed_with_unavailable(feed: LiveFeed, cluster: Cluster) -> None:
    await feed.start()
    sub = feed.subscribe(A)
    cluster.put(
        Message(DISPATCH, 0, 0, None, None, error_=Error(confluent_kafka.KafkaError._FATAL, fatal=True))
    )
    end = await sub.next(10)
    assert isinstance(end, FeedEnd)
    assert end.code == UNAVAILABLE
    assert feed.error is not None
    with pytest.raises(FeedUnavailable):
        feed.subscribe(A)


async def test_stop_ends_every_feed_and_subscribing_before_start_is_refused(feed: LiveFeed) -> None:
    with pytest.raises(FeedUnavailable):
        feed.subscribe(A)
    await feed.start()
    sub = feed.subscribe(A)
    await feed.stop()
    end = await sub.next(1)
    assert isinstance(end, FeedEnd)
    assert end.code == UNAVAILABLE


async def test_a_registry_change_asks_the_partners_feeds_to_check_their_key(cluster: Cluster) -> None:
    class Registry:
        def __init__(self) -> None:
            self.listeners: list[Any] = []

        def add_listener(self, callback: Any) -> None:
            self.listeners.append(callback)

    registry = Registry()
    live = LiveFeed(
        KafkaClients("unused:9092"),
        dispatch_topic=DISPATCH,
        deliveries_topic=DELIVERIES,
        endpoints=OWNERS,
        partners=registry,
        consumer_factory=lambda conf: FakeConsumer(cluster, conf),
        poll_timeout_s=0.01,
    )
    await live.start()
    try:
        sub_a, sub_b = live.subscribe(A), live.subscribe(B)
        now = datetime.now(UTC)
        key = ApiKey(id="k3x9q2ma", partner_id=A, digest="sha256:" + "0" * 64, created_at=now)

        def change(entry: Any) -> None:  # as the store does: on its own thread
            thread = threading.Thread(
                target=lambda: [cb(getattr(entry, "record_key", "x"), entry) for cb in registry.listeners]
            )
            thread.start()
            thread.join()

        change(key)
        assert await sub_a.next(10) is None
        assert sub_a.check_requested()
        assert not sub_b.check_requested()
        change(KeyUsage(id="k3x9q2ma", last_used_at=now))
        change(Partner(id=B, name="B", kind="broker"))
        assert await sub_b.next(10) is None
        assert sub_b.check_requested()
        assert not sub_a.check_requested()  # a key's last use changes nothing
    finally:
        await live.stop()


async def test_a_poison_record_is_skipped_and_the_feed_reads_on(feed: LiveFeed, cluster: Cluster) -> None:
    await feed.start()
    sub = feed.subscribe(A)
    good = dispatched(EP_A1, offset=2)
    nested = b"[" * 100_000 + b"]" * 100_000  # too deep for the JSON parser
    cluster.put(Message(DISPATCH, 0, 1, good.key(), nested, tuple(good.headers())), good)
    got = await sub.next(10)
    assert isinstance(got, LiveEvent)
    assert got.webhook_id == json.loads(good.value() or b"")["webhook_id"]
    assert feed.skipped == 1


async def test_an_unexpected_failure_of_the_poll_thread_ends_every_feed(
    feed: LiveFeed, cluster: Cluster
) -> None:
    await feed.start()
    sub = feed.subscribe(A)

    def broken(num: int, timeout: float) -> list[Message]:
        raise RuntimeError("a bug")

    (consumer,) = feed.consumers  # type: ignore[attr-defined]
    consumer.consume = broken
    end = await sub.next(10)
    assert isinstance(end, FeedEnd)
    assert end.code == UNAVAILABLE
    assert isinstance(feed.error, RuntimeError)
    assert not feed.running
