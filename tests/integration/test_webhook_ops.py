"""Operator routes over a real broker: attempts from the delivery log, redelivery and recovery.

The dispatch records and delivery-log records are produced here in their documented formats
(docs/webhooks.md), as the webhooks app writes them; the routes are mounted on the API server
through its ``extra_routes`` hook and called over HTTP.  A redelivery is answered only once
the broker acknowledged the copies, so reading the dispatch topic to its end afterwards sees
every copy there is.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

from processors.api.server import ApiServer
from processors.api.webhook_ops import CAUGHT_UP_HEADER, WebhookOpsRoutes
from processors.settings import load_settings
from processors.webhooks.attempts import JobRef
from tests.integration.helpers import watermarks

pytestmark = pytest.mark.timeout(180)

TOKEN = "ops-t0ken"
SUB_A = "sub_alpha"
SUB_B = "sub_beta"
SINCE = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Topics:
    dispatch: str
    deliveries: str


@dataclass(frozen=True)
class Dispatched:
    """A dispatch record as produced, and where it landed."""

    webhook_id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    job: JobRef


def iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dispatch_record(sub_id: str, webhook_id: str, *, subject: str = "POL-7") -> tuple[bytes, bytes, list]:
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "webhook_id": webhook_id,
            "event_type": "policy.issued",
            "timestamp": "2025-06-01T11:59:00.000Z",
            "data": {"policy_id": subject, "premium": "1185.50"},
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        ("content-type", b"application/json"),
        ("x-subscription-id", sub_id.encode()),
        ("x-webhook-id", webhook_id.encode()),
        ("x-event-id", event_id.encode()),
        ("x-event-type", b"policy.issued"),
        ("x-subject", subject.encode()),
        ("traceparent", TRACEPARENT.encode()),
    ]
    return f"{sub_id}|{webhook_id}".encode(), body, headers


def produce_dispatch(
    bootstrap: str, topic: str, messages: Sequence[tuple[str, str]], *, partition: int | None = None
) -> dict[str, Dispatched]:
    """Produce one dispatch record per (subscription, webhook id); their coordinates by webhook id."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    landed: dict[str, Dispatched] = {}
    for sub_id, webhook_id in messages:
        key, value, headers = dispatch_record(sub_id, webhook_id)

        def on_delivery(err: Any, msg: Any, *, w: str = webhook_id, k=key, v=value, h=headers) -> None:
            assert err is None, err
            landed[w] = Dispatched(w, k, v, h, JobRef(msg.topic(), msg.partition(), msg.offset()))

        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery, **extra)
    assert producer.flush(30) == 0
    assert len(landed) == len(messages)
    return landed


def log_value(
    sub_id: str,
    webhook_id: str,
    job: JobRef,
    *,
    attempt: int,
    status: str,
    at: datetime,
    nxt: str | None = None,
) -> bytes:
    failed = status == "failed"
    return json.dumps(
        {
            "subscription_id": sub_id,
            "webhook_id": webhook_id,
            "event_id": f"evt-{webhook_id}",
            "event_type": "policy.issued",
            "subject": "POL-7",
            "attempt": attempt,
            "status": status,
            "http_status": 503 if failed else 200 if status == "delivered" else None,
            "latency_ms": 41.25 if attempt else None,
            "error": "HTTP 503" if failed else "address refused" if status == "refused" else None,
            "response_excerpt": "upstream unavailable" if failed else None,
            "attempted_at": iso(at),
            "url_host": "partner.example",
            "next": nxt,
            "job": job.to_json(),
        },
        separators=(",", ":"),
    ).encode()


