"""Instances come and go: three payments processes, one killed at random every few seconds.

For a minute, while events flow, a random member of the group is killed with SIGKILL and a new
one started in its place.  Then every event has its result, each idempotency key was charged
exactly once, and one key's results arrive in instalment order (first time each is seen).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import (
    Collector,
    decode,
    group_members,
    publish,
    sandbox_env,
    start_processor,
)

pytestmark = pytest.mark.timeout(600)

KILLS = 10
KILL_EVERY_S = (3.0, 6.0)
"""Ten kills, one every 3-6 s: about a minute of churn, however slow the machine is."""


async def test_members_killed_at_random_lose_nothing_and_charge_once(
    kafka_bootstrap: str,
    isolated_topics: Callable[[], tuple[Path, str]],
    tmp_path: Path,
    figures: Callable[[str], None],
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    events = list(premium_due_stream(3_000, 300, seed=41))
    batches = [events[i : i + 250] for i in range(0, len(events), 250)]
    rng = random.Random(7)
    async with SandboxServer(gateway=GatewayConfig(latency_ms=20, seed=8)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_ENGINE__MAX_CONCURRENCY"] = "16"
        env["PROCESSORS_LOG_LEVEL"] = "WARNING"
        collector = Collector(kafka_bootstrap, [results])
        started = 0

        def launch() -> subprocess.Popen[bytes]:
            nonlocal started
            started += 1
            return start_processor(env, "run", "payments", log_path=tmp_path / f"member-{started}.log")

        members = [launch() for _ in range(3)]
        kills = 0
        try:
            pending = list(batches)
            while kills < KILLS:
                if pending:
                    publish(kafka_bootstrap, billing, pending.pop(0))
                await asyncio.sleep(rng.uniform(*KILL_EVERY_S))  # the churn's pace, not a wait for an event
                victim = rng.randrange(len(members))
                members[victim].send_signal(signal.SIGKILL)
                members[victim].wait(30)
                kills += 1
                members[victim] = launch()
            for batch in pending:
                publish(kafka_bootstrap, billing, batch)
            last_kill = time.monotonic()
            want = {e.event_id for e in events}
            await collector.wait_for(
                lambda r: want <= {decode(m).data.source_event_id for m in r},  # type: ignore[union-attr]
                timeout_s=300,
            )
            answered_s = time.monotonic() - last_kill
            # the last replacement is running (a process still starting up has no SIGTERM
            # handler yet): all three members hold partitions before they are told to stop
            await collector.wait_for(
                lambda r: group_members(kafka_bootstrap, f"{prefix}payments") == 3, timeout_s=120
            )
        finally:
            for member in members:
                member.send_signal(signal.SIGTERM)
            for member in members:
                member.wait(60)
            collector.close()
        for member in members:
            assert member.returncode == 0

    charges = sandbox.gateway.charges_by_key
    per_event = Counter(decode(m).data.source_event_id for m in collector.records)  # type: ignore[union-attr]
    figures(
        f"payments churn: events={len(events)} members=3 kills={kills} started={started} "
        f"results={len(collector.records)} distinct={len(per_event)} "
        f"duplicates={sum(n - 1 for n in per_event.values())} charged keys={len(charges)} "
        f"charges per key={sorted(Counter(charges.values()).items())}; every result "
        f"{answered_s:.1f} s after the last kill"
    )
    assert len(charges) == len(events)
    assert set(charges.values()) == {1}, "an idempotency key was charged twice"
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[object] = set()
    for msg in collector.records:
        data = decode(msg).data
        if data.source_event_id in seen:  # type: ignore[union-attr]
            continue  # a re-processed event after a kill: the same result again
        seen.add(data.source_event_id)  # type: ignore[union-attr]
        instalment = int(data.reference_id.rsplit("-I", 1)[1])  # type: ignore[union-attr]
        first_seen[decode(msg).subject].append(instalment)
    for policy, instalments in first_seen.items():
        assert instalments == sorted(instalments), f"{policy} results out of order: {instalments}"
