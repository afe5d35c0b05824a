"""The inbound de-duplicator: TTL with an injected clock, size bound, one publication per id, and
the markers of the topic of seen ids shared by the API instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from decimal import Decimal
from pathlib import Path
from typing import cast

import aiohttp
import confluent_kafka
import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.api.dedupe import Deduplicator, Outcome, SeenIdsTopic, marker_key, parse_marker_key
from processors.api.health import BrokerProbe
from processors.api.inbound import sign
from processors.api.server import ApiServer
from processors.contract import Codec, LocalSchemaIds
from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.runtime.message import OutRecord, StaticMessage
from processors.runtime.producer import AsyncProducer
from processors.settings import Settings, load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_an_id_is_remembered_for_the_ttl_and_forgotten_after() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)

    dedupe.remember("evt_1")
    clock.now += 59.9
    assert "evt_1" in dedupe
    clock.now += 0.1
    assert "evt_1" not in dedupe
    assert len(dedupe) == 0


def test_remembering_again_restarts_the_ttl() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    dedupe.remember("a")
    clock.now += 50
    dedupe.remember("b")
    dedupe.remember("a")
    clock.now += 20

    assert "a" in dedupe
    assert "b" in dedupe
    clock.now += 45
    assert "a" not in dedupe


def test_the_map_is_bounded_oldest_first() -> None:
    dedupe = Deduplicator(ttl_s=3600, max_entries=3, clock=Clock())
    for key in ("a", "b", "c", "d"):
        dedupe.remember(key)

    assert "a" not in dedupe
    assert all(key in dedupe for key in ("b", "c", "d"))
    assert len(dedupe) == 3
    assert dedupe.evicted_early == 1


@pytest.mark.parametrize(("ttl_s", "max_entries"), [(0, 10), (-1, 10), (10, 0)])
def test_nonsense_settings_are_refused(ttl_s: float, max_entries: int) -> None:
    with pytest.raises(ConfigError):
        Deduplicator(ttl_s=ttl_s, max_entries=max_entries)


class Publisher:
    """Counts publications; each waits for ``release`` when ``hold`` is set."""

    def __init__(self, *, hold: bool = False, fail: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail = fail
        self.started = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail


async def test_a_replayed_id_is_published_once() -> None:
    dedupe = Deduplicator()
    publish = Publisher()

    outcomes = [await dedupe.once(("gw", "evt_1"), publish, wait_s=5) for _ in range(3)]

    assert outcomes == [Outcome.PUBLISHED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert publish.calls == 1
    assert ("gw", "evt_1") in dedupe


async def test_after_the_ttl_the_id_is_published_again() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    publish = Publisher()
    await dedupe.once("evt_1", publish, wait_s=5)
    clock.now += 61

    assert await dedupe.once("evt_1", publish, wait_s=5) is Outcome.PUBLISHED
    assert publish.calls == 2


async def test_concurrent_deliveries_of_one_id_wait_for_the_first_publication() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)
    first = asyncio.create_task(dedupe.once("evt_1", publish, wait_s=5))
    await publish.started.wait()
    second = asyncio.create_task(dedupe.once("evt_1", publish, wait_s=5))
    await asyncio.sleep(0)  # let the second delivery find the first in flight
    assert dedupe.in_flight == 1

    publish.release.set()

    assert await first is Outcome.PUBLISHED
    assert await second is Outcome.DUPLICATE
    assert publish.calls == 1


async def test_a_failed_publication_is_not_remembered_and_the_retry_publishes() -> None:
    dedupe = Deduplicator()
    failing = Publisher(fail=BrokerError("delivery failed"))

    with pytest.raises(BrokerError):
        await dedupe.once("evt_1", failing, wait_s=5)
    assert "evt_1" not in dedupe
    assert dedupe.in_flight == 0

    working = Publisher()
    assert await dedupe.once("evt_1", working, wait_s=5) is Outcome.PUBLISHED
    assert working.calls == 1


async def test_a_waiting_delivery_publishes_itself_when_the_first_fails() -> None:
    dedupe = Deduplicator()
    failing = Publisher(hold=True, fail=BrokerError("delivery failed"))
    first = asyncio.create_task(dedupe.once("evt_1", failing, wait_s=5))
    await failing.started.wait()
    working = Publisher()
    second = asyncio.create_task(dedupe.once("evt_1", working, wait_s=5))
    await asyncio.sleep(0)

    failing.release.set()

    with pytest.raises(BrokerError):
        await first
    assert await second is Outcome.PUBLISHED
    assert working.calls == 1


async def test_a_slow_acknowledgement_times_out_but_the_publication_goes_on() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)

    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)
    assert dedupe.in_flight == 1
    # A retry while the first publication still waits for the broker does not start another one.
    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)
    assert publish.calls == 1

    publish.release.set()
    retry = await dedupe.once("evt_1", publish, wait_s=5)

    assert retry is Outcome.DUPLICATE
    assert publish.calls == 1
    assert "evt_1" in dedupe


async def test_aclose_cancels_publications_in_flight_without_remembering_them() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)
    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)

    await dedupe.aclose()

    assert dedupe.in_flight == 0
    assert "evt_1" not in dedupe


# -- ids learned from other instances ----------------------------------------------------------------


def test_a_learned_id_expires_a_ttl_after_its_marker_was_written() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)

    assert dedupe.learn(("gw", "evt_1"), age_s=50)
    clock.now += 9.9
    assert ("gw", "evt_1") in dedupe
    clock.now += 0.1
    assert ("gw", "evt_1") not in dedupe


def test_an_id_older_than_the_ttl_is_not_learned_and_a_known_one_keeps_its_expiry() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    dedupe.remember("mine")

    assert not dedupe.learn("old", age_s=60)
    assert not dedupe.learn("mine", age_s=0)  # a marker read back does not restart the TTL
    clock.now += 30
    assert not dedupe.learn("mine", age_s=0)
    clock.now += 30

    assert "old" not in dedupe
    assert "mine" not in dedupe
    assert len(dedupe) == 0


def test_a_learned_older_id_expires_before_a_newer_one_remembered_earlier() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    dedupe.remember("new")
    dedupe.learn("older", age_s=40)

    clock.now += 20
    assert "older" not in dedupe
    assert "new" in dedupe
    assert len(dedupe) == 1


def test_learned_ids_are_bounded_too_the_nearest_to_expiry_dropped_first() -> None:
    dedupe = Deduplicator(ttl_s=3600, max_entries=2, clock=Clock())
    dedupe.remember("mine")
    dedupe.learn("oldest", age_s=3000)
    dedupe.learn("recent", age_s=10)

    assert "oldest" not in dedupe
    assert "mine" in dedupe
    assert "recent" in dedupe
    assert dedupe.evicted_early == 1


async def test_the_publication_hook_hears_of_acknowledged_publications_only() -> None:
    dedupe = Deduplicator()
    heard: list[object] = []
    dedupe.on_published = heard.append
    slow = Publisher(hold=True)

    await dedupe.once("ok", Publisher(), wait_s=5)
    with pytest.raises(BrokerError):
        await dedupe.once("failed", Publisher(fail=BrokerError("delivery failed")), wait_s=5)
    await dedupe.once("ok", Publisher(), wait_s=5)  # a duplicate: nothing new published
    with pytest.raises(TimeoutError):
        await dedupe.once("slow", slow, wait_s=0.01)
    assert heard == ["ok"]

    slow.release.set()
    assert await dedupe.once("slow", slow, wait_s=5) is Outcome.DUPLICATE
    assert heard == ["ok", "slow"]


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        (("payment-gateway", "evt_1"), b"payment-gateway|evt_1"),
        (("kyc-provider", "a|b"), b"kyc-provider|a|b"),
        (("payment-gateway", "sha256:0f3a"), b"payment-gateway|sha256:0f3a"),
    ],
)
def test_marker_keys_round_trip(key: tuple[str, str], raw: bytes) -> None:
    assert marker_key(key) == raw
    assert parse_marker_key(raw) == key


@pytest.mark.parametrize("raw", [None, b"", b"no-separator", b"|evt_1", b"gw|", b"\xff\xfe|x"])
def test_a_record_that_is_not_a_marker_is_no_id(raw: bytes | None) -> None:
    assert parse_marker_key(raw) is None


@pytest.mark.parametrize("key", ["evt_1", ("a|b", "evt_1"), ("", "evt_1"), ("gw", "evt", "x")])
def test_an_id_that_is_not_provider_and_event_id_has_no_marker(key: Hashable) -> None:
    assert marker_key(key) is None


class Producer:
    """Records what is sent; ``fail`` makes every send fail."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[OutRecord] = []
        self.fail = fail

    async def send(self, record: OutRecord) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(record)


