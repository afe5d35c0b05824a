"""The bordereaux plumbing floor (``bench/floor_bordereaux.py``) writes what the product writes.

The floor does the plumbing stage's work without the product's loop, route task or stores;
these tests hold it to them: each routed event and watermark record against the product's
``RouteTask``, each refusal against the route task's reason, and whole transactions (records,
changelog entries, offsets) against the bench's own ``plumbing`` stage, run by the product's
``TransactionalLoop`` over fake clients.  The floor's client settings are the plumbing
stage's.  No Kafka.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import bench.bench_bordereaux as plumbing_bench
from bench.floor_bordereaux import (
    CODEC,
    FloorPlumbing,
    SourceRoute,
    client_confs,
    reading,
    watermark_value,
)
from bench.harness import Run
from processors.bordereaux.topology import FUTURE_TOLERANCE, BordereauxTopics, RouteTask
from processors.contract import ContentType
from processors.errors import ProcessorsError
from processors.kafka import KafkaClients
from processors.runtime.failures import H
from processors.streams.driver import MemoryMessage
from processors.streams.store import ChangelogStore
from tests.bordereaux_oracle import Published, generate

PREFIX = "bfloor."
SOURCE_PREFIX = "bsrc."
TOPICS = reading(BordereauxTopics.with_prefix(PREFIX), SOURCE_PREFIX)
SOURCE_PARTITIONS = 6  # what generate() publishes to

Record = tuple[str, bytes | None, bytes | None, tuple[tuple[str, bytes], ...] | None, int | None]
"""(topic, key, value, headers, partition or None: the producer's partitioner)."""


def _messages(published: Sequence[Published], content_type: ContentType = ContentType.JSON) -> list[Any]:
    """The events as the bench publishes them, offsets counted per source partition."""
    offsets: Counter[tuple[str, int]] = Counter()
    out = []
    for item in published:
        topic = SOURCE_PREFIX + item.topic
        value, headers = CODEC.encode(item.event, content_type)
        offset = offsets[(topic, item.partition)]
        offsets[(topic, item.partition)] += 1
        out.append(MemoryMessage(topic, item.partition, offset, item.key.encode(), value, list(headers)))
    return out


class _Emitter:
    """What a RouteTask sends, as records; what it dead-letters, as (error class, reason)."""

    def __init__(self) -> None:
        self.sent: list[Record] = []
        self.dead: list[tuple[str, str]] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        self.sent.append((topic, key, value, tuple(headers) if headers else None, partition))

    def dead_letter(self, msg: Any, exc: BaseException) -> None:
        self.dead.append((type(exc).__name__, str(exc)))


def _floor_route(route: SourceRoute, msgs: Sequence[Any], partitions: int) -> list[Record]:
    """The floor's records for one batch of one source partition: events, then watermarks."""
    latest = datetime.now(UTC) + FUTURE_TOLERANCE
    out: list[Record] = []
    for msg in msgs:
        key, headers = route.route(CODEC, msg.value(), msg.headers(), latest)
        out.append((TOPICS.by_policy, key, msg.value(), tuple(headers), None))
    if route.moved:
        assert route.watermark is not None
        mark = watermark_value(route.source, route.watermark.isoformat())
        out.extend(
            (TOPICS.by_policy, None, mark, (("x-record", b"watermark"),), p) for p in range(partitions)
        )
    return out


@pytest.mark.parametrize("partitions", [1, 6])
@pytest.mark.parametrize("content_type", [ContentType.JSON, ContentType.AVRO])
@pytest.mark.parametrize("restored", [None, b"2024-03-01T00:00:00+00:00"])
def test_routed_events_and_watermarks_are_the_route_tasks(
    partitions: int, content_type: ContentType, restored: bytes | None
) -> None:
    msgs = _messages(generate(5, 240), content_type)
    by_source: dict[tuple[str, int], list[Any]] = {}
    for msg in msgs:
        by_source.setdefault((msg.topic(), msg.partition()), []).append(msg)
    assert len(by_source) > 6
    for (topic, partition), mine in by_source.items():
        store = ChangelogStore(TOPICS.route_changelog, partition)
        source = f"{topic}:{partition}"
        if restored is not None:
            store.base[source] = restored
        emitter = _Emitter()
        task = RouteTask(
            topic, partition, store, emitter, codec=CODEC, topics=TOPICS, by_policy_partitions=partitions
        )
        route = SourceRoute(topic, partition, restored)
        for start in range(0, len(mine), 7):
            batch = mine[start : start + 7]
            emitter.sent.clear()
            for msg in batch:
                task.process(msg)
            task.end_batch()
            expected_entries = [(e.encode(), v, store.partition) for e, v in store.changes()]
            store.commit()
            assert _floor_route(route, batch, partitions) == emitter.sent
            # the route-changelog entry the loop writes for the store, and the floor's
            floor_entries = (
                [(route.source.encode(), route.watermark_bytes, route.partition)] if route.moved else []
            )
            route.commit()
            assert floor_entries == expected_entries
        assert emitter.dead == []


def _json(msg: Any, change: Callable[[dict[str, Any]], None]) -> MemoryMessage:
    document = json.loads(msg.value())
    change(document)
    return MemoryMessage(
        msg.topic(), msg.partition(), 0, msg.key(), json.dumps(document).encode(), msg.headers()
    )


def test_refused_events_are_refused_for_the_route_tasks_reasons() -> None:
    sample = _messages(generate(5, 40))[0]
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    refused = [
        MemoryMessage(sample.topic(), 0, 0, None, b"\x07garbage", []),
        _json(sample, lambda d: d.update(event_type="premium.due")),
        _json(sample, lambda d: d["data"].pop("policy_id")),
        _json(sample, lambda d: d["data"].update(policy_id="")),
        _json(sample, lambda d: d.update(occurred_at=future)),
    ]
    emitter = _Emitter()
    store = ChangelogStore(TOPICS.route_changelog, 0)
    task = RouteTask(sample.topic(), 0, store, emitter, codec=CODEC, topics=TOPICS, by_policy_partitions=3)
    route = SourceRoute(sample.topic(), 0)
    latest = datetime.now(UTC) + FUTURE_TOLERANCE
    reasons = []
    for msg in refused:
        task.process(msg)
        with pytest.raises(ProcessorsError) as raised:
            route.route(CODEC, msg.value(), msg.headers(), latest)
        reasons.append((type(raised.value).__name__, str(raised.value)))
    assert emitter.sent == []
    assert len(emitter.dead) == len(refused)
    assert reasons == emitter.dead
    assert not route.moved


def test_a_watermark_value_is_the_route_tasks() -> None:
    emitter = _Emitter()
    store = ChangelogStore(TOPICS.route_changelog, 2)
    topic = TOPICS.claim_events
    task = RouteTask(topic, 2, store, emitter, codec=CODEC, topics=TOPICS, by_policy_partitions=1)
    msg = _messages(
        [p for p in generate(5, 60) if p.partition == 2 and p.topic.endswith("claim.events")][:1]
    )[0]
    task.process(msg)
    task.end_batch()
    _, _, value, _, _ = emitter.sent[-1]
    at = json.loads(value or b"")["wm"]
    assert watermark_value(f"{topic}:2", at) == value


# --- whole transactions against the bench's plumbing stage ----------------------------------


class _Producer:
    """A transactional producer that keeps each committed transaction's records and offsets."""

    def __init__(self) -> None:
        self.committed: list[tuple[list[Record], list[tuple[str, int, int]]]] = []
        self._records: list[Record] | None = None
        self._offsets: list[tuple[str, int, int]] = []

    def init_transactions(self, timeout: float) -> None:
        return None

    def begin_transaction(self) -> None:
        assert self._records is None
        self._records, self._offsets = [], []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        assert self._records is not None, "produced outside a transaction"
        self._records.append((topic, key, value, tuple(headers) if headers else None, partition))

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], metadata: Any, timeout: float
    ) -> None:
        assert metadata == "group-metadata"
        self._offsets = sorted((tp.topic, tp.partition, tp.offset) for tp in positions)

    def commit_transaction(self, timeout: float) -> None:
        assert self._records is not None
        self.committed.append((self._records, self._offsets))
        self._records = None

    def abort_transaction(self, timeout: float) -> None:
        raise AssertionError("no transaction should fail here")

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def poll(self, timeout: float | None = None) -> int:
        return 0


