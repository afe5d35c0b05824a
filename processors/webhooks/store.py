"""Tables kept in compacted topics, and the webhook subscriptions kept in one.

:class:`CompactedTableStore` materialises a compacted topic in memory: every instance reads
the whole topic (all partitions assigned, no consumer group, nothing committed) into a table
(anything with ``apply(key, value)``, ``get(key)`` and ``len()``: :class:`CompactedTable`),
then keeps tailing it on a background thread; :meth:`CompactedTableStore.write` returns once
the record is acknowledged and in the table.  :class:`SubscriptionStore` keeps the webhook
subscriptions (the compacted ``integrations.webhook.subscriptions`` topic, a
:class:`~processors.webhooks.subscriptions.SubscriptionTable`); the partner registry
(:mod:`processors.partners.store`) uses the same class::

    store = SubscriptionStore(bootstrap, "integrations.webhook.subscriptions")
    await store.start()                 # returns once the records written before it are applied
    store.table.matching("policy.issued")
    await store.put(sub)                # returns once the record is in store.table (read-your-writes)
    await store.delete(sub.id)          # a tombstone
    await store.stop()

All consumer calls happen on the store's thread (librdkafka consumers are not thread-safe);
the asyncio side talks to it through a small request list and futures resolved with
``call_soon_threadsafe``.  Listeners (:meth:`CompactedTableStore.add_listener`) run on that
thread too, after each applied change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, Self, TypeVar

import confluent_kafka

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.runtime.message import OutRecord
from processors.runtime.producer import AsyncProducer
from processors.webhooks.subscriptions import Subscription, SubscriptionTable

__all__ = ["CatchUpTimeout", "CompactedTable", "CompactedTableStore", "Listener", "SubscriptionStore"]

log = logging.getLogger(__name__)


class CatchUpTimeout(BrokerError):
    """The table did not catch up in time; the store still runs (the broker may be away)."""


Listener = Callable[[str, Subscription | None], None]
"""Called with (subscription id, the subscription or None when deleted) on the store's thread."""

V_co = TypeVar("V_co", covariant=True)
V = TypeVar("V")


class CompactedTable(Protocol[V_co]):
    """A compacted topic materialised in memory; applied to on the store's thread only."""

    def __len__(self) -> int: ...

    def get(self, key: str) -> V_co | None:
        """The entry of record key ``key`` (None: none, or deleted)."""
        ...

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record (``value`` None: a tombstone); False when it was skipped."""
        ...


_BATCH: Final = 500
_WATERMARK_TIMEOUT_S: Final = 5.0


@dataclass(eq=False)
class _Waiter:
    """A ``wait_caught_up`` call: done once every partition's position reaches ``targets``."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    targets: dict[int, tuple[int, int]] | None = None
    """Partition → (low, high) watermarks taken after the call; None until the thread read them."""
    created: float = field(default_factory=time.monotonic)


