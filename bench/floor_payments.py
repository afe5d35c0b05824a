"""The stripped prototype of the payments app: the cheapest code that keeps its guarantees.

``bench/bench_payments.py`` runs it as the ``payments-floor`` stage next to ``payments`` (the
product), on the same input and timed the same way, so the ratio of the two says how far the
product's hot path is from its floor.  It is a measuring stick, never a second implementation
to run: it does nothing the comparison does not need.

One asyncio process, one consumer group, one producer, one ``aiohttp`` session:

* **Kafka clients**: the product's own configurations (``KafkaClients.group_consumer(...,
  key_ordered=True)`` and ``KafkaClients.producer(max_message_bytes=...)`` from the same
  settings), so both sides run with identical librdkafka settings (manual offset store and
  commit, read_committed, idempotent acks=all producer, lz4, linger 5 ms).  No librdkafka key is
  written here.  Not added: the product's lag statistics callback (metrics only).
* **Fetching**: a poll thread calling :func:`processors.kafka.consume.fetch` (the product's
  non-blocking batch fetch) and handing each batch to the loop; every consumer call
  (commit, pause, resume, close, rebalance callbacks) happens on that thread.
* **Decoding**: the product's :class:`~processors.contract.Codec` (``make_codec(settings)``),
  so validation is exactly as strict as the product's (envelope and payload, strict mode);
  a hand-written fastavro path would have had to repeat every rule of the contract (billing
  address, country codes, money scale...) to be as strict.  The key must be the subject.
  An event that fails to decode goes to the app's dead-letter topic with the product's
  provenance headers (:func:`~processors.runtime.failures.dead_letter`), never silently.
* **Key order**: one lane (a deque) per (partition, key); a fixed pool of ``concurrency``
  worker tasks takes ready lanes from a queue, so at most ``concurrency`` gateway calls are in
  flight and no task is created per record.  The next record of a key starts only after the
  previous one's outputs were acknowledged (as in the product's engine); the worker slot is
  released before that wait.
* **Answered ids** (``dedupe`` in ``topics.yaml``): an id answered within the window in the
  partition is dropped (another digest: dead-lettered as ``DuplicateEventId``); ids are read
  back on assignment with the product's ``RecentRecordsReader`` and remembered on
  acknowledgement of the marker.
* **The charge**: one ``POST /api/v1/payments`` with the product's body fields, the
  ``Idempotency-Key`` of :func:`~processors.apps.payments.mapping.idempotency_key`, the Bearer
  token; ``Accept`` and ``Content-Type`` as the adapter sends them; the record's
  ``traceparent`` passed on.  The body is written with orjson (the same JSON document; the
  amount goes out digit for digit as a JSON number).  Connector limits, per-attempt connect and
  read timeouts, redirects refused and the 1 MiB answer bound as the product's transport.
  The answer is classified by the adapter's own ``parse_response``.
* **Resilience, paid on the happy path**: the message deadline (``asyncio.timeout``), in-place
  attempts with the policy's jittered backoff and ``Retry-After`` cap, and a minimal breaker
  (consecutive counted failures open it for the policy's open period; then calls are admitted
  again and the first failure reopens it).  While it is open the record waits, no attempt
  spent.  A record that still fails (attempts exhausted, deadline, a 4xx, a result the
  contract refuses) is dead-lettered instead of going through the retry tiers.
* **Outputs per record**: the result event (Avro, written with the codec's writer schema and
  schema id, the fields of :func:`~processors.apps.payments.mapping.result_event`, the headers
  ``content-type``, ``event-type``, ``traceparent`` if any and ``x-attempts``), its answered-id
  marker, and one audit record per attempt on the audit topic: orjson of the
  :class:`~processors.observability.audit.AuditEvent` fields, summaries through
  :func:`~processors.observability.redact.redact` and labels through the scrubber the event
  applies (byte-identical to ``AuditEvent.to_json()``, ``tests/unit/test_floor_payments.py``),
  handed to the producer without waiting, as the product's audit sink does.
* **Offsets**: per partition, committed every ``commit_interval_ms`` and on revocation and
  shutdown, only up to the contiguous run of records whose outputs the broker acknowledged.
  Revocation waits for the partitions' running records (up to the shutdown grace) first.
  Buffered records are bounded per partition and per app by pausing partitions.

Approximations (none is on the path the bench measures): retry tiers are not read or written
(a failed record goes to the DLQ at once); the half-open breaker admits every caller instead
of three probes; a record too large for its topic or a failed delivery stops the run instead
of being fitted or retried.

:func:`payments_floor_rate` publishes, times and checks exactly as ``payments_rate`` in
``bench/common.py`` does, and then asserts that the results topic holds one result per event,
that every idempotency key was charged once (the sandbox gateway's ``charges`` control
endpoint), and that the audit topic holds one record per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from io import BytesIO
from typing import Any, Final
from uuid import UUID, uuid4

import aiohttp
import confluent_kafka
import orjson
from fastavro import schemaless_writer

from bench.common import payments_world
from bench.harness import Run, Stopwatch
from processors.adapters.http import (
    MAX_RESPONSE_BYTES,
    ConnectFailed,
    HttpResponse,
    HttpTimeout,
    ResponseTooLarge,
)
from processors.adapters.payment_gateway import PaymentOutcome, parse_response
from processors.apps.payments.mapping import gateway_fields, idempotency_key
from processors.contract import Codec, avro
from processors.contract.events import Event, PaymentMethod
from processors.errors import (
    BrokerError,
    ContractError,
    DuplicateEventId,
    Permanent,
    Retriable,
    ValidationFailed,
)
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.observability.audit import (
    audit_line,
    outbound_json,
    status_for_error,
    trace_id_from_traceparent,
)
from processors.observability.redact import redact
from processors.resilience.config import EndpointPolicy, load_resilience
from processors.resilience.guard import DeadlineExceeded
from processors.resilience.retry import RetriesExhausted
from processors.runner import kafka_clients, make_codec
from processors.runtime.closing import close_group_consumer
from processors.runtime.failures import H, dead_letter
from processors.runtime.pending import RecentRecordsReader
from processors.settings import Settings
from processors.topics.catalogue import Catalogue
from processors_dev.devbroker import BrokerInfo
from processors_dev.samples import premium_due_stream

__all__ = [
    "FloorPayments",
    "audit_record",
    "method_wire",
    "payments_floor_rate",
    "redacted",
    "request_body",
    "result_record",
]

APP: Final = "payments"
SOURCE: Final = f"processors/{APP}"
ENDPOINT: Final = "payment-gateway"
PAYMENTS_PATH: Final = "/api/v1/payments"
RESULT_TYPES: Final = ("payment.completed", "payment.pending", "payment.failed")
_DIGEST_FIELDS: Final[set[str]] = {"event_type", "subject", "data"}
_AVRO: Final = b"application/avro"
_READ_CHUNK: Final = 64 * 1024
_MAX_PER_PARTITION: Final = 250_000  # answered ids held per partition (the product's bound)

Output = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int | None]
"""(topic, key, value, headers, partition or None: by key)."""


# --------------------------------------------------------------------------- pure pieces


def method_wire(method: PaymentMethod) -> dict[str, Any]:
    """``method.model_dump(mode="json", exclude_none=True)`` without the pydantic call."""
    wire: dict[str, Any] = {"type": method.type}
    if method.card_token is not None:
        wire["card_token"] = method.card_token
    address = method.billing_address
    if address is not None:
        wire["billing_address"] = {k: v for k, v in address.__dict__.items() if v is not None}
    return wire


def request_body(
    *,
    policy_id: str,
    amount: Decimal,
    currency: str,
    method: dict[str, Any],
    key: str,
    operation: str,
    reference: str,
) -> bytes:
    """The adapter's JSON body (same fields, same order; the amount a JSON number, digit for digit)."""
    if not amount.is_finite():
        raise ValidationFailed("non-finite decimal cannot be sent")
    return orjson.dumps(
        {
            "policy_id": policy_id,
            "amount": orjson.Fragment(format(amount, "f")),
            "currency": currency,
            "payment_method": method,
            "idempotency_key": key,
            "transaction_type": operation,
            "reference_id": reference,
        }
    )


