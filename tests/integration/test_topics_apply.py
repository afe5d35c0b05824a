"""``topics apply`` and ``check`` against a real Kafka broker.

Every test writes its own small catalogue whose topic names carry a unique prefix, so runs
never collide on a shared cluster; the topics are deleted afterwards.
"""

from __future__ import annotations

import argparse
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from processors.errors import ConfigError
from processors.topics.admin import Change, apply, check, plan, survey
from processors.topics.catalogue import Catalogue, load_catalogue
from processors.topics.cli import register_cli

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def eventually(probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float = 30.0) -> T:
    """Poll ``probe`` until ``accept`` holds (the broker applies some changes asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def client(conf: Mapping[str, str]) -> AdminClient:
    settings: dict[str, str | int | float | bool] = dict(conf)
    return AdminClient(settings)


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"tt{uuid.uuid4().hex[:10]}"
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result()


@pytest.fixture
def conf(kafka_bootstrap: str) -> dict[str, str]:
    return {"bootstrap.servers": kafka_bootstrap}


def write(tmp_path: Path, prefix: str, *, partitions: int = 3, retention: str = "7d") -> Catalogue:
    text = f"""\
defaults:
  partitions: 2
  replication_factor: 3
  min_insync_replicas: 2
naming:
  retry: {prefix}.{{app}}.retry.{{index}}-{{delay}}
  dlq: {prefix}.{{app}}.dlq
  parked: {prefix}.{{app}}.parked
inputs:
  - name: {prefix}.events
    description: the input
    partitions: {partitions}
    retention: {retention}
state:
  - name: {prefix}.table
    description: a compacted table
    cleanup_policy: compact
    config:
      min.cleanable.dirty.ratio: 0.2
apps:
  app:
    sources: [{prefix}.events]
    retry_tiers: [5s, 1m]
