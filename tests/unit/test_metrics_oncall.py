"""The on-call metrics: retry-tier depth, webhook deliveries (capped labels), transactions,
period-close lag, breaker transitions and parked records, each from its real source."""

from __future__ import annotations

import ast
import asyncio
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processors.adapters.http import HttpResponse
from processors.api.health import HealthMonitor, LoopView
from processors.api.metrics import ApiMetrics
from processors.bordereaux.ledger import Ledger
from processors.bordereaux.topology import BordereauxLoop, BordereauxTopics, LedgerTask, build_stages
from processors.bordereaux.treaties import parse_treaty_book
from processors.contract import Codec, LocalSchemaIds
from processors.errors import Retriable
from processors.observability import webhook_metrics
from processors.observability.webhook_metrics import OTHER, OUTCOMES, WebhookDeliveryMetrics
from processors.resilience.breaker import BreakerRegistry, BreakerSettings, BreakerState
from processors.runtime.engine import Engine, EngineStats
from processors.runtime.failures import H
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.producer import TransactionalProducer, TransactionFailed
from processors.streams.driver import MemoryMessage
from processors.streams.loop import Emitter, StageSpec, TransactionalLoop
from processors.topics.catalogue import AppTopics, load_catalogue
from processors.webhooks import app as webhooks_app
from tests.unit.test_bordereaux_ledger import BOOK, MemStore
from tests.unit.test_engine import (
    TOPIC,
    FakeConsumer,
    FakeProducer,
    ScriptedProcessor,
    _engine,
    _msg,
    _run_until,
)
from tests.unit.test_engine_exactly_once import GroupMetadataConsumer
from tests.unit.test_webhooks_app import Harness, logs

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes | str) -> Samples:
    """Every sample of an exposition: (name, labels) → value."""
    decoded = text.decode() if isinstance(text, bytes) else text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(decoded)
        for sample in family.samples
    }


