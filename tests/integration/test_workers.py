"""`processors run payments --workers 2`: two members of the group under one supervisor."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, decode, group_members, publish, sandbox_env, start_processor

pytestmark = pytest.mark.timeout(300)

TOKEN = "w" * 40


def _free_port_pair() -> int:
    """A port whose next three ports are free too (the unit's, then one per worker)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        sockets = []
        try:
            for port in range(base, base + 3):
                s = socket.socket()
                sockets.append(s)  # closed below whether or not the port is free
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no three free ports in a row")


async def test_two_workers_share_the_group_and_stop_with_one_exit_code(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    events = list(premium_due_stream(300, 60, seed=21))
    port = _free_port_pair()
    async with SandboxServer(gateway=GatewayConfig(latency_ms=5, seed=2)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_API__AUTH_TOKEN"] = TOKEN
        collector = Collector(kafka_bootstrap, [results])
        unit = start_processor(
            env,
            "run",
            "payments",
            "--workers",
            "2",
            "--api",
            "--api-port",
            str(port),
            log_path=tmp_path / "u.log",
        )
        try:
            deadline = time.monotonic() + 120
            while group_members(kafka_bootstrap, f"{prefix}payments") < 2:
                assert unit.poll() is None, (tmp_path / "u.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "two workers never both held partitions"
                await asyncio.sleep(0.5)
            publish(kafka_bootstrap, billing, events)
            want = {e.event_id for e in events}
            await collector.wait_for(
                lambda r: want <= {decode(m).data.source_event_id for m in r},  # type: ignore[union-attr]
                timeout_s=120,
            )
            async with aiohttp.ClientSession() as client:
                async with client.get(f"http://127.0.0.1:{port}/readyz") as response:
                    assert response.status == 200, await response.text()
                async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 401  # the token is required, as on one process
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with client.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as response:
                    merged = await response.text()
            processed = {
                line.split('worker="')[1][0]: float(line.rsplit(" ", 1)[1])
                for line in merged.splitlines()
                if line.startswith("processors_app_records_processed_total{")
            }
            assert set(processed) == {"0", "1"}
            assert sum(processed.values()) >= len(events)
        finally:
            unit.send_signal(signal.SIGTERM)
            unit.wait(90)
            collector.close()
    assert unit.returncode == 0, (tmp_path / "u.log").read_text()[-3000:]
