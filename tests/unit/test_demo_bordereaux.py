"""The demo's reinsurance expectation: the sample closes every month it covers, nothing is refused."""

from __future__ import annotations

import json

from processors.bordereaux.treaties import load_treaty_book
from processors_dev import demo_bordereaux


def test_the_demo_sample_closes_a_premium_and_a_claims_bordereau_per_treaty_and_month() -> None:
    book = load_treaty_book(demo_bordereaux.treaties_file())
    what = demo_bordereaux.expected(demo_bordereaux.sample(), book)
    kinds: dict[str, set[str]] = {}
    for report_id in what.reports:
        stem, _, kind = report_id.rpartition("-")
        kinds.setdefault(stem, set()).add(kind)
    assert kinds
    assert all(found == {"P", "C"} for found in kinds.values())
    months = {json.loads(body)["period"]["id"] for body in what.reports.values()}
    assert months == {"2024-01", "2024-02"}
    csvs = {name for name in what.day_files if name.endswith(".csv")}
    assert {name.removesuffix(".csv") for name in csvs} == {
        name.removesuffix(".manifest.json") for name in what.day_files - csvs
    }
    assert len(csvs) >= 59  # every day of January and February has its file


def test_the_summary_fails_when_a_report_differs_or_is_missing() -> None:
    what = demo_bordereaux.Expected(
        reports={"BRD-T-2024-01-P": b'{"x":1}', "BRD-T-2024-01-C": b'{"x":2}'}, day_files=frozenset()
    )

    class Received:
        body = json.dumps(
            {
                "report_type": "PREMIUM_BORDEREAUX",
                "reinsurer": {"code": "RE001"},
                "summary": {
                    "total_rows": 1,
                    "settlement": {"currency": "USD", "total_ceded_premium": "1.00"},
                },
            }
        ).encode()

    assert demo_bordereaux.summary(what, {"BRD-T-2024-01-P": Received()}, {}) is False
