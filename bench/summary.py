"""One summary of a bench run, compared with the committed baseline.

    python -m bench.summary [--results bench/results] [--baseline bench/baseline.json]
                            [--update-baseline]

Reads every ``<bench>.json`` report in ``--results`` (written by ``--json``; ``./dev bench``
runs them all), writes ``summary.json`` beside them, prints every ratio with its target, and
compares each ratio (throughput and CPU) with the baseline: any that fell by more than
``--tolerance`` (0.05) is reported and the exit code is 1.  A ratio the baseline does not know
is reported as new.  ``--update-baseline`` makes this run the baseline (commit it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results"
DEFAULT_BASELINE = ROOT / "bench" / "baseline.json"


def flatten(reports: dict[str, Any]) -> dict[str, float]:
    """``bench:ratio:kind`` → value, for every throughput and CPU ratio of every report."""
    flat: dict[str, float] = {}
    for bench, report in sorted(reports.items()):
        for name, ratio in sorted(report.get("ratios", {}).items()):
            for kind in ("throughput", "cpu"):
                if kind in ratio:
                    flat[f"{bench}:{name}:{kind}"] = float(ratio[kind])
    return flat


def summarise(results: Path) -> dict[str, Any]:
    reports = {}
    for path in sorted(results.glob("*.json")):
        if path.name == "summary.json":
            continue
        report = json.loads(path.read_text())
        reports[report["bench"]] = report
    environments = [r["environment"] for r in reports.values()]
    return {
        "benches": reports,
        "ratios": flatten(reports),
        "environment": environments[0] if environments else {},
    }


def regressions(current: dict[str, float], baseline: dict[str, float], tolerance: float) -> list[str]:
    fell = []
    for key, value in sorted(current.items()):
        before = baseline.get(key)
        if before is not None and value < before - tolerance:
            fell.append(f"{key}: {value:.2f} (baseline {before:.2f}, fell {before - value:.2f})")
    return fell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--update-baseline", action="store_true")
    args = parser.parse_args(argv)

    summary = summarise(args.results)
    if not summary["benches"]:
        print(f"no bench reports in {args.results}", file=sys.stderr)
        return 2
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    print("== summary")
    for bench, report in sorted(summary["benches"].items()):
        for name, ratio in sorted(report.get("ratios", {}).items()):
            target = ratio.get("target")
            met = ""
            if target is not None:
                values = [ratio["throughput"], *([ratio["cpu"]] if "cpu" in ratio else [])]
                met = "  met" if min(values) >= target else f"  below target {target:.2f}"
            cpu = f"  CPU {ratio['cpu']:.2f}" if "cpu" in ratio else ""
            print(f"  {bench:<12} {name:<22} throughput {ratio['throughput']:.2f}{cpu}{met}")
        for name, value in sorted(report.get("figures", {}).items()):
            target = report.get("targets", {}).get(name)
            print(f"  {bench:<12} {name:<22} {value:,.2f}" + (f"  (target {target})" if target else ""))

    if args.update_baseline:
        baseline = {"ratios": summary["ratios"], "environment": summary["environment"]}
        args.baseline.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n")
        print(f"baseline written: {args.baseline}")
        return 0
    if not args.baseline.exists():
        print(f"no baseline at {args.baseline}: run with --update-baseline to make one")
        return 0
    baseline = json.loads(args.baseline.read_text())["ratios"]
    new = sorted(set(summary["ratios"]) - set(baseline))
    for key in new:
        print(f"  new ratio (not in the baseline): {key} = {summary['ratios'][key]:.2f}")
    fell = regressions(summary["ratios"], baseline, args.tolerance)
    for line in fell:
        print(f"REGRESSION {line}")
    if fell:
        return 1
    print(f"no ratio fell by more than {args.tolerance:.2f} against the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
