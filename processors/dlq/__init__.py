"""Dead-letter tooling: see what failed, and replay dead letters safely.

The command line is ``processors dlq list|show|stats|replay`` (:mod:`processors.dlq.cli`);
the same operations as Python calls::

    from processors.dlq import DlqFilter, replay, scan, stats

    flt = DlqFilter.build(error_classes=["Retriable"], since="2h")
    for dead in scan("broker:9092", "integrations.payments.dlq", flt):
        print(dead.partition, dead.offset, dead.error_class)
    report = replay("broker:9092", load_catalogue(), "payments", flt, operator="alice", dry_run=True)

Reading never joins a consumer group and never commits.  Replays are resumable (progress
in the group ``processors-dlq-replay.<dlq>``), locked per DLQ, rate limited, loop-guarded
by ``x-replay-count`` (repeat failures go to the app's parking topic) and audited on
``integrations.audit``.  The on-call runbook is ``docs/dlq-runbook.md``.
"""

from __future__ import annotations

from processors.dlq.filters import DlqFilter, TimeBound, parse_time_bound
from processors.dlq.inspect import ValueView, describe_value, mask_pii
from processors.dlq.lock import ReplayLock, ReplayLockHeld, ReplayLockLost, lock_group
from processors.dlq.ratelimit import TokenBucket
from processors.dlq.reader import DlqReader, Scan, read_dead_letter, scan, stats
from processors.dlq.records import DeadLetter
from processors.dlq.replay import (
    ProgressMismatch,
    ReplayAborted,
    ReplayPlan,
    ReplayProgress,
    ReplayReport,
    ReplayTarget,
    audit_topic_for,
    default_operator,
    progress_group,
    replay,
)
from processors.dlq.rewrite import DEFAULT_REPLAY_LIMIT, replay_count, replay_headers, should_park
from processors.dlq.summary import DlqStats

__all__ = [
    "DEFAULT_REPLAY_LIMIT",
    "DeadLetter",
    "DlqFilter",
    "DlqReader",
    "DlqStats",
    "ProgressMismatch",
    "ReplayAborted",
    "ReplayLock",
    "ReplayLockHeld",
    "ReplayLockLost",
    "ReplayPlan",
    "ReplayProgress",
    "ReplayReport",
    "ReplayTarget",
    "Scan",
    "TimeBound",
    "TokenBucket",
    "ValueView",
    "audit_topic_for",
    "default_operator",
    "describe_value",
    "lock_group",
    "mask_pii",
    "parse_time_bound",
    "progress_group",
    "read_dead_letter",
    "replay",
    "replay_count",
    "replay_headers",
    "scan",
    "should_park",
    "stats",
]
