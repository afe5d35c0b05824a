"""Bordereaux aggregation throughput against a consume-and-decode ceiling, and restore time.

    python -m bench.bench_bordereaux [--events 50000] [--entries 1000000]

1. The ceiling: one consumer reads the generated policy and claim events and decodes each
   with the project's codec, doing nothing else (best of three runs).
2. The app: the exactly-once bordereaux topology (route, ledger, assemble, each step a Kafka
   transaction) over the same events, from the first record to the last report.
   Prints events/s of both and their **ratio** (target ≥ 0.5).
3. The plumbing alone, for comparison: the same exactly-once path with no aggregation (the
   app's own route stage re-keys by policy; a second transactional stage decodes each event
   with the codec and writes one changelog entry per event, as the smallest de-duplicating
   state would).  The app's ratio against it shows what aggregation costs on top of
   exactly-once, separately from what exactly-once costs on top of consume-and-decode.
4. Restore: 1,000,000 entries written to a changelog partition, then read back into a store
   the way a newly assigned partition is restored. Prints the seconds and entries/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import broker, isolated_catalogue
from processors.bordereaux.topology import BordereauxTopics, RouteTask, build_loop
from processors.bordereaux.treaties import load_treaty_book
from processors.contract import Codec, LocalSchemaIds
from processors.streams.loop import Emitter, StageSpec, TransactionalLoop
from processors.streams.store import ChangelogStore, restore
from tests.bordereaux_oracle import generate
from tests.integration.bordereaux_helpers import BOOK, publish_in_order, reference_reports

CODEC = Codec(LocalSchemaIds())


def ceiling_rate(bootstrap: str, topics: list[str], total: int) -> float:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ceiling-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    consumer.subscribe(topics)
    seen = 0
    started: float | None = None
    while seen < total:
        for msg in consumer.consume(2_000, 1.0):
            if msg.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            CODEC.decode(msg.value(), msg.headers())
            seen += 1
    assert started is not None
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def app_rate(bootstrap: str, prefix: str, total: int, want_reports: int, batch_size: int) -> float:
    topics = BordereauxTopics.with_prefix(prefix)
    loop = build_loop(
        bootstrap_servers=bootstrap,
        group_id=f"{prefix}bordereaux",
        instance_id="bench",
        book=load_treaty_book(BOOK),
        codec=CODEC,
        topics=topics,
        batch_size=batch_size,
    )
    reader = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reports-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    reader.subscribe([topics.bordereaux])
    reports = [0]

    def all_reports_in() -> bool:
        reports[0] += sum(1 for m in reader.consume(500, 0.2) if m.error() is None)
        return reports[0] >= want_reports

    try:
        return _measure("app", loop, all_reports_in, total)
    finally:
        reader.close()


def _measure(name: str, loop: TransactionalLoop, finished: Callable[[], bool], total: int) -> float:
    """Run ``loop`` in a thread until ``finished()``; events/s from its first record, like the ceiling."""
    stop = threading.Event()
    started = time.perf_counter()
    cpu_started = time.process_time()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    while not finished():
        if not thread.is_alive():
            raise SystemExit(f"the {name} loop stopped")
    ended = time.perf_counter()
    cpu = time.process_time() - cpu_started
    stop.set()
    thread.join(60)
    first = loop.stats.first_step_perf
    assert first is not None
    elapsed = ended - first
    print(
        f"{name}: {elapsed:.1f} s wall from its first record ({first - started:.1f} s start-up before it), "
        f"{cpu:.1f} s CPU in this process ({loop.stats.transactions} transactions, {loop.stats.records} records)"
    )
    return total / elapsed


class _DecodeAndKeep:
    """The plumbing's second stage: decode each routed event and keep its id (no aggregation)."""

    def __init__(self, store: ChangelogStore | None, seen: list[int], done: threading.Event, total: int):
        assert store is not None
        self._store = store
        self._seen = seen
        self._done = done
        self._total = total

    def process(self, msg: Any) -> None:
        if dict(msg.headers() or ()).get("x-record") != b"event":
            return  # the route stage's watermark records
        event = CODEC.decode(msg.value(), msg.headers())
        self._store.put(str(event.event_id), b"1")
        self._seen[0] += 1
        if self._seen[0] >= self._total:
            self._done.set()

    def end_batch(self) -> None:
        return None


