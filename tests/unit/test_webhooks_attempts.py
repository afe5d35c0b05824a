"""The operator view of deliveries: parsing, ordering, bounds, failed_since; redelivery headers."""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import confluent_kafka
import pytest

from processors.errors import ConfigError
from processors.runtime.message import OutRecord, StaticMessage
from processors.webhooks.attempts import (
    AttemptsFeed,
    AttemptsView,
    DeliveryAttempt,
    FailedMessage,
    JobRef,
    Redeliverer,
    RedeliveryReport,
    redelivery_headers,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DISPATCH = "integrations.webhooks.dispatch"


def record(
    webhook_id: str = "msg_a",
    *,
    sub: str = "sub_1",
    attempt: int = 1,
    status: str = "failed",
    at: datetime = T0,
    nxt: str | None = None,
    offset: int = 0,
    partition: int = 0,
    **extra: Any,
) -> bytes:
    value: dict[str, Any] = {
        "subscription_id": sub,
        "webhook_id": webhook_id,
        "event_id": f"evt-{webhook_id}",
        "event_type": "policy.issued",
        "subject": "POL-1",
        "attempt": attempt,
        "status": status,
        "http_status": 500 if status == "failed" else 200 if status == "delivered" else None,
        "latency_ms": 12.5,
        "error": "HTTP 500" if status == "failed" else None,
        "response_excerpt": "oops" if status == "failed" else None,
        "attempted_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "url_host": "partner.example",
        "next": nxt,
        "job": {"topic": DISPATCH, "partition": partition, "offset": offset},
    }
    value.update(extra)
    return json.dumps(value, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ parsing


def test_parse_reads_every_documented_field() -> None:
    attempt = DeliveryAttempt.parse(record(nxt="retry", offset=42, partition=3))
    assert attempt is not None
    assert attempt.subscription_id == "sub_1"
    assert attempt.webhook_id == "msg_a"
    assert attempt.event_id == "evt-msg_a"
    assert attempt.subject == "POL-1"
    assert attempt.attempt == 1
    assert attempt.status == "failed"
    assert attempt.http_status == 500
    assert attempt.latency_ms == 12.5
    assert attempt.error == "HTTP 500"
    assert attempt.response_excerpt == "oops"
    assert attempt.attempted_at == T0
    assert attempt.attempted_at.tzinfo is not None
    assert attempt.url_host == "partner.example"
    assert attempt.next_step == "retry"
    assert attempt.job == JobRef(DISPATCH, 3, 42)


def test_parse_normalises_offsets_to_utc_and_ignores_unknown_fields() -> None:
    paris = timezone(timedelta(hours=1))
    value = json.loads(record())
    value["attempted_at"] = "2025-03-01T13:00:00+01:00"
    value["added_later"] = {"x": 1}
    attempt = DeliveryAttempt.parse(json.dumps(value).encode())
    assert attempt is not None
    assert attempt.attempted_at == datetime(2025, 3, 1, 13, tzinfo=paris)
    assert attempt.attempted_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        json.dumps({"subscription_id": "sub_1"}).encode(),
        record(status="sending"),
        record(attempt=-1),
        record(nxt="later"),
        record(attempted_at="2025-03-01T12:00:00"),  # naive
        record(job={"topic": DISPATCH, "partition": 0}),
        record(webhook_id=""),
    ],
    ids=[
        "none",
        "empty",
        "text",
        "list",
        "fields-missing",
        "unknown-status",
        "negative-attempt",
        "unknown-next",
        "naive-time",
        "job-without-offset",
        "empty-webhook-id",
    ],
)
def test_unparsable_records_are_skipped_and_counted(value: bytes | None) -> None:
    view = AttemptsView()
    assert view.apply(value) is None
    assert view.skipped == 1
    assert view.applied == 0
    assert view.endpoints() == []