def result_record(
    *,
    event_id: UUID,
    occurred_at: datetime,
    correlation_id: str,
    source_event_id: str,
    policy_id: str,
    operation: str,
    reference_id: str,
    amount: Decimal,
    currency: str,
    key: str,
    outcome: PaymentOutcome,
) -> tuple[str, dict[str, Any]]:
    """(event type, the Avro record) of ``mapping.result_event``: the envelope and payload as
    the codec writes them.  The gateway's own fields are checked by the product's
    :func:`~processors.apps.payments.mapping.gateway_fields` (the payload models' own field
    types, ``ValidationFailed``); the request's came from an event the codec validated."""
    event_type, checked = gateway_fields(outcome, occurred_at)
    data = {
        "policy_id": policy_id,
        "operation": operation,
        "reference_id": reference_id,
        "currency": currency,
        "amount": amount,
        "idempotency_key": key,
        "source_event_id": source_event_id,
        **checked,
    }
    if not 1 <= len(correlation_id) <= 256:
        raise ValidationFailed("correlation_id must have 1 to 256 characters")
    record = {
        "event_id": event_id,
        "event_type": event_type,
        "source": SOURCE,
        "occurred_at": occurred_at,
        "subject": policy_id,
        "correlation_id": correlation_id,
        "schema_version": 1,
        "data": data,
    }
    return event_type, record


def audit_record(
    *,
    operation: str,
    key: str,
    status: str,
    outcome: str,
    latency_ms: float,
    attempt: int,
    breaker_state: str,
    correlation_id: str,
    trace_id: str | None,
    request_summary: dict[str, Any],
    response_summary: dict[str, Any],
    error: str | None,
    audit_id: UUID | None = None,
    occurred_at: datetime | None = None,
) -> bytes:
    """``AuditEvent(...).to_json()`` of one outbound attempt, without the model: the product's
    own writer (:func:`~processors.observability.audit.outbound_json`), as the guard's
    ``record_outbound`` uses it.  The summaries come through :func:`redacted` (the request's
    once per record, however many attempts)."""
    written = outbound_json(
        app=APP,
        endpoint=ENDPOINT,
        operation=operation,
        status=status,
        outcome=outcome,
        latency_ms=latency_ms,
        attempt=attempt,
        idempotency_key=key,
        breaker_state=breaker_state,
        correlation_id=correlation_id,
        trace_id=trace_id,
        request_summary=request_summary,
        response_summary=response_summary,
        error=error,
        audit_id=audit_id,
        occurred_at=occurred_at,
    )
    if written is None:
        raise ValueError(f"audit record of {operation} refused by the audit event's checks")
    return written[2]


