"""De-duplication of inbound provider events: publish each provider event id once.

Providers retry and sometimes send one event twice.  :class:`Deduplicator` remembers the ids
whose record the broker acknowledged, for ``ttl_s`` (24 h by default), in a bounded in-memory
map, and runs at most one publication per id at a time::

    outcome = await dedupe.once(("payment-gateway", event_id), publish, wait_s=10)

* the id was published within the TTL → ``DUPLICATE`` (``publish`` is not called);
* a publication of the id is running (a retry that overtook the first delivery) → wait for it:
  acknowledged → ``DUPLICATE``; failed → this caller publishes;
* otherwise ``publish()`` runs as a task of its own; when the broker acknowledges it the id is
  remembered and ``PUBLISHED`` is returned.

If the acknowledgement takes longer than ``wait_s``, ``once`` raises :class:`TimeoutError` but
the publication keeps running: a retry of the same id waits for that same publication instead
of starting a second one, and the id is remembered once it is acknowledged.

**Across instances.**  :class:`SeenIdsTopic` shares the map between the API instances through
the compacted topic ``integrations.inbound.dedupe`` (cleanup ``compact,delete``, retention the
TTL).  Once the broker acknowledged a publication, the instance writes a marker to it (key
``provider|event_id``, value ``{"seen_at": <UTC time>}``).  At start-up each instance reads the
markers written in the last TTL (from the offsets of *now − TTL* to the end) into its map and
is not ready until it has; then it keeps tailing the topic (all partitions assigned, no
consumer group, committed records only) and remembers the ids the other instances publish.  A
learned id expires a TTL after its marker was written.  A restart therefore keeps the memory,
and a provider's retry sent to another instance is answered as a duplicate.

**Limits.**  The instances learn each other's ids within milliseconds, not at once: two
deliveries of one id reaching two instances closer together than that can each be published,
and so can an id whose marker was not written (the broker unreachable for longer than the
publication timeout, which is logged and counted, or a publication acknowledged while the
instance stops).  The published event's envelope ``event_id`` is derived, not random (from the
provider event id for a payment confirmation, from the verification for a KYC decision), so
both copies carry the same ``event_id`` and consumers, which de-duplicate on it, apply it once.
Entries beyond ``max_entries`` are dropped oldest first before their TTL ends (logged).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

import confluent_kafka

from processors.adapters import jsonwire
from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.runtime.message import KafkaMessage, OutRecord
from processors.runtime.pending import RecentRecordsReader
from processors.runtime.producer import AsyncProducer

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL_S",
    "SEEN_IDS_TOPIC",
    "Deduplicator",
    "Outcome",
    "SeenIdsTopic",
    "marker_key",
    "parse_marker_key",
]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 500_000

SEEN_IDS_TOPIC: Final = "integrations.inbound.dedupe"
"""The catalogue name of the topic of seen inbound ids (``topics.yaml``)."""

_SEPARATOR: Final = "|"


class Outcome(StrEnum):
    PUBLISHED = "published"
    DUPLICATE = "duplicate"


class Deduplicator:
    """Seen ids with a TTL, bounded in size, plus the publications in flight.

    ``clock`` is monotonic seconds (injectable for tests).  All methods are called from one
    event loop.  ``on_published`` (when set) is called with each id whose publication the
    broker acknowledged, right after it is remembered.
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s > 0:
            raise ConfigError("dedupe ttl_s must be positive")
        if max_entries < 1:
            raise ConfigError("dedupe max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[Hashable, float] = {}
        """id → when it expires (``clock`` seconds)."""
        self._expiries: list[tuple[float, int, Hashable]] = []
        """A heap of (expiry, insertion number, id); entries an id outgrew are skipped when popped."""
        self._order = itertools.count()
        self._in_flight: dict[Hashable, asyncio.Task[None]] = {}
        self.on_published: Callable[[Hashable], None] | None = None
        self.evicted_early = 0
        """Entries dropped for room before their TTL ended (each may let a duplicate through)."""

    def __len__(self) -> int:
        self._expire()
        return len(self._seen)

    def __contains__(self, key: Hashable) -> bool:
        self._expire()
        return key in self._seen

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def remember(self, key: Hashable) -> None:
        """Mark ``key`` as published now (for ``ttl_s``)."""
        self._expire()
        self._insert(key, self._clock() + self.ttl_s)

    def learn(self, key: Hashable, *, age_s: float = 0.0) -> bool:
        """Mark ``key`` as published ``age_s`` seconds ago elsewhere: it is remembered until a
        TTL after that.  An id already remembered keeps its own expiry; an id older than the TTL
        is ignored.  True when the id was not known before."""
        self._expire()
        if key in self._seen:
            return False
        remaining_s = self.ttl_s - max(0.0, age_s)
        if remaining_s <= 0:
            return False
        self._insert(key, self._clock() + remaining_s)
        return True

    def _insert(self, key: Hashable, expires_at: float) -> None:
        self._seen[key] = expires_at
        heapq.heappush(self._expiries, (expires_at, next(self._order), key))
        while len(self._seen) > self.max_entries:
            self._pop_oldest()
            self.evicted_early += 1
            if self.evicted_early == 1 or self.evicted_early % 10_000 == 0:
                log.warning(
                    "dedupe map full (%d entries): dropped ids before their TTL (%d so far)",
                    self.max_entries,
                    self.evicted_early,
                )
        if len(self._expiries) > 2 * len(self._seen) + 1_024:
            # Ids remembered again left entries behind: rebuild the heap from the live ones.
            self._expiries = [(at, next(self._order), key) for key, at in self._seen.items()]
            heapq.heapify(self._expiries)

    def _pop_oldest(self) -> None:
        while self._expiries:
            expires_at, _, key = heapq.heappop(self._expiries)
            if self._seen.get(key) == expires_at:
                del self._seen[key]
                return

    def _expire(self) -> None:
        now = self._clock()
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, _, key = heapq.heappop(heap)
            if self._seen.get(key) == expires_at:
                del self._seen[key]

    async def once(self, key: Hashable, publish: Callable[[], Awaitable[None]], *, wait_s: float) -> Outcome:
        """Publish for ``key`` unless it was published (or is being published); see the module doc.

        Raises :class:`TimeoutError` when the publication (this caller's or the one it waits
        for) is not acknowledged within ``wait_s``; re-raises the publication's own error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if key in self:
                return Outcome.DUPLICATE
            running = self._in_flight.get(key)
            if running is None:
                break
            # Another delivery of this id is being published: its outcome decides.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({running}, timeout=remaining)
            if not done:
                raise TimeoutError

        async def run() -> None:
            await publish()

        task = asyncio.create_task(run())
        self._in_flight[key] = task
        task.add_done_callback(lambda t: self._settled(key, t))
        remaining = max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done:
            raise TimeoutError
        task.result()  # the publication's error, if any
        return Outcome.PUBLISHED

    def _settled(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if task.cancelled() or task.exception() is not None:
            return
        self.remember(key)
        hook = self.on_published
        if hook is not None:
            try:
                hook(key)
            except Exception:
                log.exception("dedupe: the publication hook failed")

    async def aclose(self) -> None:
        """Cancel the publications still in flight (their ids are not remembered)."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the topic of seen ids -------------------------------------------------------------------------


def marker_key(key: Hashable) -> bytes | None:
    """The marker key of a ``(provider, event_id)`` id: ``provider|event_id`` (None for another id)."""
    if (
        isinstance(key, tuple)
        and len(key) == 2
        and all(isinstance(part, str) for part in key)
        and key[0]
        and _SEPARATOR not in key[0]
    ):
        return f"{key[0]}{_SEPARATOR}{key[1]}".encode()
    return None


def parse_marker_key(raw: bytes | None) -> tuple[str, str] | None:
    """``(provider, event_id)`` of a marker key; None when it is not one."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    provider, separator, event_id = text.partition(_SEPARATOR)
    if not separator or not provider or not event_id:
        return None
    return provider, event_id


_Seen = tuple[bytes | None, tuple[int, int]]
"""A marker as read: its key and its timestamp (type, epoch milliseconds)."""

RangeReader = Callable[[Sequence[tuple[str, int]]], Sequence[KafkaMessage]]
"""Reads the markers written in the last TTL of the given (topic, partition)s."""

_BATCH: Final = 500
_METADATA_TIMEOUT_S: Final = 5.0
_UNKNOWN_TOPIC_GRACE_S: Final = 5.0
_UNKNOWN_TOPIC: Final = frozenset(
    {confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART, confluent_kafka.KafkaError._UNKNOWN_TOPIC}
)
_APPLY_CHUNK: Final = 5_000


class SeenIdsTopic:
    """Shares a :class:`Deduplicator` with the other API instances; see the module doc.

    ``start()`` refuses to start (:class:`ConfigError` naming the topic) when the topic is
    missing, starts tailing it and reads the markers of the last TTL; it returns once they are
    in the map (:attr:`caught_up`), or after ``start_timeout_s`` with the reading going on.
    Markers are written with ``producer`` (the API's); each waits at most ``marker_timeout_s``
    for the broker.  ``reader`` (tests) replaces the start-up reader; ``wall_clock`` is unix
    seconds (marker ages).  Called from one event loop; the tailing consumer runs on a thread
    of its own.
    """

    def __init__(
        self,
        kafka: KafkaClients,
        topic: str,
        dedupe: Deduplicator,
        producer: AsyncProducer,
        *,
        marker_timeout_s: float = 10.0,
        start_timeout_s: float = 60.0,
        poll_timeout_s: float = 0.2,
        reader: RangeReader | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.dedupe = dedupe
        self.marker_timeout_s = marker_timeout_s
        self.start_timeout_s = start_timeout_s
        self._producer = producer
        self._poll_timeout_s = poll_timeout_s
        self._wall_clock = wall_clock
        # Assigned partitions only: never joins a group, commits nothing, reads committed records.
        self._consumer_conf = kafka.reader("inbound-dedupe", fetch_wait_ms=100)
        self._reader: RangeReader = reader or RecentRecordsReader(
            kafka, dedupe.ttl_s, timeout_s=start_timeout_s, clock=wall_clock
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        """Set while the tailing thread reads."""
        self._stopping = threading.Event()
        self._catch_up: asyncio.Task[None] | None = None
        self._markers: set[asyncio.Task[None]] = set()
        self._caught_up = False
        self._started = False
        self._stopped = False
        self.partitions = 0
        self.learned = 0
        """Ids learned from the topic (markers of ids this instance did not know)."""
        self.markers_written = 0
        self.markers_failed = 0
        self.skipped = 0
        """Records whose key is not a marker key."""
        self.tail_error: str | None = None
        """Why the tailing stopped, when it stopped on its own (a fatal consumer error)."""

    @property
    def caught_up(self) -> bool:
        """True once the markers of the last TTL written before start-up are in the map."""
        return self._caught_up

    def counts(self) -> dict[str, int]:
        """Markers by outcome: ``written``, ``failed`` (not written), ``learned`` (read, new here)."""
        return {"written": self.markers_written, "failed": self.markers_failed, "learned": self.learned}

    def status(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "caught_up": self._caught_up,
            "tailing": self._running.is_set(),
            "error": self.tail_error,
            "markers": self.counts(),
        }

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a SeenIdsTopic starts once; create a new one")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        consumer, partitions, ends = await loop.run_in_executor(None, self._open)
        self.partitions = len(partitions)
        # The tail starts where the start-up read is sure to reach, so nothing falls between.
        self._running.set()
        self._thread = threading.Thread(
            target=self._tail,
            args=(consumer, [confluent_kafka.TopicPartition(self.topic, p, ends[p]) for p in partitions]),
            name="inbound-dedupe",
            daemon=True,
        )
        self._thread.start()
        self._catch_up = asyncio.create_task(self.load(partitions), name="inbound-dedupe-catch-up")
        self.dedupe.on_published = self.mark
        log.info("inbound dedupe: sharing seen ids through %s (%d partitions)", self.topic, len(partitions))
        try:
            done, _ = await asyncio.wait({self._catch_up}, timeout=self.start_timeout_s)
        except BaseException:
            await self.stop()  # the start was cancelled: no thread is left behind
            raise
        if not done:
            log.warning(
                "inbound dedupe: the seen ids of %s are not read after %g s; not ready until they are",
                self.topic,
                self.start_timeout_s,
            )

    async def stop(self) -> None:
        """Write the markers still pending (each bounded by ``marker_timeout_s``), stop reading."""
        self._stopped = True
        if self.dedupe.on_published == self.mark:
            self.dedupe.on_published = None
        if self._markers:
            await asyncio.wait(set(self._markers), timeout=self.marker_timeout_s)
            for task in list(self._markers):
                task.cancel()
            await asyncio.gather(*self._markers, return_exceptions=True)
        catch_up, self._catch_up = self._catch_up, None
        if catch_up is not None:
            catch_up.cancel()
            await asyncio.gather(catch_up, return_exceptions=True)
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)

    # -- writing -----------------------------------------------------------------------------

    def mark(self, key: Hashable) -> None:
        """Write the marker of ``key`` (a publication the broker acknowledged), in the background."""
        raw = marker_key(key)
        if raw is None or self._stopped:
            return
        task = asyncio.get_running_loop().create_task(self._write(key, raw))
        self._markers.add(task)
        task.add_done_callback(self._markers.discard)

    async def _write(self, key: Hashable, raw: bytes) -> None:
        value = jsonwire.dumps({"seen_at": _iso_utc(self._wall_clock())})
        try:
            async with asyncio.timeout(self.marker_timeout_s):
                await self._producer.send(OutRecord(topic=self.topic, key=raw, value=value))
        except (TimeoutError, BrokerError) as exc:
            self.markers_failed += 1
            provider, event_id = key if isinstance(key, tuple) else ("?", "?")
            log.warning(
                "inbound dedupe: the seen marker of %s %s was not written to %s (%s); another "
                "instance may publish a retry of it again",
                provider,
                event_id,
                self.topic,
                type(exc).__name__,
            )
            return
        self.markers_written += 1

    # -- reading -----------------------------------------------------------------------------

    def apply(self, seen: Iterable[_Seen]) -> int:
        """Remember the ids of ``seen`` markers the map does not know; returns how many."""
        now_s = self._wall_clock()
        learned = 0
        for raw, (ts_type, ts_ms) in seen:
            key = parse_marker_key(raw)
            if key is None:
                self.skipped += 1
                continue
            written_ms = ts_ms if ts_type != confluent_kafka.TIMESTAMP_NOT_AVAILABLE and ts_ms > 0 else None
            age_s = now_s - written_ms / 1000 if written_ms is not None else 0.0
            if self.dedupe.learn(key, age_s=age_s):
                learned += 1
        self.learned += learned
        return learned

    async def load(self, partitions: Sequence[int]) -> None:
        """Read the markers of the last TTL in ``partitions`` into the map (tried again until it
        works; ``start()`` runs it as a task), then :attr:`caught_up` is true."""
        loop = asyncio.get_running_loop()
        wanted = [(self.topic, p) for p in partitions]
        backoff_s = 1.0
        while True:
            try:
                records = await loop.run_in_executor(None, self._reader, wanted)
                break
            except Exception as exc:
                log.warning(
                    "inbound dedupe: reading the seen ids of %s failed (%s); trying again in %g s",
                    self.topic,
                    exc if isinstance(exc, BrokerError) else type(exc).__name__,
                    backoff_s,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
        learned = 0
        for start in range(0, len(records), _APPLY_CHUNK):
            learned += self.apply((m.key(), m.timestamp()) for m in records[start : start + _APPLY_CHUNK])
            await asyncio.sleep(0)  # let requests in between chunks of a large catch-up
        self._caught_up = True
        log.info(
            "inbound dedupe: %d ids of the last %g s learned from %s (%d markers read)",
            learned,
            self.dedupe.ttl_s,
            self.topic,
            len(records),
        )

    def _open(self) -> tuple[confluent_kafka.Consumer, list[int], dict[int, int]]:
        """The tailing consumer, the topic's partitions and their end offsets (on a worker thread)."""
        try:
            consumer = confluent_kafka.Consumer(self._consumer_conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot create the reader of {self.topic}: {exc}") from exc
        try:
            partitions = self._partitions(consumer)
            ends: dict[int, int] = {}
            for partition in partitions:
                ends[partition] = self._end_offset(consumer, partition)
        except BaseException:
            consumer.close()
            raise
        return consumer, partitions, ends

    def _end_offset(self, consumer: confluent_kafka.Consumer, partition: int) -> int:
        tp = confluent_kafka.TopicPartition(self.topic, partition)

        def ask() -> tuple[int, int]:
            low, high = consumer.get_watermark_offsets(tp, timeout=_METADATA_TIMEOUT_S, cached=False)
            return int(low), int(high)

        _low, high = _retrying(ask, what=f"the end offsets of {self.topic}", timeout_s=self.start_timeout_s)
        return high

    def _partitions(self, consumer: confluent_kafka.Consumer) -> list[int]:
        started = time.monotonic()
        while True:
            metadata = _retrying(
                lambda: consumer.list_topics(self.topic, timeout=_METADATA_TIMEOUT_S),
                what=f"the metadata of {self.topic}",
                timeout_s=self.start_timeout_s,
            )
            described = metadata.topics.get(self.topic)
            error = described.error if described is not None else None
            if described is not None and error is None and described.partitions:
                return sorted(described.partitions)
            waited_s = time.monotonic() - started
            if error is None or error.code() in _UNKNOWN_TOPIC:
                if waited_s > _UNKNOWN_TOPIC_GRACE_S:
                    raise ConfigError(
                        f"missing topic {self.topic} (the inbound de-duplication's seen ids); "
                        "run `processors topics apply` first"
                    )
            elif not error.retriable() or waited_s > self.start_timeout_s:
                raise BrokerError(f"cannot read the metadata of {self.topic}: {error.str()}")
            time.sleep(0.2)  # a worker thread, waiting for fresh topic metadata

    def _tail(self, consumer: confluent_kafka.Consumer, starts: list[confluent_kafka.TopicPartition]) -> None:
        """The tailing thread: hand every marker to the event loop until stopped."""
        try:
            consumer.assign(starts)
            while not self._stopping.is_set():
                try:
                    messages = fetch(consumer, _BATCH, self._poll_timeout_s)
                except confluent_kafka.KafkaException as exc:
                    log.warning("inbound dedupe: reading %s failed (%s); trying again", self.topic, exc)
                    self._stopping.wait(1.0)  # a pause before the next fetch, cut short by stop()
                    continue
                seen: list[_Seen] = []
                for msg in messages:
                    error = msg.error()
                    if error is None:
                        seen.append((msg.key(), msg.timestamp()))
                    elif error.fatal():
                        raise BrokerError(f"fatal error reading {self.topic}: {error.str()}")
                    elif error.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                        log.debug("inbound dedupe: consumer error: %s", error.str())
                if seen:
                    self._hand_over(seen)
        except Exception as exc:
            self.tail_error = str(exc) if isinstance(exc, BrokerError) else type(exc).__name__
            log.error("inbound dedupe: stopped reading %s: %s", self.topic, self.tail_error)
        finally:
            self._running.clear()
            try:
                consumer.close()
            except (confluent_kafka.KafkaException, RuntimeError) as exc:
                log.warning("inbound dedupe: closing the reader of %s failed: %s", self.topic, exc)

    def _hand_over(self, seen: list[_Seen]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.apply, seen)
        except RuntimeError:
            log.debug("event loop closed; %d seen markers dropped", len(seen))


def _iso_utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_T = TypeVar("_T")

_TRANSIENT: Final = frozenset(
    {
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
    }
)


def _retrying(call: Callable[[], _T], *, what: str, timeout_s: float) -> _T:
    """``call()``, tried again on transient broker errors for up to ``timeout_s`` (worker thread)."""
    deadline = time.monotonic() + timeout_s
    delay_s = 0.1
    while True:
        try:
            return call()
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, confluent_kafka.KafkaError) and (
                error.code() in _TRANSIENT or error.retriable()
            )
            if not transient or time.monotonic() + delay_s > deadline:
                raise BrokerError(f"cannot read {what}: {exc}") from exc
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)
