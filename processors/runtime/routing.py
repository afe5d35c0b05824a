"""Where a failed record goes next, and how one key's order survives retries.

**Routing.** A ``Retriable`` failure moves the record to the app's next retry tier
(``x-due-at`` = now + the tier's delay, or the service's ``Retry-After`` when longer: tiers
shorter than that are skipped). When the tiers are exhausted, or the failure is ``Permanent``
or a contract error, it goes to the DLQ — or to the parking topic when it already came back
``replay_limit`` times from a replay. Every such record keeps the source's partition number.

**Order across retries** (``ordering=key``). While an event of a key waits in a retry tier
(the *head*), later events of that key must not overtake it. They are forwarded into the
head's tier right behind it (same partition, due with the head), in the order they arrive —
parked durably in Kafka, not in memory. When a follower comes due and the head is still
waiting (it failed again and moved on), the follower moves behind it again. Once the head
succeeds or is dead-lettered, the next follower becomes the head and runs; the key is free
when no event of it is left in retry.

The per-key queues are *derived* state: on assignment they are rebuilt from the records
still pending in the retry tiers (from the group's committed offsets to the end), so there is
no second store to keep consistent with the tiers. This needs each source partition and the
retry partitions of the same number on the same instance: key-ordered apps with retry tiers
use the ``range`` assignor and equal partition counts (checked at start-up).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from processors.errors import Backpressure, Retriable
from processors.runtime.failures import H, describe_error, strip_provenance
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord, header_value
from processors.topics.catalogue import AppTopics, RetryTier

__all__ = [
    "Deferred",
    "KeyQueue",
    "OrderingGate",
    "RecordId",
    "RetryRouter",
    "due_at_of",
    "format_time",
    "original_id",
]


class Deferred(Retriable):
    """Not a failure: the record could not be tried now (its endpoint is busy) and waits in a
    tier.  It does not count towards the record's own retries, so deferrals alone never reach
    the dead-letter topic, and it waits at most in tier ``max_tier_index``."""

    def __init__(self, message: str, *, max_tier_index: int = 0) -> None:
        super().__init__(message)
        self.max_tier_index = max_tier_index


RecordId = tuple[str, int, int]
"""Where a record first entered: (topic, partition, offset) — stable across tiers and replays."""

GateKey = tuple[str, int]
"""(source topic, source partition)."""


def format_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def due_at_of(msg: KafkaMessage) -> float | None:
    """Epoch seconds from ``x-due-at``; None when absent or unreadable (due now)."""
    return _parse_time(header_value(msg.headers(), H.DUE_AT))


def original_id(msg: KafkaMessage) -> RecordId:
    headers = msg.headers()
    topic = header_value(headers, H.ORIGINAL_TOPIC)
    if topic is not None:
        try:
            return (
                topic,
                int(header_value(headers, H.ORIGINAL_PARTITION) or -1),
                int(header_value(headers, H.ORIGINAL_OFFSET) or -1),
            )
        except ValueError:
            pass
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


@dataclass
class KeyQueue:
    ids: deque[RecordId]
    head_topic: str
    head_due_s: float


class OrderingGate:
    """Keys with events in retry, per source partition, each with its events in order."""

    def __init__(self) -> None:
        self._queues: dict[GateKey, dict[bytes, KeyQueue]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queue(self, rid: RecordId, key: bytes) -> KeyQueue | None:
        return self._queues.get((rid[0], rid[1]), {}).get(key)

    def follow(self, rid: RecordId, key: bytes) -> KeyQueue | None:
        """None: process the record now.  A queue: forward the record behind its head."""
        queue = self.queue(rid, key)
        if queue is None or queue.ids[0] == rid:
            return None
        if rid not in queue.ids:
            queue.ids.append(rid)
        return queue

    def retrying(self, rid: RecordId, key: bytes, topic: str, due_s: float) -> None:
        """The record (the key's head, or a key not blocked yet) went to retry ``topic``."""
        by_key = self._queues.setdefault((rid[0], rid[1]), {})
        queue = by_key.get(key)
        if queue is None:
            by_key[key] = KeyQueue(deque([rid]), topic, due_s)
        elif queue.ids[0] == rid:
            queue.head_topic, queue.head_due_s = topic, due_s

    def done(self, rid: RecordId, key: bytes) -> None:
        """The record succeeded, was dead-lettered or parked: the next one may run."""
        by_key = self._queues.get((rid[0], rid[1]))
        if not by_key:
            return
        queue = by_key.get(key)
        if queue is None:
            return
        try:
            queue.ids.remove(rid)
        except ValueError:
            return
        if not queue.ids:
            del by_key[key]
            if not by_key:
                del self._queues[(rid[0], rid[1])]

    @property
    def idle(self) -> bool:
        """No key of any partition has events in retry (every record may run at once)."""
        return not self._queues

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for gate_key in [k for k in self._queues if k[1] in gone]:
            del self._queues[gate_key]

    def rebuild(self, pending: Iterable[tuple[RecordId, bytes, int, str, float]]) -> None:
        """Rebuild from records pending in the tiers: (id, key, tier index, tier topic, due)."""
        latest: dict[tuple[GateKey, bytes], dict[RecordId, tuple[int, str, float]]] = {}
        for rid, key, index, topic, due in pending:
            entries = latest.setdefault(((rid[0], rid[1]), key), {})
            seen = entries.get(rid)
            if seen is None or index >= seen[0]:
                entries[rid] = (index, topic, due)
        for (gate_key, key), entries in latest.items():
            ordered = sorted(entries)  # by original offset: the order the events were published
            head = entries[ordered[0]]
            self._queues.setdefault(gate_key, {})[key] = KeyQueue(deque(ordered), head[1], head[2])


class RetryRouter:
    """Turns a failed record into its retry / DLQ / parking record and keeps the gate current."""

    def __init__(
        self,
        topics: AppTopics,
        *,
        app: str,
        replay_limit: int = 3,
        keep_key_order: bool = True,
        ordered: Callable[[KafkaMessage], bool] | None = None,
        jitter_ratio: float = 0.0,
    ) -> None:
        """``ordered`` picks the records whose key order is kept (default: all of them, when
        ``keep_key_order``); ``jitter_ratio`` spreads each tier's delay by up to that fraction
        upwards, so a partner that failed for many records at once is not hit by all of them
        again at the same instant."""
        if not 0.0 <= jitter_ratio <= 1.0:
            raise ValueError("jitter_ratio must be between 0 and 1")
        self.topics = topics
        self.app = app
        self.replay_limit = replay_limit
        self.keep_key_order = keep_key_order and bool(topics.retry_tiers)
        self.gate = OrderingGate()
        self._tier_topics = {tier.topic: tier for tier in topics.retry_tiers}
        self._now = time.time
        self._ordered = ordered
        self._jitter_ratio = jitter_ratio
        self._random = random.Random()

    def _gated(self, msg: KafkaMessage) -> bytes | None:
        """The record's key when its key order is kept, else None."""
        if not self.keep_key_order:
            return None
        key = msg.key()
        if key is None or (self._ordered is not None and not self._ordered(msg)):
            return None
        return key

    @property
    def tier_topics(self) -> frozenset[str]:
        return frozenset(self._tier_topics)

    def due_at(self, msg: KafkaMessage) -> float | None:
        if msg.topic() in self._tier_topics:
            return due_at_of(msg)
        return None

    # -------------------------------------------------------------- before / after processing

    def follow(self, msg: KafkaMessage) -> OutRecord | None:
        """The forward record when ``msg`` must wait behind an earlier event of its key."""
        if self.gate.idle:
            return None  # nothing in retry: the common case costs one lookup
        key = self._gated(msg)
        if key is None:
            return None
        rid = original_id(msg)
        queue = self.gate.follow(rid, key)
        if queue is None:
            return None
        message = f"waiting behind an earlier event of this key in retry (offset {queue.ids[0][2]})"
        return self._record(
            msg,
            topic=queue.head_topic,
            error_class="WaitingBehind",
            message=message,
            attempts=_int(header_value(msg.headers(), H.ATTEMPTS)),
            due_s=queue.head_due_s,
            hops=self._own_hops(msg),
        )

    def already_in_retry(self, msg: KafkaMessage) -> bool:
        """True for a source record redelivered after a crash while a copy of it is in a tier.

        The offset was not committed before the crash, but the record had already moved to a
        retry tier (and its followers behind it): processing it again would run it twice and
        ahead of its own retry.  The tier copy is the one that runs.
        """
        if self.gate.idle:
            return False
        key = self._gated(msg)
        if key is None or msg.topic() in self._tier_topics:
            return False
        rid = original_id(msg)
        queue = self.gate.queue(rid, key)
        return queue is not None and rid in queue.ids

    def succeeded(self, msg: KafkaMessage) -> None:
        if self.gate.idle:
            return
        key = self._gated(msg)
        if key is not None:
            self.gate.done(original_id(msg), key)

    def failed(self, msg: KafkaMessage, exc: Exception, *, group: str, attempts: int) -> OutRecord:
        """The record that takes ``msg`` to its next tier, the DLQ or the parking topic."""
        if isinstance(exc, Backpressure):  # never routed: the runtime waits instead
            raise exc
        total_attempts = _int(header_value(msg.headers(), H.ATTEMPTS)) + attempts
        key = self._gated(msg)
        rid = original_id(msg)
        tier = self._next_tier(msg, exc) if isinstance(exc, Retriable) else None
        error_class, message = describe_error(exc)
        hops = tier.index + 1 if tier is not None else 0
        if isinstance(exc, Deferred):
            tier, hops = self._deferral_tier(msg, exc), self._own_hops(msg)
        if tier is not None:
            retry_after_s = exc.retry_after_s if isinstance(exc, Retriable) else None
            wait_s = max(tier.delay_ms / 1000, retry_after_s or 0.0)
            if self._jitter_ratio:
                wait_s *= 1.0 + self._random.uniform(0.0, self._jitter_ratio)
            due_s = self._now() + wait_s
            if key is not None:
                self.gate.retrying(rid, key, tier.topic, due_s)
            return self._record(
                msg,
                topic=tier.topic,
                error_class=error_class,
                message=message,
                attempts=total_attempts,
                due_s=due_s,
                group=group,
                hops=hops,
            )
        replays = _int(header_value(msg.headers(), H.REPLAY_COUNT))
        topic = self.topics.parked if replays >= self.replay_limit > 0 else self.topics.dlq
        if key is not None:
            self.gate.done(rid, key)
        return self._record(
            msg,
            topic=topic,
            error_class=error_class,
            message=message,
            attempts=total_attempts,
            group=group,
            hops=self._own_hops(msg),
        )

    def _own_hops(self, msg: KafkaMessage) -> int:
        """How many tiers the record itself failed into (``x-retry-hops``).

        Without the header (a source record, or a tier record written before the header
        existed) a tier record counts as having failed into every tier up to its own.
        """
        value = header_value(msg.headers(), H.RETRY_HOPS)
        if value is not None and value.isdigit():
            return int(value)
        tier = self._tier_topics.get(msg.topic() or "")
        return tier.index + 1 if tier is not None else 0

    def _deferral_tier(self, msg: KafkaMessage, exc: Deferred) -> RetryTier | None:
        """Where a deferred record waits: its own next tier capped at the deferral's limit, but
        never shallower than the tier it is in (a key's copies only ever move deeper)."""
        tiers = self.topics.retry_tiers
        if not tiers:
            return None
        current = self._tier_topics.get(msg.topic() or "")
        index = max(current.index if current is not None else 0, min(self._own_hops(msg), exc.max_tier_index))
        return tiers[min(index, len(tiers) - 1)]

    def _next_tier(self, msg: KafkaMessage, exc: Retriable) -> RetryTier | None:
        """The record's own next tier, never shallower than the tier it waits in.

        A record forwarded behind an earlier event of its key waits in that event's tier; when
        it then fails itself, it stays at that tier's delay rather than jumping one deeper, so
        a key whose events fail now and then does not drift down to the longest tier.
        """
        current = self._tier_topics.get(msg.topic() or "")
        index = max(self._own_hops(msg), current.index if current is not None else 0)
        tiers = self.topics.retry_tiers
        tier = tiers[index] if index < len(tiers) else None
        wanted_ms = (exc.retry_after_s or 0.0) * 1000
        while tier is not None and tier.delay_ms < wanted_ms:
            following = self.topics.next_tier(tier)
            if following is None:
                break  # the longest tier left, waiting at least what the service asked
            tier = following
        return tier

    def _record(
        self,
        msg: KafkaMessage,
        *,
        topic: str,
        error_class: str,
        message: str,
        attempts: int,
        due_s: float | None = None,
        group: str | None = None,
        hops: int = 0,
    ) -> OutRecord:
        headers = msg.headers()
        rid = original_id(msg)
        ts_type, ts = msg.timestamp()
        original_ts = header_value(headers, H.ORIGINAL_TIMESTAMP)
        if original_ts is None:
            original_ts = str(ts) if ts_type else ""
        out: HeaderList = strip_provenance(headers)
        out.extend(
            [
                (H.ORIGINAL_TOPIC, rid[0].encode()),
                (H.ORIGINAL_PARTITION, str(rid[1]).encode()),
                (H.ORIGINAL_OFFSET, str(rid[2]).encode()),
                (H.ORIGINAL_TIMESTAMP, original_ts.encode()),
                (H.GROUP, (group or header_value(headers, H.GROUP) or "").encode()),
                (H.APP, self.app.encode()),
                (H.ATTEMPTS, str(attempts).encode()),
                (H.FAILED_AT, format_time(self._now()).encode()),
                (H.ERROR_CLASS, error_class.encode()),
                (H.ERROR_MESSAGE, message.encode()),
                (H.REPLAY_COUNT, (header_value(headers, H.REPLAY_COUNT) or "0").encode()),
                (H.RETRY_HOPS, str(hops).encode()),
            ]
        )
        if due_s is not None:
            out.append((H.DUE_AT, format_time(due_s).encode()))
        return OutRecord(
            topic=topic, key=msg.key(), value=msg.value(), headers=out, partition=msg.partition()
        )


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def pending_from_tiers(
    records: Sequence[KafkaMessage], tiers: Sequence[RetryTier]
) -> list[tuple[RecordId, bytes, int, str, float]]:
    """The rebuild input for :meth:`OrderingGate.rebuild` from records read off the tiers."""
    index = {tier.topic: tier.index for tier in tiers}
    pending = []
    for msg in records:
        key = msg.key()
        topic = msg.topic() or ""
        if key is None or topic not in index:
            continue
        pending.append((original_id(msg), key, index[topic], topic, due_at_of(msg) or 0.0))
    return pending
