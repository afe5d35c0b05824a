"""Bordereaux delivery over real HTTP (the sandbox reinsurer) and, end to end, against a real broker.

The HTTP tests need no broker.  The last test runs the ``bordereaux-delivery`` app in-process
on the runtime's engine against a real Kafka: reports are published in transactions (one
aborted), and the reinsurer must receive each committed report exactly once.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import confluent_kafka
import pytest
from pydantic import SecretStr

from processors.adapters.http import AiohttpTransport, TimeoutSettings
from processors.adapters.reinsurer import ReinsurerClient, ReinsurerSettings, ReportConflict
from processors.apps.reinsurance import (
    APP,
    MAX_MESSAGE_BYTES,
    ReinsuranceSettings,
    build_reinsurance_app,
)
from processors.kafka import KafkaClients
from processors.resilience.classify import PermanentHttpStatus, RetriableHttpStatus
from processors.resilience.config import EndpointPolicy, parse_resilience
from processors.resilience.guard import EndpointGuard
from processors.resilience.retry import RetryPolicy
from processors.runtime.engine import Engine, EngineSettings
from processors.runtime.failures import H
from processors.runtime.producer import AsyncProducer
from processors.topics.admin import apply
from processors.topics.catalogue import parse_catalogue
from processors_dev.sandbox.reinsurer import ReinsurerConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, header
from tests.unit.test_reinsurance_app import CATALOGUE, app_topics, message, report, report_bytes

pytestmark = pytest.mark.timeout(180)

TOKEN = "re-sandbox-token"

# aiohttp warns when a request body above 1 MiB is given as bytes, which is what the HTTP seam
# (processors/adapters/http.py) passes; a large bordereau is such a body.
LARGE_BODY_WARNING = "ignore:Sending a large body directly with raw bytes:ResourceWarning"


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(reinsurer=ReinsurerConfig(token=SecretStr(TOKEN), seed=1)) as server:
        yield server


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[ReinsurerClient]:
    settings = ReinsurerSettings(
        base_url=sandbox.url, token=SecretStr(TOKEN), timeouts=TimeoutSettings(read_timeout_s=10)
    )
    reinsurer = ReinsurerClient(settings, AiohttpTransport(max_connections=8))
    await reinsurer.start()
    try:
        yield reinsurer
    finally:
        await reinsurer.close()


def large_report_bytes(rows: int, **kwargs: Any) -> bytes:
    """A premium bordereau of ``rows`` rows (about 100 bytes each)."""
    value = report(**kwargs)
    value["policies"] = [
        {"policy_number": f"INS-2024-{i:06d}", "transaction_type": "NEW_BUSINESS", "gross_premium": f"{i}.00"}
        for i in range(rows)
    ]
    value["summary"] = {"total_policies": rows, "total_rows": rows}
    return json.dumps(value, separators=(",", ":")).encode()


async def _get(sandbox: SandboxServer, path: str, token: str = TOKEN) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sandbox.url + path, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


# -- the sandbox reinsurer over real HTTP --------------------------------------------------------


async def test_a_report_submitted_twice_is_received_once(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    body = report_bytes()
    report_id = "BRD-TRY-2024-001-2024-01-P"
    first = await client.submit(report_id, body)
    second = await client.submit(report_id, body)
    assert (first.status, first.duplicate, first.http_status) == ("ACCEPTED", False, 201)
    assert (second.status, second.duplicate, second.http_status) == ("ACCEPTED", True, 200)
    assert second.acknowledged_at == first.acknowledged_at  # the original acknowledgement
    assert sandbox.reinsurer.accepted_by_report == {report_id: 1}
    assert sandbox.reinsurer.reports[report_id].duplicates == 1

    status, stored, headers = await _get(sandbox, f"/api/v1/bordereaux/{report_id}")
    assert status == 200
    assert stored == body  # byte for byte what the bordereaux app wrote
    assert headers["X-Report-Duplicates"] == "1"
    status, listing, _ = await _get(sandbox, "/api/v1/bordereaux?treaty_number=TRY-2024-001")
    assert status == 200
    (entry,) = json.loads(listing)["reports"]
    assert (entry["report_id"], entry["duplicates"], entry["bytes"]) == (report_id, 1, len(body))


@pytest.mark.filterwarnings(LARGE_BODY_WARNING)
async def test_a_bordereau_of_several_megabytes_is_received_whole(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    body = large_report_bytes(40_000)
    assert len(body) > 3 * 1024 * 1024  # above the sandbox application's own 1 MiB request limit
    result = await client.submit("BRD-TRY-2024-001-2024-01-P", body)
    assert result.duplicate is False
    assert sandbox.reinsurer.reports["BRD-TRY-2024-001-2024-01-P"].body == body


async def test_a_report_above_the_reinsurers_limit_is_refused_with_413(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    sandbox.reinsurer.update_config(max_report_bytes=4096)
    with pytest.raises(PermanentHttpStatus) as info:
        await client.submit("BRD-TRY-2024-001-2024-01-P", large_report_bytes(100))
    assert info.value.status == 413
    assert sandbox.reinsurer.reports == {}


async def test_concurrent_submissions_of_one_report_store_it_once(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    sandbox.reinsurer.update_config(latency_ms=50)
    body = report_bytes(kind="C")
    results = await asyncio.gather(*(client.submit("BRD-TRY-2024-001-2024-01-C", body) for _ in range(4)))
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert len({r.acknowledged_at for r in results}) == 1
    assert sandbox.reinsurer.accepted_by_report == {"BRD-TRY-2024-001-2024-01-C": 1}


async def test_a_changed_report_is_a_conflict_and_the_first_version_stays(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    original = report_bytes()
    changed = report_bytes(treaty_type="SURPLUS")
    await client.submit("BRD-TRY-2024-001-2024-01-P", original)
    with pytest.raises(ReportConflict) as info:
        await client.submit("BRD-TRY-2024-001-2024-01-P", changed)
    assert "report_changed" in str(info.value)
    assert sandbox.reinsurer.reports["BRD-TRY-2024-001-2024-01-P"].body == original
    assert sandbox.reinsurer.requests_by_status == {201: 1, 409: 1}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"summary": None}, "summary"),
        ({"period": {"id": "2024-01", "from": "2024-01-01"}}, "period.to"),
        ({"report_type": "OTHER"}, "report_type"),
        ({"treaty_number": ""}, "treaty_number"),
    ],
)
async def test_a_report_without_its_required_fields_is_refused_with_422(
    sandbox: SandboxServer, client: ReinsurerClient, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PermanentHttpStatus) as info:
        await client.submit("BRD-TRY-2024-001-2024-01-P", report_bytes(**changes))
    assert info.value.status == 422
    assert reason in str(info.value)
    assert sandbox.reinsurer.reports == {}


async def test_an_idempotency_key_other_than_the_report_id_is_refused(sandbox: SandboxServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sandbox.url + "/api/v1/bordereaux",
            data=report_bytes(),
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "another-key"},
        ) as response,
    ):
        assert response.status == 422
        assert "Idempotency-Key" in json.loads(await response.read())["message"]
    assert sandbox.reinsurer.reports == {}


async def test_a_wrong_token_is_refused_for_submitting_and_reading(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    stranger = ReinsurerClient(
        ReinsurerSettings(base_url=sandbox.url, token=SecretStr("wrong")), AiohttpTransport()
    )
    try:
        with pytest.raises(PermanentHttpStatus) as info:
            await stranger.submit("BRD-TRY-2024-001-2024-01-P", report_bytes())
    finally:
        await stranger.close()
    assert info.value.status == 401
    status, _, _ = await _get(sandbox, "/api/v1/bordereaux", token="wrong")
    assert status == 401
    assert sandbox.reinsurer.reports == {}


async def test_an_outage_is_retriable_with_the_delay_the_reinsurer_asks_for(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(sandbox.url + "/_sandbox/reinsurer/config", json={"outage": True}) as response,
    ):
        assert response.status == 200
    with pytest.raises(RetriableHttpStatus) as info:
        await client.submit("BRD-TRY-2024-001-2024-01-P", report_bytes())
    assert (info.value.status, info.value.retry_after_s) == (503, 1.0)
    assert sandbox.reinsurer.reports == {}


async def test_a_lost_acknowledgement_is_resolved_by_the_guard_as_a_duplicate(
    sandbox: SandboxServer, client: ReinsurerClient
) -> None:
    # The reinsurer stores the report and then fails the answer: the in-place retry with the
    # same key gets the acknowledgement, and the report is still stored once.
    sandbox.reinsurer.update_config(error_after_accept_rate=1.0)
    guard = EndpointGuard("reinsurer", EndpointPolicy(retry=RetryPolicy(initial_delay_ms=0, max_delay_ms=0)))
    body = report_bytes()

    async def submit() -> Any:
        return await client.submit("BRD-TRY-2024-001-2024-01-P", body)

    result = await guard.call(submit)
    assert result.duplicate is True
    assert sandbox.reinsurer.requests_by_status == {500: 1, 200: 1}
    assert sandbox.reinsurer.accepted_by_report == {"BRD-TRY-2024-001-2024-01-P": 1}


# -- the whole app against a real broker ---------------------------------------------------------


def _transactional_publish(
    bootstrap: str, topic: str, batches: list[tuple[bool, list[tuple[bytes, bytes]]]]
) -> None:
    """Each batch in its own transaction, committed (True) or aborted (False)."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"test-bordereaux-{uuid.uuid4().hex}",
            "message.max.bytes": 16 * 1024 * 1024,
        }
    )
    producer.init_transactions(30)
    for commit, records in batches:
        producer.begin_transaction()
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


