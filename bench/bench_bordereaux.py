"""Bordereaux aggregation throughput against a consume-and-decode ceiling, and restore time.

    python bench/bench_bordereaux.py [--events 50000] [--entries 1000000] [--rounds 3] [--json F]

The generated policy and claim events are published once; four stages then read them, run
interleaved after a warm-up (medians of ``--rounds`` runs each, see ``bench/harness.py``):

* ``ceiling``: one consumer (a fresh group each run) reads the events and decodes each with the
  project's codec, doing nothing else;
* ``plumbing``: the app's exactly-once path with no aggregation (the app's own route stage
  re-keys by policy; a second transactional stage decodes each event with the codec and writes
  one changelog entry per event, as the smallest de-duplicating state would);
* ``plumbing-floor``: the same two stages with the same guarantees (one consumer, one
  transactional producer, one transaction per fetched batch with its offsets, the same records
  and changelog entries), hand-written on confluent_kafka and doing nothing else: the floor of
  ``plumbing`` (``bench/floor_bordereaux.py``);
* ``app``: the exactly-once bordereaux topology (route, ledger, assemble, each step a Kafka
  transaction) over the same events.

Every run of ``plumbing``, ``plumbing-floor`` and ``app`` writes to a fresh, isolated set of topics (a new prefix,
a new group, empty changelogs), so each run does the same work.  Each is timed — wall and
process CPU — from its first record to its last output (the last report, for the app); the
start-up before its first record is printed but not counted.  One unit is one event.

Ratios: plumbing against the ceiling (what exactly-once costs on top of consume-and-decode,
target ≥ 0.60), plumbing against its floor (how close the product's exactly-once path is to
the cheapest code with the same guarantees, target ≥ 0.90: where plumbing/ceiling misses its
target, this says whether the product or the guarantees cost it), the app against the plumbing
(what aggregation costs on top of exactly-once, target ≥ 0.60), and the app against the
ceiling.

Restore: ``--entries`` changelog entries written once to a partition after the stages, then
read back in two stages interleaved in rounds of their own:

* ``restore``: the product's :func:`~processors.streams.store.restore` into a fresh store, with
  the consumer the exactly-once loop builds for it;
* ``restore-floor``: the same consumer read to the end into a dict, doing nothing else.

Both run under the collector thresholds the exactly-once loop holds while it restores
(``processors.runtime.collector``; under the interpreter's defaults this process's heap, which
holds the published events, doubles the time of both).  ``restore_1m_s`` is the median time of
``restore`` for 1,000,000 entries (target ≤ 4 s); ``restore/restore-floor`` is how close the
product's restore is to its floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import confluent_kafka
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import broker, isolated_catalogue
from bench.floor_bordereaux import CODEC, plumbing_floor_run, reading
from bench.harness import Comparison, Report, Run, Stopwatch, interleaved, json_argument
from processors.bordereaux.topology import BordereauxTopics, RouteTask, build_loop
from processors.bordereaux.treaties import load_treaty_book
from processors.kafka import KafkaClients
from processors.streams.loop import Emitter, LoopStats, StageSpec, TransactionalLoop
from processors.streams.store import ChangelogStore, restore
from tests.bordereaux_oracle import generate
from tests.integration.bordereaux_helpers import BOOK, publish_in_order, reference_reports

RESTORE_SCALE = 1_000_000
"""``restore_1m_s`` is the restore time of this many entries."""


def ceiling_run(bootstrap: str, topics: list[str], total: int) -> Run:
    """Consume and decode every event with a fresh group, timed from the first record."""
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
    try:
        consumer.subscribe(topics)
        seen = 0
        watch: Stopwatch | None = None
        while seen < total:
            # Never ask for more than is left: the last call would wait out its timeout.
            for msg in consumer.consume(min(2_000, total - seen), 1.0):
                if msg.error() is not None:
                    continue
                if watch is None:
                    watch = Stopwatch()
                CODEC.decode(msg.value(), msg.headers())
                seen += 1
        assert watch is not None
        return watch.stop(seen)
    finally:
        consumer.close()


class _ClockedStats(LoopStats):
    """The loop's stats, starting ``watch`` when the loop stamps its first record."""

    def __init__(self, watch: Stopwatch) -> None:
        super().__init__()
        object.__setattr__(self, "_watch", watch)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "first_step_perf" and value is not None:
            self._watch.start()


def _measure(name: str, loop: TransactionalLoop, finished: Callable[[], bool], total: int) -> Run:
    """Run ``loop`` in a thread until ``finished()``, timed (wall and CPU) from its first record."""
    watch = Stopwatch()  # started again when the loop stamps its first record
    loop.stats = _ClockedStats(watch)
    stop = threading.Event()
    launched = time.perf_counter()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        while not finished():
            if not thread.is_alive():
                raise RuntimeError(f"the {name} loop stopped")
        run = watch.stop(total)
    finally:
        stop.set()
        thread.join(60)
    first = loop.stats.first_step_perf
    assert first is not None
    print(
        f"  {name}: start-up {first - launched:.1f} s before its first record (not counted); "
        f"{loop.stats.transactions} transactions, {loop.stats.records} records"
    )
    return run


def app_run(bootstrap: str, source_prefix: str, total: int, want_reports: int, batch_size: int) -> Run:
    """The bordereaux topology over the published events, into fresh topics of its own."""
    with TemporaryDirectory() as tmp:
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
    topics = reading(BordereauxTopics.with_prefix(prefix), source_prefix)
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


def plumbing_run(bootstrap: str, source_prefix: str, total: int, batch_size: int) -> Run:
    """The app's exactly-once path with the aggregation taken out, into fresh topics of its own."""
    with TemporaryDirectory() as tmp:
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
    topics = reading(BordereauxTopics.with_prefix(prefix), source_prefix)
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


