"""The broker dies (SIGKILL) under the exactly-once bordereaux app and comes back on its data.

One bordereaux process aggregates generated policy and claim events on a broker of this test's
own.  Once it has committed work, the broker's JVM is killed with SIGKILL, stays down for a
while and is started again on its data; the rest of the events (with the closing tail that
closes every 2024 period) follow.  Then the reports and regulatory day files on the topics
(``read_committed``) are byte for byte those of the same task code run in memory in one clean
pass, none twice, and agree with the independent batch calculation.

A transaction call that librdkafka never returns from after the restart (its group coordinator
went away under it) makes the app's watchdog stop the process with exit code 75; like an
orchestrator, the test starts it again, at most once, and the restarted member resumes from
the last committed transaction.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.streams.loop import EXIT_STUCK
from processors.topics.admin import apply
from processors.topics.catalogue import load_catalogue
from processors_dev.devbroker import BrokerKind, provide_broker
from tests.bordereaux_oracle import compare, compare_regulatory, expected, generate
from tests.integration.bordereaux_helpers import (
    BOOK,
    CommittedReader,
    app_env,
    count_records,
    kill,
    partition_table,
    publish_in_order,
    reference_reports,
    start_app,
    stop,
)

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 20_000
DOWN_S = 12.0
"""How long the broker stays down (the scenario: 10-30 s)."""
INPUTS = ["insurance.policy.events", "insurance.claim.events"]
OUTPUTS = ["reinsurance.bordereaux", "integrations.regulatory.files"]


def _app_log(path: Path) -> str:
    """The app's own log lines (librdkafka's connection chatter left out), the last 60."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("%")]
    return "\n".join(lines[-60:])


def test_a_broker_killed_under_bordereaux_leaves_byte_identical_reports(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    published = generate(37, EVENTS)
    want_reports, want_files = reference_reports(published)
    assert want_reports, "the generated events close no period: the test would prove nothing"
    oracle = expected(published, BOOK)
    head, rest = published[: len(published) // 2], published[len(published) // 2 :]

    broker = provide_broker(prefer=BrokerKind.APACHE)
    broker.start()
    member = None
    reader = None
    try:
        bootstrap = broker.info.bootstrap_servers
        topics_file = ROOT / "topics.yaml"
        apply(bootstrap, load_catalogue(topics_file), replication_factor=1)
        env = app_env(bootstrap, "", topics_file, "a")
        env.pop("PROCESSORS_CLIENT_OVERRIDES")  # the product's own session
        reader = CommittedReader(bootstrap, OUTPUTS)
        member = start_app(env, tmp_path / "a.log")
        publish_in_order(bootstrap, "", head)
        internal = ["integrations.bordereaux.by-policy", "integrations.bordereaux.partials"]
        deadline = time.monotonic() + 180
        while count_records(bootstrap, internal, committed=True) == 0:  # work committed: mid-run
            assert time.monotonic() < deadline, "the app committed nothing within 180 s"
            reader.poll(0.5)
        committed_at_kill = count_records(bootstrap, internal, committed=True)

        broker.kill_broker()  # SIGKILL: no goodbye
        time.sleep(DOWN_S)  # the fault's duration, not a wait for an event
        assert member.poll() is None, "the app exited while the broker was down"
        broker.resume_broker()
        back = time.monotonic()

        publish_in_order(bootstrap, "", rest)
        restarts: list[int] = []
        deadline = time.monotonic() + 300
        while not (
            len(reader.on("reinsurance.bordereaux")) >= len(want_reports)
            and len(reader.on("integrations.regulatory.files")) >= len(want_files)
        ):
            if member.poll() is not None:
                restarts.append(member.returncode)
                assert member.returncode == EXIT_STUCK, (tmp_path / "a.log").read_text()[-3000:]
                assert len(restarts) <= 1, f"restarted more than once: {restarts}"
                member = start_app(env, tmp_path / "a.log")  # as an orchestrator would
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(want_reports)} reports and {len(want_files)} day files not out within 300 s "
                    f"({len(reader.records)} records; restarts {restarts})\n"
                    + partition_table(bootstrap, [*INPUTS, *internal, *OUTPUTS])
                    + "\n"
                    + reader.positions()
                    + "\n--- app log ---\n"
                    + _app_log(tmp_path / "a.log")
                )
            reader.poll()
        recovered_s = time.monotonic() - back
        assert stop(member) == 0, (tmp_path / "a.log").read_text()[-3000:]
        reader.poll(1.0)
    finally:
        if member is not None and member.poll() is None:
            kill(member)
        if reader is not None:
            reader.close()
        broker.stop()

    reports = [(json.loads(m.value())["report_id"], m.value()) for m in reader.on("reinsurance.bordereaux")]
    copies = Counter(report_id for report_id, _ in reports)
    duplicates = sum(n - 1 for n in copies.values())
    got_files = {m.key().decode(): m.value() for m in reader.on("integrations.regulatory.files")}
    figures(
        f"broker killed under bordereaux: events={len(published)} internal records committed at "
        f"the kill={committed_at_kill} down={DOWN_S:g} s reports={len(reports)} (expected "
        f"{len(want_reports)}) day files={len(got_files)} (expected {len(want_files)}) "
        f"duplicates={duplicates} restarts={restarts}; all out {recovered_s:.1f} s after the broker came back"
    )
    assert duplicates == 0
    problems = compare(dict(reports), oracle) + compare_regulatory(got_files, oracle)
    assert not problems, "differences from the batch calculation:\n" + "\n".join(problems[:40])
    assert dict(reports) == want_reports
    assert got_files == want_files
