"""The garbage collector's thresholds while stream processors run.

A processor keeps large, long-lived state (answered-id windows, key-order gates, stores,
caches) and allocates many short-lived containers per record.  With CPython's default
thresholds (700, 10, 10) the youngest generation is collected every few records, and every
few hundred records a full collection walks the whole long-lived heap again: measured in
``bench/bench_payments.py`` (20,000 events), 2,270 collections, 17 of them full, about 280 µs
of CPU per event, a fifth of the app's time; the bordereaux topology lost about 13 % the same
way.  While a processor runs, the thresholds are raised to :data:`THRESHOLDS`: collections
still happen (reference cycles are still freed): the youngest generation about 70 times
less often, full collections far less often still.

:func:`collector_tuned` is a context manager, counted: the thresholds are raised while at
least one holder runs (several runners or loops may share a process) and put back as they
were when the last one leaves.  Thresholds already higher than these (set by a program that
embeds the runner) are left alone.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Final

__all__ = ["THRESHOLDS", "collector_tuned"]

THRESHOLDS: Final = (50_000, 20, 100)
"""(youngest, middle, oldest) generation thresholds while processors run."""

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """Raise the collector's thresholds to :data:`THRESHOLDS` for the duration (see the module doc)."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            current = gc.get_threshold()
            if current[0] < THRESHOLDS[0]:
                _saved = current
                gc.set_threshold(*THRESHOLDS)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
