"""Rows of the bordereaux and of the regulatory files, and their JSON wire form.

* :class:`PremiumRow`: one premium bordereau row (one per policy event of a ceded term).
* :class:`ClaimMovement`: one claim event counted for a treaty; the claims bordereau
  aggregates a claim's movements of a period into one row (:func:`claim_row`).
* :class:`RegulatoryRow`: one row of a regulatory day file (one per counted event).

``to_wire()`` gives a JSON-safe dict (Decimals as strings, dates ISO ``YYYY-MM-DD``) whose
keys are in the order the reports write them; ``from_wire()`` reads it back.  The reports are
built from the wire form itself (a partial's rows are never turned into objects).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from processors.bordereaux.treaties import cession_percentage, dec_mul, dec_sum, round_c

__all__ = [
    "CLAIM_ROW_FIELDS",
    "PREMIUM_ROW_FIELDS",
    "REGULATORY_COLUMNS",
    "ClaimMovement",
    "PremiumRow",
    "RecordType",
    "RegulatoryRow",
    "TransactionType",
    "claim_row",
    "claim_row_from_wire",
    "dec",
]

TransactionType = Literal["NEW_BUSINESS", "RENEWAL", "ENDORSEMENT", "CANCELLATION"]
RecordType = Literal["POLICY", "CLAIM"]

PREMIUM_ROW_FIELDS = (
    "policy_number",
    "transaction_type",
    "event_id",
    "transaction_date",
    "effective_date",
    "inception_date",
    "expiry_date",
    "currency",
    "gross_premium",
    "additional_premium",
    "return_premium",
    "ceded_premium",
    "cession_percentage",
    "sum_insured",
    "ceded_sum_insured",
    "adjustment_of",
)
"""Keys of a premium row, in report order."""

CLAIM_ROW_FIELDS = (
    "claim_id",
    "policy_number",
    "date_of_loss",
    "currency",
    "status",
    "paid_this_period",
    "paid_to_date",
    "outstanding_reserve",
    "incurred",
    "cession_percentage",
    "ceded_paid_this_period",
    "ceded_paid_to_date",
    "ceded_outstanding_reserve",
    "ceded_incurred",
    "adjustment_of",
)
"""Keys of a claims bordereau row, in report order."""

REGULATORY_COLUMNS = (
    "record_type",
    "event_id",
    "event_type",
    "event_date",
    "original_date",
    "policy_number",
    "claim_id",
    "line_of_business",
    "territory",
    "currency",
    "gross_premium",
    "sum_insured",
    "paid_amount",
    "reserve_amount",
)
"""Columns of the regulatory CSV, in order."""


def dec(value: Decimal) -> str:
    """A Decimal as its plain decimal string (``"1185.50"``, never an exponent)."""
    return format(value, "f")


def _opt_dec(value: Decimal | None) -> str | None:
    return None if value is None else dec(value)


def _read_opt_dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _read_opt_date(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class PremiumRow:
    """A premium bordereau row (docs/bordereaux.md, "Premium rows")."""

    policy_number: str
    transaction_type: TransactionType
    event_id: str
    transaction_date: date
    effective_date: date
    inception_date: date
    expiry_date: date
    currency: str
    gross_premium: Decimal
    additional_premium: Decimal
    return_premium: Decimal
    ceded_premium: Decimal
    cession_percentage: Decimal
    sum_insured: Decimal
    ceded_sum_insured: Decimal
    adjustment_of: str | None = None

    @property
    def sort_key(self) -> tuple[str, date, str]:
        return (self.policy_number, self.transaction_date, self.event_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "policy_number": self.policy_number,
            "transaction_type": self.transaction_type,
            "event_id": self.event_id,
            "transaction_date": self.transaction_date.isoformat(),
            "effective_date": self.effective_date.isoformat(),
            "inception_date": self.inception_date.isoformat(),
            "expiry_date": self.expiry_date.isoformat(),
            "currency": self.currency,
            "gross_premium": dec(self.gross_premium),
            "additional_premium": dec(self.additional_premium),
            "return_premium": dec(self.return_premium),
            "ceded_premium": dec(self.ceded_premium),
            "cession_percentage": dec(self.cession_percentage),
            "sum_insured": dec(self.sum_insured),
            "ceded_sum_insured": dec(self.ceded_sum_insured),
            "adjustment_of": self.adjustment_of,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> PremiumRow:
        return cls(
            policy_number=d["policy_number"],
            transaction_type=d["transaction_type"],
            event_id=d["event_id"],
            transaction_date=date.fromisoformat(d["transaction_date"]),
            effective_date=date.fromisoformat(d["effective_date"]),
            inception_date=date.fromisoformat(d["inception_date"]),
            expiry_date=date.fromisoformat(d["expiry_date"]),
            currency=d["currency"],
            gross_premium=Decimal(d["gross_premium"]),
            additional_premium=Decimal(d["additional_premium"]),
            return_premium=Decimal(d["return_premium"]),
            ceded_premium=Decimal(d["ceded_premium"]),
            cession_percentage=Decimal(d["cession_percentage"]),
            sum_insured=Decimal(d["sum_insured"]),
            ceded_sum_insured=Decimal(d["ceded_sum_insured"]),
            adjustment_of=d.get("adjustment_of"),
        )


@dataclass(frozen=True, slots=True)
class ClaimMovement:
    """One claim event counted for a treaty: its amounts after the event and the term's share.

    ``seq`` orders a claim's movements in processing order (per ledger partition);
    ``adjustment_of`` is the original period of a late movement.
    """

    claim_id: str
    policy_number: str
    date_of_loss: date
    currency: str
    status: str
    paid_amount: Decimal
    paid_to_date: Decimal
    reserve_amount: Decimal
    share: Decimal
    event_id: str
    seq: int
    adjustment_of: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "policy_number": self.policy_number,
            "date_of_loss": self.date_of_loss.isoformat(),
            "currency": self.currency,
            "status": self.status,
            "paid_amount": dec(self.paid_amount),
            "paid_to_date": dec(self.paid_to_date),
            "reserve_amount": dec(self.reserve_amount),
            "share": dec(self.share),
            "event_id": self.event_id,
            "seq": self.seq,
            "adjustment_of": self.adjustment_of,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ClaimMovement:
        seq = d["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("seq must be an integer")
        return cls(
            claim_id=d["claim_id"],
            policy_number=d["policy_number"],
            date_of_loss=date.fromisoformat(d["date_of_loss"]),
            currency=d["currency"],
            status=d["status"],
            paid_amount=Decimal(d["paid_amount"]),
            paid_to_date=Decimal(d["paid_to_date"]),
            reserve_amount=Decimal(d["reserve_amount"]),
            share=Decimal(d["share"]),
            event_id=d["event_id"],
            seq=seq,
            adjustment_of=d.get("adjustment_of"),
        )


def claim_row(movements: Sequence[ClaimMovement]) -> dict[str, Any]:
    """The claims bordereau row of one (claim, ``adjustment_of``) from its movements in order.

    Sums ``paid_amount``; status, amounts to date, share, policy number, date of loss and
    currency are the last movement's.
    """
    return claim_row_from_wire([m.to_wire() for m in movements])


def claim_row_from_wire(movements: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`claim_row` from the movements' wire form (as in a partial)."""
    if not movements:
        raise ValueError("a claim row needs at least one movement")
    last = movements[-1]
    ccy = last["currency"]
    share = Decimal(last["share"])
    paid_this_period = round_c(dec_sum(Decimal(m["paid_amount"]) for m in movements), ccy)
    paid_to_date = round_c(Decimal(last["paid_to_date"]), ccy)
    reserve = round_c(Decimal(last["reserve_amount"]), ccy)
    ceded_paid_to_date = round_c(dec_mul(paid_to_date, share), ccy)
    ceded_reserve = round_c(dec_mul(reserve, share), ccy)
    return {
        "claim_id": last["claim_id"],
        "policy_number": last["policy_number"],
        "date_of_loss": last["date_of_loss"],
        "currency": ccy,
        "status": last["status"],
        "paid_this_period": dec(paid_this_period),
        "paid_to_date": dec(paid_to_date),
        "outstanding_reserve": dec(reserve),
        "incurred": dec(dec_sum((paid_to_date, reserve))),
        "cession_percentage": dec(cession_percentage(share)),
        "ceded_paid_this_period": dec(round_c(dec_mul(paid_this_period, share), ccy)),
        "ceded_paid_to_date": dec(ceded_paid_to_date),
        "ceded_outstanding_reserve": dec(ceded_reserve),
        "ceded_incurred": dec(dec_sum((ceded_paid_to_date, ceded_reserve))),
        "adjustment_of": last.get("adjustment_of"),
    }