def produce_log(bootstrap: str, topic: str, values: Sequence[tuple[str, bytes]]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in values:
        producer.produce(
            topic, key=key.encode(), value=value, headers=[("content-type", b"application/json")]
        )
    assert producer.flush(30) == 0


def read_to_end(bootstrap: str, topic: str) -> list[confluent_kafka.Message]:
    """Every record of ``topic`` up to the high watermarks read at the call."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends: dict[int, int] = {}
        starts = []
        for p in partitions:
            low, high = watermarks(consumer, confluent_kafka.TopicPartition(topic, p))
            if high > low:
                ends[p] = high
                starts.append(confluent_kafka.TopicPartition(topic, p, low))
        consumer.assign(starts)
        records: list[confluent_kafka.Message] = []
        deadline = time.monotonic() + 30
        while ends:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                records.append(msg)
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    ends.pop(msg.partition(), None)
        return records
    finally:
        consumer.close()


def header(msg: confluent_kafka.Message, name: str) -> str | None:
    for key, value in msg.headers() or ():
        if key == name:
            return value.decode() if value is not None else None
    return None


def copies(bootstrap: str, topic: str) -> list[confluent_kafka.Message]:
    return [m for m in read_to_end(bootstrap, topic) if header(m, "x-redelivery") == "operator"]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def topics(isolated_topics: Callable[..., tuple[Path, str]]) -> Topics:
    _, prefix = isolated_topics()
    return Topics(f"{prefix}integrations.webhooks.dispatch", f"{prefix}integrations.webhook.deliveries")


@dataclass
class World:
    dispatched: dict[str, Dispatched]
    gone: JobRef
    bogus: JobRef


@pytest.fixture
def world(kafka_bootstrap: str, topics: Topics) -> World:
    """Dispatch records and their attempts for two endpoints.

    sub_alpha, relative to SINCE:
      msg_dlq        failed -10 min (retry), failed +1 min (dlq)        → recovered
      msg_later_ok   failed +1 min (retry), delivered +2 min            → not recovered
      msg_ok         delivered +3 min                                   → not recovered
      msg_old        failed -1 h (dlq)                                  → not recovered (before since)
      msg_refused    refused +4 min (attempt 0, dlq)                    → recovered
      msg_retention  failed +5 min (dlq); its record deleted (retention) → missing
      msg_bogus      failed +6 min (dlq); its offset was never written   → missing
    sub_beta:
      msg_beta       failed +1 min (dlq)                                → only for sub_beta
    """
    # The record deleted "by retention" goes first on partition 5, then is deleted.
    doomed = produce_dispatch(kafka_bootstrap, topics.dispatch, [(SUB_A, "msg_retention")], partition=5)
    gone = doomed["msg_retention"].job
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.delete_records(
        [confluent_kafka.TopicPartition(topics.dispatch, gone.partition, gone.offset + 1)]
    )
    for future in futures.values():
        future.result(timeout=30)

    dispatched = produce_dispatch(
        kafka_bootstrap,
        topics.dispatch,
        [
            (SUB_A, "msg_dlq"),
            (SUB_A, "msg_later_ok"),
            (SUB_A, "msg_ok"),
            (SUB_A, "msg_old"),
            (SUB_A, "msg_refused"),
            (SUB_B, "msg_beta"),
        ],
    )
    bogus = JobRef(topics.dispatch, 0, 10_000_000)
    job = {w: d.job for w, d in dispatched.items()} | {"msg_retention": gone, "msg_bogus": bogus}
    attempts = [
        # subscription, webhook id, attempt, status, minutes after SINCE, next
        (SUB_A, "msg_old", 1, "failed", -60, "dlq"),
        (SUB_A, "msg_dlq", 1, "failed", -10, "retry"),
        (SUB_A, "msg_dlq", 2, "failed", 1, "dlq"),
        (SUB_B, "msg_beta", 1, "failed", 1, "dlq"),
        (SUB_A, "msg_later_ok", 1, "failed", 1, "retry"),
        (SUB_A, "msg_later_ok", 2, "delivered", 2, None),
        (SUB_A, "msg_ok", 1, "delivered", 3, None),
        (SUB_A, "msg_refused", 0, "refused", 4, "dlq"),
        (SUB_A, "msg_retention", 1, "failed", 5, "dlq"),
        (SUB_A, "msg_bogus", 1, "failed", 6, "dlq"),
    ]
    log = [
        (sub, log_value(sub, w, job[w], attempt=n, status=st, at=SINCE + timedelta(minutes=m), nxt=nxt))
        for sub, w, n, st, m, nxt in attempts
    ]
    log.append((SUB_A, b"{not a delivery-log record"))
    produce_log(kafka_bootstrap, topics.deliveries, log)
    return World(dispatched, gone, bogus)


@pytest.fixture
async def ops(kafka_bootstrap: str, topics: Topics) -> WebhookOpsRoutes:
    return WebhookOpsRoutes.create(
        kafka_bootstrap,
        deliveries_topic=topics.deliveries,
        dispatch_topic=topics.dispatch,
        catch_up_timeout_s=20.0,
    )


@pytest.fixture
async def api(kafka_bootstrap: str, ops: WebhookOpsRoutes, world: World) -> AsyncIterator[ApiServer]:
    settings = load_settings(bootstrap_servers=kafka_bootstrap, api={"port": 0, "auth_token": TOKEN})
    async with ApiServer(settings, extra_routes=[ops]) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


async def get(
    client: aiohttp.ClientSession, api: ApiServer, path: str, **params: str
) -> tuple[int, Any, str | None]:
    async with client.get(f"{api.url}{path}", params=params) as response:
        return response.status, await response.json(), response.headers.get(CAUGHT_UP_HEADER)


async def post(client: aiohttp.ClientSession, api: ApiServer, path: str, body: Any = None) -> tuple[int, Any]:
    async with client.post(f"{api.url}{path}", json=body) as response:
        return response.status, await response.json()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# ---------------------------------------------------------------------------------- tests


async def test_attempts_are_listed_newest_first_with_their_details(
    api: ApiServer, client: aiohttp.ClientSession, ops: WebhookOpsRoutes
) -> None:
    status, body, caught_up = await get(client, api, f"/api/v1/webhooks/{SUB_A}/attempts")

    assert status == 200
    assert caught_up == "true"
    assert [(a["webhook_id"], a["attempt"]) for a in body] == [
        ("msg_bogus", 1),
        ("msg_retention", 1),
        ("msg_refused", 0),
        ("msg_ok", 1),
        ("msg_later_ok", 2),
        ("msg_later_ok", 1),
        ("msg_dlq", 2),
        ("msg_dlq", 1),
        ("msg_old", 1),
    ]
    assert body[6] == {
        "webhook_id": "msg_dlq",
        "event_type": "policy.issued",
        "attempt": 2,
        "status": "failed",
        "http_status": 503,
        "latency_ms": 41.25,
        "error": "HTTP 503",
        "response_excerpt": "upstream unavailable",
        "attempted_at": "2025-06-01T12:01:00.000Z",
        "next": "dlq",
    }
    assert ops.view.skipped == 1  # the unparsable record

    status, delivered, _ = await get(
        client, api, f"/api/v1/webhooks/{SUB_A}/attempts", status="delivered", since="2025-06-01T12:02:30Z"
    )
    assert status == 200
    assert [a["webhook_id"] for a in delivered] == ["msg_ok"]
    status, limited, _ = await get(client, api, f"/api/v1/webhooks/{SUB_A}/attempts", limit="2")
    assert [a["webhook_id"] for a in limited] == ["msg_bogus", "msg_retention"]
    status, other, _ = await get(client, api, f"/api/v1/webhooks/{SUB_B}/attempts")
    assert [a["webhook_id"] for a in other] == ["msg_beta"]

    status, message, _ = await get(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_later_ok/attempts")
    assert status == 200
    assert [(a["attempt"], a["status"]) for a in message] == [(2, "delivered"), (1, "failed")]
    status, unknown, _ = await get(client, api, f"/api/v1/webhooks/{SUB_B}/messages/msg_dlq/attempts")
    assert status == 404
    assert unknown["error"] == "not_found"


async def test_routes_need_the_token(api: ApiServer) -> None:
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{api.url}/api/v1/webhooks/{SUB_A}/attempts") as response,
    ):
        assert response.status == 401


async def test_a_record_logged_just_before_the_request_is_in_the_answer(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics, world: World
) -> None:
    job = world.dispatched["msg_ok"].job
    await in_thread(
        produce_log,
        kafka_bootstrap,
        topics.deliveries,
        [(SUB_A, log_value(SUB_A, "msg_fresh", job, attempt=1, status="delivered", at=SINCE))],
    )

    status, body, caught_up = await get(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_fresh/attempts")

    assert status == 200
    assert caught_up == "true"
    assert [a["status"] for a in body] == ["delivered"]


async def test_redeliver_produces_exactly_one_copy_of_the_dispatch_record(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics, world: World
) -> None:
    status, report = await post(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_ok/redeliver")

    assert status == 202
    assert report["redelivered"] == 1
    assert report["missing"] == 0
    assert report["webhook_ids"] == ["msg_ok"]
    assert report["caught_up"] is True
    found = await in_thread(copies, kafka_bootstrap, topics.dispatch)
    assert len(found) == 1
    copy, original = found[0], world.dispatched["msg_ok"]
    assert copy.key() == original.key
    assert copy.value() == original.value
    headers = [(k, v) for k, v in copy.headers() or ()]
    assert headers[: len(original.headers)] == original.headers
    assert [k for k, _ in headers[len(original.headers) :]] == ["x-redelivery", "x-redelivered-at"]
    redelivered_at = datetime.fromisoformat(header(copy, "x-redelivered-at") or "")
    assert redelivered_at.utcoffset() == timedelta(0)
    assert not any(k.startswith("x-original-") for k, _ in headers)


async def test_redeliver_of_an_unknown_message_is_404_and_copies_nothing(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics
) -> None:
    unknown = await post(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_nope/redeliver")
    elsewhere = await post(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_beta/redeliver")

    assert [unknown[0], elsewhere[0]] == [404, 404]
    assert await in_thread(copies, kafka_bootstrap, topics.dispatch) == []


async def test_recover_redelivers_exactly_the_messages_that_failed_since_then(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics, world: World
) -> None:
    status, report = await post(client, api, f"/api/v1/webhooks/{SUB_A}/recover", {"since": iso(SINCE)})

    assert status == 202
    assert sorted(report["webhook_ids"]) == ["msg_dlq", "msg_refused"]
    assert report["redelivered"] == 2
    assert report["missing"] == 2
    assert sorted(report["missing_jobs"], key=lambda j: j["webhook_id"]) == [
        {**world.bogus.to_json(), "webhook_id": "msg_bogus"},
        {**world.gone.to_json(), "webhook_id": "msg_retention"},
    ]
    found = await in_thread(copies, kafka_bootstrap, topics.dispatch)
    assert sorted(header(m, "x-webhook-id") or "" for m in found) == ["msg_dlq", "msg_refused"]
    for copy in found:
        original = world.dispatched[header(copy, "x-webhook-id") or ""]
        assert (copy.key(), copy.value()) == (original.key, original.value)
        assert header(copy, "x-subscription-id") == SUB_A


async def test_a_redelivery_whose_record_is_gone_reports_it_missing(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics, world: World
) -> None:
    gone = await post(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_retention/redeliver")
    bogus = await post(client, api, f"/api/v1/webhooks/{SUB_A}/messages/msg_bogus/redeliver")

    assert [gone[0], bogus[0]] == [202, 202]
    assert (gone[1]["redelivered"], gone[1]["missing"]) == (0, 1)
    assert gone[1]["missing_jobs"] == [{**world.gone.to_json(), "webhook_id": "msg_retention"}]
    assert bogus[1]["missing_jobs"] == [{**world.bogus.to_json(), "webhook_id": "msg_bogus"}]
    assert await in_thread(copies, kafka_bootstrap, topics.dispatch) == []


async def test_bad_queries_and_bodies_are_400_with_a_reason_and_copy_nothing(
    api: ApiServer, client: aiohttp.ClientSession, kafka_bootstrap: str, topics: Topics
) -> None:
    attempts = f"/api/v1/webhooks/{SUB_A}/attempts"
    queries = {
        "naive since": {"since": "2025-06-01T12:00:00"},
        "not a time": {"since": "yesterday"},
        "zero limit": {"limit": "0"},
        "limit too high": {"limit": "1001"},
        "text limit": {"limit": "many"},
        "unknown status": {"status": "lost"},
    }
    for case, params in queries.items():
        status, body, _ = await get(client, api, attempts, **params)
        assert (status, body["error"]) == (400, "bad_request"), case
        assert body["message"], case

    bodies = {
        "no body": None,
        "naive since": {"since": "2025-06-01T12:00:00"},
        "number": {"since": 1717243200},
        "list": ["2025-06-01T12:00:00Z"],
        "no since": {},
    }
    for case, sent in bodies.items():
        status, answer = await post(client, api, f"/api/v1/webhooks/{SUB_A}/recover", sent)
        assert (status, answer["error"]) == (400, "bad_request"), case
        assert "since" in answer["message"] or "JSON" in answer["message"], case
    async with client.post(f"{api.url}/api/v1/webhooks/{SUB_A}/recover", data=b"{since") as response:
        assert response.status == 400
    assert await in_thread(copies, kafka_bootstrap, topics.dispatch) == []


async def test_an_offset_given_with_an_unencoded_plus_is_understood(
    api: ApiServer, client: aiohttp.ClientSession
) -> None:
    url = f"{api.url}/api/v1/webhooks/{SUB_A}/attempts?since=2025-06-01T14:02:30+02:00&status=delivered"
    async with client.get(url) as response:
        assert response.status == 200
        assert [a["webhook_id"] for a in await response.json()] == ["msg_ok"]
