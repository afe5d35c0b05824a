"""The portal's query store built from a real Apache Kafka: projection, rebuild, a SIGKILL mid-stream.

The records are written with the product's own stores, models and encoders
(:mod:`tests.portal_samples`): partners and subscriptions through the registry's and the
webhooks app's compacted-topic stores, delivery-log lines as the webhooks app writes them, a
bordereau in a committed Kafka transaction (and another in an aborted one, which must never
appear) and its delivery results.  The crash test runs ``processors portal project`` as a
child process, on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import psycopg
import pytest

from processors.cli import main
from processors.kafka import KafkaClients
from processors.partners.store import PartnerStore
from processors.portal.projector import PortalTopics, Projector
from processors.portal.store import PortalStore, PortalStoreError, parse_database_url
from processors.topics.catalogue import load_catalogue
from processors.webhooks.store import SubscriptionStore
from tests import portal_samples as samples
from tests.integration.helpers import start_processor
from tests.portal_stores import new_database_url as new_database_url
from tests.postgres import PostgresServer, database
from tests.postgres import pg as pg

DELIVERY_LINES = 20_000


def _producer(bootstrap: str) -> confluent_kafka.Producer:
    return confluent_kafka.Producer(KafkaClients(bootstrap).producer(linger_ms=20))


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | str | None, bytes | None]]) -> None:
    producer = _producer(bootstrap)
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(60) == 0


def _transaction(bootstrap: str, topic: str, key: str, value: bytes, *, commit: bool) -> None:
    """A record in a Kafka transaction, as the bordereaux app writes reports."""
    producer = confluent_kafka.Producer(
        KafkaClients(bootstrap).transactional(f"portal-test-{uuid.uuid4().hex}")
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


async def _registry(bootstrap: str, topics: PortalTopics) -> dict[str, Any]:
    """Partners and subscriptions written through the product's own stores."""
    reinsurer, broker, gone = (
        samples.partner(),
        samples.partner("Acme Brokers", "broker", distributor_code="D-1001"),
        samples.partner("Gone Ltd", "other"),
    )
    async with PartnerStore(bootstrap, topics.partners) as partners:
        for entry in (reinsurer, broker, gone, samples.api_key(reinsurer.id)):
            await partners.put(entry)
        await partners.write(gone.id, None)  # a tombstone
    sub_r, sub_b, sub_old = (
        samples.subscription(reinsurer.id),
        samples.subscription(broker.id),
        samples.subscription(broker.id),
    )
    async with SubscriptionStore(bootstrap, topics.subscriptions) as subscriptions:
        for sub in (sub_r, sub_b, sub_old):
            await subscriptions.put(sub)
        await subscriptions.delete(sub_old.id)
    return {
        "reinsurer": reinsurer,
        "broker": broker,
        "gone": gone,
        "sub_r": sub_r,
        "sub_b": sub_b,
        "sub_old": sub_old,
    }


def _rebuild(database_url: str, bootstrap: str, topics_file: Path) -> int:
    """Runs ``processors portal rebuild --json`` into ``database_url``; its exit code."""
    return main(
        [
            "portal",
            "rebuild",
            "--database-url",
            database_url,
            "--bootstrap-servers",
            bootstrap,
            "--topics-file",
            str(topics_file),
            "--json",
        ]
    )


