"""An independent batch recomputation of the bordereaux app's outputs, and a stream generator.

Written from ``docs/bordereaux.md`` alone: it shares nothing with ``processors.bordereaux``
but the event contract.  Tests publish what :func:`generate` returns, run the app, and check
what it produced against :func:`expected` with :func:`compare` (reports),
:func:`compare_regulatory` (file jobs) and :func:`check_manifest`.

The batch calculation reads the stream in publication order, which is one valid processing
order; everything it computes depends only on the order within each source partition, as the
doc requires:

* each source partition's watermark ``W`` before each event;
* duplicates (an ``event_id`` already counted for the policy, claims by their policy) skipped;
* terms per policy in the order of its partition; endorsements and cancellations take the
  latest term containing their effective date;
* a claim event takes the term of its policy containing its date of loss, wherever that term
  is in the stream (a claim read first waits for it), and always ``W = max(W_claim, W of the
  event that started the term)``; a claim whose term never comes is never counted;
* late events (``W ≥ end(P) + grace``) are counted in the period containing ``W`` as
  adjustment rows; regulatory rows likewise with days and the regulatory grace;
* a period exists as a report only once closed: ``end + grace ≤`` the lowest final watermark
  of all source partitions (no close commands).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import yaml

from processors.contract import (
    EVENT_TYPES,
    MINOR_UNITS,
    ClaimData,
    Event,
    PolicyChangeData,
    PolicyData,
)
from processors.errors import ConfigError

__all__ = [
    "CLAIM_TOPIC",
    "POLICY_TOPIC",
    "TAIL_AT",
    "Book",
    "Expected",
    "Published",
    "Treaty",
    "canonical_json",
    "check_manifest",
    "claim_event",
    "closing_tail",
    "compare",
    "compare_regulatory",
    "expected",
    "generate",
    "load_book",
    "partition_for",
    "policy_event",
    "watermarks",
]

POLICY_TOPIC = "insurance.policy.events"
CLAIM_TOPIC = "insurance.claim.events"
SOURCE_TOPICS = (POLICY_TOPIC, CLAIM_TOPIC)

POLICY_TYPES = ("policy.issued", "policy.renewed", "policy.endorsed", "policy.cancelled")
CLAIM_TYPES = ("claim.reported", "claim.reserved", "claim.paid", "claim.settled", "claim.closed")
_TERM_STARTS = ("policy.issued", "policy.renewed")

TAIL_AT = datetime(2025, 1, 15, tzinfo=UTC)
"""When :func:`generate`'s closing tail happens: past every 2024 period's end plus grace."""

_START = datetime(2024, 1, 1, tzinfo=UTC)
_MAIN_END = datetime(2025, 1, 10, tzinfo=UTC)
_LATE_BEFORE = datetime(2024, 11, 1, tzinfo=UTC)
_NAMESPACE = UUID("0b5f3c52-6a8e-4d1e-9a77-2f4c8e9d1b30")
_CONTEXT = Context(prec=60)
_SHARE_PLACES = Decimal("1E-10")
_PERCENT_PLACES = Decimal("0.00000001")
_DURATION = re.compile(r"^\s*(\d+)\s*([dhms])\s*$")
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}

PREMIUM_ROW_FIELDS = (
    "policy_number", "transaction_type", "event_id", "transaction_date", "effective_date",
    "inception_date", "expiry_date", "currency", "gross_premium", "additional_premium",
    "return_premium", "ceded_premium", "cession_percentage", "sum_insured", "ceded_sum_insured",
    "adjustment_of",
)  # fmt: skip
CLAIM_ROW_FIELDS = (
    "claim_id", "policy_number", "date_of_loss", "currency", "status", "paid_this_period",
    "paid_to_date", "outstanding_reserve", "incurred", "cession_percentage",
    "ceded_paid_this_period", "ceded_paid_to_date", "ceded_outstanding_reserve", "ceded_incurred",
    "adjustment_of",
)  # fmt: skip
PREMIUM_TOTALS = (
    "total_gross_premium", "total_additional_premium", "total_return_premium",
    "total_ceded_premium", "total_sum_insured", "total_ceded_sum_insured",
)  # fmt: skip
CLAIM_TOTALS = (
    "total_paid_this_period", "total_paid_to_date", "total_outstanding_reserve", "total_incurred",
    "total_ceded_paid_this_period", "total_ceded_paid_to_date", "total_ceded_outstanding_reserve",
    "total_ceded_incurred",
)  # fmt: skip
REPORT_KEYS_PREMIUM = (
    "report_id", "report_type", "treaty_number", "period", "cedant", "reinsurer", "treaty_type",
    "settlement_currency", "policies", "summary",
)  # fmt: skip
REPORT_KEYS_CLAIMS = (*REPORT_KEYS_PREMIUM[:-2], "claims", "summary")
CSV_HEADER = (
    "record_type", "event_id", "event_type", "event_date", "original_date", "policy_number",
    "claim_id", "line_of_business", "territory", "currency", "gross_premium", "sum_insured",
    "paid_amount", "reserve_amount",
)  # fmt: skip
MANIFEST_KEYS = ("file_name", "sha256", "bytes", "record_count", "control_totals", "report_date")
_CONTROL_FIELDS = ("gross_premium", "paid_amount", "reserve_amount")
_AMOUNT_FIELDS = frozenset(
    {
        *PREMIUM_ROW_FIELDS[8:12], *PREMIUM_ROW_FIELDS[13:15], *CLAIM_ROW_FIELDS[5:9],
        *CLAIM_ROW_FIELDS[10:14], *PREMIUM_TOTALS, *CLAIM_TOTALS, *_CONTROL_FIELDS,
    }
)  # fmt: skip


@dataclass(frozen=True)
class Published:
    """One record as the test publishes it: to ``partition`` of ``topic`` with ``key``."""

    topic: str
    partition: int
    key: str
    event: Event


def partition_for(key: str, partitions: int) -> int:
    """The partition every event of ``key`` goes to (a stable hash, not Kafka's)."""
    return zlib.crc32(key.encode()) % partitions


# --- money and time --------------------------------------------------------------------------


def round_c(amount: Decimal, currency: str) -> Decimal:
    """``ROUND_HALF_UP`` to the currency's minor units."""
    return amount.quantize(Decimal(1).scaleb(-MINOR_UNITS[currency]), ROUND_HALF_UP, context=_CONTEXT)


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _text(amount: Decimal) -> str:
    return format(amount, "f")


def _percent(share: Decimal) -> str:
    return _text((share * 100).quantize(_PERCENT_PLACES, context=_CONTEXT))


def _midnight_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), UTC)


def _duration(value: object, where: str) -> timedelta:
    match = _DURATION.match(str(value))
    if match is None:
        raise ConfigError(f"{where}: {value!r} is not a duration such as 5d")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


# --- the treaty book ------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A reporting period: ``id`` (``2024-01``, ``2024-Q1``, or a day ``2024-01-15``)."""

    id: str
    first: date
    last: date

    @property
    def end(self) -> datetime:
        """Midnight UTC after the last day."""
        return _midnight_after(self.last)


