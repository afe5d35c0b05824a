"""The circuit breaker's state machine, driven by a fake clock; no network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from pydantic import ValidationError

from processors.errors import Permanent, Retriable, ValidationFailed
from processors.resilience.breaker import (
    HALF_OPEN_BUSY_RETRY_S,
    BreakerRegistry,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    OperationTimedOut,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise Retriable("503")


async def refused() -> str:
    raise Permanent("422")


async def never() -> str:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def run(breaker: CircuitBreaker, operation: Callable[[], Awaitable[str]], times: int = 1) -> None:
    """Call ``times`` times, swallowing the operation's errors (not CircuitOpen)."""
    for _ in range(times):
        try:
            await breaker.call(operation)
        except CircuitOpen:
            raise
        except (Retriable, Permanent):
            pass  # the operation's own error: what the test feeds in


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("payment-gateway", clock=clock)


async def open_breaker(breaker: CircuitBreaker) -> None:
    await run(breaker, fail, breaker.settings.failure_threshold)
    assert breaker.state is OPEN


async def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await open_breaker(breaker)
    clock.advance(breaker.settings.timeout_duration_s)
    assert breaker.state is HALF_OPEN


class Gate:
    """An operation that records its start and waits until released."""

    def __init__(self, expected_starts: int) -> None:
        self.started = 0
        self.expected_starts = expected_starts
        self.all_started = asyncio.Event()
        self.release = asyncio.Event()
        self.outcome: Callable[[], str] = lambda: "ok"

    async def __call__(self) -> str:
        self.started += 1
        if self.started == self.expected_starts:
            self.all_started.set()
        await self.release.wait()
        return self.outcome()


# --------------------------------------------------------------------------- settings


def test_seed_defaults() -> None:
    settings = BreakerSettings()
    assert (settings.failure_threshold, settings.success_threshold) == (5, 3)
    assert (settings.timeout_duration_s, settings.half_open_requests) == (30.0, 3)


def test_success_threshold_above_half_open_requests_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        BreakerSettings(success_threshold=4, half_open_requests=3)
    message = str(info.value)
    assert "success_threshold (4)" in message
    assert "half_open_requests (3)" in message