def test_to_json_has_the_operator_fields() -> None:
    attempt = DeliveryAttempt.parse(record(at=T0 + timedelta(microseconds=1500)))
    assert attempt is not None
    assert attempt.to_json() == {
        "webhook_id": "msg_a",
        "event_type": "policy.issued",
        "attempt": 1,
        "status": "failed",
        "http_status": 500,
        "latency_ms": 12.5,
        "error": "HTTP 500",
        "response_excerpt": "oops",
        "attempted_at": "2025-03-01T12:00:00.001Z",
        "next": None,
    }


# ------------------------------------------------------------------------------ queries


def test_for_endpoint_lists_newest_first_by_time_then_log_order() -> None:
    view = AttemptsView()
    view.apply(record("msg_b", at=T0 + timedelta(seconds=2)))
    view.apply(record("msg_a", at=T0))
    view.apply(record("msg_c", at=T0 + timedelta(seconds=2)))  # same time, later in the log
    view.apply(record("msg_d", at=T0 + timedelta(seconds=1)))
    ids = [a.webhook_id for a in view.for_endpoint("sub_1")]
    assert ids == ["msg_c", "msg_b", "msg_d", "msg_a"]


def test_for_endpoint_filters_and_limits() -> None:
    view = AttemptsView()
    for i in range(10):
        status = "delivered" if i % 2 else "failed"
        view.apply(record(f"msg_{i}", status=status, at=T0 + timedelta(minutes=i)))
    view.apply(record("msg_other", sub="sub_2", status="delivered", at=T0 + timedelta(hours=1)))

    delivered = view.for_endpoint("sub_1", status="delivered")
    assert [a.webhook_id for a in delivered] == ["msg_9", "msg_7", "msg_5", "msg_3", "msg_1"]
    recent = view.for_endpoint("sub_1", since=T0 + timedelta(minutes=7))
    assert [a.webhook_id for a in recent] == ["msg_9", "msg_8", "msg_7"]
    assert [a.webhook_id for a in view.for_endpoint("sub_1", limit=2)] == ["msg_9", "msg_8"]
    both = view.for_endpoint("sub_1", status="failed", since=T0 + timedelta(minutes=5), limit=1)
    assert [a.webhook_id for a in both] == ["msg_8"]
    assert view.for_endpoint("sub_unknown") == []
    assert [a.webhook_id for a in view.for_endpoint("sub_2")] == ["msg_other"]