def of(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def named(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


async def scrape(health: HealthMonitor) -> Samples:
    """One scrape of ``/metrics`` (health's assignment watchers are stopped after it)."""
    try:
        return samples(ApiMetrics(health).render())
    finally:
        await health.stop()


# --------------------------------------------------------------------------- webhook deliveries


def delivery_samples(metrics: WebhookDeliveryMetrics) -> Samples:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics)
    return samples(generate_latest(registry))


def test_the_subscription_label_is_capped_and_the_rest_counts_under_other() -> None:
    metrics = WebhookDeliveryMetrics(max_subscriptions=3)
    for n in range(10):
        for _ in range(n + 1):
            metrics.count(f"sub-{n}", "delivered")
    metrics.count("sub-9", "failed")
    metrics.count("sub-0", "failed")

    found = delivery_samples(metrics)
    deliveries = named(found, "processors_webhook_deliveries_total")
    assert {dict(labels)["subscription"] for labels in deliveries} == {"sub-0", "sub-1", "sub-2", OTHER}
    assert len(deliveries) == 4 * len(OUTCOMES)  # every label has every outcome, zero or not
    assert of(found, "processors_webhook_deliveries_total", subscription="sub-0", outcome="delivered") == 1
    assert of(found, "processors_webhook_deliveries_total", subscription="sub-0", outcome="failed") == 1
    assert of(found, "processors_webhook_deliveries_total", subscription="sub-2", outcome="delivered") == 3
    assert of(found, "processors_webhook_deliveries_total", subscription="sub-1", outcome="refused") == 0
    later = sum(range(4, 11))  # sub-3 … sub-9 delivered n + 1 times each
    assert of(found, "processors_webhook_deliveries_total", subscription=OTHER, outcome="delivered") == later
    assert of(found, "processors_webhook_deliveries_total", subscription=OTHER, outcome="failed") == 1
    assert of(found, "processors_webhook_deliveries_overflow_total") == later + 1
    assert of(found, "processors_webhook_subscriptions_labelled") == 3


def test_thousands_of_subscriptions_keep_the_series_and_the_cache_bounded() -> None:
    metrics = WebhookDeliveryMetrics(max_subscriptions=5)
    for n in range(20_000):
        metrics.count(f"sub-{n}", OUTCOMES[n % len(OUTCOMES)])
    found = delivery_samples(metrics)
    assert len(named(found, "processors_webhook_deliveries_total")) == 6 * len(OUTCOMES)
    assert of(found, "processors_webhook_deliveries_overflow_total") == 20_000 - 5
    assert len(metrics._cells) <= 5 * len(OUTCOMES) * 20  # the documented cache bound
    assert metrics.counts()[OTHER]["delivered"] == 3_999  # sub-5, sub-10, … sub-19995
    # a subscription past the cap whose pairs are no longer cached still counts, under "other"
    metrics.count("sub-19999", "delivered")
    assert metrics.counts()[OTHER]["delivered"] == 4_000


def test_a_repeated_count_takes_the_cached_cell_without_resolving_the_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = WebhookDeliveryMetrics(max_subscriptions=1)
    metrics.count("sub-a", "delivered")  # labelled
    metrics.count("sub-b", "failed")  # past the cap: other
    resolved: list[tuple[str, str]] = []
    original = metrics._resolve

    def spy(subscription: str, outcome: str) -> list[int]:
        resolved.append((subscription, outcome))
        return original(subscription, outcome)

    monkeypatch.setattr(metrics, "_resolve", spy)
    for _ in range(100):
        metrics.count("sub-a", "delivered")
        metrics.count("sub-b", "failed")
    assert resolved == []
    assert metrics.counts()["sub-a"]["delivered"] == 101
    assert metrics.counts()[OTHER]["failed"] == 101


async def test_the_webhooks_app_counts_one_outcome_per_delivery_log_line() -> None:
    h = Harness()
    ok, failing, gone = h.subscribe(1), h.subscribe(2), h.subscribe(3)
    h.transport.answers[failing.url] = lambda: HttpResponse(503, {}, b"")
    h.transport.answers[gone.url] = lambda: HttpResponse(410, {}, b"")
    lines: list[dict[str, object]] = []
    for _ in range(2):
        for job in await h.dispatch():
            lines.extend(logs(await h.app.process(job)))
    await asyncio.gather(*h.app._background)

    expected: dict[str, Counter[str]] = {}
    for line in lines:
        expected.setdefault(str(line["subscription_id"]), Counter())[str(line["status"])] += 1
    assert expected[gone.id] == Counter({"disabled": 1, "skipped": 1})
    assert expected[failing.id] == Counter({"failed": 2})
    assert expected[ok.id] == Counter({"delivered": 2})
    counts = h.app.deliveries.counts()
    for sub, statuses in expected.items():
        assert {o: n for o, n in counts[sub].items() if n} == dict(statuses)
    assert sum(counts[OTHER].values()) == 0


# --------------------------------------------------------------------------- retry-tier depth


@dataclass
class TieredApp:
    name: str
    topics: AppTopics


@dataclass
class FakeEngine:
    processor: Any
    group: str
    stats: EngineStats = field(default_factory=EngineStats)
    assigned: list[tuple[str, int]] = field(default_factory=list)

    async def wait_assigned(self) -> None:
        return None


async def test_retry_tier_depth_is_the_groups_lag_summed_per_tier_topic() -> None:
    topics = load_catalogue(None).app("payments")
    first, second, third = topics.retry_tiers[:3]
    source = topics.sources[0]
    lag = {
        (source, 0): 40,  # a source: not a tier
        (first.topic, 0): 3,
        (first.topic, 1): 4,
        (second.topic, 2): 0,
        (second.topic, 3): 5,
        (third.topic, 0): -1,  # not known yet: no sample for its tier
    }
    engine = FakeEngine(TieredApp("payments", topics), "integrations.payments", EngineStats(lag=lag))
    found = await scrape(HealthMonitor(engines=[engine]))

    depth = named(found, "processors_retry_tier_depth")
    assert depth == {
        frozenset({"app": "payments", "tier": "0", "delay": "5s"}.items()): 7,
        frozenset({"app": "payments", "tier": "1", "delay": "30s"}.items()): 5,
    }
    assert of(found, "processors_consumer_lag", app="payments", group="integrations.payments",
              topic=first.topic, partition="1") == 4  # fmt: skip


async def test_an_app_without_retry_tiers_has_no_tier_depth() -> None:
    engine = FakeEngine(TieredApp("x", load_catalogue(None).app("payments")), "g", EngineStats(lag={}))
    assert named(await scrape(HealthMonitor(engines=[engine])), "processors_retry_tier_depth") == {}


# --------------------------------------------------------------------------- parked records


class ReplayedProcessor(ScriptedProcessor):
    """Fails every record; sends offsets 0 and 1 to the DLQ, then parks, and retries 3."""

    name = "payments"

    def __init__(self) -> None:
        super().__init__()
        self.topics = load_catalogue(None).app("payments")

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        raise ValueError("boom")

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        error = [(H.ERROR_CLASS, type(exc).__name__.encode())]
        offset = msg.offset() or 0
        if offset == 3:
            tier = self.topics.retry_tiers[0].topic
            return [OutRecord(tier, msg.key(), msg.value(), [*error, (H.DUE_AT, b"1")])]
        topic = self.topics.dlq if offset < 2 else self.topics.parked
        return [OutRecord(topic, msg.key(), msg.value(), error)]


async def test_records_sent_to_the_parking_topic_count_as_parked_not_dead_lettered() -> None:
    consumer, producer = FakeConsumer([_msg(0, i, f"K{i}") for i in range(4)], [0]), FakeProducer()
    engine = _engine(ReplayedProcessor(), consumer, producer)
    await _run_until(engine, lambda: len(producer.sent) == 4)
    assert engine.stats.failures == {
        ("ValueError", "dead_letter"): 2,
        ("ValueError", "parked"): 1,
        ("ValueError", "retry"): 1,
    }
    found = await scrape(HealthMonitor(engines=[engine]))
    assert of(found, "processors_app_failures_total", app="payments", error_class="ValueError",
              destination="parked") == 1  # fmt: skip


# --------------------------------------------------------------------------- transactions


class RawTransactions:
    """The librdkafka calls a TransactionalProducer makes; the next commits can be made to fail."""

    def __init__(self) -> None:
        self.fail_next = 0
        self.committed = 0
        self.aborted = 0

    def send_offsets_to_transaction(self, *_args: Any) -> None: ...

    def commit_transaction(self, _timeout: float) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "lost", txn_requires_abort=True))
        self.committed += 1

    def abort_transaction(self, _timeout: float) -> None:
        self.aborted += 1

    def begin_transaction(self) -> None: ...