def redacted(value: Any) -> dict[str, Any]:
    """A summary as ``AuditEvent`` stores it: :func:`~processors.observability.redact.redact`."""
    if value is None:
        return {}
    cleaned = redact(value)
    if not isinstance(cleaned, dict):
        raise ValueError("a summary must be a mapping")
    return cleaned


class ResultWriter:
    """Avro with Confluent framing for the three result types: the codec's writer schemas and
    schema ids (read from the codec itself by encoding one result of each type), checked
    byte for byte against ``Codec.encode`` at construction."""

    def __init__(self, codec: Codec) -> None:
        from processors.adapters.payment_gateway import PaymentRequest
        from processors.apps.payments import mapping

        self._writers: dict[str, tuple[bytes, Any, list[tuple[str, bytes]]]] = {}
        sample = next(iter(premium_due_stream(1, 1, seed=1)))
        data: Any = sample.data
        request = PaymentRequest(
            policy_id=data.policy_id,
            amount=data.amount,
            currency=data.currency,
            payment_method=data.payment_method.model_dump(mode="json", exclude_none=True),
            idempotency_key=idempotency_key(sample.event_id, APP, "CHARGE"),
            transaction_type="CHARGE",
            reference_id=data.instalment_id,
        )
        now = datetime.now(UTC)
        outcomes = {
            "payment.completed": PaymentOutcome(
                "COMPLETED", "PMT-1", "ch_1", data.amount, "USD", now, receipt_url="https://r.invalid/1"
            ),
            "payment.pending": PaymentOutcome("PENDING", "PMT-2", "ch_2", data.amount, "USD", now),
            "payment.failed": PaymentOutcome(
                "DECLINED", "PMT-3", None, None, None, now, decline_code="x", decline_reason="y"
            ),
        }
        for event_type in RESULT_TYPES:
            expected = mapping.result_event(sample, request, outcomes[event_type], source=SOURCE)
            value, headers = codec.encode(expected)
            schema = avro.parse_schema(avro.writer_schema(event_type))
            self._writers[event_type] = (value[:5], schema, headers)
            _, record = result_record(
                event_id=expected.event_id,
                occurred_at=expected.occurred_at,
                correlation_id=str(sample.event_id),
                source_event_id=str(sample.event_id),
                policy_id=request.policy_id,
                operation=request.transaction_type,
                reference_id=request.reference_id,
                amount=request.amount,
                currency=request.currency,
                key=request.idempotency_key,
                outcome=outcomes[event_type],
            )
            mine = self.encode(event_type, record)
            if mine != value:
                raise AssertionError(f"{event_type}: the floor's Avro differs from Codec.encode")
            if headers != [("content-type", _AVRO), ("event-type", event_type.encode())]:
                raise AssertionError(f"{event_type}: unexpected codec headers {headers}")

    def encode(self, event_type: str, record: dict[str, Any]) -> bytes:
        prefix, schema, _ = self._writers[event_type]
        buffer = BytesIO()
        buffer.write(prefix)
        schemaless_writer(buffer, schema, record)
        return buffer.getvalue()


# --------------------------------------------------------------------------- bookkeeping


class _Part:
    """One assigned partition: offsets in fetch order, the finished ones, the commit position."""

    __slots__ = ("committed", "done", "full", "next_commit", "number", "offsets", "revoked", "running")

    def __init__(self, number: int) -> None:
        self.number = number
        self.offsets: deque[int] = deque()
        self.done: set[int] = set()
        self.next_commit: int | None = None
        self.committed: int | None = None
        self.running = 0
        self.revoked = False
        self.full = False

    def track(self, offset: int) -> bool:
        """Record a fetched offset; False when it is not past everything tracked (a re-fetch)."""
        offsets = self.offsets
        last = offsets[-1] if offsets else (self.next_commit or 0) - 1
        if offset <= last:
            return False
        offsets.append(offset)
        return True

    def finish(self, offset: int) -> None:
        offsets = self.offsets
        if offsets and offsets[0] == offset:
            offsets.popleft()
            last = offset
            done = self.done
            while offsets and offsets[0] in done:
                last = offsets.popleft()
                done.discard(last)
            self.next_commit = last + 1
        else:
            self.done.add(offset)

    def commit_due(self) -> int | None:
        if self.next_commit is not None and self.next_commit != self.committed:
            self.committed = self.next_commit
            return self.next_commit
        return None