def write_changelog(bootstrap: str, entries: int) -> str:
    """A compacted one-partition changelog of ``entries`` distinct keys (row-sized values)."""
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
    return topic


def _restore_consumer(bootstrap: str) -> Any:
    """The product's restore consumer, as the bordereaux loop builds it from its group consumer."""
    kafka = KafkaClients(bootstrap)
    return confluent_kafka.Consumer(
        KafkaClients.restorer_of(kafka.group_consumer("bench-restore", max_fetch_bytes=64 * 1024 * 1024))
    )


def restore_run(bootstrap: str, topic: str, entries: int) -> Run:
    """The product's :func:`restore` of the whole changelog into a fresh store."""
    consumer = _restore_consumer(bootstrap)
    store = ChangelogStore(topic, 0)
    watch = Stopwatch()
    restore(consumer, [store])
    run = watch.stop(len(store))
    consumer.close()
    if len(store) != entries:
        raise AssertionError(f"restore: {len(store):,} entries of {entries:,}")
    return run


def restore_floor_run(bootstrap: str, topic: str, entries: int) -> Run:
    """The stripped restore: the same consumer read to the partition's last stable offset into
    a dict of text keys, tombstones honoured, nothing else (no deadline, no positions kept, no
    stores sharing a partition, no retry of a missing leader)."""
    consumer = _restore_consumer(bootstrap)
    store: dict[str, bytes] = {}
    tp = TopicPartition(topic, 0)
    watch = Stopwatch()
    _, end = consumer.get_watermark_offsets(tp, 10, False)
    consumer.assign([TopicPartition(topic, 0, 0)])
    position = 0
    while position < end:
        for msg in consumer.consume(10_000, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"restore floor: {err}")
            key = msg.key().decode()
            value = msg.value()
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        position = consumer.position([tp])[0].offset
    run = watch.stop(len(store))
    consumer.unassign()
    consumer.close()
    if len(store) != entries:
        raise AssertionError(f"restore floor: {len(store):,} entries of {entries:,}")
    return run


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--entries", type=int, default=1_000_000, help="changelog entries to restore")
    parser.add_argument(
        "--batch-size", type=int, default=10_000, help="records per transaction (the app's default)"
    )
    json_argument(parser)
    args = parser.parse_args()
    published = generate(7, args.events)
    want_reports, _ = reference_reports(published)
    total = len(published)
    with broker() as info, TemporaryDirectory() as tmp:
        bootstrap = info.bootstrap_servers
        _, _, prefix = isolated_catalogue(bootstrap, Path(tmp))
        publish_in_order(bootstrap, prefix, published)
        sources = [f"{prefix}insurance.policy.events", f"{prefix}insurance.claim.events"]
        print(f"events: {total}, reports expected: {len(want_reports)}")
        runs = await interleaved(
            {
                "ceiling": lambda: asyncio.to_thread(ceiling_run, bootstrap, sources, total),
                "plumbing": lambda: asyncio.to_thread(
                    plumbing_run, bootstrap, prefix, total, args.batch_size
                ),
                "plumbing-floor": lambda: asyncio.to_thread(
                    plumbing_floor_run, bootstrap, prefix, total, args.batch_size
                ),
                "app": lambda: asyncio.to_thread(
                    app_run, bootstrap, prefix, total, len(want_reports), args.batch_size
                ),
            },
            rounds=args.rounds,
        )
        topic = await asyncio.to_thread(write_changelog, bootstrap, args.entries)
        restores = await interleaved(
            {
                "restore-floor": lambda: asyncio.to_thread(restore_floor_run, bootstrap, topic, args.entries),
                "restore": lambda: asyncio.to_thread(restore_run, bootstrap, topic, args.entries),
            },
            rounds=args.rounds,
        )
        runs.update(restores)
        seconds = statistics.median(run.wall_s for run in restores["restore"])
        floor_seconds = statistics.median(run.wall_s for run in restores["restore-floor"])
        print(f"restore: {args.entries:,} entries in {seconds:.2f} s (floor {floor_seconds:.2f} s)")

    notes = [
        f"{total} events ({len(want_reports)} reports), {args.batch_size} records per transaction; "
        "plumbing and app write to fresh topics every run; timed from the first record to the last output",
        "restore and restore-floor read one changelog written after the stages, interleaved in "
        "rounds of their own, under the collector thresholds the exactly-once loop holds while "
        "it restores; restore_1m_s is the median wall time of restore",
    ]
    if args.entries != RESTORE_SCALE:
        notes.append(f"restore_1m_s scaled linearly to {RESTORE_SCALE:,} entries from {args.entries:,}")
    Report(
        bench="bordereaux",
        units={
            "ceiling": "event",
            "plumbing": "event",
            "plumbing-floor": "event",
            "app": "event",
            "restore-floor": "entry",
            "restore": "entry",
        },
        runs=runs,
        comparisons=[
            Comparison("plumbing/ceiling", "plumbing", "ceiling", target=0.60),
            Comparison("plumbing/floor", "plumbing", "plumbing-floor", target=0.90),
            Comparison("app/plumbing", "app", "plumbing", target=0.60),
            Comparison("app/ceiling", "app", "ceiling"),
            Comparison("restore/restore-floor", "restore", "restore-floor", target=0.90),
        ],
        figures={
            "restore_1m_s": seconds * RESTORE_SCALE / args.entries,
            "restore_floor_1m_s": floor_seconds * RESTORE_SCALE / args.entries,
            "restore_entries_per_s": args.entries / seconds if seconds > 0 else 0.0,
        },
        targets={"restore_1m_s": "<= 4"},
        notes=notes,
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