def seen_ids(dedupe: Deduplicator, producer: Producer, wall_clock: Callable[[], float]) -> SeenIdsTopic:
    return SeenIdsTopic(
        KafkaClients("unused:9092"),
        "t.integrations.inbound.dedupe",
        dedupe,
        cast(AsyncProducer, producer),
        reader=lambda _partitions: [],
        wall_clock=wall_clock,
    )


def test_markers_read_teach_the_ids_with_the_age_of_their_timestamp() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=3600, clock=clock)
    dedupe.remember(("payment-gateway", "evt_mine"))
    topic = seen_ids(dedupe, Producer(), wall_clock=lambda: 1_700_000_000.0)
    written_ms = 1_700_000_000_000 - 3_000_000  # 3000 s before now

    learned = topic.apply(
        [
            (b"payment-gateway|evt_other", (confluent_kafka.TIMESTAMP_CREATE_TIME, written_ms)),
            (b"payment-gateway|evt_mine", (confluent_kafka.TIMESTAMP_CREATE_TIME, written_ms)),
            (b"kyc-provider|evt_expired", (confluent_kafka.TIMESTAMP_CREATE_TIME, written_ms - 700_000)),
            (b"not a marker", (confluent_kafka.TIMESTAMP_CREATE_TIME, written_ms)),
            (b"kyc-provider|evt_no_time", (confluent_kafka.TIMESTAMP_NOT_AVAILABLE, 0)),
        ]
    )

    assert learned == 2
    assert (topic.learned, topic.skipped) == (2, 1)
    assert ("payment-gateway", "evt_other") in dedupe
    assert ("kyc-provider", "evt_no_time") in dedupe
    assert ("kyc-provider", "evt_expired") not in dedupe
    clock.now += 600  # the other instance's id lives a TTL from its marker, not from now
    assert ("payment-gateway", "evt_other") not in dedupe
    assert ("payment-gateway", "evt_mine") in dedupe
    assert ("kyc-provider", "evt_no_time") in dedupe


