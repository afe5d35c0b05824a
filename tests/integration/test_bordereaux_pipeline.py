"""The bordereaux app on a real Apache Kafka: exact, exactly-once, crash- and rebalance-proof.

* 100,000 generated policy and claim events → every report equals an independent batch
  calculation (tests/bordereaux_oracle.py) to the cent, and equals byte for byte the same
  task code run in memory in one clean pass.
* The processor SIGKILLed at random points of its progress, seven times (five of them surely
  mid-run), and restarted → byte-identical reports, none twice on the topic (read with
  read_committed).
* Two instances sharing the work, one stopped mid-run → identical reports.
* Source partitions that never send anything (no claims at all) do not hold reports back once
  they have been quiet for ``idle_source_after_s``, and partitions read to their end before a
  restart are found quiet after it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.bordereaux_oracle import compare, expected, generate
from tests.integration.bordereaux_helpers import (
    BOOK,
    CommittedReader,
    app_env,
    high_watermark_sum,
    kill,
    publish_in_order,
    read_to_end,
    reference_reports,
    start_app,
    stop,
)

pytestmark = pytest.mark.integration


def _reports(reader: CommittedReader, topic: str) -> list[tuple[str, bytes]]:
    return [(json.loads(m.value())["report_id"], m.value()) for m in reader.on(topic)]


def _no_duplicates(reports: list[tuple[str, bytes]]) -> dict[str, bytes]:
    counts = Counter(report_id for report_id, _ in reports)
    twice = sorted(r for r, n in counts.items() if n > 1)
    assert not twice, f"reports published more than once: {twice[:10]}"
    return dict(reports)


def _complete(reader: CommittedReader, bordereaux: str, files: str, reports: Any, days: Any) -> bool:
    return len(reader.on(bordereaux)) >= len(reports) and len(reader.on(files)) >= len(days)


def _setup(isolated_topics: Callable[..., tuple[Path, str]], n_events: int, seed: int) -> Any:
    topics_file, prefix = isolated_topics()
    published = generate(seed, n_events)
    want_reports, want_files = reference_reports(published)
    assert want_reports, "the generated events close no period: the test would prove nothing"
    return topics_file, prefix, published, want_reports, want_files


# waits up to 600 s for the reports, plus the lock's wait (one heavy test at a time)
@pytest.mark.timeout(1500)
@pytest.mark.usefixtures("one_heavy_at_a_time")
def test_100k_events_match_an_independent_recomputation(
    isolated_topics: Callable[..., tuple[Path, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics_file, prefix, published, want_reports, want_files = _setup(isolated_topics, 100_000, seed=6)
    oracle = expected(published, BOOK)
    # The in-memory reference and the independent calculation agree before Kafka is involved.
    assert compare(want_reports, oracle) == []
    publish_in_order(kafka_bootstrap, prefix, published)
    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    app = start_app(app_env(kafka_bootstrap, prefix, topics_file, "solo"), tmp_path / "app.log")
    try:
        reader.wait_until(
            lambda: (
                len(reader.on(bordereaux)) >= len(want_reports) and len(reader.on(files)) >= len(want_files)
            ),
            timeout_s=600,
            alive=[app],
            what=f"{len(want_reports)} reports and {len(want_files)} day files",
        )
        assert stop(app) == 0
        reader.poll(1.0)
    finally:
        if app.poll() is None:
            kill(app)
        reader.close()
    actual = _no_duplicates(_reports(reader, bordereaux))
    assert compare(actual, oracle) == []
    assert actual == want_reports
    # Late cancellations of closed periods are adjustment rows of a later period (a negative
    # return premium at the original percentage); the closed period's report exists once.
    late_cancellations = [
        (report["period"]["id"], row)
        for report in map(json.loads, actual.values())
        for row in report.get("policies", ())
        if row["transaction_type"] == "CANCELLATION" and row["adjustment_of"] is not None
    ]
    assert late_cancellations, "the generated events hold no late cancellation"
    for period_id, row in late_cancellations:
        assert row["adjustment_of"] < period_id
        assert Decimal(row["gross_premium"]) <= 0
        assert Decimal(row["return_premium"]) == Decimal(row["gross_premium"])
    periods_with_reports = {json.loads(v)["period"]["id"] for v in actual.values()}
    assert {row["adjustment_of"] for _, row in late_cancellations} <= periods_with_reports
    got_files = {m.key().decode(): m.value() for m in reader.on(files)}
    assert got_files == want_files
    for day, (csv_name, csv_bytes, manifest_name, manifest) in oracle.regulatory.items():
        job = json.loads(got_files[day])
        assert (job["file_name"], job["manifest_name"]) == (csv_name, manifest_name)
        assert job["csv"].encode() == csv_bytes, f"CSV of {day} differs from the batch calculation"
        assert json.loads(job["manifest"]) == json.loads(json.dumps(manifest, default=str))


@pytest.mark.timeout(900)
def test_sigkill_at_random_points_gives_byte_identical_reports(
    isolated_topics: Callable[..., tuple[Path, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics_file, prefix, published, want_reports, want_files = _setup(isolated_topics, 30_000, seed=11)
    publish_in_order(kafka_bootstrap, prefix, published)
    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    by_policy = f"{prefix}integrations.bordereaux.by-policy"
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    env = app_env(kafka_bootstrap, prefix, topics_file, "crashy")
    rng = random.Random(2024)
    # Kill points spread over the run. Five while at most 80 % of the events are routed (so
    # the run is surely not over), two more while reports go out.
    route_points = sorted(rng.sample(range(len(published) // 10, len(published) * 8 // 10), 5))
    report_points = sorted(rng.sample(range(1, len(want_reports)), 2))
    kills = 0
    app = start_app(env, tmp_path / "app.log")
    try:
        for point in route_points:
            reader.wait_until(
                lambda point=point: high_watermark_sum(kafka_bootstrap, by_policy) >= point,  # type: ignore[misc]
                timeout_s=300,
                alive=[app],
                what=f"{point} routed records",
            )
            kill(app)
            kills += 1
            app = start_app(env, tmp_path / "app.log")
        for point in report_points:
            reader.wait_until(
                lambda point=point: len(reader.on(bordereaux)) >= point,  # type: ignore[misc]
                timeout_s=300,
                alive=[app],
                what=f"{point} reports",
            )
            kill(app)
            kills += 1
            app = start_app(env, tmp_path / "app.log")
        reader.wait_until(
            lambda: (
                len(reader.on(bordereaux)) >= len(want_reports) and len(reader.on(files)) >= len(want_files)
            ),
            timeout_s=600,
            alive=[app],
            what="every report",
        )
        assert stop(app) == 0
        reader.poll(1.0)
    finally:
        if app.poll() is None:
            kill(app)
        reader.close()
    assert kills == 7
    actual = _no_duplicates(_reports(reader, bordereaux))
    assert actual == want_reports
    assert {m.key().decode(): m.value() for m in reader.on(files)} == want_files


@pytest.mark.timeout(900)
def test_two_instances_one_stopped_mid_run_give_identical_reports(
    isolated_topics: Callable[..., tuple[Path, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics_file, prefix, published, want_reports, want_files = _setup(isolated_topics, 30_000, seed=12)
    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    by_policy = f"{prefix}integrations.bordereaux.by-policy"
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    first = start_app(app_env(kafka_bootstrap, prefix, topics_file, "one"), tmp_path / "one.log")
    second = start_app(app_env(kafka_bootstrap, prefix, topics_file, "two"), tmp_path / "two.log")
    try:
        publish_in_order(kafka_bootstrap, prefix, published)
        reader.wait_until(
            lambda: high_watermark_sum(kafka_bootstrap, by_policy) >= len(published) // 3,
            timeout_s=300,
            alive=[first, second],
            what="a third of the events routed",
        )
        assert stop(second) == 0
        reader.wait_until(
            lambda: (
                len(reader.on(bordereaux)) >= len(want_reports) and len(reader.on(files)) >= len(want_files)
            ),
            timeout_s=600,
            alive=[first],
            what="every report",
        )
        assert stop(first) == 0
        reader.poll(1.0)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                kill(proc)
        reader.close()
    actual = _no_duplicates(_reports(reader, bordereaux))
    assert actual == want_reports
    assert {m.key().decode(): m.value() for m in reader.on(files)} == want_files


@pytest.mark.timeout(600)
def test_quiet_source_partitions_do_not_hold_reports_back(
    isolated_topics: Callable[..., tuple[Path, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    # Policy events only: the six claims partitions never send anything.
    published = [p for p in generate(21, 6_000) if p.topic == "insurance.policy.events"]
    never, _ = reference_reports(published)
    assert never == {}, "without idleness nothing may close: the test would prove nothing"
    want_reports, want_files = reference_reports(published, then_idle=True)
    assert len(want_reports) > 10
    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    publish_in_order(kafka_bootstrap, prefix, published)
    env = app_env(kafka_bootstrap, prefix, topics_file, "quiet")
    env["PROCESSORS_BORDEREAUX__IDLE_SOURCE_AFTER_S"] = "2"
    app = start_app(env, tmp_path / "quiet.log")
    try:
        reader.wait_until(
            lambda: _complete(reader, bordereaux, files, want_reports, want_files),
            timeout_s=300,
            alive=[app],
            what="every report and day file",
        )
        assert stop(app) == 0
        reader.poll(1.0)
    finally:
        if app.poll() is None:
            kill(app)
        reader.close()
    assert _no_duplicates(_reports(reader, bordereaux)) == want_reports
    assert {m.key().decode(): m.value() for m in reader.on(files)} == want_files
    assert "told they are idle" in (tmp_path / "quiet.log").read_text()


@pytest.mark.timeout(600)
def test_partitions_read_to_their_end_before_a_restart_are_found_quiet_after_it(
    isolated_topics: Callable[..., tuple[Path, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    everything = generate(22, 6_000)
    published = everything[: len(everything) * 7 // 10]  # no closing tail: partitions end apart
    plain_reports, plain_files = reference_reports(published)
    want_reports, want_files = reference_reports(published, then_idle=True)
    assert len(want_reports) > len(plain_reports), "only idleness may close the last periods"
    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    sources = [f"{prefix}insurance.policy.events", f"{prefix}insurance.claim.events"]
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    publish_in_order(kafka_bootstrap, prefix, published)
    env = app_env(kafka_bootstrap, prefix, topics_file, "restarted")
    env["PROCESSORS_BORDEREAUX__IDLE_SOURCE_AFTER_S"] = "0"  # first without idleness
    first = start_app(env, tmp_path / "first.log")
    second = None
    try:
        reader.wait_until(
            lambda: (
                _complete(reader, bordereaux, files, plain_reports, plain_files)
                and read_to_end(kafka_bootstrap, f"{prefix}bordereaux", sources)
            ),
            timeout_s=300,
            alive=[first],
            what="every source partition read to its end",
        )
        assert stop(first) == 0
        env["PROCESSORS_BORDEREAUX__IDLE_SOURCE_AFTER_S"] = "2"
        second = start_app(env, tmp_path / "second.log")
        reader.wait_until(
            lambda: _complete(reader, bordereaux, files, want_reports, want_files),
            timeout_s=300,
            alive=[second],
            what="the periods only idleness closes",
        )
        assert stop(second) == 0
        reader.poll(1.0)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                kill(proc)
        reader.close()
    assert _no_duplicates(_reports(reader, bordereaux)) == want_reports
    assert {m.key().decode(): m.value() for m in reader.on(files)} == want_files
    assert "told they are idle" in (tmp_path / "second.log").read_text()