def test_queries_refuse_naive_times_and_bad_limits() -> None:
    view = AttemptsView()
    view.apply(record())
    with pytest.raises(ValueError, match="timezone-aware"):
        view.for_endpoint("sub_1", since=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        view.failed_since("sub_1", datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        view.for_endpoint("sub_1", limit=0)


def test_for_message_and_latest_follow_one_message() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", attempt=1, status="failed", nxt="retry", at=T0))
    view.apply(record("msg_b", attempt=1, status="delivered", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, status="failed", nxt="retry", at=T0 + timedelta(seconds=5)))
    view.apply(record("msg_a", attempt=3, status="delivered", at=T0 + timedelta(seconds=65)))

    history = view.for_message("sub_1", "msg_a")
    assert [(a.attempt, a.status) for a in history] == [(3, "delivered"), (2, "failed"), (1, "failed")]
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert (latest.attempt, latest.status) == (3, "delivered")
    assert view.latest("sub_1", "msg_unknown") is None
    assert view.latest("sub_unknown", "msg_a") is None
    assert view.for_message("sub_1", "msg_unknown") == []
    assert view.for_message("sub_2", "msg_a") == []


def test_latest_is_the_last_logged_attempt_even_with_an_earlier_timestamp() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", attempt=1, status="failed", nxt="retry", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, status="delivered", at=T0))  # clocks differ between hosts
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert latest.status == "delivered"
    assert view.failed_since("sub_1", T0 - timedelta(hours=1)) == []


# ------------------------------------------------------------------------------ bounds


def test_history_is_bounded_per_endpoint_oldest_evicted() -> None:
    view = AttemptsView(max_attempts_per_endpoint=3)
    for i in range(5):
        view.apply(record(f"msg_{i}", at=T0 + timedelta(seconds=i)))
    view.apply(record("msg_x", sub="sub_2"))

    assert [a.webhook_id for a in view.for_endpoint("sub_1")] == ["msg_4", "msg_3", "msg_2"]
    assert view.attempts_kept("sub_1") == 3
    assert view.attempts_kept("sub_2") == 1  # another endpoint's bound is its own
    assert view.evicted == 2
    assert view.applied == 6
    # An evicted message is gone entirely: no stale latest status, no recovery.
    assert view.latest("sub_1", "msg_0") is None
    assert view.for_message("sub_1", "msg_1") == []
    assert [m.webhook_id for m in view.failed_since("sub_1", T0)] == ["msg_2", "msg_3", "msg_4"]


def test_eviction_drops_a_message_s_oldest_attempts_first() -> None:
    view = AttemptsView(max_attempts_per_endpoint=3)
    view.apply(record("msg_a", attempt=1, nxt="retry", at=T0))
    view.apply(record("msg_b", attempt=1, status="delivered", at=T0 + timedelta(seconds=1)))
    view.apply(record("msg_a", attempt=2, nxt="retry", at=T0 + timedelta(seconds=2)))
    view.apply(record("msg_a", attempt=3, nxt="dlq", at=T0 + timedelta(seconds=3)))  # evicts msg_a #1

    assert [a.attempt for a in view.for_message("sub_1", "msg_a")] == [3, 2]
    latest = view.latest("sub_1", "msg_a")
    assert latest is not None
    assert latest.attempt == 3
    view.apply(record("msg_c", status="delivered", at=T0 + timedelta(seconds=4)))  # evicts msg_b
    assert view.latest("sub_1", "msg_b") is None
    assert [a.webhook_id for a in view.for_endpoint("sub_1")] == ["msg_c", "msg_a", "msg_a"]


def test_bound_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        AttemptsView(max_attempts_per_endpoint=0)


# ------------------------------------------------------------------------------ failed_since


def test_failed_since_takes_each_failed_message_once_by_its_latest_attempt() -> None:
    view = AttemptsView()
    since = T0 + timedelta(minutes=10)
    # Failed three times after `since`: recovered once, with its dispatch record.
    view.apply(record("msg_retrying", attempt=1, nxt="retry", at=since, offset=1))
    view.apply(record("msg_retrying", attempt=2, nxt="retry", at=since + timedelta(minutes=1), offset=1))
    view.apply(record("msg_retrying", attempt=3, nxt="dlq", at=since + timedelta(minutes=2), offset=1))
    # Failed, then delivered by a later retry: NOT recovered.
    view.apply(record("msg_recovered", attempt=1, nxt="retry", at=since + timedelta(seconds=1), offset=2))
    view.apply(
        record("msg_recovered", attempt=2, status="delivered", at=since + timedelta(minutes=5), offset=2)
    )
    # Other terminal decisions.
    view.apply(record("msg_refused", attempt=0, status="refused", nxt="dlq", at=since, offset=3))
    view.apply(record("msg_skipped", attempt=0, status="skipped", at=since + timedelta(seconds=3), offset=4))
    view.apply(record("msg_disabled", status="disabled", at=since + timedelta(seconds=4), offset=5))
    # Failed exactly at `since` (inclusive) and before it (excluded).
    view.apply(record("msg_at", nxt="dlq", at=since, offset=6, partition=2))
    view.apply(record("msg_before", nxt="dlq", at=since - timedelta(milliseconds=1), offset=7))
    # Delivered only.
    view.apply(record("msg_ok", status="delivered", at=since + timedelta(minutes=1), offset=8))
    # Another endpoint's failure.
    view.apply(record("msg_elsewhere", sub="sub_2", nxt="dlq", at=since, offset=9))

    failed = view.failed_since("sub_1", since)
    assert sorted(m.webhook_id for m in failed) == [
        "msg_at",
        "msg_disabled",
        "msg_refused",
        "msg_retrying",
        "msg_skipped",
    ]
    assert len(failed) == len({m.webhook_id for m in failed})
    by_id = {m.webhook_id: m for m in failed}
    assert by_id["msg_retrying"] == FailedMessage("msg_retrying", JobRef(DISPATCH, 0, 1))
    assert by_id["msg_at"].job == JobRef(DISPATCH, 2, 6)
    # Oldest failure first.
    assert failed[-1].webhook_id == "msg_retrying"
    assert [m.webhook_id for m in view.failed_since("sub_2", since)] == ["msg_elsewhere"]
    assert view.failed_since("sub_unknown", since) == []


def test_failed_since_uses_the_latest_attempt_s_dispatch_record() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", nxt="dlq", at=T0, offset=5))
    view.apply(record("msg_a", nxt="dlq", at=T0 + timedelta(hours=1), offset=77))  # an operator copy failed
    assert view.failed_since("sub_1", T0) == [FailedMessage("msg_a", JobRef(DISPATCH, 0, 77))]
    # The latest attempt is before `since`: not listed even though an older one is also before.
    assert view.failed_since("sub_1", T0 + timedelta(hours=2)) == []


def test_a_failure_with_next_dlq_counts_whatever_its_status() -> None:
    view = AttemptsView()
    view.apply(record("msg_a", status="delivered", nxt="dlq", at=T0))
    assert [m.webhook_id for m in view.failed_since("sub_1", T0)] == ["msg_a"]


# ------------------------------------------------------------------------------ redelivery


def test_redelivery_headers_keep_identity_drop_failure_provenance_and_mark_the_copy() -> None:
    at = datetime(2025, 3, 2, 8, 30, 0, 250_000, tzinfo=UTC)
    original = [
        ("content-type", b"application/json"),
        ("x-subscription-id", b"sub_1"),
        ("x-webhook-id", b"msg_a"),
        ("x-event-id", b"evt-1"),
        ("x-event-type", b"policy.issued"),
        ("x-subject", b"POL-1"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-original-topic", b"integrations.webhooks.dispatch"),
        ("x-original-partition", b"3"),
        ("x-original-offset", b"9"),
        ("x-error-class", b"Retriable"),
        ("x-error-message", b"HTTP 503"),
        ("x-attempts", b"4"),
        ("x-due-at", b"123"),
        ("x-redelivery", b"operator"),
        ("x-redelivered-at", b"2025-03-01T00:00:00.000Z"),
        ("x-empty", None),
    ]
    headers = redelivery_headers(original, at)
    assert headers == [
        ("content-type", b"application/json"),
        ("x-subscription-id", b"sub_1"),
        ("x-webhook-id", b"msg_a"),
        ("x-event-id", b"evt-1"),
        ("x-event-type", b"policy.issued"),
        ("x-subject", b"POL-1"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-empty", b""),
        ("x-redelivery", b"operator"),
        ("x-redelivered-at", b"2025-03-02T08:30:00.250Z"),
    ]


def test_report_json_counts_and_names() -> None:
    report = RedeliveryReport(("msg_a", "msg_b"), (JobRef(DISPATCH, 1, 99),))
    assert report.redelivered_count == 2
    assert report.missing_count == 1
    assert report.to_json() == {
        "redelivered": 2,
        "missing": 1,
        "webhook_ids": ["msg_a", "msg_b"],
        "missing_jobs": [{"topic": DISPATCH, "partition": 1, "offset": 99}],
        "mismatched_jobs": [],
    }


# ------------------------------------------------------------------------------ fakes of the Kafka clients


@dataclass(frozen=True, slots=True)
class FakeMessage(StaticMessage):
    """A consumed record as the client hands it out: a ``StaticMessage`` that may carry an error."""

    error_: Any = None

    def error(self) -> Any:
        return self.error_


class Eof:
    def code(self) -> int:
        return confluent_kafka.KafkaError._PARTITION_EOF

    def fatal(self) -> bool:
        return False

    def str(self) -> str:
        return "end of partition"


@dataclass
class FakeLog:
    """Partitions of records by offset (gaps allowed), with their log start and end."""

    records: dict[tuple[str, int], dict[int, FakeMessage]] = field(default_factory=dict)
    low: dict[tuple[str, int], int] = field(default_factory=dict)
    high: dict[tuple[str, int], int] = field(default_factory=dict)

    def write(self, topic: str, partition: int, offset: int, sub: str, webhook_id: str) -> FakeMessage:
        key, value, headers = (
            f"{sub}|{webhook_id}".encode(),
            f'{{"w":"{webhook_id}"}}'.encode(),
            [
                ("content-type", b"application/json"),
                ("x-subscription-id", sub.encode()),
                ("x-webhook-id", webhook_id.encode()),
                ("x-original-offset", b"1"),
            ],
        )
        msg = FakeMessage(topic, partition, offset, key, value, tuple(headers))
        self.records.setdefault((topic, partition), {})[offset] = msg
        self.high[(topic, partition)] = max(self.high.get((topic, partition), 0), offset + 1)
        return msg

    def metadata(self, topic: str) -> Any:
        partitions = {p: None for t, p in self.high if t == topic}
        return SimpleNamespace(
            topics={topic: SimpleNamespace(error=None, partitions=partitions)} if partitions else {}
        )


class FakeConsumer:
    def __init__(self, log: FakeLog, conf: dict[str, Any]) -> None:
        self.log = log
        self.conf = conf
        self.assigned: list[tuple[str, int, int]] = []
        self.closed = False
        self._at: tuple[str, int, int] | None = None
        self._eof_sent = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        return self.log.metadata(topic)

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        key = (tp.topic, tp.partition)
        return self.log.low.get(key, 0), self.log.high[key]

    def assign(self, tps: list[Any]) -> None:
        (tp,) = tps
        self._at = (tp.topic, tp.partition, tp.offset)
        self._eof_sent = False
        self.assigned.append(self._at)

    def consume(self, num: int, timeout: float) -> list[FakeMessage]:
        assert self._at is not None
        topic, partition, position = self._at
        key = (topic, partition)
        found = sorted(
            o for o in self.log.records.get(key, {}) if o >= max(position, self.log.low.get(key, 0))
        )
        batch = [self.log.records[key][o] for o in found[:num]]
        if batch:
            self._at = (topic, partition, batch[-1].offset_ + 1)
            return list(batch)
        if self._eof_sent:
            return []
        self._eof_sent = True
        return [FakeMessage(topic, partition, self.log.high[key], None, None, error_=Eof())]

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[OutRecord] = []

    async def send_all(self, records: list[OutRecord]) -> None:
        self.sent.extend(records)


def redeliverer(log: FakeLog, producer: FakeProducer, consumers: list[FakeConsumer]) -> Redeliverer:
    def factory(conf: dict[str, Any]) -> FakeConsumer:
        consumer = FakeConsumer(log, conf)
        consumers.append(consumer)
        return consumer

    return Redeliverer(
        "unused:9092",
        DISPATCH,
        consumer_factory=factory,
        producer=producer,
        clock=lambda: datetime(2025, 3, 2, tzinfo=UTC),
    )


# ------------------------------------------------------------------------------ redeliverer


async def test_redeliver_reads_each_wanted_record_and_copies_it_once_in_coordinate_order() -> None:
    log, producer, consumers = FakeLog(), FakeProducer(), []
    for offset in range(3_000):
        log.write(DISPATCH, 1, offset, "sub_1", f"msg_{offset}")
    log.write(DISPATCH, 4, 7, "sub_1", "msg_p4")
    jobs = [JobRef(DISPATCH, 1, o) for o in (2_500, 10, 600, 20, 10)] + [JobRef(DISPATCH, 4, 7)]

    report = await redeliverer(log, producer, consumers).redeliver(jobs, expect_subscription="sub_1")

    assert report.redelivered == ("msg_10", "msg_20", "msg_600", "msg_2500", "msg_p4")
    assert report.missing == ()
    assert [r.value for r in producer.sent] == [
        log.records[(DISPATCH, p)][o].value_ for p, o in ((1, 10), (1, 20), (1, 600), (1, 2_500), (4, 7))
    ]
    assert {r.topic for r in producer.sent} == {DISPATCH}
    assert producer.sent[0].key == b"sub_1|msg_10"
    assert producer.sent[0].headers == [
        ("content-type", b"application/json"),
        ("x-subscription-id", b"sub_1"),
        ("x-webhook-id", b"msg_10"),
        ("x-redelivery", b"operator"),
        ("x-redelivered-at", b"2025-03-02T00:00:00.000Z"),
    ]
    # 600 was read on to from 10; 2500 is far: the partition was assigned again there.
    (consumer,) = consumers
    assert consumer.assigned == [(DISPATCH, 1, 10), (DISPATCH, 1, 2_500), (DISPATCH, 4, 7)]
    assert consumer.closed
    assert consumer.conf["enable.auto.commit"] is False


async def test_redeliver_reports_records_that_are_gone_and_copies_the_rest() -> None:
    log, producer, consumers = FakeLog(), FakeProducer(), []
    for offset in range(10):
        if offset != 5:  # compacted away
            log.write(DISPATCH, 0, offset, "sub_1", f"msg_{offset}")
    log.low[(DISPATCH, 0)] = 2  # 0 and 1 deleted by retention
    log.write(DISPATCH, 2, 0, "sub_other", "msg_foreign")
    jobs = [
        JobRef(DISPATCH, 0, 1),
        JobRef(DISPATCH, 0, 5),
        JobRef(DISPATCH, 0, 6),
        JobRef(DISPATCH, 0, 9),
        JobRef(DISPATCH, 0, 10_000),
        JobRef(DISPATCH, 2, 0),
        JobRef(DISPATCH, 5, 3),  # no such partition
        JobRef("no.such.topic", 0, 3),
    ]

    report = await redeliverer(log, producer, consumers).redeliver(jobs, expect_subscription="sub_1")

    assert report.redelivered == ("msg_6", "msg_9")
    assert sorted(report.missing) == sorted(
        [
            JobRef(DISPATCH, 0, 1),
            JobRef(DISPATCH, 0, 5),
            JobRef(DISPATCH, 0, 10_000),
            JobRef(DISPATCH, 5, 3),
            JobRef("no.such.topic", 0, 3),
        ]
    )
    assert report.mismatched == (JobRef(DISPATCH, 2, 0),)
    assert [r.value for r in producer.sent] == [b'{"w":"msg_6"}', b'{"w":"msg_9"}']


async def test_redeliver_of_nothing_reads_and_copies_nothing() -> None:
    log, producer, consumers = FakeLog(), FakeProducer(), []
    report = await redeliverer(log, producer, consumers).redeliver([])
    assert report == RedeliveryReport()
    assert consumers == []
    assert producer.sent == []


# ------------------------------------------------------------------------------ feed


class FeedLog:
    """A delivery-log topic for the feed's fake clients; ``hold`` stops handing records out."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.records: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        self.hold = False

    def metadata(self, topic: str, timeout: float) -> Any:
        found = dict.fromkeys(self.records) if topic == self.topic else {}
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=found)})


class FeedConsumer:
    def __init__(self, log: FeedLog) -> None:
        self.log = log
        self.positions: dict[int, int] = {}
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        return self.log.metadata(topic, timeout)

    def incremental_assign(self, tps: list[Any]) -> None:
        for tp in tps:
            assert tp.offset == confluent_kafka.OFFSET_BEGINNING
            self.positions[tp.partition] = 0

    def consume(self, num: int, timeout: float) -> list[FakeMessage]:
        batch: list[FakeMessage] = []
        if not self.log.hold:
            for partition, position in self.positions.items():
                for offset in range(position, len(self.log.records[partition])):
                    batch.append(
                        FakeMessage(
                            self.log.topic, partition, offset, None, self.log.records[partition][offset]
                        )
                    )
                self.positions[partition] = len(self.log.records[partition])
        if not batch:
            time.sleep(timeout)  # what a real consume does when there is nothing to hand out
        return batch

    def position(self, tps: list[Any]) -> list[Any]:
        return [
            SimpleNamespace(partition=tp.partition, offset=self.positions.get(tp.partition, -1001))
            for tp in tps
        ]

    def close(self) -> None:
        self.closed = True


class FeedAdmin:
    def __init__(self, log: FeedLog) -> None:
        self.log = log

    def list_topics(self, topic: str, timeout: float) -> Any:
        return self.log.metadata(topic, timeout)

    def list_offsets(
        self, specs: dict[Any, Any], **_kwargs: Any
    ) -> dict[Any, concurrent.futures.Future[Any]]:
        answers: dict[Any, concurrent.futures.Future[Any]] = {}
        for tp, spec in specs.items():
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            latest = type(spec).__name__ == "LatestSpec"
            future.set_result(SimpleNamespace(offset=len(self.log.records[tp.partition]) if latest else 0))
            answers[tp] = future
        return answers


def feed_over(log: FeedLog, view: AttemptsView) -> tuple[AttemptsFeed, list[FeedConsumer]]:
    consumers: list[FeedConsumer] = []

    def consumer_factory(conf: dict[str, Any]) -> FeedConsumer:
        assert conf["enable.auto.commit"] is False
        consumers.append(FeedConsumer(log))
        return consumers[-1]

    feed = AttemptsFeed(
        "unused:9092",
        log.topic,
        view,
        poll_timeout_ms=5,
        consumer_factory=consumer_factory,
        admin_factory=lambda _conf: FeedAdmin(log),
    )
    return feed, consumers


async def test_feed_is_caught_up_once_every_record_at_the_call_is_in_the_view() -> None:
    log = FeedLog("deliveries", 3)
    log.records[0] += [record("msg_a", offset=0), record("msg_b", offset=1)]
    log.records[2] += [b"garbage", record("msg_c", sub="sub_2")]
    view = AttemptsView()
    feed, consumers = feed_over(log, view)
    assert not await feed.wait_caught_up(1.0)  # not started

    await feed.start()
    try:
        assert await feed.wait_caught_up(30.0)
        assert [a.webhook_id for a in view.for_endpoint("sub_1")] == ["msg_b", "msg_a"]
        assert [a.webhook_id for a in view.for_endpoint("sub_2")] == ["msg_c"]
        assert view.skipped == 1
        assert feed.partitions == [0, 1, 2]

        log.records[1].append(record("msg_d", at=T0 + timedelta(minutes=1)))
        assert await feed.wait_caught_up(30.0)
        assert view.for_endpoint("sub_1")[0].webhook_id == "msg_d"
    finally:
        await feed.stop()
    assert consumers[0].closed
    assert not await feed.wait_caught_up(1.0)  # stopped


async def test_feed_that_cannot_reach_the_end_says_it_is_not_caught_up() -> None:
    log = FeedLog("deliveries", 1)
    view = AttemptsView()
    feed, _ = feed_over(log, view)
    await feed.start()
    try:
        assert await feed.wait_caught_up(30.0)  # an empty topic
        log.hold = True
        log.records[0].append(record("msg_late"))
        assert not await feed.wait_caught_up(0.2)
        assert view.latest("sub_1", "msg_late") is None
        log.hold = False
        assert await feed.wait_caught_up(30.0)
        assert view.latest("sub_1", "msg_late") is not None
    finally:
        await feed.stop()
