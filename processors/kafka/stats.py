"""Consumer lag from librdkafka's own statistics, for both engines.

librdkafka computes, per assigned partition, ``consumer_lag``: the high watermark (the last
stable offset with ``read_committed``) minus the consumer's committed offset.  Asking it for
statistics every few seconds (``statistics.interval.ms``) costs one JSON document per interval,
delivered on the consumer's own poll thread; no extra broker request is made.

A partition the group never committed has no ``consumer_lag`` (-1) in librdkafka's view.  Once
it is fetching, the group consumers (``auto.offset.reset=earliest``) read it from the start of
the log, so every record between the log start and the end is not committed yet: that
difference is its lag.  Without it, a retry tier whose records are not due yet (nothing
committed there so far) would show no lag at all, however many records wait in it.

**Transactional consumers** (the exactly-once loop and engine) commit their offsets through
the producer's transactions, which the consumer never learns of: its ``committed_offset`` is
the one it found at assignment, or none.  For them (``transactional=True``) the lag is the end
minus the consumer's position (``app_offset``: the next offset handed to the application, past
transaction markers), falling back to the committed offset and then to the log start before
the first record was read.  Between the loop's steps everything read is committed (an aborted
step seeks back), so this is the records not committed yet; the exactly-once engine's records
in flight are read and not counted.  A trailing transaction marker, which a committed offset
never passes, does not show as lag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["STATS_INTERVAL_MS", "LagTable", "lag_from_stats", "with_lag_statistics"]

log = logging.getLogger(__name__)

STATS_INTERVAL_MS: Final = 5_000

LagTable = dict[tuple[str, int], int]
"""(topic, partition) → records not yet committed by the group (-1: not known yet)."""

_NO_OFFSET: Final = -1001
"""librdkafka's ``RD_KAFKA_OFFSET_INVALID``: no offset known."""


def lag_from_stats(document: str, *, transactional: bool = False) -> LagTable:
    """Per assigned partition, the consumer lag in a librdkafka statistics document (see the
    module doc for ``transactional``)."""
    try:
        stats = json.loads(document)
    except ValueError:
        return {}
    lag: LagTable = {}
    for topic, described in (stats.get("topics") or {}).items():
        for key, partition in (described.get("partitions") or {}).items():
            number = int(key)
            if number < 0 or partition.get("fetch_state") in (None, "none", "stopped"):
                continue  # the internal -1 partition, or one this consumer does not hold
            if transactional:
                value = _behind(partition, partition.get("app_offset"), partition.get("committed_offset"))
            else:
                value = partition.get("consumer_lag")
                if value == -1 and partition.get("committed_offset") == _NO_OFFSET:
                    value = _behind(partition)
            if isinstance(value, int):
                lag[(topic, number)] = value
    return lag


def _behind(partition: Mapping[str, Any], *positions: Any) -> int:
    """The end of the partition minus the first known of ``positions``, else minus the log
    start (the group never committed it: it is read from there); -1 when not known yet."""
    end = partition.get("ls_offset")
    if not isinstance(end, int) or end < 0:
        end = partition.get("hi_offset")
    if not isinstance(end, int) or end < 0:
        return -1
    for position in positions:
        if isinstance(position, int) and position >= 0:
            return max(0, end - position)
    start = partition.get("lo_offset")
    if partition.get("fetch_state") == "active" and isinstance(start, int) and 0 <= start <= end:
        return end - start
    return -1


def with_lag_statistics(
    conf: Mapping[str, Any], store: Callable[[LagTable], None], *, transactional: bool = False
) -> dict[str, Any]:
    """``conf`` with statistics every :data:`STATS_INTERVAL_MS` handed to ``store`` as a lag
    table; ``transactional``: the consumer's offsets are committed in the producer's
    transactions (see the module doc)."""

    def on_stats(document: str) -> None:
        try:
            store(lag_from_stats(document, transactional=transactional))
        except Exception:  # statistics must never break the consumer's poll
            log.exception("consumer statistics could not be read")

    return {**conf, "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": on_stats}