async def test_an_exactly_once_engine_counts_committed_and_aborted_transactions() -> None:
    producer = TransactionalProducer({"transactional.id": "t"})
    raw = RawTransactions()
    producer._producer = raw  # type: ignore[assignment]
    offsets = [TopicPartition(TOPIC, 0, 5)]
    producer.commit(offsets, "metadata")
    producer.commit([], "metadata")  # nothing to commit: no transaction
    producer.commit(offsets, "metadata")
    raw.fail_next = 1
    with pytest.raises(TransactionFailed):
        producer.commit(offsets, "metadata")
    assert (producer.commits, producer.aborts) == (2, 1)
    assert raw.aborted == 1

    engine = Engine(
        ScriptedProcessor(),  # type: ignore[arg-type]
        consumer_conf={"group.id": "integrations.test"},
        producer=producer,
        consumer_factory=FakeConsumer([], [0]),
    )
    assert engine.transactions == (2, 1)
    found = await scrape(HealthMonitor(engines=[engine]))
    assert of(found, "processors_app_transactions_total", app="test", outcome="committed") == 2
    assert of(found, "processors_app_transactions_total", app="test", outcome="aborted") == 1


async def test_an_at_least_once_engine_has_no_transaction_series() -> None:
    engine = _engine(ScriptedProcessor(), FakeConsumer([], [0]), FakeProducer())
    assert engine.transactions is None
    assert named(await scrape(HealthMonitor(engines=[engine])), "processors_app_transactions_total") == {}


class TxnProducer:
    """The loop's producer: commits fail ``fail_commits`` times, then succeed."""

    def __init__(self, fail_commits: int) -> None:
        self.fail_commits = fail_commits
        self.produced: list[str] = []

    def init_transactions(self, _timeout: float) -> None: ...
    def begin_transaction(self) -> None: ...

    def produce(self, topic: str, **_kwargs: Any) -> None:
        self.produced.append(topic)

    def send_offsets_to_transaction(self, *_args: Any) -> None: ...

    def commit_transaction(self, _timeout: float) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit lost"))

    def abort_transaction(self, _timeout: float) -> None: ...
    def flush(self, _timeout: float) -> int:
        return 0

    def poll(self, _timeout: float) -> int:
        return 0


class Restorer:
    def close(self) -> None: ...


class EchoTask:
    """Sends each record on; a record whose value starts with ``bad`` is dead-lettered."""

    def __init__(self, out: Emitter) -> None:
        self._out = out

    def process(self, msg: Any) -> None:
        if (msg.value() or b"").startswith(b"bad"):
            raise ValueError("bad record")
        self._out.send("out", msg.key(), msg.value())

    def end_batch(self) -> None: ...