class CompactedTableStore(Generic[V]):
    """A table kept in a compacted topic, and how to change it.  See the module docstring.

    ``kafka`` makes the clients (``KafkaClients`` roles ``reader`` and ``producer``).  ``name``
    names the reader thread and the client; ``label`` starts the store's log lines; ``noun``
    and ``plural`` name a record and the records in errors (``the subscription store is not
    running``).  ``write_timeout_s`` bounds :meth:`write` (broker acknowledgement and
    read-back).
    """

    def __init__(
        self,
        kafka: KafkaClients,
        topic: str,
        table: CompactedTable[V],
        *,
        name: str,
        label: str,
        noun: str,
        plural: str,
        write_timeout_s: float = 30.0,
        start_timeout_s: float = 60.0,
        poll_timeout_s: float = 0.1,
    ) -> None:
        self.topic = topic
        self.write_timeout_s = write_timeout_s
        self.start_timeout_s = start_timeout_s
        self._poll_timeout_s = poll_timeout_s
        self._name, self._label, self._noun, self._plural = name, label, noun, plural
        # Never used to join or commit: partitions are assigned and nothing is committed.  A write
        # returns once its record is read back: an idle fetch does not sit on the broker for the
        # default 500 ms (the topic is small; the extra fetches are cheap).
        self._consumer_conf = kafka.reader(name, fetch_wait_ms=100)
        # A caller waits on a write: a broker outage fails it instead of queueing for ever.
        self._producer_conf = kafka.producer(delivery_timeout_s=write_timeout_s, linger_ms=0)
        self._entries: CompactedTable[V] = table
        self._listeners: list[Callable[[str, V | None], None]] = []
        self._producer: AsyncProducer | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._requests_lock = threading.Lock()
        self._new_waiters: list[_Waiter] = []
        self._waiters: list[_Waiter] = []
        """Waits the thread took in hand (only the thread touches this list)."""
        self._failure: BrokerError | ConfigError | None = None
        self._ready: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.applied = 0
        """Records applied since start (tombstones included, skipped ones not)."""

    @property
    def running(self) -> bool:
        """Started, and its reader is still reading the topic (not stopped, not failed)."""
        return self._running.is_set()

    def add_listener(self, callback: Callable[[str, V | None], None]) -> None:
        """``callback(key, entry_or_None)`` after each applied change (on the store's thread)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Assign the topic, read it up to the end offsets of now, then keep tailing it."""
        if self._started:
            raise RuntimeError(f"a {type(self).__name__} starts once; create a new one")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        producer = AsyncProducer(self._producer_conf)
        await producer.start()
        self._producer = producer
        self._running.set()
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await asyncio.shield(self._ready)
            await self.wait_caught_up(self.start_timeout_s)
        except TimeoutError as exc:
            await self.stop()
            raise BrokerError(
                f"{self._plural} topic {self.topic} not read within {self.start_timeout_s:g} s"
            ) from exc
        except BaseException:
            await self.stop()
            raise
        log.info("%s: %d loaded from %s", self._label, len(self._entries), self.topic)

    async def stop(self) -> None:
        """Stop tailing and close the clients; pending waits fail with BrokerError."""
        self._running.clear()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop(timeout_s=self.write_timeout_s)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ reads and writes

    async def wait_caught_up(self, timeout_s: float = 30) -> None:
        """Return once every record written before this call is in :attr:`table`.

        Raises BrokerError when that takes longer than ``timeout_s`` or the store stopped.
        """
        if self._failure is not None:
            raise self._failure
        if not self._running.is_set():
            raise BrokerError(f"the {self._noun} store is not running")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future())
        with self._requests_lock:
            self._new_waiters.append(waiter)
        if not self._running.is_set():
            # The thread ended (it clears the flag before failing the waits it was given).
            raise self._failure or BrokerError(f"the {self._noun} store stopped")
        try:
            async with asyncio.timeout(timeout_s):
                await waiter.future
        except TimeoutError as exc:
            raise CatchUpTimeout(f"{self._plural} not caught up within {timeout_s:g} s") from exc

    async def write(self, key: str, value: bytes | None) -> None:
        """Write ``value`` (None: a tombstone) under ``key``; return once the broker acknowledged
        it and the table shows it (every record written before it included)."""
        producer = self._producer
        if producer is None or not self._running.is_set():
            raise BrokerError(f"the {self._noun} store is not running")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await producer.send(OutRecord(topic=self.topic, key=key.encode("ascii"), value=value))
        except TimeoutError as exc:
            raise BrokerError(
                f"{self._noun} {key} not acknowledged within {self.write_timeout_s:g} s"
            ) from exc
        remaining_s = max(0.1, self.write_timeout_s - (time.monotonic() - started))
        await self.wait_caught_up(remaining_s)

    # ------------------------------------------------------------------ the store's thread

    def _serve(self) -> None:
        consumer: confluent_kafka.Consumer | None = None
        try:
            consumer, partitions = self._open()
            self._resolve_ready(None)
            while self._running.is_set():
                with self._requests_lock:
                    fresh, self._new_waiters = self._new_waiters, []
                self._waiters.extend(fresh)
                self._read_targets(consumer, partitions)
                for msg in fetch(consumer, _BATCH, self._poll_timeout_s):
                    self._handle(msg)
                self._release_caught_up(consumer, partitions)
        except (BrokerError, ConfigError) as exc:
            self._fail(exc)
        except confluent_kafka.KafkaException as exc:
            self._fail(BrokerError(f"reading {self.topic} failed: {exc}"))
        except Exception as exc:
            log.exception("%s: the reader thread failed", self._label)
            self._fail(BrokerError(f"reading {self.topic} failed: {type(exc).__name__}"))
        finally:
            self._running.clear()
            if consumer is not None:
                try:
                    consumer.close()
                except (confluent_kafka.KafkaException, RuntimeError) as exc:
                    log.warning("%s: closing the reader failed: %s", self._label, exc)
            self._fail_waiters(BrokerError(f"the {self._noun} store stopped"))

    def _open(self) -> tuple[confluent_kafka.Consumer, list[int]]:
        try:
            consumer = confluent_kafka.Consumer(self._consumer_conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot create the {self._plural} reader: {exc}") from exc
        try:
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                metadata = consumer.list_topics(self.topic, timeout=_WATERMARK_TIMEOUT_S)
                described = metadata.topics.get(self.topic)
                error = described.error if described is not None else None
                if described is not None and error is None and described.partitions:
                    break
                if (error is not None and not error.retriable()) or time.monotonic() > deadline:
                    raise ConfigError(
                        f"the {self._plural} topic {self.topic} is not available"
                        + (f": {error.str()}" if error is not None else "")
                    )
                if not self._running.is_set():
                    raise BrokerError(f"the {self._noun} store stopped while starting")
                time.sleep(0.2)  # the store's thread, waiting for topic metadata
            partitions = sorted(described.partitions)
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(self.topic, p, confluent_kafka.OFFSET_BEGINNING)
                    for p in partitions
                ]
            )
        except BaseException:
            consumer.close()
            raise
        return consumer, partitions

    def _handle(self, msg: confluent_kafka.Message) -> None:
        error = msg.error()
        if error is not None:
            if error.fatal():
                raise BrokerError(f"fatal error reading {self.topic}: {error.str()}")
            log.warning("%s: consumer error: %s", self._label, error.str())
            return
        key: bytes | None = msg.key()
        value: bytes | None = msg.value()
        if not self._entries.apply(key, value):
            return
        self.applied += 1
        entry_key = key.decode("ascii") if key is not None else ""
        entry = self._entries.get(entry_key)
        for listener in list(self._listeners):
            try:
                listener(entry_key, entry)
            except Exception:
                log.exception("%s: a listener failed on %s", self._label, entry_key)

    def _read_targets(self, consumer: confluent_kafka.Consumer, partitions: list[int]) -> None:
        """Give the waits that have none the watermarks of now (one read for all of them)."""
        pending = [w for w in self._waiters if w.targets is None and not w.future.done()]
        if not pending:
            return
        targets: dict[int, tuple[int, int]] = {}
        for partition in partitions:
            tp = confluent_kafka.TopicPartition(self.topic, partition)
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=_WATERMARK_TIMEOUT_S, cached=False)
            except confluent_kafka.KafkaException as exc:
                log.warning("%s: reading end offsets failed (%s); trying again", self._label, exc)
                return
            targets[partition] = (low, high)
        for waiter in pending:
            waiter.targets = targets

    def _release_caught_up(self, consumer: confluent_kafka.Consumer, partitions: list[int]) -> None:
        waiters = [w for w in self._waiters if not w.future.done()]
        if any(w.targets is not None for w in waiters):
            assigned = [confluent_kafka.TopicPartition(self.topic, p) for p in partitions]
            positions = {tp.partition: tp.offset for tp in consumer.position(assigned)}
            left: list[_Waiter] = []
            for waiter in waiters:
                if waiter.targets is not None and _reached(positions, waiter.targets):
                    _settle(waiter, None)
                else:
                    left.append(waiter)
            waiters = left
        self._waiters = waiters

    def _resolve_ready(self, error: BaseException | None) -> None:
        ready, loop = self._ready, self._loop
        if ready is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(_set_future, ready, error)
        except RuntimeError:
            log.debug("event loop closed before the %s reader started", self._plural)

    def _fail(self, error: BrokerError | ConfigError) -> None:
        self._failure = error
        log.error("%s: %s", self._label, error)
        self._resolve_ready(error)

    def _fail_waiters(self, error: BrokerError) -> None:
        with self._requests_lock:
            waiters, self._new_waiters = self._waiters + self._new_waiters, []
        self._waiters = []
        for waiter in waiters:
            _settle(waiter, self._failure or error)
        self._resolve_ready(self._failure or error)