@pytest.mark.filterwarnings(LARGE_BODY_WARNING)
async def test_the_app_delivers_committed_reports_once_and_dead_letters_what_it_cannot(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    text = re.sub(r"(?<![\w.])(integrations|reinsurance)\.", prefix + r"\1.", CATALOGUE)
    catalogue = parse_catalogue(text)
    apply({"bootstrap.servers": kafka_bootstrap}, catalogue, replication_factor=1)
    source = f"{prefix}reinsurance.bordereaux"
    deliveries = f"{prefix}integrations.reinsurance.deliveries"
    dlq = f"{prefix}integrations.{APP}.dlq"

    t1, t2 = b"TRY-2024-001", b"TRY-2024-002"
    jan_p, jan_c = report_bytes(), report_bytes(kind="C")
    other = report_bytes(treaty="TRY-2024-002")
    large = large_report_bytes(40_000, treaty="TRY-2024-002", kind="P", period_id="2024-02")
    aborted = report_bytes(period_id="2024-02")
    changed = report_bytes(treaty="TRY-2024-002", treaty_type="SURPLUS")  # same id as `other`
    _transactional_publish(
        kafka_bootstrap,
        source,
        [
            (True, [(t1, jan_p), (t1, jan_c), (t2, other), (t2, large)]),
            (False, [(t1, aborted)]),  # never committed: must never reach the reinsurer
            (True, [(t1, jan_p), (t1, b"{not a report"), (t2, changed)]),  # a redelivery, poison, a change
        ],
    )

    resilience = parse_resilience(
        "endpoints:\n  reinsurer:\n    retry: {initial_delay_ms: 10, max_delay_ms: 100}\n"
    )
    async with SandboxServer(reinsurer=ReinsurerConfig(token=SecretStr(TOKEN))) as sandbox:
        settings = ReinsuranceSettings(
            reinsurer=ReinsurerSettings(base_url=sandbox.url, token=SecretStr(TOKEN)),
            deliveries_topic=deliveries,
        )
        app = build_reinsurance_app(
            settings, catalogue.app(APP), resilience=resilience, breakers=resilience.breakers()
        )
        kafka = KafkaClients(kafka_bootstrap)
        conf = kafka.group_consumer(f"{prefix}{APP}", key_ordered=True)
        producer = AsyncProducer(kafka.producer(max_message_bytes=MAX_MESSAGE_BYTES))
        await producer.start()
        engine = Engine(
            app, consumer_conf=conf, producer=producer, settings=EngineSettings(commit_interval_ms=100)
        )
        collector = Collector(kafka_bootstrap, [deliveries, dlq])
        task = asyncio.create_task(engine.run())
        try:
            await collector.wait_for(
                lambda _: len(collector.on(deliveries)) >= 6 and len(collector.on(dlq)) >= 2, timeout_s=90
            )
        finally:
            engine.stop()
            await asyncio.wait_for(task, 60)
            await producer.stop()
            collector.close()

        received = sandbox.reinsurer
        assert received.accepted_by_report == {
            "BRD-TRY-2024-001-2024-01-P": 1,
            "BRD-TRY-2024-001-2024-01-C": 1,
            "BRD-TRY-2024-002-2024-01-P": 1,
            "BRD-TRY-2024-002-2024-02-P": 1,
        }
        assert received.reports["BRD-TRY-2024-002-2024-02-P"].body == large
        assert "BRD-TRY-2024-001-2024-02-P" not in received.reports  # the aborted transaction's report
        assert received.reports["BRD-TRY-2024-001-2024-01-P"].body == jan_p
        assert received.reports["BRD-TRY-2024-002-2024-01-P"].body == other  # the change was refused

    results = [(m.key(), json.loads(m.value())) for m in collector.on(deliveries)]
    assert len(results) == 6
    failed = [result for _, result in results if result["status"] == "FAILED"]
    assert failed == [
        {
            "report_id": "BRD-TRY-2024-002-2024-01-P",  # the changed report: refused, dead-lettered
            "status": "FAILED",
            "acknowledged_at": None,
            "duplicate": False,
            "error_class": "ReportConflict",
            "error": failed[0]["error"],
            "dead_letter_topic": dlq,
        }
    ]
    by_id: dict[str, list[bool]] = {}
    for key, result in results:
        assert result["report_id"].startswith(f"BRD-{key.decode()}-")  # keyed by the treaty number
        if result["status"] == "FAILED":
            continue
        assert result["status"] == "ACCEPTED"
        by_id.setdefault(result["report_id"], []).append(result["duplicate"])
    assert by_id == {
        "BRD-TRY-2024-001-2024-01-P": [False, True],  # in order: one treaty's results stay ordered
        "BRD-TRY-2024-001-2024-01-C": [False],
        "BRD-TRY-2024-002-2024-01-P": [False],
        "BRD-TRY-2024-002-2024-02-P": [False],
    }

    dead = {header(m, H.ERROR_CLASS): m for m in collector.on(dlq)}
    assert set(dead) == {"DecodeError", "ReportConflict"}
    assert dead["DecodeError"].value() == b"{not a report"
    assert dead["ReportConflict"].value() == changed
    for msg in dead.values():
        assert header(msg, H.APP) == APP
        assert header(msg, H.ORIGINAL_TOPIC) == source


async def test_two_reinsurers_each_receive_their_own_reports_only() -> None:
    resilience = parse_resilience("endpoints:\n  reinsurer:\n    retry: {max_attempts: 1}\n")
    async with (
        SandboxServer(reinsurer=ReinsurerConfig(token=SecretStr("one-token"))) as one,
        SandboxServer(reinsurer=ReinsurerConfig(token=SecretStr("two-token"))) as two,
    ):
        settings = ReinsuranceSettings(
            reinsurers={
                "RE001": ReinsurerSettings(base_url=one.url, token=SecretStr("one-token")),
                "RE002": ReinsurerSettings(base_url=two.url, token=SecretStr("two-token")),
            }
        )
        app = build_reinsurance_app(
            settings, app_topics(), resilience=resilience, breakers=resilience.breakers()
        )
        for_two = report_bytes(treaty="TRY-2024-002", reinsurer={"code": "RE002", "name": "Surplus Re"})
        await app.start()
        try:
            (first,) = await app.process(message(report_bytes()))
            (second,) = await app.process(message(for_two, key=b"TRY-2024-002"))
        finally:
            await app.stop()
        assert one.reinsurer.accepted_by_report == {"BRD-TRY-2024-001-2024-01-P": 1}
        assert two.reinsurer.accepted_by_report == {"BRD-TRY-2024-002-2024-01-P": 1}
        assert two.reinsurer.reports["BRD-TRY-2024-002-2024-01-P"].body == for_two
    assert json.loads(first.value or b"")["status"] == "ACCEPTED"
    assert json.loads(second.value or b"")["report_id"] == "BRD-TRY-2024-002-2024-01-P"
