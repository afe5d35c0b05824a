"""Readiness, the per-endpoint error-rate window and the status document, with fakes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from processors.api.health import BrokerProbe, ErrorRateWindow, HealthMonitor, LoopView, iso_utc
from processors.errors import BrokerError, Retriable
from processors.resilience.breaker import BreakerRegistry, BreakerSettings
from processors.runtime.engine import EngineStats
from processors.streams.loop import TransactionalLoop


class Clock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProcessor:
    name: str


@dataclass
class FakeEngine:
    processor: FakeProcessor
    group: str
    stats: EngineStats = field(default_factory=EngineStats)
    assigned: list[tuple[str, int]] = field(default_factory=list)
    assigned_once: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_assigned(self) -> None:
        await self.assigned_once.wait()


class Broker:
    """A metadata check that fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise BrokerError("KafkaError{code=_TRANSPORT}")


# -- error-rate window ----------------------------------------------------------------------------


def test_no_calls_no_rate() -> None:
    window = ErrorRateWindow(60, clock=Clock())
    assert window.error_rate() is None
    window.record(0, 0)
    assert window.error_rate() is None


def test_the_rate_covers_the_calls_since_the_oldest_sample_in_the_window() -> None:
    clock = Clock()
    window = ErrorRateWindow(60, clock=clock)
    window.record(failures=10, successes=90)  # before the server looked: not in the window
    clock.now += 10
    window.record(failures=13, successes=96)

    assert window.calls() == (3, 9)
    assert window.error_rate() == pytest.approx(3 / 9)


def test_old_samples_leave_the_window() -> None:
    clock = Clock()
    window = ErrorRateWindow(60, clock=clock)
    window.record(0, 0)
    clock.now += 30
    window.record(5, 5)  # 5 failures in the first 30 s
    clock.now += 30
    window.record(5, 15)  # 10 successes in the next 30 s
    clock.now += 30
    window.record(5, 25)  # and 10 more: the window now starts at the second sample

    assert window.calls() == (0, 20)
    assert window.error_rate() == 0.0


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


# -- readiness ------------------------------------------------------------------------------------


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def probe(broker: Broker) -> BrokerProbe:
    return BrokerProbe("unused:9092", check=broker, cache_s=0.0)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(FakeProcessor("payments"), "integrations.payments")


@pytest.fixture
async def monitor(engine: FakeEngine, probe: BrokerProbe) -> AsyncIterator[HealthMonitor]:
    health = HealthMonitor(engines=[engine], broker=probe, app_endpoints={"payments": ["payment-gateway"]})
    await health.start()
    yield health
    await health.stop()


async def wait_ready(health: HealthMonitor, expected: bool) -> tuple[str, ...]:
    async with asyncio.timeout(5):
        while True:
            readiness = await health.readiness()
            if readiness.ready is expected:
                return readiness.reasons
            await asyncio.sleep(0.01)


async def test_not_ready_until_every_engine_was_assigned(monitor: HealthMonitor, engine: FakeEngine) -> None:
    readiness = await monitor.readiness()
    assert not readiness.ready
    assert readiness.reasons == ("app payments has no partition assignment yet",)

    engine.assigned_once.set()  # an empty assignment counts: the group may have more members

    assert await wait_ready(monitor, True) == ()


async def test_not_ready_while_the_broker_is_unreachable(
    monitor: HealthMonitor, engine: FakeEngine, broker: Broker
) -> None:
    engine.assigned_once.set()
    await wait_ready(monitor, True)

    broker.down = True
    assert await wait_ready(monitor, False) == ("the Kafka broker is unreachable",)
    assert monitor.broker is not None
    last = monitor.broker.last
    assert last is not None
    assert last.error is not None
    assert "_TRANSPORT" in last.error

    broker.down = False
    await wait_ready(monitor, True)


async def test_the_broker_answer_is_cached(broker: Broker) -> None:
    clock = Clock()
    probe = BrokerProbe("unused:9092", check=broker, cache_s=2.0, clock=clock)
    await probe.start()
    try:
        await probe.check()
        broker.down = True
        assert (await probe.check()).reachable  # the cached answer
        assert broker.calls == 1
        clock.now += 2.0
        assert not (await probe.check()).reachable
        assert broker.calls == 2
    finally:
        await probe.stop()


async def test_concurrent_probes_share_one_request() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0
    loop = asyncio.get_running_loop()

    def slow() -> None:
        nonlocal calls
        calls += 1
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

    probe = BrokerProbe("unused:9092", check=slow, cache_s=0.0)
    await probe.start()
    try:
        checks = [asyncio.create_task(probe.check()) for _ in range(5)]
        await started.wait()
        release.set()
        results = await asyncio.gather(*checks)
    finally:
        await probe.stop()

    assert calls == 1
    assert all(r.reachable for r in results)


