"""One way to fetch a batch, for both engines: return as soon as a record is there.

``Consumer.consume(n, timeout)`` returns when ``n`` records are in hand *or* the timeout ran
out, so at a moderate rate every batch waits out the whole timeout (100 ms by default): a
latency floor on every hop, paid even by a single record.  :func:`fetch` takes what is already
fetched without waiting; only when nothing is there does it block, until the *first* record
arrives (or the timeout), and then takes whatever else came with it.  Under load the batches
are as large as before; at low rates a record is handed over the moment it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["BatchConsumer", "fetch"]


class BatchConsumer(Protocol):
    def consume(self, num_messages: int, timeout: float) -> Sequence[Any]: ...


def fetch(consumer: BatchConsumer, batch: int, timeout_s: float) -> list[Any]:
    """Up to ``batch`` records, waiting at most ``timeout_s`` and only while none is there."""
    ready = list(consumer.consume(batch, 0))
    if ready or batch <= 0:
        return ready
    first = list(consumer.consume(1, timeout_s))
    if first and batch > 1:
        first.extend(consumer.consume(batch - 1, 0))
    return first
