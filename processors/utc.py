"""Time is UTC: one conversion for every moment the project takes in.

Whatever the source (an event, an API body, a provider's answer, a stored record, a command
line), a moment is kept as an aware ``datetime`` in UTC.  Two things can go wrong, and both are
refusals with a reason, never an untyped error: a time without a zone (ambiguous), and a time
at the edge of the calendar whose offset carries it past year 1 or year 9999 once converted
(``0001-01-01T00:00:00+14:00``, ``9999-12-31T23:59:59-23:59``: Python's ``astimezone`` raises
``OverflowError`` for those).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

__all__ = ["NAIVE", "OUT_OF_RANGE", "UtcDatetime", "parse_utc", "to_utc", "utc_field"]

NAIVE = "must be timezone-aware: naive datetimes are rejected (send UTC, e.g. 2024-01-15T10:30:00Z)"
OUT_OF_RANGE = "is outside the representable range once converted to UTC"


def to_utc(moment: datetime, *, naive_is_utc: bool = False) -> datetime:
    """``moment`` in UTC.

    ``ValueError`` (its message: :data:`NAIVE` or :data:`OUT_OF_RANGE`) when ``moment`` has no
    zone, unless ``naive_is_utc`` says such a time is UTC, or when it cannot be expressed in UTC.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        if not naive_is_utc:
            raise ValueError(NAIVE)
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is UTC:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(OUT_OF_RANGE) from None


def parse_utc(text: str, *, naive_is_utc: bool = False) -> datetime:
    """ISO-8601 text (``Z`` or an offset) as a UTC datetime; ``ValueError`` naming the rule."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("is not an ISO-8601 time such as 2024-01-15T10:30:00Z") from None
    return to_utc(moment, naive_is_utc=naive_is_utc)


def utc_field(value: datetime) -> datetime:
    """:func:`to_utc` for a pydantic field (``AfterValidator``): the same rules, as coded
    validation errors (``naive_datetime``, ``datetime_range``)."""
    try:
        return to_utc(value)
    except ValueError as exc:
        kind = "naive_datetime" if str(exc) == NAIVE else "datetime_range"
        raise PydanticCustomError(kind, str(exc)) from None


UtcDatetime = Annotated[datetime, AfterValidator(utc_field)]
"""A pydantic field type: an aware datetime, kept in UTC."""