"""
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    return load_catalogue(path)


def describe(conf: dict[str, str], topic: str) -> tuple[int, dict[str, str]]:
    admin = client(conf)
    partitions = len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    entries = next(iter(futures.values())).result(timeout=10)
    return partitions, {k: e.value for k, e in entries.items()}


def test_apply_creates_every_topic_and_a_second_apply_changes_nothing(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    catalogue = write(tmp_path, prefix)
    planned = plan(conf, catalogue, replication_factor=1)
    assert {(c.topic, c.action) for c in planned} == {(t.name, "create") for t in catalogue.topics}

    changes = apply(conf, catalogue, replication_factor=1)

    assert changes == planned
    assert apply(conf, catalogue, replication_factor=1) == []
    assert check(conf, catalogue, replication_factor=1) == []
    partitions, config = describe(conf, f"{prefix}.events")
    assert partitions == 3
    assert config["retention.ms"] == "604800000"
    assert config["cleanup.policy"] == "delete"
    table_partitions, table = describe(conf, f"{prefix}.table")
    assert (table_partitions, table["cleanup.policy"]) == (2, "compact")
    assert table["min.cleanable.dirty.ratio"] == "0.2"
    dlq_partitions, _ = describe(conf, f"{prefix}.app.dlq")
    assert dlq_partitions == 3  # follows the widest source


def test_new_topics_accept_records_as_soon_as_apply_returns(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    catalogue = write(tmp_path, prefix)
    apply(conf, catalogue, replication_factor=1)
    errors: list[KafkaError | None] = []
    producer = Producer({**conf, "acks": "all", "message.timeout.ms": 10_000})
    for topic in (t.name for t in catalogue.topics):
        producer.produce(topic, key=b"k", value=b"v", on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(15) == 0
    assert errors == [None] * len(catalogue.topics)


def test_a_config_changed_out_of_band_is_drift_and_apply_restores_it(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    catalogue = write(tmp_path, prefix)
    apply(conf, catalogue, replication_factor=1)
    topic = f"{prefix}.events"
    entry = ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
    admin = client(conf)
    for future in admin.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])]
    ).values():
        future.result(timeout=10)

    drift = eventually(lambda: check(conf, catalogue, replication_factor=1), bool)

    assert [(d.topic, d.problem, d.fixable) for d in drift] == [
        (topic, "config differs: retention.ms: 3600000 → 604800000", True)
    ]
    assert apply(conf, catalogue, replication_factor=1) == [
        Change(topic, "alter_config", "retention.ms: 3600000 → 604800000")
    ]
    assert check(conf, catalogue, replication_factor=1) == []
    assert describe(conf, topic)[1]["retention.ms"] == "604800000"


def test_a_changed_retention_in_the_file_is_applied(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    apply(conf, write(tmp_path, prefix), replication_factor=1)
    catalogue = write(tmp_path, prefix, retention="12h")
    changes = apply(conf, catalogue, replication_factor=1)
    assert changes == [Change(f"{prefix}.events", "alter_config", "retention.ms: 604800000 → 43200000")]
    assert check(conf, catalogue, replication_factor=1) == []


def test_more_partitions_in_the_file_are_added(tmp_path: Path, prefix: str, conf: dict[str, str]) -> None:
    apply(conf, write(tmp_path, prefix, partitions=3), replication_factor=1)
    catalogue = write(tmp_path, prefix, partitions=5)

    changes = apply(conf, catalogue, replication_factor=1)

    grown = {c.topic for c in changes if c.action == "add_partitions"}
    # the input, and the retry tiers and DLQ that follow its width (parked follows the DLQ)
    assert grown == {
        f"{prefix}.events",
        f"{prefix}.app.retry.0-5s",
        f"{prefix}.app.retry.1-1m",
        f"{prefix}.app.dlq",
        f"{prefix}.app.parked",
    }
    assert all(c.detail == "3 → 5 partitions" for c in changes)
    assert describe(conf, f"{prefix}.events")[0] == 5
    assert check(conf, catalogue, replication_factor=1) == []


def test_fewer_partitions_in_the_file_are_reported_and_not_applied(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    apply(conf, write(tmp_path, prefix, partitions=3), replication_factor=1)
    catalogue = write(tmp_path, prefix, partitions=2)

    drift = check(conf, catalogue, replication_factor=1)
    changes = apply(conf, catalogue, replication_factor=1)

    events = [d for d in drift if d.topic == f"{prefix}.events"]
    assert len(events) == 1
    assert not events[0].fixable
    assert "has 3 partitions, catalogue says 2" in events[0].problem
    assert changes == []
    assert describe(conf, f"{prefix}.events")[0] == 3


def test_topics_outside_the_catalogue_are_listed_but_are_not_drift(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    catalogue = write(tmp_path, prefix)
    apply(conf, catalogue, replication_factor=1)
    stray = f"{prefix}.stray"
    admin = client(conf)  # keep the client alive until its futures resolve
    for future in admin.create_topics([NewTopic(stray, 1, 1)]).values():
        future.result(timeout=10)

    report = eventually(lambda: survey(conf, catalogue, replication_factor=1), lambda r: stray in r.unmanaged)

    assert stray in report.unmanaged
    assert report.drift == ()
    assert report.changes == ()


def test_a_replication_factor_above_the_broker_count_is_refused(
    tmp_path: Path, prefix: str, conf: dict[str, str]
) -> None:
    catalogue = write(tmp_path, prefix)
    brokers = len(client(conf).list_topics(timeout=10).brokers)
    with pytest.raises(
        ConfigError, match=r"replication factor \d+ exceeds the \d+ live broker.*--replication-factor"
    ):
        apply(conf, catalogue, replication_factor=brokers + 1)
    assert not [t for t in client(conf).list_topics(timeout=10).topics if t.startswith(prefix)]


def test_the_real_catalogue_applies_cleanly(tmp_path: Path, prefix: str, conf: dict[str, str]) -> None:
    # the real file, every topic name (declared and generated) under a unique prefix
    text = (ROOT / "topics.yaml").read_text()
    text = re.sub(r"(?<![\w.])(insurance|integrations|reinsurance|regulatory)\.", prefix + r".\1.", text)
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    catalogue = load_catalogue(path)
    assert all(t.name.startswith(prefix) for t in catalogue.topics)

    changes = apply(conf, catalogue, replication_factor=1, timeout_s=60)

    assert len(changes) == len(catalogue.topics) == 59
    assert apply(conf, catalogue, replication_factor=1) == []
    assert check(conf, catalogue, replication_factor=1) == []
    _, subscriptions = describe(conf, f"{prefix}.integrations.webhook.subscriptions")
    assert subscriptions["cleanup.policy"] == "compact"
    _, audit = describe(conf, f"{prefix}.integrations.audit")
    assert audit["compression.type"] == "lz4"


def test_the_cli_applies_then_reports_in_sync(
    tmp_path: Path, prefix: str, conf: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, prefix)
    path = str(tmp_path / "topics.yaml")
    broker = ["--bootstrap-servers", conf["bootstrap.servers"], "--replication-factor", "1", "--file", path]

    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="processors")
        register_cli(parser.add_subparsers(dest="command", required=True))
        args: Any = parser.parse_args(["topics", *argv, *broker])
        code = int(args.func(args))
        return code, capsys.readouterr().out

    code, out = run("apply", "--dry-run")
    assert code == 0
    assert f"would create          {prefix}.events" in out
    code, out = run("check")
    assert code == 1
    assert f"drift: {prefix}.events: missing (apply creates it)" in out
    code, out = run("apply")
    assert code == 0
    assert f"create          {prefix}.events" in out
    code, out = run("apply")
    assert (code, out) == (0, "no changes\n")
    code, out = run("check")
    assert code == 0
    assert "in sync: 6 topics" in out