async def test_an_acknowledged_publication_writes_its_marker_with_the_utc_time() -> None:
    producer = Producer()
    dedupe = Deduplicator()
    topic = seen_ids(dedupe, producer, wall_clock=lambda: 1_718_000_000.25)
    dedupe.on_published = topic.mark

    await dedupe.once(("payment-gateway", "evt_1"), Publisher(), wait_s=5)
    await dedupe.once(("payment-gateway", "evt_1"), Publisher(), wait_s=5)
    await topic.stop()

    assert [(r.topic, r.key, r.value) for r in producer.sent] == [
        (
            "t.integrations.inbound.dedupe",
            b"payment-gateway|evt_1",
            b'{"seen_at":"2024-06-10T06:13:20.250Z"}',
        )
    ]
    assert topic.counts() == {"written": 1, "failed": 0, "learned": 0}


async def test_a_marker_that_cannot_be_written_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = seen_ids(Deduplicator(), Producer(fail=BrokerError("delivery failed")), wall_clock=lambda: 0.0)

    topic.mark(("payment-gateway", "evt_1"))
    await topic.stop()

    assert topic.counts() == {"written": 0, "failed": 1, "learned": 0}
    assert "seen marker of payment-gateway evt_1 was not written" in caplog.text
    assert "BrokerError" in caplog.text


# -- the API server and the topic of seen ids ---------------------------------------------------------

SECRET = "whsec_unit_dedupe_secret"
TOKEN = "api-token-for-tests"


def api_settings(**api: object) -> Settings:
    return load_settings(
        bootstrap_servers="unused:9092",
        output_format="json",
        payments={"results_topic": "t.integrations.payment.results"},
        api={"port": 0, "auth_token": TOKEN, "payment_gateway": {"secret": SECRET}, **api},
    )


