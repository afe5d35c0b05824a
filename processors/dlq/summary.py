"""Counting dead letters: by error class, by UTC day of failure and by original topic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from processors.dlq.records import DeadLetter, format_time

__all__ = ["UNKNOWN", "DlqStats", "print_breakdown"]

UNKNOWN = "(unknown)"
"""The bucket of records without the header a breakdown groups by."""


@dataclass
class DlqStats:
    """Counts of dead letters; :meth:`add` one record at a time."""

    total: int = 0
    by_error_class: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    by_original_topic: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, record: DeadLetter) -> None:
        self.total += 1
        self.by_error_class[record.error_class or UNKNOWN] += 1
        self.by_original_topic[record.original_topic or UNKNOWN] += 1
        failed_at = record.failed_at
        if failed_at is None:
            self.by_day[UNKNOWN] += 1
            return
        self.by_day[failed_at.date().isoformat()] += 1
        if self.oldest is None or failed_at < self.oldest:
            self.oldest = failed_at
        if self.newest is None or failed_at > self.newest:
            self.newest = failed_at

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: counts sorted by size (error class, topic) or by day."""
        return {
            "total": self.total,
            "oldest": format_time(self.oldest),
            "newest": format_time(self.newest),
            "by_error_class": dict(self.by_error_class.most_common()),
            "by_day": dict(sorted(self.by_day.items())),
            "by_original_topic": dict(self.by_original_topic.most_common()),
        }


def print_breakdown(stats: DlqStats, out: TextIO, *, indent: str = "") -> None:
    """The human form of :meth:`DlqStats.as_dict`."""
    out.write(f"{indent}total   {stats.total}\n")
    if stats.total == 0:
        return
    out.write(f"{indent}oldest  {format_time(stats.oldest) or '-'}\n")
    out.write(f"{indent}newest  {format_time(stats.newest) or '-'}\n")
    sections = (
        ("by error class", stats.by_error_class.most_common()),
        ("by day (UTC)", sorted(stats.by_day.items())),
        ("by original topic", stats.by_original_topic.most_common()),
    )
    for title, rows in sections:
        out.write(f"{indent}{title}:\n")
        width = max(len(name) for name, _ in rows)
        for name, count in rows:
            out.write(f"{indent}  {name.ljust(width)}  {count:>8}\n")
