"""Stage 2 of the bordereaux app: the ledger of one ``integrations.bordereaux.by-policy`` partition.

The ledger counts policy and claim events (docs/bordereaux.md is the definition of every
number) into rows per (treaty, period) and per regulatory day, and emits one **partial** per
(treaty, period) and per day when it closes, for every treaty of the book (empty partials
too): the assembler knows a period is complete once every ledger partition sent its partial.

State lives in a transactional key-value store (:class:`LedgerStore`, provided by the
runtime; its writes commit with the outputs).  Keys::

    meta|seq                         next sequence number (processing order in this partition)
    meta|now                         event time (never goes back, even past a source that woke up behind it)
    wm|<source>                      watermark of a source partition (ISO-8601 UTC)
    idle|<source>                    the source partition is idle: it does not hold event time back
    next|t|<treaty>, next|reg        the first period (or day) not closed yet
    pol|<policy_id>                  terms of the policy and the event ids already counted
    wait|<seq>                       a claim waiting for its policy term (its LedgerInput)
    row|t|<treaty>|<period>|<seq>    a premium row or claim movement of an open period
    row|reg|<YYYY-MM-DD>|<seq>       a regulatory row of an open day

The constructor scans the store once to rebuild its in-memory state (watermarks, open
periods, the rows of each open period, waiting claims); policies are read from the store when
first needed and kept parsed (a bounded cache).  Memory only ever mirrors the store: a ledger
is rebuilt whenever the runtime restores or rolls back its store.

Outputs are deterministic: a partial holds its rows sorted (premium rows by policy number,
transaction date and event id; claim movements by claim, ``adjustment_of`` and processing
order, renumbered from 0; regulatory rows by event date and event id) as canonical JSON.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from json.encoder import encode_basestring as _q  # the string encoder of json.dumps(ensure_ascii=False)
from operator import itemgetter
from typing import Any, Protocol

from pydantic_core import from_json

from processors.bordereaux.rows import TransactionType
from processors.bordereaux.treaties import (
    Period,
    Treaty,
    TreatyBook,
    TreatyConfigError,
    cession_percentage,
    day_by_id,
    day_of,
    dec_mul,
    round_c,
)
from processors.contract.countries import COUNTRY_CODES
from processors.contract.events import ClaimData, Event, PolicyChangeData, PolicyData
from processors.contract.money import MINOR_UNITS, MONEY_INTEGER_DIGITS

__all__ = [
    "NO_TERM_REASON",
    "Ledger",
    "LedgerOut",
    "LedgerStore",
    "PartialOut",
    "RejectOut",
    "canonical_json",
    "partial_key",
]

NO_TERM_REASON = "no policy term covers the date of loss"
"""The dead-letter reason of a claim that waited ``unmatched_claim_timeout`` in vain."""

POLICY_TERM_EVENTS = frozenset({"policy.issued", "policy.renewed"})
POLICY_CHANGE_EVENTS = frozenset({"policy.endorsed", "policy.cancelled"})
CLAIM_EVENTS = frozenset({"claim.reported", "claim.reserved", "claim.paid", "claim.settled", "claim.closed"})
_TRANSACTION_TYPES: Mapping[str, TransactionType] = {
    "policy.issued": "NEW_BUSINESS",
    "policy.renewed": "RENEWAL",
    "policy.endorsed": "ENDORSEMENT",
    "policy.cancelled": "CANCELLATION",
}
_SEQ_DIGITS = 12


class LedgerStore(Protocol):
    """A transactional key-value store provided by the runtime."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, bytes]]:
        """The current committed and pending entries, in any order."""
        ...


@dataclass(frozen=True, slots=True)
class PartialOut:
    """A partial for ``integrations.bordereaux.partials`` (key ``<treaty>|<period>`` or ``REG|<day>``)."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class RejectOut:
    """An event the ledger cannot count: the runtime dead-letters it with ``reason`` (ids only).

    ``raw`` is ``None`` when the rejected event is the input record being processed; a claim
    that waited in state and is rejected later carries its stored LedgerInput bytes here
    (the record it came in is long committed).
    """

    event_id: str
    reason: str
    raw: bytes | None = None


LedgerOut = PartialOut | RejectOut


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace."""
    return _CANONICAL.encode(value).encode("utf-8")


def partial_key(treaty_number: str | None, period_id: str) -> str:
    """The partials key of a treaty period (``TRY-1|2024-01``) or a regulatory day (``REG|2024-01-31``)."""
    return f"REG|{period_id}" if treaty_number is None else f"{treaty_number}|{period_id}"


# --- input ----------------------------------------------------------------------------------
#
# A LedgerInput is written from an event already validated against the contract, so the
# ledger parses it with ``pydantic_core.from_json`` and plain field access, checking types and
# what it converts (amounts, dates, timestamps): a malformed record is still rejected with a
# clear reason naming the field (never its value).  ``Ledger.on_decoded`` skips the JSON.

_MONEY_STRING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_MONEY_LIMIT = Decimal(10) ** MONEY_INTEGER_DIGITS
_EXACT = Context(prec=MONEY_INTEGER_DIGITS + 20)
_MONEY_QUANTUM = {ccy: Decimal(1).scaleb(-places) for ccy, places in MINOR_UNITS.items()}
_PLAIN_AMOUNT = {
    ccy: re.compile(
        f"[0-9]{{1,{MONEY_INTEGER_DIGITS}}}" + (f"\\.[0-9]{{{places}}}" if places else "")
    ).fullmatch
    for ccy, places in MINOR_UNITS.items()
}
"""Per currency: whether an amount is plain (not negative, exactly the minor units): such a
string is read as is; any other goes through :func:`_money`."""