async def test_no_engines_and_no_broker_is_ready() -> None:
    health = HealthMonitor()
    await health.start()
    try:
        assert (await health.readiness()).ready
    finally:
        await health.stop()


# -- status -----------------------------------------------------------------------------------------


async def test_status_reports_apps_and_endpoints(engine: FakeEngine, probe: BrokerProbe) -> None:
    clock = Clock()
    breakers = BreakerRegistry(lambda _: BreakerSettings(failure_threshold=2), clock=clock)
    breaker = breakers.get("payment-gateway")
    health = HealthMonitor(
        engines=[engine],
        breakers=breakers,
        broker=probe,
        app_endpoints={"payments": ["payment-gateway"]},
        window_s=60,
        clock=clock,
        breaker_clock=clock,
    )
    engine.stats.processed, engine.stats.failed = 7, 1
    engine.stats.last_success_at = 1_718_000_000.0
    engine.assigned[:] = [("insurance.billing.events", 0), ("insurance.billing.events", 1)]
    engine.assigned_once.set()
    await health.start()
    try:

        async def ok() -> None:
            return None

        async def down() -> None:
            raise Retriable("503")

        await breaker.call(ok)
        clock.now += 1
        for _ in range(2):
            with pytest.raises(Retriable):
                await breaker.call(down)
        await wait_ready(health, True)
        status = await health.status()
    finally:
        await health.stop()

    assert status["ready"] is True
    app = status["apps"]["payments"]
    assert app["group"] == "integrations.payments"
    assert app["assigned_partitions"] == [
        {"topic": "insurance.billing.events", "partition": 0},
        {"topic": "insurance.billing.events", "partition": 1},
    ]
    assert (app["processed"], app["failed"]) == (7, 1)
    assert app["last_success_at"] == "2024-06-10T06:13:20Z"
    assert app["endpoints"] == ["payment-gateway"]
    endpoint = status["endpoints"]["payment-gateway"]
    assert endpoint["state"] == "open"
    assert endpoint["total_failures"] == 2
    assert endpoint["total_successes"] == 1
    assert endpoint["opened_count"] == 1
    assert endpoint["calls_in_window"] == 3
    assert endpoint["error_rate"] == pytest.approx(2 / 3)
    # Breaker times are monotonic readings, reported as wall-clock times.
    assert endpoint["last_failure_at"] is not None
    assert endpoint["last_success_at"] < endpoint["last_failure_at"]
    assert endpoint["last_failure_at"] <= iso_utc(time.time() + 1)
    assert status["broker"]["reachable"] is True


# -- the exactly-once loop -------------------------------------------------------------------------


def _loop() -> TransactionalLoop:
    # Nothing connects before run(): the loop's health side can be tried without a broker.
    return TransactionalLoop(
        app="bordereaux",
        stages=[],
        consumer_conf={"group.id": "integrations.bordereaux"},
        producer_conf={"transactional.id": "integrations.bordereaux.one"},
        dlq_topic="integrations.bordereaux.dlq",
    )


async def test_an_exactly_once_loop_is_ready_once_its_first_assignment_is_restored(
    probe: BrokerProbe,
) -> None:
    loop = _loop()
    health = HealthMonitor(engines=[LoopView(loop)], broker=probe)
    await health.start()
    try:
        readiness = await health.readiness()
        assert readiness.reasons == ("app bordereaux has no partition assignment yet",)

        loop.stats.assigned = [("insurance.policy.events", 0)]
        loop.stats.records, loop.stats.dead_letters, loop.stats.outputs = 7, 1, 9
        loop.stats.transactions, loop.stats.last_commit_at = 2, 1_700_000_000.0
        setter = threading.Thread(target=loop._set_ready)  # the loop sets it from its own thread
        setter.start()
        setter.join()

        assert await wait_ready(health, True) == ()
        app = (await health.status())["apps"]["bordereaux"]
    finally:
        await health.stop()
    assert app["group"] == "integrations.bordereaux"
    assert app["assigned_partitions"] == [{"topic": "insurance.policy.events", "partition": 0}]
    assert (app["processed"], app["failed"], app["outputs"]) == (7, 1, 9)
    assert app["last_success_at"] == "2023-11-14T22:13:20Z"


def test_a_ready_callback_given_after_the_loop_is_ready_runs_at_once() -> None:
    loop = _loop()
    calls: list[str] = []
    loop.when_ready(lambda: calls.append("early"))
    assert calls == []
    loop._set_ready()
    loop._set_ready()  # only the first time counts
    loop.when_ready(lambda: calls.append("late"))
    assert calls == ["early", "late"]