@pytest.mark.parametrize(
    "values",
    [
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"half_open_requests": -1},
        {"timeout_duration_s": 0},
        {"timeout_duration_s": float("inf")},
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BreakerSettings.model_validate(values)


# --------------------------------------------------------------------------- closed → open


async def test_opens_after_exactly_failure_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    await run(breaker, fail, 4)
    await run(breaker, ok)
    await run(breaker, fail, 4)
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 4
    await run(breaker, fail)
    assert breaker.state is OPEN
    assert breaker.snapshot().opened_count == 1


async def test_open_rejects_without_calling(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await open_breaker(breaker)
    calls: list[int] = []

    async def counted() -> str:
        calls.append(1)
        return "ok"

    clock.advance(10)
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(counted)
    assert calls == []
    assert isinstance(info.value, Retriable)
    assert info.value.endpoint == "payment-gateway"
    assert info.value.retry_after_s == pytest.approx(20.0)
    assert "payment-gateway" in str(info.value)
    assert breaker.snapshot().rejections == 1


async def test_timeouts_and_unexpected_errors_count_as_failures(breaker: CircuitBreaker) -> None:
    async def timed_out() -> str:
        raise TimeoutError

    async def broken() -> str:
        raise KeyError("x")

    for _ in range(2):
        with pytest.raises(TimeoutError):
            await breaker.call(timed_out)
    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(broken)
    assert breaker.state is OPEN


async def test_permanent_errors_do_not_count_and_end_the_failure_run(breaker: CircuitBreaker) -> None:
    await run(breaker, refused, 10)
    assert breaker.state is CLOSED
    await run(breaker, fail, 4)
    with pytest.raises(Permanent):
        await breaker.call(refused)
    await run(breaker, fail, 4)
    assert breaker.state is CLOSED
    assert breaker.snapshot().total_failures == 8


async def test_contract_errors_and_cancellation_count_as_neither(breaker: CircuitBreaker) -> None:
    async def bad_input() -> str:
        raise ValidationFailed("amount: must be positive")

    await run(breaker, fail, 4)
    with pytest.raises(ValidationFailed):
        await breaker.call(bad_input)
    gate = Gate(expected_starts=1)
    task = asyncio.create_task(breaker.call(gate))
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = breaker.snapshot()
    assert stats.consecutive_failures == 4  # not reset by a success, not raised by a failure
    assert (stats.total_failures, stats.total_successes) == (4, 0)
    await run(breaker, fail)
    assert breaker.state is OPEN


async def test_return_values_are_successes(breaker: CircuitBreaker) -> None:
    async def declined() -> str:
        return "DECLINED"  # a business rejection is a result, not a failure

    await run(breaker, fail, 4)
    assert await breaker.call(declined) == "DECLINED"
    assert breaker.snapshot().consecutive_failures == 0


# --------------------------------------------------------------------------- open → half-open


async def test_half_open_once_the_timeout_elapsed(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await open_breaker(breaker)
    clock.advance(29.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(ok) == "ok"


async def test_ten_concurrent_callers_in_half_open_admit_exactly_three(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await half_open(breaker, clock)
    gate = Gate(expected_starts=3)
    rejected: list[CircuitOpen] = []
    seven_rejected = asyncio.Event()

    async def caller() -> str:
        try:
            return await breaker.call(gate)
        except CircuitOpen as exc:
            rejected.append(exc)
            if len(rejected) == 7:
                seven_rejected.set()
            raise

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    async with asyncio.timeout(5):
        await gate.all_started.wait()
        await seven_rejected.wait()
    assert gate.started == 3
    assert breaker.snapshot().probes_in_flight == 3
    assert all(exc.retry_after_s == HALF_OPEN_BUSY_RETRY_S for exc in rejected)
    assert all(exc.state is HALF_OPEN for exc in rejected)
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == 3
    assert sum(isinstance(r, CircuitOpen) for r in results) == 7
    assert breaker.state is CLOSED


async def test_a_cancelled_probe_frees_its_permit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await half_open(breaker, clock)
    gate = Gate(expected_starts=3)
    probes = [asyncio.create_task(breaker.call(gate)) for _ in range(3)]
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)

    probes[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await probes[0]
    stats = breaker.snapshot()
    assert stats.probes_in_flight == 2
    assert (stats.probe_successes, stats.state) == (0, HALF_OPEN)

    assert await breaker.call(ok) == "ok"  # admitted in the freed permit
    assert breaker.snapshot().probe_successes == 1
    gate.release.set()
    await asyncio.gather(*probes[1:])
    assert breaker.state is CLOSED


async def test_a_slow_probe_that_times_out_counts_as_a_failure(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await half_open(breaker, clock)
    with pytest.raises(TimeoutError):
        await breaker.call(lambda: asyncio.wait_for(never(), 0.01))
    assert breaker.state is OPEN
    assert breaker.snapshot().opened_count == 2


async def test_timeout_s_bounds_the_operation_inside_the_breaker(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await half_open(breaker, clock)
    with pytest.raises(OperationTimedOut) as info:
        await breaker.call(never, timeout_s=0.01)
    assert isinstance(info.value, Retriable)
    assert info.value.timeout_s == 0.01
    assert isinstance(info.value.__cause__, TimeoutError)
    assert breaker.state is OPEN


async def test_timeout_s_leaves_the_operations_own_timeouts_alone(breaker: CircuitBreaker) -> None:
    async def times_out_itself() -> str:
        raise TimeoutError

    with pytest.raises(TimeoutError) as info:
        await breaker.call(times_out_itself, timeout_s=5)
    assert not isinstance(info.value, OperationTimedOut)
    assert breaker.snapshot().total_failures == 1


async def test_a_timeout_around_call_cancels_the_probe_and_counts_neither(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await half_open(breaker, clock)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(breaker.call(never), 0.01)
    stats = breaker.snapshot()
    assert (stats.state, stats.probes_in_flight) == (HALF_OPEN, 0)


# --------------------------------------------------------------------------- half-open → closed / open


async def test_success_threshold_probe_successes_close(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await half_open(breaker, clock)
    await run(breaker, ok, 2)
    assert breaker.state is HALF_OPEN
    await run(breaker, ok)
    assert breaker.state is CLOSED
    stats = breaker.snapshot()
    assert (stats.consecutive_failures, stats.probe_successes) == (0, 0)
    # closed again: it takes a full run of failures to open it
    await run(breaker, fail, 4)
    assert breaker.state is CLOSED


async def test_a_permanent_error_is_a_probe_success(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await half_open(breaker, clock)
    await run(breaker, refused, 3)
    assert breaker.state is CLOSED


@pytest.mark.parametrize("successes_before", [0, 1, 2])
async def test_any_probe_failure_reopens_with_a_fresh_timeout(
    breaker: CircuitBreaker, clock: FakeClock, successes_before: int
) -> None:
    await half_open(breaker, clock)
    await run(breaker, ok, successes_before)
    clock.advance(7)
    await run(breaker, fail)
    assert breaker.state is OPEN
    assert breaker.next_admission_in_s() == pytest.approx(30.0)
    clock.advance(30)
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().probe_successes == 0  # earlier successes do not carry over


# --------------------------------------------------------------------------- generations


async def test_a_slow_call_from_before_the_opening_does_not_close_it(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    gate = Gate(expected_starts=1)
    slow = asyncio.create_task(breaker.call(gate))
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    await open_breaker(breaker)
    gate.release.set()
    assert await slow == "ok"
    assert breaker.state is OPEN
    assert breaker.snapshot().total_successes == 1  # recorded, but moved nothing


async def test_a_probe_that_ends_after_its_siblings_closed_the_breaker_is_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker("kyc", BreakerSettings(success_threshold=2, half_open_requests=3), clock=clock)
    await half_open(breaker, clock)
    gate = Gate(expected_starts=1)

    def boom() -> str:
        raise Retriable("503")

    gate.outcome = boom
    late = asyncio.create_task(breaker.call(gate))
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    await run(breaker, ok, 2)
    assert breaker.state is CLOSED
    gate.release.set()
    with pytest.raises(Retriable):
        await late
    stats = breaker.snapshot()
    assert stats.state is CLOSED
    assert stats.consecutive_failures == 0
    assert stats.total_failures == 5 + 1  # the opening run and the late probe


# --------------------------------------------------------------------------- listeners and stats


async def test_listeners_see_every_transition(breaker: CircuitBreaker, clock: FakeClock) -> None:
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: seen.append((old, new)))
    await half_open(breaker, clock)
    await run(breaker, fail)
    clock.advance(30)
    await run(breaker, ok, 3)
    assert seen == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


async def test_a_failing_listener_does_not_stop_the_others(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BreakerState] = []

    def broken(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda old, new: seen.append(new))
    await open_breaker(breaker)
    assert seen == [OPEN]
    assert "listener failed" in caplog.text


async def test_snapshot_counts(breaker: CircuitBreaker, clock: FakeClock) -> None:
    clock.advance(1)
    await run(breaker, ok)
    clock.advance(1)
    await open_breaker(breaker)
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    stats = breaker.snapshot()
    assert stats.endpoint == "payment-gateway"
    assert stats.state is OPEN
    assert (stats.total_successes, stats.total_failures, stats.rejections) == (1, 5, 1)
    assert (stats.consecutive_failures, stats.opened_count) == (5, 1)
    assert stats.last_success_at == 1_001.0
    assert stats.last_failure_at == 1_002.0
    assert stats.last_state_change_at == 1_002.0


async def test_next_admission_in_s(breaker: CircuitBreaker, clock: FakeClock) -> None:
    assert breaker.next_admission_in_s() == 0.0
    await open_breaker(breaker)
    assert breaker.next_admission_in_s() == pytest.approx(30.0)
    clock.advance(12.5)
    assert breaker.next_admission_in_s() == pytest.approx(17.5)
    clock.advance(17.5)
    assert breaker.next_admission_in_s() == 0.0
    assert breaker.state is HALF_OPEN

    gate = Gate(expected_starts=3)
    probes = [asyncio.create_task(breaker.call(gate)) for _ in range(3)]
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    assert breaker.next_admission_in_s() == HALF_OPEN_BUSY_RETRY_S
    gate.release.set()
    await asyncio.gather(*probes)
    assert breaker.next_admission_in_s() == 0.0


# --------------------------------------------------------------------------- wait_admitting


async def test_wait_admitting_returns_at_once_when_closed(breaker: CircuitBreaker) -> None:
    async with asyncio.timeout(5):
        await breaker.wait_admitting()


async def test_wait_admitting_wakes_when_the_fake_clock_ends_the_open_period(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await open_breaker(breaker)
    entered = asyncio.Event()

    async def waiter() -> BreakerState:
        entered.set()
        await breaker.wait_admitting()
        return breaker.state

    task = asyncio.create_task(waiter())
    await entered.wait()  # the task now waits inside wait_admitting
    assert not task.done()
    clock.advance(30)
    assert breaker.state is HALF_OPEN  # reading the state performs the transition and wakes waiters
    async with asyncio.timeout(5):
        assert await task is HALF_OPEN


async def test_wait_admitting_returns_when_the_open_period_ends_on_a_real_clock() -> None:
    breaker = CircuitBreaker("kyc", BreakerSettings(timeout_duration_s=0.05), clock=time.monotonic)
    await open_breaker(breaker)
    async with asyncio.timeout(5):
        await breaker.wait_admitting()
    assert breaker.state is HALF_OPEN


async def test_wait_admitting_wakes_when_a_probe_permit_is_released(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await half_open(breaker, clock)
    gate = Gate(expected_starts=3)
    probes = [asyncio.create_task(breaker.call(gate)) for _ in range(3)]
    async with asyncio.timeout(5):
        await gate.all_started.wait()
    entered = asyncio.Event()

    async def waiter() -> None:
        entered.set()
        await breaker.wait_admitting()

    task = asyncio.create_task(waiter())
    await entered.wait()
    assert not task.done()
    probes[0].cancel()
    async with asyncio.timeout(5):
        await task
    assert breaker.next_admission_in_s() == 0.0
    gate.release.set()
    await asyncio.gather(*probes[1:])


# --------------------------------------------------------------------------- registry


async def test_registry_keeps_one_breaker_per_endpoint_with_its_settings(clock: FakeClock) -> None:
    settings = {"kyc-provider": BreakerSettings(failure_threshold=2)}
    registry = BreakerRegistry(lambda name: settings.get(name, BreakerSettings()), clock=clock)
    kyc = registry.get("kyc-provider")
    assert registry.get("kyc-provider") is kyc
    assert kyc.settings.failure_threshold == 2
    assert registry.get("payment-gateway").settings == BreakerSettings()
    assert "kyc-provider" in registry
    assert len(registry) == 2
    await run(kyc, fail, 2)
    assert registry.snapshot()["kyc-provider"].state is OPEN
    assert registry.snapshot()["payment-gateway"].state is CLOSED


async def test_registry_listeners_cover_existing_and_later_breakers(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    early = registry.get("early")
    seen: list[tuple[str, BreakerState, BreakerState]] = []
    registry.add_listener(lambda endpoint, old, new: seen.append((endpoint, old, new)))
    late = registry.get("late")
    await open_breaker(early)
    await open_breaker(late)
    assert seen == [("early", CLOSED, OPEN), ("late", CLOSED, OPEN)]
