"""Report bytes, regulatory files and the assembler that builds them once per period."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from processors.bordereaux import assembler as assembler_module
from processors.bordereaux.assembler import Assembler, ReportOut
from processors.bordereaux.ledger import canonical_json
from processors.bordereaux.reports import (
    claims_report,
    claims_report_from_wire,
    premium_report,
    premium_report_from_wire,
    regulatory_file,
    regulatory_file_from_wire,
    regulatory_job,
    regulatory_job_from_wire,
)
from processors.bordereaux.rows import REGULATORY_COLUMNS, ClaimMovement, PremiumRow, RegulatoryRow
from processors.bordereaux.treaties import TreatyBook, parse_treaty_book
from processors.errors import DecodeError

BOOK: dict[str, Any] = {
    "cedant": {"code": "INS001", "name": "Insurance Company Ltd"},
    "exchange_rates": [
        {"from": "EUR", "to": "USD", "effective": "2024-01-01", "rate": "1.0850"},
        {"from": "EUR", "to": "USD", "effective": "2024-07-01", "rate": "1.1020"},
    ],
    "treaties": [
        {
            "treaty_number": "QS-1",
            "reinsurer": {"code": "RE001", "name": "Reinsurance Corp"},
            "type": "quota_share",
            "cession_percentage": "70",
            "currencies": ["USD", "EUR"],
            "settlement_currency": "USD",
            "inception": "2024-01-01",
            "expiry": "2024-12-31",
        }
    ],
}


class MemStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return list(self.data.items())


@pytest.fixture(scope="module")
def book() -> TreatyBook:
    return parse_treaty_book(BOOK, source="test")


def premium_row(
    event_id: str, policy: str, currency: str, gross: str, ceded: str, **extra: Any
) -> PremiumRow:
    values: dict[str, Any] = {
        "policy_number": policy,
        "transaction_type": "NEW_BUSINESS",
        "event_id": event_id,
        "transaction_date": date(2024, 6, 10),
        "effective_date": date(2024, 6, 1),
        "inception_date": date(2024, 6, 1),
        "expiry_date": date(2025, 5, 31),
        "currency": currency,
        "gross_premium": Decimal(gross),
        "additional_premium": Decimal("0.00"),
        "return_premium": Decimal("0.00"),
        "ceded_premium": Decimal(ceded),
        "cession_percentage": Decimal("70.00000000"),
        "sum_insured": Decimal("1000.00"),
        "ceded_sum_insured": Decimal("700.00"),
        **extra,
    }
    return PremiumRow(**values)


def movement(
    event_id: str, seq: int, *, claim_id: str = "C1", adjustment_of: str | None = None, **extra: Any
) -> ClaimMovement:
    values: dict[str, Any] = {
        "claim_id": claim_id,
        "policy_number": "PN-1",
        "date_of_loss": date(2024, 6, 2),
        "currency": "USD",
        "status": "OPEN",
        "paid_amount": Decimal("0.00"),
        "paid_to_date": Decimal("0.00"),
        "reserve_amount": Decimal("1000.00"),
        "share": Decimal("0.7"),
        "event_id": event_id,
        "seq": seq,
        "adjustment_of": adjustment_of,
        **extra,
    }
    return ClaimMovement(**values)


def reg_row(event_id: str, day: date, **extra: Any) -> RegulatoryRow:
    values: dict[str, Any] = {
        "record_type": "POLICY",
        "event_id": event_id,
        "event_type": "policy.issued",
        "event_date": day,
        "original_date": None,
        "policy_number": "PN-1",
        "claim_id": None,
        "line_of_business": "PROPERTY",
        "territory": "US",
        "currency": "USD",
        "gross_premium": Decimal("100.00"),
        "sum_insured": Decimal("1000.00"),
        "paid_amount": None,
        "reserve_amount": None,
        **extra,
    }
    return RegulatoryRow(**values)


# --- bordereaux -------------------------------------------------------------------------------------


def test_a_nil_premium_report(book: TreatyBook) -> None:
    treaty = book.treaty("QS-1")
    raw = premium_report(book, treaty, treaty.period_by_id("2024-02"), [])
    assert b" " not in raw.replace(b"Insurance Company Ltd", b"").replace(b"Reinsurance Corp", b"")
    report = json.loads(raw)
    assert list(report) == [
        "report_id",
        "report_type",
        "treaty_number",
        "period",
        "cedant",
        "reinsurer",
        "treaty_type",
        "settlement_currency",
        "policies",
        "summary",
    ]
    assert report["report_id"] == "BRD-QS-1-2024-02-P"
    assert report["period"] == {"id": "2024-02", "from": "2024-02-01", "to": "2024-02-29"}
    assert report["cedant"] == {"code": "INS001", "name": "Insurance Company Ltd"}
    assert report["treaty_type"] == "QUOTA_SHARE"
    assert report["policies"] == []
    summary = report["summary"]
    assert (summary["total_policies"], summary["total_rows"], summary["by_currency"]) == (0, 0, {})
    assert summary["settlement"]["rates"] == {}
    assert summary["settlement"]["rate_date"] == "2024-02-29"
    assert summary["settlement"]["total_ceded_premium"] == "0.00"


@pytest.mark.parametrize(
    ("period", "rate", "eur_converted"), [("2024-06", "1.0850", "3038.00"), ("2024-07", "1.1020", "3085.60")]
)
def test_premium_settlement_uses_the_rate_of_the_period_last_day(
    book: TreatyBook, period: str, rate: str, eur_converted: str
) -> None:
    treaty = book.treaty("QS-1")
    rows = [
        premium_row("e1", "PN-2", "EUR", "2000.00", "1400.00"),
        premium_row("e2", "PN-1", "USD", "1000.00", "700.00"),
        premium_row("e3", "PN-1", "EUR", "2000.00", "1400.00"),
    ]
    report = json.loads(premium_report(book, treaty, treaty.period_by_id(period), rows))
    summary = report["summary"]
    assert (summary["total_policies"], summary["total_rows"]) == (2, 3)
    assert list(summary["by_currency"]) == ["EUR", "USD"]
    assert summary["by_currency"]["EUR"]["total_ceded_premium"] == "2800.00"
    settlement = summary["settlement"]
    assert settlement["rates"] == {"EUR": rate, "USD": "1"}
    # EUR 2,800.00 × rate, rounded, plus USD 700.00
    assert settlement["total_ceded_premium"] == str(Decimal(eur_converted) + Decimal("700.00"))
    assert [r["event_id"] for r in report["policies"]] == ["e2", "e3", "e1"]  # by policy number, date, id


def test_reports_are_byte_identical_whatever_the_row_order(book: TreatyBook) -> None:
    treaty = book.treaty("QS-1")
    period = treaty.period_by_id("2024-06")
    rows = [
        premium_row(f"e{i}", f"PN-{i % 3}", "USD" if i % 2 else "EUR", f"{i}.00", f"{i}.00")
        for i in range(12)
    ]
    moves = [movement(f"c{i}", i, claim_id=f"C{i % 4}") for i in range(12)]
    shuffled_rows, shuffled_moves = rows[:], moves[:]
    random.Random(7).shuffle(shuffled_rows)
    random.Random(8).shuffle(shuffled_moves)
    assert premium_report(book, treaty, period, rows) == premium_report(book, treaty, period, shuffled_rows)
    assert claims_report(book, treaty, period, moves) == claims_report(book, treaty, period, shuffled_moves)


def test_reports_from_the_wire_form_equal_reports_from_rows_whatever_the_key_order(book: TreatyBook) -> None:
    treaty = book.treaty("QS-1")
    period = treaty.period_by_id("2024-06")
    rows = [
        premium_row(f"e{i}", f"PN-{i % 3}", "USD" if i % 2 else "EUR", f"-{i}.00", f"-{i}.00")
        for i in range(7)
    ] + [premium_row("e9", "PN-1", "USD", "5.00", "3.50", adjustment_of="2024-05")]
    moves = [
        movement(
            f"c{i}", i, claim_id=f"C{i % 3}", paid_amount=Decimal(f"{i}.25"), paid_to_date=Decimal("9.75")
        )
        for i in range(7)
    ] + [movement("c9", 0, adjustment_of="2024-04")]
    days = [reg_row(f"e{i}", date(2024, 6, i + 1), paid_amount=Decimal("1.00")) for i in range(5)]

    def partial_form(values: Iterable[Any]) -> list[dict[str, Any]]:  # sorted keys, as in a partial
        return [json.loads(canonical_json(v.to_wire())) for v in values]

    assert premium_report_from_wire(book, treaty, period, partial_form(reversed(rows))) == premium_report(
        book, treaty, period, rows
    )
    assert claims_report_from_wire(book, treaty, period, partial_form(reversed(moves))) == claims_report(
        book, treaty, period, moves
    )
    day = date(2024, 6, 30)
    assert regulatory_job_from_wire(book, day, partial_form(reversed(days))) == regulatory_job(
        book, day, days
    )
    assert regulatory_file_from_wire(book, day, partial_form(days)) == regulatory_file(book, day, days)
    policies = json.loads(premium_report(book, treaty, period, rows))["policies"]
    assert [(r["event_id"], r["adjustment_of"]) for r in policies if r["policy_number"] == "PN-1"] == [
        ("e1", None),
        ("e4", None),
        ("e9", "2024-05"),
    ]


def test_claims_rows_aggregate_a_claims_movements_of_the_period(book: TreatyBook) -> None:
    treaty = book.treaty("QS-1")
    moves = [
        movement(
            "c2",
            1,
            paid_amount=Decimal("300.00"),
            paid_to_date=Decimal("300.00"),
            reserve_amount=Decimal("700.00"),
        ),
        movement("c1", 0),
        movement(
            "c3",
            2,
            status="SETTLED",
            paid_amount=Decimal("500.01"),
            paid_to_date=Decimal("800.01"),
            reserve_amount=Decimal("0.00"),
        ),
        movement("c0", 0, adjustment_of="2024-04", reserve_amount=Decimal("50.00")),
        movement("d1", 0, claim_id="A9", reserve_amount=Decimal("10.00")),
    ]
    report = json.loads(claims_report(book, treaty, treaty.period_by_id("2024-06"), moves))
    assert report["report_id"] == "BRD-QS-1-2024-06-C"
    assert report["report_type"] == "CLAIMS_BORDEREAUX"
    assert [(r["claim_id"], r["adjustment_of"]) for r in report["claims"]] == [
        ("A9", None),
        ("C1", None),
        ("C1", "2024-04"),
    ]
    row = report["claims"][1]
    assert row == {
        "claim_id": "C1",
        "policy_number": "PN-1",
        "date_of_loss": "2024-06-02",
        "currency": "USD",
        "status": "SETTLED",
        "paid_this_period": "800.01",
        "paid_to_date": "800.01",
        "outstanding_reserve": "0.00",
        "incurred": "800.01",
        "cession_percentage": "70.00000000",
        "ceded_paid_this_period": "560.01",
        "ceded_paid_to_date": "560.01",
        "ceded_outstanding_reserve": "0.00",
        "ceded_incurred": "560.01",
        "adjustment_of": None,
    }
    summary = report["summary"]
    assert (summary["total_claims"], summary["total_rows"]) == (2, 3)
    assert summary["by_currency"]["USD"]["total_incurred"] == "860.01"
    assert summary["by_currency"]["USD"]["total_ceded_incurred"] == "602.01"  # 560.01 + 35.00 + 7.00
    assert summary["settlement"]["total_ceded_incurred"] == "602.01"


def test_rows_round_trip_through_their_wire_form() -> None:
    row = premium_row("e1", "PN-1", "USD", "-10.50", "-7.35", adjustment_of="2024-05")
    assert PremiumRow.from_wire(json.loads(json.dumps(row.to_wire()))) == row
    move = movement("c1", 3, share=Decimal("0.1234567891"))
    assert ClaimMovement.from_wire(json.loads(json.dumps(move.to_wire()))) == move
    reg = reg_row("e1", date(2024, 6, 1), original_date=date(2024, 5, 30), territory=None)
    assert RegulatoryRow.from_wire(json.loads(json.dumps(reg.to_wire()))) == reg


# --- regulatory files -----------------------------------------------------------------------------


def test_the_regulatory_csv_and_its_manifest(book: TreatyBook) -> None:
    day = date(2024, 6, 10)
    rows = [
        reg_row("e2", day, policy_number='PN,"2"'),
        reg_row(
            "c1",
            date(2024, 6, 8),
            record_type="CLAIM",
            event_type="claim.paid",
            original_date=date(2024, 6, 8),
            claim_id="C1",
            currency="EUR",
            gross_premium=None,
            sum_insured=None,
            paid_amount=Decimal("250.00"),
            reserve_amount=Decimal("750.00"),
        ),
        reg_row("e1", day, gross_premium=Decimal("-20.00"), territory=None),
    ]
    csv_name, data, manifest_name, manifest_raw = regulatory_file(book, day, rows)
    assert (csv_name, manifest_name) == ("REG_INS001_20240610.csv", "REG_INS001_20240610.manifest.json")
    text = data.decode("utf-8")
    lines = text.split("\r\n")
    assert lines[0] == ",".join(REGULATORY_COLUMNS)
    assert lines[1] == "CLAIM,c1,claim.paid,2024-06-08,2024-06-08,PN-1,C1,PROPERTY,US,EUR,,,250.00,750.00"
    assert lines[2] == "POLICY,e1,policy.issued,2024-06-10,,PN-1,,PROPERTY,,USD,-20.00,1000.00,,"
    assert lines[3] == 'POLICY,e2,policy.issued,2024-06-10,,"PN,""2""",,PROPERTY,US,USD,100.00,1000.00,,'
    assert lines[4] == ""  # every record ends with CRLF
    assert [r[5] for r in csv.reader(io.StringIO(text, newline=""))][3] == 'PN,"2"'
    manifest = json.loads(manifest_raw)
    assert list(manifest) == ["file_name", "sha256", "bytes", "record_count", "control_totals", "report_date"]
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["bytes"] == len(data)
    assert manifest["record_count"] == 3
    assert manifest["control_totals"] == {
        "EUR": {"gross_premium": "0.00", "paid_amount": "250.00", "reserve_amount": "750.00"},
        "USD": {"gross_premium": "80.00", "paid_amount": "0.00", "reserve_amount": "0.00"},
    }
    assert manifest["report_date"] == "2024-06-10"
    assert manifest_raw == json.dumps(manifest, separators=(",", ":")).encode()
    assert regulatory_file(book, day, list(reversed(rows))) == (csv_name, data, manifest_name, manifest_raw)


