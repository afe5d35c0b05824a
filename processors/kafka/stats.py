"""Consumer lag from librdkafka's own statistics, for both engines.

librdkafka computes, per assigned partition, ``consumer_lag``: the high watermark (the last
stable offset with ``read_committed``) minus the consumer's committed offset.  Asking it for
statistics every few seconds (``statistics.interval.ms``) costs one JSON document per interval,
delivered on the consumer's own poll thread; no extra broker request is made.
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


def lag_from_stats(document: str) -> LagTable:
    """Per assigned partition, the consumer lag in a librdkafka statistics document."""
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
            value = partition.get("consumer_lag")
            if isinstance(value, int):
                lag[(topic, number)] = value
    return lag


def with_lag_statistics(conf: Mapping[str, Any], store: Callable[[LagTable], None]) -> dict[str, Any]:
    """``conf`` with statistics every :data:`STATS_INTERVAL_MS` handed to ``store`` as a lag table."""

    def on_stats(document: str) -> None:
        try:
            store(lag_from_stats(document))
        except Exception:  # statistics must never break the consumer's poll
            log.exception("consumer statistics could not be read")

    return {**conf, "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": on_stats}