class _Breaker:
    """Consecutive counted failures open it for ``open_s``; then calls are admitted again and
    the first failure reopens it (a minimal half-open)."""

    __slots__ = ("failures", "open_s", "open_until", "probing", "threshold")

    def __init__(self, threshold: int, open_s: float) -> None:
        self.threshold = threshold
        self.open_s = open_s
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def admit(self) -> bool:
        if not self.open_until:
            return True
        if time.monotonic() < self.open_until:
            return False
        self.open_until = 0.0
        self.probing = True
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False

    def failed(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.open_s
            self.failures = 0
            self.probing = False

    @property
    def state(self) -> str:
        if self.open_until:
            return "open" if time.monotonic() < self.open_until else "half_open"
        return "half_open" if self.probing else "closed"

    async def wait(self) -> None:
        delay = self.open_until - time.monotonic()
        if self.open_until and delay > 0:
            await asyncio.sleep(delay)


class _Open(Exception):
    """The breaker refused the call: the record waits, no attempt spent."""


_RESULT, _DEAD, _NONE = 1, 2, 0


class _Job:
    """One record from the start of its handling to the acknowledgement of its outputs."""

    __slots__ = ("calls", "floor", "kind", "lane", "lane_key", "left", "marker", "offset", "part")

    def __init__(
        self, floor: FloorPayments, part: _Part, lane_key: Any, lane: deque[Any], offset: int
    ) -> None:
        self.floor = floor
        self.part = part
        self.lane_key = lane_key
        self.lane = lane
        self.offset = offset
        self.left = 0
        self.calls = 0
        self.kind = _NONE
        self.marker: tuple[bytes, bytes] | None = None

    def delivered(self, err: Any, _msg: Any) -> None:
        # librdkafka's delivery report, on the producer's report thread (inside poll())
        self.floor._reports.append((self, err))


# --------------------------------------------------------------------------- the prototype


class FloorPayments:
    """The payments pipeline with nothing but its guarantees (see the module doc)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, *, concurrency: int) -> None:
        self.settings = settings
        topics = catalogue.app(APP)
        if topics.dedupe is None:
            raise AssertionError("the floor writes answered-id markers: payments must declare dedupe")
        self.source = topics.sources[0]
        if len(topics.sources) != 1:
            raise AssertionError("the floor reads one source topic")
        self.dlq = topics.dlq
        self.dedupe = topics.dedupe
        self.window_s = topics.dedupe_window_ms / 1000
        self.results_topic = settings.payments.results_topic
        audit = [t.name for t in catalogue.topics if t.name.endswith("integrations.audit")]
        if not audit:
            raise AssertionError("no audit topic in the catalogue")
        self.audit_topic = audit[0]
        self.group = settings.group_prefix + APP
        self.concurrency = concurrency
        self.engine = settings.engine
        kafka: KafkaClients = kafka_clients(settings)
        self._consumer_conf = kafka.group_consumer(self.group, key_ordered=True)
        max_bytes = catalogue.largest_record_written(APP)
        self._producer_conf = kafka.producer(max_message_bytes=max_bytes)
        self._recent = RecentRecordsReader(kafka, self.window_s)
        policy: EndpointPolicy = load_resilience(settings.resilience_file).for_endpoint(ENDPOINT)
        self._policy = policy
        self._breaker = _Breaker(policy.breaker.failure_threshold, policy.breaker.timeout_duration_s)
        gateway = settings.payments.gateway
        timeouts = policy.timeout.http()
        self._url = gateway.base_url.rstrip("/") + PAYMENTS_PATH
        self._safe_url = self._url.split("?", 1)[0]
        self._auth = f"Bearer {gateway.token.get_secret_value()}"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_timeout_s, sock_read=timeouts.read_timeout_s
        )
        self._codec = make_codec(settings)
        self._codec.prepare()
        self._writer = ResultWriter(self._codec)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._parts: dict[int, _Part] = {}
        self._lanes: dict[Any, deque[Any]] = {}
        self._ready: asyncio.Queue[tuple[Any, deque[Any], _Part]] = asyncio.Queue()
        self._answered: dict[int, dict[bytes, tuple[float, bytes]]] = {}
        self._reports: list[tuple[_Job, Any]] = []
        self._to_consumer: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._buffered = 0
        self._app_full = False
        self._draining = False
        self._fatal: BaseException | None = None
        self._assigned = asyncio.Event()
        self._polling = threading.Event()
        self._reporting = threading.Event()
        self._poll_done: asyncio.Future[dict[str, int]] | None = None
        self._report_thread: threading.Thread | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._tick: asyncio.TimerHandle | None = None
        # counts
        self.results = 0
        self.markers = 0
        self.dead_letters = 0
        self.skipped = 0
        self.duplicates = 0
        self.decode_failures = 0
        self.attempts = 0
        self.audit_lost = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        self._producer = confluent_kafka.Producer(self._producer_conf)
        self._reporting.set()
        self._report_thread = threading.Thread(target=self._serve_reports, name="floor-reports", daemon=True)
        self._report_thread.start()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._poll_done = loop.create_future()
        self._polling.set()
        threading.Thread(target=self._poll, name="floor-poll", daemon=True).start()
        self._tick = loop.call_later(self.engine.commit_interval_ms / 1000, self._commit_tick)

    async def wait_assigned(self) -> None:
        await self._assigned.wait()
        if self._fatal is not None:
            raise self._fatal

    @property
    def answered(self) -> int:
        """Records whose outcome is final: a result, a dead letter, skipped or dropped."""
        return self.results + self.dead_letters + self.skipped + self.duplicates

    def check(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def stop(self) -> dict[str, int]:
        """Drain the running records, commit, flush, close; the end offsets of the output topics."""
        loop = asyncio.get_running_loop()
        self._draining = True
        await self._wait_idle(list(self._parts.values()), self.engine.shutdown_grace_s)
        if self._tick is not None:
            self._tick.cancel()
        self._to_consumer.put(("final", self._due_commits()))
        # outputs are acknowledged; the audit records are flushed before the topics are counted
        self._reporting.clear()
        if self._report_thread is not None:
            await loop.run_in_executor(None, self._report_thread.join, 5.0)
        await loop.run_in_executor(None, self._producer.flush, 30.0)
        if self._reports:
            self._on_reports(self._reports)
            self._reports = []
        self._polling.clear()
        assert self._poll_done is not None
        ends = await self._poll_done
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        assert self._session is not None
        await self._session.close()
        self._producer = self._consumer = None  # librdkafka handles are destroyed with them
        self.check()
        return ends

    # ------------------------------------------------------------------ the poll thread

    def _poll(self) -> None:
        loop = self._loop
        assert loop is not None
        ends: dict[str, int] = {}
        try:
            consumer = self._consumer = confluent_kafka.Consumer(self._consumer_conf)
            consumer.subscribe(
                [self.source], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            batch, timeout_s = self.engine.poll_batch, self.engine.poll_timeout_ms / 1000
            while self._polling.is_set():
                self._serve_requests(consumer)
                msgs = fetch(consumer, batch, timeout_s)
                if msgs:
                    loop.call_soon_threadsafe(self._on_batch, msgs)
            self._serve_requests(consumer)
            ends = self._end_offsets(consumer)
            close_group_consumer(consumer, what="payments floor")
        except BaseException as exc:
            loop.call_soon_threadsafe(self._failed, exc)
        finally:
            self._assigned_threadsafe()
            done = self._poll_done
            assert done is not None
            loop.call_soon_threadsafe(_resolve, done, ends)

    def _serve_requests(self, consumer: Any) -> None:
        requests = self._to_consumer
        while not requests.empty():
            what, arg = requests.get_nowait()
            if what in ("commit", "final"):
                if arg:  # a failed commit is not fatal: the next one carries a later offset
                    with contextlib.suppress(confluent_kafka.KafkaException):
                        consumer.commit(offsets=arg, asynchronous=what == "commit")
            else:
                tps = [confluent_kafka.TopicPartition(self.source, p) for p in arg]
                with contextlib.suppress(confluent_kafka.KafkaException):
                    (consumer.pause if what == "pause" else consumer.resume)(tps)

    def _end_offsets(self, consumer: Any) -> dict[str, int]:
        """Records on the results, dedupe and audit topics (this run's own topics)."""
        ends: dict[str, int] = {}
        for topic in (self.results_topic, self.dedupe, self.audit_topic):
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            ends[topic] = sum(
                consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions
            )
        return ends

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        numbers = [p.partition for p in partitions]
        if numbers:
            consumer.resume([confluent_kafka.TopicPartition(self.source, n) for n in numbers])
        records = self._recent([(self.dedupe, n) for n in numbers]) if numbers else []
        self._on_loop(self._assigned_parts(numbers, records))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        offsets = self._on_loop(self._revoked([p.partition for p in partitions], commit=True))
        if offsets:
            with contextlib.suppress(confluent_kafka.KafkaException):
                consumer.commit(offsets=offsets, asynchronous=False)

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self._on_loop(self._revoked([p.partition for p in partitions], commit=False))

    def _on_loop(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _assigned_threadsafe(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._assigned.set)

    # ------------------------------------------------------------------ rebalance (on the loop)

    async def _assigned_parts(self, numbers: list[int], records: Sequence[Any]) -> None:
        for n in numbers:
            self._parts[n] = _Part(n)
            self._answered[n] = {}
        for record in sorted(records, key=lambda r: r.timestamp()[1]):
            ids = self._answered.get(record.partition())
            if ids is not None and record.key() is not None:
                ids[record.key()] = (record.timestamp()[1] / 1000 + self.window_s, record.value() or b"")
        self._assigned.set()

    async def _revoked(self, numbers: list[int], *, commit: bool) -> list[Any]:
        parts = [self._parts[n] for n in numbers if n in self._parts]
        for part in parts:
            part.revoked = True
        await self._wait_idle(parts, self.engine.shutdown_grace_s)
        offsets = []
        for part in parts:
            self._buffered -= len(part.offsets)  # fetched, never finished: redelivered
            del self._parts[part.number]
            self._answered.pop(part.number, None)
            offset = part.commit_due()
            if commit and offset is not None:
                offsets.append(confluent_kafka.TopicPartition(self.source, part.number, offset))
        gone = {part.number for part in parts}
        for lane_key in [k for k in self._lanes if k[0] in gone]:
            del self._lanes[lane_key]
        return offsets

    async def _wait_idle(self, parts: Sequence[_Part], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(p.running for p in parts) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ fetched records

    def _on_batch(self, msgs: list[Any]) -> None:
        parts, lanes, ready = self._parts, self._lanes, self._ready
        bound = self.engine.max_buffered_per_partition
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    self._failed(BrokerError(f"fatal consumer error: {err.str()}"))
                continue
            number = msg.partition()
            part = parts.get(number)
            if part is None or part.revoked or not part.track(msg.offset()):
                continue
            self._buffered += 1
            key = msg.key()
            lane_key = (number, key if key is not None else msg.offset())
            lane = lanes.get(lane_key)
            if lane is None:
                lane = lanes[lane_key] = deque((msg,))
                ready.put_nowait((lane_key, lane, part))
            else:
                lane.append(msg)
            if not part.full and len(part.offsets) >= bound:
                part.full = True
                if not self._app_full:
                    self._to_consumer.put(("pause", [number]))
        if not self._app_full and self._buffered >= self.engine.max_buffered:
            self._app_full = True
            self._to_consumer.put(("pause", [n for n, p in parts.items() if not p.full]))

    def _commit_tick(self) -> None:
        due = self._due_commits()
        if due:
            self._to_consumer.put(("commit", due))
        assert self._loop is not None
        self._tick = self._loop.call_later(self.engine.commit_interval_ms / 1000, self._commit_tick)

    def _due_commits(self) -> list[Any]:
        due = []
        for part in self._parts.values():
            offset = part.commit_due()
            if offset is not None:
                due.append(confluent_kafka.TopicPartition(self.source, part.number, offset))
        return due

    # ------------------------------------------------------------------ workers

    async def _worker(self) -> None:
        ready = self._ready
        while True:
            lane_key, lane, part = await ready.get()
            if part.revoked or self._draining or self._fatal is not None:
                continue  # not started: redelivered to whoever owns the partition next
            msg = lane[0]
            part.running += 1
            job = _Job(self, part, lane_key, lane, msg.offset())
            try:
                outputs = await self._handle(msg, job)
            except Exception as exc:  # a bug here: the record is dead-lettered, never lost
                job.kind = _DEAD
                outputs = [self._dead_letter(msg, exc, max(job.calls, 1))]
            if not outputs:
                self._finish(job)
                continue
            job.left = len(outputs)
            produce = self._producer.produce
            for topic, key, value, headers, partition in outputs:
                while True:
                    try:
                        if partition is None:
                            produce(topic, value, key, headers=headers, on_delivery=job.delivered)
                        else:
                            produce(
                                topic,
                                value,
                                key,
                                partition=partition,
                                headers=headers,
                                on_delivery=job.delivered,
                            )
                        break
                    except BufferError:
                        await asyncio.sleep(0.05)  # the local queue is full: wait for deliveries
                    except confluent_kafka.KafkaException as exc:
                        self._failed(BrokerError(f"produce to {topic} failed: {exc}"))
                        return

    def _serve_reports(self) -> None:
        producer, loop = self._producer, self._loop
        assert loop is not None
        while self._reporting.is_set():
            producer.poll(0.05)
            if self._reports:
                batch, self._reports = self._reports, []
                loop.call_soon_threadsafe(self._on_reports, batch)

    def _on_reports(self, batch: list[tuple[_Job, Any]]) -> None:
        for job, err in batch:
            if err is not None:
                self._failed(BrokerError(f"delivery failed: {err.str()}"))
                continue
            job.left -= 1
            if job.left == 0:
                self._finish(job)

    def _finish(self, job: _Job) -> None:
        """The record's outputs are acknowledged (or it had none): its offset may be committed
        and the next record of its key may start."""
        part = job.part
        part.running -= 1
        part.finish(job.offset)
        kind = job.kind
        if kind == _RESULT:
            self.results += 1
            self.markers += 1
            marker = job.marker
            ids = self._answered.get(part.number)
            if marker is not None and ids is not None:
                ids[marker[0]] = (time.time() + self.window_s, marker[1])
                if len(ids) > _MAX_PER_PARTITION:
                    del ids[next(iter(ids))]
        elif kind == _DEAD:
            self.dead_letters += 1
        self._buffered -= 1
        if part.revoked:
            return
        lane = job.lane
        lane.popleft()
        if lane:
            if not self._draining:
                self._ready.put_nowait((job.lane_key, lane, part))
        else:
            del self._lanes[job.lane_key]
        if part.full and len(part.offsets) <= self.engine.max_buffered_per_partition // 2:
            part.full = False
            if not self._app_full:
                self._to_consumer.put(("resume", [part.number]))
        if self._app_full and self._buffered <= self.engine.max_buffered // 2:
            self._app_full = False
            self._to_consumer.put(("resume", [n for n, p in self._parts.items() if not p.full]))

    def _failed(self, exc: BaseException) -> None:
        """Stop for good: nothing is committed past what was acknowledged so far."""
        if self._fatal is None:
            self._fatal = exc
        self._assigned.set()

    # ------------------------------------------------------------------ one record

    async def _handle(self, msg: Any, job: _Job) -> list[Output]:
        try:
            event: Event = self._codec.decode(msg.value(), msg.headers())
            key = msg.key()
            if key is None:
                raise ValidationFailed(f"message key is missing; it must be the subject ({event.event_type})")
            if key != event.subject.encode():
                raise ValidationFailed(f"message key does not match the event subject ({event.event_type})")
        except ContractError as exc:
            self.decode_failures += 1
            job.kind = _DEAD
            return [self._dead_letter(msg, exc, 1)]
        event_type = event.event_type
        data: Any = event.data
        if event_type == "premium.due":
            operation, reference = "CHARGE", data.instalment_id
        elif event_type == "refund.requested":
            operation, reference = "REFUND", data.refund_id
        else:
            self.skipped += 1  # not for payments: committed as done
            return []
        number = msg.partition()
        eid = str(event.event_id)
        event_id = eid.encode()
        digest = hashlib.sha256(event.model_dump_json(include=_DIGEST_FIELDS).encode()).digest()[:16]
        ids = self._answered.get(number)
        entry = ids.get(event_id) if ids else None
        if entry is not None and entry[0] > time.time():
            if entry[1] and entry[1] != digest:
                job.kind = _DEAD
                reused = DuplicateEventId(
                    f"event id {eid} was answered before with different content: an id reused for another event"
                )
                return [self._dead_letter(msg, reused, 1)]
            self.duplicates += 1
            return []
        traceparent: str | None = None
        attempts: str | None = None
        for name, value in msg.headers() or ():  # the first of each, as the record context reads them
            if name == "traceparent" and traceparent is None and value is not None:
                traceparent = value.decode("utf-8", "replace")
            elif name == H.ATTEMPTS and attempts is None and value is not None:
                attempts = value.decode("utf-8", "replace")
        previous = int(attempts) if attempts and attempts.isdigit() else 0
        policy_id: str = data.policy_id
        amount: Decimal = data.amount
        currency: str = data.currency
        method = method_wire(data.payment_method)
        key_text = idempotency_key(event.event_id, APP, operation)
        correlation = event.correlation_id or eid
        try:
            body = request_body(
                policy_id=policy_id,
                amount=amount,
                currency=currency,
                method=method,
                key=key_text,
                operation=operation,
                reference=reference,
            )
            summary = {
                "policy_id": policy_id,
                "reference_id": reference,
                "amount": str(amount),
                "currency": currency,
                "payment_method": method,
            }
            outcome = await self._charge(
                job, body, key_text, correlation, summary, traceparent, previous, operation.lower()
            )
            now = datetime.now(UTC)
            result_type, record = result_record(
                event_id=uuid4(),
                occurred_at=now,
                correlation_id=correlation,
                source_event_id=eid,
                policy_id=policy_id,
                operation=operation,
                reference_id=reference,
                amount=amount,
                currency=currency,
                key=key_text,
                outcome=outcome,
            )
            value = self._writer.encode(result_type, record)
        except (Retriable, Permanent, ContractError) as exc:
            job.kind = _DEAD
            return [self._dead_letter(msg, exc, previous + max(job.calls, 1))]
        headers = [("content-type", _AVRO), ("event-type", result_type.encode())]
        if traceparent is not None:
            headers.append(("traceparent", traceparent.encode()))
        headers.append((H.ATTEMPTS, str(previous + max(job.calls, 1)).encode()))
        job.kind = _RESULT
        job.marker = (event_id, digest)
        return [
            (self.results_topic, policy_id.encode(), value, headers, None),
            (self.dedupe, event_id, digest, None, number),
        ]

    def _dead_letter(self, msg: Any, exc: BaseException, attempts: int) -> Output:
        record = dead_letter(msg, exc, topic=self.dlq, app=APP, group=self.group, attempts=attempts)
        return (record.topic, record.key, record.value, record.headers, msg.partition())

    async def _charge(
        self,
        job: _Job,
        body: bytes,
        key: str,
        correlation: str,
        summary: dict[str, Any],
        traceparent: str | None,
        previous: int,
        operation: str,
    ) -> PaymentOutcome:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": self._auth,
            "Idempotency-Key": key,
        }
        if traceparent is not None:
            headers["traceparent"] = traceparent
        trace_id = trace_id_from_traceparent(traceparent) if traceparent is not None else None
        breaker, retry = self._breaker, self._policy.retry
        deadline_s = self._policy.timeout.deadline_s
        request: dict[str, Any] | None = None
        while True:
            if breaker.open_until:
                await breaker.wait()  # outside the deadline: waiting for the endpoint costs no attempt
            try:
                async with asyncio.timeout(deadline_s):
                    attempt = 0
                    while True:
                        if not breaker.admit():
                            raise _Open
                        attempt += 1
                        job.calls += 1
                        self.attempts += 1
                        started = time.perf_counter()
                        if request is None:
                            request = redacted(summary)
                        try:
                            outcome = await self._post(body, headers)
                        except Exception as exc:
                            if isinstance(exc, Permanent):
                                breaker.succeeded()  # the endpoint answered; the request was at fault
                            elif not isinstance(exc, ContractError):
                                breaker.failed()
                            status, result = status_for_error(exc)
                            self._audit(
                                operation, key, status, result, started, previous + job.calls,
                                breaker.state, correlation, trace_id, request, {},
                                f"{type(exc).__name__}: {exc}",
                            )  # fmt: skip
                            if not isinstance(exc, Retriable):
                                raise
                            wanted = exc.retry_after_s
                            if attempt >= retry.max_attempts or (
                                wanted is not None and wanted * 1000 > retry.max_delay_ms
                            ):
                                raise RetriesExhausted(
                                    f"{attempt} attempts failed; last: {exc}",
                                    attempts=attempt,
                                    retry_after_s=wanted,
                                ) from exc
                            await asyncio.sleep(retry.backoff_ms(attempt, retry_after_s=wanted) / 1000)
                            continue
                        breaker.succeeded()
                        self._audit(
                            operation, key, outcome.status, "success", started, previous + job.calls,
                            breaker.state, correlation, trace_id, request,
                            redacted(
                                {
                                    "payment_id": outcome.payment_id,
                                    "status": outcome.status,
                                    "decline_code": outcome.decline_code,
                                }
                            ),
                            None,
                        )  # fmt: skip
                        return outcome
            except TimeoutError as exc:
                raise DeadlineExceeded(f"{ENDPOINT}: no answer within the {deadline_s:g} s deadline") from exc
            except _Open:
                continue

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> PaymentOutcome:
        session = self._session
        assert session is not None
        limit = MAX_RESPONSE_BYTES
        try:
            async with session.post(
                self._url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise ResponseTooLarge(
                        f"POST {self._safe_url}: answered {resp.status} with a {declared}-byte body (limit {limit})"
                    )
                content = resp.content
                answer = b""
                while not content.at_eof():
                    chunk = await content.read(_READ_CHUNK)
                    if not chunk:
                        break
                    answer += chunk
                    if len(answer) > limit:
                        raise ResponseTooLarge(
                            f"POST {self._safe_url}: answered {resp.status} with a body over {limit} bytes"
                        )
                status, answer_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise HttpTimeout(f"POST {self._safe_url}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"POST {self._safe_url}: {type(exc).__name__}") from exc
        return parse_response(HttpResponse(status=status, headers=answer_headers, body=answer))

    def _audit(
        self,
        operation: str,
        key: str,
        status: str,
        outcome: str,
        started: float,
        attempt: int,
        breaker_state: str,
        correlation: str,
        trace_id: str | None,
        request_summary: dict[str, Any],
        response_summary: dict[str, Any],
        error: str | None,
    ) -> None:
        value = audit_record(
            operation=operation,
            key=key,
            status=status,
            outcome=outcome,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempt=attempt,
            breaker_state=breaker_state,
            correlation_id=correlation,
            trace_id=trace_id,
            request_summary=request_summary,
            response_summary=response_summary,
            error=error,
        )
        try:  # handed over without waiting, as the product's audit sink does
            self._producer.produce(self.audit_topic, value, b"payments")
        except (BufferError, confluent_kafka.KafkaException):
            self.audit_lost += 1
        audit_line(value, outcome)  # its log line, when the level is on (as the product writes it)


def _resolve(future: asyncio.Future[dict[str, int]], value: dict[str, int]) -> None:
    if not future.done():
        future.set_result(value)


# --------------------------------------------------------------------------- the bench stage


async def payments_floor_rate(
    info: BrokerInfo, url: str, *, events: int, policies: int, concurrency: int
) -> Run:
    """The prototype over ``events`` pre-published premium.due (key order on), timed from its
    first assignment to its last result, as ``payments_rate`` times the product; then checked:
    one result and one marker per event on their topics, one audit record per attempt, and
    every idempotency key charged exactly once by the sandbox gateway."""
    world = payments_world(info, url, events=events, policies=policies, concurrency=concurrency)
    async with world as (settings, catalogue, sample):
        floor = FloorPayments(settings, catalogue, concurrency=concurrency)
        await floor.start()
        try:
            await floor.wait_assigned()
            watch = Stopwatch()
            while floor.answered < events:
                await asyncio.sleep(0.02)
                floor.check()
            run = watch.stop(floor.results)
        finally:
            ends = await floor.stop()
    assert floor.results == events, f"{floor.results} results for {events} events"
    assert floor.dead_letters == 0, f"{floor.dead_letters} records were dead-lettered"
    assert ends[floor.results_topic] == events, f"results topic holds {ends[floor.results_topic]}"
    assert ends[floor.dedupe] == events, f"dedupe topic holds {ends[floor.dedupe]}"
    assert floor.audit_lost == 0, f"{floor.audit_lost} audit records not handed to the producer"
    assert ends[floor.audit_topic] == floor.attempts, (
        f"{ends[floor.audit_topic]} audit records for {floor.attempts} attempts"
    )
    await _check_charged_once(url, [idempotency_key(e.event_id, APP, "CHARGE") for e in sample])
    return run


async def _check_charged_once(url: str, keys: list[str]) -> None:
    """Every key charged exactly once, by the sandbox gateway's own count."""
    async with aiohttp.ClientSession() as session, session.get(url + "/_sandbox/gateway/charges") as resp:
        resp.raise_for_status()
        by_key = orjson.loads(await resp.read())["by_key"]
    assert len(set(keys)) == len(keys), "idempotency keys are not distinct"
    wrong = [key for key in keys if by_key.get(key) != 1]
    assert not wrong, f"{len(wrong)} keys not charged exactly once (e.g. {wrong[0]}: {by_key.get(wrong[0])})"