def test_the_regulatory_file_job(book: TreatyBook) -> None:
    day = date(2024, 6, 10)
    rows = [reg_row("e1", day)]
    csv_name, data, manifest_name, manifest = regulatory_file(book, day, rows)
    raw = regulatory_job(book, day, rows)
    job = json.loads(raw)
    assert list(job) == ["report_date", "file_name", "manifest_name", "csv", "manifest"]
    assert job == {
        "report_date": "2024-06-10",
        "file_name": csv_name,
        "manifest_name": manifest_name,
        "csv": data.decode(),
        "manifest": manifest.decode(),
    }
    assert raw == json.dumps(job, separators=(",", ":"), ensure_ascii=False).encode()


# --- the assembler --------------------------------------------------------------------------------


def bordereau_partial(
    source: int, period: str, *, premium: Iterable[PremiumRow] = (), claims: Iterable[ClaimMovement] = ()
) -> bytes:
    return canonical_json(
        {
            "kind": "bordereau",
            "treaty": "QS-1",
            "period": period,
            "source_partition": source,
            "partitions": 2,
            "premium": [r.to_wire() for r in premium],
            "claims": [m.to_wire() for m in claims],
        }
    )


def regulatory_partial(source: int, day: str, rows: Iterable[RegulatoryRow] = ()) -> bytes:
    return canonical_json(
        {
            "kind": "regulatory",
            "date": day,
            "source_partition": source,
            "partitions": 2,
            "rows": [r.to_wire() for r in rows],
        }
    )