def plumbing_rate(bootstrap: str, source_prefix: str, total: int, batch_size: int) -> float:
    """Events/s through the app's exactly-once path with the aggregation taken out."""
    with TemporaryDirectory() as tmp:
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
    topics = dataclasses.replace(
        BordereauxTopics.with_prefix(prefix),
        policy_events=f"{source_prefix}insurance.policy.events",
        claim_events=f"{source_prefix}insurance.claim.events",
    )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=15)
    by_policy_partitions = len(metadata.topics[topics.by_policy].partitions)
    seen = [0]
    done = threading.Event()

    def route(topic: str, partition: int, store: ChangelogStore | None, out: Emitter) -> RouteTask:
        return RouteTask(
            topic,
            partition,
            store,
            out,
            codec=CODEC,
            topics=topics,
            by_policy_partitions=by_policy_partitions,
        )

    loop = TransactionalLoop(
        app="plumbing",
        stages=[
            StageSpec(
                name="route",
                topics=(topics.policy_events, topics.claim_events),
                changelog=topics.route_changelog,
                key_filter=lambda topic, partition: lambda key, s=f"{topic}:{partition}": key == s,
                make_task=route,
            ),
            StageSpec(
                name="decode-and-keep",
                topics=(topics.by_policy,),
                changelog=topics.ledger_changelog,
                make_task=lambda topic, partition, store, out: _DecodeAndKeep(store, seen, done, total),
            ),
        ],
        consumer_conf={
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}plumbing",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.max.bytes": 64 * 1024 * 1024,
        },
        producer_conf={
            "bootstrap.servers": bootstrap,
            "transactional.id": f"{prefix}plumbing.bench",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
        },
        dlq_topic=topics.dlq,
        batch_size=batch_size,
    )
    return _measure("plumbing", loop, lambda: done.wait(0.2), total)


def restore_time(bootstrap: str, entries: int) -> tuple[float, int]:
    topic = f"bench-restore-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])[topic].result()
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "lz4", "acks": "all"}
    )
    value = json.dumps(
        {"policy": "INS-2024-000000", "gross_premium": "1234.56", "share": "0.7000000000"}
    ).encode()
    for i in range(entries):
        while True:
            try:
                producer.produce(
                    topic, key=f"r|TRY-2024-001|2024-03|{i:012d}".encode(), value=value, partition=0
                )
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "restore-unused",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    store = ChangelogStore(topic, 0)
    stats = restore(consumer, [store])
    consumer.close()
    return stats.seconds, len(store)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-size", type=int, default=2_000, help="records per transaction (the app's default)"
    )
    args = parser.parse_args()
    published = generate(7, args.events)
    want_reports, _ = reference_reports(published)
    with broker() as info, TemporaryDirectory() as tmp:
        bootstrap = info.bootstrap_servers
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
        publish_in_order(bootstrap, prefix, published)
        sources = [f"{prefix}insurance.policy.events", f"{prefix}insurance.claim.events"]
        # The ceiling is cheap to measure again: the best of three (this machine is noisy).
        ceilings = [ceiling_rate(bootstrap, sources, len(published)) for _ in range(3)]
        ceiling = max(ceilings)
        print("ceiling runs: " + ", ".join(f"{c:,.0f}" for c in ceilings) + " events/s")
        rate = app_rate(bootstrap, prefix, len(published), len(want_reports), args.batch_size)
        print(f"events: {len(published)}, reports: {len(want_reports)}")
        print(f"ceiling (consume + decode): {ceiling:,.0f} events/s")
        print(f"bordereaux app (exactly-once, 3 stages): {rate:,.0f} events/s")
        print(f"ratio: {rate / ceiling:.2f} (target >= 0.5)")
        plumbing = plumbing_rate(bootstrap, prefix, len(published), args.batch_size)
        print(f"plumbing alone (the same exactly-once hops, no aggregation): {plumbing:,.0f} events/s")
        print(f"plumbing vs ceiling: {plumbing / ceiling:.2f}; app vs plumbing: {rate / plumbing:.2f}")
        seconds, restored = restore_time(bootstrap, args.entries)
        print(f"restore: {restored:,} entries in {seconds:.2f} s ({restored / seconds:,.0f} entries/s)")


if __name__ == "__main__":
    main()
