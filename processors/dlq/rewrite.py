"""The headers of a replayed dead letter, and the loop guard that parks repeat failures.

A replayed record carries the dead letter's headers with three changes: ``x-replay-count``
incremented (missing counts as 0), ``x-due-at`` set to the replay time and ``x-attempts``
reset to ``0``.  Every other header is kept as it was, including the provenance of the
original record (``x-original-topic/partition/offset/timestamp``).  Provenance headers
(``x-…``) appear once each; the event's own headers are passed through untouched.

A record whose ``x-replay-count`` already reached the replay limit is not replayed: it goes
to the app's parking topic with its headers unchanged.  A count that is not a whole number
≥ 0 cannot be trusted to stop a loop, so such records are parked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from processors.runtime.failures import PROVENANCE_HEADERS, H
from processors.runtime.message import HeaderList

__all__ = ["DEFAULT_REPLAY_LIMIT", "replay_count", "replay_headers", "should_park"]

DEFAULT_REPLAY_LIMIT = 3

Headers = Sequence[tuple[str, bytes | None]]


def replay_count(headers: Headers | None) -> int | None:
    """How many times the record was replayed: 0 without the header, ``None`` if it is unreadable."""
    text: str | None = None
    for name, value in headers or ():
        if name == H.REPLAY_COUNT:
            text = (value or b"").decode("utf-8", "replace")
    if text is None:
        return 0
    try:
        count = int(text.strip())
    except ValueError:
        return None
    return count if count >= 0 else None


def should_park(headers: Headers | None, replay_limit: int) -> bool:
    """True when the record has been replayed ``replay_limit`` times (or its count is unreadable)."""
    count = replay_count(headers)
    return count is None or count >= replay_limit


def replay_headers(headers: Headers | None, *, now: datetime | None = None) -> HeaderList:
    """The headers of the record that replays a dead letter carrying ``headers``.

    Provenance headers keep the position of their first occurrence and the value of their
    last; ``x-replay-count``, ``x-due-at`` and ``x-attempts`` are set (appended if missing).
    """
    count = replay_count(headers) or 0
    when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    overrides = {
        H.REPLAY_COUNT: str(count + 1).encode(),
        H.DUE_AT: when.encode(),
        H.ATTEMPTS: b"0",
    }
    last: dict[str, bytes] = {}
    # A replayed record starts its retry schedule again from where it is placed.
    headers = [(name, value) for name, value in headers or () if name != H.RETRY_HOPS]
    for name, value in headers:
        if name in PROVENANCE_HEADERS:
            last[name] = value if value is not None else b""
    last.update(overrides)
    out: HeaderList = []
    placed: set[str] = set()
    for name, value in headers:
        if name not in PROVENANCE_HEADERS:
            out.append((name, value if value is not None else b""))
        elif name not in placed:
            out.append((name, last[name]))
            placed.add(name)
    for name, value in overrides.items():
        if name not in placed:
            out.append((name, value))
    return out