class _Undecodable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Bad(Exception):
    """A field of a LedgerInput is missing or malformed."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


def _field(d: Mapping[str, Any], name: str) -> Any:
    try:
        return d[name]
    except KeyError:
        raise _Bad(name, "Field required") from None


def _text(d: Mapping[str, Any], name: str, max_length: int = 128) -> str:
    value = _field(d, name)
    if type(value) is not str or not 0 < len(value) <= max_length:
        raise _Bad(name, f"must be a string of 1 to {max_length} characters")
    return value


def _date(d: Mapping[str, Any], name: str) -> date:
    value = _field(d, name)
    if type(value) is not str or len(value) != 10:
        raise _Bad(name, "must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _Bad(name, "must be a date written YYYY-MM-DD") from None


def _moment(d: Mapping[str, Any], name: str) -> datetime:
    value = _field(d, name)
    if type(value) is not str:
        raise _Bad(name, "must be an ISO-8601 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(name, "must be an ISO-8601 timestamp") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _Bad(name, "must be timezone-aware: naive datetimes are rejected")
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def _currency(d: Mapping[str, Any], name: str) -> str:
    value = _field(d, name)
    if type(value) is not str or value not in _MONEY_QUANTUM:
        raise _Bad(name, "must be a known ISO 4217 currency code")
    return value


def _money(d: Mapping[str, Any], name: str, currency: str, *, signed: bool = False) -> Decimal:
    """An amount in the contract's form: exactly ``currency``'s minor units (never ``-0``)."""
    value = _field(d, name)
    if type(value) is not str or _MONEY_STRING.fullmatch(value) is None:
        raise _Bad(name, 'money must be a decimal string such as "1185.50"')
    amount = Decimal(value)
    if abs(amount) >= _MONEY_LIMIT:
        raise _Bad(name, f"money must be below 10^{MONEY_INTEGER_DIGITS}")
    quantized = amount.quantize(_MONEY_QUANTUM[currency], context=_EXACT)
    if quantized != amount:
        raise _Bad(name, f"has more decimal places than {currency} allows ({MINOR_UNITS[currency]})")
    if quantized.is_signed():
        if quantized.is_zero():
            return quantized.copy_abs()
        if not signed:
            raise _Bad(name, "must not be negative")
    return quantized


@dataclass(slots=True)
class _LedgerInput:
    id: str
    type: str
    at: datetime
    src: str
    w: datetime | None
    d: Mapping[str, Any]
    day: date = field(init=False)
    """The UTC date of ``at``."""
    day_text: str = field(init=False)
    id_json: str = field(init=False)
    """``id`` as a JSON string."""

    def __post_init__(self) -> None:
        self.day = self.at.date()
        self.day_text = self.day.isoformat()
        self.id_json = _q(self.id)


_PolicyFields = tuple[str, str, str, str | None, date, date, str, Decimal, Decimal]


@dataclass(slots=True)
class _PolicyIn:
    policy_id: str
    policy_number: str
    line_of_business: str
    territory: str | None
    inception_date: date
    expiry_date: date
    currency: str
    gross_premium: Decimal
    sum_insured: Decimal

    @staticmethod
    def fields(d: Mapping[str, Any]) -> _PolicyFields:
        """The fields, checked one by one in order (a malformed one raises :class:`_Bad`)."""
        try:
            fast = _PolicyIn.plain_fields(d)
        except (KeyError, TypeError, ValueError):
            fast = None
        if fast is not None:
            return fast
        policy_id = _text(d, "policy_id")
        policy_number = _text(d, "policy_number")
        line_of_business = _text(d, "line_of_business", 64)
        territory = d.get("territory")
        if territory is not None and territory not in COUNTRY_CODES:
            raise _Bad("territory", "must be an ISO 3166-1 alpha-2 country code")
        inception_date = _date(d, "inception_date")
        expiry_date = _date(d, "expiry_date")
        currency = _currency(d, "currency")
        return (
            policy_id,
            policy_number,
            line_of_business,
            territory,
            inception_date,
            expiry_date,
            currency,
            _money(d, "gross_premium", currency),
            _money(d, "sum_insured", currency),
        )

    @staticmethod
    def plain_fields(d: Mapping[str, Any]) -> _PolicyFields | None:
        """The fields when they have the route stage's plain form (``None``: check one by one)."""
        currency = d["currency"]
        plain_amount = _PLAIN_AMOUNT[currency]
        policy_id = d["policy_id"]
        policy_number = d["policy_number"]
        line_of_business = d["line_of_business"]
        territory = d.get("territory")
        inception_date = d["inception_date"]
        expiry_date = d["expiry_date"]
        gross_premium = d["gross_premium"]
        sum_insured = d["sum_insured"]
        if (
            type(policy_id) is str
            and 0 < len(policy_id) <= 128
            and type(policy_number) is str
            and 0 < len(policy_number) <= 128
            and type(line_of_business) is str
            and 0 < len(line_of_business) <= 64
            and (territory is None or territory in COUNTRY_CODES)
            and type(inception_date) is str
            and len(inception_date) == 10
            and type(expiry_date) is str
            and len(expiry_date) == 10
            and plain_amount(gross_premium) is not None
            and plain_amount(sum_insured) is not None
        ):
            return (
                policy_id,
                policy_number,
                line_of_business,
                territory,
                date.fromisoformat(inception_date),
                date.fromisoformat(expiry_date),
                currency,
                Decimal(gross_premium),
                Decimal(sum_insured),
            )
        return None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> _PolicyIn:
        return cls(*cls.fields(d))


@dataclass(slots=True)
class _ChangeIn(_PolicyIn):
    effective_date: date
    premium_change: Decimal

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> _ChangeIn:
        base = cls.fields(d)
        return cls(*base, _date(d, "effective_date"), _money(d, "premium_change", base[6], signed=True))


