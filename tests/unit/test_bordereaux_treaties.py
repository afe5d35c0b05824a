"""The treaty book: treaties.yaml, periods, attachment, exchange rates, cession shares, errors."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from processors.bordereaux.treaties import (
    TreatyBook,
    TreatyConfigError,
    cession_percentage,
    day_by_id,
    load_treaty_book,
    parse_treaty_book,
    round_c,
)
from processors.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base_book() -> dict[str, Any]:
    return {
        "version": 1,
        "cedant": {"code": "INS001", "name": "Insurance Company Ltd"},
        "exchange_rates": [
            {"from": "EUR", "to": "USD", "effective": date(2024, 1, 1), "rate": "1.0850"},
            {"from": "EUR", "to": "USD", "effective": date(2024, 7, 1), "rate": "1.1020"},
        ],
        "treaties": [
            {
                "treaty_number": "QS-1",
                "reinsurer": {"code": "RE001", "name": "Reinsurance Corp"},
                "type": "quota_share",
                "cession_percentage": "70",
                "lines_of_business": ["PROPERTY"],
                "territories": ["US", "CA"],
                "currencies": ["USD", "EUR"],
                "settlement_currency": "USD",
                "inception": date(2024, 1, 1),
                "expiry": date(2024, 12, 31),
            },
            {
                "treaty_number": "SP-1",
                "reinsurer": {"code": "RE002", "name": "Surplus Re"},
                "type": "surplus",
                "retention": {"amount": "250000", "currency": "USD"},
                "lines": 4,
                "currencies": ["USD", "EUR"],
                "settlement_currency": "USD",
                "inception": "2024-01-01",
                "expiry": "2024-12-31",
                "period": "quarterly",
                "grace": "10d",
            },
        ],
    }


@pytest.fixture
def book() -> TreatyBook:
    return parse_treaty_book(base_book(), source="test")


def test_the_repository_book_loads() -> None:
    book = load_treaty_book(ROOT / "treaties.yaml")
    assert book.cedant_code == "INS001"
    assert [(t.type, t.period_kind) for t in book.treaties] == [
        ("QUOTA_SHARE", "monthly"),
        ("QUOTA_SHARE", "quarterly"),
        ("SURPLUS", "monthly"),
        ("SURPLUS", "monthly"),
    ]
    assert {c for t in book.treaties for c in t.currencies} == {"USD", "EUR", "GBP"}
    assert book.regulatory_start == date(2024, 1, 1)
    assert book.regulatory_grace == timedelta(days=1)
    assert book.unmatched_claim_timeout == timedelta(days=31)
    marine = book.attach("MARINE", None, "GBP", date(2025, 3, 1))
    assert marine is not None
    assert marine.treaty_number == "TRY-2024-004"
    assert book.rate("EUR", "USD", date(2024, 6, 30)) != book.rate("EUR", "USD", date(2024, 7, 1))


def test_defaults(book: TreatyBook) -> None:
    qs = book.treaty("QS-1")
    assert qs.period_kind == "monthly"
    assert qs.grace == timedelta(days=5)
    assert book.treaty("SP-1").grace == timedelta(days=10)
    assert book.regulatory_start == date(2024, 1, 1)
    assert book.regulatory_grace == timedelta(days=1)


def test_monthly_periods(book: TreatyBook) -> None:
    qs = book.treaty("QS-1")
    feb = qs.period_of(date(2024, 2, 29))
    assert (feb.id, feb.start, feb.end, feb.last_day) == (
        "2024-02",
        date(2024, 2, 1),
        date(2024, 3, 1),
        date(2024, 2, 29),
    )
    assert feb.end_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert qs.closes_at(feb) == datetime(2024, 3, 6, tzinfo=UTC)
    assert qs.period_by_id("2024-02") == feb
    assert qs.next_period(qs.period_by_id("2024-12")).id == "2025-01"
    assert qs.first_period().id == "2024-01"
    assert qs.last_in_force_period().id == "2024-12"


def test_quarterly_periods(book: TreatyBook) -> None:
    sp = book.treaty("SP-1")
    q4 = sp.period_of(date(2024, 11, 15))
    assert (q4.id, q4.start, q4.last_day) == ("2024-Q4", date(2024, 10, 1), date(2024, 12, 31))
    assert sp.next_period(q4).id == "2025-Q1"
    assert sp.period_by_id("2024-Q2").start == date(2024, 4, 1)


@pytest.mark.parametrize(
    ("treaty", "pid"), [("QS-1", "2024-13"), ("QS-1", "2024-Q1"), ("SP-1", "2024-05"), ("SP-1", "x")]
)
def test_foreign_or_malformed_period_ids_are_config_errors(book: TreatyBook, treaty: str, pid: str) -> None:
    with pytest.raises(ConfigError, match=rf"{treaty}.*bad period"):
        book.treaty(treaty).period_by_id(pid)


def test_days() -> None:
    assert day_by_id("2024-02-29").end == date(2024, 3, 1)
    with pytest.raises(TreatyConfigError, match="bad day"):
        day_by_id("2024-02-30")


def test_unknown_treaty_names_the_known_ones(book: TreatyBook) -> None:
    with pytest.raises(TreatyConfigError, match="known: QS-1, SP-1"):
        book.treaty("NOPE")


def test_attachment_takes_the_first_treaty_in_file_order(book: TreatyBook) -> None:
    qs = book.attach("PROPERTY", "US", "USD", date(2024, 5, 1))
    assert qs is not None
    assert qs.treaty_number == "QS-1"
    # Not PROPERTY in the US or CA: the second treaty (any line, any territory) takes it.
    other = book.attach("PROPERTY", "GB", "USD", date(2024, 5, 1))
    assert other is not None
    assert other.treaty_number == "SP-1"
    # No territory: only treaties without a territory list accept it.
    none = book.attach("PROPERTY", None, "EUR", date(2024, 5, 1))
    assert none is not None
    assert none.treaty_number == "SP-1"
    assert book.attach("PROPERTY", "US", "GBP", date(2024, 5, 1)) is None  # currency not accepted
    assert book.attach("PROPERTY", "US", "USD", date(2025, 1, 1)) is None  # after expiry
    assert book.attach("PROPERTY", "US", "USD", date(2024, 12, 31)) is not None  # expiry inclusive


def test_rates_use_the_latest_effective_entry(book: TreatyBook) -> None:
    assert book.rate("EUR", "USD", date(2024, 6, 30)) == Decimal("1.0850")
    assert book.rate("EUR", "USD", date(2024, 7, 1)) == Decimal("1.1020")
    assert book.rate("USD", "USD", date(2000, 1, 1)) == 1
    with pytest.raises(TreatyConfigError, match="no exchange rate from USD to EUR"):
        book.rate("USD", "EUR", date(2024, 7, 1))
    with pytest.raises(TreatyConfigError, match="no exchange rate from EUR to USD"):
        book.rate("EUR", "USD", date(2023, 12, 31))


def test_quota_share(book: TreatyBook) -> None:
    share = book.share(book.treaty("QS-1"), Decimal("123.45"), "USD", date(2024, 3, 1))
    assert share == Decimal("0.7")
    assert str(cession_percentage(share)) == "70.00000000"


@pytest.mark.parametrize(
    ("sum_insured", "currency", "inception", "share"),
    [
        ("100000.00", "USD", date(2024, 3, 1), "0"),  # within the retention
        ("250000.00", "USD", date(2024, 3, 1), "0"),  # exactly the retention
        ("500000.00", "USD", date(2024, 3, 1), "0.5000000000"),  # 250k over 500k
        ("750000.00", "USD", date(2024, 3, 1), "0.6666666667"),  # rounded half up at 10 places
        ("1250000.00", "USD", date(2024, 3, 1), "0.8000000000"),  # exactly 4 lines
        ("5000000.00", "USD", date(2024, 3, 1), "0.2000000000"),  # capped at 4 lines = 1,000,000
        # EUR 500,000 at 1.0850 = USD 542,500 (first rate), at 1.1020 = USD 551,000 (second)
        ("500000.00", "EUR", date(2024, 6, 30), "0.5391705069"),
        ("500000.00", "EUR", date(2024, 7, 1), "0.5462794918"),
    ],
)
def test_surplus_share(
    book: TreatyBook, sum_insured: str, currency: str, inception: date, share: str
) -> None:
    got = book.share(book.treaty("SP-1"), Decimal(sum_insured), currency, inception)
    assert got == Decimal(share)
    if got:
        assert got.as_tuple().exponent == -10


def test_surplus_share_uses_the_rounded_converted_sum_insured() -> None:
    data = base_book()
    data["exchange_rates"].append({"from": "GBP", "to": "USD", "effective": "2024-01-01", "rate": "1.333"})
    data["treaties"][1]["currencies"] = ["USD", "EUR", "GBP"]
    book = parse_treaty_book(data, source="test")
    # 300000.01 × 1.333 = 399900.01333 → round_c → 399900.01 (before the division)
    got = book.share(book.treaty("SP-1"), Decimal("300000.01"), "GBP", date(2024, 3, 1))
    assert got == Decimal("0.3748437266")  # 149900.01 / 399900.01 = 0.37484372656...
    # (unrounded, 149900.01333 / 399900.01333 would give 0.3748437318)


def test_round_c_is_half_up_to_minor_units_and_never_negative_zero() -> None:
    assert str(round_c(Decimal("0.005"), "USD")) == "0.01"
    assert str(round_c(Decimal("-0.005"), "USD")) == "-0.01"
    assert str(round_c(Decimal("-0.004"), "USD")) == "0.00"
    assert str(round_c(Decimal("12.5"), "JPY")) == "13"
    assert str(round_c(Decimal("1.0005"), "KWD")) == "1.001"


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("treaties.1.treaty_number", "QS-1", r"treaty 'QS-1': treaty_number: is used by another treaty"),
        ("treaties.0.cession_percentage", 70, r"treaty 'QS-1': cession_percentage: must be a decimal string"),
        ("treaties.0.cession_percentage", "0", r"treaty 'QS-1': cession_percentage: must be greater than 0"),
        ("treaties.0.cession_percentage", "100.5", r"treaty 'QS-1': cession_percentage: .*at most 100"),
        ("treaties.0.cession_percentage", "33.333333333", r"treaty 'QS-1': cession_percentage: .*8 decimal"),
        ("treaties.0.expiry", date(2023, 12, 31), r"treaty 'QS-1': expiry: 2023-12-31 is before"),
        (
            "treaties.0.currencies",
            ["USD", "GBP"],
            r"treaty 'QS-1': currencies: needs an exchange rate from GBP",
        ),
        ("treaties.0.currencies", [], r"treaty 'QS-1': currencies: must list at least one"),
        ("treaties.0.currencies", _DELETE, r"treaty 'QS-1': currencies: is required"),
        ("treaties.0.territories", [False], r"treaty 'QS-1': territories: .*quote codes such as 'NO'"),
        ("treaties.0.territories", ["XX"], r"treaty 'QS-1': territories: 'XX' is not an ISO 3166-1"),
        ("treaties.0.settlement_currency", "XYZ", r"treaty 'QS-1': settlement_currency: 'XYZ' is not"),
        ("treaties.0.grace", "5 days", r"treaty 'QS-1': grace: bad grace"),
        ("treaties.0.period", "weekly", r"treaty 'QS-1': period: must be monthly or quarterly"),
        ("treaties.0.type", "excess", r"treaty 'QS-1': type: must be one of quota_share, surplus"),
        ("treaties.0.lines", 4, r"treaty 'QS-1': lines: is for surplus treaties only"),
        ("treaties.0.colour", "red", r"treaty 'QS-1': treaty: unknown key\(s\) colour"),
        ("treaties.1.lines", 0, r"treaty 'SP-1': lines: must be a whole number ≥ 1"),
        ("treaties.1.lines", True, r"treaty 'SP-1': lines: must be a whole number"),
        ("treaties.1.retention.amount", "0", r"treaty 'SP-1': retention.amount: must be greater than 0"),
        (
            "treaties.1.retention.amount",
            "2.5e5",
            r"treaty 'SP-1': retention.amount: must be a decimal string",
        ),
        (
            "treaties.1.retention.currency",
            "EUR",
            r"treaty 'SP-1': retention.currency: needs an exchange rate from USD to EUR",
        ),
        ("treaties.1.cession_percentage", "10", r"treaty 'SP-1': cession_percentage: is for quota share"),
        ("treaties.1.inception", "2024-13-01", r"treaty 'SP-1': inception: must be a date"),
        ("exchange_rates.0.rate", "-1", r"exchange_rates\[0\].rate: must be a decimal string"),
        ("exchange_rates.1.effective", date(2024, 1, 1), r"exchange_rates\[1\]: a second EUR→USD rate"),
        ("exchange_rates.0.to", "EUR", r"exchange_rates\[0\]: converts EUR to itself"),
        ("cedant.code", "", r"cedant.code: must be a non-empty string"),
        ("treaties.0.reinsurer.code", "RE 001", r"treaty 'QS-1': reinsurer.code: must be 1 to 64 ASCII"),
        ("treaties.0.reinsurer.code", "RÉ001", r"treaty 'QS-1': reinsurer.code: must be 1 to 64 ASCII"),
        ("treaties", [], r"treaties: must be a non-empty list"),
        ("version", 2, r"version: must be 1"),
        ("regulatory", {"grace": "0d"}, r"regulatory.grace: bad regulatory.grace"),
        ("unmatched_claim_timeout", "31", r"unmatched_claim_timeout: bad unmatched_claim_timeout '31'"),
    ],
)
def test_config_errors_name_the_treaty_and_field(path: str, value: Any, message: str) -> None:
    data = copy.deepcopy(base_book())
    _set(data, path, value)
    with pytest.raises(TreatyConfigError, match=message):
        parse_treaty_book(data, source="test.yaml")


def test_optional_settings() -> None:
    data = base_book()
    data["regulatory"] = {"grace": "12h", "start": "2024-03-01"}
    data["unmatched_claim_timeout"] = "10d"
    book = parse_treaty_book(data, source="test")
    assert book.regulatory_grace == timedelta(hours=12)
    assert book.regulatory_start == date(2024, 3, 1)
    assert book.unmatched_claim_timeout == timedelta(days=10)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(TreatyConfigError, match=r"none\.yaml: cannot read"):
        load_treaty_book(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("treaties: [\n", encoding="utf-8")
    with pytest.raises(TreatyConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_treaty_book(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(TreatyConfigError, match="must be a YAML mapping"):
        load_treaty_book(listed)


def test_reinsurer_codes_that_differ_only_in_case_are_refused() -> None:
    data = copy.deepcopy(base_book())
    data["treaties"][0]["reinsurer"]["code"] = "Re001"
    data["treaties"][1]["reinsurer"]["code"] = "RE001"
    # Reports are routed by code without regard to case: both would reach one endpoint.
    with pytest.raises(TreatyConfigError, match=r"'SP-1': reinsurer.code: 'RE001' differs from 'Re001'"):
        parse_treaty_book(data, source="test.yaml")
    data["treaties"][1]["reinsurer"]["code"] = "Re001"  # the same reinsurer on two treaties is fine
    assert parse_treaty_book(data, source="test.yaml").treaties[1].reinsurer_code == "Re001"