class _Consumer:
    """Hands out one batch per ``consume`` (a callable batch is built when its turn comes);
    assigns ``partitions`` on the first call; sets ``stop`` when every batch was handed out."""

    def __init__(self, batches: list[Any], partitions: list[TopicPartition]) -> None:
        self.batches = list(batches)
        self.partitions = partitions
        self.stop: threading.Event | None = None
        self._on_assign: Any = None

    def subscribe(self, topics: list[str], *, on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        assert set(topics) == {TOPICS.policy_events, TOPICS.claim_events, TOPICS.by_policy}
        self._on_assign = on_assign

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if self._on_assign is not None:
            on_assign, self._on_assign = self._on_assign, None
            on_assign(self, self.partitions)
        if self.batches:
            batch = self.batches.pop(0)
            return list(batch() if callable(batch) else batch)
        assert self.stop is not None
        self.stop.set()
        return []

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def seek(self, tp: TopicPartition) -> None:
        raise AssertionError("nothing should be read again here")

    def unsubscribe(self) -> None:
        return None

    def assignment(self) -> list[TopicPartition]:
        return []

    def close(self) -> None:
        return None


class _Restorer:
    """Every changelog is empty."""

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        return None


def _by_policy_batch(records: Sequence[Record], partitions: int, offsets: Counter[int]) -> list[Any]:
    """The by-policy records of a transaction, as the decode-and-keep stage reads them."""
    out = []
    for topic, key, value, headers, partition in records:
        if topic != TOPICS.by_policy:
            continue
        where = partition if partition is not None else zlib.crc32(key or b"") % partitions
        out.append(MemoryMessage(topic, where, offsets[where], key, value, list(headers or ())))
        offsets[where] += 1
    return out


def _normalised(records: Sequence[Record]) -> Counter[Record]:
    """The records with the one header that differs by the clock (a dead letter's time) left out."""
    return Counter(
        (t, k, v, tuple(h for h in headers if h[0] != H.FAILED_AT) if headers else None, p)
        for t, k, v, headers, p in records
    )


def _events(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r[0] == TOPICS.by_policy and ("x-record", b"event") in (r[3] or ())]


def _both(monkeypatch: pytest.MonkeyPatch, partitions: int) -> tuple[Any, Any, dict[str, Any]]:
    """The same batches through the bench's ``plumbing`` stage (the product's loop, its route
    task, the bench's decode-and-keep) and through the floor: their committed transactions, and
    the loop's arguments.  Batch 1: half the events, two refused records and a re-published
    event; batch 2: what batch 1 routed and the other half; batch 3: what batch 2 routed."""
    msgs = _messages(generate(11, 160))
    half = len(msgs) // 2
    again = msgs[0]
    bad = [
        MemoryMessage(TOPICS.policy_events, 0, 10_000, None, b"\x07garbage", []),
        _json(msgs[1], lambda d: d.update(event_type="premium.due")),
    ]
    first = [
        *msgs[:half],
        *bad,
        MemoryMessage(again.topic(), again.partition(), 10_001, again.key(), again.value(), again.headers()),
    ]
    second_sources = msgs[half:]
    by_policy_offsets: Counter[int] = Counter()
    product = _Producer()
    built: list[list[Any]] = []

    def routed_by(step: int) -> Callable[[], list[Any]]:
        def batch() -> list[Any]:
            records = _by_policy_batch(product.committed[step][0], partitions, by_policy_offsets)
            made = records + (second_sources if step == 0 else [])
            built.append(made)
            return made

        return batch

    assignment = [
        TopicPartition(topic, p)
        for topic in (TOPICS.policy_events, TOPICS.claim_events)
        for p in range(SOURCE_PARTITIONS)
    ] + [TopicPartition(TOPICS.by_policy, p) for p in range(partitions)]
    consumer = _Consumer([first, routed_by(0), routed_by(1)], assignment)
    arguments: dict[str, Any] = {}
    real_loop = plumbing_bench.TransactionalLoop

    def loop(**kwargs: Any) -> Any:
        arguments.update(kwargs)
        return real_loop(
            **kwargs,
            consumer_factory=lambda conf: (
                _Restorer() if conf["group.id"].endswith(".restore-unused") else consumer
            ),
            producer_factory=lambda conf: product,
        )

    def measure(name: str, loop: Any, finished: Any, total: int) -> Run:
        consumer.stop = threading.Event()
        loop.run(consumer.stop)
        return Run(total, 1.0, 1.0)

    metadata = SimpleNamespace(
        topics={TOPICS.by_policy: SimpleNamespace(partitions=dict.fromkeys(range(partitions)))}
    )
    monkeypatch.setattr(
        plumbing_bench, "isolated_catalogue", lambda bootstrap, directory: (None, None, PREFIX)
    )
    monkeypatch.setattr(
        plumbing_bench, "AdminClient", lambda conf: SimpleNamespace(list_topics=lambda timeout: metadata)
    )
    monkeypatch.setattr(plumbing_bench, "TransactionalLoop", loop)
    monkeypatch.setattr(plumbing_bench, "_measure", measure)
    plumbing_bench.plumbing_run("kafka:9092", SOURCE_PREFIX, 10**9, 10_000)
    assert len(product.committed) == 3

    floor_producer = _Producer()
    floor_consumer = _Consumer([], assignment)
    floor = FloorPlumbing(
        consumer=floor_consumer,
        producer=floor_producer,
        restorer=_Restorer(),
        topics=TOPICS,
        by_policy_partitions=partitions,
        total=10**9,
        group=KafkaClients.group_of(arguments["consumer_conf"]),
        app=arguments["app"],
    )
    floor.on_assign(floor_consumer, assignment)
    for batch in (first, *built):
        floor.step(batch)
    assert floor.transactions == 3
    return product.committed, floor_producer.committed, arguments


@pytest.mark.parametrize("partitions", [3, 6])
def test_each_transaction_routes_what_the_plumbing_stage_routes(
    monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    product, floor, _ = _both(monkeypatch, partitions)
    for (theirs, _), (mine, _) in zip(product, floor, strict=True):
        assert _events(mine) == _events(theirs)  # in order
        assert _normalised(mine) == _normalised(theirs)
    first = product[0][0]
    assert sum(1 for r in first if r[0] == TOPICS.dlq) == 2
    assert any(r[3] == (("x-record", b"watermark"),) for r in first)
    assert any(r[0] == TOPICS.route_changelog for r in first)


@pytest.mark.parametrize("partitions", [3, 6])
def test_each_transaction_writes_the_changelog_entries_the_stores_write(
    monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    product, floor, _ = _both(monkeypatch, partitions)
    for changelog in (TOPICS.route_changelog, TOPICS.ledger_changelog):
        for (theirs, _), (mine, _) in zip(product, floor, strict=True):
            assert Counter(r for r in mine if r[0] == changelog) == Counter(
                r for r in theirs if r[0] == changelog
            )
    kept = [r for records, _ in product for r in records if r[0] == TOPICS.ledger_changelog]
    assert kept
    assert all(value == b"1" and headers is None and key for _, key, value, headers, _ in kept)
    # the re-published event: decoded twice in one transaction, one entry
    second = product[1][0]
    assert len([r for r in second if r[0] == TOPICS.ledger_changelog]) < len(_events(product[0][0]))


@pytest.mark.parametrize("partitions", [3, 6])
def test_each_transaction_commits_the_offsets_the_plumbing_stage_commits(
    monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    product, floor, _ = _both(monkeypatch, partitions)
    assert [offsets for _, offsets in floor] == [offsets for _, offsets in product]
    assert {topic for _, offsets in product for topic, _, _ in offsets} == {
        TOPICS.policy_events,
        TOPICS.claim_events,
        TOPICS.by_policy,
    }


def test_the_floors_clients_are_the_plumbing_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, arguments = _both(monkeypatch, 3)
    theirs_consumer = KafkaClients.exactly_once_consumer(arguments["consumer_conf"])
    theirs_producer = dict(arguments["producer_conf"])
    mine_consumer, mine_producer = client_confs("kafka:9092", PREFIX)
    assert mine_consumer.pop("group.id") == theirs_consumer.pop("group.id") + "-floor"
    assert mine_producer.pop("transactional.id") == theirs_producer.pop("transactional.id").replace(
        ".bench", "-floor.bench"
    )
    assert mine_consumer == theirs_consumer
    assert mine_producer == theirs_producer
    assert arguments["batch_size"] == 10_000


class _LeaderlessRestorer(_Restorer):
    """Answers "not leader" for the first queries, as a partition created a moment ago does."""

    def __init__(self, failures: int, code: int) -> None:
        self.failures = failures
        self.code = code

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(self.code))
        return 0, 0


def _assigned(restorer: _Restorer) -> FloorPlumbing:
    consumer = _Consumer([], [])
    floor = FloorPlumbing(
        consumer=consumer,
        producer=_Producer(),
        restorer=restorer,
        topics=TOPICS,
        by_policy_partitions=3,
        total=1,
        group="g",
    )
    floor.on_assign(consumer, [TopicPartition(TOPICS.policy_events, 0), TopicPartition(TOPICS.by_policy, 0)])
    return floor


def test_an_assignment_waits_for_a_new_partitions_leader() -> None:
    floor = _assigned(_LeaderlessRestorer(2, KafkaError.NOT_LEADER_FOR_PARTITION))
    assert floor.failure is None
    assert set(floor.routes) == {(TOPICS.policy_events, 0)}
    assert set(floor.kept_ids) == {0}


def test_a_failed_assignment_is_kept_for_the_run_loop_to_raise() -> None:
    floor = _assigned(_LeaderlessRestorer(1, KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert isinstance(floor.failure, KafkaException)
    assert floor.routes == {}
