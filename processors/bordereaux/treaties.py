"""The treaty book: the cedant, its reinsurance treaties and exchange rates (``treaties.yaml``).

docs/bordereaux.md defines every field and number; this module reads and checks the file at
start-up (every error names the treaty and the field) and answers the questions the ledger
and the reports ask: which treaty a term attaches to, its cession share, the periods of a
treaty and the exchange rate on a day.

Money helpers live here too: :func:`round_c` (``ROUND_HALF_UP`` to the currency's minor
units) and exact arithmetic in a wide decimal context, so no amount is ever rounded by the
thread's default 28-digit context.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from processors.contract.countries import COUNTRY_CODES
from processors.contract.money import MINOR_UNITS
from processors.errors import ConfigError
from processors.topics.durations import parse_duration

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_REGULATORY_GRACE",
    "DEFAULT_UNMATCHED_CLAIM_TIMEOUT",
    "SHARE_PLACES",
    "WIDE_CONTEXT",
    "Period",
    "PeriodKind",
    "Treaty",
    "TreatyBook",
    "TreatyConfigError",
    "TreatyType",
    "cession_percentage",
    "day_by_id",
    "day_of",
    "dec_mul",
    "dec_sum",
    "load_treaty_book",
    "parse_treaty_book",
    "round_c",
]

TreatyType = Literal["QUOTA_SHARE", "SURPLUS"]
PeriodKind = Literal["monthly", "quarterly"]

DEFAULT_GRACE = timedelta(days=5)
DEFAULT_REGULATORY_GRACE = timedelta(days=1)
DEFAULT_UNMATCHED_CLAIM_TIMEOUT = timedelta(days=31)
SHARE_PLACES = 10
"""Decimal places of a surplus cession share."""

_WIDE = Context(prec=100, rounding=ROUND_HALF_UP)
WIDE_CONTEXT = _WIDE
"""The context of :func:`dec_mul` and :func:`dec_sum` (100 digits: exact for any amount); read only."""
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in set(MINOR_UNITS.values())}
_CURRENCY_QUANTUM = {ccy: _QUANTUM[places] for ccy, places in MINOR_UNITS.items()}
_PERCENT_QUANTUM = Decimal("0.00000001")
_PERCENT_PLACES = 8
_HUNDRED = Decimal(100)


class TreatyConfigError(ConfigError):
    """``treaties.yaml`` is invalid; the message names the file, the treaty and the field."""


# --- money ----------------------------------------------------------------------------------


def round_c(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded ``ROUND_HALF_UP`` to ``currency``'s minor units (never ``-0.00``)."""
    rounded = amount.quantize(_CURRENCY_QUANTUM[currency], rounding=ROUND_HALF_UP, context=_WIDE)
    return rounded.copy_abs() if rounded.is_zero() else rounded


def dec_mul(a: Decimal, b: Decimal) -> Decimal:
    """The exact product (no rounding by the default context)."""
    return _WIDE.multiply(a, b)


