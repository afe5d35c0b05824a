"""Exact money for the event contract.

Amounts are :class:`decimal.Decimal`, never ``float``.  On the wire they are decimal strings
in JSON (``"1185.50"``) and the Avro ``decimal`` logical type (precision 22, scale 4).

Every amount travels with an ISO 4217 currency.  An amount may carry at most the currency's
minor units of decimal places (trailing zeros do not count, so the Avro-decoded
``Decimal("1185.5000")`` is a valid USD amount) and is then quantized to exactly that many
places (``Decimal("1185.50")``).  Payload models get this through :data:`Money` fields that
follow a ``currency`` field: the check reads the already validated currency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Context, Decimal
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, PlainSerializer, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

__all__ = [
    "MINOR_UNITS",
    "MONEY_INTEGER_DIGITS",
    "CurrencyCode",
    "Money",
    "NonNegativeMoney",
    "PositiveMoney",
    "check_currency",
    "quantize_money",
]

MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        # two decimal places
        "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2,
        "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "ZAR": 2, "INR": 2, "CNY": 2, "HKD": 2, "SGD": 2,
        "BRL": 2, "MXN": 2, "AED": 2, "SAR": 2, "QAR": 2, "ILS": 2, "TRY": 2, "THB": 2, "MYR": 2,
        "IDR": 2, "PHP": 2, "TWD": 2, "RON": 2, "BGN": 2, "KES": 2, "NGN": 2, "EGP": 2, "MAD": 2,
        "COP": 2, "PEN": 2, "ARS": 2, "UAH": 2, "RSD": 2, "GEL": 2, "KZT": 2, "PKR": 2, "BDT": 2,
        "LKR": 2, "GHS": 2, "TTD": 2, "JMD": 2, "BBD": 2, "BMD": 2, "BSD": 2, "KYD": 2, "XCD": 2,
        # no decimal places
        "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "PYG": 0, "UGX": 0, "RWF": 0, "XAF": 0,
        "XOF": 0, "XPF": 0, "KMF": 0, "GNF": 0, "DJF": 0, "VUV": 0, "BIF": 0,
        # three decimal places
        "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "IQD": 3, "LYD": 3,
        # four decimal places (units of account)
        "CLF": 4, "UYW": 4,
    }
)  # fmt: skip
"""ISO 4217 minor units per currency code.  A currency not listed here is refused."""

MONEY_INTEGER_DIGITS = 18
"""Amounts must be below 10**18: the Avro decimal has precision 22 and scale 4."""

_MONEY_LIMIT = Decimal(10) ** MONEY_INTEGER_DIGITS
_MONEY_STRING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_CURRENCY_SHAPE = re.compile(r"[A-Z]{3}")
# Wide enough that quantizing any in-range amount is exact whatever the thread's context is.
_CONTEXT = Context(prec=MONEY_INTEGER_DIGITS + 20)
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in set(MINOR_UNITS.values())}


def _parse_money(value: Any) -> Decimal:
    # bool is an int; both are refused along with float: JSON numbers are not money.
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        if _MONEY_STRING.fullmatch(value) is None:
            raise PydanticCustomError(
                "money_format",
                'money must be a decimal string such as "1185.50" (digits, optional sign and point)',
            )
        amount = Decimal(value)
    else:
        raise PydanticCustomError("money_type", "money must be a decimal string")
    if not amount.is_finite():
        raise PydanticCustomError("money_finite", "money must be a finite number (not NaN or Infinity)")
    if abs(amount) >= _MONEY_LIMIT:
        raise PydanticCustomError(
            "money_range", "money must be below 10^{digits}", {"digits": MONEY_INTEGER_DIGITS}
        )
    if amount.is_zero() and amount.is_signed():
        amount = amount.copy_abs()
    return amount


def _decimal_places(amount: Decimal) -> int:
    """Decimal places that carry a value: trailing zeros do not count."""
    _sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite amounts only
    if exponent >= 0 or amount.is_zero():
        return 0
    places = -exponent
    for digit in reversed(digits):
        if digit != 0 or places == 0:
            break
        places -= 1
    return places


def quantize_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` with exactly ``currency``'s minor units of decimal places.

    Raises ``ValueError`` (a pydantic custom error) if the amount has more decimal places
    than the currency allows (``1185.12345 has 5 decimal places; USD allows at most 2``) or
    if the currency is not known.  Nothing is ever rounded.
    """
    minor = MINOR_UNITS.get(currency)
    if minor is None:
        raise PydanticCustomError("currency_unknown", "unknown currency '{currency}'", {"currency": currency})
    places = _decimal_places(amount)
    if places > minor:
        raise PydanticCustomError(
            "money_places",
            "{amount} has {places} decimal places; {currency} allows at most {minor}",
            {"amount": format(amount, "f"), "places": places, "currency": currency, "minor": minor},
        )
    return amount.quantize(_QUANTUM[minor], context=_CONTEXT)


def check_currency(code: str) -> str:
    """``code`` if it is an ISO 4217 code in :data:`MINOR_UNITS`."""
    if _CURRENCY_SHAPE.fullmatch(code) is None:
        raise PydanticCustomError(
            "currency_format", "currency must be an ISO 4217 code of 3 upper-case letters"
        )
    if code not in MINOR_UNITS:
        raise PydanticCustomError("currency_unknown", "unknown currency '{currency}'", {"currency": code})
    return code


def _with_minor_units(amount: Decimal, info: ValidationInfo) -> Decimal:
    currency = info.data.get("currency")
    if currency is None:
        # The currency itself failed validation (and is reported), or the model declares
        # its money before its currency, which EventData refuses at class creation.
        return amount
    return quantize_money(amount, currency)


def _positive(amount: Decimal) -> Decimal:
    if amount <= 0:
        raise PydanticCustomError(
            "money_positive", "must be greater than 0, got {amount}", {"amount": str(amount)}
        )
    return amount


def _non_negative(amount: Decimal) -> Decimal:
    if amount < 0:
        raise PydanticCustomError(
            "money_non_negative", "must not be negative, got {amount}", {"amount": str(amount)}
        )
    return amount


def _to_json(amount: Decimal) -> str:
    return format(amount, "f")


CurrencyCode = Annotated[str, AfterValidator(check_currency)]
"""An ISO 4217 currency code known to :data:`MINOR_UNITS`."""

_PARSE = PlainValidator(_parse_money, json_schema_input_type=str)
_AS_STRING = PlainSerializer(_to_json, return_type=str, when_used="json")

Money = Annotated[Decimal, _PARSE, _AS_STRING, AfterValidator(_with_minor_units)]
"""A signed amount in the model's ``currency`` (a decimal string in JSON, Decimal in Python)."""

NonNegativeMoney = Annotated[
    Decimal, _PARSE, _AS_STRING, AfterValidator(_non_negative), AfterValidator(_with_minor_units)
]
"""An amount that is zero or more in the model's ``currency``."""

PositiveMoney = Annotated[
    Decimal, _PARSE, _AS_STRING, AfterValidator(_positive), AfterValidator(_with_minor_units)
]
"""An amount greater than zero in the model's ``currency``."""
