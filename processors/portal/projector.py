"""The projector: the portal's source topics → the query store, exactly once per record.

It reads every partition of the five source topics with an assigned-only consumer (the
``reader`` role of :class:`~processors.kafka.KafkaClients`: no consumer group, nothing
committed to Kafka, ``isolation.level=read_committed``, so a bordereau of an aborted
transaction is never seen).  Where to start comes from the store: each partition resumes at
the next offset stored with the rows (from the beginning when none is stored).  Each fetch
(at most ``batch_size`` records) becomes one :meth:`PortalStore.apply
<processors.portal.store.PortalStore.apply>`: rows and next offsets in one database
transaction.  A SIGKILL at any moment therefore loses nothing and applies nothing twice.

A record that cannot be read is counted (per topic here and in the ``offsets`` table, and in
``processors_portal_records_total{outcome="skipped"}``) and logged with its coordinates and
a reason that names fields, never its content.  When the database fails (restarted,
unreachable), the projector logs it, waits (0.5 s doubling to 30 s) and reads again from the
stored offsets; a fatal Kafka error stops it (:attr:`Projector.error`).

::

    projector = Projector(clients, PortalTopics.from_catalogue(catalogue), store)
    await projector.start()                   # migrates, assigns, starts the poll thread
    await projector.wait_caught_up(30)        # True once the store holds what the topics held
    projector.caught_up()                     # cheap: what the last end-offsets check found
    await projector.stop()

    Projector(...).run_to_end(timeout_s=600)  # the rebuild: from the stored offsets to the end, then stop
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import confluent_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    OffsetSpec,
)

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.portal.records import Change, Coordinates, Skipped, Source, decode
from processors.portal.store import ApplyResult, PortalStore, PortalStoreError, TopicPartition
from processors.topics.catalogue import Catalogue

__all__ = ["PortalTopics", "Projector", "ProjectorStats"]

log = logging.getLogger(__name__)

_EARLIEST: Final = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: Final = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_BACKOFF_FIRST_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0

Targets = dict[TopicPartition, tuple[int, int]]
"""Per partition, its (first, end) offsets: the log start and the last stable offset."""

ConsumerFactory = Callable[[dict[str, Any]], Any]
AdminFactory = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class PortalTopics:
    """The names of the source topics (a catalogue's, whatever prefix it gives them)."""

    partners: str = "integrations.partners"
    subscriptions: str = "integrations.webhook.subscriptions"
    deliveries: str = "integrations.webhook.deliveries"
    bordereaux: str = "reinsurance.bordereaux"
    bordereau_deliveries: str = "integrations.reinsurance.deliveries"

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue) -> PortalTopics:
        """The catalogue's topics of each name (:class:`ConfigError` when one is missing)."""
        from processors.apps.registry import catalogue_topic

        defaults = cls()
        return cls(
            **{source.value: catalogue_topic(catalogue, getattr(defaults, source.value)) for source in Source}
        )

    def sources(self) -> dict[str, Source]:
        """Topic name → what it holds."""
        return {getattr(self, source.value): source for source in Source}


