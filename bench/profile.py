"""Sampling profiles of one bench stage, with py-spy attached to the bench's own process (or to
the process a bench names for the stage, ``bench.harness.PROFILED_PROCESS``).

``--profile STAGE`` on any bench (see :func:`bench.harness.json_argument`) records the first
measured run of ``STAGE`` — not the warm-up — as collapsed stacks in
``bench/results/profile-<STAGE>.txt`` (every thread, librdkafka's native frames left out) and
prints where the time went: the frames with the most samples of their own (self), and the
project's functions with the most samples under them (inclusive).  ``python -m bench.profile
FILE`` prints the same tables for a file recorded earlier, and ``--diff OLD NEW`` compares two.

py-spy samples from outside the interpreter, so the profiled stage runs at full speed (a
tracing profiler such as cProfile would slow every Python call and move the ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["Profile", "load", "record", "report"]

RESULTS = Path(__file__).resolve().parent / "results"
RATE_HZ = 250
_PROJECT_MARKERS = ("processors/", "processors_dev/", "bench/")


class Profile:
    """Collapsed stacks: one ``frame;frame;…;leaf count`` per line (py-spy's ``raw`` format)."""

    def __init__(self, stacks: Counter[tuple[str, ...]]) -> None:
        self.stacks = stacks
        self.total = sum(stacks.values())

    def self_time(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            if stack:
                out[stack[-1]] += count
        return out

    def inclusive(self, *, project_only: bool = True) -> Counter[str]:
        out: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for frame in set(stack):
                if not project_only or any(m in frame for m in _PROJECT_MARKERS):
                    out[frame] += count
        return out


def load(path: Path) -> Profile:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks[tuple(_short(f) for f in head.split(";"))] += int(count)
    return Profile(stacks)


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``: lines and
    prefixes dropped, so one function is one row however many lines were sampled in it."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    for marker in _PROJECT_MARKERS:
        if f"/{marker}" in path:
            path = marker + path.split(f"/{marker}", 1)[1]
    return f"{name} ({path})" if path else name


def report(profile: Profile, *, top: int = 15, out: TextIO | None = None) -> None:
    stream = out or sys.stdout

    def write(text: str) -> None:
        print(text, file=stream)

    if not profile.total:
        write("  profile: no samples")
        return
    write(f"  profile: {profile.total} samples; self time (top {top}):")
    for frame, count in profile.self_time().most_common(top):
        write(f"    {count / profile.total:6.1%}  {frame}")
    write(f"  project functions, inclusive (top {top}):")
    for frame, count in profile.inclusive().most_common(top):
        write(f"    {count / profile.total:6.1%}  {frame}")


@contextlib.contextmanager
def record(stage: str, *, pid: int | None = None) -> Iterator[Path | None]:
    """py-spy attached to this process (or to process ``pid``) while the block runs; yields the
    output file (None when py-spy is not installed: the stage runs unprofiled and that is said)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("  profile: py-spy is not installed (`./dev` installs the dev extra)", file=sys.stderr)
        yield None
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"profile-{stage}.txt"
    command = [exe, "record", "--pid", str(pid if pid is not None else os.getpid()), "--rate", str(RATE_HZ)]
    command += ["--format", "raw", "--threads", "--output", str(path), "--nonblocking"]
    spy = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # py-spy attaches before the stage starts (no event to await from it)
    try:
        yield path
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not path.exists():
            print(f"  profile: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, nargs="?")
    parser.add_argument("--diff", nargs=2, type=Path, metavar=("OLD", "NEW"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.diff:
        old, new = (load(p) for p in args.diff)
        a, b = old.inclusive(), new.inclusive()
        rows = sorted(set(a) | set(b), key=lambda f: -abs(b[f] / new.total - a[f] / old.total))
        print(f"inclusive share, {args.diff[0].name} → {args.diff[1].name}")
        for frame in rows[: args.top]:
            print(f"  {a[frame] / old.total:6.1%} → {b[frame] / new.total:6.1%}  {frame}")
        return
    if args.file is None:
        parser.error("a profile file, or --diff OLD NEW")
    report(load(args.file), top=args.top)


if __name__ == "__main__":
    main()
