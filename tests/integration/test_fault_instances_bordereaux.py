"""Bordereaux instances come and go: two static members, one killed at random every few seconds.

Two bordereaux processes share the group as static members (``instance_id`` ``a`` and ``b``,
the product's 45 s session).  While the generated policy and claim events flow in small slices,
a random one of the two is killed with SIGKILL every few seconds and started again with the
killed member's instance id (so it takes its partitions back at once, and its transactional id
fences what the killed process left open).  The closing tail, which closes every 2024 period,
is published only after the last kill, so the last reports cannot exist before the churn is
over.  Then the reports and regulatory day files on the topics (read with ``read_committed``)
are byte for byte those of the same task code run in memory in one clean pass, none twice, and
agree with the independent batch calculation (``tests/bordereaux_oracle.py``): exactly-once
aggregates.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bordereaux_oracle import Published, compare, compare_regulatory, expected, generate
from tests.integration.bordereaux_helpers import (
    BOOK,
    CommittedReader,
    app_env,
    count_records,
    kill,
    publish_in_order,
    reference_reports,
    start_app,
    stop,
)

pytestmark = pytest.mark.timeout(480)

EVENTS = 30_000
KILLS = 6
KILL_EVERY_S = (4.0, 8.0)
"""Six kills, one every 4-8 s: the churn lasts from about half a minute to a minute."""
INSTANCES = ("a", "b")
FLOW_SLICES = 20
FLOW_PAUSE_S = 1.5
"""The events before the closing tail go out in 20 slices 1.5 s apart: they flow all through
the churn (and on after it on a slow machine), each slice keeping the members busy for a while."""


class _Publisher(threading.Thread):
    """Publishes ``slices`` one after the other, a short pause between them: events flowing."""

    def __init__(self, bootstrap: str, prefix: str, slices: list[list[Published]]) -> None:
        super().__init__(name="publisher", daemon=True)
        self._args = (bootstrap, prefix)
        self._slices = slices
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for part in self._slices:
                publish_in_order(*self._args, part)
                self.published += len(part)
                time.sleep(FLOW_PAUSE_S)  # the flow's pace, not a wait for an event
        except BaseException as exc:  # shown by the test's assertion
            self.error = exc


def _pace(reader: CommittedReader, seconds: float) -> None:
    """The churn's pace (not a wait for an event); the reader keeps up meanwhile."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        reader.poll(min(0.3, max(0.0, until - time.monotonic())))


def test_static_members_killed_at_random_give_byte_identical_reports(
    isolated_topics: Callable[..., tuple[Path, str]],
    kafka_bootstrap: str,
    tmp_path: Path,
    figures: Callable[[str], None],
) -> None:
    topics_file, prefix = isolated_topics()
    published = generate(31, EVENTS)
    want_reports, want_files = reference_reports(published)
    assert want_reports, "the generated events close no period: the test would prove nothing"
    oracle = expected(published, BOOK)
    assert compare(want_reports, oracle) == []
    assert compare_regulatory(want_files, oracle) == []
    # The body flows in small slices all through the churn; the closing tail (which closes
    # every 2024 period) only after the last kill.
    body, tail = published[: -len(published) // 10], published[-len(published) // 10 :]
    step = -(-len(body) // FLOW_SLICES)
    flow = [body[i : i + step] for i in range(0, len(body), step)]

    bordereaux, files = f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"
    by_policy, partials = (
        f"{prefix}integrations.bordereaux.by-policy",
        f"{prefix}integrations.bordereaux.partials",
    )
    reader = CommittedReader(kafka_bootstrap, [bordereaux, files])
    envs = {}
    for instance in INSTANCES:
        env = app_env(kafka_bootstrap, prefix, topics_file, instance)
        # The product's own 45 s session: a replacement with the same instance id takes the
        # killed member's partitions back at once, without waiting for the session to expire.
        env.pop("PROCESSORS_CLIENT_OVERRIDES")
        envs[instance] = env
    members = {i: start_app(envs[i], tmp_path / f"{i}.log") for i in INSTANCES}
    rng = random.Random(1)
    kills: Counter[str] = Counter()
    publisher = _Publisher(kafka_bootstrap, prefix, flow)
    try:
        publisher.start()
        while sum(kills.values()) < KILLS:
            _pace(reader, rng.uniform(*KILL_EVERY_S))
            victim = rng.choice(INSTANCES)
            kill(members[victim])
            kills[victim] += 1
            members[victim] = start_app(envs[victim], tmp_path / f"{victim}.log")
        last_kill = time.monotonic()
        reports_at_last_kill = len(reader.on(bordereaux))
        flowing_at_last_kill = publisher.published
        publisher.join(120)
        assert publisher.published == len(body), publisher.error
        publish_in_order(kafka_bootstrap, prefix, tail)
        reader.wait_until(
            lambda: (
                len(reader.on(bordereaux)) >= len(want_reports) and len(reader.on(files)) >= len(want_files)
            ),
            timeout_s=300,
            alive=list(members.values()),
            what=f"{len(want_reports)} reports and {len(want_files)} day files",
        )
        recovered_s = time.monotonic() - last_kill
        for instance in INSTANCES:
            assert stop(members[instance]) == 0, (tmp_path / f"{instance}.log").read_text()[-3000:]
        reader.poll(1.0)
    finally:
        for proc in members.values():
            if proc.poll() is None:
                kill(proc)
        reader.close()

    # Records of transactions the kills left open and the replacements aborted (none is read).
    written = count_records(kafka_bootstrap, [by_policy, partials], committed=False)
    kept = count_records(kafka_bootstrap, [by_policy, partials], committed=True)
    reports = [(json.loads(m.value())["report_id"], m.value()) for m in reader.on(bordereaux)]
    copies = Counter(report_id for report_id, _ in reports)
    duplicates = sum(n - 1 for n in copies.values())
    figures(
        f"bordereaux churn: events={len(published)} kills={sum(kills.values())} {dict(kills)} "
        f"reports={len(reports)} (expected {len(want_reports)}, {reports_at_last_kill} out at the "
        f"last kill) day files={len(reader.on(files))} (expected {len(want_files)}) "
        f"duplicates={duplicates} copies per report={sorted(set(copies.values()))} "
        f"all out {recovered_s:.1f} s after the last kill; {flowing_at_last_kill} of {len(body)} events "
        f"published at the last kill; internal records committed={kept} aborted={written - kept}"
    )
    assert sum(kills.values()) == KILLS
    assert duplicates == 0, (
        f"reports published more than once: {[r for r, n in copies.items() if n > 1][:10]}"
    )
    got_files = {m.key().decode(): m.value() for m in reader.on(files)}
    problems = compare(dict(reports), oracle) + compare_regulatory(got_files, oracle)
    assert not problems, "differences from the batch calculation:\n" + "\n".join(problems[:40])
    assert dict(reports) == want_reports
    assert got_files == want_files