@dataclass(slots=True)
class ProjectorStats:
    """What the projector did since it started (read by :mod:`processors.portal.metrics`)."""

    applied: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Per topic, records whose change was written."""
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Per topic, records that could not be read (skipped, counted, logged without content)."""
    ignored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Per topic, valid records the store does not project (API keys)."""
    stale: int = 0
    """Records read again that the store already held (not applied twice)."""
    batches: int = 0
    store_errors: int = 0
    last_applied_at: float | None = None
    """Epoch seconds of the last committed batch."""


class Projector:
    """Keeps a :class:`~processors.portal.store.PortalStore` up to date with the source topics.

    Every consumer and database call of the running projector happens on its own thread; the
    asyncio side (:meth:`start`, :meth:`stop`, :meth:`wait_caught_up`) never blocks the loop.
    """

    def __init__(
        self,
        kafka: KafkaClients,
        topics: PortalTopics,
        store: PortalStore,
        *,
        batch_size: int = 2_000,
        poll_timeout_s: float = 0.1,
        metadata_refresh_s: float = 30.0,
        idle_check_s: float = 1.0,
        broker_timeout_s: float = 10.0,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
        admin_factory: AdminFactory = AdminClient,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("the portal projector's batch_size must be at least 1")
        self.topics = topics
        self.store = store
        self.stats = ProjectorStats()
        self._sources = topics.sources()
        self._conf = kafka.reader("portal-projector", fetch_wait_ms=100)
        self._admin_conf = kafka.admin()
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._metadata_refresh_s = metadata_refresh_s
        self._idle_check_s = idle_check_s
        self._broker_timeout_s = broker_timeout_s
        self._consumer_factory = consumer_factory
        self._admin_factory = admin_factory
        self._consumer: Any = None
        self._admin: Any = None
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._applied: dict[TopicPartition, int] = {}
        """Per partition, the offset below which everything is in the store (or is no record:
        transaction markers).  Replaced, never changed in place: other threads read it."""
        self._metadata_at = float("-inf")
        self._checked_at = float("-inf")
        self._missing_told: set[str] = set()
        self._caught_up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._waiters_lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool], Targets]] = []

    # ------------------------------------------------------------------------- public face

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the projector, if one did."""
        return self._error

    @property
    def running(self) -> bool:
        return self._alive()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def caught_up(self) -> bool:
        """Whether the last end-offsets check (made at most every ``idle_check_s`` while there is
        nothing to read, and by :meth:`wait_caught_up`) found the store at the end of every
        partition, with no full batch read since."""
        return self._caught_up and self._alive()

    def positions(self) -> dict[TopicPartition, int]:
        """Per partition, the offset below which the store holds every record."""
        return dict(self._applied)

    async def start(self) -> None:
        """Migrate the store, assign every partition at its stored offset, start the poll thread."""
        if self._thread is not None:
            raise RuntimeError("a Projector starts once")
        await asyncio.get_running_loop().run_in_executor(None, self.open)
        self._thread = threading.Thread(target=self._run, name="portal-projector", daemon=True)
        self._thread.start()
        log.info("portal projector: %s from %s", self.store.display_url, ", ".join(sorted(self._sources)))

    async def stop(self) -> None:
        """Stop after the batch in hand (it is committed or not at all), close the consumer."""
        self._stop.set()
        thread, self._thread = self._thread, None
        loop = asyncio.get_running_loop()
        if thread is not None:
            await loop.run_in_executor(None, thread.join)
        self._answer_all(False)
        await loop.run_in_executor(None, self.close)

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the store holds every record the topics held when this was called;
        False on timeout, when the cluster could not say where the topics end, or when the
        projector is not running."""
        if not self._alive():
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[bool], Targets] | None = None
        try:
            async with asyncio.timeout(timeout_s):
                targets = await loop.run_in_executor(None, self._end_offsets_or_none)
                if targets is None:
                    return False
                if self.reached(targets):
                    self._caught_up = True
                    return True
                entry = (loop, future, targets)
                with self._waiters_lock:
                    self._waiters.append(entry)
                if not self._alive():
                    return False
                return await future
        except TimeoutError:
            return False
        finally:
            if entry is not None:
                with self._waiters_lock:
                    if entry in self._waiters:
                        self._waiters.remove(entry)

    def run_to_end(self, timeout_s: float, *, from_scratch: bool = False) -> ProjectorStats:
        """From the stored offsets up to where every partition ends now, then close.

        ``from_scratch`` (the rebuild): once the cluster has said where the topics end, drop
        every table and start from the beginning of every partition.  :class:`BrokerError` when
        the cluster does not answer, or the end is not reached within ``timeout_s``.
        """
        try:
            if from_scratch:
                self._create_clients()
                targets = self.end_offsets()  # the cluster answers before anything is dropped
                self.store.reset()
            self.open()
            if not from_scratch:
                targets = self.end_offsets()
            deadline = time.monotonic() + timeout_s
            while not self.reached(targets):
                if time.monotonic() > deadline:
                    behind = {
                        f"{t}[{p}]"
                        for (t, p), (_, end) in targets.items()
                        if self._applied.get((t, p), 0) < end
                    }
                    raise BrokerError(
                        f"the portal store did not reach the end of {', '.join(sorted(behind))} "
                        f"within {timeout_s:g} s"
                    )
                self.step()
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"portal projector: {exc}") from exc
        finally:
            self.close()
        return self.stats

    # ------------------------------------------------------------------------- the core (one thread)

    def open(self) -> None:
        """Migrate the store, create the clients and assign every partition known now."""
        self.store.migrate()
        stored = self.store.offsets()
        foreign = sorted({topic for topic, _ in stored} - set(self._sources))
        if foreign:
            raise ConfigError(
                f"the portal store {self.store.display_url} was built from other topics "
                f"({', '.join(foreign)}): rebuild it (processors portal rebuild) or point it at "
                "the catalogue it was built from"
            )
        self._applied = dict(stored)
        if self._consumer is None:
            self._create_clients()
        self._assign_known()

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._admin = None
        self._assigned = frozenset()
        if consumer is not None:
            try:
                consumer.close()
            except confluent_kafka.KafkaException as exc:
                log.warning("portal projector: closing the consumer: %s", exc)

    def step(self) -> int:
        """Fetch one batch and apply it in one transaction; the number of records fetched."""
        consumer = self._consumer
        now = time.monotonic()
        refresh_s = self._metadata_refresh_s if self._assigned else min(1.0, self._metadata_refresh_s)
        if now - self._metadata_at >= refresh_s:
            self._refresh_partitions()
            self._metadata_at = now
        if not self._assigned:
            self._stop.wait(self._poll_timeout_s)  # no topic exists yet: look again soon
            return 0
        changes: list[Change] = []
        messages = fetch(consumer, self._batch_size, self._poll_timeout_s)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"portal projector: fatal consumer error: {error.str()}")
                log.warning("portal projector: consumer error: %s", error.str())
                continue
            topic = msg.topic()
            at = Coordinates(topic, msg.partition(), msg.offset())
            changes.append(decode(self._sources[topic], at, msg.key(), msg.value()))
        # Read before the batch is applied: everything below a position was handed over, and
        # is in this batch or an earlier one (a position also steps over transaction markers).
        positions = consumer.position(
            [confluent_kafka.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        )
        result = self.store.apply(changes)
        applied = dict(self._applied)
        for tp, end in result.positions.items():
            applied[tp] = max(applied.get(tp, 0), end)
        for tp in positions:
            if tp.offset >= 0:
                applied[(tp.topic, tp.partition)] = max(applied.get((tp.topic, tp.partition), 0), tp.offset)
        self._applied = applied
        if changes:
            self._count(result)
        if len(messages) >= self._batch_size:
            self._caught_up = False
        return len(messages)

    def reached(self, targets: Mapping[TopicPartition, tuple[int, int]]) -> bool:
        applied = self._applied
        return all(end <= first or applied.get(tp, 0) >= end for tp, (first, end) in targets.items())

    def end_offsets(self) -> Targets:
        """Where each partition of the source topics starts and ends now (read_committed)."""
        admin = self._admin
        if admin is None:
            raise RuntimeError("the projector is not open")
        partitions: list[confluent_kafka.TopicPartition] = []
        for topic in sorted(self._sources):
            described = admin.list_topics(topic, timeout=self._broker_timeout_s).topics.get(topic)
            if described is None or described.error is not None:
                continue  # a topic that does not exist holds nothing yet
            partitions += [confluent_kafka.TopicPartition(topic, p) for p in sorted(described.partitions)]
        if not partitions:
            return {}
        found: dict[str, dict[TopicPartition, int]] = {}
        for name, spec in (("first", _EARLIEST), ("end", _LATEST)):
            futures = admin.list_offsets(
                dict.fromkeys(partitions, spec),
                isolation_level=confluent_kafka.IsolationLevel.READ_COMMITTED,
                request_timeout=self._broker_timeout_s,
            )
            found[name] = {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
        return {tp: (found["first"][tp], end) for tp, end in found["end"].items()}

    # ------------------------------------------------------------------------- internals

    def _create_clients(self) -> None:
        """The consumer and the admin client (no network yet)."""
        try:
            self._consumer = self._consumer_factory(self._conf)
            self._admin = self._admin_factory(self._admin_conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            self.close()
            raise ConfigError(f"portal projector: cannot create its Kafka clients: {exc}") from exc
        self._assigned = frozenset()

    def _assign_known(self) -> None:
        """Assign the partitions the cluster knows now; an unreachable cluster is asked again
        by the next steps (every second until a partition is assigned)."""
        try:
            self._refresh_partitions()
        except confluent_kafka.KafkaException as exc:
            log.warning("portal projector: the cluster did not say which partitions exist yet: %s", exc)
            self._metadata_at = float("-inf")
        else:
            self._metadata_at = time.monotonic()

    def _refresh_partitions(self) -> None:
        consumer = self._consumer
        new: list[confluent_kafka.TopicPartition] = []
        for topic in sorted(self._sources):
            described = consumer.list_topics(topic, timeout=self._broker_timeout_s).topics.get(topic)
            if described is None or described.error is not None:
                if topic not in self._missing_told:
                    log.warning("portal projector: topic %s is not available yet", topic)
                    self._missing_told.add(topic)
                continue
            for partition in sorted(described.partitions):
                if (topic, partition) not in self._assigned:
                    start = self._applied.get((topic, partition), confluent_kafka.OFFSET_BEGINNING)
                    new.append(confluent_kafka.TopicPartition(topic, partition, start))
        if new:
            consumer.incremental_assign(new)
            self._assigned = self._assigned | {(tp.topic, tp.partition) for tp in new}
            log.info(
                "portal projector: reading %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{_where(tp.offset)}" for tp in new),
            )

    def _count(self, result: ApplyResult) -> None:
        stats = self.stats
        stats.batches += 1
        stats.stale += result.stale
        stats.last_applied_at = time.time()
        for topic, count in result.applied.items():
            stats.applied[topic] += count
        for topic, count in result.ignored.items():
            stats.ignored[topic] += count
        for change in result.skipped:
            topic = change.at.topic
            stats.skipped[topic] += 1
            reason = change.action.reason if isinstance(change.action, Skipped) else "unreadable"
            log.warning(
                "portal projector: record %s[%d]@%d skipped (%s); %d skipped from this topic so far",
                topic,
                change.at.partition,
                change.at.offset,
                reason,  # names fields, never the record's content
                stats.skipped[topic],
            )

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug or an error no branch expected: stop, visibly
            log.exception("portal projector stopped by an unexpected error")
            self._error = exc
        finally:
            self._stop.set()
            self._answer_all(False)

    def _loop(self) -> None:
        backoff_s = _BACKOFF_FIRST_S
        while not self._stop.is_set():
            try:
                fetched = self.step()
            except PortalStoreError as exc:
                self.stats.store_errors += 1
                log.error(
                    "portal projector: %s; reading again from the stored offsets in %.1f s", exc, backoff_s
                )
                if self._stop.wait(backoff_s):
                    return
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                self._reopen()
                continue
            except BrokerError as exc:
                log.error("portal projector stopped: %s", exc)
                self._error = exc
                return
            except confluent_kafka.KafkaException as exc:
                log.warning("portal projector: %s; trying again in %.1f s", exc, backoff_s)
                if self._stop.wait(backoff_s):
                    return
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                continue
            backoff_s = _BACKOFF_FIRST_S
            if fetched == 0:
                self._idle_check()
            self._answer_reached()

    def _reopen(self) -> None:
        """After a database failure: a new consumer at the offsets below which the store holds
        everything (a batch whose commit did succeed after all is dropped as stale by the store)."""
        self.close()
        self._create_clients()
        self._assign_known()

    def _idle_check(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._idle_check_s:
            return
        self._checked_at = now
        targets = self._end_offsets_or_none()
        if targets is not None:
            caught_up = self.reached(targets)
            if caught_up and not self._caught_up:
                log.info("portal projector: caught up with %s", ", ".join(sorted(self._sources)))
            self._caught_up = caught_up

    def _end_offsets_or_none(self) -> Targets | None:
        try:
            return self.end_offsets()
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            log.debug("portal projector: end offsets not known: %s", exc)
            return None

    def _answer_reached(self) -> None:
        with self._waiters_lock:
            done = [entry for entry in self._waiters if self.reached(entry[2])]
            for entry in done:
                self._waiters.remove(entry)
        for loop, future, _ in done:
            self._caught_up = True
            loop.call_soon_threadsafe(_settle, future, True)

    def _answer_all(self, result: bool) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future, _ in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[bool], result: bool) -> None:
    if not future.done():
        future.set_result(result)


def _where(offset: int) -> str:
    return "beginning" if offset == confluent_kafka.OFFSET_BEGINNING else str(offset)
