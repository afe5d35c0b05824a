"""The subscription store against a real broker: writes read back, rebuilds, tombstones, no clear secret."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
import pytest

from processors.errors import BrokerError, ConfigError
from processors.webhooks.secrets import SecretBox, StoredSecret, active_secrets
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import Subscription, new_subscription_id
from tests.integration.helpers import watermarks

pytestmark = pytest.mark.timeout(180)

BOX = SecretBox.ephemeral()


def new_subscription(secret: str, events: list[str] | None = None) -> Subscription:
    sub_id = new_subscription_id()
    now = datetime.now(UTC)
    return Subscription.create(
        id=sub_id,
        url="https://partner.example.com/hooks",
        events=events or ["policy.*"],
        secrets=(StoredSecret(ciphertext=BOX.encrypt(secret, associated=sub_id), created_at=now),),
    )


def clear_secret() -> str:
    return "whsec_clear_" + uuid.uuid4().hex + uuid.uuid4().hex


def raw_values(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` (one partition), read with a plain consumer."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        tp = confluent_kafka.TopicPartition(topic, 0)
        _low, high = watermarks(consumer, tp)
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        records: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        last = -1
        while last < high - 1:
            assert time.monotonic() < deadline, "the topic was not read in time"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            records.append((msg.key(), msg.value()))
            last = msg.offset() or 0
        return records
    finally:
        consumer.close()


@pytest.fixture
def topic(isolated_topics: Callable[..., tuple[Path, str]]) -> str:
    _, prefix = isolated_topics()
    return f"{prefix}integrations.webhook.subscriptions"


@pytest.fixture
async def store(kafka_bootstrap: str, topic: str) -> AsyncIterator[SubscriptionStore]:
    async with SubscriptionStore(kafka_bootstrap, topic) as running:
        yield running


async def test_put_update_delete_are_read_back_at_once(store: SubscriptionStore) -> None:
    changes: list[tuple[str, int | None]] = []
    store.add_listener(lambda sub_id, sub: changes.append((sub_id, sub.version if sub else None)))
    sub = new_subscription(clear_secret())

    await store.put(sub)
    assert store.table.get(sub.id) == sub
    assert [s.id for s in store.table.matching("policy.issued")] == [sub.id]

    updated = sub.updated(events=["claim.paid"], description="claims")
    await store.put(updated)
    assert store.table.get(sub.id) == updated
    assert store.table.matching("policy.issued") == []

    await store.delete(sub.id)
    assert store.table.get(sub.id) is None
    assert len(store.table) == 0
    assert changes == [(sub.id, 1), (sub.id, 2), (sub.id, None)]


async def test_a_store_started_later_rebuilds_the_table(
    kafka_bootstrap: str, topic: str, store: SubscriptionStore
) -> None:
    kept = [new_subscription(clear_secret(), ["policy.issued"]) for _ in range(5)]
    deleted = new_subscription(clear_secret(), ["claim.*"])
    for sub in [*kept, deleted]:
        await store.put(sub)
    rotated = kept[0].rotated(
        BOX.encrypt("whsec_rotated_" + uuid.uuid4().hex, associated=kept[0].id), now=datetime.now(UTC)
    )
    await store.put(rotated)
    await store.put(kept[1].disabled("endpoint answered 410 Gone", datetime.now(UTC)))
    await store.delete(deleted.id)

    async with SubscriptionStore(kafka_bootstrap, topic) as later:
        assert {s.id: s for s in later.table.all()} == {s.id: s for s in store.table.all()}
        assert later.table.get(deleted.id) is None
        assert later.table.get(kept[0].id) == rotated
        assert len(later.table) == 5
        assert {s.id for s in later.table.matching("policy.issued")} == {s.id for s in kept[2:]} | {
            kept[0].id
        }
        # The rebuilt secrets still decrypt (the ciphertexts travel as they are).
        clear = active_secrets(rotated.secrets, BOX, associated=rotated.id, now=datetime.now(UTC))
        assert len(clear) == 2


async def test_wait_caught_up_sees_another_instances_writes(
    kafka_bootstrap: str, topic: str, store: SubscriptionStore
) -> None:
    async with SubscriptionStore(kafka_bootstrap, topic) as other:
        applied = threading.Event()
        sub = new_subscription(clear_secret())
        other.add_listener(lambda sub_id, _sub: applied.set() if sub_id == sub.id else None)

        await store.put(sub)
        await other.wait_caught_up(timeout_s=30)

        assert applied.is_set()
        assert other.table.get(sub.id) == sub

        await store.delete(sub.id)
        await other.wait_caught_up(timeout_s=30)

        assert other.table.get(sub.id) is None


async def test_the_topic_never_holds_a_clear_secret(
    kafka_bootstrap: str, topic: str, store: SubscriptionStore
) -> None:
    secrets = [clear_secret() for _ in range(3)]
    sub = new_subscription(secrets[0])
    await store.put(sub)
    for secret in secrets[1:]:
        sub = sub.rotated(BOX.encrypt(secret, associated=sub.id), now=datetime.now(UTC))
        await store.put(sub)

    records = await asyncio.get_running_loop().run_in_executor(None, raw_values, kafka_bootstrap, topic)

    assert len(records) == 3
    assert {key for key, _ in records} == {sub.id.encode()}
    for _, value in records:
        assert value is not None
        for secret in secrets:
            assert secret.encode() not in value
    assert [
        s.get_secret_value()
        for s in active_secrets(sub.secrets, BOX, associated=sub.id, now=datetime.now(UTC))
    ] == [
        secrets[2],
        secrets[1],
        secrets[0],
    ]


async def test_a_bad_record_on_the_topic_is_skipped(
    kafka_bootstrap: str, topic: str, store: SubscriptionStore
) -> None:
    good = new_subscription(clear_secret())
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"ep_000000000000000000000000", value=b"{not json")
    producer.produce(topic, key=b"garbage key", value=good.to_record())
    assert producer.flush(30) == 0

    await store.put(good)

    assert store.table.skipped == 2
    assert [s.id for s in store.table.all()] == [good.id]


async def test_a_failing_listener_does_not_stop_the_store(store: SubscriptionStore) -> None:
    seen: list[str] = []

    def broken(_sub_id: str, _sub: Subscription | None) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(lambda sub_id, _sub: seen.append(sub_id))
    first, second = new_subscription(clear_secret()), new_subscription(clear_secret())

    await store.put(first)
    await store.put(second)

    assert seen == [first.id, second.id]
    assert len(store.table) == 2


async def test_a_stopped_store_refuses_writes_and_waits(kafka_bootstrap: str, topic: str) -> None:
    store = SubscriptionStore(kafka_bootstrap, topic)
    await store.start()
    await store.stop()

    with pytest.raises(BrokerError, match="not running"):
        await store.put(new_subscription(clear_secret()))
    with pytest.raises(BrokerError, match="not running"):
        await store.wait_caught_up(1)


async def test_a_missing_topic_fails_start(kafka_bootstrap: str) -> None:
    store = SubscriptionStore(kafka_bootstrap, f"missing.{uuid.uuid4().hex}", start_timeout_s=3)

    with pytest.raises(ConfigError, match="is not available"):
        await store.start()