async def test_the_loop_counts_committed_and_aborted_transactions_and_dead_letters_by_class() -> None:
    records = [MemoryMessage(TOPIC, 0, i, key, value) for i, (key, value) in enumerate(
        [(b"A", b"a"), (b"B", b"b"), (b"C", b"bad")]
    )]  # fmt: skip
    consumer = GroupMetadataConsumer(records, [0])  # type: ignore[arg-type]
    producer = TxnProducer(fail_commits=1)

    def consumers(conf: dict[str, Any]) -> Any:
        return consumer if "group.id" in conf else Restorer()

    loop = TransactionalLoop(
        app="bordereaux",
        stages=[StageSpec("echo", (TOPIC,), lambda _t, _p, _store, out: EchoTask(out))],
        consumer_conf={"group.id": "g", "bootstrap.servers": "b:9092"},
        producer_conf={"transactional.id": "t", "bootstrap.servers": "b:9092"},
        dlq_topic="dlq",
        consumer_factory=consumers,
        producer_factory=lambda _conf: producer,
    )
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,))
    runner.start()
    try:
        assert loop.ready.wait(30)
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while loop.stats.transactions < 1 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.01)  # polling the loop's thread for its first commit
        assert [type(task).__name__ for task in loop.tasks_of("echo")] == ["EchoTask"]
        assert loop.tasks_of("other") == []
    finally:
        stop.set()
        runner.join(30)
    assert loop.stats.aborts == 1  # the first step's commit failed: aborted, read again
    assert loop.stats.transactions >= 1
    found = await scrape(HealthMonitor(engines=[LoopView(loop)]))
    assert of(found, "processors_app_transactions_total", app="bordereaux", outcome="aborted") == 1
    committed = of(found, "processors_app_transactions_total", app="bordereaux", outcome="committed")
    assert committed == loop.stats.transactions
    # the bad record was dead-lettered in the aborted step and again in the committed one
    assert of(found, "processors_app_failures_total", app="bordereaux", error_class="ValueError",
              destination="dead_letter") == 2  # fmt: skip
    assert producer.produced.count("dlq") == 2


# --------------------------------------------------------------------------- period-close lag


def test_the_ledger_says_when_each_open_period_is_due_to_close() -> None:
    book = parse_treaty_book(BOOK, source="test")
    ledger = Ledger(book, MemStore(), partition=0, partitions=1, sources=["p:0", "c:0"])
    due = dict(ledger.closing_due())
    grace, reg_grace = timedelta(days=5), timedelta(days=1)
    assert due == {
        "QS-1": datetime(2024, 2, 1, tzinfo=UTC) + grace,  # January
        "SP-1": datetime(2024, 4, 1, tzinfo=UTC) + grace,  # the first quarter
        None: datetime(2024, 1, 2, tzinfo=UTC) + reg_grace,  # 1 January
    }
    for source in ("p:0", "c:0"):
        ledger.on_watermark(source, datetime(2024, 2, 20, tzinfo=UTC))
    due = dict(ledger.closing_due())
    assert due["QS-1"] == datetime(2024, 3, 1, tzinfo=UTC) + grace  # January closed on 6 February
    assert due["SP-1"] == datetime(2024, 4, 1, tzinfo=UTC) + grace
    assert due[None] == datetime(2024, 2, 20, tzinfo=UTC) + reg_grace  # 19 February is open


def _bordereaux_loop() -> tuple[BordereauxLoop, BordereauxTopics]:
    topics = BordereauxTopics()
    counts = dict.fromkeys(vars(topics).values(), 2)
    book = parse_treaty_book(BOOK, source="test")
    stages = build_stages(book=book, codec=Codec(LocalSchemaIds()), topics=topics, partition_counts=counts)
    loop = BordereauxLoop(
        app="bordereaux",
        stages=stages,
        consumer_conf={"group.id": "g", "bootstrap.servers": "b:9092"},
        producer_conf={"transactional.id": "t", "bootstrap.servers": "b:9092"},
        dlq_topic=topics.dlq,
    )
    return loop, topics


def _ledger_task(topics: BordereauxTopics, partition: int, event_time: datetime | None) -> LedgerTask:
    sources = [f"{topics.policy_events}:0", f"{topics.claim_events}:0"]
    task = LedgerTask(
        partition,
        MemStore(),  # type: ignore[arg-type]
        FakeEmitter(),
        book=parse_treaty_book(BOOK, source="test"),
        codec=Codec(LocalSchemaIds()),
        topics=topics,
        partitions=2,
        sources=sources,
    )
    if event_time is not None:
        for source in sources:
            task.ledger.on_watermark(source, event_time)
    return task


