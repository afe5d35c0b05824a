"""Durations as written in ``topics.yaml``: a whole number and a unit.

Units: ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``.  Examples: ``250ms``, ``5s``, ``30m``,
``2h``, ``7d``.  Retention also accepts ``forever`` or ``-1`` (Kafka's "no time limit").

:func:`format_duration` writes the canonical form: the largest unit that divides the
value exactly (``60s`` → ``1m``, ``24h`` → ``1d``).  Retry tier topic names use it.
"""

from __future__ import annotations

import re

__all__ = ["FOREVER", "format_duration", "parse_duration", "parse_retention"]

FOREVER = -1
"""``retention.ms`` value meaning "keep forever"."""

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(?P<amount>[0-9]+)(?P<unit>ms|s|m|h|d)")
_UNITS_HINT = "a whole number and a unit: ms, s, m, h or d, e.g. 30s or 7d"


def parse_duration(value: object, *, what: str = "duration", hint: str = _UNITS_HINT) -> int:
    """Milliseconds of a positive duration such as ``"5m"``; ``ValueError`` says why not."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"bad {what} {value}: the unit is missing (write {hint})")
    if not isinstance(value, str) or (match := _DURATION.fullmatch(value.strip())) is None:
        raise ValueError(f"bad {what} {value!r} (write {hint})")
    ms = int(match["amount"]) * _UNIT_MS[match["unit"]]
    if ms <= 0:
        raise ValueError(f"bad {what} {value!r}: must be longer than zero")
    return ms


def parse_retention(value: object) -> int:
    """Milliseconds of a retention, or :data:`FOREVER` for ``forever`` / ``-1``."""
    if isinstance(value, int) and not isinstance(value, bool) and value == FOREVER:
        return FOREVER
    if isinstance(value, str) and value.strip() in ("forever", "-1"):
        return FOREVER
    return parse_duration(value, what="retention", hint=f"{_UNITS_HINT}, or forever")


def format_duration(ms: int) -> str:
    """The canonical text of a duration in milliseconds (``forever`` for :data:`FOREVER`)."""
    if ms == FOREVER:
        return "forever"
    if ms <= 0:
        raise ValueError(f"not a positive duration: {ms} ms")
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
