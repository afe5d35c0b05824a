"""The network to the gateway misbehaves: latency spikes, resets, a black hole for 60 s.

The payments app reaches the sandbox gateway through a fault-injecting TCP proxy
(``faultproxy.py``).  Events are published before and during each fault.  Once the network is
healthy again every event has its result, each idempotency key was charged once, and the
group's committed offsets reach the end of the topic: no consumer is left stuck.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.faultproxy import FaultProxy
from tests.integration.helpers import (
    Collector,
    decode,
    group_caught_up,
    publish,
    sandbox_env,
    start_processor,
)

pytestmark = pytest.mark.timeout(600)

BLACK_HOLE_S = 60.0
SPIKE_S = 10.0
RESETS_S = 10.0


async def test_latency_resets_and_a_black_hole_to_the_gateway_lose_nothing(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    figures: Callable[[str], None],
) -> None:
    topics_file, prefix = isolated_topics("[1s, 2s, 5s, 10s, 20s, 30s, 60s, 2m]")
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    events = list(premium_due_stream(1_000, 200, seed=51))
    batches = [events[i : i + 200] for i in range(0, len(events), 200)]
    resilience = tmp_path / "resilience.yaml"
    resilience.write_text(
        "defaults:\n"
        "  circuit_breaker: {failure_threshold: 5, success_threshold: 3, timeout_duration_seconds: 3,"
        " half_open_requests: 3}\n"
        "  retry: {max_attempts: 3, initial_delay_ms: 50, max_delay_ms: 500, multiplier: 2}\n"
        "  timeout: {connection_timeout_ms: 1000, read_timeout_ms: 2000, deadline_ms: 8000}\n"
    )
    async with SandboxServer(gateway=GatewayConfig(latency_ms=5, seed=6)) as sandbox:
        host, port = sandbox.url.removeprefix("http://").split(":")
        async with FaultProxy(host, int(port)) as proxy:
            env = sandbox_env(prefix, topics_file, kafka_bootstrap, proxy.url)
            env["PROCESSORS_RESILIENCE_FILE"] = str(resilience)
            env["PROCESSORS_LOG_LEVEL"] = "WARNING"
            collector = Collector(kafka_bootstrap, [results])
            app = start_processor(env, "run", "payments", log_path=tmp_path / "p.log")
            try:
                publish(kafka_bootstrap, billing, batches[0])
                await collector.wait_for(lambda r: len(r) >= 100, timeout_s=120)

                proxy.set("delay", delay_s=0.5)
                publish(kafka_bootstrap, billing, batches[1])
                await asyncio.sleep(SPIKE_S)  # the fault's duration, not a wait for an event
                proxy.set("reset")
                publish(kafka_bootstrap, billing, batches[2])
                await asyncio.sleep(RESETS_S)
                proxy.set("blackhole")
                publish(kafka_bootstrap, billing, batches[3])
                await asyncio.sleep(BLACK_HOLE_S)
                proxy.set("pass")
                cleared = time.monotonic()
                publish(kafka_bootstrap, billing, batches[4])

                want = {e.event_id for e in events}
                await collector.wait_for(
                    lambda r: want <= {decode(m).data.source_event_id for m in r},  # type: ignore[union-attr]
                    timeout_s=300,
                )
                answered_s = time.monotonic() - cleared

                await collector.wait_for(
                    group_caught_up(kafka_bootstrap, f"{prefix}payments", billing), timeout_s=60
                )
                caught_up_s = time.monotonic() - cleared
            finally:
                app.send_signal(signal.SIGTERM)
                app.wait(60)
                collector.close()
            assert app.returncode == 0, (tmp_path / "p.log").read_text()[-3000:]
        assert proxy.reset > 0, "no connection was reset: the fault did not happen"

    charges = sandbox.gateway.charges_by_key
    per_event = Counter(decode(m).data.source_event_id for m in collector.records)  # type: ignore[union-attr]
    figures(
        f"gateway network faults (black hole {BLACK_HOLE_S:.0f} s): events={len(events)} "
        f"results={len(collector.records)} distinct={len(per_event)} "
        f"duplicates={sum(n - 1 for n in per_event.values())} charged keys={len(charges)} "
        f"charges per key={sorted(Counter(charges.values()).items())} connections={proxy.accepted} "
        f"resets={proxy.reset}; after the fault cleared: every result in {answered_s:.1f} s, "
        f"lag 0 in {caught_up_s:.1f} s"
    )
    assert len(charges) == len(events)
    assert set(charges.values()) == {1}, "an idempotency key was charged twice"
