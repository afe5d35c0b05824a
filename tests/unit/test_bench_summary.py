"""The bench summary reports every ratio that fell against the baseline, and only those."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import Comparison, Report, Run
from bench.summary import flatten, main, regressions


def _report(ceiling_rate: float, pipeline_rate: float) -> Report:
    return Report(
        bench="payments",
        units={"ceiling": "request", "payments": "event"},
        runs={
            "ceiling": [Run(1000, 1000 / ceiling_rate, 0.2)] * 3,
            "payments": [Run(1000, 1000 / pipeline_rate, 0.5)] * 3,
        },
        comparisons=[Comparison("payments/ceiling", "payments", "ceiling", target=0.7)],
    )


def test_ratios_are_medians_of_rates_and_cpu_per_unit() -> None:
    ratios = _report(2000.0, 1000.0).ratios()["payments/ceiling"]
    assert ratios["throughput"] == 0.5
    assert ratios["cpu"] == 0.4  # 200 µs/request against 500 µs/event


def test_a_fall_beyond_the_tolerance_is_a_regression() -> None:
    baseline = {"payments:payments/ceiling:throughput": 0.60, "payments:payments/ceiling:cpu": 0.40}
    current = {"payments:payments/ceiling:throughput": 0.54, "payments:payments/ceiling:cpu": 0.36}
    fell = regressions(current, baseline, tolerance=0.05)
    assert len(fell) == 1
    assert fell[0].startswith("payments:payments/ceiling:throughput: 0.54")


def test_the_summary_exits_1_on_a_regression_and_0_otherwise(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "payments.json").write_text(json.dumps(_report(2000.0, 1000.0).as_json()))
    baseline = tmp_path / "baseline.json"
    assert main(["--results", str(results), "--baseline", str(baseline), "--update-baseline"]) == 0
    assert json.loads(baseline.read_text())["ratios"] == flatten(
        {"payments": json.loads((results / "payments.json").read_text())}
    )
    assert main(["--results", str(results), "--baseline", str(baseline)]) == 0
    (results / "payments.json").write_text(json.dumps(_report(2000.0, 800.0).as_json()))
    assert main(["--results", str(results), "--baseline", str(baseline)]) == 1