class FakeEmitter:
    def send(self, *_args: Any, **_kwargs: Any) -> None: ...
    def dead_letter(self, msg: Any, exc: BaseException) -> None: ...


async def test_period_close_lag_is_how_far_the_oldest_open_period_is_past_due_by_the_wall_clock() -> None:
    loop, topics = _bordereaux_loop()
    now = datetime(2024, 2, 25, tzinfo=UTC)
    assert loop.period_close_lag(now) == {}  # no ledger partition on this instance
    # the loop's own table of tasks, as an assignment fills it
    loop._tasks[(topics.by_policy, 0)] = _ledger_task(topics, 0, datetime(2024, 2, 20, tzinfo=UTC))
    lag = loop.period_close_lag(now)
    day = 86_400.0
    assert lag == {"treaty:QS-1": 0.0, "treaty:SP-1": 0.0, "regulatory": 4 * day}
    assert loop.period_close_lag(datetime(2024, 3, 10, tzinfo=UTC))["treaty:QS-1"] == 4 * day

    # a second ledger partition whose event time never moved: its January is 19 days overdue
    loop._tasks[(topics.by_policy, 1)] = _ledger_task(topics, 1, None)
    lag = loop.period_close_lag(now)
    assert lag["treaty:QS-1"] == 19 * day
    assert lag["regulatory"] == (now - datetime(2024, 1, 3, tzinfo=UTC)).total_seconds()

    found = await scrape(HealthMonitor(engines=[LoopView(loop)]))
    gauge = named(found, "processors_bordereaux_period_close_lag_seconds")
    assert {dict(labels)["calendar"] for labels in gauge} == {"treaty:QS-1", "treaty:SP-1", "regulatory"}
    assert all(value > 0 for value in gauge.values())  # 2024 periods, read in the present


async def test_a_loop_without_reporting_periods_has_no_close_lag() -> None:
    loop = TransactionalLoop(
        app="other",
        stages=[],
        consumer_conf={"group.id": "g", "bootstrap.servers": "b:9092"},
        producer_conf={"transactional.id": "t", "bootstrap.servers": "b:9092"},
        dlq_topic="dlq",
    )
    assert LoopView(loop).period_close_lag() == {}
    assert (
        named(
            await scrape(HealthMonitor(engines=[LoopView(loop)])),
            "processors_bordereaux_period_close_lag_seconds",
        )
        == {}
    )


# --------------------------------------------------------------------------- breaker transitions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _fail() -> None:
    raise Retriable("down")


async def _succeed() -> None:
    return None


async def test_every_breaker_transition_is_counted_by_from_and_to() -> None:
    clock = Clock()
    settings = BreakerSettings(
        failure_threshold=2, success_threshold=1, half_open_requests=1, timeout_duration_s=10
    )
    breakers = BreakerRegistry(lambda _name: settings, clock=clock)
    breaker = breakers.get("payment-gateway")
    breakers.get("kyc-provider")  # never moved: every transition at zero
    for call in (_fail, _fail):  # closed -> open
        with pytest.raises(Retriable):
            await breaker.call(call)
    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN  # open -> half_open
    with pytest.raises(Retriable):
        await breaker.call(_fail)  # half_open -> open
    clock.now += 10
    await breaker.call(_succeed)  # open -> half_open -> closed

    found = await scrape(HealthMonitor(breakers=breakers, breaker_clock=clock))
    moves = {
        (dict(labels)["endpoint"], dict(labels)["from"], dict(labels)["to"]): value
        for labels, value in named(found, "processors_endpoint_breaker_transitions_total").items()
    }
    assert {k[1:]: v for k, v in moves.items() if k[0] == "payment-gateway"} == {
        ("closed", "open"): 1,
        ("open", "half_open"): 2,
        ("half_open", "open"): 1,
        ("half_open", "closed"): 1,
    }
    assert {k[1:]: v for k, v in moves.items() if k[0] == "kyc-provider"} == {
        ("closed", "open"): 0,
        ("open", "half_open"): 0,
        ("half_open", "open"): 0,
        ("half_open", "closed"): 0,
    }
    assert of(found, "processors_endpoint_breaker_opened_total", endpoint="payment-gateway") == 2


def test_the_webhooks_app_and_its_metrics_do_not_import_the_api_package() -> None:
    """The import direction: the API reads the webhooks app's counter, never the reverse."""
    for module in (webhook_metrics, webhooks_app):
        tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
        imported = {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        imported |= {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        assert "processors.observability.webhook_metrics" in imported or module is webhook_metrics
        assert not [name for name in imported if name.startswith("processors.api")], module.__name__