@dataclass(frozen=True)
class Treaty:
    number: str
    reinsurer_code: str
    reinsurer_name: str
    type: str  # quota_share | surplus
    cession_percentage: Decimal | None
    retention: Decimal | None
    retention_currency: str | None
    lines: int | None
    lines_of_business: tuple[str, ...]
    territories: tuple[str, ...]
    currencies: tuple[str, ...]
    settlement_currency: str
    inception: date
    expiry: date
    quarterly: bool
    grace: timedelta

    def period_of(self, day: date) -> Period:
        if self.quarterly:
            quarter = (day.month - 1) // 3
            first = date(day.year, quarter * 3 + 1, 1)
            nxt = date(day.year + 1, 1, 1) if quarter == 3 else date(day.year, quarter * 3 + 4, 1)
            return Period(f"{day.year}-Q{quarter + 1}", first, nxt - timedelta(days=1))
        first = date(day.year, day.month, 1)
        nxt = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
        return Period(f"{day.year}-{day.month:02d}", first, nxt - timedelta(days=1))

    def window(self) -> list[Period]:
        """The periods from the one containing inception to the one containing expiry."""
        periods = [self.period_of(self.inception)]
        while periods[-1].last < self.expiry:
            periods.append(self.period_of(periods[-1].last + timedelta(days=1)))
        return periods

    def accepts(self, line: str, territory: str | None, currency: str, inception: date) -> bool:
        return (
            (not self.lines_of_business or line in self.lines_of_business)
            and (not self.territories or territory in self.territories)
            and currency in self.currencies
            and self.inception <= inception <= self.expiry
        )


@dataclass(frozen=True)
class Book:
    cedant_code: str
    cedant_name: str
    treaties: tuple[Treaty, ...]
    rates: Mapping[tuple[str, str], tuple[tuple[date, Decimal], ...]]  # sorted by effective date
    regulatory_grace: timedelta
    unmatched_claim_timeout: timedelta

    def rate(self, source: str, target: str, day: date) -> Decimal:
        """1 unit of ``source`` in ``target`` on ``day``: the latest entry effective on or before it."""
        if source == target:
            return Decimal(1)
        found = [rate for effective, rate in self.rates.get((source, target), ()) if effective <= day]
        if not found:
            raise ValueError(f"no exchange rate {source}->{target} effective on {day}")
        return found[-1]


def _decimal(value: object, where: str) -> Decimal:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a decimal string")
    try:
        return Decimal(value)
    except InvalidOperation as exc:
        raise ConfigError(f"{where}: {value!r} is not a decimal") from exc


