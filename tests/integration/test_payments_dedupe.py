"""``event_id`` de-duplication on real Kafka: an id answered once is not answered again.

Two ways a record comes back: a publisher sends the same event twice, and a member dies after
its results were acknowledged but before its offsets were committed.  In both, every event has
exactly one result and each idempotency key reached the gateway once.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import (
    Collector,
    committed_offsets,
    decode,
    end_offsets,
    group_caught_up,
    publish,
    read_topics,
    sandbox_env,
    start_processor,
)

pytestmark = pytest.mark.timeout(420)


def _answers(bootstrap: str, topic: str) -> Counter[object]:
    """Results per source event id: the whole topic, read to its end."""
    return Counter(decode(m).data.source_event_id for m in read_topics(bootstrap, [topic]))  # type: ignore[union-attr]


async def test_an_event_published_twice_is_answered_once(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    events = list(premium_due_stream(60, 20, seed=21))
    again = events[::3]  # a third of them published a second time, same event id, same key
    async with SandboxServer(gateway=GatewayConfig(seed=4)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        publish(kafka_bootstrap, billing, events)
        collector = Collector(kafka_bootstrap, [results, dlq])
        proc = start_processor(env, "run", "payments", log_path=tmp_path / "p.log")
        try:
            await collector.wait_for(lambda r: len(collector.on(results)) >= len(events), timeout_s=120)
            publish(kafka_bootstrap, billing, again)
            await collector.wait_for(
                group_caught_up(kafka_bootstrap, f"{prefix}payments", billing), timeout_s=120
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            collector.close()
        assert proc.returncode == 0
        answers = _answers(kafka_bootstrap, results)
        assert set(answers) == {e.event_id for e in events}
        assert set(answers.values()) == {1}
        assert read_topics(kafka_bootstrap, [dlq]) == []
        charges = sandbox.gateway.charges_by_key
        assert len(charges) == len(events)
        assert set(charges.values()) == {1}
    # each answer left its marker, keyed by the event id, in the source record's partition
    markers = read_topics(kafka_bootstrap, [f"{prefix}integrations.payments.dedupe"])
    assert sorted(m.key() for m in markers) == sorted(str(e.event_id).encode() for e in events)


async def test_a_member_killed_before_its_commit_answers_nothing_twice(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    group = f"{prefix}payments"
    events = list(premium_due_stream(300, 60, seed=22))
    async with SandboxServer(gateway=GatewayConfig(seed=6)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        publish(kafka_bootstrap, billing, events)
        collector = Collector(kafka_bootstrap, [results])
        log_path = tmp_path / "p.log"
        # The first member commits once at start (nothing done yet) and then not for 10 minutes:
        # every result it writes is acknowledged while its offset is not committed.
        first = start_processor(
            {**env, "PROCESSORS_ENGINE__COMMIT_INTERVAL_MS": "600000"}, "run", "payments", log_path=log_path
        )
        try:
            await collector.wait_for(lambda r: len(r) >= len(events), timeout_s=180)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        committed = committed_offsets(kafka_bootstrap, group, billing)
        ends = end_offsets(kafka_bootstrap, billing)
        uncommitted = sum(end - max(committed.get(p, 0), 0) for p, end in ends.items())
        assert uncommitted == len(events), "offsets were committed; the redelivery was not tested"

        second = start_processor(env, "run", "payments", log_path=log_path)
        try:
            await collector.wait_for(group_caught_up(kafka_bootstrap, group, billing), timeout_s=180)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
            collector.close()
        assert second.returncode == 0, log_path.read_text()[-3000:]
        answers = _answers(kafka_bootstrap, results)
        assert set(answers) == {e.event_id for e in events}
        assert set(answers.values()) == {1}, "an event redelivered after the kill was answered again"
        charges = sandbox.gateway.charges_by_key
        assert len(charges) == len(events)
        assert set(charges.values()) == {1}
        assert "answered event ids read back" in log_path.read_text()


async def test_exactly_once_output_survives_a_kill_mid_run_with_one_result_per_event(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    group = f"{prefix}payments"
    events = list(premium_due_stream(1_200, 120, seed=23))
    # 8 calls in flight at 40 ms each: about 200 events/s, so the kill lands mid-run.
    async with SandboxServer(gateway=GatewayConfig(latency_ms=40, seed=7)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_ENGINE__EXACTLY_ONCE"] = "true"
        env["PROCESSORS_ENGINE__MAX_CONCURRENCY"] = "8"
        publish(kafka_bootstrap, billing, events)
        collector = Collector(kafka_bootstrap, [results])  # read_committed
        log_path = tmp_path / "p.log"
        first = start_processor(env, "run", "payments", log_path=log_path)
        try:
            await collector.wait_for(lambda r: len(r) >= 300, timeout_s=180)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        seen_at_kill = len(collector.records)
        assert seen_at_kill < len(events), "the processor finished before it was killed; nothing was tested"

        second = start_processor(env, "run", "payments", log_path=log_path)
        try:
            await collector.wait_for(group_caught_up(kafka_bootstrap, group, billing), timeout_s=240)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
            collector.close()
        assert second.returncode == 0, log_path.read_text()[-3000:]
        answers = _answers(kafka_bootstrap, results)
        assert set(answers) == {e.event_id for e in events}
        assert set(answers.values()) == {1}
        charges = sandbox.gateway.charges_by_key
        assert len(charges) == len(events)
        assert set(charges.values()) == {1}
    markers = read_topics(kafka_bootstrap, [f"{prefix}integrations.payments.dedupe"])
    assert len({m.key() for m in markers}) == len(events)
