"""The regulatory app end to end: file jobs on a real broker → outbox → the sandbox regulator's
SFTP server → one announcement each on regulatory.reports; bad manifests to the DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from pydantic import SecretStr

from processors.apps.regulatory import RegulatoryApp, RegulatorySettings, build_regulatory_app
from processors.apps.regulatory.files import CSV_HEADER
from processors.contract import Codec, LocalSchemaIds
from processors.kafka import KafkaClients
from processors.resilience.config import EndpointPolicy, ResilienceConfig, TimeoutPolicy
from processors.resilience.retry import RetryPolicy
from processors.runtime.engine import Engine
from processors.runtime.failures import H
from processors.runtime.producer import AsyncProducer
from processors.topics.admin import apply
from processors.topics.catalogue import AppTopics, Catalogue, load_catalogue
from processors_dev.sandbox.sftp import SftpRegulator
from tests.integration.helpers import Collector, header, publish

pytestmark = pytest.mark.timeout(240)

PASSWORD = "regulator-test-password"


def regulatory_catalogue(path: Path, prefix: str, bootstrap: str) -> Catalogue:
    """The isolated catalogue with file jobs as the regulatory app's source and short retry tiers."""
    files = f"{prefix}integrations.regulatory.files"
    text = path.read_text()
    if not re.search(rf"name: {re.escape(files)}\n", text):
        text = text.replace(
            "\noutputs:\n",
            f"\noutputs:\n  - name: {files}\n    description: regulatory file jobs\n    partitions: 6\n",
            1,
        )
    head, marker, tail = text.partition("\n  regulatory:\n")
    assert marker, "topics.yaml has no regulatory app"
    tail = re.sub(r"sources: \[[^\]]*\]", f"sources: [{files}]", tail, count=1)
    tail = re.sub(r"retry_tiers: \[[^\]]*\]", "retry_tiers: [1s, 2s]", tail, count=1)
    path.write_text(head + marker + tail)
    catalogue = load_catalogue(path)
    apply({"bootstrap.servers": bootstrap}, catalogue, replication_factor=1)
    return catalogue


def file_job(day: int, *, bad_manifest: bool = False) -> tuple[bytes, bytes, bytes]:
    """(key, value, csv bytes) of a file job for 2024-01-<day>."""
    report_date = f"2024-01-{day:02d}"
    stamp = report_date.replace("-", "")
    csv_name = f"REG_INS001_{stamp}.csv"
    rows = [
        ["POLICY", f"e-{day}-1", "policy.issued", report_date, "", "POL-1", "", "PROPERTY", "US", "USD",
         "1200.00", "500000.00", "", ""],
        ["CLAIM", f"e-{day}-2", "claim.paid", report_date, "", "POL-1", "CLM-1", "PROPERTY", "US", "USD",
         "", "", "250.50", "1000.00"],
    ]  # fmt: skip
    csv_text = "".join(",".join(row) + "\r\n" for row in [list(CSV_HEADER), *rows])
    data = csv_text.encode()
    manifest = {
        "file_name": csv_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "record_count": 3 if bad_manifest else 2,
        "control_totals": {
            "USD": {"gross_premium": "1200.00", "paid_amount": "250.50", "reserve_amount": "1000.00"}
        },
        "report_date": report_date,
    }
    job = {
        "report_date": report_date,
        "file_name": csv_name,
        "manifest_name": f"REG_INS001_{stamp}.manifest.json",
        "csv": csv_text,
        "manifest": json.dumps(manifest, separators=(",", ":")),
    }
    return report_date.encode(), json.dumps(job).encode(), data


def announcement(msg: confluent_kafka.Message) -> dict[str, Any]:
    value = msg.value()
    assert value is not None
    body: dict[str, Any] = json.loads(value)
    return body


@contextlib.asynccontextmanager
async def running(app: RegulatoryApp, bootstrap: str, group: str) -> AsyncIterator[Engine]:
    kafka = KafkaClients(bootstrap)
    producer = AsyncProducer(kafka.producer())
    await producer.start()
    conf = kafka.group_consumer(
        group, key_ordered=True
    )  # key order across retry tiers, as the runner sets it
    engine = Engine(app, consumer_conf=conf, producer=producer)
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        engine.stop()
        await task
        await producer.stop()


def regulatory_app(regulator: SftpRegulator, topics: AppTopics, outbox: Path, reports: str) -> RegulatoryApp:
    """The regulatory app against the sandbox regulator, with quick in-place retries."""
    settings = RegulatorySettings.model_validate(
        {
            "outbox_dir": outbox,
            "reports_topic": reports,
            "sftp": {
                "host": regulator.host,
                "port": regulator.port,
                "password": PASSWORD,
                "known_host_key": regulator.host_key_line,
            },
        }
    )
    policy = EndpointPolicy(
        retry=RetryPolicy(max_attempts=2, initial_delay_ms=10, max_delay_ms=50),
        timeout=TimeoutPolicy(connect_timeout_s=5, read_timeout_s=10, deadline_s=30),
    )
    resilience = ResilienceConfig(defaults=policy)
    return build_regulatory_app(
        settings, topics, Codec(LocalSchemaIds()), resilience=resilience, breakers=resilience.breakers()
    )


