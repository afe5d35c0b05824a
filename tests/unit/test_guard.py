"""The endpoint guard: deadline, in-place attempts and the breaker, in one frame.

``EndpointGuard.call`` applies the rules of ``RetryPolicy`` (through ``after_failure``) and of
``CircuitBreaker`` (through ``admit`` and ``settle``) itself; these tests hold it to them.
"""

from __future__ import annotations

import asyncio

import pytest

from processors import context as record_context
from processors.errors import Backpressure, ContractError, Permanent, Retriable
from processors.resilience.breaker import BreakerSettings, BreakerState, CircuitBreaker
from processors.resilience.config import EndpointPolicy, TimeoutPolicy
from processors.resilience.guard import DeadlineExceeded, EndpointGuard, EndpointUnavailable, Unguarded
from processors.resilience.retry import RetriesExhausted, RetryPolicy

NO_WAIT = RetryPolicy(max_attempts=3, initial_delay_ms=0, max_delay_ms=1_000)


def _guard(*, retry: RetryPolicy = NO_WAIT, threshold: int = 5, deadline_s: float = 60.0) -> EndpointGuard:
    policy = EndpointPolicy(
        retry=retry,
        breaker=BreakerSettings(failure_threshold=threshold, success_threshold=1, half_open_requests=1),
        timeout=TimeoutPolicy(connect_timeout_s=min(deadline_s, 5.0), deadline_s=deadline_s),
    )
    return EndpointGuard("gateway", policy)


class Script:
    """An operation that raises the scripted errors in turn, then answers ``ok``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.attempts: list[int] = []

    async def __call__(self) -> str:
        self.calls += 1
        current = record_context.current()
        assert current is not None
        self.attempts.append(current.calls)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_a_first_success_is_one_attempt_counted_by_the_breaker() -> None:
    guard = _guard()
    op = Script()
    assert await guard.call(op) == "ok"
    stats = guard.breaker.snapshot()
    assert (op.calls, stats.total_successes, stats.total_failures) == (1, 1, 0)
    assert guard.breaker.latency.snapshot()["success"][0][-1] == ("+Inf", 1)


async def test_retriable_failures_are_attempted_again_in_place_and_each_is_counted() -> None:
    guard = _guard()
    op = Script(Retriable("503"), Retriable("503"))
    assert await guard.call(op) == "ok"
    stats = guard.breaker.snapshot()
    assert op.attempts == [1, 2, 3]
    assert (stats.total_failures, stats.total_successes, stats.consecutive_failures) == (2, 1, 0)


async def test_out_of_attempts_the_last_error_is_the_cause() -> None:
    guard = _guard()
    last = Retriable("third")
    op = Script(Retriable("first"), Retriable("second"), last)
    with pytest.raises(RetriesExhausted) as caught:
        await guard.call(op)
    assert (caught.value.attempts, op.calls) == (3, 3)
    assert caught.value.__cause__ is last
    assert guard.breaker.snapshot().total_failures == 3


async def test_a_retry_after_beyond_the_in_place_budget_is_not_waited_for() -> None:
    guard = _guard()
    op = Script(Retriable("429", retry_after_s=5.0))
    with pytest.raises(RetriesExhausted) as caught:
        await guard.call(op)
    assert (op.calls, caught.value.attempts, caught.value.retry_after_s) == (1, 1, 5.0)


async def test_a_permanent_error_is_not_retried_and_counts_as_a_healthy_answer() -> None:
    guard = _guard(threshold=1)
    op = Script(Permanent("400"))
    with pytest.raises(Permanent):
        await guard.call(op)
    stats = guard.breaker.snapshot()
    assert (op.calls, stats.total_failures, stats.state) == (1, 0, BreakerState.CLOSED)
    assert "rejected" in guard.breaker.latency.snapshot()


async def test_a_contract_error_is_neither_success_nor_failure() -> None:
    guard = _guard(threshold=1)
    op = Script(ContractError("bad input"))
    with pytest.raises(ContractError):
        await guard.call(op)
    stats = guard.breaker.snapshot()
    assert (stats.total_failures, stats.total_successes, stats.state) == (0, 0, BreakerState.CLOSED)


async def test_an_open_breaker_refuses_without_spending_an_attempt() -> None:
    guard = _guard(threshold=1)
    guard.breaker.settle(guard.breaker.admit(), 0.0, Retriable("down"))
    assert guard.breaker.state is BreakerState.OPEN
    op = Script()
    with pytest.raises(EndpointUnavailable) as caught:
        await guard.call(op)
    assert op.calls == 0
    assert caught.value.endpoint == "gateway"
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s > 0


async def test_a_breaker_that_opens_between_attempts_stops_them() -> None:
    guard = _guard(threshold=2, retry=RetryPolicy(max_attempts=5, initial_delay_ms=0))
    op = Script(Retriable("1"), Retriable("2"), Retriable("3"))
    with pytest.raises(EndpointUnavailable):
        await guard.call(op)
    assert op.calls == 2
    assert guard.breaker.state is BreakerState.OPEN


async def test_backpressure_from_the_operation_propagates_at_once() -> None:
    guard = _guard()
    op = Script(Backpressure("wait", retry_after_s=1.0))
    with pytest.raises(Backpressure):
        await guard.call(op)
    assert op.calls == 1


async def test_the_deadline_covers_the_attempts_and_releases_the_permit() -> None:
    guard = _guard(deadline_s=0.05)
    never = asyncio.Event()

    async def hangs() -> str:
        await never.wait()
        return "late"

    with pytest.raises(DeadlineExceeded):
        await guard.call(hangs)
    stats = guard.breaker.snapshot()
    assert (stats.total_failures, stats.total_successes) == (0, 0)


async def test_a_half_open_probe_closes_the_breaker_through_the_guard() -> None:
    clock = [0.0]
    settings = BreakerSettings(
        failure_threshold=1, success_threshold=1, half_open_requests=1, timeout_duration_s=1
    )
    breaker = CircuitBreaker("gateway", settings, clock=lambda: clock[0])
    guard = EndpointGuard("gateway", EndpointPolicy(breaker=settings, retry=NO_WAIT), breaker)
    breaker.settle(breaker.admit(), 0.0, Retriable("down"))
    clock[0] = 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert await guard.call(Script()) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_unguarded_makes_one_counted_attempt() -> None:
    guard = Unguarded("gateway", EndpointPolicy())
    op = Script(Retriable("once"))
    with pytest.raises(Retriable):
        await guard.call(op)
    assert (op.calls, op.attempts) == (1, [1])
    assert guard.breaker.snapshot().total_failures == 0
