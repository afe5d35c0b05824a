"""Exactly-once, stateful stream processing: transactional consume-transform-produce with
local stores restored from compacted changelog topics."""

from processors.streams.loop import Emitter, LoopStats, StageSpec, Task, TransactionalLoop
from processors.streams.store import ChangelogStore, RestoreStats, restore

__all__ = [
    "ChangelogStore",
    "Emitter",
    "LoopStats",
    "RestoreStats",
    "StageSpec",
    "Task",
    "TransactionalLoop",
    "restore",
]
