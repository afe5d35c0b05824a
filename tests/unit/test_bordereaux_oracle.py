"""The batch bordereaux calculation and the stream generator, on hand-worked examples.

Every expected number here is worked out by hand from docs/bordereaux.md and the rates of
tests/fixtures/treaties_test.yaml (EUR→USD 1.0850 until 2024-07-01, GBP→USD 1.2710 until
2024-06-15).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.bordereaux_oracle import (
    CLAIM_TOPIC,
    POLICY_TOPIC,
    Expected,
    Published,
    canonical_json,
    check_manifest,
    claim_event,
    closing_tail,
    compare,
    compare_regulatory,
    expected,
    generate,
    load_book,
    partition_for,
    policy_event,
    watermarks,
)

BOOK = Path(__file__).resolve().parents[1] / "fixtures" / "treaties_test.yaml"
CLOSE_Q1 = datetime(2024, 4, 12, tzinfo=UTC)  # March + 5d and Q1 + 10d are past; April is open


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def d(text: str) -> Decimal:
    return Decimal(text)


def run(*published: Published, close_at: datetime = CLOSE_Q1) -> Expected:
    return expected([*published, *closing_tail(at=close_at)], BOOK)


def issued(
    policy_id: str,
    when: str,
    *,
    line: str = "PROPERTY",
    territory: str | None = "US",
    currency: str = "USD",
    gross: str = "1000.00",
    insured: str = "100000.00",
    inception: date | None = None,
) -> Published:
    start = inception or at(when).date()
    return policy_event(
        "policy.issued",
        occurred_at=at(when),
        policy_id=policy_id,
        line_of_business=line,
        territory=territory,
        inception=start,
        expiry=start + timedelta(days=364),
        currency=currency,
        gross_premium=gross,
        sum_insured=insured,
    )


def changed(
    event_type: str, of: Published, when: str, change: str, gross: str, *, effective: date | None = None
) -> Published:
    data: Any = of.event.data
    return policy_event(
        event_type,
        occurred_at=at(when),
        policy_id=data.policy_id,
        line_of_business=data.line_of_business,
        territory=data.territory,
        inception=data.inception_date,
        expiry=data.expiry_date,
        currency=data.currency,
        gross_premium=gross,
        sum_insured=data.sum_insured,
        effective_date=effective or at(when).date(),
        premium_change=change,
    )


def on_partition(partition: int, prefix: str) -> list[str]:
    """Keys that hash to ``partition`` (for events that must share a source partition)."""
    return [k for k in (f"{prefix}-{i}" for i in range(400)) if partition_for(k, 6) == partition]


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    found = report.get("policies", report.get("claims"))
    assert isinstance(found, list)
    return found


# --- treaty book ----------------------------------------------------------------------------


def test_the_book_is_parsed_with_its_defaults() -> None:
    book = load_book(BOOK)
    numbers = [t.number for t in book.treaties]
    assert numbers == ["TRY-2024-001", "TRY-2024-002", "TRY-2024-003", "TRY-2024-004", "TRY-2024-005"]
    surplus_property, marine = book.treaties[2], book.treaties[3]
    assert surplus_property.grace == timedelta(days=5)  # not given: the default
    assert not marine.quarterly  # not given: monthly
    assert book.treaties[1].quarterly
    assert book.treaties[1].grace == timedelta(days=10)
    assert book.regulatory_grace == timedelta(days=1)
    assert book.unmatched_claim_timeout == timedelta(days=3650)
    assert book.rate("EUR", "USD", date(2024, 6, 30)) == d("1.0850")
    assert book.rate("EUR", "USD", date(2024, 7, 1)) == d("1.1020")
    assert book.rate("GBP", "GBP", date(2024, 7, 1)) == 1
    pairs = {(a, b) for a in ("USD", "EUR", "GBP") for b in ("USD", "EUR", "GBP") if a != b}
    assert all(len(book.rates[pair]) >= 2 for pair in pairs)


# --- premium rows ---------------------------------------------------------------------------


def test_quota_share_row_and_settlement_in_the_treaty_currency() -> None:
    usd = issued("POL-QS-1", "2024-03-05T10:00:00", gross="1234.57", insured="500000.00")
    eur = issued("POL-QS-2", "2024-03-06T10:00:00", territory="CA", currency="EUR", insured="200000.00")
    result = run(usd, eur)

    report = result.reports["BRD-TRY-2024-001-2024-03-P"]
    assert report["period"] == {"id": "2024-03", "from": "2024-03-01", "to": "2024-03-31"}
    assert report["treaty_type"] == "QUOTA_SHARE"
    first = rows(report)[0]
    assert first == {
        "policy_number": "INS-QS-1",
        "transaction_type": "NEW_BUSINESS",
        "event_id": str(usd.event.event_id),
        "transaction_date": "2024-03-05",
        "effective_date": "2024-03-05",
        "inception_date": "2024-03-05",
        "expiry_date": "2025-03-04",
        "currency": "USD",
        "gross_premium": d("1234.57"),
        "additional_premium": d("0"),
        "return_premium": d("0"),
        "ceded_premium": d("864.20"),  # 864.199
        "cession_percentage": "70.00000000",
        "sum_insured": d("500000.00"),
        "ceded_sum_insured": d("350000.00"),
        "adjustment_of": None,
    }
    summary = report["summary"]
    assert (summary["total_policies"], summary["total_rows"]) == (2, 2)
    assert summary["by_currency"]["EUR"]["total_ceded_premium"] == d("700.00")
    settlement = summary["settlement"]
    assert settlement["rate_date"] == "2024-03-31"
    assert settlement["rates"] == {"EUR": d("1.0850"), "USD": 1}
    assert settlement["total_gross_premium"] == d("2319.57")  # 1234.57 + 1085.00
    assert settlement["total_ceded_premium"] == d("1623.70")  # 864.20 + 759.50
    assert settlement["total_ceded_sum_insured"] == d("501900.00")  # 350000 + 151900


def test_nil_reports_exist_for_closed_periods_in_the_window_only() -> None:
    result = run(issued("POL-QS-1", "2024-03-05T10:00:00"))
    january = result.reports["BRD-TRY-2024-001-2024-01-P"]
    assert rows(january) == []
    assert january["summary"]["total_rows"] == 0
    assert january["summary"]["settlement"]["total_ceded_premium"] == 0
    assert "BRD-TRY-2024-001-2024-04-P" not in result.reports  # April is not closed
    assert "BRD-TRY-2024-002-2024-Q1-C" in result.reports  # Q1 + 10 days <= 2024-04-12
    # 5 treaties: 4 monthly x 3 closed months + 1 quarterly, premium and claims each
    assert len(result.reports) == 2 * (4 * 3 + 1)


def test_motor_goes_to_the_quarterly_treaty_and_liability_to_none() -> None:
    motor = issued("POL-M-1", "2024-02-01T09:00:00", line="MOTOR", territory="DE", currency="GBP")
    liability = issued("POL-L-1", "2024-02-01T09:30:00", line="LIABILITY")
    result = run(motor, liability)
    (row,) = rows(result.reports["BRD-TRY-2024-002-2024-Q1-P"])
    assert (row["cession_percentage"], row["ceded_premium"]) == ("50.00000000", d("500.00"))
    all_rows = [r["policy_number"] for report in result.reports.values() for r in rows(report)]
    assert all_rows == ["INS-M-1"]
    regulatory = result.regulatory["2024-02-01"][1].decode()
    assert "INS-L-1,,LIABILITY,US,USD,1000.00,100000.00,," in regulatory


def test_first_treaty_in_file_order_takes_the_term() -> None:
    # PROPERTY GB in GBP: the surplus treaty (3rd) comes before the GBP quota share (5th);
    # PROPERTY US in GBP: not the USD/EUR quota share (1st), so the GBP quota share (5th).
    gb = issued("POL-GB", "2024-02-01T09:00:00", territory="GB", currency="GBP", insured="100000.00")
    us = issued("POL-US", "2024-02-01T09:00:00", territory="US", currency="GBP", gross="1000.05")
    result = run(gb, us)
    assert [r["policy_number"] for r in rows(result.reports["BRD-TRY-2024-003-2024-02-P"])] == ["INS-GB"]
    (row,) = rows(result.reports["BRD-TRY-2024-005-2024-02-P"])
    assert row["policy_number"] == "INS-US"
    assert row["ceded_premium"] == d("250.01")  # 250.0125


@pytest.mark.parametrize(
    ("insured", "gross", "percent", "ceded", "ceded_insured"),
    [
        # 600000 GBP x 1.2710 = 762600.00 USD; (762600 - 250000) / 762600 = 0.6721741411
        ("600000.00", "7500.00", "67.21741411", "5041.31", "403304.48"),
        # 150000 GBP = 190650.00 USD <= retention: nothing ceded
        ("150000.00", "7500.00", "0.00000000", "0.00", "0.00"),
        # 2000000 GBP = 2542000.00 USD: 2292000 over, capped at 4 lines = 1000000; / 2542000
        ("2000000.00", "24000.00", "39.33910307", "9441.38", "786782.06"),
    ],
)
def test_surplus_share(insured: str, gross: str, percent: str, ceded: str, ceded_insured: str) -> None:
    policy = issued(
        "POL-SP", "2024-02-10T12:00:00", territory="GB", currency="GBP", gross=gross, insured=insured
    )
    result = run(policy)
    report = result.reports["BRD-TRY-2024-003-2024-02-P"]
    assert report["treaty_type"] == "SURPLUS"
    assert report["settlement_currency"] == "GBP"
    (row,) = rows(report)
    assert row["cession_percentage"] == percent
    assert row["ceded_premium"] == d(ceded)
    assert row["ceded_sum_insured"] == d(ceded_insured)


def test_surplus_at_exactly_the_retention_cedes_nothing() -> None:
    policy = issued("POL-FR", "2024-02-10T12:00:00", territory="FR", insured="250000.00")
    (row,) = rows(run(policy).reports["BRD-TRY-2024-003-2024-02-P"])
    assert (row["cession_percentage"], row["ceded_premium"]) == ("0.00000000", d("0.00"))


def test_cancellation_is_a_return_premium_at_the_original_share() -> None:
    policy = issued("POL-C", "2024-02-01T08:00:00", gross="1200.00", insured="300000.00")
    cancel = changed("policy.cancelled", policy, "2024-03-15T08:00:00", "-600.35", "599.65")
    endorse = changed("policy.endorsed", policy, "2024-03-01T08:00:00", "100.00", "1300.00")
    result = run(policy, endorse, cancel)
    assert rows(result.reports["BRD-TRY-2024-001-2024-02-P"])[0]["transaction_type"] == "NEW_BUSINESS"
    up, down = rows(result.reports["BRD-TRY-2024-001-2024-03-P"])
    assert (up["transaction_type"], up["additional_premium"], up["return_premium"]) == (
        "ENDORSEMENT",
        d("100.00"),
        d("0"),
    )
    assert up["sum_insured"] == d("300000.00")
    assert down["transaction_type"] == "CANCELLATION"
    assert down["effective_date"] == "2024-03-15"
    assert down["gross_premium"] == d("-600.35")
    assert (down["additional_premium"], down["return_premium"]) == (d("0"), d("-600.35"))
    assert down["ceded_premium"] == d("-420.25")  # -420.245, half away from zero
    assert (down["sum_insured"], down["ceded_sum_insured"]) == (d("0"), d("0"))
    summary = result.reports["BRD-TRY-2024-001-2024-03-P"]["summary"]
    assert (summary["total_policies"], summary["total_rows"]) == (1, 2)
    assert summary["by_currency"]["USD"]["total_return_premium"] == d("-600.35")
    assert summary["by_currency"]["USD"]["total_ceded_premium"] == d("-350.25")  # 70.00 - 420.25


# --- late events ----------------------------------------------------------------------------


def test_a_late_event_is_an_adjustment_in_the_period_of_its_watermark() -> None:
    a, b = on_partition(0, "POL-LATE")[:2]
    first = issued(a, "2024-01-10T09:00:00", gross="1000.00")
    later = issued(b, "2024-03-10T09:00:00")  # moves the partition's watermark to March 10
    endorse = changed("policy.endorsed", first, "2024-01-20T09:00:00", "100.00", "1100.00")
    result = run(first, later, endorse)

    assert [r["policy_number"] for r in rows(result.reports["BRD-TRY-2024-001-2024-01-P"])] == [
        first.event.data.policy_number  # type: ignore[attr-defined]
    ]
    adjustment = next(r for r in rows(result.reports["BRD-TRY-2024-001-2024-03-P"]) if r["adjustment_of"])
    assert adjustment["adjustment_of"] == "2024-01"
    assert adjustment["transaction_date"] == "2024-01-20"
    assert adjustment["ceded_premium"] == d("70.00")
    # regulatory: day 2024-01-20 is late too (W >= 2024-01-21 + 1d): it goes to March 10
    march_10 = result.regulatory["2024-03-10"][1].decode().split("\r\n")
    assert any(
        f",{endorse.event.event_id},policy.endorsed,2024-01-20,2024-01-20," in line for line in march_10
    )
    assert "2024-01-20" not in result.regulatory  # no file: its only row went to March 10


@pytest.mark.parametrize(
    ("watermark", "period"),
    [("2024-02-06T00:00:00", "2024-02"), ("2024-02-05T23:59:59", "2024-01")],
)
def test_late_means_at_or_past_end_plus_grace(watermark: str, period: str) -> None:
    a, b = on_partition(3, f"POL-EDGE-{watermark[-2:]}")[:2]
    first = issued(a, "2024-01-10T09:00:00")
    mover = issued(b, watermark)
    endorse = changed("policy.endorsed", first, "2024-01-25T09:00:00", "10.00", "1010.00")
    result = run(first, mover, endorse)
    (row,) = [
        r
        for report in result.reports.values()
        for r in rows(report)
        if r["event_id"] == str(endorse.event.event_id)
    ]
    assert row["adjustment_of"] == ("2024-01" if period == "2024-02" else None)
    in_period = rows(result.reports[f"BRD-TRY-2024-001-{period}-P"])
    assert row in in_period


def test_watermark_is_the_latest_occurred_at_read_before_on_the_same_partition() -> None:
    a, b, c = on_partition(2, "POL-WM")[:3]
    other = on_partition(4, "POL-WM")[0]
    stream = [
        issued(a, "2024-02-01T08:00:00"),
        issued(other, "2024-05-01T08:00:00"),  # another partition: no effect
        issued(b, "2024-02-03T08:00:00"),
        issued(c, "2024-02-02T08:00:00"),  # older: the watermark stays
        issued(c + "-X", "2024-02-04T08:00:00"),
    ]
    stream[-1] = Published(stream[-1].topic, 2, stream[-1].key, stream[-1].event)
    assert watermarks(stream) == [
        None,
        None,
        at("2024-02-01T08:00:00"),
        at("2024-02-03T08:00:00"),
        at("2024-02-03T08:00:00"),
    ]


def test_duplicates_are_counted_once() -> None:
    policy = issued("POL-DUP", "2024-02-01T08:00:00")
    endorse = changed("policy.endorsed", policy, "2024-02-03T08:00:00", "5.00", "1005.00")
    once = run(policy, endorse)
    twice = run(policy, endorse, policy, endorse)
    assert twice.reports == once.reports
    assert twice.regulatory == once.regulatory
    assert twice.stats["duplicates"] == 2


# --- claims ---------------------------------------------------------------------------------


def claim(
    claim_id: str, policy: Published, event_type: str, when: str, *, reserve: str, paid: str, to_date: str
) -> Published:
    data: Any = policy.event.data
    return claim_event(
        event_type,
        occurred_at=at(when),
        claim_id=claim_id,
        policy_id=data.policy_id,
        date_of_loss=data.inception_date + timedelta(days=2),
        currency=data.currency,
        reserve_amount=reserve,
        paid_amount=paid,
        paid_to_date=to_date,
    )


def test_claim_row_incurred_and_ceded_incurred() -> None:
    policy = issued("POL-CL", "2024-02-20T08:00:00", inception=date(2024, 3, 1))
    reported = claim(
        "CLM-1", policy, "claim.reported", "2024-03-05T08:00:00", reserve="10000.10", paid="0", to_date="0"
    )
    paid = claim(
        "CLM-1",
        policy,
        "claim.paid",
        "2024-03-20T08:00:00",
        reserve="6000.05",
        paid="4000.05",
        to_date="4000.05",
    )
    april = claim(
        "CLM-1",
        policy,
        "claim.reserved",
        "2024-04-02T08:00:00",
        reserve="7000.00",
        paid="0",
        to_date="4000.05",
    )
    result = run(policy, reported, paid, april)
    report = result.reports["BRD-TRY-2024-001-2024-03-C"]
    assert report["report_type"] == "CLAIMS_BORDEREAUX"
    (row,) = rows(report)
    assert row == {
        "claim_id": "CLM-1",
        "policy_number": "INS-CL",
        "date_of_loss": "2024-03-03",
        "currency": "USD",
        "status": "OPEN",
        "paid_this_period": d("4000.05"),
        "paid_to_date": d("4000.05"),
        "outstanding_reserve": d("6000.05"),
        "incurred": d("10000.10"),
        "cession_percentage": "70.00000000",
        "ceded_paid_this_period": d("2800.04"),  # 2800.035
        "ceded_paid_to_date": d("2800.04"),
        "ceded_outstanding_reserve": d("4200.04"),  # 4200.035
        "ceded_incurred": d("7000.08"),  # the sum of the two, not 70 % of 10000.10 (7000.07)
        "adjustment_of": None,
    }
    assert report["summary"]["total_claims"] == 1
    assert report["summary"]["settlement"]["total_ceded_incurred"] == d("7000.08")


def test_a_claim_before_its_policy_takes_the_later_watermark() -> None:
    other, mine = on_partition(1, "POL-BACK")[:2]
    mover = issued(other, "2024-02-09T08:00:00")
    # backdated: issued on 2024-02-10 for a term from 2024-01-15; the claim came first
    policy = issued(mine, "2024-02-10T08:00:00", inception=date(2024, 1, 15))
    early = claim(
        "CLM-EARLY", policy, "claim.reported", "2024-01-20T08:00:00", reserve="500.00", paid="0", to_date="0"
    )
    for order in ([early, mover, policy], [mover, policy, early]):
        result = run(*order)
        (row,) = rows(result.reports["BRD-TRY-2024-001-2024-02-C"])
        assert (row["claim_id"], row["adjustment_of"]) == ("CLM-EARLY", "2024-01")
        assert rows(result.reports["BRD-TRY-2024-001-2024-01-C"]) == []
        feb_9 = result.regulatory["2024-02-09"][1].decode()
        assert f",{early.event.event_id},claim.reported,2024-01-20,2024-01-20,INS-" in feb_9


def test_a_claim_without_a_term_waits_and_is_not_counted() -> None:
    policy = issued("POL-W", "2024-02-01T08:00:00")
    orphan = claim_event(
        "claim.reported",
        occurred_at=at("2024-02-02T08:00:00"),
        claim_id="CLM-ORPHAN",
        policy_id="POL-NOWHERE",
        date_of_loss=date(2024, 2, 1),
        currency="USD",
        reserve_amount="100.00",
        paid_amount="0",
        paid_to_date="0",
    )
    result = run(policy, orphan)
    assert result.stats["waiting_claims"] == 1 + 6  # and the closing tail's six
    assert "2024-02-02" not in result.regulatory  # its only event was not counted
    assert all(b"CLM-ORPHAN" not in body for _, body, _, _ in result.regulatory.values())
    assert all(rows(report) == [] for rid, report in result.reports.items() if rid.endswith("-C"))


# --- regulatory files -----------------------------------------------------------------------


def test_regulatory_file_and_manifest() -> None:
    policy = issued(
        "POL-R", "2024-02-01T08:00:00", gross="1000.50", insured="250000.00", territory=None, line="MARINE"
    )
    cancel = changed("policy.cancelled", policy, "2024-02-01T18:00:00", "-1000.50", "0.00")
    loss = claim(
        "CLM-R", policy, "claim.paid", "2024-02-01T12:00:00", reserve="10.00", paid="20.00", to_date="20.00"
    )
    result = run(policy, cancel, loss)
    csv_name, body, manifest_name, manifest = result.regulatory["2024-02-01"]
    assert (csv_name, manifest_name) == ("REG_INS001_20240201.csv", "REG_INS001_20240201.manifest.json")
    lines = body.decode().split("\r\n")
    assert lines[0] == (
        "record_type,event_id,event_type,event_date,original_date,policy_number,claim_id,"
        "line_of_business,territory,currency,gross_premium,sum_insured,paid_amount,reserve_amount"
    )
    by_id = {line.split(",")[1]: line for line in lines[1:-1]}
    assert lines[-1] == ""  # every row ends with CRLF
    assert by_id[str(policy.event.event_id)].endswith(",INS-R,,MARINE,,USD,1000.50,250000.00,,")
    assert by_id[str(cancel.event.event_id)].endswith(",INS-R,,MARINE,,USD,-1000.50,0.00,,")
    assert by_id[str(loss.event.event_id)].endswith(",INS-R,CLM-R,MARINE,,USD,,,20.00,10.00")
    assert [line.split(",")[1] for line in lines[1:-1]] == sorted(by_id)
    assert manifest == {
        "file_name": "REG_INS001_20240201.csv",
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "record_count": 3,
        "control_totals": {
            "USD": {"gross_premium": d("0.00"), "paid_amount": d("20.00"), "reserve_amount": d("10.00")}
        },
        "report_date": "2024-02-01",
    }
    assert check_manifest(body, manifest) == []


def test_check_manifest_finds_what_does_not_match() -> None:
    policy = issued("POL-R", "2024-02-01T08:00:00", gross="1000.50")
    _, body, _, manifest = run(policy).regulatory["2024-02-01"]
    tampered = body.replace(b"1000.50", b"1000.51")
    problems = check_manifest(tampered, manifest)
    assert any(p.startswith("sha256:") for p in problems)
    assert any("control_totals.USD.gross_premium: expected 1000.51, actual 1000.50" in p for p in problems)
    shorter = body[: -len(b"\r\n")]
    assert any(p.startswith("bytes:") for p in check_manifest(shorter, manifest))
    as_strings = json.loads(canonical_json(manifest))
    assert check_manifest(body, as_strings) == []
    reordered = {k: as_strings[k] for k in reversed(list(as_strings))}
    assert any("order" in p for p in check_manifest(body, reordered))


# --- comparison -----------------------------------------------------------------------------


def actual_of(result: Expected) -> dict[str, bytes]:
    return {report_id: canonical_json(report) for report_id, report in result.reports.items()}


def test_compare_accepts_the_expected_reports_and_names_each_difference() -> None:
    policy = issued("POL-QS-1", "2024-03-05T10:00:00", gross="1234.57")
    result = run(policy)
    actual = actual_of(result)
    assert compare(actual, result) == []

    rid = "BRD-TRY-2024-001-2024-03-P"
    report = json.loads(actual[rid])
    report["policies"][0]["ceded_premium"] = "864.19"
    report["summary"]["settlement"]["total_ceded_premium"] = "864.21"
    actual[rid] = canonical_json(report)
    del actual["BRD-TRY-2024-001-2024-01-C"]
    actual["BRD-TRY-2024-001-2024-04-P"] = actual["BRD-TRY-2024-001-2024-02-P"]
    problems = compare(actual, result)
    assert (
        f"{rid} row INS-QS-1/{policy.event.event_id}.ceded_premium: expected 864.20, actual 864.19"
        in problems
    )
    assert f"{rid}.summary.settlement.total_ceded_premium: expected 864.20, actual 864.21" in problems
    assert "BRD-TRY-2024-001-2024-01-C: missing (expected a report with 0 rows)" in problems
    assert any(p.startswith("BRD-TRY-2024-001-2024-04-P: not expected") for p in problems)


def test_compare_reads_amounts_as_decimals_and_checks_the_form() -> None:
    result = run(issued("POL-QS-1", "2024-03-05T10:00:00", gross="1234.50"))
    rid = "BRD-TRY-2024-001-2024-03-P"
    report = json.loads(canonical_json(result.reports[rid]))
    report["policies"][0]["gross_premium"] = "1234.5"  # the same amount
    by_currency = report["summary"]["by_currency"]
    report["summary"]["by_currency"] = [{"currency": c, **totals} for c, totals in by_currency.items()]
    assert compare({**actual_of(result), rid: canonical_json(report)}, result) == []

    report["policies"][0]["gross_premium"] = 1234.5  # a JSON number is not a decimal string
    spaced = json.dumps(report).encode()
    problems = compare({**actual_of(result), rid: spaced}, result)
    assert f"{rid}: not canonical JSON (insignificant whitespace or escapes)" in problems
    assert any("gross_premium: expected 1234.50, actual 1234.5 (not a decimal string)" in p for p in problems)


def test_compare_regulatory_jobs() -> None:
    result = run(issued("POL-R", "2024-02-01T08:00:00"))
    jobs: dict[str, bytes] = {}
    for day, (csv_name, body, manifest_name, manifest) in result.regulatory.items():
        job = {
            "report_date": day,
            "file_name": csv_name,
            "manifest_name": manifest_name,
            "csv": body.decode(),
            "manifest": canonical_json(manifest).decode(),
        }
        jobs[day] = canonical_json(job)
    assert compare_regulatory(jobs, result) == []
    job = json.loads(jobs["2024-02-01"])
    job["csv"] = job["csv"].replace("1000.00", "1000.01")
    problems = compare_regulatory({**jobs, "2024-02-01": canonical_json(job)}, result)
    assert any(p.endswith("gross_premium: expected 1000.00, actual 1000.01") for p in problems)
    assert any(p.startswith("REG 2024-02-01 manifest: sha256") for p in problems)


# --- generator ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> list[Published]:
    return generate(11, 6000)


@pytest.fixture(scope="module")
def stream_expected(stream: list[Published]) -> Expected:
    return expected(stream, BOOK)


@pytest.mark.parametrize("n", [12, 13, 100, 997, 6000])
def test_generate_gives_exactly_n_events(n: int) -> None:
    assert len(generate(5, n)) == n


def test_generate_refuses_fewer_events_than_its_closing_tail() -> None:
    with pytest.raises(ValueError, match="at least 12"):
        generate(5, 11)


def test_generate_is_deterministic() -> None:
    assert generate(3, 800) == generate(3, 800)
    assert generate(3, 800) != generate(4, 800)


def test_every_key_stays_on_its_partition(stream: list[Published]) -> None:
    partitions: dict[tuple[str, str], set[int]] = defaultdict(set)
    for pub in stream:
        assert pub.key == pub.event.subject
        assert pub.topic == (POLICY_TOPIC if pub.event.event_type.startswith("policy.") else CLAIM_TOPIC)
        assert pub.partition == partition_for(pub.key, 6)
        partitions[(pub.topic, pub.key)].add(pub.partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert {(p.topic, p.partition) for p in stream} == {
        (t, n) for t in (POLICY_TOPIC, CLAIM_TOPIC) for n in range(6)
    }


def test_the_stream_has_what_the_bordereaux_need(stream: list[Published]) -> None:
    types = Counter(p.event.event_type for p in stream)
    assert set(types) == {
        "policy.issued", "policy.renewed", "policy.endorsed", "policy.cancelled",
        "claim.reported", "claim.reserved", "claim.paid", "claim.settled", "claim.closed",
    }  # fmt: skip
    policies = [p.event.data for p in stream if p.event.event_type == "policy.issued"]
    lines = {(x.line_of_business, x.territory) for x in policies}  # type: ignore[attr-defined]
    assert {("PROPERTY", t) for t in ("US", "CA", "GB", "FR")} <= lines
    assert {"MOTOR", "MARINE", "LIABILITY"} <= {line for line, _ in lines}
    assert ("MARINE", None) in lines
    assert {x.currency for x in policies} == {"USD", "EUR", "GBP"}  # type: ignore[attr-defined]
    changes = [p.event.data.premium_change for p in stream if p.event.event_type == "policy.endorsed"]  # type: ignore[attr-defined]
    assert min(changes) < 0 < max(changes)
    assert all(p.event.data.premium_change <= 0 for p in stream if p.event.event_type == "policy.cancelled")  # type: ignore[attr-defined]
    insured = [x.sum_insured for x in policies if x.line_of_business == "PROPERTY"]  # type: ignore[attr-defined]
    assert min(insured) < 250_000 < 1_250_000 < max(insured)  # below retention, above the 4-line cap
    issued_at: dict[str, int] = {}
    currency = {x.policy_id: x.currency for x in policies}  # type: ignore[attr-defined]
    claims_first = 0
    for i, pub in enumerate(stream):
        data: Any = pub.event.data
        if pub.event.event_type == "policy.issued":
            issued_at.setdefault(data.policy_id, i)
        if pub.topic == CLAIM_TOPIC:
            assert data.paid_amount <= data.paid_to_date
            assert currency.get(data.policy_id, data.currency) == data.currency
            claims_first += data.policy_id in currency and data.policy_id not in issued_at
    assert claims_first > 0  # claims reported before their (backdated) policy was issued


def test_the_stream_has_duplicates_and_late_events(
    stream: list[Published], stream_expected: Expected
) -> None:
    ids = Counter(p.event.event_id for p in stream)
    duplicates = sum(n - 1 for n in ids.values())
    assert duplicates == 60  # 1 %
    monthly_late = 0
    for pub, w in zip(stream, watermarks(stream), strict=True):
        day = pub.event.occurred_at.date()
        month_end = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
        monthly_late += w is not None and w >= month_end + timedelta(days=5)
    assert monthly_late >= 60  # ~2 %, each late for any monthly treaty period
    assert stream_expected.stats["late_rows"] >= monthly_late // 2  # (not all of them are ceded)
    assert stream_expected.stats["late_regulatory"] >= monthly_late
    assert stream_expected.stats["duplicates"] == 60


def test_every_2024_period_closes_and_nothing_later(stream_expected: Expected) -> None:
    assert stream_expected.low_watermark is not None
    assert stream_expected.low_watermark >= datetime(2025, 1, 11, tzinfo=UTC)
    ids = set(stream_expected.reports)
    for number in ("TRY-2024-001", "TRY-2024-003", "TRY-2024-004", "TRY-2024-005"):
        for month in range(1, 13):
            assert {f"BRD-{number}-2024-{month:02d}-P", f"BRD-{number}-2024-{month:02d}-C"} <= ids
    assert {f"BRD-TRY-2024-002-2024-Q{q}-{k}" for q in range(1, 5) for k in "PC"} <= ids
    assert len(ids) == 2 * (4 * 12 + 4)
    assert "2025-01-01" <= max(stream_expected.regulatory) <= "2025-01-13"
    busy = [r for rid, r in stream_expected.reports.items() if rid.endswith("-P") and "-005-" not in rid]
    assert all(rows(r) for r in busy)  # (the GBP quota share for US/CA property is a rare case)


def test_the_calculation_does_not_depend_on_how_partitions_interleave(
    stream: list[Published], stream_expected: Expected
) -> None:
    by_source: dict[tuple[str, int], list[Published]] = defaultdict(list)
    for pub in stream:
        by_source[(pub.topic, pub.partition)].append(pub)
    queues = [by_source[s] for s in sorted(by_source, reverse=True)]
    interleaved: list[Published] = []
    step = 0
    while any(queues):  # claims first, policies last, in uneven bursts
        queue = queues[step % len(queues)]
        interleaved += queue[: 1 + step % 7]
        del queue[: 1 + step % 7]
        step += 1
    assert interleaved != stream
    again = expected(interleaved, BOOK)
    assert again.reports == stream_expected.reports
    assert again.regulatory == stream_expected.regulatory


def test_compare_is_clean_on_a_generated_stream(stream_expected: Expected) -> None:
    assert compare(actual_of(stream_expected), stream_expected) == []
    for _day, (_, body, _, manifest) in stream_expected.regulatory.items():
        assert check_manifest(body, manifest) == []