def test_reports_are_built_once_every_partition_has_sent_its_partial(book: TreatyBook) -> None:
    store = MemStore()
    asm = Assembler(book, store)
    first = bordereau_partial(0, "2024-06", premium=[premium_row("e1", "PN-1", "USD", "10.00", "7.00")])
    second = bordereau_partial(1, "2024-06", premium=[premium_row("e2", "PN-2", "USD", "20.00", "14.00")])
    assert asm.on_partial(first) == []
    assert asm.on_partial(first) == []  # the same partition again: still waiting for the other
    out = asm.on_partial(second)
    assert [(r.topic, r.key) for r in out] == [("bordereaux", "QS-1"), ("bordereaux", "QS-1")]
    premium, claims = (json.loads(r.value) for r in out)
    assert premium["report_id"] == "BRD-QS-1-2024-06-P"
    assert [r["event_id"] for r in premium["policies"]] == ["e1", "e2"]
    assert claims["report_id"] == "BRD-QS-1-2024-06-C"
    assert claims["claims"] == []  # a nil claims report inside the in-force window
    assert sorted(store.data) == ["done|QS-1|2024-06"]
    assert asm.on_partial(first) == []  # a replay of a done key is ignored
    assert asm.on_partial(second) == []


def test_partials_kept_in_memory_or_read_back_from_the_store_give_the_same_reports(
    book: TreatyBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = premium_row("e0", "PN-9", "EUR", "1.00", "0.70")
    partials = [
        bordereau_partial(1, "2024-06", premium=[older], claims=[movement("c1", 0)]),
        regulatory_partial(0, "2024-06-10", [reg_row("e1", date(2024, 6, 10))]),
        bordereau_partial(1, "2024-06", premium=[premium_row("e1", "PN-1", "USD", "10.00", "7.00")]),  # again
        regulatory_partial(1, "2024-06-10", [reg_row("e2", date(2024, 6, 10), currency="EUR")]),
        bordereau_partial(0, "2024-06", claims=[movement("c2", 1, paid_amount=Decimal("5.00"))]),
    ]

    def reports() -> list[ReportOut]:
        store = MemStore()
        asm = Assembler(book, store)
        out = [report for raw in partials for report in asm.on_partial(raw)]
        assert sorted(store.data) == ["done|QS-1|2024-06", "done|REG|2024-06-10"]
        return out

    kept = reports()
    monkeypatch.setattr(assembler_module, "_CACHED_ROWS_LIMIT", 0)
    assert reports() == kept
    assert [(r.topic, r.key) for r in kept] == [
        ("regulatory", "2024-06-10"),
        ("bordereaux", "QS-1"),
        ("bordereaux", "QS-1"),
    ]
    premium = json.loads(kept[1].value)
    assert [r["event_id"] for r in premium["policies"]] == ["e1"]  # the partial sent again replaced the first


def test_after_the_in_force_window_only_reports_with_rows(book: TreatyBook) -> None:
    asm = Assembler(book, MemStore())
    asm.on_partial(bordereau_partial(0, "2025-01"))
    assert asm.on_partial(bordereau_partial(1, "2025-01")) == []
    asm.on_partial(bordereau_partial(0, "2025-02", claims=[movement("c1", 0, adjustment_of="2024-12")]))
    [out] = asm.on_partial(bordereau_partial(1, "2025-02"))
    assert json.loads(out.value)["report_id"] == "BRD-QS-1-2025-02-C"


def test_regulatory_days_without_rows_have_no_file(book: TreatyBook) -> None:
    asm = Assembler(book, MemStore())
    asm.on_partial(regulatory_partial(1, "2024-06-10"))
    assert asm.on_partial(regulatory_partial(0, "2024-06-10")) == []
    rows = [reg_row("e2", date(2024, 6, 11)), reg_row("e1", date(2024, 6, 11))]
    asm.on_partial(regulatory_partial(1, "2024-06-11", rows[:1]))
    [out] = asm.on_partial(regulatory_partial(0, "2024-06-11", rows[1:]))
    assert out == ReportOut("regulatory", "2024-06-11", regulatory_job(book, date(2024, 6, 11), rows))


def test_an_assembler_rebuilt_from_its_store_completes_the_period(book: TreatyBook) -> None:
    store = MemStore()
    Assembler(book, store).on_partial(bordereau_partial(1, "2024-06"))
    out = Assembler(book, store).on_partial(bordereau_partial(0, "2024-06"))
    assert len(out) == 2
    assert Assembler(book, store).on_partial(bordereau_partial(1, "2024-06")) == []  # done survives too


@pytest.mark.parametrize(
    "raw",
    [
        b"nope",
        b'{"kind": "other"}',
        canonical_json({"kind": "regulatory", "date": "2024-06-10", "source_partition": 2, "partitions": 2}),
    ],
)
def test_an_undecodable_partial_is_a_decode_error(book: TreatyBook, raw: bytes) -> None:
    with pytest.raises(DecodeError, match="undecodable bordereaux partial"):
        Assembler(book, MemStore()).on_partial(raw)


def test_the_claims_of_a_period_keep_their_processing_order(book: TreatyBook) -> None:
    treaty = book.treaty("QS-1")
    period = treaty.period_by_id("2024-06")
    first = movement("z-first", 0, status="OPEN")
    last = movement("a-last", 1, status="CLOSED")
    report = json.loads(claims_report(book, treaty, period, [last, first]))
    assert report["claims"][0]["status"] == "CLOSED"  # the last by seq, not by event id
    swapped = json.loads(claims_report(book, treaty, period, [replace(first, seq=1), replace(last, seq=0)]))
    assert swapped["claims"][0]["status"] == "OPEN"
