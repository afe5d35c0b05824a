"""The webhooks bench reports the median of its e2e latency rounds, so one stalled phase on a
shared machine cannot make the run's figures."""

from __future__ import annotations

from bench.bench_webhooks import Latency, median_latency
from bench.harness import Run


def _latency(p50: float, p99: float, measured: int = 1000, missing: int = 0) -> Latency:
    return Latency(
        p50_ms=p50,
        p99_ms=p99,
        rate_per_s=500.0,
        measured=measured,
        missing=missing,
        events_per_s=45.0,
        cpu=Run(measured, 10.0, p50),  # cpu_s tags the round, to tell which one was kept
    )


def test_one_stalled_round_does_not_make_the_figures() -> None:
    rounds = [_latency(30.0, 110.0), _latency(1190.0, 5800.0), _latency(28.0, 90.0)]
    median = median_latency(rounds)
    assert median.p50_ms == 30.0
    assert median.p99_ms == 110.0


def test_p50_and_p99_are_each_their_own_median_and_counts_are_summed() -> None:
    rounds = [_latency(20.0, 300.0, missing=1), _latency(40.0, 60.0), _latency(30.0, 100.0, measured=500)]
    median = median_latency(rounds)
    assert (median.p50_ms, median.p99_ms) == (30.0, 100.0)
    assert median.measured == 2500
    assert median.missing == 1
    assert median.cpu.cpu_s == 30.0  # the CPU figure of the round whose p50 is the median


def test_an_even_number_of_rounds_takes_the_middle_of_the_two_middle_ones() -> None:
    median = median_latency([_latency(10.0, 50.0), _latency(30.0, 70.0)])
    assert (median.p50_ms, median.p99_ms) == (20.0, 60.0)
    assert median.cpu.cpu_s == 10.0
