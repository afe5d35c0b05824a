"""The bytes of the bordereaux and of the regulatory day files (docs/bordereaux.md).

Every function sorts its input itself: the same rows in any order give byte-identical output.
The ``*_from_wire`` functions take the rows' wire form (``to_wire()``, or as they come in a
partial) and are what the assembler uses; the others take row objects.
Reports are UTF-8 JSON with keys in the order the doc lists and no insignificant whitespace;
amounts are decimal strings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from processors.bordereaux.rows import (
    CLAIM_ROW_FIELDS,
    PREMIUM_ROW_FIELDS,
    REGULATORY_COLUMNS,
    ClaimMovement,
    PremiumRow,
    RegulatoryRow,
    claim_row_from_wire,
    dec,
)
from processors.bordereaux.treaties import (
    WIDE_CONTEXT,
    Period,
    Treaty,
    TreatyBook,
    dec_mul,
    dec_sum,
    round_c,
)

__all__ = [
    "CLAIM_TOTALS",
    "PREMIUM_TOTALS",
    "claims_report",
    "claims_report_from_wire",
    "compact_json",
    "premium_report",
    "premium_report_from_wire",
    "regulatory_file",
    "regulatory_file_from_wire",
    "regulatory_file_names",
    "regulatory_job",
    "regulatory_job_from_wire",
    "report_csv",
    "report_id",
    "report_rows",
]

PREMIUM_TOTALS = (
    ("total_gross_premium", "gross_premium"),
    ("total_additional_premium", "additional_premium"),
    ("total_return_premium", "return_premium"),
    ("total_ceded_premium", "ceded_premium"),
    ("total_sum_insured", "sum_insured"),
    ("total_ceded_sum_insured", "ceded_sum_insured"),
)
"""Premium summary totals, in report order, and the row field each sums."""

CLAIM_TOTALS = (
    ("total_paid_this_period", "paid_this_period"),
    ("total_paid_to_date", "paid_to_date"),
    ("total_outstanding_reserve", "outstanding_reserve"),
    ("total_incurred", "incurred"),
    ("total_ceded_paid_this_period", "ceded_paid_this_period"),
    ("total_ceded_paid_to_date", "ceded_paid_to_date"),
    ("total_ceded_outstanding_reserve", "ceded_outstanding_reserve"),
    ("total_ceded_incurred", "ceded_incurred"),
)
"""Claims summary totals, in report order, and the row field each sums."""

_PREMIUM_REQUIRED = tuple(name for name in PREMIUM_ROW_FIELDS if name != "adjustment_of")
_ZERO = Decimal(0)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(value: Any) -> bytes:
    """UTF-8 JSON in the given key order, separators ``,`` and ``:``."""
    return _COMPACT.encode(value).encode("utf-8")


def report_id(treaty: Treaty, period: Period, kind: str) -> str:
    """``BRD-<treaty_number>-<period id>-P`` (premium) or ``-C`` (claims)."""
    return f"BRD-{treaty.treaty_number}-{period.id}-{kind}"


def _head(book: TreatyBook, treaty: Treaty, period: Period, kind: str) -> dict[str, Any]:
    return {
        "report_id": report_id(treaty, period, kind),
        "report_type": "PREMIUM_BORDEREAUX" if kind == "P" else "CLAIMS_BORDEREAUX",
        "treaty_number": treaty.treaty_number,
        "period": {"id": period.id, "from": period.start.isoformat(), "to": period.last_day.isoformat()},
        "cedant": {"code": book.cedant_code, "name": book.cedant_name},
        "reinsurer": {"code": treaty.reinsurer_code, "name": treaty.reinsurer_name},
        "treaty_type": treaty.type,
        "settlement_currency": treaty.settlement_currency,
    }


def _sums(rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> dict[str, list[Decimal]]:
    """Per currency (sorted), the exact sum of each of ``fields`` over ``rows``."""
    sums: dict[str, list[Decimal]] = {}
    add = WIDE_CONTEXT.add
    for row in rows:
        ccy = row["currency"]
        acc = sums.get(ccy)
        if acc is None:
            acc = sums[ccy] = [_ZERO] * len(fields)
        for index, name in enumerate(fields):
            value = row[name]
            if value is not None:
                acc[index] = add(acc[index], Decimal(value))
    return dict(sorted(sums.items()))


def _totals(
    book: TreatyBook,
    treaty: Treaty,
    period: Period,
    rows: Sequence[Mapping[str, Any]],
    totals: Sequence[tuple[str, str]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``by_currency`` and ``settlement`` of a summary from rows in their wire form."""
    by_currency: dict[str, dict[str, str]] = {}
    sums: dict[str, dict[str, Decimal]] = {}
    for ccy, exact in _sums(rows, [field for _, field in totals]).items():
        sums[ccy] = {name: round_c(total, ccy) for (name, _), total in zip(totals, exact, strict=True)}
        by_currency[ccy] = {name: dec(value) for name, value in sums[ccy].items()}
    settle = treaty.settlement_currency
    rate_date = period.last_day
    rates = {ccy: book.rate(ccy, settle, rate_date) for ccy in sums}
    settlement: dict[str, Any] = {
        "currency": settle,
        "rate_date": rate_date.isoformat(),
        "rates": {ccy: dec(rate) for ccy, rate in rates.items()},
    }
    for name, _ in totals:
        converted = dec_sum(round_c(dec_mul(sums[ccy][name], rates[ccy]), settle) for ccy in sums)
        settlement[name] = dec(round_c(converted, settle))
    return by_currency, settlement


