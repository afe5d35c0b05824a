"""Inbound de-duplication across API instances, through the topic of seen ids on a real broker.

Two servers share one broker, one results topic and one topic of seen ids.  "Exactly one record"
is checked with a marker confirmation for the same policy (same key, same partition) sent last:
once the marker is on the results topic, anything published before it would be there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import confluent_kafka
import pytest

from processors.api.server import ApiServer
from processors.errors import ConfigError
from processors.settings import Settings, load_settings
from tests.integration.helpers import Collector, header
from tests.integration.test_api_inbound import SECRET, body_for, signed

pytestmark = pytest.mark.timeout(180)

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GATEWAY = "payment-gateway"


@pytest.fixture
def topics(isolated_topics: Callable[..., tuple[Path, str]]) -> tuple[Path, str]:
    return isolated_topics()


@pytest.fixture
def results(topics: tuple[Path, str]) -> str:
    return f"{topics[1]}integrations.payment.results"


@pytest.fixture
def seen_topic(topics: tuple[Path, str]) -> str:
    return f"{topics[1]}integrations.inbound.dedupe"


@pytest.fixture
def collector(kafka_bootstrap: str, results: str, seen_topic: str) -> Iterator[Collector]:
    c = Collector(kafka_bootstrap, [results, seen_topic])
    yield c
    c.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def settings_for(bootstrap: str, results: str, *, topics_file: Path | None = None, **api: Any) -> Settings:
    return load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        payments={"results_topic": results},
        api={"port": 0, "auth_token": TOKEN, "payment_gateway": {"secret": SECRET}, **api},
    )


@contextlib.asynccontextmanager
async def instance(settings: Settings) -> AsyncIterator[ApiServer]:
    async with ApiServer(settings) as server:
        yield server


async def until(condition: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)  # between two polls of a condition that has a deadline


async def ready(client: aiohttp.ClientSession, server: ApiServer) -> bool:
    async with client.get(f"{server.url}/readyz") as response:
        return response.status == 200


async def inbound_status(client: aiohttp.ClientSession, server: ApiServer) -> dict[str, Any]:
    async with client.get(f"{server.url}/api/v1/status", headers=AUTH) as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document["inbound"]


async def post(client: aiohttp.ClientSession, server: ApiServer, event_id: str) -> tuple[int, dict[str, Any]]:
    body = body_for(event_id)
    url = f"{server.url}/api/v1/inbound/{GATEWAY}"
    async with client.post(url, data=body, headers=signed(body, event_id)) as response:
        return response.status, await response.json()


async def published_ids(
    client: aiohttp.ClientSession, server: ApiServer, collector: Collector, results: str
) -> list[str | None]:
    """The provider event ids on the results topic, once a last marker confirmation is there."""
    assert (await post(client, server, "evt_marker"))[0] == 200
    await collector.wait_for(
        lambda _: any(header(m, "x-provider-event-id") == "evt_marker" for m in collector.on(results)),
        timeout_s=60,
    )
    return [header(m, "x-provider-event-id") for m in collector.on(results)]


async def test_a_retry_sent_to_another_instance_is_a_duplicate_and_published_once(
    kafka_bootstrap: str,
    results: str,
    seen_topic: str,
    client: aiohttp.ClientSession,
    collector: Collector,
) -> None:
    settings = settings_for(kafka_bootstrap, results, dedupe_topic=seen_topic)
    async with instance(settings) as first, instance(settings) as second:
        for server in (first, second):
            await until(lambda s=server: ready(client, s), timeout_s=60, what="instance ready")

        accepted = await post(client, first, "evt_retried")

        async def second_learned() -> bool:
            return (await inbound_status(client, second))["dedupe_entries"] >= 1

        await until(second_learned, timeout_s=60, what="the second instance learned the id")
        retried = await post(client, second, "evt_retried")
        shared = (await inbound_status(client, second))["dedupe_shared"]
        seen = await published_ids(client, second, collector, results)
    marker = b"payment-gateway|evt_retried"
    await collector.wait_for(lambda _: marker in {m.key() for m in collector.on(seen_topic)}, timeout_s=60)

    assert accepted == (200, {"accepted": True, "duplicate": False})
    assert retried == (200, {"accepted": True, "duplicate": True})
    assert seen == ["evt_retried", "evt_marker"]
    assert shared["topic"] == seen_topic
    assert shared["caught_up"] is True
    assert shared["markers"]["learned"] >= 1
    assert [m.key() for m in collector.on(seen_topic)].count(marker) == 1  # written by the first only


async def test_a_restarted_instance_learns_the_ids_of_the_ttl_from_the_topic(
    kafka_bootstrap: str,
    topics: tuple[Path, str],
    results: str,
    seen_topic: str,
    client: aiohttp.ClientSession,
    collector: Collector,
) -> None:
    topics_file, _prefix = topics
    ttl_s = 3600
    # Markers written by an instance that is gone: one within the TTL, one older than it.
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    now_ms = int(time.time() * 1000)
    producer.produce(seen_topic, key=b"payment-gateway|evt_recent", value=b"{}", timestamp=now_ms - 600_000)
    producer.produce(
        seen_topic, key=b"payment-gateway|evt_expired", value=b"{}", timestamp=now_ms - 7_200_000
    )
    assert producer.flush(30) == 0

    first_settings = settings_for(kafka_bootstrap, results, dedupe_topic=seen_topic, dedupe_ttl_s=ttl_s)
    async with instance(first_settings) as first:
        await until(lambda: ready(client, first), timeout_s=60, what="first instance ready")
        accepted = await post(client, first, "evt_before_restart")
    assert first.seen_ids is not None
    assert first.seen_ids.markers_written == 1  # stop() waited for the marker

    # The restarted instance finds the topic through the catalogue, as `processors run --api` does.
    restarted_settings = settings_for(
        kafka_bootstrap, results, topics_file=topics_file, enabled=True, dedupe_ttl_s=ttl_s
    )
    async with instance(restarted_settings) as restarted:
        assert restarted.seen_ids is not None
        assert restarted.seen_ids.topic == seen_topic
        await until(lambda: ready(client, restarted), timeout_s=60, what="restarted instance ready")
        status = await inbound_status(client, restarted)
        answers = {
            event_id: await post(client, restarted, event_id)
            for event_id in ("evt_before_restart", "evt_recent", "evt_expired")
        }
        seen = await published_ids(client, restarted, collector, results)

    assert accepted == (200, {"accepted": True, "duplicate": False})
    assert status["dedupe_shared"]["caught_up"] is True
    assert status["dedupe_entries"] == 2  # evt_before_restart and evt_recent; not evt_expired
    assert answers == {
        "evt_before_restart": (200, {"accepted": True, "duplicate": True}),
        "evt_recent": (200, {"accepted": True, "duplicate": True}),
        "evt_expired": (200, {"accepted": True, "duplicate": False}),
    }
    assert seen == ["evt_before_restart", "evt_expired", "evt_marker"]


async def test_the_api_refuses_to_start_without_its_topic_of_seen_ids(
    kafka_bootstrap: str, topics: tuple[Path, str], results: str
) -> None:
    missing = f"{topics[1]}integrations.inbound.absent"
    server = ApiServer(settings_for(kafka_bootstrap, results, dedupe_topic=missing))

    with pytest.raises(ConfigError, match=re.escape(f"missing topic {missing}")):
        await server.start()

    with pytest.raises(RuntimeError):
        _ = server.url  # it does not listen
