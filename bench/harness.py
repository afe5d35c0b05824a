"""What every benchmark shares: measuring a run, interleaving stages, medians, and one report.

A *stage* is one thing measured (the ceiling, the pipeline, the plumbing...).  Each run of a
stage records its units of work (requests, events, deliveries), its wall time and the CPU time
of this process (every thread: librdkafka's included; a sandbox in its own process is not).
Stages are run interleaved — ceiling, pipeline, ceiling, pipeline... — after a warm-up run of
each, so that the machine's drift (it is shared and noisy) falls on both sides alike, and each
figure is the median of its runs.

A report carries, per stage, the median rate and the median CPU µs per unit; per comparison,
the **throughput ratio** (pipeline rate / ceiling rate) and the **CPU ratio** (the ceiling's
CPU µs per unit / the pipeline's: 1.0 means the pipeline costs no more CPU per unit than the
ceiling); the versions of the libraries the figures depend on; and the process's share of a
core in each stage.  ``--json PATH`` writes it; ``python -m bench.summary`` compares the JSON
reports of a run with ``bench/baseline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from processors.runtime.collector import THRESHOLDS, collector_tuned

T = TypeVar("T")

__all__ = [
    "Comparison",
    "Report",
    "Run",
    "Stopwatch",
    "environment",
    "interleaved",
    "json_argument",
]

ROOT = Path(__file__).resolve().parents[1]

PROFILE: dict[str, str] = {}
"""``{"stage": NAME}`` when ``--profile NAME`` was given."""

PROFILED_PROCESS: dict[str, int] = {}
"""Per stage, the process ``--profile`` records instead of this one (a bench whose stage runs
its subject in a process of its own registers it here: ``bench/bench_portal.py``)."""

#: The libraries whose versions can move a figure.
LIBRARIES = (
    "confluent-kafka",
    "aiohttp",
    "fastavro",
    "pydantic",
    "pydantic-core",
    "orjson",
    "msgspec",
    "uvloop",
    "yarl",
    "multidict",
    "cryptography",
    "prometheus-client",
)


@dataclass(frozen=True)
class Run:
    """One run of one stage."""

    units: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.units / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU µs of this process per unit of work."""
        return self.cpu_s * 1e6 / self.units if self.units else 0.0

    @property
    def cpu_share(self) -> float:
        """Cores this process kept busy on average (1.0: one core all the time)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class Stopwatch:
    """Wall and process CPU time from ``start()`` (or construction) to ``stop(units)``."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, units: int) -> Run:
        return Run(units, time.perf_counter() - self._wall, time.process_time() - self._cpu)


async def interleaved(
    stages: Mapping[str, Callable[[], Awaitable[T]]],
    *,
    rounds: int = 3,
    warmup: bool = True,
    log: Callable[[str], None] = print,
    describe: Callable[[Any], str] | None = None,
) -> dict[str, list[T]]:
    """Run every stage once to warm up (discarded), then ``rounds`` times in turn.

    A stage returns a :class:`Run` unless ``describe`` says how to print what it returns
    (the webhooks bench's latency phases return their latency figures).

    With ``--profile STAGE`` (:func:`json_argument`), the first measured run of that stage is
    recorded by py-spy and its profile printed (:mod:`bench.profile`): this process's, or the
    one :data:`PROFILED_PROCESS` names for the stage.
    """
    # Every stage in this process runs under the collector thresholds the product's runners
    # set for themselves (processors.runtime.collector): ceilings and floors get the same.
    show = describe or _describe
    with collector_tuned():
        if warmup:
            for name, stage in stages.items():
                run = await stage()
                log(f"  warm-up {name}: {show(run)}")
        runs: dict[str, list[T]] = {name: [] for name in stages}
        for index in range(rounds):
            for name, stage in stages.items():
                if index == 0 and name == PROFILE.get("stage"):
                    from bench import profile

                    with profile.record(name, pid=PROFILED_PROCESS.get(name)) as path:
                        run = await stage()
                    if path is not None and path.exists():
                        profile.report(profile.load(path))
                else:
                    run = await stage()
                runs[name].append(run)
                log(f"  round {index + 1} {name}: {show(run)}")
    return runs


def _describe(run: Run) -> str:
    return (
        f"{run.units} units in {run.wall_s:.2f} s = {run.rate:,.0f}/s, "
        f"{run.cpu_us:,.0f} µs CPU/unit, {run.cpu_share:.2f} cores"
    )