async def test_the_projector_and_a_rebuild_make_the_same_store(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    pg: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics_file, _ = isolated_topics()
    topics = PortalTopics.from_catalogue(load_catalogue(topics_file))
    made = await _registry(kafka_bootstrap, topics)
    sub_r, sub_b, sub_old = made["sub_r"], made["sub_b"], made["sub_old"]
    lines: list[tuple[bytes | str | None, bytes | None]] = [
        (sub.id, samples.delivery_line(sub.id, n, status="failed" if n % 4 == 0 else "delivered"))
        for n, sub in enumerate([sub_r, sub_b, sub_old] * 10)
    ]
    lines.append((sub_r.id, b"SECRET-CONTENT is not a delivery line"))
    _produce(kafka_bootstrap, topics.deliveries, lines)
    report = samples.premium_bordereau()
    _transaction(kafka_bootstrap, topics.bordereaux, samples.TREATY, report, commit=True)
    _transaction(
        kafka_bootstrap, topics.bordereaux, samples.TREATY, samples.premium_bordereau("2024-04"), commit=False
    )
    _produce(
        kafka_bootstrap,
        topics.bordereau_deliveries,
        [
            (samples.TREATY, samples.accepted(samples.report_id())),
            (samples.TREATY, samples.accepted(samples.report_id(), duplicate=True)),
        ],
    )

    live = PortalStore(f"sqlite:///{tmp_path / 'live.db'}")
    projector = Projector(KafkaClients(kafka_bootstrap), topics, live, batch_size=7)
    await projector.start()
    try:
        assert await projector.wait_caught_up(90)
        snapshot = live.snapshot()
    finally:
        await projector.stop()

    reinsurer, broker = made["reinsurer"], made["broker"]
    assert [p["id"] for p in snapshot["partners"]] == sorted([reinsurer.id, broker.id])  # "gone" was deleted
    assert {s["id"] for s in snapshot["subscriptions"]} == {sub_r.id, sub_b.id}
    assert all("hunter22" not in s["url"] for s in snapshot["subscriptions"])
    deliveries = snapshot["deliveries"]
    assert len(deliveries) == 30
    assert len({(d["log_partition"], d["log_offset"]) for d in deliveries}) == 30
    assert {d["subscription_id"]: d["partner_id"] for d in deliveries} == {
        sub_r.id: reinsurer.id,
        sub_b.id: broker.id,
        sub_old.id: broker.id,  # deleted since: its history stays the broker's
    }
    assert sum(d["status"] == "failed" for d in deliveries) == 8
    (stored_report,) = snapshot["bordereaux"]  # the aborted transaction's report never appears
    assert stored_report["report_id"] == samples.report_id()
    assert stored_report["reinsurer_key"] == "RE001"
    assert str(stored_report["ceded_total"]) == samples.settled_ceded_premium(report)
    assert [d["duplicate"] for d in snapshot["bordereau_deliveries"]] == [False, True]
    assert projector.stats.skipped == {topics.deliveries: 1}
    assert projector.stats.ignored == {topics.partners: 1}

    with database(pg) as rebuilt_url:
        code = _rebuild(rebuilt_url, kafka_bootstrap, topics_file)
        assert code == 0
        counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (counts["partners"], counts["deliveries"], counts["bordereaux"], counts["skipped"]) == (
            2,
            30,
            1,
            1,
        )
        rebuilt = PortalStore(rebuilt_url)
        try:
            assert rebuilt.snapshot() == snapshot  # row for row: SQLite followed live, PostgreSQL rebuilt
        finally:
            rebuilt.close()
    live.close()


# --- the crash test -----------------------------------------------------------------------------


def _progress(url: str, topic: str) -> int:
    """Delivery-log records the store holds, by its stored offsets (0 before the schema exists)."""
    store = PortalStore(url)
    try:
        return sum(offset for (name, _), offset in store.offsets().items() if name == topic)
    except PortalStoreError:
        return 0
    finally:
        store.close()


def _await(
    condition: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the projector exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


@contextlib.contextmanager
def _writes_held(url: str) -> Iterator[Callable[[], dict[tuple[str, int], int]]]:
    """Hold the store's write lock (the projector's next transaction waits on it); yields a
    reader of the offsets the store holds meanwhile.  Released (rolled back) on exit."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")

        def offsets() -> dict[tuple[str, int], int]:
            return {
                (t, p): o
                for t, p, o in conn.execute("SELECT topic, kafka_partition, next_offset FROM offsets")
            }

        try:
            yield offsets
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    server_url = parse_database_url(url)
    pg_conn = psycopg.connect(
        host=server_url.query["host"],
        port=int(str(server_url.query["port"])),
        user="postgres",
        dbname=server_url.database,
    )
    # the projector writes its rows, then waits for this lock to write its offsets
    pg_conn.execute("LOCK TABLE offsets IN SHARE MODE")

    def pg_offsets() -> dict[tuple[str, int], int]:
        return {
            (t, p): o
            for t, p, o in pg_conn.execute("SELECT topic, kafka_partition, next_offset FROM offsets")
        }

    try:
        yield pg_offsets
    finally:
        pg_conn.rollback()
        pg_conn.close()


def test_a_projector_killed_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    new_database_url: Callable[[str], str],
) -> None:
    topics_file, _ = isolated_topics()
    topics = PortalTopics.from_catalogue(load_catalogue(topics_file))
    partner = samples.partner()
    subs = [samples.subscription(partner.id) for _ in range(6)]
    _produce(kafka_bootstrap, topics.partners, [(partner.id, partner.to_record())])
    _produce(kafka_bootstrap, topics.subscriptions, [(sub.id, sub.to_record()) for sub in subs])
    _produce(
        kafka_bootstrap,
        topics.deliveries,
        [(subs[n % 6].id, samples.delivery_line(subs[n % 6].id, n)) for n in range(DELIVERY_LINES)],
    )
    url = new_database_url("crash")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PROCESSORS_TOPICS_FILE": str(topics_file),
        "PROCESSORS_PORTAL__DATABASE_URL": url,
        "PROCESSORS_PORTAL__BATCH_SIZE": "50",
    }
    log = tmp_path / "projector.log"

    first = start_processor(env, "portal", "project", log_path=log)
    try:
        # a quarter of the backlog in the store: the projector is busy applying the rest
        _await(
            lambda: _progress(url, topics.deliveries) >= DELIVERY_LINES // 4,
            120,
            "stored progress",
            first,
            log,
        )
        with _writes_held(url) as held_offsets:
            # the projector now waits inside a batch: read (on PostgreSQL also written), not committed
            at_kill = sum(o for (t, _), o in held_offsets().items() if t == topics.deliveries)
            assert DELIVERY_LINES // 4 <= at_kill < DELIVERY_LINES
            first.send_signal(signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    assert _progress(url, topics.deliveries) == at_kill  # the batch in flight left nothing behind
    store = PortalStore(url)
    try:
        assert store.counts()["deliveries"] == at_kill
    finally:
        store.close()

    first_run_log = len(log.read_bytes())
    second = start_processor(env, "portal", "project", log_path=log)
    try:
        _await(
            lambda: _progress(url, topics.deliveries) == DELIVERY_LINES,
            300,
            "the end of the log",
            second,
            log,
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        if second.poll() is None:
            second.kill()
    # the second run started where the first one's last commit left each partition
    # a topic the cluster reports late is assigned by a later step, on a line of its own
    second_run = log.read_bytes()[first_run_log:].decode()
    reading = [line for line in second_run.splitlines() if "portal projector: reading" in line]
    starts = re.findall(re.escape(topics.deliveries) + r"\[(\d+)\]@(\w+)", "\n".join(reading))
    assert len(starts) == 6
    assert sum(int(at) for _, at in starts if at != "beginning") == at_kill

    store = PortalStore(url)
    try:
        snapshot = store.snapshot()
    finally:
        store.close()
    deliveries = snapshot["deliveries"]
    assert len(deliveries) == DELIVERY_LINES
    assert len({d["webhook_id"] for d in deliveries}) == DELIVERY_LINES  # each line exactly once
    assert {d["partner_id"] for d in deliveries} == {partner.id}

    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _rebuild(rebuilt_url, kafka_bootstrap, topics_file)
    assert code == 0
    assert json.loads(out.getvalue())["deliveries"] == DELIVERY_LINES
    rebuilt = PortalStore(rebuilt_url)
    try:
        assert rebuilt.snapshot() == snapshot
    finally:
        rebuilt.close()