@dataclass(slots=True)
class _ClaimIn:
    claim_id: str
    policy_id: str
    policy_number: str
    date_of_loss: date
    currency: str
    reserve_amount: Decimal
    paid_amount: Decimal
    paid_to_date: Decimal
    status: str

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> _ClaimIn:
        try:
            currency = d["currency"]
            plain_amount = _PLAIN_AMOUNT[currency]
            claim_id = d["claim_id"]
            policy_id = d["policy_id"]
            policy_number = d["policy_number"]
            date_of_loss = d["date_of_loss"]
            reserve_amount = d["reserve_amount"]
            paid_amount = d["paid_amount"]
            paid_to_date = d["paid_to_date"]
            status = d["status"]
            if (
                type(claim_id) is str
                and 0 < len(claim_id) <= 128
                and type(policy_id) is str
                and 0 < len(policy_id) <= 128
                and type(policy_number) is str
                and 0 < len(policy_number) <= 128
                and type(date_of_loss) is str
                and len(date_of_loss) == 10
                and plain_amount(reserve_amount) is not None
                and plain_amount(paid_amount) is not None
                and plain_amount(paid_to_date) is not None
                and type(status) is str
                and 0 < len(status) <= 32
            ):
                return cls(
                    claim_id,
                    policy_id,
                    policy_number,
                    date.fromisoformat(date_of_loss),
                    currency,
                    Decimal(reserve_amount),
                    Decimal(paid_amount),
                    Decimal(paid_to_date),
                    status,
                )
        except (KeyError, TypeError, ValueError):
            pass
        return cls.checked(d)

    @classmethod
    def checked(cls, d: Mapping[str, Any]) -> _ClaimIn:
        """The fields checked one by one in order (a malformed one raises :class:`_Bad`)."""
        claim_id = _text(d, "claim_id")
        policy_id = _text(d, "policy_id")
        policy_number = _text(d, "policy_number")
        date_of_loss = _date(d, "date_of_loss")
        currency = _currency(d, "currency")
        return cls(
            claim_id,
            policy_id,
            policy_number,
            date_of_loss,
            currency,
            _money(d, "reserve_amount", currency),
            _money(d, "paid_amount", currency),
            _money(d, "paid_to_date", currency),
            _text(d, "status", 32),
        )


def _decode(raw: bytes) -> _LedgerInput:
    try:
        value = from_json(raw)
    except ValueError as exc:
        raise _Undecodable(f"undecodable LedgerInput: invalid JSON: {exc}") from None
    try:  # the route stage's form: every field present and typed, timestamps in UTC
        event_id = value["id"]
        event_type = value["type"]
        src = value["src"]
        d = value["d"]
        at = datetime.fromisoformat(value["at"])
        w_text = value["w"]
        w = None if w_text is None else datetime.fromisoformat(w_text)
        if (
            type(event_id) is str
            and 0 < len(event_id) <= 128
            and type(event_type) is str
            and 0 < len(event_type) <= 64
            and type(src) is str
            and 0 < len(src) <= 300
            and type(d) is dict
            and at.tzinfo is UTC
            and (w is None or w.tzinfo is UTC)
        ):
            return _LedgerInput(event_id, event_type, at, src, w, d)
    except (KeyError, TypeError, ValueError):
        pass
    return _checked_input(value)


def _checked_input(value: Any) -> _LedgerInput:
    """The LedgerInput checked field by field (the reason names the first bad one)."""
    if not isinstance(value, dict):
        raise _Undecodable("undecodable LedgerInput: not a JSON object")
    try:
        event_id = _text(value, "id")
        event_type = _text(value, "type", 64)
        at = _moment(value, "at")
        src = _text(value, "src", 300)
        w = None if _field(value, "w") is None else _moment(value, "w")
        d = _field(value, "d")
        if not isinstance(d, dict):
            raise _Bad("d", "must be a JSON object")
    except _Bad as exc:
        raise _Undecodable(f"undecodable LedgerInput: {exc}") from None
    return _LedgerInput(event_id, event_type, at, src, w, d)


def _payload(model: type[_PolicyIn] | type[_ClaimIn], inp: _LedgerInput) -> Any:
    try:
        return model.parse(inp.d)
    except _Bad as exc:
        raise _Undecodable(f"undecodable LedgerInput {inp.id} ({inp.type}): {exc}") from None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _read_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# --- JSON text --------------------------------------------------------------------------------
#
# Rows, terms and partials are written as canonical JSON (sorted keys, separators "," and ":",
# UTF-8): the hot paths build that text directly in sorted key order; strings go through the
# json module's own string encoder (the one json.dumps uses with ensure_ascii=False), amounts
# and dates are plain digits.  Tests check the text equals canonical_json of its parse.


def _jn(text: str | None) -> str:
    """A JSON string, or ``null``."""
    return "null" if text is None else _q(text)


_ZERO = {ccy: round_c(Decimal(0), ccy) for ccy in MINOR_UNITS}
_ZERO_TEXT = {ccy: format(zero, "f") for ccy, zero in _ZERO.items()}
_CACHE_LIMIT = 4096
"""Entries of a calendar's date → period cache before it starts over."""
_POLICY_CACHE_LIMIT = 50_000
"""Policies kept parsed in memory before the cache starts over (the store holds them all)."""


# --- state ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Term:
    """One term of a policy; never changes once created (its canonical JSON is kept)."""

    inception: date
    expiry: date
    currency: str
    line_of_business: str
    territory: str | None
    treaty: str | None
    share: Decimal | None
    w: datetime | None
    share_text: str = field(init=False)
    percent_text: str = field(init=False)
    inception_text: str = field(init=False)
    expiry_text: str = field(init=False)
    wire: str = field(init=False)
    """The term as canonical JSON (in ``pol|`` entries)."""

    def __post_init__(self) -> None:
        self.inception_text = self.inception.isoformat()
        self.expiry_text = self.expiry.isoformat()
        share = None if self.share is None else format(self.share, "f")
        self.share_text = share or ""
        self.percent_text = "" if self.share is None else format(cession_percentage(self.share), "f")
        self.wire = (
            f'{{"currency":{_q(self.currency)},"expiry":"{self.expiry_text}",'
            f'"inception":"{self.inception_text}","lob":{_q(self.line_of_business)},'
            f'"share":{_jn(share)},"territory":{_jn(self.territory)},"treaty":{_jn(self.treaty)},'
            f'"w":{_jn(_iso(self.w))}}}'
        )

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> _Term:
        return cls(
            inception=date.fromisoformat(d["inception"]),
            expiry=date.fromisoformat(d["expiry"]),
            currency=d["currency"],
            line_of_business=d["lob"],
            territory=d["territory"],
            treaty=d["treaty"],
            share=None if d["share"] is None else Decimal(d["share"]),
            w=_read_time(d["w"]),
        )


@dataclass(slots=True)
class _Policy:
    terms: list[_Term]
    seen: set[str]

    def term_for(self, day: date) -> _Term | None:
        """The term started last (in the policy's event order) with inception ≤ day ≤ expiry."""
        for term in reversed(self.terms):
            if term.inception <= day <= term.expiry:
                return term
        return None

    def to_bytes(self) -> bytes:
        """``{"seen": [sorted ids], "terms": [...]}`` as canonical JSON."""
        seen = ",".join([_q(event_id) for event_id in sorted(self.seen)])
        terms = ",".join([term.wire for term in self.terms])
        return f'{{"seen":[{seen}],"terms":[{terms}]}}'.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _Policy:
        d = from_json(raw)
        return cls([_Term.from_wire(t) for t in d["terms"]], set(d["seen"]))