@dataclass(frozen=True)
class Comparison:
    """``subject`` against ``ceiling``; ``target`` applies to both ratios unless ``cpu_target`` is set."""

    name: str
    subject: str
    ceiling: str
    target: float | None = None
    cpu: bool = True
    """False where CPU per unit is not comparable (different units of work on each side)."""


@dataclass
class Report:
    bench: str
    units: Mapping[str, str]
    """Per stage, what one unit is (``request``, ``event``, ``delivery``...)."""
    runs: Mapping[str, Sequence[Run]]
    comparisons: Sequence[Comparison]
    figures: dict[str, float] = field(default_factory=dict)
    """Other measured figures, each named with its unit (``restore_1m_s``, ``latency_p99_ms``)."""
    targets: dict[str, str] = field(default_factory=dict)
    """Per figure, its target as text (``<= 4``)."""
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> dict[str, Any]:
        runs = self.runs[name]
        return {
            "unit": self.units.get(name, "unit"),
            "runs": len(runs),
            "rate_median": statistics.median(r.rate for r in runs),
            "cpu_us_median": statistics.median(r.cpu_us for r in runs),
            "cpu_share_median": statistics.median(r.cpu_share for r in runs),
            "rates": [round(r.rate, 1) for r in runs],
        }

    def ratios(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.comparisons:
            subject, ceiling = self.stage(c.subject), self.stage(c.ceiling)
            entry: dict[str, Any] = {
                "subject": c.subject,
                "ceiling": c.ceiling,
                "throughput": _ratio(subject["rate_median"], ceiling["rate_median"]),
                "target": c.target,
            }
            if c.cpu:
                entry["cpu"] = _ratio(ceiling["cpu_us_median"], subject["cpu_us_median"])
            out[c.name] = entry
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "stages": {name: self.stage(name) for name in self.runs},
            "ratios": self.ratios(),
            "figures": self.figures,
            "targets": self.targets,
            "notes": self.notes,
            "environment": environment(),
        }

    def print(self, out: Any = None) -> None:
        out = out or sys.stdout
        write = lambda text: print(text, file=out)  # noqa: E731
        write(f"== {self.bench} (medians of {max(len(r) for r in self.runs.values())} interleaved runs)")
        for name in self.runs:
            s = self.stage(name)
            write(
                f"  {name:<28} {s['rate_median']:>10,.0f} {_plural(s['unit'])}/s   "
                f"{s['cpu_us_median']:>8,.0f} µs CPU/{s['unit']}   {s['cpu_share_median']:.2f} cores"
            )
        for name, r in self.ratios().items():
            target = f"   (target ≥ {r['target']:.2f})" if r["target"] is not None else ""
            cpu = f"   CPU ratio {r['cpu']:.2f}" if "cpu" in r else ""
            write(f"  ratio {name:<22} throughput {r['throughput']:.2f}{cpu}{target}")
        for name, value in self.figures.items():
            target = f"   (target {self.targets[name]})" if name in self.targets else ""
            write(f"  {name:<34} {value:,.2f}{target}")
        for note in self.notes:
            write(f"  note: {note}")
        env = environment()
        libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
        write(
            f"  on {env['cpus']} CPUs, load {env['load_1m']:.2f}, Python {env['python']} (collector "
            f"thresholds {tuple(env['gc_thresholds'])} in every stage); {libs}"
        )

    def emit(self, json_path: Path | None) -> None:
        self.print()
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n")


def _plural(unit: str) -> str:
    return unit[:-1] + "ies" if unit.endswith("y") else unit + "s"


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else 0.0


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: library versions, the machine, its load."""
    libraries: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    try:
        import confluent_kafka

        libraries["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:  # pragma: no cover - always installed
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_1m": os.getloadavg()[0],
        "gc_thresholds": list(THRESHOLDS),
        "commit": _commit(),
        "libraries": libraries,
    }


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per stage (median)")
    parser.add_argument(
        "--profile",
        metavar="STAGE",
        action=_ProfileStage,
        help="record the first measured run of STAGE with py-spy and print where its time went",
    )


class _ProfileStage(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        PROFILE["stage"] = str(values)
        setattr(namespace, self.dest, values)