def _day(value: object, where: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a date") from exc


def load_book(path: Path) -> Book:
    """The treaty book, parsed here (not with the app's loader)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    rates: dict[tuple[str, str], list[tuple[date, Decimal]]] = defaultdict(list)
    for i, entry in enumerate(raw.get("exchange_rates") or []):
        where = f"exchange_rates[{i}]"
        pair = (str(entry["from"]), str(entry["to"]))
        rates[pair].append((_day(entry["effective"], where), _decimal(entry["rate"], where)))
    treaties: list[Treaty] = []
    for entry in raw["treaties"]:
        number = str(entry["treaty_number"])
        kind = entry["type"]
        retention = entry.get("retention") or {}
        treaties.append(
            Treaty(
                number=number,
                reinsurer_code=str(entry["reinsurer"]["code"]),
                reinsurer_name=str(entry["reinsurer"]["name"]),
                type=kind,
                cession_percentage=_decimal(entry["cession_percentage"], number)
                if kind == "quota_share"
                else None,
                retention=_decimal(retention["amount"], number) if kind == "surplus" else None,
                retention_currency=str(retention["currency"]) if kind == "surplus" else None,
                lines=int(entry["lines"]) if kind == "surplus" else None,
                lines_of_business=tuple(entry.get("lines_of_business") or ()),
                territories=tuple(entry.get("territories") or ()),
                currencies=tuple(entry.get("currencies") or ()),
                settlement_currency=str(entry["settlement_currency"]),
                inception=_day(entry["inception"], number),
                expiry=_day(entry["expiry"], number),
                quarterly=entry.get("period", "monthly") == "quarterly",
                grace=_duration(entry.get("grace", "5d"), f"{number}.grace"),
            )
        )
    regulatory = raw.get("regulatory") or {}
    return Book(
        cedant_code=str(raw["cedant"]["code"]),
        cedant_name=str(raw["cedant"]["name"]),
        treaties=tuple(treaties),
        rates={pair: tuple(sorted(history)) for pair, history in rates.items()},
        regulatory_grace=_duration(regulatory.get("grace", "1d"), "regulatory.grace"),
        unmatched_claim_timeout=_duration(
            raw.get("unmatched_claim_timeout", "31d"), "unmatched_claim_timeout"
        ),
    )


# --- event builders -------------------------------------------------------------------------


def _event(
    event_type: str, subject: str, payload: Mapping[str, Any], occurred_at: datetime, event_id: UUID | None
) -> Event:
    data = EVENT_TYPES[event_type](**payload)
    return Event(
        event_id=event_id or uuid5(_NAMESPACE, f"{event_type}|{subject}|{occurred_at.isoformat()}"),
        event_type=event_type,
        source="policy-admin" if event_type.startswith("policy.") else "claims-system",
        occurred_at=occurred_at,
        subject=subject,
        data=data,
    )


def policy_event(
    event_type: str,
    *,
    occurred_at: datetime,
    policy_id: str,
    line_of_business: str,
    territory: str | None,
    inception: date,
    expiry: date,
    currency: str,
    gross_premium: Decimal | str,
    sum_insured: Decimal | str,
    effective_date: date | None = None,
    premium_change: Decimal | str | None = None,
    policy_number: str | None = None,
    event_id: UUID | None = None,
    partitions: int = 6,
) -> Published:
    """A valid policy event as published (``event_id`` derived from the rest when not given)."""
    payload: dict[str, Any] = {
        "policy_id": policy_id,
        "policy_number": policy_number or policy_id.replace("POL", "INS", 1),
        "customer_id": "CUST-" + policy_id,
        "line_of_business": line_of_business,
        "territory": territory,
        "inception_date": inception,
        "expiry_date": expiry,
        "currency": currency,
        "gross_premium": Decimal(gross_premium),
        "sum_insured": Decimal(sum_insured),
    }
    if event_type in ("policy.endorsed", "policy.cancelled"):
        assert effective_date is not None
        assert premium_change is not None
        payload["effective_date"] = effective_date
        payload["premium_change"] = Decimal(premium_change)
    if event_type == "policy.cancelled":
        payload["cancellation_reason"] = "Customer request"
    event = _event(event_type, policy_id, payload, occurred_at, event_id)
    return Published(POLICY_TOPIC, partition_for(policy_id, partitions), policy_id, event)


def claim_event(
    event_type: str,
    *,
    occurred_at: datetime,
    claim_id: str,
    policy_id: str,
    date_of_loss: date,
    currency: str,
    reserve_amount: Decimal | str,
    paid_amount: Decimal | str,
    paid_to_date: Decimal | str,
    status: str = "OPEN",
    settled_amount: Decimal | str | None = None,
    policy_number: str | None = None,
    event_id: UUID | None = None,
    partitions: int = 6,
) -> Published:
    """A valid claim event as published (``event_id`` derived from the rest when not given)."""
    payload: dict[str, Any] = {
        "claim_id": claim_id,
        "policy_id": policy_id,
        "policy_number": policy_number or policy_id.replace("POL", "INS", 1),
        "date_of_loss": date_of_loss,
        "currency": currency,
        "reserve_amount": Decimal(reserve_amount),
        "paid_amount": Decimal(paid_amount),
        "paid_to_date": Decimal(paid_to_date),
        "status": status,
    }
    if settled_amount is not None:
        payload["settled_amount"] = Decimal(settled_amount)
    event = _event(event_type, claim_id, payload, occurred_at, event_id)
    return Published(CLAIM_TOPIC, partition_for(claim_id, partitions), claim_id, event)


# --- generator ------------------------------------------------------------------------------


@dataclass
class _Draft:
    seq: int
    at: datetime
    topic: str
    key: str
    event_type: str
    payload: dict[str, Any]
    event_id: UUID
    pub_at: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.pub_at = self.at


class _Generator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.seq = 0
        self.claims = 0

    def draft(self, at: datetime, topic: str, key: str, event_type: str, payload: dict[str, Any]) -> _Draft:
        self.seq += 1
        event_id = UUID(int=self.rng.getrandbits(128), version=4)
        return _Draft(self.seq, at, topic, key, event_type, payload, event_id)

    def time_on(self, day: date) -> datetime:
        return datetime.combine(day, time(), UTC) + timedelta(seconds=self.rng.randrange(86_400))

    def after(self, at: datetime, low_days: int, high_days: int) -> datetime:
        return at + timedelta(seconds=self.rng.randrange(low_days * 86_400, high_days * 86_400 + 1) + 1)

    def between(self, low: datetime, high: datetime) -> datetime:
        span = int((high - low).total_seconds())
        return low + timedelta(seconds=self.rng.randrange(1, max(span, 2)))

    def profile(self) -> tuple[str, str | None, str, int]:
        """Line of business, territory, currency and sum insured (in cents) of a new policy."""
        rng = self.rng
        pick = rng.random()
        territory: str | None
        if pick < 0.45:
            line, territory = "PROPERTY", rng.choices(["US", "CA", "GB", "FR"], weights=[4, 2, 3, 3])[0]
            bands = [(50_000, 240_000), (260_000, 1_200_000), (1_300_000, 5_000_000)]
            exact = 250_000
        elif pick < 0.70:
            line, territory = "MOTOR", rng.choice(["US", "GB", "FR", "DE", "CA"])
            bands, exact = [(8_000, 120_000)], 0
        elif pick < 0.85:
            line, territory = "MARINE", rng.choice([None, None, "GB", "US", "NO", "SG"])
            bands = [(200_000, 950_000), (1_050_000, 9_000_000), (10_000_000, 25_000_000)]
            exact = 1_000_000
        else:
            line, territory = "LIABILITY", rng.choice(["US", "GB"])
            bands, exact = [(100_000, 2_000_000)], 0
        home = {"US": "USD", "CA": "USD", "SG": "USD", "GB": "GBP", "FR": "EUR", "DE": "EUR", "NO": "EUR"}
        currency = home.get(territory or "", "USD")
        if rng.random() < 0.15:
            currency = rng.choice(["USD", "EUR", "GBP"])
        if exact and rng.random() < 0.03:
            units = exact
        else:
            low, high = bands[rng.choices(range(len(bands)), weights=[3, 4.5, 2.5][: len(bands)])[0]]
            units = rng.randrange(low, high) // 100 * 100
        return line, territory, currency, units * 100

    def policy(self, idx: int) -> list[_Draft]:
        """One policy's events: policy events first (chronological), then its claims'."""
        rng = self.rng
        pid, pno = f"POL-{self.seed}-{idx:06d}", f"INS-{self.seed}-{idx:06d}"
        line, territory, currency, si = self.profile()
        premium = si * rng.randrange(20, 250) // 10_000 + rng.randrange(100)
        inception = date(2024, 1, 1) + timedelta(days=rng.randrange(350))
        backdated = rng.random() < 0.05
        policy_drafts: list[_Draft] = []
        claim_drafts: list[_Draft] = []
        last = _START
        base = {"policy_id": pid, "policy_number": pno, "customer_id": f"CUST-{self.seed}-{idx:06d}"}
        for term_no in range(3):
            length = rng.choice([91, 182, 365, 365])
            expiry = inception + timedelta(days=length - 1)
            if term_no == 0:
                start = (
                    self.time_on(inception + timedelta(days=rng.randrange(2, 13)))
                    if backdated
                    else self.time_on(inception - timedelta(days=rng.randrange(21)))
                )
            else:
                start = self.time_on(inception - timedelta(days=rng.randrange(1, 21)))
            if start < _START:  # issued on the first days of the year instead
                start = self.between(_START, max(_midnight_after(inception), _START + timedelta(days=2)))
            start = max(start, last + timedelta(seconds=1))
            if start >= _MAIN_END:
                break
            terms = {**base, "line_of_business": line, "territory": territory, "inception_date": inception}
            terms |= {"expiry_date": expiry, "currency": currency}
            payload = {**terms, "gross_premium": _money(premium), "sum_insured": _money(si)}
            if term_no:
                payload["previous_policy_number"] = pno
            event_type = "policy.renewed" if term_no else "policy.issued"
            policy_drafts.append(self.draft(start, POLICY_TOPIC, pid, event_type, payload))
            last = start
            term_end = min(_midnight_after(expiry), _MAIN_END)
            for _ in range(rng.choices([0, 1, 2], weights=[55, 30, 15])[0]):
                at = max(self.between(last, term_end), last + timedelta(seconds=1))
                if at >= _MAIN_END:
                    break
                if rng.random() < 0.6:
                    change = premium * rng.randrange(1, 30) // 100 + rng.randrange(1, 100)
                else:
                    change = -min(premium, premium * rng.randrange(1, 30) // 100 + rng.randrange(100))
                premium += change
                if rng.random() < 0.3:
                    si = max(100_000, si * rng.randrange(80, 125) // 100 // 100 * 100)
                effective = min(max(at.date(), inception), expiry)
                payload = {**terms, "gross_premium": _money(premium), "sum_insured": _money(si)}
                payload |= {"effective_date": effective, "premium_change": _money(change)}
                policy_drafts.append(self.draft(at, POLICY_TOPIC, pid, "policy.endorsed", payload))
                last = at
            cancelled = False
            if rng.random() < 0.12:
                at = max(self.between(last, term_end), last + timedelta(seconds=1))
                if at < _MAIN_END:
                    effective = min(max(at.date(), inception), expiry)
                    remaining = (expiry - effective).days + 1
                    refund = min(premium, premium * remaining // length + (1 if premium else 0))
                    premium -= refund
                    payload = {**terms, "gross_premium": _money(premium), "sum_insured": _money(si)}
                    payload |= {"effective_date": effective, "premium_change": _money(-refund)}
                    payload["cancellation_reason"] = "Customer request"
                    policy_drafts.append(self.draft(at, POLICY_TOPIC, pid, "policy.cancelled", payload))
                    last, cancelled = at, True
            count = rng.choices([0, 1, 2], weights=[70, 22, 8])[0]
            for n in range(count + (1 if backdated and term_no == 0 else 0)):
                early = backdated and term_no == 0 and n == count
                claim_drafts += self.claim(pid, pno, inception, expiry, currency, si, early=early)
            if cancelled or rng.random() >= 0.35:
                break
            inception = expiry + timedelta(days=1)
            premium += premium * rng.randrange(0, 9) // 100
            si = si * rng.randrange(100, 111) // 100 // 100 * 100
        return policy_drafts + claim_drafts

    def claim(
        self, pid: str, pno: str, inception: date, expiry: date, currency: str, si: int, *, early: bool
    ) -> list[_Draft]:
        """One claim's events, chronological, with consistent reserve and paid amounts."""
        rng = self.rng
        last_day = min(expiry, _MAIN_END.date() - timedelta(days=3))
        if last_day < inception:
            return []
        self.claims += 1
        claim_id = f"CLM-{self.seed}-{self.claims:06d}"
        if early:  # reported before the (backdated) policy was issued
            loss = inception + timedelta(days=rng.randrange(2))
            at = self.time_on(loss)
        else:
            loss = inception + timedelta(days=rng.randrange((last_day - inception).days + 1))
            at = self.time_on(loss + timedelta(days=rng.randrange(11)))
        if at >= _MAIN_END:
            return []
        reserve = max(10_000, si * rng.randrange(5, 150) // 1000 + rng.randrange(100))
        paid_to_date = 0
        settled = False
        base = {"claim_id": claim_id, "policy_id": pid, "policy_number": pno, "date_of_loss": loss}

        def draft(event_type: str, paid: int, status: str, settled_amount: int | None = None) -> _Draft:
            payload: dict[str, Any] = {
                **base,
                "currency": currency,
                "reserve_amount": _money(reserve),
                "paid_amount": _money(paid),
                "paid_to_date": _money(paid_to_date),
                "status": status,
            }
            if settled_amount is not None:
                payload["settled_amount"] = _money(settled_amount)
            return self.draft(at, CLAIM_TOPIC, claim_id, event_type, payload)

        drafts = [draft("claim.reported", 0, "OPEN")]
        for _ in range(rng.randrange(5)):
            at = self.after(at, 2, 40)
            if at >= _MAIN_END:
                break
            options = ["claim.paid", "claim.closed"] if settled else list(CLAIM_TYPES[1:])
            step = rng.choices(options, weights=[4, 1] if settled else [3, 4, 2, 1])[0]
            if step == "claim.reserved":
                reserve = reserve * rng.randrange(70, 141) // 100
                drafts.append(draft(step, 0, "OPEN"))
            elif step == "claim.paid":
                if reserve == 0:
                    continue
                paid = rng.randrange(1, reserve + 1)
                reserve, paid_to_date = reserve - paid, paid_to_date + paid
                drafts.append(draft(step, paid, "SETTLED" if settled else "OPEN"))
            elif step == "claim.settled":
                settled = True
                drafts.append(draft(step, 0, "SETTLED", paid_to_date + reserve))
            else:
                paid = reserve
                reserve, paid_to_date = 0, paid_to_date + paid
                drafts.append(draft(step, paid, "CLOSED", paid_to_date))
                break
        return drafts

    def ghost_claim(self, idx: int) -> list[_Draft]:
        """A claim on a policy that never appears: it waits for ever and is never counted."""
        pid = f"POL-{self.seed}-GHOST-{idx:06d}"
        inception = date(2024, 1, 1) + timedelta(days=self.rng.randrange(300))
        return self.claim(
            pid, pid.replace("POL", "INS", 1), inception, inception, "USD", 5_000_000, early=False
        )


def _key_on(partition: int, partitions: int, prefix: str) -> str:
    for k in range(100_000):
        key = f"{prefix}-P{partition}-{k}"
        if partition_for(key, partitions) == partition:
            return key
    raise AssertionError("no key found")  # pragma: no cover (crc32 spreads well)


def closing_tail(*, partitions: int = 6, at: datetime = TAIL_AT, tag: str = "TAIL") -> list[Published]:
    """One event on each of the ``2 × partitions`` source partitions at ``at`` (+ p seconds).

    They move every source partition's watermark to ``at`` and change no report: the policy
    events are LIABILITY policies incepting after ``at`` (no treaty takes them; their
    regulatory rows fall on a day that ``at`` does not close), the claim events belong to a
    policy that never appears (they wait and are never counted).
    """
    out: list[Published] = []
    later = at.date() + timedelta(days=20)
    for p in range(partitions):
        out.append(
            policy_event(
                "policy.issued",
                occurred_at=at + timedelta(seconds=p),
                policy_id=_key_on(p, partitions, f"POL-{tag}"),
                line_of_business="LIABILITY",
                territory="US",
                inception=later,
                expiry=later + timedelta(days=364),
                currency="USD",
                gross_premium="1000.00",
                sum_insured="100000.00",
                partitions=partitions,
            )
        )
    for p in range(partitions):
        out.append(
            claim_event(
                "claim.reported",
                occurred_at=at + timedelta(seconds=p),
                claim_id=_key_on(p, partitions, f"CLM-{tag}"),
                policy_id=f"POL-{tag}-NEVER-ISSUED",
                date_of_loss=at.date(),
                currency="USD",
                reserve_amount="1000.00",
                paid_amount="0.00",
                paid_to_date="0.00",
                partitions=partitions,
            )
        )
    return out


def generate(seed: int, n_events: int, *, partitions: int = 6) -> list[Published]:
    """``n_events`` events over 2024 in publication order, ending with a closing tail.

    Policies of every line (PROPERTY US/CA/GB/FR, MOTOR, MARINE and LIABILITY, which no treaty
    takes) in USD, EUR and GBP, sums insured below, between and above surplus retentions and
    caps; terms of 3, 6 and 12 months, renewals (some incepting in 2025), endorsements up and
    down, cancellations, claims with their whole life, claims reported before their
    (backdated) policy was issued, claims on policies that never appear; about 1 % duplicates
    (the same event re-published a little later) and 2 % late events (the last event of a
    policy or claim, published 2 to 7 weeks after the end of its month).  Per key, events are
    published in the order they happened, to the key's partition.  The last ``2 × partitions``
    events are :func:`closing_tail` at :data:`TAIL_AT`.
    """
    tail = closing_tail(partitions=partitions, tag=f"TAIL-{seed}")
    if n_events < len(tail):
        raise ValueError(f"n_events must be at least {len(tail)} (the closing tail)")
    gen = _Generator(seed)
    rng = gen.rng
    n_duplicates = n_events // 100
    target = n_events - len(tail) - n_duplicates
    groups: list[list[_Draft]] = []
    total = idx = 0
    while total < target:
        idx += 1
        group = gen.ghost_claim(idx) if idx % 250 == 0 else gen.policy(idx)
        groups.append(group)
        total += len(group)
    excess = total - target
    while excess > 0:  # drop from the end of the last lifecycles: claims first, then policy events
        cut = min(excess, len(groups[-1]))
        del groups[-1][len(groups[-1]) - cut :]
        excess -= cut
        if not groups[-1]:
            groups.pop()
    drafts = [d for group in groups for d in group]

    last_of_key: dict[str, _Draft] = {}
    for d in drafts:
        last_of_key[d.key] = d
    late_types = ("policy.endorsed", "policy.cancelled", *CLAIM_TYPES)
    candidates = sorted(
        (d for d in last_of_key.values() if d.event_type in late_types and d.at < _LATE_BEFORE),
        key=lambda d: d.seq,
    )
    for d in rng.sample(candidates, min(len(candidates), round(n_events * 0.02))):
        month_end = _midnight_after(d.at.date().replace(day=28) + timedelta(days=4)).replace(day=1)
        d.pub_at = min(gen.after(month_end, 15, 45), _MAIN_END - timedelta(hours=1))

    copies: list[tuple[datetime, int, _Draft]] = []
    for n, d in enumerate(rng.sample(drafts, min(len(drafts), n_duplicates))):
        copies.append((min(gen.after(d.pub_at, 0, 3), _MAIN_END), gen.seq + 1 + n, d))

    events = {d.seq: _event(d.event_type, d.key, d.payload, d.at, d.event_id) for d in drafts}
    order = sorted([(d.pub_at, d.seq, d) for d in drafts] + copies, key=lambda item: (item[0], item[1]))
    out = [Published(d.topic, partition_for(d.key, partitions), d.key, events[d.seq]) for _, _, d in order]
    out += tail
    assert len(out) == n_events
    return out


# --- the batch calculation ------------------------------------------------------------------


def watermarks(published: Sequence[Published]) -> list[datetime | None]:
    """``W`` of each record: its source partition's latest ``occurred_at`` before it."""
    marks: dict[tuple[str, int], datetime] = {}
    out: list[datetime | None] = []
    for pub in published:
        source = (pub.topic, pub.partition)
        mark = marks.get(source)
        out.append(mark)
        if mark is None or pub.event.occurred_at > mark:
            marks[source] = pub.event.occurred_at
    return out


@dataclass
class _Term:
    policy_id: str
    line: str
    territory: str | None
    inception: date
    expiry: date
    currency: str
    treaty: Treaty | None
    share: Decimal
    w: datetime | None

    def covers(self, day: date) -> bool:
        return self.inception <= day <= self.expiry


@dataclass(frozen=True)
class _Counted:
    index: int
    event: Event
    w: datetime | None
    term: _Term


@dataclass(frozen=True)
class Expected:
    """What the app must have produced once the stream is consumed.

    ``reports``: report id → the report as parsed from its canonical JSON (amounts and rates
    as ``Decimal``, dates and ids as strings, ``cession_percentage`` as its 8-place string).
    ``regulatory``: ``YYYY-MM-DD`` → (CSV file name, CSV bytes, manifest name, manifest as
    parsed, control totals as ``Decimal``).  ``low_watermark`` is the lowest final watermark
    of the source partitions (``None`` if one never received an event); ``stats`` counts what
    the calculation saw (``counted``, ``duplicates``, ``waiting_claims``, ``late_rows``,
    ``late_regulatory``...).
    """

    reports: dict[str, dict[str, Any]]
    regulatory: dict[str, tuple[str, bytes, str, dict[str, Any]]]
    low_watermark: datetime | None
    stats: dict[str, int]


def _share(book: Book, treaty: Treaty, data: PolicyData) -> Decimal:
    if treaty.type == "quota_share":
        assert treaty.cession_percentage is not None
        return treaty.cession_percentage / 100
    assert treaty.retention is not None
    assert treaty.retention_currency is not None
    assert treaty.lines is not None
    rate = book.rate(data.currency, treaty.retention_currency, data.inception_date)
    insured = round_c(data.sum_insured * rate, treaty.retention_currency)
    retention = treaty.retention
    if insured <= retention:
        return Decimal(0)
    with localcontext(_CONTEXT):
        share = min(insured - retention, treaty.lines * retention) / insured
    return share.quantize(_SHARE_PLACES, ROUND_HALF_UP, context=_CONTEXT)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _count(published: Sequence[Published], book: Book) -> tuple[list[_Counted], dict[str, int]]:
    stats = dict.fromkeys(("duplicates", "waiting_claims", "dead_lettered", "ignored"), 0)
    marks = watermarks(published)
    seen: set[tuple[str, UUID]] = set()
    terms: dict[str, list[_Term]] = defaultdict(list)
    counted: list[_Counted] = []
    claims: list[tuple[int, Event, datetime | None]] = []
    for index, (pub, w) in enumerate(zip(published, marks, strict=True)):
        event, event_type = pub.event, pub.event.event_type
        if event_type not in POLICY_TYPES and event_type not in CLAIM_TYPES:
            stats["ignored"] += 1
            continue
        policy_id: str = event.data.policy_id  # type: ignore[attr-defined]
        if (policy_id, event.event_id) in seen:
            stats["duplicates"] += 1
            continue
        seen.add((policy_id, event.event_id))
        if event_type in CLAIM_TYPES:
            claims.append((index, event, w))
            continue
        data = event.data_as(PolicyData)
        if event_type in _TERM_STARTS:
            treaty = next(
                (
                    t
                    for t in book.treaties
                    if t.accepts(data.line_of_business, data.territory, data.currency, data.inception_date)
                ),
                None,
            )
            term = _Term(
                policy_id,
                data.line_of_business,
                data.territory,
                data.inception_date,
                data.expiry_date,
                data.currency,
                treaty,
                _share(book, treaty, data) if treaty else Decimal(0),
                w,
            )
            terms[policy_id].append(term)
        else:
            effective = event.data_as(PolicyChangeData).effective_date
            found = [t for t in terms[policy_id] if t.covers(effective)]
            if not found:
                raise ValueError(
                    f"{event.event_id}: no term covers the effective date (undefined by the doc)"
                )
            term = found[-1]
        counted.append(_Counted(index, event, w, term))
    for index, event, w in claims:
        claim = event.data_as(ClaimData)
        found = [t for t in terms.get(claim.policy_id, ()) if t.covers(claim.date_of_loss)]
        if not found:
            stats["waiting_claims"] += 1
            continue
        term = found[-1]
        if claim.currency != term.currency:
            stats["dead_lettered"] += 1
            continue
        if term.w is not None and term.w - event.occurred_at >= book.unmatched_claim_timeout:
            # Whether it was still waiting then depends on the interleaving: keep clear of it.
            raise ValueError(f"{event.event_id}: its term may come after unmatched_claim_timeout")
        counted.append(_Counted(index, event, _later(w, term.w), term))
    counted.sort(key=lambda c: c.index)
    stats["counted"] = len(counted)
    return counted, stats


def _premium_row(c: _Counted, adjustment_of: str | None) -> dict[str, Any]:
    data = c.event.data_as(PolicyData)
    event_type = c.event.event_type
    zero = Decimal(0)
    if event_type in _TERM_STARTS:
        gross, insured, effective = data.gross_premium, data.sum_insured, data.inception_date
        additional = returned = zero
    else:
        change = c.event.data_as(PolicyChangeData)
        gross, effective = change.premium_change, change.effective_date
        insured = change.sum_insured if event_type == "policy.endorsed" else zero
        additional, returned = (gross if gross > 0 else zero), (gross if gross < 0 else zero)
    currency, share = data.currency, c.term.share
    kinds = {
        "policy.issued": "NEW_BUSINESS",
        "policy.renewed": "RENEWAL",
        "policy.endorsed": "ENDORSEMENT",
        "policy.cancelled": "CANCELLATION",
    }
    return {
        "policy_number": data.policy_number,
        "transaction_type": kinds[event_type],
        "event_id": str(c.event.event_id),
        "transaction_date": c.event.occurred_at.date().isoformat(),
        "effective_date": effective.isoformat(),
        "inception_date": c.term.inception.isoformat(),
        "expiry_date": c.term.expiry.isoformat(),
        "currency": currency,
        "gross_premium": round_c(gross, currency),
        "additional_premium": round_c(additional, currency),
        "return_premium": round_c(returned, currency),
        "ceded_premium": round_c(gross * share, currency),
        "cession_percentage": _percent(share),
        "sum_insured": round_c(insured, currency),
        "ceded_sum_insured": round_c(insured * share, currency),
        "adjustment_of": adjustment_of,
    }


def _claim_row(events: Sequence[_Counted], adjustment_of: str | None) -> dict[str, Any]:
    last = events[-1].event.data_as(ClaimData)
    share, currency = events[-1].term.share, last.currency
    paid = sum((c.event.data_as(ClaimData).paid_amount for c in events), Decimal(0))
    ceded_to_date = round_c(last.paid_to_date * share, currency)
    ceded_reserve = round_c(last.reserve_amount * share, currency)
    return {
        "claim_id": last.claim_id,
        "policy_number": last.policy_number,
        "date_of_loss": last.date_of_loss.isoformat(),
        "currency": currency,
        "status": last.status,
        "paid_this_period": round_c(paid, currency),
        "paid_to_date": round_c(last.paid_to_date, currency),
        "outstanding_reserve": round_c(last.reserve_amount, currency),
        "incurred": round_c(last.paid_to_date + last.reserve_amount, currency),
        "cession_percentage": _percent(share),
        "ceded_paid_this_period": round_c(paid * share, currency),
        "ceded_paid_to_date": ceded_to_date,
        "ceded_outstanding_reserve": ceded_reserve,
        "ceded_incurred": ceded_to_date + ceded_reserve,
        "adjustment_of": adjustment_of,
    }


def _summary(
    book: Book,
    treaty: Treaty,
    period: Period,
    rows: Sequence[Mapping[str, Any]],
    totals: Sequence[str],
    count_name: str,
    count_field: str,
) -> dict[str, Any]:
    by_currency: dict[str, dict[str, Decimal]] = {}
    for currency in sorted({row["currency"] for row in rows}):
        mine = [row for row in rows if row["currency"] == currency]
        by_currency[currency] = {
            total: sum((row[total.removeprefix("total_")] for row in mine), Decimal(0)) for total in totals
        }
    settle = treaty.settlement_currency
    rates = {currency: book.rate(currency, settle, period.last) for currency in by_currency}
    settlement: dict[str, Any] = {"currency": settle, "rate_date": period.last.isoformat(), "rates": rates}
    for total in totals:
        settlement[total] = sum(
            (round_c(by_currency[cur][total] * rate, settle) for cur, rate in rates.items()),
            round_c(Decimal(0), settle),
        )
    return {
        count_name: len({row[count_field] for row in rows}),
        "total_rows": len(rows),
        "by_currency": by_currency,
        "settlement": settlement,
    }


def _report(
    book: Book, treaty: Treaty, period: Period, kind: str, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    premium = kind == "P"
    if premium:
        rows.sort(key=lambda r: (r["policy_number"], r["transaction_date"], r["event_id"]))
    else:
        rows.sort(key=lambda r: (r["claim_id"], r["adjustment_of"] is not None, r["adjustment_of"] or ""))
    return {
        "report_id": f"BRD-{treaty.number}-{period.id}-{kind}",
        "report_type": "PREMIUM_BORDEREAUX" if premium else "CLAIMS_BORDEREAUX",
        "treaty_number": treaty.number,
        "period": {"id": period.id, "from": period.first.isoformat(), "to": period.last.isoformat()},
        "cedant": {"code": book.cedant_code, "name": book.cedant_name},
        "reinsurer": {"code": treaty.reinsurer_code, "name": treaty.reinsurer_name},
        "treaty_type": "QUOTA_SHARE" if treaty.type == "quota_share" else "SURPLUS",
        "settlement_currency": treaty.settlement_currency,
        "policies" if premium else "claims": rows,
        "summary": _summary(
            book,
            treaty,
            period,
            rows,
            PREMIUM_TOTALS if premium else CLAIM_TOTALS,
            "total_policies" if premium else "total_claims",
            "policy_number" if premium else "claim_id",
        ),
    }


def _regulatory_row(c: _Counted, original: date | None) -> tuple[str, ...]:
    """One CSV row, in the order of :data:`CSV_HEADER`."""
    event = c.event
    currency: str = event.data.currency  # type: ignore[attr-defined]

    def amount(value: Decimal) -> str:
        return _text(round_c(value, currency))

    when = (event.occurred_at.date().isoformat(), original.isoformat() if original else "")
    if event.event_type in CLAIM_TYPES:
        claim = event.data_as(ClaimData)
        return (
            "CLAIM",
            str(event.event_id),
            event.event_type,
            *when,
            claim.policy_number,
            claim.claim_id,
            c.term.line,
            c.term.territory or "",
            currency,
            "",
            "",
            amount(claim.paid_amount),
            amount(claim.reserve_amount),
        )
    data = event.data_as(PolicyData)
    if event.event_type in _TERM_STARTS:
        gross, insured = data.gross_premium, data.sum_insured
    else:
        gross = event.data_as(PolicyChangeData).premium_change
        insured = data.sum_insured if event.event_type == "policy.endorsed" else Decimal(0)
    return (
        "POLICY",
        str(event.event_id),
        event.event_type,
        *when,
        data.policy_number,
        "",
        data.line_of_business,
        data.territory or "",
        currency,
        amount(gross),
        amount(insured),
        "",
        "",
    )


def _regulatory_file(
    book: Book, day: date, rows: list[tuple[str, ...]]
) -> tuple[str, bytes, str, dict[str, Any]]:
    rows.sort(key=lambda r: (r[3], r[1]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    body = buffer.getvalue().encode("utf-8")
    stem = f"REG_{book.cedant_code}_{day.strftime('%Y%m%d')}"
    manifest = {
        "file_name": f"{stem}.csv",
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "record_count": len(rows),
        "control_totals": _control_totals(dict(zip(CSV_HEADER, row, strict=True)) for row in rows),
        "report_date": day.isoformat(),
    }
    return f"{stem}.csv", body, f"{stem}.manifest.json", manifest


def _control_totals(rows: Iterable[Mapping[str, str]]) -> dict[str, dict[str, Decimal]]:
    totals: dict[str, dict[str, Decimal]] = {}
    for row in rows:
        currency = row["currency"]
        zero = round_c(Decimal(0), currency)
        sums = totals.setdefault(currency, dict.fromkeys(_CONTROL_FIELDS, zero))
        for name in _CONTROL_FIELDS:
            if row[name]:
                sums[name] += Decimal(row[name])
    return {currency: totals[currency] for currency in sorted(totals)}


def expected(published: Sequence[Published], book_path: Path, *, partitions: int = 6) -> Expected:
    """Every report and regulatory file the app must have produced from ``published``."""
    book = load_book(book_path)
    counted, stats = _count(published, book)
    final: dict[tuple[str, int], datetime] = {}
    for pub in published:
        source = (pub.topic, pub.partition)
        if source not in final or pub.event.occurred_at > final[source]:
            final[source] = pub.event.occurred_at
    sources = [(topic, p) for topic in SOURCE_TOPICS for p in range(partitions)]
    low = None if any(s not in final for s in sources) else min(final[s] for s in sources)

    premium: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    claim_groups: dict[tuple[str, str], dict[tuple[str, str | None], list[_Counted]]] = defaultdict(dict)
    periods: dict[tuple[str, str], Period] = {}
    regulatory: dict[date, list[tuple[str, ...]]] = defaultdict(list)
    stats |= {"late_rows": 0, "late_regulatory": 0}
    for c in counted:
        day = c.event.occurred_at.date()
        target_day, original = day, None
        if c.w is not None and c.w >= _midnight_after(day) + book.regulatory_grace:
            target_day, original = c.w.date(), day
            stats["late_regulatory"] += 1
        regulatory[target_day].append(_regulatory_row(c, original))
        treaty = c.term.treaty
        if treaty is None:
            continue
        period, adjustment_of = treaty.period_of(day), None
        if c.w is not None and c.w >= period.end + treaty.grace:
            period, adjustment_of = treaty.period_of(c.w.date()), period.id
            stats["late_rows"] += 1
        periods[(treaty.number, period.id)] = period
        if c.event.event_type in POLICY_TYPES:
            premium[(treaty.number, period.id)].append(_premium_row(c, adjustment_of))
        else:
            claim_id: str = c.event.data_as(ClaimData).claim_id
            claim_groups[(treaty.number, period.id)].setdefault((claim_id, adjustment_of), []).append(c)

    reports: dict[str, dict[str, Any]] = {}
    for treaty in book.treaties:
        window = {p.id: p for p in treaty.window()}
        candidates = {**window, **{pid: p for (num, pid), p in periods.items() if num == treaty.number}}
        for period_id in sorted(candidates):
            period = candidates[period_id]
            if low is None or period.end + treaty.grace > low:
                continue
            key = (treaty.number, period_id)
            if period_id in window or key in premium:
                report = _report(book, treaty, period, "P", list(premium.get(key, [])))
                reports[report["report_id"]] = report
            if period_id in window or key in claim_groups:
                rows = [_claim_row(events, adj) for (_, adj), events in claim_groups.get(key, {}).items()]
                report = _report(book, treaty, period, "C", rows)
                reports[report["report_id"]] = report
    files = {
        day.isoformat(): _regulatory_file(book, day, rows)
        for day, rows in sorted(regulatory.items())
        if low is not None and _midnight_after(day) + book.regulatory_grace <= low
    }
    return Expected(reports, files, low, stats)


# --- canonical JSON and comparison ----------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _text(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """``value`` as canonical JSON: keys in the given order, no whitespace, Decimals as strings."""
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class _NotAString:
    """An amount that arrived as something else than a decimal string (never equal to one)."""

    value: Any

    def __str__(self) -> str:
        return f"{self.value!r} (not a decimal string)"


def _amounts(value: Any, key: str = "") -> Any:
    """Amount fields (and rates) as Decimal; per-currency lists turned into dicts by currency."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in ("by_currency", "control_totals") and isinstance(v, list):
                v = {item.get("currency"): {a: b for a, b in item.items() if a != "currency"} for item in v}
            if k == "rates":
                if isinstance(v, list):
                    v = {item.get("currency", item.get("from")): item.get("rate") for item in v}
                out[k] = {cur: _amount(rate) for cur, rate in v.items()} if isinstance(v, dict) else v
                continue
            out[k] = _amounts(v, k)
        return out
    if isinstance(value, list):
        return [_amounts(v, key) for v in value]
    if key in _AMOUNT_FIELDS:
        return _amount(value)
    return value


def _amount(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value  # already converted (an expected value)
    if value == "":
        return value  # an empty CSV field
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return _NotAString(value)
    return _NotAString(value)


def _drop_unit_rate(report: dict[str, Any]) -> None:
    # Whether "rates" lists the settlement currency itself (at 1) is left open by the doc.
    settlement = report.get("summary", {}).get("settlement")
    if isinstance(settlement, dict) and isinstance(settlement.get("rates"), dict):
        currency = settlement.get("currency")
        if settlement["rates"].get(currency) == 1:
            del settlement["rates"][currency]


def _show(value: Any) -> str:
    if isinstance(value, Decimal):
        return _text(value)
    return json.dumps(value) if value is None or isinstance(value, str) else str(value)


def _diff(where: str, want: Any, got: Any, out: list[str]) -> None:
    if isinstance(want, dict) and isinstance(got, dict):
        for k, v in want.items():
            if k not in got:
                out.append(f"{where}.{k}: missing (expected {_show(v)})")
            else:
                _diff(f"{where}.{k}", v, got[k], out)
        out.extend(f"{where}.{k}: not expected (actual {_show(v)})" for k, v in got.items() if k not in want)
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{where}: {len(want)} items expected, {len(got)} actual")
        for i, (a, b) in enumerate(zip(want, got, strict=False)):
            _diff(f"{where}[{i}]", a, b, out)
    elif type(want) is not type(got) or want != got:
        out.append(f"{where}: expected {_show(want)}, actual {_show(got)}")


def _row_key(row: Mapping[str, Any], premium: bool) -> str:
    if premium:
        return f"{row.get('policy_number')}/{row.get('event_id')}"
    return f"{row.get('claim_id')}/adjustment_of={row.get('adjustment_of')}"


def _compare_report(report_id: str, want: dict[str, Any], raw: bytes) -> list[str]:
    out: list[str] = []
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        return [f"{report_id}: not JSON ({exc})"]
    if raw != canonical_json(parsed):
        out.append(f"{report_id}: not canonical JSON (insignificant whitespace or escapes)")
    premium = want["report_type"] == "PREMIUM_BORDEREAUX"
    order = REPORT_KEYS_PREMIUM if premium else REPORT_KEYS_CLAIMS
    if tuple(parsed) != order:
        out.append(f"{report_id}: keys {list(parsed)}, expected in the order {list(order)}")
    got = _amounts(parsed)
    want = _amounts(json.loads(canonical_json(want)))
    for report in (got, want):
        _drop_unit_rate(report)
    rows_name = "policies" if premium else "claims"
    want_rows = {_row_key(r, premium): r for r in want.pop(rows_name)}
    got_list = got.pop(rows_name, None)
    if not isinstance(got_list, list):
        out.append(f"{report_id}: no {rows_name!r} list")
        got_list = []
    got_rows: dict[str, Any] = {}
    for row in got_list:
        key = _row_key(row, premium)
        if key in got_rows:
            out.append(f"{report_id} row {key}: appears twice")
        got_rows[key] = row
    for key, row in want_rows.items():
        if key not in got_rows:
            out.append(
                f"{report_id} row {key}: missing ({_show(row.get('transaction_type', row.get('status')))})"
            )
            continue
        fields = PREMIUM_ROW_FIELDS if premium else CLAIM_ROW_FIELDS
        if tuple(got_rows[key]) != fields:
            out.append(f"{report_id} row {key}: fields {list(got_rows[key])}, expected {list(fields)}")
        _diff(f"{report_id} row {key}", row, got_rows[key], out)
    out.extend(f"{report_id} row {key}: not expected" for key in got_rows if key not in want_rows)
    in_order = [_row_key(r, premium) for r in got_list] == list(want_rows)
    if not out and not in_order and (premium or not _claims_sorted(got_list)):
        out.append(f"{report_id}: rows not in the documented order")
    _diff(report_id, want, got, out)
    return out


def _claims_sorted(rows: Sequence[Mapping[str, Any]]) -> bool:
    # (claim_id, adjustment_of): where null sorts among period ids is left open by the doc.
    def keys(null_first: bool) -> list[tuple[Any, ...]]:
        return [
            (r["claim_id"], (r["adjustment_of"] is None) != null_first, r["adjustment_of"] or "")
            for r in rows
        ]

    return any(keys(flag) == sorted(keys(flag)) for flag in (True, False))


def compare(actual: Mapping[str, bytes], expected: Expected) -> list[str]:
    """Readable differences between the reports the app produced and the expected ones.

    ``actual`` maps report id to the value read from ``reinsurance.bordereaux``.  Amounts are
    compared as Decimals (equal to the cent), everything else as parsed JSON; rows are matched
    by event id (premium) or (claim id, adjustment_of) (claims).  An empty list means equal.
    """
    out: list[str] = []
    for report_id, want in sorted(expected.reports.items()):
        if report_id not in actual:
            rows = want.get("policies", want.get("claims", []))
            out.append(f"{report_id}: missing (expected a report with {len(rows)} rows)")
            continue
        out += _compare_report(report_id, want, actual[report_id])
    out.extend(
        f"{report_id}: not expected (its period is not closed, or it has no rows outside the treaty window)"
        for report_id in sorted(actual)
        if report_id not in expected.reports
    )
    return out


def check_manifest(csv_bytes: bytes, manifest: Mapping[str, Any]) -> list[str]:
    """Differences between a manifest and what it says about ``csv_bytes`` (empty when right)."""
    out: list[str] = []
    if tuple(manifest) != MANIFEST_KEYS:
        out.append(f"manifest keys {list(manifest)}, expected in the order {list(MANIFEST_KEYS)}")
    digest = hashlib.sha256(csv_bytes).hexdigest()
    if manifest.get("sha256") != digest:
        out.append(f"sha256: manifest {manifest.get('sha256')}, file {digest}")
    if manifest.get("bytes") != len(csv_bytes):
        out.append(f"bytes: manifest {manifest.get('bytes')}, file {len(csv_bytes)}")
    try:
        lines = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        return [*out, f"the file is not UTF-8 CSV ({exc})"]
    if not lines or tuple(lines[0]) != CSV_HEADER:
        return [*out, f"header {lines[0] if lines else None}, expected {list(CSV_HEADER)}"]
    rows = [dict(zip(CSV_HEADER, line, strict=False)) for line in lines[1:]]
    if manifest.get("record_count") != len(rows):
        out.append(f"record_count: manifest {manifest.get('record_count')}, file {len(rows)}")
    try:
        totals = _control_totals(rows)
    except (InvalidOperation, KeyError) as exc:
        return [*out, f"the file has an amount that is not a decimal ({exc})"]
    _diff("control_totals", totals, _amounts(dict(manifest)).get("control_totals"), out)
    date_text = str(manifest.get("report_date", "")).replace("-", "")
    if not str(manifest.get("file_name", "")).endswith(f"_{date_text}.csv"):
        out.append(
            f"file_name {manifest.get('file_name')} does not match report_date {manifest.get('report_date')}"
        )
    return out


def _csv_rows(body: bytes) -> dict[str, dict[str, Any]]:
    lines = list(csv.reader(io.StringIO(body.decode("utf-8", errors="replace"), newline="")))
    return {
        line[1]: _amounts(dict(zip(CSV_HEADER, line, strict=False)))
        for line in lines[1:]
        if len(line) == len(CSV_HEADER)
    }


def compare_regulatory(actual: Mapping[str, bytes], expected: Expected) -> list[str]:
    """Differences between the file jobs on ``integrations.regulatory.files`` and the expected files.

    ``actual`` maps the record key (``YYYY-MM-DD``) to the job JSON.  The CSV must be byte for
    byte the expected one; when it is not, the differing rows and fields are listed.
    """
    out: list[str] = []
    for day, (csv_name, body, manifest_name, manifest) in sorted(expected.regulatory.items()):
        if day not in actual:
            out.append(f"REG {day}: missing (expected {manifest['record_count']} rows)")
            continue
        try:
            job = json.loads(actual[day])
            got_manifest = json.loads(job["manifest"])
            got_csv = str(job["csv"]).encode("utf-8")
        except (ValueError, KeyError, TypeError) as exc:
            out.append(f"REG {day}: not a file job ({exc!r})")
            continue
        for name, want in (("report_date", day), ("file_name", csv_name), ("manifest_name", manifest_name)):
            if job.get(name) != want:
                out.append(f"REG {day} {name}: expected {want}, actual {job.get(name)}")
        if job["manifest"].encode("utf-8") != canonical_json(got_manifest):
            out.append(f"REG {day}: the manifest is not canonical JSON")
        if got_csv != body:
            want_rows, got_rows = _csv_rows(body), _csv_rows(got_csv)
            out.append(f"REG {day}: CSV differs ({len(want_rows)} rows expected, {len(got_rows)} actual)")
            for event_id, row in want_rows.items():
                if event_id not in got_rows:
                    out.append(f"REG {day} row {event_id}: missing")
                else:
                    _diff(f"REG {day} row {event_id}", row, got_rows[event_id], out)
            out.extend(f"REG {day} row {e}: not expected" for e in got_rows if e not in want_rows)
        out += [f"REG {day} manifest: {problem}" for problem in check_manifest(got_csv, got_manifest)]
        _diff(f"REG {day} manifest", _amounts(manifest), _amounts(got_manifest), out)
    out.extend(f"REG {day}: not expected" for day in sorted(actual) if day not in expected.regulatory)
    return out
