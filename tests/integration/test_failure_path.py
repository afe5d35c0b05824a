"""The failure path end to end: breaker backpressure, retry tiers, key order, dead letters.

The payments app runs in-process (so its breaker and engine can be inspected) against a real
broker and a real sandbox gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from processors.contract import Event
from processors.resilience.breaker import BreakerState
from processors.runner import Runner
from processors.runtime.failures import H
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from processors_dev.samples import premium_due, premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig, PaymentGatewaySim
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import (
    Collector,
    decode,
    group_caught_up,
    header,
    publish,
    read_topics,
    sandbox_env,
    start_processor,
)

pytestmark = pytest.mark.timeout(300)

FAST_TIERS = "[1s, 2s, 3s, 5s]"


def _resilience(tmp_path: Path, *, open_s: float = 2) -> Path:
    path = tmp_path / "resilience.yaml"
    path.write_text(
        "defaults:\n"
        "  circuit_breaker: {failure_threshold: 5, success_threshold: 3,"
        f" timeout_duration_seconds: {open_s}, half_open_requests: 3}}\n"
        "  retry: {max_attempts: 3, initial_delay_ms: 50, max_delay_ms: 500, multiplier: 2}\n"
        "  timeout: {connection_timeout_ms: 1000, read_timeout_ms: 5000, deadline_ms: 20000}\n"
    )
    return path


@contextlib.asynccontextmanager
async def running_payments(
    bootstrap: str, topics_file: Path, prefix: str, gateway_url: str, resilience: Path, **engine: Any
) -> AsyncIterator[Runner]:
    settings = load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        payments={
            "gateway": {"base_url": gateway_url},
            "results_topic": f"{prefix}integrations.payment.results",
        },
        engine=engine,
    )
    runner = Runner(settings, ["payments"], catalogue=load_catalogue(topics_file))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(60):
            while not runner.engines:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield runner
    finally:
        stop.set()
        await task


def _results_by_policy(records: list[Any]) -> dict[str, list[int]]:
    by_policy: dict[str, list[int]] = defaultdict(list)
    for msg in records:
        event = decode(msg)
        by_policy[event.subject].append(int(event.data.reference_id.rsplit("-I", 1)[1]))  # type: ignore[union-attr]
    return by_policy


class RestartableGateway:
    """The sandbox gateway on a fixed port that can stop listening (connections refused)."""

    def __init__(self, sim: PaymentGatewaySim) -> None:
        self.sim = sim
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self.sim.add_to(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def test_outage_pauses_instead_of_dead_lettering_and_everything_arrives_after_recovery(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    tiers = [t.topic for t in load_catalogue(topics_file).app("payments").retry_tiers]
    events = list(premium_due_stream(5_000, 200, seed=21))
    publish(kafka_bootstrap, billing, events)
    gateway = RestartableGateway(PaymentGatewaySim(GatewayConfig(latency_ms=5, seed=2)))
    await gateway.start()
    collector = Collector(kafka_bootstrap, [results, dlq, *tiers])
    transitions: list[BreakerState] = []
    try:
        async with running_payments(
            kafka_bootstrap, topics_file, prefix, gateway.url, _resilience(tmp_path, open_s=3)
        ) as runner:
            assert runner.breakers is not None
            breaker = runner.breakers.get("payment-gateway")
            breaker.add_listener(lambda old, new: transitions.append(new))
            await collector.wait_for(lambda r: len(collector.on(results)) >= 1_000, timeout_s=120)
            await gateway.stop()  # connections refused from now on
            engine = runner.engines[0]
            await collector.wait_for(lambda r: engine.stats.backpressure_pauses >= 1, timeout_s=60)
            during = len(collector.on(results))
            # Hold the outage for 20 s of wall time while the app is paused (a fault, not a sync point).
            await asyncio.sleep(20)
            await gateway.start()
            await collector.wait_for(lambda r: len(collector.on(results)) >= len(events), timeout_s=180)
            collector.poll(1.0)
    finally:
        collector.close()
        await gateway.stop()

    assert BreakerState.OPEN in transitions
    assert transitions[-1] is BreakerState.CLOSED
    assert during < len(events), "the outage started after the work was done"
    assert collector.on(dlq) == []
    in_tiers = sum(len(collector.on(t)) for t in tiers)
    assert in_tiers <= 64, f"{in_tiers} records went to retry tiers: attempts were burned during the outage"
    sources = {decode(m).data.source_event_id for m in collector.on(results)}  # type: ignore[union-attr]
    assert sources == {e.event_id for e in events}
    for policy, seq in _results_by_policy(collector.on(results)).items():
        firsts = list(dict.fromkeys(seq))
        assert firsts == sorted(firsts), f"{policy}: {firsts}"
    assert len(gateway.sim.charges_by_key) == len(events)
    assert set(gateway.sim.charges_by_key.values()) == {1}


async def test_flaky_gateway_every_event_succeeds_and_retries_show_in_headers(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    events = list(premium_due_stream(600, 60, seed=3))
    publish(kafka_bootstrap, billing, events)
    collector = Collector(kafka_bootstrap, [results, dlq])
    async with SandboxServer(gateway=GatewayConfig(error_rate=0.3, latency_ms=2, seed=8)) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(lambda r: len(collector.on(results)) >= len(events), timeout_s=240)
                collector.poll(0.5)
        finally:
            collector.close()
        charges = sandbox.gateway.charges_by_key
        refused = sandbox.gateway.requests_by_status.get(503, 0)
    assert collector.on(dlq) == []
    attempts = [int(header(m, H.ATTEMPTS) or "0") for m in collector.on(results)]
    assert len(attempts) == len(events)
    assert min(attempts) == 1
    assert max(attempts) >= 3
    assert sum(a - 1 for a in attempts) == refused  # every 503 shows up as one extra attempt
    assert len(charges) == len(events)
    assert set(charges.values()) == {1}
    for policy, seq in _results_by_policy(collector.on(results)).items():
        assert seq == list(range(1, 11)), f"{policy}: {seq}"


async def test_an_event_id_reused_for_other_content_goes_to_the_dlq_without_a_call(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    first = premium_due(1, 1, amount=Decimal("100.00"))
    # An upstream bug: the same event id published again with another amount.
    reused = Event.model_validate(
        {**first.model_dump(), "data": {**first.data.model_dump(), "amount": Decimal("120.00")}}
    )
    again = first  # a true retry of the first: dropped as answered
    after = premium_due(1, 2)
    publish(kafka_bootstrap, billing, [first, reused, again, after])
    collector = Collector(kafka_bootstrap, [results, dlq])
    async with SandboxServer(gateway=GatewayConfig(seed=1)) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(
                    lambda r: len(collector.on(results)) >= 2 and len(collector.on(dlq)) >= 1, timeout_s=120
                )
                await collector.wait_for(
                    group_caught_up(kafka_bootstrap, f"{prefix}payments", billing), timeout_s=120
                )
        finally:
            collector.close()
        statuses = dict(sandbox.gateway.requests_by_status)
    [dead] = read_topics(kafka_bootstrap, [dlq])
    assert header(dead, H.ERROR_CLASS) == "DuplicateEventId"
    assert "answered before with different content" in (header(dead, H.ERROR_MESSAGE) or "")
    assert decode(dead).data.amount == Decimal("120.00")  # type: ignore[union-attr]
    assert 422 not in statuses  # caught before the gateway
    assert [decode(m).data.reference_id for m in read_topics(kafka_bootstrap, [results])] == [  # type: ignore[union-attr]
        "POL-2024-000001-I001",
        "POL-2024-000001-I002",
    ]


async def test_a_permanent_refusal_goes_to_the_dlq_at_once_without_retries(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    # without the dedupe window the reused id reaches the gateway, which refuses it for good
    topics_file, prefix = isolated_topics(FAST_TIERS, dedupe=False)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    first = premium_due(1, 1, amount=Decimal("100.00"))
    # An upstream bug: the same event id published again with another amount → the gateway
    # refuses the reused idempotency key (422).
    reused = Event.model_validate(
        {**first.model_dump(), "data": {**first.data.model_dump(), "amount": Decimal("120.00")}}
    )
    after = premium_due(1, 2)
    publish(kafka_bootstrap, billing, [first, reused, after])
    collector = Collector(kafka_bootstrap, [results, dlq])
    async with SandboxServer(gateway=GatewayConfig(seed=1)) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(
                    lambda r: len(collector.on(results)) >= 2 and len(collector.on(dlq)) >= 1, timeout_s=120
                )
        finally:
            collector.close()
        statuses = dict(sandbox.gateway.requests_by_status)
    [dead] = collector.on(dlq)
    assert header(dead, H.ERROR_CLASS) == "GatewayRejected"
    assert "422" in (header(dead, H.ERROR_MESSAGE) or "")
    assert header(dead, H.ATTEMPTS) == "1"
    assert statuses.get(422) == 1  # asked once, never retried
    assert [decode(m).data.reference_id for m in collector.on(results)] == [  # type: ignore[union-attr]
        "POL-2024-000001-I001",
        "POL-2024-000001-I002",
    ]


async def test_later_events_of_a_policy_wait_behind_one_in_a_retry_tier(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    tier0 = load_catalogue(topics_file).app("payments").retry_tiers[0].topic
    stuck = premium_due(1, 1, token="tok_unavailable_3")  # fails all in-place attempts, then succeeds
    events = [stuck] + [premium_due(1, i) for i in range(2, 6)]
    events += [premium_due(p, i) for p in range(2, 21) for i in range(1, 6)]
    publish(kafka_bootstrap, billing, events)
    collector = Collector(kafka_bootstrap, [results, tier0])
    async with SandboxServer(gateway=GatewayConfig(seed=4)) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(lambda r: len(collector.on(results)) >= len(events), timeout_s=120)
        finally:
            collector.close()
        charges = sandbox.gateway.charges_by_key
    by_policy = _results_by_policy(collector.on(results))
    assert by_policy["POL-2024-000001"] == [1, 2, 3, 4, 5]
    assert all(seq == [1, 2, 3, 4, 5] for seq in by_policy.values())
    waited = collector.on(tier0)
    assert {header(m, H.ERROR_CLASS) for m in waited} >= {"RetriesExhausted", "WaitingBehind"}
    assert all(m.key() == b"POL-2024-000001" for m in waited)
    stuck_result = next(m for m in collector.on(results) if decode(m).data.source_event_id == stuck.event_id)  # type: ignore[union-attr]
    assert header(stuck_result, H.ATTEMPTS) == "4"
    assert len(charges) == len(events)
    assert set(charges.values()) == {1}


async def test_key_order_holds_across_a_crash_while_an_event_waits_in_a_retry_tier(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    """The waiting-key state is rebuilt from the tiers: a new event after a restart still waits."""
    topics_file, prefix = isolated_topics("[20s, 20s, 20s, 20s]")
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    tier0 = load_catalogue(topics_file).app("payments").retry_tiers[0].topic
    async with SandboxServer(gateway=GatewayConfig(seed=6)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_RESILIENCE_FILE"] = str(_resilience(tmp_path))
        env["PROCESSORS_CLIENT_OVERRIDES"] = '{"consumer.session.timeout.ms": "6000"}'
        collector = Collector(kafka_bootstrap, [results, tier0])
        log_path = tmp_path / "processor.log"
        try:
            first = start_processor(env, "run", "payments", log_path=log_path)
            try:
                publish(
                    kafka_bootstrap,
                    billing,
                    # Event 1 fails its in-place attempts twice: it waits in retry for about 40 s.
                    [premium_due(1, 1, token="tok_unavailable_6"), premium_due(1, 2), premium_due(1, 3)],
                )
                await collector.wait_for(lambda r: len(collector.on(tier0)) >= 3, timeout_s=120)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(30)
            killed_log = log_path.read_text()
            second = start_processor(env, "run", "payments", log_path=log_path)
            try:
                await collector.wait_for(
                    lambda r: log_path.read_text()[len(killed_log) :].count("app payments: assigned") >= 1,
                    timeout_s=60,
                )
                publish(kafka_bootstrap, billing, [premium_due(1, 4)])  # arrives while event 1 still waits
                await collector.wait_for(lambda r: len(collector.on(results)) >= 4, timeout_s=180)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(60)
        finally:
            collector.close()
    assert _results_by_policy(collector.on(results))["POL-2024-000001"] == [1, 2, 3, 4]
    behind = [
        decode(m).data.instalment_id  # type: ignore[attr-defined]
        for m in collector.on(tier0)
        if header(m, H.ERROR_CLASS) == "WaitingBehind"
    ]
    assert "POL-2024-000001-I004" in behind  # the new event was held behind, not raced ahead


async def test_replayed_dead_letters_run_once_after_the_fix_and_repeat_failures_get_parked(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    from pydantic import SecretStr

    from processors.dlq import DlqFilter, replay

    topics_file, prefix = isolated_topics(FAST_TIERS)
    catalogue = load_catalogue(topics_file)
    app = catalogue.app("payments")
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    good = [premium_due(p, i) for p in range(1, 6) for i in range(1, 5)]
    hopeless = [premium_due(9, 1, token="tok_invalid_card"), premium_due(9, 2, token="tok_invalid_card")]
    publish(kafka_bootstrap, billing, [*good, *hopeless])
    collector = Collector(kafka_bootstrap, [results, app.dlq, app.parked])
    # The cause: the gateway expects another token than the app sends (401, Permanent).
    config = GatewayConfig(seed=3, token=SecretStr("rotated-token"))
    async with SandboxServer(gateway=config) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                await collector.wait_for(lambda r: len(collector.on(app.dlq)) >= 22, timeout_s=120)
                assert collector.on(results) == []
                sandbox.gateway.update_config(token=SecretStr("sandbox-token"))  # the fix

                def replay_all() -> Any:
                    return replay(
                        kafka_bootstrap,
                        catalogue,
                        "payments",
                        DlqFilter.build(),
                        operator="test",
                        rate_per_s=1_000,
                    )

                loop = asyncio.get_running_loop()
                first = await loop.run_in_executor(None, replay_all)
                assert (first.replayed, first.parked) == (22, 0)
                await collector.wait_for(
                    lambda r: len(collector.on(results)) >= 20 and len(collector.on(app.dlq)) >= 24,
                    timeout_s=120,
                )
                # The two hopeless ones keep failing: replayed until the limit, then parked.
                for expected_dlq in (26, 28):
                    report = await loop.run_in_executor(None, replay_all)
                    assert (report.replayed, report.parked) == (2, 0)
                    await collector.wait_for(
                        lambda r, n=expected_dlq: (
                            len(collector.on(app.dlq)) + len(collector.on(app.parked)) >= n
                        ),
                        timeout_s=120,
                    )
                collector.poll(1.0)
        finally:
            collector.close()
        charges = sandbox.gateway.charges_by_key

    sources = [decode(m).data.source_event_id for m in collector.on(results)]  # type: ignore[union-attr]
    assert sorted(map(str, sources)) == sorted(str(e.event_id) for e in good)  # each exactly once
    assert len(charges) == len(good)
    assert set(charges.values()) == {1}
    parked = collector.on(app.parked)
    assert len(parked) == 2
    assert {header(m, H.REPLAY_COUNT) for m in parked} == {"3"}
    assert len(collector.on(app.dlq)) == 26  # 22 first failures + 2 × 2 repeats, then parking: no loop
