"""An asyncio face on ``confluent_kafka.Producer``.

``send()`` returns once the broker acknowledged the record (acks=all, idempotent producer).
A background thread serves librdkafka's delivery reports and resolves the awaiting futures on
the event loop in batches, so the loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import confluent_kafka

from processors.errors import BrokerError
from processors.kafka import KafkaClients
from processors.runtime.message import OutRecord

if TYPE_CHECKING:
    from processors.runtime.engine import OutputProducer

__all__ = ["AsyncProducer", "ProducerSlot", "RecordTooLarge", "TransactionFailed", "TransactionalProducer"]


class RecordTooLarge(BrokerError):
    """Records the producer or the broker refused for their size (``MSG_SIZE_TOO_LARGE``).

    Not retried as it is: the same bytes would be refused for ever.  The engine sends a record
    that fits instead (:func:`processors.runtime.failures.fitted`)."""

    def __init__(self, records: list[OutRecord]) -> None:
        topics = ", ".join(sorted({r.topic for r in records}))
        sizes = ", ".join(str(len(r.value or b"")) for r in records[:5])
        super().__init__(f"{len(records)} record(s) too large for {topics} (value bytes: {sizes})")
        self.records = records


_TOO_LARGE: frozenset[int] = frozenset(
    {
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        getattr(confluent_kafka.KafkaError, "RECORD_LIST_TOO_LARGE", -1),
    }
)

log = logging.getLogger(__name__)


class AsyncProducer:
    """Produce records and await their acknowledgement.

    Call ``start()`` before ``send()`` and ``stop()`` at the end (flushes what is queued).
    """

    def __init__(self, config: Mapping[str, Any], *, poll_interval_s: float = 0.05) -> None:
        self._config = dict(config)
        self._poll_interval_s = poll_interval_s
        self._producer: confluent_kafka.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._reports: list[tuple[asyncio.Future[None], confluent_kafka.KafkaError | None, OutRecord]] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._producer = confluent_kafka.Producer(self._config)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot create producer: {exc}") from exc
        self._running.set()
        self._thread = threading.Thread(target=self._serve_reports, name="producer-reports", daemon=True)
        self._thread.start()

    @property
    def raw(self) -> confluent_kafka.Producer:
        if self._producer is None:
            raise BrokerError("producer not started")
        return self._producer

    def _serve_reports(self) -> None:
        producer = self.raw
        while self._running.is_set():
            producer.poll(self._poll_interval_s)
            self._dispatch_reports()
        producer.poll(0)
        self._dispatch_reports()

    def _dispatch_reports(self) -> None:
        if not self._reports or self._loop is None:
            return
        batch, self._reports = self._reports, []
        try:
            self._loop.call_soon_threadsafe(_resolve, batch)
        except RuntimeError:  # loop closed during shutdown
            log.debug("event loop closed; %d delivery reports dropped", len(batch))

    async def send(self, record: OutRecord) -> None:
        """Produce ``record``; return when the broker acknowledged it, raise BrokerError if it failed."""
        future = await self._produce(record)
        await future

    async def _produce(self, record: OutRecord) -> asyncio.Future[None]:
        """Hand ``record`` to librdkafka; the returned future resolves on the broker's answer."""
        loop = self._loop
        if loop is None:
            raise BrokerError("producer not started")
        future: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: confluent_kafka.KafkaError | None, _msg: object) -> None:
            # Runs on the report thread, inside poll(): collected and resolved in batches.
            self._reports.append((future, err, record))

        headers: Any = record.headers or None
        extra: dict[str, Any] = {} if record.partition is None else {"partition": record.partition}
        while True:
            try:
                self.raw.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                    on_delivery=on_delivery,
                    **extra,
                )
                return future
            except BufferError:
                # Local queue full: wait for deliveries to drain it instead of failing.
                await asyncio.sleep(self._poll_interval_s)
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, confluent_kafka.KafkaError) and error.code() in _TOO_LARGE:
                    raise RecordTooLarge([record]) from exc
                raise BrokerError(f"produce to {record.topic} failed: {exc}") from exc

    async def send_all(self, records: list[OutRecord]) -> None:
        """Produce every record (in order), then wait for all acknowledgements.

        Raises :class:`RecordTooLarge` naming every record refused for its size (the others
        were acknowledged), or the first other :class:`BrokerError`.
        """
        futures, too_large = await self._produce_all(records)
        await self._acknowledged(futures, too_large)

    async def _produce_all(
        self, records: list[OutRecord]
    ) -> tuple[list[asyncio.Future[None]], list[OutRecord]]:
        futures: list[asyncio.Future[None]] = []
        too_large: list[OutRecord] = []
        for record in records:
            try:
                futures.append(await self._produce(record))
            except RecordTooLarge as exc:
                too_large.extend(exc.records)
        return futures, too_large

    async def _acknowledged(self, futures: list[asyncio.Future[None]], too_large: list[OutRecord]) -> None:
        # Every record is in flight already: waiting for each in turn takes as long as a
        # gather, without its task machinery.  Each outcome is collected, whatever came first.
        other: BaseException | None = None
        for future in futures:
            try:
                await future
            except RecordTooLarge as exc:
                too_large.extend(exc.records)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if other is None:
                    other = exc
        if other is not None:
            raise other
        if too_large:
            raise RecordTooLarge(too_large)

    async def stop(self, timeout_s: float = 30.0) -> None:
        if self._producer is None:
            return
        loop = asyncio.get_running_loop()
        self._running.clear()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 5.0)
            self._thread = None
        remaining = await loop.run_in_executor(None, self._producer.flush, timeout_s)
        self._dispatch_reports()
        if remaining:
            log.error("producer stopped with %d records not acknowledged", remaining)
        self._producer = None