@dataclass(frozen=True, slots=True)
class _Waiting:
    seq: int
    key: str
    policy_id: str
    event_id: str
    at: datetime
    raw: bytes
    parsed: tuple[_LedgerInput, _ClaimIn] | None = field(default=None, compare=False, repr=False)
    """The claim as read when it arrived (``None`` when restored: ``raw`` is decoded again)."""


_PREMIUM, _CLAIM, _REGULATORY = 0, 1, 2

_Entry = tuple[int, tuple[Any, ...], str, bytes, int]
"""A row of an open period: (kind, sort key, store key, stored value, offset of ``"seq":0``).

The stored value is the row's canonical JSON: ``{"premium":{...}}``, ``{"claim":{...}}`` (with
``"seq":0``, numbered when the partial is built) or the regulatory row itself.
"""

_SORT_KEY = itemgetter(1)
_PREMIUM_HEAD = len(b'{"premium":')
_CLAIM_HEAD = len(b'{"claim":')
_SEQ_ZERO = b'"seq":0'
_SEQ_ZERO_LENGTH = len(_SEQ_ZERO)


def _entry_from_store(regulatory: bool, key: str, raw: bytes) -> _Entry | None:
    """The in-memory entry of a stored row (when a ledger is rebuilt from its store)."""
    d = json.loads(raw)
    if regulatory:
        return (_REGULATORY, (d["event_date"], d["event_id"]), key, canonical_json(d), 0)
    if "premium" in d:
        row = d["premium"]
        premium_key = (row["policy_number"], row["transaction_date"], row["event_id"])
        return (_PREMIUM, premium_key, key, canonical_json(d), 0)
    if "claim" in d:
        row = d["claim"]
        row["seq"] = 0
        value = canonical_json(d)
        adjustment_of = row["adjustment_of"]
        seq = int(key.rsplit("|", 1)[1])
        claim_key = (row["claim_id"], adjustment_of is not None, adjustment_of or "", seq)
        # An unescaped quote never occurs inside a JSON string: this is the key "seq".
        return (_CLAIM, claim_key, key, value, value.index(b"," + _SEQ_ZERO + b",") + 1)
    return None


class _Calendar:
    """The periods of one treaty, or the regulatory days, and the rows of the open ones."""

    def __init__(self, book: TreatyBook, treaty: Treaty | None) -> None:
        self.treaty = treaty
        self._book = book
        self.first: Period
        if treaty is None:
            self.name = "reg"
            self.first = book.first_regulatory_day
        else:
            self.name = f"t|{treaty.treaty_number}"
            self.first = treaty.first_period()
        self.open = self.first
        """The first period not closed yet."""
        self.buckets: dict[str, list[_Entry]] = {}
        """The rows of each open period, in processing order."""
        self.located: dict[date, tuple[Period, datetime]] = {}
        """Per day: :meth:`locate`."""

    @property
    def partial_key_prefix(self) -> str | None:
        return None if self.treaty is None else self.treaty.treaty_number

    def period_of(self, d: date) -> Period:
        return day_of(d) if self.treaty is None else self.treaty.period_of(d)

    def by_id(self, pid: str) -> Period:
        return day_by_id(pid) if self.treaty is None else self.treaty.period_by_id(pid)

    def next(self, period: Period) -> Period:
        return day_of(period.end) if self.treaty is None else self.treaty.next_period(period)

    def closes_at(self, period: Period) -> datetime:
        if self.treaty is None:
            return self._book.regulatory_closes_at(period)
        return self.treaty.closes_at(period)

    def locate(self, d: date) -> tuple[Period, datetime]:
        """The period containing ``d`` (the first period for a day before it) and its closing time."""
        found = self.located.get(d)
        if found is None:
            if len(self.located) >= _CACHE_LIMIT:
                self.located.clear()
            period = self.period_of(d)
            if period.start < self.first.start:
                period = self.first
            found = self.located[d] = (period, self.closes_at(period))
        return found


# --- the ledger -----------------------------------------------------------------------------