def premium_report(book: TreatyBook, treaty: Treaty, period: Period, rows: Iterable[PremiumRow]) -> bytes:
    """The premium bordereau of ``treaty`` for ``period`` (rows in any order)."""
    return premium_report_from_wire(book, treaty, period, [row.to_wire() for row in rows])


def _premium_order(row: Mapping[str, Any]) -> tuple[str, str, str]:
    # ISO dates sort as the dates do.
    return (row["policy_number"], row["transaction_date"], row["event_id"])


def premium_report_from_wire(
    book: TreatyBook, treaty: Treaty, period: Period, rows: Iterable[Mapping[str, Any]]
) -> bytes:
    """:func:`premium_report` from the rows' wire form (as in a partial, any key order)."""
    wire = [
        {**{name: row[name] for name in _PREMIUM_REQUIRED}, "adjustment_of": row.get("adjustment_of")}
        for row in sorted(rows, key=_premium_order)
    ]
    by_currency, settlement = _totals(book, treaty, period, wire, PREMIUM_TOTALS)
    report = _head(book, treaty, period, "P")
    report["policies"] = wire
    report["summary"] = {
        "total_policies": len({row["policy_number"] for row in wire}),
        "total_rows": len(wire),
        "by_currency": by_currency,
        "settlement": settlement,
    }
    return compact_json(report)


def claims_report(
    book: TreatyBook, treaty: Treaty, period: Period, movements: Iterable[ClaimMovement]
) -> bytes:
    """The claims bordereau of ``treaty`` for ``period``: one row per (claim, ``adjustment_of``).

    A claim's movements are aggregated in processing order (``seq``); rows are sorted by
    claim id, the row with ``adjustment_of`` null first, then adjustments by period id.
    """
    return claims_report_from_wire(book, treaty, period, [m.to_wire() for m in movements])


def _claim_order(m: Mapping[str, Any]) -> tuple[str, bool, str, int, str]:
    adjustment_of = m.get("adjustment_of")
    seq = m["seq"]
    if type(seq) is not int:
        raise ValueError("seq must be an integer")
    return (m["claim_id"], adjustment_of is not None, adjustment_of or "", seq, m["event_id"])


def claims_report_from_wire(
    book: TreatyBook, treaty: Treaty, period: Period, movements: Iterable[Mapping[str, Any]]
) -> bytes:
    """:func:`claims_report` from the movements' wire form (as in a partial)."""
    groups: dict[tuple[str, bool, str], list[Mapping[str, Any]]] = {}
    for move in sorted(movements, key=_claim_order):
        adjustment_of = move.get("adjustment_of")
        groups.setdefault((move["claim_id"], adjustment_of is not None, adjustment_of or ""), []).append(move)
    wire = [claim_row_from_wire(group) for group in groups.values()]
    by_currency, settlement = _totals(book, treaty, period, wire, CLAIM_TOTALS)
    report = _head(book, treaty, period, "C")
    report["claims"] = wire
    report["summary"] = {
        "total_claims": len({row["claim_id"] for row in wire}),
        "total_rows": len(wire),
        "by_currency": by_currency,
        "settlement": settlement,
    }
    return compact_json(report)


# --- a bordereau's rows as a download -------------------------------------------------------

_REPORT_COLUMNS = {"PREMIUM_BORDEREAUX": PREMIUM_ROW_FIELDS, "CLAIMS_BORDEREAUX": CLAIM_ROW_FIELDS}