def test_the_topic_of_seen_ids_is_the_setting_or_with_the_apps_the_catalogues(tmp_path: Path) -> None:
    catalogue = tmp_path / "topics.yaml"
    catalogue.write_text(
        "version: 1\noutputs:\n  - name: p.integrations.inbound.dedupe\n    description: seen ids\n"
    )
    bare = tmp_path / "bare.yaml"
    bare.write_text("version: 1\noutputs:\n  - name: p.integrations.payment.results\n    description: r\n")

    def topic(**settings: object) -> str | None:
        return ApiServer(load_settings(bootstrap_servers="unused:9092", **settings)).seen_ids_topic()  # type: ignore[arg-type]

    assert topic(api={"dedupe_topic": "named.seen"}) == "named.seen"
    assert topic(api={"dedupe_topic": "named.seen", "enabled": True}, topics_file=catalogue) == "named.seen"
    assert topic(api={"enabled": True}, topics_file=catalogue) == "p.integrations.inbound.dedupe"
    assert topic(topics_file=catalogue) is None  # an ApiServer made in code, not with the apps
    with pytest.raises(ConfigError, match=r"integrations\.inbound\.dedupe"):
        topic(api={"enabled": True}, topics_file=bare)


def callback(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = jsonwire.dumps(
        {
            "event_id": event_id,
            "event_type": "payment.confirmed",
            "data": {
                "payment_id": f"PMT-{event_id}",
                "status": "COMPLETED",
                "gateway_reference": f"ch_{event_id}",
                "amount": Decimal("1185.50"),
                "currency": "USD",
                "transaction_type": "CHARGE",
                "policy_id": "POL-2024-000001",
                "reference_id": "POL-2024-000001-I001",
                "idempotency_key": f"idem_{event_id}",
                "processed_at": "2024-06-10T06:13:20Z",
            },
        }
    )
    ts = str(int(time.time()))
    headers = {
        "X-Provider-Event-Id": event_id,
        "X-Signature-Timestamp": ts,
        "X-Signature": sign(SecretStr(SECRET), ts, body),
        "Content-Type": "application/json",
    }
    return body, headers


async def test_the_api_is_not_ready_and_publishes_nothing_until_the_seen_ids_are_read() -> None:
    producer = Producer()
    server = ApiServer(api_settings(), producer=cast(AsyncProducer, producer), codec=Codec(LocalSchemaIds()))
    server.health.broker = BrokerProbe("unused:9092", check=lambda: None, cache_s=0.0)
    marker = StaticMessage(
        "t.seen", 0, 0, b"payment-gateway|evt_elsewhere", b"{}", timestamp_ms=int(time.time() * 1000)
    )
    seen = SeenIdsTopic(
        server.kafka, "t.seen", server.dedupe, cast(AsyncProducer, producer), reader=lambda _: [marker]
    )

    async def post(session: aiohttp.ClientSession, event_id: str) -> tuple[int, dict[str, object]]:
        body, headers = callback(event_id)
        async with session.post(
            f"{server.url}/api/v1/inbound/payment-gateway", data=body, headers=headers
        ) as r:
            return r.status, await r.json()

    async with server, aiohttp.ClientSession() as session:
        server.seen_ids = seen
        server.dedupe.on_published = seen.mark
        async with session.get(f"{server.url}/readyz") as response:
            loading = (response.status, await response.json())
        refused = await post(session, "evt_elsewhere")

        await seen.load([0])
        async with session.get(f"{server.url}/readyz") as response:
            ready = response.status
        duplicate = await post(session, "evt_elsewhere")
        published = await post(session, "evt_here")
        await seen.stop()  # the marker of evt_here is written before it returns
        async with session.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            metrics = (await response.read()).decode()

    assert loading[0] == 503
    assert loading[1]["reasons"] == [
        "inbound de-duplication is still reading the ids published by other instances"
    ]
    assert refused[0] == 503
    assert refused[1]["error"] == "unavailable"
    assert ready == 200
    assert duplicate == (200, {"accepted": True, "duplicate": True})
    assert published == (200, {"accepted": True, "duplicate": False})
    assert [(r.topic, r.key) for r in producer.sent] == [
        ("t.integrations.payment.results", b"POL-2024-000001"),
        ("t.seen", b"payment-gateway|evt_here"),
    ]
    assert 'processors_inbound_dedupe_markers_total{outcome="written"} 1.0' in metrics
    assert 'processors_inbound_dedupe_markers_total{outcome="learned"} 1.0' in metrics
    assert 'processors_inbound_requests_total{outcome="duplicate",provider="payment-gateway"} 1.0' in metrics