class Ledger:
    """Counts one by-policy partition's events and closes its periods (see the module doc)."""

    def __init__(
        self,
        book: TreatyBook,
        store: LedgerStore,
        *,
        partition: int,
        partitions: int,
        sources: Collection[str],
    ) -> None:
        self._book = book
        self._store = store
        self._partition = partition
        self._partitions = partitions
        self._sources = frozenset(sources)
        self._calendars = [_Calendar(book, t) for t in book.treaties] + [_Calendar(book, None)]
        self._by_name = {cal.name: cal for cal in self._calendars}
        self._by_treaty = {cal.treaty.treaty_number: cal for cal in self._calendars if cal.treaty}
        self._reg = self._calendars[-1]
        self._watermarks: dict[str, datetime] = {}
        self._idle: set[str] = set()
        self._now: datetime | None = None
        self._policies: dict[str, _Policy] = {}  # parsed ``pol|`` entries (a cache of the store)
        self._waiting: dict[int, _Waiting] = {}  # by arrival sequence
        self._waiting_ids: set[str] = set()
        self._waiting_by_policy: dict[str, list[int]] = {}
        self._deadlines: list[tuple[datetime, int]] = []  # heap of (occurred_at, seq); stale entries skipped
        self._seq = 0
        self._load()
        self._saved_seq = self._seq
        self._partitions_text = f',"partitions":{partitions}'.encode()
        self._source_text = f',"source_partition":{partition}'.encode()

    @staticmethod
    def partial_key(treaty_number: str | None, period_id: str) -> str:
        """See :func:`partial_key`."""
        return partial_key(treaty_number, period_id)

    @property
    def event_time(self) -> datetime | None:
        """The minimum watermark over the sources that are not idle (``None`` until each of them
        has reported); when every source is idle, the latest watermark.  It never goes back."""
        return self._now

    @property
    def idle_sources(self) -> frozenset[str]:
        return frozenset(self._idle)

    def _event_time(self) -> datetime | None:
        if not self._sources:
            return None
        active = [s for s in self._sources if s not in self._idle]
        if any(s not in self._watermarks for s in active):
            return self._now
        if active:
            moment = min(self._watermarks[s] for s in active)
        else:
            known = [self._watermarks[s] for s in self._sources if s in self._watermarks]
            if not known:
                return self._now
            moment = max(known)
        return moment if self._now is None or moment > self._now else self._now

    def closing_due(self) -> list[tuple[str | None, datetime]]:
        """Per treaty (``None``: the regulatory days), when its first open period is due to close:
        ``end + grace``, the event time that closes it.  Reads only what a step replaces whole,
        so another thread may call it (for the metrics)."""
        return [(cal.partial_key_prefix, cal.closes_at(cal.open)) for cal in self._calendars]

    def open_period(self, treaty_number: str | None) -> Period:
        """The first period of ``treaty_number`` (``None``: the first day) not closed yet."""
        name = "reg" if treaty_number is None else f"t|{treaty_number}"
        return self._by_name[name].open

    # --- restore ------------------------------------------------------------------------------

    def _load(self) -> None:
        rows: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        for key, value in self._store.items():
            kind, _, rest = key.partition("|")
            if kind == "row":
                cal_kind, _, rest = rest.partition("|")
                if cal_kind == "t":
                    treaty, period, _seq = rest.split("|")
                    name = f"t|{treaty}"
                else:
                    name = "reg"
                    period, _seq = rest.split("|")
                rows.setdefault((name, period), []).append((key, value))
            elif kind == "wm":
                self._watermarks[rest] = datetime.fromisoformat(value.decode())
            elif kind == "idle":
                self._idle.add(rest)
            elif kind == "next":
                cal = self._by_name.get(rest)
                if cal is not None:
                    cal.open = cal.by_id(value.decode())
            elif kind == "wait":
                d = json.loads(value)
                raw = d["raw"].encode("utf-8")
                self._remember(
                    _Waiting(int(rest), key, d["policy"], d["id"], datetime.fromisoformat(d["at"]), raw)
                )
            elif key == "meta|seq":
                self._seq = int(value.decode())
            elif key == "meta|now":
                self._now = datetime.fromisoformat(value.decode())
        for (name, period), found in rows.items():
            cal = self._by_name.get(name)
            if cal is None:
                continue  # a treaty no longer in the book: its rows stay in the store
            found.sort()
            entries = (_entry_from_store(cal.treaty is None, key, value) for key, value in found)
            cal.buckets[period] = [entry for entry in entries if entry is not None]
        for seqs in self._waiting_by_policy.values():
            seqs.sort()
        self._now = self._event_time()  # at least the saved one
        self._next_close = min(cal.closes_at(cal.open) for cal in self._calendars)

    def _remember(self, waiting: _Waiting) -> None:
        self._waiting[waiting.seq] = waiting
        self._waiting_ids.add(waiting.event_id)
        self._waiting_by_policy.setdefault(waiting.policy_id, []).append(waiting.seq)
        heapq.heappush(self._deadlines, (waiting.at, waiting.seq))

    def _forget(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.seq]
        self._waiting_ids.discard(waiting.event_id)
        seqs = self._waiting_by_policy[waiting.policy_id]
        seqs.remove(waiting.seq)
        if not seqs:
            del self._waiting_by_policy[waiting.policy_id]
        self._store.delete(waiting.key)

    def _next_seq(self) -> int:
        """The next sequence number (``meta|seq`` is written once per input, in :meth:`on_event`)."""
        seq = self._seq
        self._seq = seq + 1
        return seq

    # --- inputs -------------------------------------------------------------------------------

    def on_event(self, raw: bytes) -> list[LedgerOut]:
        """Count one LedgerInput; then dead-letter timed-out claims and close what closed."""
        try:
            inp = _decode(raw)
        except _Undecodable as exc:
            return [RejectOut(_event_id_of(raw), exc.reason)]
        event_type = inp.type
        try:
            if event_type in POLICY_TERM_EVENTS:
                out = self._on_term(inp, _payload(_PolicyIn, inp))
            elif event_type in POLICY_CHANGE_EVENTS:
                out = self._on_change(inp, _payload(_ChangeIn, inp))
            elif event_type in CLAIM_EVENTS:
                out = self._on_claim(inp, _payload(_ClaimIn, inp), raw)
            else:
                out = [RejectOut(inp.id, _not_counted(event_type))]
        except _Undecodable as exc:
            out = [RejectOut(inp.id, exc.reason)]
        return self._after(inp, out)

    def on_decoded(
        self, event: Event, source: str, watermark: datetime | None, encode: Callable[[], bytes]
    ) -> list[LedgerOut]:
        """:meth:`on_event` for an event already decoded and validated against the contract.

        ``source`` and ``watermark`` are the LedgerInput's ``src`` and ``w``; ``encode()`` gives
        the LedgerInput bytes and is called only when the ledger keeps the event (a claim
        waiting for its policy term).  The result is the same as ``on_event(encode())``.
        """
        at = event.occurred_at
        if watermark is not None and watermark.tzinfo is not UTC:
            # As on_watermark: a naive watermark is UTC.
            naive = watermark.tzinfo is None
            watermark = watermark.replace(tzinfo=UTC) if naive else watermark.astimezone(UTC)
        inp = _LedgerInput(str(event.event_id), event.event_type, at.astimezone(UTC), source, watermark, {})
        data = event.data
        if isinstance(data, PolicyChangeData) and inp.type in POLICY_CHANGE_EVENTS:
            change = _ChangeIn(
                data.policy_id,
                data.policy_number,
                data.line_of_business,
                data.territory,
                data.inception_date,
                data.expiry_date,
                data.currency,
                data.gross_premium,
                data.sum_insured,
                data.effective_date,
                data.premium_change,
            )
            out = self._on_change(inp, change)
        elif isinstance(data, PolicyData) and inp.type in POLICY_TERM_EVENTS:
            term = _PolicyIn(
                data.policy_id,
                data.policy_number,
                data.line_of_business,
                data.territory,
                data.inception_date,
                data.expiry_date,
                data.currency,
                data.gross_premium,
                data.sum_insured,
            )
            out = self._on_term(inp, term)
        elif isinstance(data, ClaimData) and inp.type in CLAIM_EVENTS:
            claim = _ClaimIn(
                data.claim_id,
                data.policy_id,
                data.policy_number,
                data.date_of_loss,
                data.currency,
                data.reserve_amount,
                data.paid_amount,
                data.paid_to_date,
                data.status,
            )
            out = self._on_claim(inp, claim, encode)
        else:
            out = [RejectOut(inp.id, _not_counted(inp.type))]
        return self._after(inp, out)

    def _after(self, inp: _LedgerInput, out: list[LedgerOut]) -> list[LedgerOut]:
        """What follows every input: its source's watermark, the sequence, closing."""
        w = inp.w
        if inp.src in self._idle:
            self._wake(inp.src)
        self._advance_watermark(inp.src, inp.at if w is None or inp.at > w else w)
        if self._seq != self._saved_seq:
            self._saved_seq = self._seq
            self._store.put("meta|seq", str(self._seq).encode())
        return out + self._progress()

    def on_watermark(self, source: str, watermark: datetime) -> list[LedgerOut]:
        """A source partition's watermark moved (it only ever moves forward)."""
        if watermark.tzinfo is None:
            watermark = watermark.replace(tzinfo=UTC)
        if source in self._idle:
            self._wake(source)
        self._advance_watermark(source, watermark.astimezone(UTC))
        return self._progress()

    def on_idle(self, source: str) -> list[LedgerOut]:
        """``source`` has had nothing to read for a while: it stops holding event time back until
        it sends again (its late events, if any, become adjustments of a later period)."""
        if source not in self._sources or source in self._idle:
            return []
        self._idle.add(source)
        self._store.put(f"idle|{source}", b"1")
        self._set_now(self._event_time())
        return self._progress()

    def _wake(self, source: str) -> None:
        self._idle.discard(source)
        self._store.delete(f"idle|{source}")
        self._set_now(self._event_time())

    def on_close(self, treaty_number: str | None, period_id: str) -> list[LedgerOut]:
        """Close ``period_id`` of ``treaty_number`` (``None``: the regulatory day) and every earlier
        open period: their partials are emitted now.  A malformed command is rejected."""
        what = f"close {treaty_number or 'regulatory'} {period_id}"
        try:
            cal = self._by_name.get("reg" if treaty_number is None else f"t|{treaty_number}")
            if cal is None:
                self._book.treaty(str(treaty_number))  # raises, naming the known treaties
                raise AssertionError("unreachable")  # pragma: no cover
            period = cal.by_id(period_id)
        except TreatyConfigError as exc:
            return [RejectOut(what, f"bad close command: {exc}")]
        out: list[LedgerOut] = []
        while cal.open.start <= period.start:
            out.append(self._emit(cal))
        self._next_close = min(cal.closes_at(cal.open) for cal in self._calendars)
        return out

    # --- counting -----------------------------------------------------------------------------

    def _policy(self, policy_id: str) -> _Policy | None:
        policy = self._policies.get(policy_id)
        if policy is None:
            raw = self._store.get(f"pol|{policy_id}")
            if raw is None:
                return None
            policy = _Policy.from_bytes(raw)
            self._cache(policy_id, policy)
        return policy

    def _cache(self, policy_id: str, policy: _Policy) -> None:
        if len(self._policies) >= _POLICY_CACHE_LIMIT:
            self._policies.clear()
        self._policies[policy_id] = policy

    def _save(self, policy_id: str, policy: _Policy) -> None:
        if policy_id not in self._policies:
            self._cache(policy_id, policy)
        self._store.put(f"pol|{policy_id}", policy.to_bytes())

    def _on_term(self, inp: _LedgerInput, data: _PolicyIn) -> list[LedgerOut]:
        policy = self._policy(data.policy_id) or _Policy([], set())
        if inp.id in policy.seen:
            return []
        treaty = self._book.attach(data.line_of_business, data.territory, data.currency, data.inception_date)
        share = (
            None
            if treaty is None
            else self._book.share(treaty, data.sum_insured, data.currency, data.inception_date)
        )
        term = _Term(
            inception=data.inception_date,
            expiry=data.expiry_date,
            currency=data.currency,
            line_of_business=data.line_of_business,
            territory=data.territory,
            treaty=None if treaty is None else treaty.treaty_number,
            share=share,
            w=inp.w,
        )
        policy.terms.append(term)
        self._count_policy_event(inp, data, term)
        policy.seen.add(inp.id)
        out = self._release(data.policy_id, policy)
        self._save(data.policy_id, policy)
        return out

    def _on_change(self, inp: _LedgerInput, data: _ChangeIn) -> list[LedgerOut]:
        policy = self._policy(data.policy_id)
        if policy is None:
            return [RejectOut(inp.id, f"{inp.type} for unknown policy {data.policy_id}")]
        if inp.id in policy.seen:
            return []
        term = policy.term_for(data.effective_date)
        if term is None:
            return [
                RejectOut(
                    inp.id,
                    f"{inp.type}: no term of policy {data.policy_id} covers the effective date "
                    f"{data.effective_date.isoformat()}",
                )
            ]
        self._count_policy_event(inp, data, term)
        policy.seen.add(inp.id)
        self._save(data.policy_id, policy)
        return []

    def _count_policy_event(self, inp: _LedgerInput, data: _PolicyIn, term: _Term) -> None:
        ccy = data.currency
        if isinstance(data, _ChangeIn):
            change = True
            gross = data.premium_change
            effective = data.effective_date
        else:
            change = False
            gross = data.gross_premium
            effective = data.inception_date
        sum_insured = _ZERO[ccy] if inp.type == "policy.cancelled" else data.sum_insured
        gross_text = format(gross, "f")
        sum_insured_text = format(sum_insured, "f")
        number_json = _q(data.policy_number)
        if term.treaty is not None:
            share = term.share
            assert share is not None
            cal = self._by_treaty[term.treaty]
            period, adjustment_of = self._place(cal, inp.day, inp.w)
            zero = _ZERO_TEXT[ccy]
            additional = gross_text if change and gross > 0 else zero
            returned = gross_text if change and gross < 0 else zero
            ceded = format(round_c(dec_mul(gross, share), ccy), "f")
            ceded_sum_insured = format(round_c(dec_mul(sum_insured, share), ccy), "f")
            value = (
                f'{{"premium":{{"additional_premium":"{additional}",'
                f'"adjustment_of":{"null" if adjustment_of is None else _q(adjustment_of)},'
                f'"ceded_premium":"{ceded}","ceded_sum_insured":"{ceded_sum_insured}",'
                f'"cession_percentage":"{term.percent_text}","currency":"{ccy}",'
                f'"effective_date":"{effective.isoformat()}","event_id":{inp.id_json},'
                f'"expiry_date":"{term.expiry_text}","gross_premium":"{gross_text}",'
                f'"inception_date":"{term.inception_text}","policy_number":{number_json},'
                f'"return_premium":"{returned}","sum_insured":"{sum_insured_text}",'
                f'"transaction_date":"{inp.day_text}","transaction_type":"{_TRANSACTION_TYPES[inp.type]}"}}}}'
            ).encode()
            seq = self._seq
            self._seq = seq + 1
            self._add_row(cal, period, seq, _PREMIUM, (data.policy_number, inp.day_text, inp.id), value)
        territory = data.territory
        self._put_regulatory(
            inp,
            inp.w,
            f'{{"claim_id":null,"currency":"{ccy}","event_date":"{inp.day_text}",'
            f'"event_id":{inp.id_json},"event_type":"{inp.type}","gross_premium":"{gross_text}",'
            f'"line_of_business":{_q(data.line_of_business)},',
            f'"paid_amount":null,"policy_number":{number_json},"record_type":"POLICY",'
            f'"reserve_amount":null,"sum_insured":"{sum_insured_text}",'
            f'"territory":{"null" if territory is None else _q(territory)}}}',
        )

    def _on_claim(
        self, inp: _LedgerInput, data: _ClaimIn, raw: bytes | Callable[[], bytes]
    ) -> list[LedgerOut]:
        policy = self._policy(data.policy_id)
        if policy is not None and inp.id in policy.seen:
            return []
        if inp.id in self._waiting_ids:
            return []
        term = None if policy is None else policy.term_for(data.date_of_loss)
        if policy is None or term is None:
            self._wait(inp, data, raw)
            return []
        out = self._count_claim(inp, data, term, None)
        if not out:
            policy.seen.add(inp.id)
            self._save(data.policy_id, policy)
        return out

    def _count_claim(
        self, inp: _LedgerInput, data: _ClaimIn, term: _Term, stored: bytes | None
    ) -> list[LedgerOut]:
        """Count a claim event on its term (with ``W = max(W_claim, W_term)``); a currency other
        than the term's is rejected (``stored``: the bytes of a claim that waited)."""
        if data.currency != term.currency:
            return [
                RejectOut(
                    inp.id,
                    f"claim {data.claim_id} is in {data.currency} but the term of policy "
                    f"{data.policy_id} covering its date of loss is in {term.currency}",
                    stored,
                )
            ]
        w = _later(inp.w, term.w)
        paid = format(data.paid_amount, "f")
        reserve = format(data.reserve_amount, "f")
        claim_json = _q(data.claim_id)
        number_json = _q(data.policy_number)
        if term.treaty is not None:
            cal = self._by_treaty[term.treaty]
            period, adjustment_of = self._place(cal, inp.day, w)
            head = (
                f'{{"claim":{{"adjustment_of":{"null" if adjustment_of is None else _q(adjustment_of)},'
                f'"claim_id":{claim_json},"currency":"{data.currency}",'
                f'"date_of_loss":"{data.date_of_loss.isoformat()}","event_id":{inp.id_json},'
                f'"paid_amount":"{paid}","paid_to_date":"{format(data.paid_to_date, "f")}",'
                f'"policy_number":{number_json},"reserve_amount":"{reserve}",'
            ).encode()
            tail = f'"seq":0,"share":"{term.share_text}","status":{_q(data.status)}}}}}'.encode()
            seq = self._seq  # orders the claim's movements when the partial is built
            self._seq = seq + 1
            sort_key = (data.claim_id, adjustment_of is not None, adjustment_of or "", seq)
            self._add_row(cal, period, seq, _CLAIM, sort_key, head + tail, len(head))
        territory = term.territory
        self._put_regulatory(
            inp,
            w,
            f'{{"claim_id":{claim_json},"currency":"{data.currency}","event_date":"{inp.day_text}",'
            f'"event_id":{inp.id_json},"event_type":"{inp.type}","gross_premium":null,'
            f'"line_of_business":{_q(term.line_of_business)},',
            f'"paid_amount":"{paid}","policy_number":{number_json},"record_type":"CLAIM",'
            f'"reserve_amount":"{reserve}","sum_insured":null,'
            f'"territory":{"null" if territory is None else _q(territory)}}}',
        )
        return []

    def _wait(self, inp: _LedgerInput, data: _ClaimIn, encoded: bytes | Callable[[], bytes]) -> None:
        raw = encoded if isinstance(encoded, bytes) else encoded()
        seq = self._next_seq()
        key = f"wait|{seq:0{_SEQ_DIGITS}d}"
        text = raw.decode("utf-8")
        value = {"policy": data.policy_id, "id": inp.id, "at": inp.at.isoformat(), "raw": text}
        self._store.put(key, canonical_json(value))
        self._remember(_Waiting(seq, key, data.policy_id, inp.id, inp.at, raw, (inp, data)))

    def _release(self, policy_id: str, policy: _Policy) -> list[LedgerOut]:
        """Count, in arrival order, the waiting claims of ``policy_id`` that a term now covers."""
        out: list[LedgerOut] = []
        for seq in list(self._waiting_by_policy.get(policy_id, ())):
            waiting = self._waiting[seq]
            if waiting.parsed is not None:
                inp, data = waiting.parsed
            else:
                try:
                    inp = _decode(waiting.raw)
                    data = _payload(_ClaimIn, inp)
                except _Undecodable as exc:  # stored by an earlier version that read it differently
                    self._forget(waiting)
                    out.append(RejectOut(waiting.event_id, exc.reason, waiting.raw))
                    continue
            term = policy.term_for(data.date_of_loss)
            if term is None:
                continue
            self._forget(waiting)
            if inp.id in policy.seen:
                continue
            rejected = self._count_claim(inp, data, term, waiting.raw)
            if rejected:
                out += rejected
            else:
                policy.seen.add(inp.id)
        return out

    # --- placing rows -------------------------------------------------------------------------

    def _place(self, cal: _Calendar, event_date: date, w: datetime | None) -> tuple[Period, str | None]:
        """The period a row is counted in, and its ``adjustment_of`` (``None``: its own period).

        The own period is the one containing the event date (the first period for an event
        dated before it).  Late (``W ≥ end + grace``): the period containing ``W``.  Either
        way never a closed period: then the first open one.
        """
        own, closes_at = cal.located.get(event_date) or cal.locate(event_date)
        target = own
        if w is not None and w >= closes_at:
            target = cal.locate(w.date())[0]
        first_open = cal.open
        if target.start < first_open.start:
            target = first_open
        return target, (None if target.id == own.id else own.id)

    def _add_row(
        self,
        cal: _Calendar,
        period: Period,
        seq: int,
        kind: int,
        sort_key: tuple[Any, ...],
        value: bytes,
        cut: int = 0,
    ) -> None:
        key = f"row|{cal.name}|{period.id}|{seq:0{_SEQ_DIGITS}d}"
        self._store.put(key, value)
        bucket = cal.buckets.get(period.id)
        if bucket is None:
            bucket = cal.buckets[period.id] = []
        bucket.append((kind, sort_key, key, value, cut))

    def _put_regulatory(self, inp: _LedgerInput, w: datetime | None, head: str, tail: str) -> None:
        """A regulatory row: its canonical JSON up to ``line_of_business`` (``head``), then
        ``original_date``, then from ``paid_amount`` on (``tail``)."""
        cal = self._reg
        day, original_date = self._place(cal, inp.day, w)
        original = "null" if original_date is None else f'"{original_date}"'  # a day id: plain digits
        value = f'{head}"original_date":{original},{tail}'.encode()
        seq = self._seq
        self._seq = seq + 1
        self._add_row(cal, day, seq, _REGULATORY, (inp.day_text, inp.id), value)

    # --- time ---------------------------------------------------------------------------------

    def _advance_watermark(self, source: str, moment: datetime | None) -> None:
        if moment is None:
            return
        known = self._watermarks.get(source)
        if known is not None and moment <= known:
            return
        self._watermarks[source] = moment
        self._store.put(f"wm|{source}", moment.isoformat().encode())
        # Event time is the minimum over the active sources (and never goes back): it can move
        # only when a source at or behind it moves, a source reports for the first time, or
        # some source is idle.
        if source in self._sources and (
            self._now is None or known is None or known <= self._now or self._idle
        ):
            self._set_now(self._event_time())

    def _set_now(self, moment: datetime | None) -> None:
        if moment is None or moment == self._now:
            return
        self._now = moment
        # Saved with the transaction: a rebuilt ledger must not find an earlier event time
        # (after a source woke up behind it) and decide differently than this one did.
        self._store.put("meta|now", moment.isoformat().encode())

    def _progress(self) -> list[LedgerOut]:
        """Dead-letter claims that waited too long; emit the partials of every period that closed."""
        now = self._now
        if now is None:
            return []
        out: list[LedgerOut] = []
        deadlines = self._deadlines
        if deadlines:
            timeout = self._book.unmatched_claim_timeout
            while deadlines and now >= deadlines[0][0] + timeout:
                _, seq = heapq.heappop(deadlines)
                waiting = self._waiting.get(seq)
                if waiting is not None:
                    self._forget(waiting)
                    out.append(RejectOut(waiting.event_id, NO_TERM_REASON, waiting.raw))
        if now < self._next_close:
            return out
        for cal in self._calendars:
            while now >= cal.closes_at(cal.open):
                out.append(self._emit(cal))
        self._next_close = min(cal.closes_at(cal.open) for cal in self._calendars)
        return out

    def _emit(self, cal: _Calendar) -> PartialOut:
        """The partial of the first open period of ``cal``: its rows leave the store."""
        period = cal.open
        entries = cal.buckets.pop(period.id, [])
        delete = self._store.delete
        for entry in entries:
            delete(entry[2])
        nxt = cal.next(period)
        cal.open = nxt
        self._store.put(f"next|{cal.name}", nxt.id.encode())
        # The partial as canonical JSON: keys in sorted order.
        if cal.treaty is None:
            rows = b",".join([entry[3] for entry in sorted(entries, key=_SORT_KEY)])
            value = b"".join(
                (
                    b'{"date":',
                    _q(period.id).encode(),
                    b',"kind":"regulatory"',
                    self._partitions_text,
                    b',"rows":[',
                    rows,
                    b"]",
                    self._source_text,
                    b"}",
                )
            )
        else:
            premium = sorted([e for e in entries if e[0] == _PREMIUM], key=_SORT_KEY)
            # A claim's movements in processing order, grouped per claim and adjustment,
            # numbered from 0: independent of how other claims interleaved.
            claims = sorted([e for e in entries if e[0] == _CLAIM], key=_SORT_KEY)
            claim_rows = b",".join(
                [
                    b'%b"seq":%d%b' % (row[_CLAIM_HEAD:cut], index, row[cut + _SEQ_ZERO_LENGTH : -1])
                    for index, (_, _, _, row, cut) in enumerate(claims)
                ]
            )
            premium_rows = b",".join([e[3][_PREMIUM_HEAD:-1] for e in premium])
            value = b"".join(
                (
                    b'{"claims":[',
                    claim_rows,
                    b'],"kind":"bordereau"',
                    self._partitions_text,
                    b',"period":',
                    _q(period.id).encode(),
                    b',"premium":[',
                    premium_rows,
                    b"]",
                    self._source_text,
                    b',"treaty":',
                    _q(cal.treaty.treaty_number).encode(),
                    b"}",
                )
            )
        return PartialOut(partial_key(cal.partial_key_prefix, period.id), value)


def _not_counted(event_type: str) -> str:
    return f"event type {event_type} is not counted by the bordereaux ledger"


def _event_id_of(raw: bytes) -> str:
    """The ``id`` of an undecodable LedgerInput when it has a usable one, else ``""``."""
    try:
        value = from_json(raw)
    except ValueError:
        return ""
    event_id = value.get("id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= 128 else ""