def _claim_row_order(row: Mapping[str, Any]) -> tuple[str, bool, str]:
    adjustment_of = row.get("adjustment_of")
    return (row["claim_id"], adjustment_of is not None, adjustment_of or "")


def report_rows(report_type: str, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A bordereau's rows (``policies`` or ``claims``, in their wire form) in the order the
    report writes them: premium rows by policy, transaction date and event; claims rows by
    claim, the row without ``adjustment_of`` first.  ``report_type`` is ``PREMIUM_BORDEREAUX``
    or ``CLAIMS_BORDEREAUX``."""
    if report_type == "PREMIUM_BORDEREAUX":
        return sorted(rows, key=_premium_order)
    if report_type == "CLAIMS_BORDEREAUX":
        return sorted(rows, key=_claim_row_order)
    raise ValueError(f"not a bordereau type: {report_type!r}")


def report_csv(report_type: str, rows: Iterable[Mapping[str, Any]]) -> bytes:
    """A bordereau's rows as CSV: the same RFC 4180 format as the regulatory files
    (:func:`_csv`), one column per row field in report order (:data:`PREMIUM_ROW_FIELDS` or
    :data:`CLAIM_ROW_FIELDS`), rows as given (see :func:`report_rows`)."""
    columns = _REPORT_COLUMNS.get(report_type)
    if columns is None:
        raise ValueError(f"not a bordereau type: {report_type!r}")
    return _csv(columns, rows)


def _csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """RFC 4180 CSV: ``\\r\\n`` line ends, UTF-8, a header row, minimal quoting, an absent or
    null field empty."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerows(["" if (value := row.get(name)) is None else value for name in columns] for row in rows)
    return text.getvalue().encode("utf-8")


# --- regulatory files -----------------------------------------------------------------------


def regulatory_file_names(book: TreatyBook, day: date) -> tuple[str, str]:
    """``REG_<cedant>_<YYYYMMDD>.csv`` and its ``.manifest.json``."""
    stem = f"REG_{book.cedant_code}_{day.strftime('%Y%m%d')}"
    return f"{stem}.csv", f"{stem}.manifest.json"


_CONTROL_TOTALS = ("gross_premium", "paid_amount", "reserve_amount")


def _control_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        ccy: {name: dec(round_c(total, ccy)) for name, total in zip(_CONTROL_TOTALS, exact, strict=True)}
        for ccy, exact in _sums(rows, _CONTROL_TOTALS).items()
    }


def regulatory_file(
    book: TreatyBook, day: date, rows: Iterable[RegulatoryRow]
) -> tuple[str, bytes, str, bytes]:
    """The day's CSV and manifest: ``(csv name, csv bytes, manifest name, manifest bytes)``.

    The CSV is RFC 4180 (``\\r\\n`` line ends, UTF-8, a header row), rows sorted by
    (``event_date``, ``event_id``).  The manifest is compact JSON, keys in the doc's order.
    """
    return regulatory_file_from_wire(book, day, [row.to_wire() for row in rows])


def _regulatory_order(row: Mapping[str, Any]) -> tuple[str, str]:
    return (row["event_date"], row["event_id"])


def regulatory_file_from_wire(
    book: TreatyBook, day: date, rows: Iterable[Mapping[str, Any]]
) -> tuple[str, bytes, str, bytes]:
    """:func:`regulatory_file` from the rows' wire form (as in a partial)."""
    ordered = sorted(rows, key=_regulatory_order)
    data = _csv(REGULATORY_COLUMNS, ordered)
    csv_name, manifest_name = regulatory_file_names(book, day)
    manifest = {
        "file_name": csv_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "record_count": len(ordered),
        "control_totals": _control_totals(ordered),
        "report_date": day.isoformat(),
    }
    return csv_name, data, manifest_name, compact_json(manifest)


def regulatory_job(book: TreatyBook, day: date, rows: Iterable[RegulatoryRow]) -> bytes:
    """The file job for ``integrations.regulatory.files`` (key ``YYYY-MM-DD``)."""
    return regulatory_job_from_wire(book, day, [row.to_wire() for row in rows])


def regulatory_job_from_wire(book: TreatyBook, day: date, rows: Iterable[Mapping[str, Any]]) -> bytes:
    """:func:`regulatory_job` from the rows' wire form (as in a partial)."""
    csv_name, data, manifest_name, manifest = regulatory_file_from_wire(book, day, rows)
    return compact_json(
        {
            "report_date": day.isoformat(),
            "file_name": csv_name,
            "manifest_name": manifest_name,
            "csv": data.decode("utf-8"),
            "manifest": manifest.decode("utf-8"),
        }
    )
