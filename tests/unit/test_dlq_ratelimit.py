"""The replay token bucket, on an injected clock."""

from __future__ import annotations

import pytest

from processors.dlq import TokenBucket
from processors.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_lets_a_burst_of_capacity_through_without_waiting() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, capacity=5, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert bucket.reserve() == pytest.approx(0.1)


def test_waits_grow_by_one_interval_per_record_once_empty() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, capacity=1, clock=clock)
    assert bucket.reserve() == 0.0
    waits = [bucket.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.25, 0.5, 0.75])


def test_tokens_refill_with_time_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, capacity=2, clock=clock)
    bucket.reserve()
    bucket.reserve()
    assert bucket.available == pytest.approx(0.0)
    clock.advance(0.5)
    assert bucket.available == pytest.approx(1.0)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.5)


def test_refill_stops_at_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, capacity=3, clock=clock)
    clock.advance(3600)
    assert bucket.available == pytest.approx(3.0)


def test_the_long_run_rate_is_the_configured_rate() -> None:
    """Following the returned waits, N records take (N - capacity) / rate seconds."""
    clock = FakeClock()
    bucket = TokenBucket(50, clock=clock)  # capacity defaults to one second of tokens
    start = clock.now
    for _ in range(550):
        clock.advance(bucket.reserve())
    assert clock.now - start == pytest.approx(500 / 50)


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, capacity=1, clock=clock)
    bucket.reserve()
    clock.advance(-10)
    assert bucket.reserve() == pytest.approx(1.0)


def test_fractional_rates_are_allowed() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock=clock)
    assert bucket.capacity == 1.0
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "capacity"), [(0, None), (-1, None), (5, 0.5)])
def test_bad_settings_are_config_errors(rate: float, capacity: float | None) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, capacity=capacity)
