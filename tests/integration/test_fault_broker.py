"""The broker dies (SIGKILL) mid-run and comes back: nothing lost, nothing charged twice.

Payments and webhooks run in one process against a broker of this test's own; events flow;
the broker's JVM is killed with SIGKILL, stays down while the apps notice (``/readyz`` goes
unready), and is started again on its data.  Then every event has its payment result, the
gateway charged each idempotency key once, the partner received a delivery of every event,
and ``/readyz`` came back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.admin import apply
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import webhook_id_for
from processors_dev.devbroker import BrokerKind, provide_broker
from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import Collector, decode, publish

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "f" * 40
DOWN_S = 12.0
"""How long the broker stays down once the apps noticed (the scenario: 10-30 s)."""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def _until(condition: Any, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.2)


async def test_a_broker_killed_mid_run_loses_nothing_and_charges_once(
    session: aiohttp.ClientSession, tmp_path: Path, figures: Callable[[str], None]
) -> None:
    broker = provide_broker(prefer=BrokerKind.APACHE)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, broker.start)
    try:
        bootstrap = broker.info.bootstrap_servers
        topics_file = ROOT / "topics.yaml"
        await loop.run_in_executor(
            None, lambda: apply(bootstrap, load_catalogue(topics_file), replication_factor=1)
        )
        events = list(premium_due_stream(600, 120, seed=31))
        first, second = events[:300], events[300:]
        secret = generate_secret().get_secret_value()
        async with (
            SandboxServer(gateway=GatewayConfig(latency_ms=5, seed=4)) as gateway,
            PartnerSandbox() as partners,
        ):
            partner = partners.add("acme", PartnerBehaviour(), [secret])
            settings = load_settings(
                bootstrap_servers=bootstrap,
                topics_file=topics_file,
                group_prefix="fault.",
                payments={"gateway": {"base_url": gateway.url}},
                webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
                api={
                    "enabled": True,
                    "port": 0,
                    "auth_token": TOKEN,
                    "broker_check_timeout_s": 1.0,
                    "broker_check_cache_s": 0.5,
                },
            )
            runner = Runner(settings, ["payments", "webhooks"], catalogue=load_catalogue(topics_file))
            stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(runner.run(stop, on_ready=ready.set))
            results = Collector(bootstrap, ["integrations.payment.results"])
            readiness: list[int] = []

            async def readyz() -> int:
                assert runner.api is not None
                try:
                    async with session.get(f"{runner.api.url}/readyz") as response:
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                readiness.append(status)
                return status

            try:
                async with asyncio.timeout(120):
                    await ready.wait()
                assert runner.api is not None
                headers = {"Authorization": f"Bearer {TOKEN}"}
                body = {"url": partners.url("acme"), "events": ["premium.*"], "secret": secret}
                async with session.post(
                    f"{runner.api.url}/api/v1/webhooks", json=body, headers=headers
                ) as answer:
                    assert answer.status == 201, await answer.text()
                    subscription = (await answer.json())["id"]

                publish(bootstrap, "insurance.billing.events", first)
                await results.wait_for(lambda r: len(r) >= 100, timeout_s=120)

                await loop.run_in_executor(None, broker.kill_broker)  # SIGKILL: no goodbye
                await _until(lambda: _is(readyz, 503), timeout_s=60, what="unready while the broker is down")
                await asyncio.sleep(DOWN_S)  # the fault's duration, not a wait for an event
                await loop.run_in_executor(None, broker.resume_broker)
                resumed = time.monotonic()
                await _until(
                    lambda: _is(readyz, 200), timeout_s=120, what="ready again once the broker is back"
                )
                ready_again_s = time.monotonic() - resumed

                publish(bootstrap, "insurance.billing.events", second)
                want = {e.event_id for e in events}
                await results.wait_for(
                    lambda r: want <= {decode(m).data.source_event_id for m in r},  # type: ignore[union-attr]
                    timeout_s=240,
                )
                answered_s = time.monotonic() - resumed
                deliveries = {webhook_id_for(subscription, str(e.event_id)) for e in events}
                async with asyncio.timeout(240):
                    await partner.wait_until(lambda p: p.has_accepted(deliveries))
                delivered_s = time.monotonic() - resumed
            finally:
                stop.set()
                await task
                results.close()

        charges = gateway.gateway.charges_by_key
        per_event = Counter(decode(m).data.source_event_id for m in results.records)  # type: ignore[union-attr]
        figures(
            f"broker killed under payments and webhooks: events={len(events)} "
            f"results={len(results.records)} distinct={len(per_event)} "
            f"duplicates={sum(n - 1 for n in per_event.values())} charged keys={len(charges)} "
            f"charges per key={sorted(Counter(charges.values()).items())} "
            f"deliveries={len(deliveries)} accepted={len(partner.accepted_ids())} down={DOWN_S:g} s; "
            f"after the restart: ready in {ready_again_s:.1f} s, every result in {answered_s:.1f} s, "
            f"every delivery in {delivered_s:.1f} s"
        )
        assert len(charges) == len(events)
        assert set(charges.values()) == {1}, "an idempotency key was charged twice"
        assert 503 in readiness
        assert readiness[-1] == 200
        assert all(d.signature_valid for d in partner.accepted())
    finally:
        await loop.run_in_executor(None, broker.stop)


async def _is(probe: Any, status: int) -> bool:
    return bool(await probe() == status)