def _reached(positions: Mapping[int, int], targets: Mapping[int, tuple[int, int]]) -> bool:
    """Every partition's next offset is at (or past) its high watermark; an empty one is reached."""
    for partition, (low, high) in targets.items():
        if high <= low:
            continue
        if positions.get(partition, -1) < high:
            return False
    return True


def _settle(waiter: _Waiter, error: BaseException | None) -> None:
    try:
        waiter.loop.call_soon_threadsafe(_set_future, waiter.future, error)
    except RuntimeError:
        log.debug("event loop closed; a wait for a compacted table was dropped")


def _set_future(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class SubscriptionStore(CompactedTableStore[Subscription]):
    """The subscriptions table and how to change it.  See the module docstring.

    ``client_overrides`` are librdkafka settings as in ``Settings.client_overrides``
    (``consumer.<key>``, ``producer.<key>``, ``client.<key>`` for both).  ``write_timeout_s``
    bounds :meth:`put` and :meth:`delete` (broker acknowledgement and read-back).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_overrides: Mapping[str, str] | None = None,
        write_timeout_s: float = 30.0,
        start_timeout_s: float = 60.0,
        poll_timeout_s: float = 0.1,
    ) -> None:
        self._table = SubscriptionTable()
        super().__init__(
            KafkaClients(bootstrap_servers, client_overrides or {}),
            topic,
            self._table,
            name="webhook-subscriptions",
            label="webhook subscriptions",
            noun="subscription",
            plural="subscriptions",
            write_timeout_s=write_timeout_s,
            start_timeout_s=start_timeout_s,
            poll_timeout_s=poll_timeout_s,
        )

    @property
    def table(self) -> SubscriptionTable:
        return self._table

    async def put(self, sub: Subscription) -> None:
        """Write ``sub``; return once the broker acknowledged it and :attr:`table` shows it."""
        await self.write(sub.id, sub.to_record())
        log.info("webhook subscription %s stored (version %d)", sub.id, sub.version)

    async def delete(self, sub_id: str) -> None:
        """Write a tombstone for ``sub_id``; return once :attr:`table` no longer has it."""
        await self.write(sub_id, None)
        log.info("webhook subscription %s deleted", sub_id)