@dataclass(frozen=True, slots=True)
class RegulatoryRow:
    """A row of a regulatory day file; ``None`` is an empty CSV field.

    ``event_date`` is the UTC date of the event's ``occurred_at``; ``original_date`` is set
    (to the day the event belonged to) only on a late row counted in a later day's file.
    """

    record_type: RecordType
    event_id: str
    event_type: str
    event_date: date
    original_date: date | None
    policy_number: str
    claim_id: str | None
    line_of_business: str
    territory: str | None
    currency: str
    gross_premium: Decimal | None
    sum_insured: Decimal | None
    paid_amount: Decimal | None
    reserve_amount: Decimal | None

    @property
    def sort_key(self) -> tuple[date, str]:
        return (self.event_date, self.event_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "record_type": self.record_type,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_date": self.event_date.isoformat(),
            "original_date": None if self.original_date is None else self.original_date.isoformat(),
            "policy_number": self.policy_number,
            "claim_id": self.claim_id,
            "line_of_business": self.line_of_business,
            "territory": self.territory,
            "currency": self.currency,
            "gross_premium": _opt_dec(self.gross_premium),
            "sum_insured": _opt_dec(self.sum_insured),
            "paid_amount": _opt_dec(self.paid_amount),
            "reserve_amount": _opt_dec(self.reserve_amount),
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> RegulatoryRow:
        return cls(
            record_type=d["record_type"],
            event_id=d["event_id"],
            event_type=d["event_type"],
            event_date=date.fromisoformat(d["event_date"]),
            original_date=_read_opt_date(d.get("original_date")),
            policy_number=d["policy_number"],
            claim_id=d.get("claim_id"),
            line_of_business=d["line_of_business"],
            territory=d.get("territory"),
            currency=d["currency"],
            gross_premium=_read_opt_dec(d.get("gross_premium")),
            sum_insured=_read_opt_dec(d.get("sum_insured")),
            paid_amount=_read_opt_dec(d.get("paid_amount")),
            reserve_amount=_read_opt_dec(d.get("reserve_amount")),
        )

    def csv_fields(self) -> list[str]:
        """The CSV fields in :data:`REGULATORY_COLUMNS` order ("" where not applicable)."""
        wire = self.to_wire()
        return ["" if wire[name] is None else str(wire[name]) for name in REGULATORY_COLUMNS]
