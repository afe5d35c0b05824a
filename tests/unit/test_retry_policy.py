import random

import pytest

from processors.errors import Permanent, Retriable
from processors.resilience.retry import RetriesExhausted, RetryPolicy


def test_backoff_is_full_jitter_under_the_exponential_cap() -> None:
    policy = RetryPolicy(initial_delay_ms=100, multiplier=2, max_delay_ms=5_000)
    rng = random.Random(1)
    for attempt, cap in [(1, 100), (2, 200), (3, 400), (7, 5_000), (20, 5_000)]:
        delays = [policy.backoff_ms(attempt, rng=rng) for _ in range(200)]
        assert max(delays) <= cap
        assert min(delays) >= 0
        assert max(delays) > cap * 0.8  # jitter spans the range, not a constant


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(max_delay_ms=5_000)
    assert policy.backoff_ms(1, retry_after_s=2) == 2_000
    assert policy.backoff_ms(1, retry_after_s=60) == 5_000


async def test_max_attempts_counts_the_first_attempt() -> None:
    calls: list[int] = []
    slept: list[float] = []

    async def op(attempt: int) -> str:
        calls.append(attempt)
        raise Retriable("503")

    async def sleep(s: float) -> None:
        slept.append(s)

    with pytest.raises(RetriesExhausted) as info:
        await RetryPolicy(max_attempts=3).call(op, sleep=sleep)
    assert calls == [1, 2, 3]
    assert len(slept) == 2
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, Retriable)


async def test_permanent_errors_are_not_retried() -> None:
    calls: list[int] = []

    async def op(attempt: int) -> str:
        calls.append(attempt)
        raise Permanent("422")

    async def sleep(s: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(Permanent):
        await RetryPolicy().call(op, sleep=sleep)
    assert calls == [1]


async def test_success_after_a_transient_failure() -> None:
    async def op(attempt: int) -> str:
        if attempt == 1:
            raise Retriable("timeout")
        return "ok"

    async def sleep(s: float) -> None:
        return None

    assert await RetryPolicy().call(op, sleep=sleep) == "ok"


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
