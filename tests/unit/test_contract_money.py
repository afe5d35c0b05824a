"""Money: exact decimals with the currency's minor units, never floats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from processors.contract import (
    MINOR_UNITS,
    CurrencyCode,
    EventData,
    Money,
    NonNegativeMoney,
    PositiveMoney,
    quantize_money,
)


class Charge(EventData):
    aggregate_field = "charge_id"

    charge_id: str
    currency: CurrencyCode
    amount: PositiveMoney
    balance: Money
    fee: NonNegativeMoney | None = None


def charge(amount: object, currency: str = "USD", **extra: object) -> Charge:
    return Charge.model_validate(
        {"charge_id": "C-1", "currency": currency, "amount": amount, "balance": "0", **extra}
    )


def only_error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[tuple[int | str, ...], str]:
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


REQUIRED_CURRENCIES = [
    "USD", "EUR", "GBP", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK",
    "PLN", "CZK", "HUF", "ZAR", "INR", "CNY", "HKD", "SGD", "BRL", "MXN",
    "JPY", "KRW", "ISK", "BHD", "KWD", "OMR", "JOD", "TND", "CLF",
]  # fmt: skip


@pytest.mark.parametrize("code", REQUIRED_CURRENCIES)
def test_minor_units_table_covers_the_required_currencies(code: str) -> None:
    assert code in MINOR_UNITS


@pytest.mark.parametrize(
    ("currency", "minor"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("ISK", 0), ("BHD", 3), ("KWD", 3), ("CLF", 4)],
)
def test_minor_units_follow_iso_4217(currency: str, minor: int) -> None:
    assert MINOR_UNITS[currency] == minor


@pytest.mark.parametrize(
    ("raw", "currency", "expected"),
    [
        ("1185.50", "USD", "1185.50"),
        ("1185.5", "USD", "1185.50"),
        ("1185", "USD", "1185.00"),
        (Decimal("1185.5000"), "USD", "1185.50"),  # what the Avro decimal (scale 4) decodes to
        ("1185.50000", "USD", "1185.50"),  # trailing zeros carry no value
        ("100", "JPY", "100"),
        ("100.00", "JPY", "100"),
        ("1.234", "BHD", "1.234"),
        ("0.0001", "CLF", "0.0001"),
        (Decimal("0.0000"), "USD", "0.00"),
        ("999999999999999999.99", "USD", "999999999999999999.99"),
    ],
)
def test_amounts_are_quantized_to_the_currency_minor_units(raw: object, currency: str, expected: str) -> None:
    amount = charge("1", currency, balance=raw).balance
    assert isinstance(amount, Decimal)
    assert str(amount) == expected


def test_more_decimal_places_than_the_currency_allows_is_refused_with_a_readable_message() -> None:
    with pytest.raises(ValidationError) as exc:
        charge("1185.12345")
    assert only_error(exc) == (("amount",), "1185.12345 has 5 decimal places; USD allows at most 2")


@pytest.mark.parametrize(
    ("raw", "currency"), [("100.5", "JPY"), ("1.2345", "BHD"), ("0.00001", "CLF"), ("0.001", "EUR")]
)
def test_no_rounding_ever(raw: str, currency: str) -> None:
    with pytest.raises(ValidationError) as exc:
        charge(raw, currency)
    loc, message = only_error(exc)
    assert loc == ("amount",)
    assert f"{currency} allows at most {MINOR_UNITS[currency]}" in message


@pytest.mark.parametrize("raw", [1185.5, 1185, True, 0.1, None, [], {"value": "1"}])
def test_floats_ints_and_bools_are_not_money(raw: object) -> None:
    with pytest.raises(ValidationError) as exc:
        charge(raw)
    assert only_error(exc) == (("amount",), "money must be a decimal string")


@pytest.mark.parametrize(
    "raw", ["1e3", "1_000", " 1.00", "1.00 ", "", "1.", ".5", "+1", "1,00", "NaN", "Infinity", "0x10"]
)
def test_only_plain_decimal_strings_are_accepted(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        charge(raw)
    loc, message = only_error(exc)
    assert loc == ("amount",)
    assert message.startswith("money must be a decimal string")


@pytest.mark.parametrize("raw", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN")])
def test_non_finite_decimals_are_refused(raw: Decimal) -> None:
    with pytest.raises(ValidationError) as exc:
        charge(raw)
    assert only_error(exc) == (("amount",), "money must be a finite number (not NaN or Infinity)")


def test_amounts_must_fit_the_avro_decimal() -> None:
    with pytest.raises(ValidationError) as exc:
        charge("1000000000000000000")
    assert only_error(exc) == (("amount",), "money must be below 10^18")


@pytest.mark.parametrize(
    ("raw", "message"), [("0", "must be greater than 0, got 0"), ("-5.5", "must be greater than 0, got -5.5")]
)
def test_positive_money(raw: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        charge(raw)
    assert only_error(exc) == (("amount",), message)


def test_non_negative_money_allows_zero_and_refuses_negatives() -> None:
    assert charge("1", fee="0").fee == Decimal("0.00")
    with pytest.raises(ValidationError) as exc:
        charge("1", fee="-0.01")
    assert only_error(exc) == (("fee",), "must not be negative, got -0.01")


def test_signed_money_keeps_its_sign_and_normalises_negative_zero() -> None:
    assert str(charge("1", balance="-7113").balance) == "-7113.00"
    assert str(charge("1", balance="-0.00").balance) == "0.00"


def test_optional_money_is_checked_against_the_currency_too() -> None:
    assert charge("1", "JPY", fee=None).fee is None
    with pytest.raises(ValidationError) as exc:
        charge("1", "JPY", fee="0.5")
    assert only_error(exc) == (("fee",), "0.5 has 1 decimal places; JPY allows at most 0")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("XYZ", "unknown currency 'XYZ'"),
        ("usd", "currency must be an ISO 4217 code of 3 upper-case letters"),
        ("US", "currency must be an ISO 4217 code of 3 upper-case letters"),
        ("USDT", "currency must be an ISO 4217 code of 3 upper-case letters"),
    ],
)
def test_currency_codes_are_validated(code: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        charge("1", code)
    loc, text = only_error(exc)  # the amounts are not also reported: they depend on the currency
    assert (loc, text) == (("currency",), message)


def test_json_carries_money_as_strings_and_python_as_decimal() -> None:
    value = charge("1185.5", balance="-3")
    assert value.model_dump_json() == (
        '{"charge_id":"C-1","currency":"USD","amount":"1185.50","balance":"-3.00","fee":null}'
    )
    assert value.model_dump()["amount"] == Decimal("1185.50")
    assert Charge.model_validate_json(value.model_dump_json()) == value


def test_json_numbers_are_not_money() -> None:
    with pytest.raises(ValidationError) as exc:
        Charge.model_validate_json('{"charge_id":"C-1","currency":"USD","amount":1185.5,"balance":"0"}')
    assert only_error(exc) == (("amount",), "money must be a decimal string")


def test_quantize_money_is_usable_on_its_own() -> None:
    assert str(quantize_money(Decimal("12.5000"), "EUR")) == "12.50"
    with pytest.raises(PydanticCustomError) as exc:
        quantize_money(Decimal("1185.12345"), "USD")
    assert exc.value.message() == "1185.12345 has 5 decimal places; USD allows at most 2"
    with pytest.raises(PydanticCustomError, match="unknown currency 'XYZ'"):
        quantize_money(Decimal(1), "XYZ")


def test_payload_models_must_declare_currency_before_money() -> None:
    with pytest.raises(TypeError, match="must follow a 'currency' field"):

        class Backwards(EventData):
            amount: Money
            currency: CurrencyCode

    with pytest.raises(TypeError, match="must follow a 'currency' field"):

        class NoCurrency(EventData):
            amount: Money


def test_payload_models_know_their_money_fields() -> None:
    assert Charge.money_fields == ("amount", "balance", "fee")
