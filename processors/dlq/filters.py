"""Which dead letters a command looks at.

A :class:`DlqFilter` combines (all optional, all must match):

* ``error_classes``: ``x-error-class`` is one of these (exact, case-sensitive);
* ``since`` / ``until``: the failure time (``x-failed-at``, else the record timestamp) is
  at or after ``since`` and strictly before ``until``.  Each bound is an absolute UTC time
  or a :class:`~datetime.timedelta` meaning "that long before now", resolved when a
  command starts (:func:`parse_time_bound` reads ``2h``, ``3d``, ``2024-05-01``,
  ``2024-05-01T08:00:00Z``);
* ``key``: the record key equals this text (UTF-8);
* ``partition``, ``from_offset``, ``to_offset``: the coordinates (both offsets inclusive);
* ``limit``: at most this many matching records (applied by the command, not by
  :meth:`DlqFilter.matches`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.dlq.records import DeadLetter, format_time
from processors.errors import ConfigError
from processors.topics.durations import parse_duration

__all__ = ["DlqFilter", "TimeBound", "format_time_bound", "parse_time_bound"]

TimeBound = datetime | timedelta
"""An absolute UTC time, or a duration meaning "that long before now"."""

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_RELATIVE = re.compile(r"\d+[a-z]+")


def parse_time_bound(text: str) -> TimeBound:
    """``2h``, ``30m``, ``3d`` (relative to now) or an ISO-8601 time (naive means UTC).

    Raises :class:`ConfigError` with the accepted forms.
    """
    value = text.strip()
    if _RELATIVE.fullmatch(value):
        try:
            return timedelta(milliseconds=parse_duration(value, what="relative time"))
        except ValueError as exc:
            raise ConfigError(f"{exc}; or give an ISO-8601 time such as 2024-05-01T08:00:00Z") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"bad time {text!r}: write a relative time such as 30m, 2h or 3d, or an ISO-8601 "
            "UTC time such as 2024-05-01 or 2024-05-01T08:00:00Z"
        ) from None
    if _DATE_ONLY.fullmatch(value) or when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def format_time_bound(bound: TimeBound) -> str:
    """The text :func:`parse_time_bound` reads back: ``2h`` or an ISO-8601 UTC time."""
    if isinstance(bound, timedelta):
        ms = round(bound.total_seconds() * 1000)
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
            if ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"
    return str(format_time(bound))


def _resolve(bound: TimeBound | None, now: datetime) -> datetime | None:
    if bound is None:
        return None
    if isinstance(bound, timedelta):
        return now - bound
    return bound


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters to select; see the module doc.  Invalid combinations raise ConfigError."""

    error_classes: frozenset[str] = field(default_factory=frozenset)
    since: TimeBound | None = None
    until: TimeBound | None = None
    key: str | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_classes", frozenset(self.error_classes))
        for bound in (self.since, self.until):
            if isinstance(bound, timedelta) and bound <= timedelta(0):
                raise ConfigError("a relative time must be longer than zero")
            if isinstance(bound, datetime) and bound.tzinfo is None:
                raise ConfigError("times must be timezone-aware (UTC)")
        for name in ("partition", "from_offset", "to_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be ≥ 0 (got {value})")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be ≥ 1 (got {self.limit})")
        if self.from_offset is not None and self.to_offset is not None and self.from_offset > self.to_offset:
            raise ConfigError(f"from-offset {self.from_offset} is after to-offset {self.to_offset}")
        if self.since is not None and self.until is not None:
            now = datetime.now(UTC)
            since, until = _resolve(self.since, now), _resolve(self.until, now)
            if since is not None and until is not None and since >= until:
                raise ConfigError(
                    f"since ({format_time_bound(self.since)}) must be before until "
                    f"({format_time_bound(self.until)})"
                )

    @classmethod
    def build(
        cls,
        *,
        error_classes: Iterable[str] = (),
        since: str | None = None,
        until: str | None = None,
        key: str | None = None,
        partition: int | None = None,
        from_offset: int | None = None,
        to_offset: int | None = None,
        limit: int | None = None,
    ) -> DlqFilter:
        """A filter from command-line text (times as :func:`parse_time_bound` reads them)."""
        return cls(
            error_classes=frozenset(error_classes),
            since=parse_time_bound(since) if since else None,
            until=parse_time_bound(until) if until else None,
            key=key,
            partition=partition,
            from_offset=from_offset,
            to_offset=to_offset,
            limit=limit,
        )

    def window(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """The absolute ``[since, until)`` at ``now``."""
        return _resolve(self.since, now), _resolve(self.until, now)

    def offset_range(self, low: int, high: int) -> tuple[int, int]:
        """The offsets ``[start, end)`` to read of a partition holding ``[low, high)``."""
        start = max(low, self.from_offset or 0)
        end = high if self.to_offset is None else min(high, self.to_offset + 1)
        return start, max(start, end)

    def wants_partition(self, partition: int) -> bool:
        return self.partition is None or self.partition == partition

    def matches(self, record: DeadLetter, *, now: datetime) -> bool:
        """Whether ``record`` is selected (every filter but ``limit``)."""
        if not self.wants_partition(record.partition):
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        if self.to_offset is not None and record.offset > self.to_offset:
            return False
        if self.error_classes and record.error_class not in self.error_classes:
            return False
        if self.key is not None and record.key != self.key.encode("utf-8"):
            return False
        if self.since is not None or self.until is not None:
            since, until = self.window(now)
            failed_at = record.failed_at
            if failed_at is None:
                return False
            if since is not None and failed_at < since:
                return False
            if until is not None and failed_at >= until:
                return False
        return True

    def describe(self) -> dict[str, Any]:
        """The filters that are set, JSON-safe, as an operator would type them."""
        described: dict[str, Any] = {}
        if self.error_classes:
            described["error_class"] = sorted(self.error_classes)
        if self.since is not None:
            described["since"] = format_time_bound(self.since)
        if self.until is not None:
            described["until"] = format_time_bound(self.until)
        for name in ("key", "partition", "from_offset", "to_offset", "limit"):
            value = getattr(self, name)
            if value is not None:
                described[name] = value
        return described

    def selection(self) -> dict[str, Any]:
        """The filters that decide *which kind* of record is selected (not where to read).

        Replay progress is shared by every run over a DLQ; a run may resume another's progress
        only when these are equal (coordinates and ``limit`` only narrow the range read).
        """
        return {k: v for k, v in self.describe().items() if k in ("error_class", "since", "until", "key")}

    def selection_fingerprint(self) -> str:
        text = json.dumps(self.selection(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