def dec_sum(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``values`` (0 when there are none)."""
    total = Decimal(0)
    for value in values:
        total = _WIDE.add(total, value)
    return total


def cession_percentage(share: Decimal) -> Decimal:
    """``share × 100`` with 8 decimal places, as written in a row."""
    return _WIDE.multiply(share, _HUNDRED).quantize(_PERCENT_QUANTUM, context=_WIDE)


def _ratio_half_up(numerator: Decimal, denominator: Decimal, places: int) -> Decimal:
    """``numerator / denominator`` (both > 0) rounded ``ROUND_HALF_UP`` to ``places``, exactly.

    In integers: ``(a/b) / (c/d) × 10^places = a·d·10^places / (b·c)``.
    """
    a, b = numerator.as_integer_ratio()
    c, d = denominator.as_integer_ratio()
    scaled = b * c
    whole, rest = divmod(a * d * 10**places, scaled)
    if 2 * rest >= scaled:
        whole += 1
    return Decimal(whole).scaleb(-places)


# --- periods --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A reporting period: ``2024-01`` (month), ``2024-Q1`` (quarter) or ``2024-01-31`` (day).

    ``end`` is exclusive: the first day of the next period.
    """

    id: str
    start: date
    end: date

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def end_at(self) -> datetime:
        """Midnight UTC after the period's last day."""
        return datetime.combine(self.end, time(), UTC)


_MONTH_ID = re.compile(r"([0-9]{4})-([0-9]{2})")
_QUARTER_ID = re.compile(r"([0-9]{4})-Q([1-4])")


def _first_of_month(year: int, month: int) -> date:
    return date(year + (month - 1) // 12, (month - 1) % 12 + 1, 1)


def _month(d: date) -> Period:
    return Period(
        f"{d.year:04d}-{d.month:02d}", date(d.year, d.month, 1), _first_of_month(d.year, d.month + 1)
    )


def _quarter(d: date) -> Period:
    q = (d.month - 1) // 3
    return Period(f"{d.year:04d}-Q{q + 1}", date(d.year, 3 * q + 1, 1), _first_of_month(d.year, 3 * q + 4))


def day_of(d: date) -> Period:
    """The one-day regulatory period of ``d`` (id ``YYYY-MM-DD``)."""
    return Period(d.isoformat(), d, d + timedelta(days=1))


def day_by_id(pid: str) -> Period:
    """The day period named ``YYYY-MM-DD``; :class:`TreatyConfigError` for anything else."""
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", pid) is not None:
            return day_of(date.fromisoformat(pid))
    except ValueError:
        pass
    raise TreatyConfigError(f"bad day {pid!r}: write a calendar date as YYYY-MM-DD")


# --- treaties -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Treaty:
    """One treaty of the book (values as validated from ``treaties.yaml``)."""

    treaty_number: str
    reinsurer_code: str
    reinsurer_name: str
    type: TreatyType
    settlement_currency: str
    inception: date
    expiry: date
    period_kind: PeriodKind = "monthly"
    grace: timedelta = DEFAULT_GRACE
    currencies: tuple[str, ...] = ()
    lines_of_business: tuple[str, ...] = ()
    territories: tuple[str, ...] = ()
    cession_percentage: Decimal | None = None
    """Quota share only: ``0 < p ≤ 100``."""
    retention_amount: Decimal | None = None
    """Surplus only: the retention ``R`` (> 0) in :attr:`retention_currency`."""
    retention_currency: str | None = None
    lines: int | None = None
    """Surplus only: the capacity in lines of the retention (≥ 1)."""

    def period_of(self, d: date) -> Period:
        """The treaty period (month or quarter) containing ``d``."""
        return _month(d) if self.period_kind == "monthly" else _quarter(d)

    def period_by_id(self, pid: str) -> Period:
        """The period named ``pid`` (``2024-01`` or ``2024-Q1`` as the treaty's kind).

        Raises :class:`TreatyConfigError` for a malformed id or one of the other kind.
        """
        pattern = _MONTH_ID if self.period_kind == "monthly" else _QUARTER_ID
        example = "2024-01" if self.period_kind == "monthly" else "2024-Q1"
        match = pattern.fullmatch(pid)
        valid = match is not None and int(match[1]) >= 1
        if match is not None and valid and self.period_kind == "monthly":
            valid = 1 <= int(match[2]) <= 12
        if match is None or not valid:
            raise TreatyConfigError(
                f"treaty {self.treaty_number!r}: bad period {pid!r}: its periods are "
                f"{self.period_kind}, written like {example}"
            )
        year, part = int(match[1]), int(match[2])
        if self.period_kind == "monthly":
            return _month(date(year, part, 1))
        return _quarter(date(year, 3 * part - 2, 1))

    def next_period(self, period: Period) -> Period:
        return self.period_of(period.end)

    def first_period(self) -> Period:
        """The period containing the inception: the first one reported."""
        return self.period_of(self.inception)

    def last_in_force_period(self) -> Period:
        """The period containing the expiry: the last one with a nil report when empty."""
        return self.period_of(self.expiry)

    def closes_at(self, period: Period) -> datetime:
        """``end(P) + grace``: event time at which ``period`` closes and from which events are late."""
        return period.end_at + self.grace

    def accepts(self, lob: str, territory: str | None, currency: str, inception_date: date) -> bool:
        """Whether a term with these values attaches to this treaty (risks attaching)."""
        return (
            (not self.lines_of_business or lob in self.lines_of_business)
            and (not self.territories or territory in self.territories)
            and currency in self.currencies
            and self.inception <= inception_date <= self.expiry
        )


@dataclass(frozen=True)
class TreatyBook:
    """The cedant, its treaties in file order, exchange rates and regulatory settings."""

    cedant_code: str
    cedant_name: str
    treaties: tuple[Treaty, ...]
    regulatory_grace: timedelta = DEFAULT_REGULATORY_GRACE
    regulatory_start: date | None = None
    """First regulatory day (default: the earliest treaty inception)."""
    unmatched_claim_timeout: timedelta = DEFAULT_UNMATCHED_CLAIM_TIMEOUT
    exchange_rates: Mapping[tuple[str, str], tuple[tuple[date, Decimal], ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Per ``(from, to)``: ``(effective, rate)`` sorted by ``effective``."""
    _by_number: Mapping[str, Treaty] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.regulatory_start is None:
            start = min((t.inception for t in self.treaties), default=date(1970, 1, 1))
            object.__setattr__(self, "regulatory_start", start)
        object.__setattr__(self, "_by_number", MappingProxyType({t.treaty_number: t for t in self.treaties}))

    @property
    def first_regulatory_day(self) -> Period:
        assert self.regulatory_start is not None  # set in __post_init__
        return day_of(self.regulatory_start)

    def regulatory_closes_at(self, day: Period) -> datetime:
        return day.end_at + self.regulatory_grace

    def attach(self, lob: str, territory: str | None, currency: str, inception_date: date) -> Treaty | None:
        """The first treaty in file order that accepts the term, or ``None`` (not ceded)."""
        for treaty in self.treaties:
            if treaty.accepts(lob, territory, currency, inception_date):
                return treaty
        return None

    def treaty(self, number: str) -> Treaty:
        """The treaty ``number``; :class:`TreatyConfigError` naming the known ones when there is none."""
        try:
            return self._by_number[number]
        except KeyError:
            known = ", ".join(self._by_number) or "none"
            raise TreatyConfigError(f"no treaty {number!r} in the book (known: {known})") from None

    def rate(self, from_ccy: str, to_ccy: str, d: date) -> Decimal:
        """1 unit of ``from_ccy`` in ``to_ccy`` on ``d``: the entry with the latest ``effective ≤ d``.

        Raises :class:`TreatyConfigError` when the book has no such entry (validation at
        start-up makes sure every rate the treaties need exists from their inception on).
        """
        if from_ccy == to_ccy:
            return Decimal(1)
        history = self.exchange_rates.get((from_ccy, to_ccy), ())
        index = bisect.bisect_right(history, d, key=lambda entry: entry[0])
        if index == 0:
            raise TreatyConfigError(
                f"no exchange rate from {from_ccy} to {to_ccy} effective on or before {d}"
            )
        return history[index - 1][1]

    def share(self, treaty: Treaty, sum_insured: Decimal, currency: str, inception_date: date) -> Decimal:
        """The cession share ``s`` of a term attached to ``treaty`` (docs/bordereaux.md)."""
        if treaty.type == "QUOTA_SHARE":
            assert treaty.cession_percentage is not None
            return _WIDE.divide(treaty.cession_percentage, _HUNDRED)
        assert treaty.retention_amount is not None
        assert treaty.retention_currency is not None
        assert treaty.lines is not None
        retention = treaty.retention_amount
        si = round_c(
            dec_mul(sum_insured, self.rate(currency, treaty.retention_currency, inception_date)),
            treaty.retention_currency,
        )
        if si <= retention:
            return Decimal(0)
        ceded = min(_WIDE.subtract(si, retention), dec_mul(Decimal(treaty.lines), retention))
        return _ratio_half_up(ceded, si, SHARE_PLACES)


# --- parsing --------------------------------------------------------------------------------

_TOP_KEYS = frozenset(
    {"version", "cedant", "exchange_rates", "treaties", "regulatory", "unmatched_claim_timeout"}
)
_TREATY_KEYS = frozenset(
    {
        "treaty_number",
        "reinsurer",
        "type",
        "cession_percentage",
        "retention",
        "lines",
        "lines_of_business",
        "territories",
        "currencies",
        "settlement_currency",
        "inception",
        "expiry",
        "period",
        "grace",
    }
)
_TREATY_TYPES: Mapping[str, TreatyType] = MappingProxyType(
    {"quota_share": "QUOTA_SHARE", "surplus": "SURPLUS"}
)
_DECIMAL_STRING = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_TREATY_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_REINSURER_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Reinsurer codes name delivery endpoints (``reinsurer:<CODE>``), matched without regard to case."""


class _Where:
    """Builds error messages that name the file, the treaty and the field."""

    def __init__(self, source: str, treaty: str | None = None) -> None:
        self.source = source
        self.treaty = treaty

    def error(self, field_name: str, reason: str) -> TreatyConfigError:
        where = f"treaty {self.treaty!r}: " if self.treaty is not None else ""
        return TreatyConfigError(f"{self.source}: {where}{field_name}: {reason}")


def _mapping(value: object, where: _Where, name: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise where.error(name, "must be a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise where.error(
            name, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def _text(value: object, where: _Where, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(name, "must be a non-empty string")
    return value.strip()


def _reinsurer_code(value: object, where: _Where) -> str:
    code = _text(value, where, "reinsurer.code")
    if _REINSURER_CODE.fullmatch(code) is None:
        raise where.error("reinsurer.code", "must be 1 to 64 ASCII letters, digits, '_', '.' or '-'")
    return code


def _decimal(value: object, where: _Where, name: str) -> Decimal:
    if not isinstance(value, str) or _DECIMAL_STRING.fullmatch(value.strip()) is None:
        raise where.error(name, 'must be a decimal string such as "70" or "1.0850" (quote numbers)')
    try:
        return Decimal(value.strip())
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
        raise where.error(name, "is not a decimal number") from None


def _date(value: object, where: _Where, name: str) -> date:
    if isinstance(value, datetime):
        raise where.error(name, "must be a date (YYYY-MM-DD), not a timestamp")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise where.error(name, "must be a date written YYYY-MM-DD")


def _duration(value: object, where: _Where, name: str) -> timedelta:
    try:
        return timedelta(milliseconds=parse_duration(value, what=name))
    except ValueError as exc:
        raise where.error(name, str(exc)) from None


def _currency(value: object, where: _Where, name: str) -> str:
    if not isinstance(value, str) or value not in MINOR_UNITS:
        raise where.error(name, f"{value!r} is not a known ISO 4217 currency code")
    return value


def _string_list(value: object, where: _Where, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(name, "must be a list")
    items: list[str] = []
    for item in value:
        if isinstance(item, bool):
            # YAML 1.1 reads an unquoted NO (Norway), YES, ON, OFF as booleans.
            raise where.error(name, f"{item!r} is a YAML boolean: quote codes such as 'NO'")
        items.append(_text(item, where, name))
    if len(set(items)) != len(items):
        raise where.error(name, "lists a value twice")
    return tuple(items)


def _rates(value: object, source: str) -> dict[tuple[str, str], tuple[tuple[date, Decimal], ...]]:
    where = _Where(source)
    if value is None:
        return {}
    if not isinstance(value, list):
        raise where.error("exchange_rates", "must be a list of {from, to, effective, rate}")
    found: dict[tuple[str, str], dict[date, Decimal]] = {}
    for index, entry in enumerate(value):
        name = f"exchange_rates[{index}]"
        entry = _mapping(entry, where, name, frozenset({"from", "to", "effective", "rate"}))
        for key in ("from", "to", "effective", "rate"):
            if key not in entry:
                raise where.error(f"{name}.{key}", "is required")
        src = _currency(entry["from"], where, f"{name}.from")
        dst = _currency(entry["to"], where, f"{name}.to")
        if src == dst:
            raise where.error(name, f"converts {src} to itself")
        effective = _date(entry["effective"], where, f"{name}.effective")
        rate = _decimal(entry["rate"], where, f"{name}.rate")
        if rate <= 0:
            raise where.error(f"{name}.rate", "must be greater than 0")
        history = found.setdefault((src, dst), {})
        if effective in history:
            raise where.error(name, f"a second {src}→{dst} rate effective {effective}")
        history[effective] = rate
    return {pair: tuple(sorted(history.items())) for pair, history in found.items()}


def _treaty(entry: object, index: int, source: str, seen: set[str]) -> Treaty:
    number = entry.get("treaty_number") if isinstance(entry, Mapping) else None
    where = _Where(source, number if isinstance(number, str) else f"#{index + 1}")
    spec = _mapping(entry, where, "treaty", _TREATY_KEYS)
    for key in (
        "treaty_number",
        "reinsurer",
        "type",
        "settlement_currency",
        "currencies",
        "inception",
        "expiry",
    ):
        if key not in spec or spec[key] is None:
            raise where.error(key, "is required")
    number = _text(spec["treaty_number"], where, "treaty_number")
    if _TREATY_NUMBER.fullmatch(number) is None:
        raise where.error(
            "treaty_number", "must be 1..64 letters, digits, '.', '_', '/' or '-', starting alphanumeric"
        )
    if number in seen:
        raise where.error("treaty_number", "is used by another treaty (treaty numbers are unique)")
    seen.add(number)
    reinsurer = _mapping(spec["reinsurer"], where, "reinsurer", frozenset({"code", "name"}))
    kind = spec["type"]
    if kind not in _TREATY_TYPES:
        raise where.error("type", f"must be one of {', '.join(_TREATY_TYPES)}")
    treaty_type = _TREATY_TYPES[kind]
    inception = _date(spec["inception"], where, "inception")
    expiry = _date(spec["expiry"], where, "expiry")
    if inception > expiry:
        raise where.error("expiry", f"{expiry} is before the inception {inception}")
    period = spec.get("period", "monthly")
    if period not in ("monthly", "quarterly"):
        raise where.error("period", "must be monthly or quarterly")
    currencies = _string_list(spec["currencies"], where, "currencies")
    if not currencies:
        raise where.error("currencies", "must list at least one currency")
    for code in currencies:
        _currency(code, where, "currencies")
    territories = _string_list(spec.get("territories"), where, "territories")
    for code in territories:
        if code not in COUNTRY_CODES:
            raise where.error("territories", f"{code!r} is not an ISO 3166-1 alpha-2 country code")
    values: dict[str, Any] = {}
    if treaty_type == "QUOTA_SHARE":
        for key in ("retention", "lines"):
            if key in spec:
                raise where.error(key, "is for surplus treaties only")
        if "cession_percentage" not in spec:
            raise where.error("cession_percentage", "is required for a quota share")
        percentage = _decimal(spec["cession_percentage"], where, "cession_percentage")
        if not 0 < percentage <= 100:
            raise where.error("cession_percentage", "must be greater than 0 and at most 100")
        exponent = percentage.normalize().as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > _PERCENT_PLACES:
            raise where.error("cession_percentage", f"has more than {_PERCENT_PLACES} decimal places")
        values["cession_percentage"] = percentage
    else:
        if "cession_percentage" in spec:
            raise where.error("cession_percentage", "is for quota share treaties only")
        for key in ("retention", "lines"):
            if key not in spec:
                raise where.error(key, "is required for a surplus treaty")
        retention = _mapping(spec["retention"], where, "retention", frozenset({"amount", "currency"}))
        if "amount" not in retention or "currency" not in retention:
            raise where.error("retention", "needs amount and currency")
        amount = _decimal(retention["amount"], where, "retention.amount")
        if amount <= 0:
            raise where.error("retention.amount", "must be greater than 0")
        lines = spec["lines"]
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
            raise where.error("lines", "must be a whole number ≥ 1")
        values.update(
            retention_amount=amount,
            retention_currency=_currency(retention["currency"], where, "retention.currency"),
            lines=lines,
        )
    return Treaty(
        treaty_number=number,
        reinsurer_code=_reinsurer_code(reinsurer.get("code"), where),
        reinsurer_name=_text(reinsurer.get("name"), where, "reinsurer.name"),
        type=treaty_type,
        settlement_currency=_currency(spec["settlement_currency"], where, "settlement_currency"),
        inception=inception,
        expiry=expiry,
        period_kind=period,
        grace=_duration(spec["grace"], where, "grace") if "grace" in spec else DEFAULT_GRACE,
        currencies=currencies,
        lines_of_business=_string_list(spec.get("lines_of_business"), where, "lines_of_business"),
        territories=territories,
        **values,
    )


def _check_rates(book: TreatyBook, source: str) -> None:
    for treaty in book.treaties:
        where = _Where(source, treaty.treaty_number)
        needed: list[tuple[str, str, str]] = [
            (ccy, treaty.settlement_currency, "currencies") for ccy in treaty.currencies
        ]
        if treaty.retention_currency is not None:
            needed += [(ccy, treaty.retention_currency, "retention.currency") for ccy in treaty.currencies]
        for src, dst, field_name in needed:
            try:
                book.rate(src, dst, treaty.inception)
            except TreatyConfigError:
                raise where.error(
                    field_name,
                    f"needs an exchange rate from {src} to {dst} effective on or before "
                    f"the inception {treaty.inception}",
                ) from None


def parse_treaty_book(data: Mapping[str, Any], *, source: str) -> TreatyBook:
    """The book described by ``data`` (the parsed YAML); :class:`TreatyConfigError` if invalid."""
    where = _Where(source)
    top = _mapping(data, where, "document", _TOP_KEYS)
    if top.get("version", 1) != 1:
        raise where.error("version", "must be 1")
    if "cedant" not in top:
        raise where.error("cedant", "is required")
    cedant = _mapping(top["cedant"], where, "cedant", frozenset({"code", "name"}))
    rates = _rates(top.get("exchange_rates"), source)
    entries = top.get("treaties")
    if not isinstance(entries, list) or not entries:
        raise where.error("treaties", "must be a non-empty list")
    seen: set[str] = set()
    treaties = tuple(_treaty(entry, index, source, seen) for index, entry in enumerate(entries))
    codes: dict[str, str] = {}
    for treaty in treaties:
        known = codes.setdefault(treaty.reinsurer_code.upper(), treaty.reinsurer_code)
        if known != treaty.reinsurer_code:
            # Reports are routed by code without regard to case: these would reach one endpoint.
            raise _Where(source, treaty.treaty_number).error(
                "reinsurer.code",
                f"{treaty.reinsurer_code!r} differs from {known!r} only in case; use one spelling",
            )
    regulatory = _mapping(top.get("regulatory") or {}, where, "regulatory", frozenset({"grace", "start"}))
    book = TreatyBook(
        cedant_code=_text(cedant.get("code"), where, "cedant.code"),
        cedant_name=_text(cedant.get("name"), where, "cedant.name"),
        treaties=treaties,
        regulatory_grace=(
            _duration(regulatory["grace"], where, "regulatory.grace")
            if "grace" in regulatory
            else DEFAULT_REGULATORY_GRACE
        ),
        regulatory_start=(
            _date(regulatory["start"], where, "regulatory.start") if "start" in regulatory else None
        ),
        unmatched_claim_timeout=(
            _duration(top["unmatched_claim_timeout"], where, "unmatched_claim_timeout")
            if "unmatched_claim_timeout" in top
            else DEFAULT_UNMATCHED_CLAIM_TIMEOUT
        ),
        exchange_rates=MappingProxyType(rates),
    )
    _check_rates(book, source)
    return book


def load_treaty_book(path: Path) -> TreatyBook:
    """Read and validate ``treaties.yaml`` at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TreatyConfigError(f"{path}: cannot read the treaty book: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TreatyConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, Mapping):
        raise TreatyConfigError(f"{path}: the treaty book must be a YAML mapping")
    return parse_treaty_book(data, source=str(path))
