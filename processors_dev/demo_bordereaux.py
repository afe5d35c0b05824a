"""The reinsurance part of ``processors demo``: policy and claim events → bordereaux and day files.

Sample policy and claim events for the shipped ``treaties.yaml`` go to
``insurance.policy.events`` and ``insurance.claim.events``; the exactly-once ``bordereaux`` app
closes each month into a premium and a claims bordereau per treaty, ``bordereaux-delivery``
posts them to the sandbox reinsurer, and ``regulatory`` uploads each day's CSV and manifest to
the sandbox regulator over SFTP.  What to expect is computed first by running the same
topology in memory (:class:`~processors.streams.driver.MemoryDriver`), so the demo can say
whether every report and file arrived, and whether each report the reinsurer got is, byte for
byte, the one the in-memory run produced.
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.bordereaux.topology import BordereauxTopics, build_stages
from processors.bordereaux.treaties import TreatyBook
from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.streams.driver import MemoryDriver
from processors_dev.bordereaux_samples import bordereaux_stream

__all__ = ["DEMO_MONTHS", "DEMO_POLICIES", "Expected", "expected", "sample", "summary", "treaties_file"]

DEMO_POLICIES = 60
DEMO_MONTHS = 2
_PARTITIONS = 6

_GREEN, _RED, _DIM, _RESET = "\033[32m", "\033[31m", "\033[2m", "\033[0m"


def treaties_file() -> Path:
    """``./treaties.yaml``, else the one in the checkout this package runs from."""
    here = Path("treaties.yaml")
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[1] / "treaties.yaml"


def sample() -> list[Event]:
    return list(bordereaux_stream(DEMO_POLICIES, months=DEMO_MONTHS))


@dataclass(frozen=True)
class Expected:
    reports: Mapping[str, bytes]
    """Report id → the bordereau's bytes, as the in-memory run closed it."""
    day_files: frozenset[str]
    """Names of the regulatory CSVs and manifests."""


def expected(events: Sequence[Event], book: TreatyBook) -> Expected:
    """The reports and day files of ``events``: the same topology, run in memory."""
    codec = Codec(LocalSchemaIds())
    topics = BordereauxTopics()
    counts = {
        topics.policy_events: _PARTITIONS,
        topics.claim_events: _PARTITIONS,
        topics.by_policy: _PARTITIONS,
        topics.partials: _PARTITIONS,
    }
    stages = build_stages(book=book, codec=codec, topics=topics, partition_counts=counts)
    driver = MemoryDriver(stages, {**counts, topics.bordereaux: 1, topics.regulatory_files: 1})
    records = []
    for event in events:
        topic = topics.policy_events if event.event_type.startswith("policy.") else topics.claim_events
        value, headers = codec.encode(event, ContentType.JSON)
        key = event.subject.encode()
        # Any partitioning gives the same reports here: each key's events stay in order.
        records.append((topic, zlib.crc32(key) % _PARTITIONS, key, value, headers))
    driver.publish(records)
    driver.run()
    reports: dict[str, bytes] = {}
    for m in driver.output(topics.bordereaux):
        value = m.value() or b"{}"
        reports[json.loads(value)["report_id"]] = value
    files: set[str] = set()
    for job in driver.output(topics.regulatory_files):
        body = json.loads(job.value() or b"{}")
        files.update((body["file_name"], body["manifest_name"]))
    return Expected(reports, frozenset(files))


async def wait_for(
    what: Expected,
    reinsurer_reports: Callable[[], Mapping[str, Any]],
    regulator_files: Callable[[], Mapping[str, bytes]],
    *,
    timeout_s: float = 90.0,
    every_s: float = 0.25,
) -> bool:
    """Until the reinsurer holds every report and the regulator every file (or ``timeout_s``)."""
    for _ in range(int(timeout_s / every_s)):
        if set(what.reports) <= set(reinsurer_reports()) and what.day_files <= set(regulator_files()):
            return True
        await asyncio.sleep(every_s)  # the sandbox servers have no event to await
    return False


def summary(
    what: Expected, reinsurer_reports: Mapping[str, Any], regulator_files: Mapping[str, bytes]
) -> bool:
    """Print the reports and files that arrived; True if all did, each report as expected."""
    print("\nreinsurance bordereaux (exactly-once; delivered idempotently on report_id)")
    ok = True
    for report_id in sorted(what.reports):
        received = reinsurer_reports.get(report_id)
        if received is None:
            print(_c(_RED, f"  ✖ {report_id:<30} not received"))
            ok = False
            continue
        body: bytes = received.body
        report = json.loads(body)
        settlement = report["summary"]["settlement"]
        rows = report["summary"]["total_rows"]
        premium = report["report_type"] == "PREMIUM_BORDEREAUX"
        label, total = ("ceded premium", "total_ceded_premium")
        if not premium:
            label, total = ("ceded incurred", "total_ceded_incurred")
        figure = f"{label:<14} {settlement[total]:>12} {settlement['currency']}"
        same = body == what.reports[report_id]
        ok = ok and same
        mark = _c(_GREEN, "✔") if same else _c(_RED, "✖ differs from the in-memory run")
        print(f"  {mark} {report_id:<30} {report['reinsurer']['code']}  {rows:>4} rows  {figure}")
    arrived = sorted(name for name in what.day_files if name in regulator_files)
    manifests = [name for name in arrived if name.endswith(".manifest.json")]
    records = sum(json.loads(regulator_files[name])["record_count"] for name in manifests)
    print("\nregulatory day files (SFTP; CSV first, manifest last, each read back and checked)")
    print(f"  {len(arrived)} of {len(what.day_files)} files: {len(manifests)} days, {records} records")
    if manifests:
        print(_c(_DIM, f"  {manifests[0]} … {manifests[-1]}"))
    return ok and len(arrived) == len(what.day_files)


def _c(color: str, text: str) -> str:
    return f"{color}{text}{_RESET}" if sys.stdout.isatty() else text