async def test_file_jobs_end_on_the_regulators_server_and_are_announced_once(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    path, prefix = isolated_topics()
    catalogue = regulatory_catalogue(path, prefix, kafka_bootstrap)
    topics = catalogue.app("regulatory")
    source = f"{prefix}integrations.regulatory.files"
    reports = f"{prefix}regulatory.reports"
    assert topics.sources == (source,)
    tier = topics.retry_tiers[0].topic

    async with SftpRegulator(tmp_path / "regulator", password=SecretStr(PASSWORD)) as regulator:
        app = regulatory_app(regulator, topics, tmp_path / "outbox", reports)
        collector = Collector(kafka_bootstrap, [reports, topics.dlq, tier])
        try:
            async with running(app, kafka_bootstrap, f"{prefix}regulatory"):
                # A job: both files uploaded, CSV first, and one announcement.
                key, value, csv_data = file_job(15)
                publish(kafka_bootstrap, source, [], raw=[(key, value, [])])
                await collector.wait_for(lambda r: len(collector.on(reports)) == 1, timeout_s=90)
                received = regulator.received()
                assert received["REG_INS001_20240115.csv"] == csv_data
                assert "REG_INS001_20240115.manifest.json" in received
                assert [u.path for u in regulator.uploads] == [
                    "REG_INS001_20240115.csv.part",
                    "REG_INS001_20240115.manifest.json.part",
                ]
                assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
                    "REG_INS001_20240115.csv",
                    "REG_INS001_20240115.manifest.json",
                ]
                first = collector.on(reports)[0]
                assert first.key() == b"2024-01-15"
                body = announcement(first)
                assert body["sha256"] == hashlib.sha256(csv_data).hexdigest()
                assert (body["bytes"], body["record_count"]) == (len(csv_data), 2)
                assert body["already_present"] is False

                # A manifest that does not describe its CSV: dead-lettered, nothing leaves.
                key, value, _ = file_job(16, bad_manifest=True)
                publish(kafka_bootstrap, source, [], raw=[(key, value, [])])
                await collector.wait_for(lambda r: len(collector.on(topics.dlq)) == 1, timeout_s=60)
                dead = collector.on(topics.dlq)[0]
                assert header(dead, H.ERROR_CLASS) == "ManifestMismatch"
                assert "record_count is 3" in (header(dead, H.ERROR_MESSAGE) or "")
                assert not any("20240116" in name for name in regulator.received())

                # The regulator refuses connections for longer than the in-place retries last:
                # the job waits in a retry tier, then goes through.
                regulator.refuse_next(2)
                key, value, csv_17 = file_job(17)
                publish(kafka_bootstrap, source, [], raw=[(key, value, [])])
                await collector.wait_for(lambda r: len(collector.on(reports)) == 2, timeout_s=90)
                assert regulator.refused_connections == 2
                assert [header(m, H.ERROR_CLASS) for m in collector.on(tier)] == ["RetriesExhausted"]
                assert regulator.received()["REG_INS001_20240117.csv"] == csv_17

                # The first job again (a replay): found in place, nothing written, announced as such.
                writes = len(regulator.uploads)
                key, value, _ = file_job(15)
                publish(kafka_bootstrap, source, [], raw=[(key, value, [])])
                await collector.wait_for(lambda r: len(collector.on(reports)) == 3, timeout_s=60)
                assert len(regulator.uploads) == writes
                assert announcement(collector.on(reports)[2])["already_present"] is True
            collector.poll(1.0)
        finally:
            collector.close()

    announced = [(m.key(), announcement(m)["already_present"]) for m in collector.on(reports)]
    assert announced == [(b"2024-01-15", False), (b"2024-01-17", False), (b"2024-01-15", True)]
    assert len(collector.on(topics.dlq)) == 1


async def test_an_outbox_that_cannot_be_written_fails_clearly_retries_and_then_sends_the_same_files(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    """Resource limits: the staging directory cannot be written (a file stands where the directory
    should be, as a full or read-only volume would refuse it).  The job fails with the reason,
    waits in a retry tier, and once the directory is usable the same files leave."""
    path, prefix = isolated_topics()
    catalogue = regulatory_catalogue(path, prefix, kafka_bootstrap)
    topics = catalogue.app("regulatory")
    source = f"{prefix}integrations.regulatory.files"
    reports = f"{prefix}regulatory.reports"
    tiers = [tier.topic for tier in topics.retry_tiers]
    outbox = tmp_path / "outbox"
    outbox.write_bytes(b"not a directory")  # the outbox cannot be created or written

    async with SftpRegulator(tmp_path / "regulator", password=SecretStr(PASSWORD)) as regulator:
        app = regulatory_app(regulator, topics, outbox, reports)
        collector = Collector(kafka_bootstrap, [reports, topics.dlq, *tiers])
        try:
            async with running(app, kafka_bootstrap, f"{prefix}regulatory"):
                key, value, csv_data = file_job(18)
                publish(kafka_bootstrap, source, [], raw=[(key, value, [])])
                await collector.wait_for(lambda r: any(m.topic() in tiers for m in r), timeout_s=60)
                failed = next(m for m in collector.records if m.topic() in tiers)
                assert header(failed, H.ERROR_CLASS) == "OutboxUnavailable"
                assert "cannot write REG_INS001_20240118.csv" in (header(failed, H.ERROR_MESSAGE) or "")
                assert regulator.received() == {}  # nothing left while the outbox was unusable

                outbox.unlink()  # the operator frees the volume
                await collector.wait_for(lambda r: len(collector.on(reports)) == 1, timeout_s=60)
        finally:
            collector.close()

    assert regulator.received()["REG_INS001_20240118.csv"] == csv_data
    assert "REG_INS001_20240118.manifest.json" in regulator.received()
    assert (outbox / "REG_INS001_20240118.csv").read_bytes() == csv_data
    assert collector.on(topics.dlq) == []
    assert announcement(collector.on(reports)[0])["sha256"] == hashlib.sha256(csv_data).hexdigest()
