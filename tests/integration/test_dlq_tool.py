"""``processors dlq ...`` against a real broker.

Dead letters are produced with the runtime's own :func:`~processors.runtime.failures.dead_letter`
on ``StaticMessage`` inputs, so they carry exactly the headers the processors write.  Each
test gets its own copy of the catalogue under a unique topic prefix (``isolated_topics``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

from processors.cli import main
from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.examples import example_event
from processors.dlq import (
    DlqFilter,
    ProgressMismatch,
    ReplayLock,
    ReplayLockHeld,
    ReplayProgress,
    ReplayReport,
    describe_value,
    progress_group,
    read_dead_letter,
    replay,
    scan,
    stats,
)
from processors.errors import ConfigError, Permanent, Retriable, ValidationFailed
from processors.runtime.failures import H, dead_letter
from processors.runtime.message import StaticMessage
from processors.topics.catalogue import AppTopics, Catalogue, load_catalogue
from tests.integration.helpers import Collector, committed_offsets, end_offsets

CODEC = Codec(LocalSchemaIds())
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Env:
    bootstrap: str
    topics_file: Path
    catalogue: Catalogue
    app: AppTopics

    @property
    def source(self) -> str:
        return self.app.sources[0]

    @property
    def retry(self) -> str:
        return self.app.retry_tiers[0].topic

    @property
    def audit(self) -> str:
        return next(t.name for t in self.catalogue.topics if t.name.endswith("integrations.audit"))

    def cli(self, *argv: str) -> list[str]:
        return [
            "dlq",
            argv[0],
            "--app",
            self.app.name,
            "--bootstrap-servers",
            self.bootstrap,
            "--topics-file",
            str(self.topics_file),
            *argv[1:],
        ]


@pytest.fixture
def env(isolated_topics: Callable[[], tuple[Path, str]], kafka_bootstrap: str) -> Env:
    path, _prefix = isolated_topics()
    catalogue = load_catalogue(path)
    return Env(kafka_bootstrap, path, catalogue, catalogue.app("payments"))


@dataclass
class Spec:
    """One dead letter to write: where, which key, why, when, how often replayed already."""

    partition: int
    key: str
    exc: Exception
    failed_at: datetime = NOW
    replays: int | None = None
    source_partition: int | None = None
    value: bytes | None = None
    event_headers: list[tuple[str, bytes]] | None = None
    source_topic: str | None = None


def premium_due_value() -> tuple[bytes, list[tuple[str, bytes]]]:
    return CODEC.encode(example_event("premium.due"), ContentType.AVRO)


def put(env: Env, specs: list[Spec]) -> list[tuple[int, int]]:
    """Write ``specs`` to the app's DLQ as the runtime would; their (partition, offset)s in order."""
    producer = confluent_kafka.Producer({"bootstrap.servers": env.bootstrap, "enable.idempotence": True})
    value, event_headers = premium_due_value()
    placed: dict[int, tuple[int, int]] = {}

    for index, spec in enumerate(specs):
        headers: list[tuple[str, bytes | None]] = list(
            event_headers if spec.event_headers is None else spec.event_headers
        )
        if spec.replays is not None:
            headers.append((H.REPLAY_COUNT, str(spec.replays).encode()))
        source = StaticMessage(
            spec.source_topic or env.source,
            spec.partition if spec.source_partition is None else spec.source_partition,
            1000 + index,
            spec.key.encode(),
            spec.value if spec.value is not None else value,
            tuple(headers),
            1_700_000_000_000 + index,
        )
        record = dead_letter(
            source, spec.exc, topic=env.app.dlq, app="payments", group="grp", attempts=3, now=spec.failed_at
        )

        def delivered(err: Any, msg: Any, index: int = index) -> None:
            assert err is None, err
            placed[index] = (msg.partition(), msg.offset())

        producer.produce(
            record.topic,
            key=record.key,
            value=record.value,
            headers=list(record.headers),
            partition=spec.partition,
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    return [placed[i] for i in range(len(specs))]


def read_topic(bootstrap: str, topic: str, count: int, *, timeout_s: float = 30.0) -> list[Any]:
    """Exactly ``count`` records of ``topic`` (fails if the topic holds another number)."""
    collector = Collector(bootstrap, [topic])
    try:
        deadline = time.monotonic() + timeout_s
        while len(collector.records) < count:
            assert time.monotonic() < deadline, f"{len(collector.records)} of {count} records on {topic}"
            collector.poll()
    finally:
        collector.close()
    assert sum(end_offsets(bootstrap, topic).values()) == count
    return sorted(collector.records, key=lambda m: (m.partition(), m.offset()))


def headers_of(msg: Any) -> dict[str, str]:
    names = [name for name, _ in msg.headers() or []]
    assert len(names) == len(set(names)), f"duplicated headers: {names}"
    return {name: bytes(value).decode() for name, value in msg.headers() or []}


def audit_records(env: Env, count: int) -> list[dict[str, Any]]:
    records = read_topic(env.bootstrap, env.audit, count)
    assert all(r.key() == b"payments" for r in records)
    return [json.loads(r.value()) for r in records]


def do_replay(env: Env, flt: DlqFilter | None = None, **kwargs: Any) -> ReplayReport:
    kwargs.setdefault("operator", "oncall-test")
    kwargs.setdefault("rate_per_s", 10_000)
    return replay(env.bootstrap, env.catalogue, "payments", flt, **kwargs)


MIXED = [
    Spec(0, "POL-1", Retriable("gateway timeout"), NOW - timedelta(hours=1)),
    Spec(0, "POL-2", Permanent("card declined"), NOW - timedelta(hours=5)),
    Spec(1, "POL-3", ValidationFailed("amount: bad"), NOW - timedelta(days=2)),
    Spec(1, "POL-1", Retriable("gateway timeout"), NOW - timedelta(minutes=10)),
    Spec(2, "POL-4", Permanent("card declined"), NOW - timedelta(days=4)),
    Spec(3, "POL-5", Retriable("gateway 503"), NOW - timedelta(hours=30)),
]


# --------------------------------------------------------------------------- list / stats / show


def test_scan_selects_with_every_filter(env: Env) -> None:
    at = put(env, MIXED)

    def selected(**kwargs: Any) -> list[tuple[int, int]]:
        return sorted(
            (r.partition, r.offset) for r in scan(env.bootstrap, env.app.dlq, DlqFilter.build(**kwargs))
        )

    assert selected() == sorted(at)
    assert selected(error_classes=["Retriable"]) == sorted([at[0], at[3], at[5]])
    assert selected(error_classes=["Retriable", "ValidationFailed"]) == sorted([at[0], at[2], at[3], at[5]])
    assert selected(since="2h") == sorted([at[0], at[3]])
    assert selected(since="3d", until="1d") == sorted([at[2], at[5]])
    absolute = (NOW - timedelta(hours=6)).isoformat()
    assert selected(since=absolute, until=(NOW - timedelta(hours=2)).isoformat()) == [at[1]]
    assert selected(key="POL-1") == sorted([at[0], at[3]])
    assert selected(partition=1) == sorted([at[2], at[3]])
    assert selected(partition=0, from_offset=1) == [at[1]]
    assert selected(to_offset=0) == sorted([at[0], at[2], at[4], at[5]])
    assert len(selected(limit=2)) == 2
    assert selected(error_classes=["NoSuchError"]) == []


def test_listed_records_carry_provenance_but_no_value(env: Env) -> None:
    put(env, [Spec(2, "POL-9", Permanent("card declined"), NOW, source_partition=4)])
    (record,) = list(scan(env.bootstrap, env.app.dlq))
    summary = record.summary()
    assert summary["error_class"] == "Permanent"
    assert summary["error_message"] == "card declined"
    assert summary["original_topic"] == env.source
    assert (summary["original_partition"], summary["original_offset"]) == (4, 1000)
    assert summary["replay_count"] == 0
    assert summary["failed_at"] == NOW.isoformat(timespec="milliseconds")
    assert "value" not in summary


def test_reading_joins_no_group_and_commits_nothing(env: Env) -> None:
    put(env, MIXED)
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    before = {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}
    assert len(list(scan(env.bootstrap, env.app.dlq))) == len(MIXED)
    stats(env.bootstrap, env.app.dlq)
    after = {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}
    assert not any(g.startswith("processors-dlq-reader") for g in after - before)
    nothing_committed = dict.fromkeys(range(6), -1001)
    assert committed_offsets(env.bootstrap, progress_group(env.app.dlq), env.app.dlq) == nothing_committed


def test_a_scan_ends_at_the_offsets_seen_at_its_start_while_dead_letters_keep_arriving(env: Env) -> None:
    put(env, MIXED)
    stop = threading.Event()

    def keep_failing() -> None:
        while not stop.is_set():
            put(env, [Spec(0, "POL-LATE", Retriable("late"))])

    writer = threading.Thread(target=keep_failing)
    writer.start()
    try:
        records = scan(env.bootstrap, env.app.dlq)
        seen = list(records)
    finally:
        stop.set()
        writer.join()
    assert len(seen) >= len(MIXED)
    assert sum(end_offsets(env.bootstrap, env.app.dlq).values()) >= len(seen)


def test_stats_break_down_by_class_day_and_topic(env: Env) -> None:
    put(env, MIXED)
    counts = stats(env.bootstrap, env.app.dlq).as_dict()
    assert counts["total"] == 6
    assert counts["by_error_class"] == {"Retriable": 3, "Permanent": 2, "ValidationFailed": 1}
    assert counts["by_original_topic"] == {env.source: 6}
    assert sum(counts["by_day"].values()) == 6
    assert counts["by_day"][(NOW - timedelta(days=4)).date().isoformat()] == 1
    assert counts["oldest"] == (NOW - timedelta(days=4)).isoformat(timespec="milliseconds")
    assert counts["newest"] == (NOW - timedelta(minutes=10)).isoformat(timespec="milliseconds")
    only = stats(env.bootstrap, env.app.dlq, DlqFilter.build(error_classes=["Permanent"], partition=0))
    assert only.as_dict()["total"] == 1


def test_show_masks_personal_data_and_previews_undecodable_values(env: Env) -> None:
    kyc, kyc_headers = CODEC.encode(example_event("customer.kyc_requested"), ContentType.JSON)
    at = put(
        env,
        [
            Spec(1, "CUST-000123", ValidationFailed("bad document"), value=kyc, event_headers=kyc_headers),
            Spec(
                1, "POL-1", ValidationFailed("undecodable"), value=b"\x07not an event" * 8, event_headers=[]
            ),
        ],
    )
    record = read_dead_letter(env.bootstrap, env.app.dlq, *at[0])
    view = describe_value(record.value, record.headers, CODEC)
    assert view.event_type == "customer.kyc_requested"
    assert view.data["documents"][0]["document_number"] == "***"
    assert "AB123456" not in json.dumps(view.as_dict())
    junk = read_dead_letter(env.bootstrap, env.app.dlq, *at[1])
    preview = describe_value(junk.value, junk.headers, CODEC)
    assert not preview.decoded
    assert preview.size == 13 * 8
    assert preview.hex_preview == (b"\x07not an event" * 8)[:64].hex(" ")
    with pytest.raises(ConfigError, match="no record at"):
        read_dead_letter(env.bootstrap, env.app.dlq, 1, 99)


def test_the_cli_lists_shows_and_counts(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    kyc, kyc_headers = CODEC.encode(example_event("customer.kyc_requested"), ContentType.JSON)
    kyc_spec = Spec(5, "CUST-000123", ValidationFailed("bad document"), value=kyc, event_headers=kyc_headers)
    at = put(env, [*MIXED, kyc_spec])
    capsys.readouterr()

    assert main(env.cli("list", "--json", "--error-class", "Permanent")) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((row["partition"], row["offset"]) for row in lines) == sorted([at[1], at[4]])
    assert all("value" not in row for row in lines)

    assert main(env.cli("list", "--key", "NOBODY")) == 0
    assert "0 matched" in capsys.readouterr().out

    assert main(env.cli("show", "--partition", "5", "--offset", "0")) == 0
    shown = capsys.readouterr().out
    assert "customer.kyc_requested" in shown
    assert "AB123456" not in shown
    assert '"document_number": "***"' in shown
    assert "x-error-class" in shown

    assert main(env.cli("stats", "--json", "--since", "3h")) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3

    assert main(env.cli("show", "--partition", "9", "--offset", "0")) == 2
    assert "no partition 9" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay


def test_a_dry_run_moves_nothing_and_reports_the_breakdown(env: Env) -> None:
    put(env, [*MIXED, Spec(4, "POL-6", Retriable("again"), replays=3)])
    report = do_replay(env, DlqFilter.build(error_classes=["Retriable"]), dry_run=True)
    assert report.dry_run
    assert report.completed
    assert (report.selected, report.to_replay, report.to_park) == (4, 3, 1)
    assert (report.replayed, report.parked) == (0, 0)
    assert report.breakdown.as_dict()["by_error_class"] == {"Retriable": 4}
    assert report.destinations == {env.retry: 3, env.app.parked: 1}
    for topic in (env.retry, env.app.parked, env.source):
        assert sum(end_offsets(env.bootstrap, topic).values()) == 0
    nothing_committed = dict.fromkeys(range(6), -1001)
    assert committed_offsets(env.bootstrap, progress_group(env.app.dlq), env.app.dlq) == nothing_committed
    (audit,) = audit_records(env, 1)
    assert audit["dry_run"] is True
    assert (audit["selected"], audit["replayed"], audit["parked"]) == (4, 0, 0)


def test_replay_to_the_first_retry_tier_keeps_key_and_partition_and_rewrites_headers(env: Env) -> None:
    specs = [
        Spec(0, "POL-1", Retriable("t")),
        Spec(3, "POL-2", Retriable("t"), replays=1),
        Spec(5, "POL-3", Retriable("t"), source_partition=2),
    ]
    at = put(env, specs)
    dlq = {(r.partition, r.offset): r for r in scan(env.bootstrap, env.app.dlq)}
    before = time.time()
    report = do_replay(env, operator="alice")
    assert (report.selected, report.replayed, report.parked, report.completed) == (3, 3, 0, True)

    moved = read_topic(env.bootstrap, env.retry, 3)
    assert [m.partition() for m in moved] == [0, 3, 5]
    for msg, spec, coords in zip(moved, specs, at, strict=True):
        original = dlq[coords]
        assert msg.key() == spec.key.encode()
        assert msg.value() == original.value
        after = headers_of(msg)
        was = {k: v.decode() for k, v in original.headers}
        assert int(after[H.REPLAY_COUNT]) == (spec.replays or 0) + 1
        assert after[H.ATTEMPTS] == "0"
        due = datetime.fromisoformat(after[H.DUE_AT])
        assert due.utcoffset() == timedelta(0)
        assert before - 1 <= due.timestamp() <= time.time() + 1
        assert len(after[H.DUE_AT]) == len(was[H.FAILED_AT])
        for name in (H.ORIGINAL_TOPIC, H.ORIGINAL_PARTITION, H.ORIGINAL_OFFSET, H.ORIGINAL_TIMESTAMP,
                     H.ERROR_CLASS, H.ERROR_MESSAGE, H.FAILED_AT, "content-type", "event-type"):  # fmt: skip
            assert after[name] == was[name], name
    assert headers_of(moved[2])[H.ORIGINAL_PARTITION] == "2"
    assert sum(end_offsets(env.bootstrap, env.app.parked).values()) == 0

    (audit,) = audit_records(env, 1)
    assert audit == {
        **audit,
        "event_type": "dlq.replayed",
        "operator": "alice",
        "app": "payments",
        "dlq": env.app.dlq,
        "target": env.retry,
        "filters": {},
        "dry_run": False,
        "selected": 3,
        "replayed": 3,
        "parked": 0,
        "replay_id": report.replay_id,
    }
    assert datetime.fromisoformat(audit["occurred_at"]).tzinfo is not None
    # the DLQ itself is untouched and progress is committed to its end
    assert sum(end_offsets(env.bootstrap, env.app.dlq).values()) == 3
    done = committed_offsets(env.bootstrap, progress_group(env.app.dlq), env.app.dlq)
    assert (done[0], done[3], done[5]) == (1, 1, 1)


def test_replay_to_the_original_topic_goes_to_the_original_partition(env: Env) -> None:
    put(env, [Spec(1, "POL-1", Permanent("declined"), source_partition=1),
              Spec(4, "POL-2", Permanent("declined"), source_partition=2)])  # fmt: skip
    report = do_replay(env, target="original")
    assert (report.replayed, report.target_topic) == (2, None)
    moved = read_topic(env.bootstrap, env.source, 2)
    assert [(m.key(), m.partition()) for m in moved] == [(b"POL-1", 1), (b"POL-2", 2)]
    assert all(headers_of(m)[H.REPLAY_COUNT] == "1" for m in moved)
    assert sum(end_offsets(env.bootstrap, env.retry).values()) == 0


def test_records_that_cannot_go_back_stop_a_replay_before_anything_moves(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    put(env, [Spec(0, "POL-1", Permanent("declined")),
              Spec(1, "POL-2", Permanent("declined"), source_topic="somebody.elses.events")])  # fmt: skip
    with pytest.raises(ConfigError, match="is not a source of app 'payments'"):
        do_replay(env, target="original")
    assert sum(end_offsets(env.bootstrap, env.source).values()) == 0
    dry = do_replay(env, target="original", dry_run=True)
    assert len(dry.problems) == 1
    assert "somebody.elses.events" in dry.problems[0]
    capsys.readouterr()
    assert main(env.cli("replay", "--dry-run", "--to", "original")) == 2
    assert "could not be replayed" in capsys.readouterr().out
    report = do_replay(env, target="retry")  # the retry tier takes both
    assert report.replayed == 2


def test_records_at_the_replay_limit_are_parked_unchanged(env: Env) -> None:
    at = put(env, [Spec(0, "POL-1", Retriable("t"), replays=2),
                   Spec(0, "POL-2", Retriable("t"), replays=3),
                   Spec(2, "POL-3", Retriable("t"), replays=9)])  # fmt: skip
    dlq = {(r.partition, r.offset): r for r in scan(env.bootstrap, env.app.dlq)}
    report = do_replay(env, replay_limit=3)
    assert (report.selected, report.replayed, report.parked) == (3, 1, 2)
    (retried,) = read_topic(env.bootstrap, env.retry, 1)
    assert retried.key() == b"POL-1"
    assert headers_of(retried)[H.REPLAY_COUNT] == "3"
    parked = read_topic(env.bootstrap, env.app.parked, 2)
    assert [(m.key(), m.partition()) for m in parked] == [(b"POL-2", 0), (b"POL-3", 2)]
    for msg, coords in zip(parked, at[1:], strict=True):
        assert list(msg.headers()) == list(dlq[coords].headers)
        assert msg.value() == dlq[coords].value
    (audit,) = audit_records(env, 1)
    assert (audit["replayed"], audit["parked"]) == (1, 2)


def test_an_interrupted_replay_resumes_without_resending_or_skipping(env: Env) -> None:
    specs = [Spec(i % 3, f"POL-{i}", Retriable("t")) for i in range(30)]
    specs[7] = Spec(1, "POL-7", Permanent("other"))  # passed over by the filter
    put(env, specs)
    flt = DlqFilter.build(error_classes=["Retriable"])

    first = do_replay(env, flt, max_records=12, batch_size=5)
    assert (first.replayed, first.completed, first.selected) == (12, False, 29)
    second = do_replay(env, flt, batch_size=5)
    assert second.resumed
    assert second.completed
    assert (second.selected, second.replayed) == (17, 17)

    moved = read_topic(env.bootstrap, env.retry, 29)
    keys = Counter(m.key().decode() for m in moved)
    assert set(keys) == {f"POL-{i}" for i in range(30)} - {"POL-7"}
    assert max(keys.values()) == 1
    third = do_replay(env, flt)
    assert (third.selected, third.replayed) == (0, 0)
    audits = audit_records(env, 3)
    assert [a["replayed"] for a in audits] == [12, 17, 0]
    assert [a["completed"] for a in audits] == [False, True, True]


def test_a_crashed_replay_resends_at_most_one_batch(env: Env) -> None:
    put(env, [Spec(i % 2, f"POL-{i}", Retriable("t")) for i in range(20)])

    class Crash(Exception):
        pass

    def crash_after_twelve(progress: ReplayProgress) -> None:
        if progress.done >= 12:
            raise Crash

    with pytest.raises(Crash):
        do_replay(
            env, batch_size=5, commit_interval_s=3600, on_progress=crash_after_twelve, progress_interval_s=0
        )
    report = do_replay(env, batch_size=5)
    assert report.resumed
    assert report.completed

    moved = Collector(env.bootstrap, [env.retry])
    try:
        deadline = time.monotonic() + 30
        while len({m.key() for m in moved.records}) < 20:
            assert time.monotonic() < deadline
            moved.poll()
    finally:
        moved.close()
    keys = Counter(bytes(m.key() or b"").decode() for m in moved.records)
    assert set(keys) == {f"POL-{i}" for i in range(20)}
    resent = sum(keys.values()) - 20
    assert 0 <= resent <= 5
    assert sum(end_offsets(env.bootstrap, env.retry).values()) == 20 + resent


def test_progress_recorded_with_other_filters_is_not_resumed_silently(env: Env) -> None:
    put(env, MIXED)
    do_replay(env, DlqFilter.build(error_classes=["Retriable"]))
    with pytest.raises(ProgressMismatch, match="--restart"):
        do_replay(env, DlqFilter.build(error_classes=["Permanent"]))
    narrower = do_replay(env, DlqFilter.build(error_classes=["Retriable"], partition=0))
    assert narrower.selected == 0
    restarted = do_replay(env, DlqFilter.build(error_classes=["Permanent"]), restart=True)
    assert restarted.replayed == 2
    assert sum(end_offsets(env.bootstrap, env.retry).values()) == 5


@pytest.fixture
def slow_replay(env: Env) -> Iterator[tuple[threading.Event, list[ReplayReport]]]:
    """A replay of 40 dead letters at 2 per second, running in a thread until stopped."""
    put(env, [Spec(i % 6, f"POL-{i}", Retriable("t")) for i in range(40)])
    started, stop = threading.Event(), threading.Event()
    reports: list[ReplayReport] = []

    def run() -> None:
        reports.append(
            do_replay(
                env,
                rate_per_s=2,
                stop=stop,
                progress_interval_s=0,
                on_progress=lambda _: started.set(),
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(30), "the first replay did not start"
        yield stop, reports
    finally:
        stop.set()
        thread.join(60)


def test_a_second_replay_of_the_same_dlq_is_refused(
    env: Env, slow_replay: tuple[threading.Event, list[ReplayReport]], capsys: pytest.CaptureFixture[str]
) -> None:
    stop, reports = slow_replay
    with pytest.raises(ReplayLockHeld, match="another replay of"):
        do_replay(env)
    assert main(env.cli("replay", "--yes", "--operator", "bob")) == 4
    assert "another replay of" in capsys.readouterr().err
    assert do_replay(env, dry_run=True).dry_run  # a dry run needs no lock
    stop.set()
    deadline = time.monotonic() + 30
    while not reports:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not reports[0].completed
    assert 0 < reports[0].replayed < 40
    rest = do_replay(env)  # the lock is free again, and the run continues where the first stopped
    assert rest.replayed == 40 - reports[0].replayed
    assert len({m.key() for m in read_topic(env.bootstrap, env.retry, 40)}) == 40


def test_the_lock_refuses_while_held_and_is_free_after_release(env: Env) -> None:
    first = ReplayLock(env.bootstrap, env.app.dlq, operator="alice")
    first.acquire()
    try:
        second = ReplayLock(env.bootstrap, env.app.dlq, operator="bob")
        with pytest.raises(ReplayLockHeld, match="alice"):
            second.acquire()
        first.ensure_held()
    finally:
        first.release()
    with ReplayLock(env.bootstrap, env.app.dlq, operator="bob") as third:
        assert third.held


def test_the_cli_replays_with_yes_and_prints_a_json_summary(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    put(env, MIXED)
    capsys.readouterr()
    assert main(env.cli("replay", "--dry-run", "--json", "--error-class", "Permanent")) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["dry_run"], dry["selected"], dry["to_replay"]) == (True, 2, 2)

    argv = env.cli(
        "replay", "--yes", "--json", "--error-class", "Permanent", "--operator", "carol", "--rate", "100"
    )
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["replayed"], summary["parked"], summary["completed"]) == (2, 0, True)
    assert summary["operator"] == "carol"
    assert sum(end_offsets(env.bootstrap, env.retry).values()) == 2
    audits = audit_records(env, 2)
    assert [a["dry_run"] for a in audits] == [True, False]
    assert audits[1]["filters"] == {"error_class": ["Permanent"]}