class ProducerSlot:
    """The producer a service sends with: one it was given (its owner starts and stops it), or
    one made from ``config()`` on :meth:`start` and flushed and closed by :meth:`stop`."""

    def __init__(
        self,
        given: OutputProducer | None,
        config: Callable[[], Mapping[str, Any]],
        *,
        stop_timeout_s: float,
    ) -> None:
        self.producer: OutputProducer | None = given
        """What to send with; None before :meth:`start` and after :meth:`stop` of an own one."""
        self._config = config
        self._stop_timeout_s = stop_timeout_s
        self._owned: AsyncProducer | None = None

    async def start(self) -> None:
        """Create and start the own producer, unless one was given or is already running."""
        if self.producer is not None:
            return
        producer = AsyncProducer(self._config())
        await producer.start()
        self.producer = self._owned = producer

    async def stop(self) -> None:
        """Flush and close the own producer (a given one is left to its owner)."""
        owned, self._owned = self._owned, None
        if owned is not None:
            self.producer = None
            await owned.stop(timeout_s=self._stop_timeout_s)


class TransactionFailed(BrokerError):
    """The open transaction was aborted or the producer fenced: its outputs are gone, and the
    offsets it would have committed were not.  The engine stops; a new instance processes the
    records again from the last committed offsets (their external calls behind their
    idempotency keys)."""


class TransactionalProducer(AsyncProducer):
    """Outputs inside Kafka transactions that also commit the consumer's offsets.

    ``send_all`` produces into the open transaction and awaits the acknowledgements as the
    plain producer does.  The engine commits on its interval: :meth:`hold` stops new batches
    and waits for the ones being handed to librdkafka (a batch never straddles two
    transactions), :meth:`commit` runs on the consumer's thread (it needs the group's
    metadata), then :meth:`release`.  Every call of ``commit`` that finds nothing to commit
    returns at once.
    """

    transactional = True

    def __init__(self, config: Mapping[str, Any], *, timeout_s: float = 30.0) -> None:
        super().__init__(config)
        self._timeout_s = timeout_s
        self._open: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._producing = 0
        self._dirty = False
        self.commits = 0
        self.aborts = 0
        """Transactions that could not be committed (:class:`TransactionFailed` raised)."""

    async def start(self) -> None:
        await super().start()
        self._open = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.raw.init_transactions, self._timeout_s)
            self.raw.begin_transaction()
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot start transactions: {exc}") from exc
        self._open.set()

    async def send_all(self, records: list[OutRecord]) -> None:
        assert self._open is not None
        assert self._idle is not None
        while not self._open.is_set():
            await self._open.wait()
        self._producing += 1
        self._idle.clear()
        try:
            futures, too_large = await self._produce_all(records)
            self._dirty = True
        finally:
            self._producing -= 1
            if self._producing == 0:
                self._idle.set()
        await self._acknowledged(futures, too_large)

    async def hold(self) -> None:
        """No new batch enters the transaction; returns once none is being produced."""
        assert self._open is not None
        assert self._idle is not None
        self._open.clear()
        await self._idle.wait()

    def release(self) -> None:
        assert self._open is not None
        self._open.set()

    def commit(self, offsets: list[confluent_kafka.TopicPartition], group_metadata: Any) -> None:
        """Commit the open transaction with ``offsets`` and open the next (a worker thread,
        while held).  Raises :class:`TransactionFailed` when it had to be aborted."""
        if not offsets and not self._dirty:
            return
        producer = self.raw
        try:
            if offsets:
                self._retrying(
                    lambda: producer.send_offsets_to_transaction(offsets, group_metadata, self._timeout_s)
                )
            self._retrying(lambda: producer.commit_transaction(self._timeout_s))
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, confluent_kafka.KafkaError) and error.txn_requires_abort():
                try:
                    producer.abort_transaction(self._timeout_s)
                except confluent_kafka.KafkaException as abort_exc:
                    log.error("aborting the transaction failed: %s", abort_exc)
            hint = ""
            if isinstance(error, confluent_kafka.KafkaError) and error.fatal():
                hint = (
                    " (fenced: another instance started with the same transactional id "
                    f"{KafkaClients.transactional_id_of(self._config)!r}; give each instance its own "
                    "PROCESSORS_ENGINE__INSTANCE_ID)"
                )
            self.aborts += 1
            raise TransactionFailed(f"transaction not committed: {exc}{hint}") from exc
        self._dirty = False
        self.commits += 1
        producer.begin_transaction()

    def _retrying(self, call: Any) -> None:
        attempts = 0
        while True:
            try:
                call()
                return
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                attempts += 1
                if not (isinstance(error, confluent_kafka.KafkaError) and error.retriable()) or attempts >= 5:
                    raise
                log.warning("transaction step failed, retrying: %s", exc)


def _resolve(batch: list[tuple[asyncio.Future[None], confluent_kafka.KafkaError | None, OutRecord]]) -> None:
    for future, err, record in batch:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        elif err.code() in _TOO_LARGE:
            future.set_exception(RecordTooLarge([record]))
        else:
            future.set_exception(BrokerError(f"delivery failed: {err.str()}"))
