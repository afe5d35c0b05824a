"""Per-partition bookkeeping: which offsets are unfinished and how far it is safe to commit."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["PartitionState"]


class PartitionState:
    """Offsets of one assigned partition, in the order they were fetched.

    ``next_commit`` is the offset to commit: one past the last offset of the contiguous run of
    finished work from the start.  Work may finish out of order (different keys run
    concurrently); the commit position only moves when the oldest unfinished offset finishes.
    """

    __slots__ = (
        "_done",
        "_offsets",
        "committed",
        "deferred_timer",
        "deferred_until",
        "halted",
        "idle",
        "next_commit",
        "partition",
        "pause_reasons",
        "revoked",
        "running",
        "topic",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._offsets: deque[int] = deque()
        self._done: set[int] = set()
        self.next_commit: int | None = None
        self.committed: int | None = None
        self.pause_reasons: set[str] = set()
        self.revoked = False
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.halted = asyncio.Event()
        """Set when the partition is revoked or the engine drains: waiting work gives up."""
        self.deferred_until: float | None = None
        """Epoch seconds when the head record of this (retry) partition is due, while paused for it."""
        self.deferred_timer: asyncio.TimerHandle | None = None

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def unfinished(self) -> int:
        """Fetched records whose offset cannot be committed yet."""
        return len(self._offsets)

    @property
    def paused(self) -> bool:
        return bool(self.pause_reasons)

    def track(self, offset: int) -> bool:
        """Record a fetched offset; False (ignore it) if it is not past everything tracked so far."""
        last = self._offsets[-1] if self._offsets else (self.next_commit or 0) - 1
        if offset <= last:
            return False
        self._offsets.append(offset)
        return True

    def finish(self, offset: int) -> None:
        offsets = self._offsets
        if offsets and offsets[0] == offset:
            offsets.popleft()
            last = offset
            done = self._done
            while offsets and offsets[0] in done:
                last = offsets.popleft()
                done.discard(last)
            self.next_commit = last + 1
        else:
            self._done.add(offset)

    def started(self) -> None:
        self.running += 1
        self.idle.clear()

    def stopped(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.idle.set()

    def commit_due(self) -> int | None:
        """The offset to commit now, or None when nothing moved since the last commit."""
        if self.next_commit is not None and self.next_commit != self.committed:
            return self.next_commit
        return None
