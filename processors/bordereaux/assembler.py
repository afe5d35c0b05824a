"""Stage 3 of the bordereaux app: complete periods into reports and day files.

One :class:`Assembler` per ``integrations.bordereaux.partials`` partition.  It stores each
partial until every ledger partition has sent its own for the key (``<treaty>|<period>`` or
``REG|<day>``), then builds the reports once:

* a treaty period: the premium bordereau, then the claims bordereau, both on
  ``reinsurance.bordereaux`` (key: the treaty number).  Inside the treaty's in-force window
  (the periods containing its inception up to its expiry) both are written even when empty
  (nil reports); for any other period a report is written only when it has rows.
* a regulatory day with rows: the file job on ``integrations.regulatory.files`` (key: the
  day); a day without any row has no file.

The partials are then deleted and the key is remembered as done: a partial that arrives
again for a done key (a replay) is ignored, so a report is built exactly once.

Partials waiting for the others of their key are also kept parsed in memory (a bounded
cache of the store, dropped when the task is rebuilt) so each is parsed once.

Store keys: ``part|<key>|<source partition>`` (a stored partial) and ``done|<key>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic_core import from_json

from processors.bordereaux.ledger import LedgerStore, partial_key
from processors.bordereaux.reports import (
    claims_report_from_wire,
    premium_report_from_wire,
    regulatory_job_from_wire,
)
from processors.bordereaux.treaties import TreatyBook
from processors.errors import DecodeError

__all__ = ["Assembler", "ReportOut"]

_SOURCE_DIGITS = 5
_CACHED_ROWS_LIMIT = 200_000
"""Rows of stored partials kept parsed in memory before the cache starts over."""


@dataclass(frozen=True, slots=True)
class ReportOut:
    """A report for ``reinsurance.bordereaux`` or a file job for ``integrations.regulatory.files``."""

    topic: Literal["bordereaux", "regulatory"]
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class _Partial:
    key: str
    kind: Literal["bordereau", "regulatory"]
    source: int
    partitions: int
    body: dict[str, Any]


def _parse(raw: bytes) -> _Partial:
    try:
        body = from_json(raw)
        kind = body["kind"]
        source, partitions = body["source_partition"], body["partitions"]
        if kind == "bordereau":
            key = partial_key(body["treaty"], body["period"])
        elif kind == "regulatory":
            key = partial_key(None, body["date"])
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if not (isinstance(source, int) and isinstance(partitions, int) and 0 <= source < partitions):
            raise ValueError("source_partition and partitions must be integers, 0 ≤ source < partitions")
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"undecodable bordereaux partial: {exc}") from exc
    return _Partial(key, kind, source, partitions, body)


class Assembler:
    """Builds each report once, when all partials of its period have arrived."""

    def __init__(self, book: TreatyBook, store: LedgerStore) -> None:
        self._book = book
        self._store = store
        self._parts: dict[str, set[int]] = {}
        self._done: set[str] = set()
        self._bodies: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
        """Stored partials kept parsed, with their row counts (a bounded cache of the store)."""
        self._cached_rows = 0
        for key, _ in store.items():
            kind, _, rest = key.partition("|")
            if kind == "part":
                name, _, source = rest.rpartition("|")
                self._parts.setdefault(name, set()).add(int(source))
            elif kind == "done":
                self._done.add(rest)

    def on_partial(self, raw: bytes) -> list[ReportOut]:
        """Store one partial; the reports of its key once every ledger partition's is in."""
        partial = _parse(raw)
        if partial.key in self._done:
            return []
        self._store.put(self._part_key(partial.key, partial.source), raw)
        sources = self._parts.setdefault(partial.key, set())
        sources.add(partial.source)
        if len(sources) < partial.partitions:
            self._cache(partial)
            return []
        bodies = []
        for source in sorted(sources):
            body = partial.body if source == partial.source else self._uncache(partial.key, source)
            if body is None:
                stored = self._store.get(self._part_key(partial.key, source))
                if stored is not None:
                    body = _parse(stored).body
            if body is not None:
                bodies.append(body)
            self._store.delete(self._part_key(partial.key, source))
        del self._parts[partial.key]
        self._done.add(partial.key)
        self._store.put(f"done|{partial.key}", b"")
        if partial.kind == "regulatory":
            return self._day_file(partial.body["date"], bodies)
        return self._bordereaux(partial.body["treaty"], partial.body["period"], bodies)

    def _cache(self, partial: _Partial) -> None:
        body = partial.body
        if partial.kind == "regulatory":
            rows = len(body["rows"])
        else:
            rows = len(body["premium"]) + len(body["claims"])
        self._uncache(partial.key, partial.source)  # a partial sent again replaces the first
        if self._cached_rows + rows > _CACHED_ROWS_LIMIT:
            # A ledger partition far behind the others: what waits is read from the store.
            self._bodies.clear()
            self._cached_rows = 0
        self._bodies[partial.key, partial.source] = (body, rows)
        self._cached_rows += rows

    def _uncache(self, key: str, source: int) -> dict[str, Any] | None:
        cached = self._bodies.pop((key, source), None)
        if cached is None:
            return None
        self._cached_rows -= cached[1]
        return cached[0]

    @staticmethod
    def _part_key(key: str, source: int) -> str:
        return f"part|{key}|{source:0{_SOURCE_DIGITS}d}"

    def _bordereaux(
        self, treaty_number: str, period_id: str, bodies: Iterable[dict[str, Any]]
    ) -> list[ReportOut]:
        treaty = self._book.treaty(treaty_number)
        period = treaty.period_by_id(period_id)
        premium: list[dict[str, Any]] = []
        claims: list[dict[str, Any]] = []
        for body in bodies:
            premium += body["premium"]
            claims += body["claims"]
        in_force = treaty.first_period().start <= period.start <= treaty.last_in_force_period().start
        out: list[ReportOut] = []
        if in_force or premium:
            report = premium_report_from_wire(self._book, treaty, period, premium)
            out.append(ReportOut("bordereaux", treaty_number, report))
        if in_force or claims:
            report = claims_report_from_wire(self._book, treaty, period, claims)
            out.append(ReportOut("bordereaux", treaty_number, report))
        return out

    def _day_file(self, day_id: str, bodies: Iterable[dict[str, Any]]) -> list[ReportOut]:
        day = date.fromisoformat(day_id)
        rows = [row for body in bodies for row in body["rows"]]
        if not rows:
            return []
        return [ReportOut("regulatory", day_id, regulatory_job_from_wire(self._book, day, rows))]
