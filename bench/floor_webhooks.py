"""The stripped prototype of the webhooks app: the cheapest code that keeps its guarantees.

``bench/bench_webhooks.py`` runs it as the ``webhooks-floor`` stage next to ``webhooks`` (the
product), on the same input (fresh topics, the same 100 subscriptions, the same sample events)
and timed the same way, so the ratio of the two says how far the product's hot path is from
its floor; its end-to-end latency phase measures the floor too, after the product, on the same
paced input.  It is a measuring stick, never a second implementation to run: it does nothing
the comparison does not need.

One asyncio loop, one consumer group, one producer, the product's partner transport:

* **Kafka clients**: the product's own configurations, rendered by
  :class:`~processors.kafka.KafkaClients` from the settings the bench gives the app
  (``group_consumer(<prefix>webhooks, key_ordered=True)``, as the runner asks for an app whose
  retry router keeps key order, and ``output_producer_config`` with the webhooks engine's
  settings and the catalogue's largest record), so both sides run with identical librdkafka
  settings.  No librdkafka key is written here.  Not added: the lag statistics callback
  (metrics only).
* **Fetching**: a poll thread calling :func:`processors.kafka.consume.fetch` on the event
  topics and the dispatch topic and handing each batch to the loop; every consumer call
  (commit, pause, resume, close, rebalance callbacks) happens on that thread.  The retry tiers
  are not subscribed (see the approximations).
* **Subscriptions and grants**: the product's stores (``SubscriptionStore`` and, when the
  catalogue has the partner registry, ``PartnerStore``) materialise the compacted topics, read
  in full before the consumer starts and again caught up on every assignment, as the app does.
* **Fan-out** (an event record): the product's :class:`~processors.contract.Codec`
  (``make_codec(settings)``, strict), the key must be the subject, the type looked up in the
  table (``SubscriptionTable.matching``), each target's grants by
  :func:`~processors.webhooks.subscriptions.effective_grants`, and the dispatch records built
  by the product's :func:`~processors.webhooks.delivery.dispatch_records` (body, stable
  ``webhook-id``, keys of ordered subscriptions, headers): :func:`fan_out`.  The records go
  to the dispatch topic; the event is done once the broker acknowledged all of them.  The
  dispatch-topic hop is kept: a delivery's body and id are frozen there before its first
  attempt, and the delivery reads them back (:meth:`DispatchJob.from_message`).
* **Key order**: one lane (a deque) per (partition, key) for both kinds of record; a fixed pool
  of ``concurrency`` worker tasks takes ready lanes from a queue (no task per record).  The next
  record of a key starts only after the previous one's outputs were acknowledged (as in the
  product's engine), so an ordered subscription's deliveries of one entity go one at a time,
  in order; the worker is released before that wait.  The retry router's ordering gate is the
  product's (:class:`~processors.runtime.routing.RetryRouter`, ``ordered=is_ordered``).
* **Delivery** (a dispatch record): the product's checks in the product's order (deleted or
  inactive subscription, endpoint disabled, payload bound, busy endpoint → the first tier as
  ``Deferred``, secrets decrypted once per subscription version); per endpoint its own
  connection slots (``max_concurrency``), waiting room (``max_waiting_per_endpoint``),
  optional rate limit (the product's token bucket) and a minimal breaker
  (``bench.floor_payments._Breaker``) counting what the product's breaker counts
  (:func:`~processors.resilience.classify.breaker_outcome`).  A delivery whose endpoint is
  busy or whose breaker is open goes to the retry tier at once instead of holding a slot (an
  open breaker is seen before a slot is taken, and asked again once one is, as the product's
  guard asks it).
  The request: :func:`request_headers` (the product's
  :func:`~processors.webhooks.signing.signature_headers`, ``Content-Type``, ``User-Agent`` and
  the record's ``traceparent``, as the app and its transport send them) POSTed through the
  product's :class:`~processors.webhooks.transport.PinnedTransport`, configured as the app's
  (SSRF policy from the settings, checked and pinned addresses, no redirects, capped answer).
  It is reused rather than rewritten: its per-request work is the URL check (cached), the
  checked-address cache and the pinned resolver, which is exactly the SSRF guarantee, so a
  leaner copy would only weaken it.  The attempt runs under the policy's deadline
  (``DeadlineExceeded``; an attempt it cuts short is neither audited nor counted by the
  breaker, as in the product); the answer is classified by the product's
  :func:`~processors.webhooks.delivery.classify_status` (only 2xx delivers; 410 disables the
  endpoint).  One attempt per delivery, as the ``partner-webhooks`` policy makes (checked).
* **Outputs per delivery attempt**: one delivery-log line (the product's
  :func:`~processors.webhooks.delivery.log_line_json`, the value ``log_record`` writes, without
  its ``OutRecord`` of fresh headers), and one audit record per attempt on the audit topic,
  as the product's endpoint guard writes it (:func:`audit_value`: the product's
  :func:`~processors.observability.audit.outbound_json` with the guard's fields), handed to the
  producer without waiting, as the product's audit sink does.  A failed delivery goes to the
  next retry tier (or the DLQ) through the product's ``RetryRouter.failed`` (its headers,
  its partition).  A 410 writes the product's ``webhook.endpoint_disabled`` notice.
* **Offsets**: per partition, committed every ``commit_interval_ms`` and on revocation and
  shutdown, only up to the contiguous run of records whose work is done: an event once its
  dispatch records are acknowledged; a dispatch record once its delivery finished or moved to a
  retry tier and its delivery-log line (and retry record) are acknowledged.  Revocation waits
  for the partitions' running records (up to the shutdown grace) first.  Buffered records are
  bounded per partition and per app by pausing partitions.

Approximations (none is on the path the bench measures: its healthy stage delivers every
dispatch record on the first attempt): the retry tiers are written but not read (the floor
subscribes to none, so the ordering gate is not rebuilt from them on assignment and a failed
delivery is never tried again here); the half-open breaker admits every caller instead of three
probes and one success closes it; the failing clock (``failing_since``), disabling after days of
failures and the store write of a 410's disabled subscription are left out (a 410 disables the
endpoint in this process only, until the subscription's next version); no delivery metrics,
no tracing spans (tracing is off in the bench), no audit log line; a record too large for its
topic or a failed produce stops the run instead of being fitted or retried.

:func:`floor_running` runs the floor as ``running`` in ``bench/bench_webhooks.py`` runs the
product: started, yielded once it has its partitions with a task that fails once the run cannot
finish, stopped cleanly at exit; the throughput stage and the latency phase both run it.
:func:`webhooks_floor_run` sets up, publishes and times exactly as ``pipeline_run`` in
``bench/bench_webhooks.py`` does for the ``webhooks`` stage (from the first assignment to the
last delivery the receivers accepted), fails at once if a delivery goes to a retry tier or the
DLQ (the floor would never finish it), and then checks: one dispatch record per expected
delivery, one delivery-log line per attempt, all ``delivered``, and one audit record per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from uuid import UUID

import confluent_kafka

from bench.common import isolated_catalogue
from bench.floor_payments import _Breaker
from bench.floor_payments import _Part as _OffsetBook
from bench.harness import Run, Stopwatch
from processors import context as record_context
from processors.adapters.http import HttpRequest, HttpResponse
from processors.apps.registry import _optional_topic, catalogue_topic, secret_box, ssrf_policy
from processors.contract import Codec
from processors.errors import BrokerError, ContractError, Permanent, Retriable, ValidationFailed
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.observability.audit import (
    audit_line,
    outbound_json,
    status_for_error,
    trace_id_from_traceparent,
)
from processors.partners.store import PARTNERS_TOPIC, PartnerStore
from processors.resilience.classify import BreakerOutcome, breaker_outcome
from processors.resilience.config import EndpointPolicy, load_resilience
from processors.resilience.guard import DeadlineExceeded
from processors.runner import kafka_clients, make_codec, output_producer_config
from processors.runtime.closing import close_group_consumer
from processors.runtime.failures import H, describe_error
from processors.runtime.message import KafkaMessage, OutRecord, header_value
from processors.runtime.routing import Deferred, RetryRouter, original_id
from processors.settings import Settings
from processors.topics.catalogue import Catalogue
from processors.webhooks.app import (
    USER_AGENT,
    _breaker_name,
    _describe,
    _Gone,
    _inactive_reason,
    _int,
    _NotDelivered,
    _TokenBucket,
    url_host,
)
from processors.webhooks.delivery import (
    DispatchJob,
    Status,
    Target,
    classify_status,
    dispatch_records,
    endpoint_event,
    excerpt,
    is_ordered,
    log_line_json,
)
from processors.webhooks.secrets import SecretBox, SecretDecryptFailed, active_secrets
from processors.webhooks.signing import signature_headers
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import (
    GrantDirectory,
    Subscription,
    SubscriptionTable,
    effective_grants,
)
from processors.webhooks.transport import PinnedTransport

if TYPE_CHECKING:
    from bench.bench_webhooks import Partners
    from processors_dev.devbroker import BrokerInfo

__all__ = [
    "FloorWebhooks",
    "audit_value",
    "fan_out",
    "floor_running",
    "request_headers",
    "webhooks_floor_run",
]

APP: Final = "webhooks"
STAGE: Final = "webhooks-floor"
OPERATION: Final = "deliver"
POLICY: Final = "partner-webhooks"
_JSON_HEADERS: Final = [("content-type", b"application/json")]

TP = tuple[str, int]


# --------------------------------------------------------------------------- pure pieces


def fan_out(
    codec: Codec,
    table: SubscriptionTable,
    partners: GrantDirectory | None,
    msg: KafkaMessage,
    *,
    topic: str,
) -> list[OutRecord]:
    """The dispatch records of one event record: decoded strictly, its key checked against its
    subject, its type looked up in ``table``, one record per matching subscription built by the
    product's :func:`~processors.webhooks.delivery.dispatch_records` for its effective grants."""
    headers = msg.headers()
    event = codec.decode(msg.value(), headers)
    key = msg.key()
    if key is None or key != event.subject.encode():
        raise ValidationFailed(f"message key does not match the event subject ({event.event_type})")
    targets = [
        Target(sub.id, sub.ordered, effective_grants(sub, partners))
        for sub in table.matching(event.event_type)
    ]
    return dispatch_records(event, targets, topic=topic, traceparent=header_value(headers, "traceparent"))


def request_headers(
    job: DispatchJob, secrets: Sequence[str], timestamp_s: int, traceparent: str | None
) -> dict[str, str]:
    """The headers of one attempt as the partner receives them, in the product's order: the
    signature headers, ``Content-Type``, ``User-Agent`` (the app's) and the record's
    ``traceparent`` when it has one (the transport's, passed on from the record context;
    the transport then adds ``Accept-Encoding: identity`` itself)."""
    headers = signature_headers(
        webhook_id=job.webhook_id,
        event_type=job.event_type,
        timestamp_s=timestamp_s,
        body=job.body,
        secrets=secrets,
    )
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = USER_AGENT
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return headers


def audit_value(
    *,
    subscription_id: str,
    url_host: str,
    job: DispatchJob,
    attempt: int,
    status: str,
    outcome: str,
    latency_ms: float,
    breaker_state: str,
    traceparent: str | None,
    response_summary: Any,
    error: str | None,
    audit_id: UUID | None = None,
    occurred_at: datetime | None = None,
) -> bytes | None:
    """The audit record the product's endpoint guard writes for one delivery attempt (its
    ``CallContext``: app ``webhooks``, operation ``deliver``, the ``webhook-id`` as the
    idempotency key, no correlation id, the request summary of ``WebhooksApp._send``), through
    the product's own writer; None when that writer refuses a field (the product then takes
    the model's path)."""
    written = outbound_json(
        app=APP,
        endpoint=_breaker_name(subscription_id),
        operation=OPERATION,
        status=status,
        outcome=outcome,
        latency_ms=latency_ms,
        attempt=attempt,
        idempotency_key=job.webhook_id,
        breaker_state=breaker_state,
        correlation_id=None,
        trace_id=trace_id_from_traceparent(traceparent) if traceparent is not None else None,
        request_summary={
            "subscription_id": subscription_id,
            "url_host": url_host,
            "event_type": job.event_type,
            "bytes": len(job.body),
        },
        response_summary=response_summary,
        error=error,
        audit_id=audit_id,
        occurred_at=occurred_at,
    )
    return None if written is None else written[2]


# --------------------------------------------------------------------------- bookkeeping


class _Part(_OffsetBook):
    """One assigned partition (the payments floor's offset book, named by topic and partition)."""

    __slots__ = ("events", "tp")

    def __init__(self, tp: TP, *, events: bool) -> None:
        super().__init__(tp[1])
        self.tp = tp
        self.events = events


class _Endpoint:
    """One subscription's run-time side: slots, waiting room, rate, breaker, secrets, host."""

    __slots__ = (
        "_secrets",
        "breaker",
        "disabled",
        "host",
        "id",
        "in_flight",
        "limits",
        "name",
        "rate",
        "slots",
        "url",
        "waiting",
    )

    def __init__(self, sub: Subscription, breaker: _Breaker) -> None:
        self.id = sub.id
        self.name = _breaker_name(sub.id)
        self.limits: tuple[int, float | None] = (sub.max_concurrency, sub.rate_limit_per_s)
        self.slots = asyncio.Semaphore(sub.max_concurrency)
        self.in_flight = 0
        self.waiting = 0
        self.rate = _TokenBucket(sub.rate_limit_per_s) if sub.rate_limit_per_s else None
        self.breaker = breaker
        self.url = sub.url
        self.host = url_host(sub.url)
        self.disabled: tuple[int, str] | None = None
        """(subscription version, reason) of a 410 answered in this process."""
        self._secrets: tuple[int, float, list[str]] | None = None

    def disabled_reason(self, sub: Subscription) -> str | None:
        disabled = self.disabled
        return disabled[1] if disabled is not None and disabled[0] == sub.version else None

    def secrets(self, sub: Subscription, box: SecretBox) -> list[str]:
        """The unexpired secrets, newest first, decrypted once per subscription version."""
        now = time.time()
        cached = self._secrets
        if cached is not None and cached[0] == sub.version and now < cached[1]:
            return cached[2]
        moment = datetime.fromtimestamp(now, UTC)
        plain = [
            s.get_secret_value() for s in active_secrets(sub.secrets, box, associated=sub.id, now=moment)
        ]
        expiries = [s.expires_at.timestamp() for s in sub.secrets if s.expires_at is not None]
        self._secrets = (sub.version, min((e for e in expiries if e > now), default=math.inf), plain)
        return plain


_NONE, _FANNED, _DELIVERED, _RETRIED, _DEAD, _SKIPPED, _FORWARDED = range(7)


class _Job:
    """One record from the start of its handling to the acknowledgement of its outputs."""

    __slots__ = ("floor", "kind", "lane", "lane_key", "left", "lines", "offset", "part", "records")

    def __init__(
        self, floor: FloorWebhooks, part: _Part, lane_key: Any, lane: deque[Any], offset: int
    ) -> None:
        self.floor = floor
        self.part = part
        self.lane_key = lane_key
        self.lane = lane
        self.offset = offset
        self.left = 0
        self.kind = _NONE
        self.lines = 0
        self.records = 0

    def delivered(self, err: Any, _msg: Any) -> None:
        # librdkafka's delivery report, on the producer's report thread (inside poll())
        self.floor._reports.append((self, err))


class _Unavailable(Exception):
    """The endpoint's breaker refused the call."""


# --------------------------------------------------------------------------- the prototype


class RunSpoiled(RuntimeError):
    """A delivery left the healthy path (a retry tier, the DLQ, skipped): this run of the floor
    cannot finish, since it reads no retry tier.  The stage discards the run and starts a new one
    on fresh topics (:data:`SPOILED_RUNS_ALLOWED`); the product's runs are never discarded, so
    the floor's figure can only err on its fast side."""


SPOILED_RUNS_ALLOWED = 6
"""Runs of the floor discarded in a row before the stage gives up."""


class FloorWebhooks:
    """The webhooks pipeline with nothing but its guarantees (see the module doc).

    ``store``, ``partners`` and ``transport`` replace the product's (unit tests)."""

    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        *,
        concurrency: int,
        store: SubscriptionStore | None = None,
        partners: PartnerStore | None = None,
        transport: PinnedTransport | None = None,
    ) -> None:
        if not settings.resilience_enabled:
            raise AssertionError("the floor keeps the resilience layer: run it with resilience enabled")
        self.settings = settings
        topics = catalogue.app(APP)
        hooks = self.hooks = settings.webhooks
        self.engine = hooks.engine
        self.group = settings.group_prefix + APP
        self.event_sources = tuple(topics.sources)
        self.dispatch_topic = catalogue_topic(catalogue, "integrations.webhooks.dispatch")
        self.deliveries_topic = catalogue_topic(catalogue, "integrations.webhook.deliveries")
        self.notices_topic = catalogue_topic(catalogue, "integrations.webhook.endpoint-events")
        self.audit_topic = catalogue_topic(catalogue, "integrations.audit")
        self.router = RetryRouter(
            replace(topics, sources=(self.dispatch_topic,)),
            app=APP,
            keep_key_order=True,
            ordered=is_ordered,
            jitter_ratio=hooks.jitter_ratio,
        )
        self.tier_topics = self.router.tier_topics
        self.dlq_topic = topics.dlq
        kafka: KafkaClients = kafka_clients(settings)
        self._consumer_conf = kafka.group_consumer(self.group, key_ordered=self.router.keep_key_order)
        self._producer_conf = output_producer_config(
            kafka, self.engine, catalogue.largest_record_written(APP)
        )
        policy: EndpointPolicy = load_resilience(settings.resilience_file).for_endpoint(POLICY)
        if policy.retry.max_attempts != 1:
            raise AssertionError(
                "the floor makes one attempt per delivery, as the partner-webhooks policy does"
            )
        self._policy = policy
        self._deadline_s = policy.timeout.deadline_s
        self._timeouts = policy.timeout.http()
        self._cap = hooks.retry_after_cap_s
        self._max_payload = hooks.max_payload_bytes
        self._max_waiting = hooks.max_waiting_per_endpoint
        self._excerpt_chars = hooks.response_excerpt_chars
        self._codec = make_codec(settings)
        self._box = secret_box(settings)
        self._store = store or SubscriptionStore(
            settings.bootstrap_servers,
            catalogue_topic(catalogue, "integrations.webhook.subscriptions"),
            client_overrides=settings.client_overrides,
        )
        self._table = self._store.table
        partners_topic = _optional_topic(catalogue, PARTNERS_TOPIC)
        if partners is None and partners_topic is not None:  # as build_webhooks_app does
            partners = PartnerStore(
                settings.bootstrap_servers, partners_topic, client_overrides=settings.client_overrides
            )
        self._partners = partners
        self._transport = transport or PinnedTransport(
            policy=ssrf_policy(settings),
            timeouts=self._timeouts,
            total_timeout_s=None,  # the deadline bounds the whole exchange, as in the product
            max_response_bytes=hooks.max_response_bytes,
            max_connections=self.engine.max_concurrency,
            max_connections_per_host=hooks.max_connections_per_host,
            address_cache_s=hooks.address_cache_s,
        )
        self.concurrency = concurrency
        self._endpoints: dict[str, _Endpoint] = {}
        self._breakers: dict[str, _Breaker] = {}

        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self.audit_records: list[bytes] = []
        """The audit records of a floor that was never started (unit tests)."""
        self._send_audit: Callable[[bytes], None] = self.audit_records.append
        self._parts: dict[TP, _Part] = {}
        self._lanes: dict[Any, deque[Any]] = {}
        self._ready: asyncio.Queue[tuple[Any, deque[Any], _Part]] = asyncio.Queue()
        self._reports: list[tuple[_Job, Any]] = []
        self._to_consumer: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._buffered = 0
        self._app_full = False
        self._draining = False
        self._fatal: BaseException | None = None
        self._trouble = asyncio.Event()
        self._assigned = asyncio.Event()
        self._polling = threading.Event()
        self._reporting = threading.Event()
        self._poll_done: asyncio.Future[dict[str, int]] | None = None
        self._report_thread: threading.Thread | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._tick: asyncio.TimerHandle | None = None
        # counts (of records whose outputs were acknowledged)
        self.events = 0
        self.dispatched = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.skipped = 0
        self.forwarded = 0
        self.lines = 0
        self.attempts = 0
        self.audit_lost = 0
        self.ends: dict[str, int] = {}
        """Once stopped: records on the dispatch, delivery-log, audit and failure topics."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        # the tables first (the app loads them before its consumer starts), then the transport
        await self._store.start()
        await self._store.wait_caught_up()
        if self._partners is not None:
            await self._partners.start()
        await loop.run_in_executor(None, self._codec.prepare)
        await self._transport.start()
        self._producer = confluent_kafka.Producer(self._producer_conf)
        producer = self._producer
        audit_topic = self.audit_topic

        def send_audit(value: bytes) -> None:  # handed over without waiting, as the audit sink does
            try:
                producer.produce(audit_topic, value, b"webhooks")
            except (BufferError, confluent_kafka.KafkaException):
                self.audit_lost += 1

        self._send_audit = send_audit
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
        self.check()

    def check(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def watch(self) -> None:
        """Return never; raise once the run cannot finish (a failure, or a delivery moved to a
        retry tier or the DLQ: the floor reads neither)."""
        await self._trouble.wait()
        self.check()
        raise RunSpoiled(
            f"{self.retried} deliveries went to a retry tier, {self.dead} to the DLQ and {self.skipped} "
            "were skipped: the floor reads no retry tier, so the run cannot finish"
        )

    async def stop(self) -> dict[str, int]:
        """Drain the running records, commit, flush, close; the end offsets of the output topics."""
        loop = asyncio.get_running_loop()
        self._draining = True
        await self._wait_idle(list(self._parts.values()), self.engine.shutdown_grace_s)
        if self._tick is not None:
            self._tick.cancel()
        self._to_consumer.put(("final", self._due_commits()))
        self._reporting.clear()
        if self._report_thread is not None:
            await loop.run_in_executor(None, self._report_thread.join, 5.0)
        if self._producer is not None:
            await loop.run_in_executor(None, self._producer.flush, 30.0)
        if self._reports:
            self._on_reports(self._reports)
            self._reports = []
        self._send_audit = self.audit_records.append  # the producer's last reference goes with it
        self._polling.clear()
        ends: dict[str, int] = {}
        if self._poll_done is not None:
            ends = await self._poll_done
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self._transport.close()
        await self._store.stop()
        if self._partners is not None:
            await self._partners.stop()
        self._producer = self._consumer = None  # librdkafka handles are destroyed with them
        self.ends = ends
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
                [*self.event_sources, self.dispatch_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            batch, timeout_s = self.engine.poll_batch, self.engine.poll_timeout_ms / 1000
            while self._polling.is_set():
                self._serve_requests(consumer)
                msgs = fetch(consumer, batch, timeout_s)
                if msgs:
                    loop.call_soon_threadsafe(self._on_batch, msgs)
            self._serve_requests(consumer)
            ends = self._end_offsets(consumer)
            close_group_consumer(consumer, what="webhooks floor")
        except BaseException as exc:
            loop.call_soon_threadsafe(self._failed, exc)
        finally:
            loop.call_soon_threadsafe(self._assigned.set)
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
                tps = [confluent_kafka.TopicPartition(t, p) for t, p in arg]
                with contextlib.suppress(confluent_kafka.KafkaException):
                    (consumer.pause if what == "pause" else consumer.resume)(tps)

    def _end_offsets(self, consumer: Any) -> dict[str, int]:
        """Records on the dispatch, delivery-log, audit and failure topics (this run's own)."""
        ends: dict[str, int] = {}
        topics = (self.dispatch_topic, self.deliveries_topic, self.audit_topic, *sorted(self.tier_topics))
        for topic in (*topics, self.dlq_topic):
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            ends[topic] = sum(
                consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions
            )
        return ends

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        if tps:
            consumer.resume([confluent_kafka.TopicPartition(t, p) for t, p in tps])
        self._on_loop(self._assigned_parts(tps))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        offsets = self._on_loop(self._revoked([(p.topic, p.partition) for p in partitions], commit=True))
        if offsets:
            with contextlib.suppress(confluent_kafka.KafkaException):
                consumer.commit(offsets=offsets, asynchronous=False)

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self._on_loop(self._revoked([(p.topic, p.partition) for p in partitions], commit=False))

    def _on_loop(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # ------------------------------------------------------------------ rebalance (on the loop)

    async def _assigned_parts(self, tps: list[TP]) -> None:
        sources = set(self.event_sources)
        for tp in tps:
            self._parts[tp] = _Part(tp, events=tp[0] in sources)
        if tps:  # the tables caught up before any record of these partitions runs, as the app does
            await self._store.wait_caught_up()
            if self._partners is not None:
                await self._partners.wait_caught_up()
        self._assigned.set()

    async def _revoked(self, tps: list[TP], *, commit: bool) -> list[Any]:
        parts = [self._parts[tp] for tp in tps if tp in self._parts]
        for part in parts:
            part.revoked = True
        await self._wait_idle(parts, self.engine.shutdown_grace_s)
        offsets = []
        for part in parts:
            self._buffered -= len(part.offsets)  # fetched, never finished: redelivered
            del self._parts[part.tp]
            offset = part.commit_due()
            if commit and offset is not None:
                offsets.append(confluent_kafka.TopicPartition(part.tp[0], part.tp[1], offset))
        gone = {part.tp for part in parts}
        for lane_key in [k for k in self._lanes if k[0] in gone]:
            del self._lanes[lane_key]
        self.router.gate.drop_partitions({p for _, p in tps})
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
            tp = (msg.topic(), msg.partition())
            part = parts.get(tp)
            if part is None or part.revoked or not part.track(msg.offset()):
                continue
            self._buffered += 1
            key = msg.key()
            lane_key = (tp, key if key is not None else msg.offset())
            lane = lanes.get(lane_key)
            if lane is None:
                lane = lanes[lane_key] = deque((msg,))
                ready.put_nowait((lane_key, lane, part))
            else:
                lane.append(msg)
            if not part.full and len(part.offsets) >= bound:
                part.full = True
                if not self._app_full:
                    self._to_consumer.put(("pause", [tp]))
        if not self._app_full and self._buffered >= self.engine.max_buffered:
            self._app_full = True
            self._to_consumer.put(("pause", [tp for tp, p in parts.items() if not p.full]))

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
                due.append(confluent_kafka.TopicPartition(part.tp[0], part.tp[1], offset))
        return due

    # ------------------------------------------------------------------ workers

    async def _worker(self) -> None:
        # A context of this task's own with no traceparent: the transport passes on only the
        # one request_headers() puts in (the record's), never another task's.
        record_context.enter_new()
        ready = self._ready
        while True:
            lane_key, lane, part = await ready.get()
            if part.revoked or self._draining or self._fatal is not None:
                continue  # not started: redelivered to whoever owns the partition next
            msg = lane[0]
            part.running += 1
            job = _Job(self, part, lane_key, lane, msg.offset())
            try:
                if part.events:
                    outputs = self._fan_out(msg)
                    job.kind = _FANNED
                    job.records = len(outputs)
                else:
                    outputs = await self._deliver(msg, job)
            except Exception as exc:  # poison input (or a bug): the failure route, never lost
                outputs = self._failure(msg, exc, job)
            if not outputs:
                self._finish(job)
                continue
            job.left = len(outputs)
            for record in outputs:
                while not self._produce(record, job):
                    await asyncio.sleep(0.05)  # the local queue is full: wait for deliveries
                if self._stopped():
                    return

    def _produce(self, record: OutRecord, job: _Job) -> bool:
        """Hand ``record`` to librdkafka (its report finishes ``job``); False when the local
        queue is full.  A refused record stops the run."""
        try:
            if record.partition is None:
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    headers=record.headers or None,
                    on_delivery=job.delivered,
                )
            else:
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    partition=record.partition,
                    headers=record.headers or None,
                    on_delivery=job.delivered,
                )
        except BufferError:
            return False
        except confluent_kafka.KafkaException as exc:
            self._failed(BrokerError(f"produce to {record.topic} failed: {exc}"))
        return True

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
        if kind == _DELIVERED:
            self.delivered += 1
        elif kind == _FANNED:
            self.events += 1
            self.dispatched += job.records
        elif kind == _RETRIED:
            self.retried += 1
            self._trouble.set()
        elif kind == _DEAD:
            self.dead += 1
            self._trouble.set()
        elif kind == _SKIPPED:
            self.skipped += 1
            self._trouble.set()
        elif kind == _FORWARDED:
            self.forwarded += 1
        self.lines += job.lines
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
                self._to_consumer.put(("resume", [part.tp]))
        if self._app_full and self._buffered <= self.engine.max_buffered // 2:
            self._app_full = False
            self._to_consumer.put(("resume", [tp for tp, p in self._parts.items() if not p.full]))

    def _stopped(self) -> bool:
        return self._fatal is not None

    def _failed(self, exc: BaseException) -> None:
        """Stop for good: nothing is committed past what was acknowledged so far."""
        if self._fatal is None:
            self._fatal = exc
        self._assigned.set()
        self._trouble.set()

    # ------------------------------------------------------------------ one record

    def _fan_out(self, msg: KafkaMessage) -> list[OutRecord]:
        partners = self._partners.table if self._partners is not None else None
        return fan_out(self._codec, self._table, partners, msg, topic=self.dispatch_topic)

    async def _deliver(self, msg: KafkaMessage, job: _Job) -> list[OutRecord]:
        dispatch = DispatchJob.from_message(msg)
        router = self.router
        if router.already_in_retry(msg):
            return []
        forward = router.follow(msg)
        if forward is not None:
            job.kind = _FORWARDED
            return [forward]
        headers = msg.headers()
        coordinates = original_id(msg)
        previous = _int(header_value(headers, H.ATTEMPTS))
        sub = self._table.get(dispatch.subscription_id)
        if sub is None or not sub.deliverable:
            router.succeeded(msg)
            job.kind = _SKIPPED
            return [
                self._log(
                    job, dispatch, coordinates, status="skipped", attempt=0,
                    host=url_host(sub.url) if sub is not None else "?",
                    error="subscription deleted" if sub is None else _inactive_reason(sub),
                )
            ]  # fmt: skip
        endpoint = self._endpoint(sub)
        host = endpoint.host
        reason = endpoint.disabled_reason(sub)
        if reason is not None:
            router.succeeded(msg)
            job.kind = _SKIPPED
            return [
                self._log(job, dispatch, coordinates, status="skipped", attempt=0, host=host, error=reason)
            ]
        if len(dispatch.body) > self._max_payload:
            error = Permanent(
                f"payload of {len(dispatch.body)} bytes exceeds the {self._max_payload}-byte limit"
            )
            return self._moved(msg, job, dispatch, coordinates, error, attempt=0, host=host, sent=False)
        if endpoint.in_flight >= sub.max_concurrency and endpoint.waiting >= self._max_waiting:
            busy = Deferred(
                "deferred: the endpoint is busy (all its connections and waiting places taken)",
                max_tier_index=1,
            )
            return self._moved(msg, job, dispatch, coordinates, busy, attempt=0, host=host, sent=False)
        try:
            secrets = endpoint.secrets(sub, self._box)
        except SecretDecryptFailed as undecryptable:
            return self._moved(
                msg, job, dispatch, coordinates, undecryptable, attempt=0, host=host, sent=False
            )
        breaker = endpoint.breaker
        if breaker.open_until and time.monotonic() < breaker.open_until:  # open: no slot taken
            return self._unavailable(msg, job, dispatch, coordinates, endpoint)
        traceparent = header_value(headers, "traceparent")
        attempt = previous + 1
        endpoint.waiting += 1
        try:
            await endpoint.slots.acquire()
        finally:
            endpoint.waiting -= 1
        endpoint.in_flight += 1
        started = time.perf_counter()
        try:
            reason = endpoint.disabled_reason(sub)
            if reason is not None:  # disabled while this one waited
                router.succeeded(msg)
                job.kind = _SKIPPED
                return [
                    self._log(
                        job, dispatch, coordinates, status="skipped", attempt=0, host=host, error=reason
                    )
                ]
            if endpoint.rate is not None:
                await endpoint.rate.acquire()
            response = await self._send(endpoint, sub, dispatch, secrets, attempt, traceparent)
        except _Unavailable:
            return self._unavailable(msg, job, dispatch, coordinates, endpoint)
        except (Retriable, Permanent) as exc:
            if isinstance(exc, AddressRefused):
                return self._moved(
                    msg,
                    job,
                    dispatch,
                    coordinates,
                    exc,
                    attempt=attempt,
                    host=host,
                    sent=False,
                    status="refused",
                )
            if isinstance(exc, _Gone):
                return self._gone(msg, job, dispatch, coordinates, sub, endpoint, exc, attempt, started)
            answer = exc.response if isinstance(exc, _NotDelivered) else None
            return self._moved(
                msg, job, dispatch, coordinates, exc, attempt=attempt, host=host, sent=True,
                http_status=answer.status if answer is not None else None,
                latency_ms=(time.perf_counter() - started) * 1000,
                response_excerpt=excerpt(answer.body, self._excerpt_chars) if answer is not None else None,
            )  # fmt: skip
        finally:
            endpoint.in_flight -= 1
            endpoint.slots.release()
        router.succeeded(msg)
        job.kind = _DELIVERED
        return [
            self._log(
                job, dispatch, coordinates, status="delivered", attempt=attempt, host=host,
                http_status=response.status, latency_ms=(time.perf_counter() - started) * 1000,
            )
        ]  # fmt: skip

    async def _send(
        self,
        endpoint: _Endpoint,
        sub: Subscription,
        dispatch: DispatchJob,
        secrets: list[str],
        attempt: int,
        traceparent: str | None,
    ) -> HttpResponse:
        """One attempt under the deadline and the breaker, audited as the product's guard does."""
        breaker = endpoint.breaker
        if not breaker.admit():
            raise _Unavailable
        headers = request_headers(dispatch, secrets, int(time.time()), traceparent)
        request = HttpRequest("POST", sub.url, headers, dispatch.body)
        try:
            async with asyncio.timeout(self._deadline_s):
                started = time.perf_counter()
                try:
                    response = await self._transport.send(request, timeouts=self._timeouts)
                    status = response.status
                    if not 200 <= status < 300:
                        outcome = classify_status(
                            status, response.retry_after_s(), retry_after_cap_s=self._cap
                        )
                        if outcome.kind == "gone":
                            raise _Gone(outcome, response)
                        if outcome.kind == "retry":
                            raise _NotDelivered(outcome, response)
                except Exception as exc:
                    kind, result = status_for_error(exc)
                    self._audit(
                        endpoint, dispatch, attempt, kind, result, started, breaker.state, traceparent,
                        None, f"{type(exc).__name__}: {exc}",
                    )  # fmt: skip
                    verdict = breaker_outcome(exc)
                    if verdict is BreakerOutcome.FAILURE:
                        breaker.failed()
                    elif verdict is BreakerOutcome.HEALTHY:
                        breaker.succeeded()
                    raise
                described, summary = _describe(response)
                self._audit(
                    endpoint, dispatch, attempt, described, "success", started, breaker.state, traceparent,
                    summary, None,
                )  # fmt: skip
                breaker.succeeded()
                return response
        except TimeoutError as exc:  # the attempt was cancelled: neither audited nor counted
            raise DeadlineExceeded(
                f"{endpoint.name}: no answer within the {self._deadline_s:g} s deadline"
            ) from exc

    def _audit(
        self,
        endpoint: _Endpoint,
        dispatch: DispatchJob,
        attempt: int,
        status: str,
        outcome: str,
        started: float,
        breaker_state: str,
        traceparent: str | None,
        response_summary: Any,
        error: str | None,
    ) -> None:
        value = audit_value(
            subscription_id=endpoint.id,
            url_host=endpoint.host,
            job=dispatch,
            attempt=attempt,
            status=status,
            outcome=outcome,
            latency_ms=(time.perf_counter() - started) * 1000,
            breaker_state=breaker_state,
            traceparent=traceparent,
            response_summary=response_summary,
            error=error,
        )
        self.attempts += 1
        if value is None:
            self.audit_lost += 1
        else:
            self._send_audit(value)
            audit_line(value, outcome)  # its log line, when the level is on (as the product writes it)

    # ------------------------------------------------------------------ outcomes

    def _log(
        self,
        job: _Job,
        dispatch: DispatchJob,
        coordinates: tuple[str, int, int],
        *,
        status: Status,
        attempt: int,
        host: str,
        **details: Any,
    ) -> OutRecord:
        job.lines += 1
        value = log_line_json(
            dispatch, status=status, attempt=attempt, url_host=host, job_coordinates=coordinates, **details
        )
        return OutRecord(self.deliveries_topic, dispatch.subscription_id.encode(), value, _JSON_HEADERS)

    def _moved(
        self,
        msg: KafkaMessage,
        job: _Job,
        dispatch: DispatchJob,
        coordinates: tuple[str, int, int],
        exc: Exception,
        *,
        attempt: int,
        host: str,
        sent: bool,
        status: Literal["failed", "refused"] = "failed",
        http_status: int | None = None,
        latency_ms: float | None = None,
        response_excerpt: str | None = None,
    ) -> list[OutRecord]:
        """The product's ``_failed``: the record to its next tier (or the DLQ) and its log line."""
        moved = self.router.failed(msg, exc, group=self.group, attempts=1 if sent else 0)
        next_step: Literal["retry", "dlq"] = "retry" if moved.topic in self.tier_topics else "dlq"
        job.kind = _RETRIED if next_step == "retry" else _DEAD
        _, message = describe_error(exc)
        return [
            moved,
            self._log(
                job, dispatch, coordinates, status=status,
                attempt=attempt if sent or status == "refused" else 0, host=host, error=message,
                http_status=http_status, latency_ms=latency_ms, response_excerpt=response_excerpt,
                next_step=next_step,
            ),
        ]  # fmt: skip

    def _unavailable(
        self,
        msg: KafkaMessage,
        job: _Job,
        dispatch: DispatchJob,
        coordinates: tuple[str, int, int],
        endpoint: _Endpoint,
    ) -> list[OutRecord]:
        """The breaker is open: straight to a tier that waits at least until it admits calls."""
        unavailable = Retriable(
            "deferred: the endpoint's circuit breaker is open",
            retry_after_s=max(0.0, endpoint.breaker.open_until - time.monotonic()),
        )
        return self._moved(
            msg, job, dispatch, coordinates, unavailable, attempt=0, host=endpoint.host, sent=False
        )

    def _gone(
        self,
        msg: KafkaMessage,
        job: _Job,
        dispatch: DispatchJob,
        coordinates: tuple[str, int, int],
        sub: Subscription,
        endpoint: _Endpoint,
        exc: _Gone,
        attempt: int,
        started: float,
    ) -> list[OutRecord]:
        """410: the endpoint is disabled (in this process) and partners are told."""
        self.router.succeeded(msg)
        job.kind = _SKIPPED
        records = [
            self._log(
                job, dispatch, coordinates, status="disabled", attempt=attempt, host=endpoint.host,
                error=str(exc), http_status=exc.response.status,
                latency_ms=(time.perf_counter() - started) * 1000,
                response_excerpt=excerpt(exc.response.body, self._excerpt_chars),
            )
        ]  # fmt: skip
        if endpoint.disabled_reason(sub) is None:
            reason = "the endpoint answered 410 Gone"
            endpoint.disabled = (sub.version, f"endpoint disabled: {reason}")
            records.append(
                endpoint_event(
                    self.notices_topic, subscription_id=sub.id, kind="disabled", reason=reason,
                    url_host=endpoint.host,
                )
            )  # fmt: skip
        return records

    def _failure(self, msg: KafkaMessage, exc: Exception, job: _Job) -> list[OutRecord]:
        """The product's ``failure``: poison input (or a bug) to its tier or the DLQ."""
        moved = self.router.failed(
            msg, exc, group=self.group, attempts=0 if isinstance(exc, ContractError) else 1
        )
        job.kind = _RETRIED if moved.topic in self.tier_topics else _DEAD
        if job.part.events:
            return [moved]
        try:
            dispatch = DispatchJob.from_message(msg)
        except ContractError:
            return [moved]
        _, message = describe_error(exc)
        next_step: Literal["retry", "dlq"] = "retry" if moved.topic in self.tier_topics else "dlq"
        sub = self._table.get(dispatch.subscription_id)
        return [
            moved,
            self._log(
                job, dispatch, original_id(msg), status="failed", attempt=0,
                host=url_host(sub.url) if sub else "?", error=message, next_step=next_step,
            ),
        ]  # fmt: skip

    def _endpoint(self, sub: Subscription) -> _Endpoint:
        endpoint = self._endpoints.get(sub.id)
        if endpoint is not None and endpoint.limits == (sub.max_concurrency, sub.rate_limit_per_s):
            if endpoint.url != sub.url:
                endpoint.url, endpoint.host = sub.url, url_host(sub.url)
            return endpoint
        # new (or changed) limits take effect for new deliveries; the breaker stays the endpoint's
        breaker = self._breakers.get(sub.id)
        if breaker is None:
            settings = self._policy.breaker
            breaker = self._breakers[sub.id] = _Breaker(
                settings.failure_threshold, settings.timeout_duration_s
            )
        fresh = self._endpoints[sub.id] = _Endpoint(sub, breaker)
        if endpoint is not None:
            fresh.disabled = endpoint.disabled
        return fresh


def _resolve(future: asyncio.Future[dict[str, int]], value: dict[str, int]) -> None:
    if not future.done():
        future.set_result(value)


# --------------------------------------------------------------------------- the bench stage


@contextlib.asynccontextmanager
async def floor_running(
    settings: Settings, catalogue: Catalogue, *, concurrency: int
) -> AsyncIterator[tuple[FloorWebhooks, asyncio.Task[None]]]:
    """The floor on ``settings`` and ``catalogue``, from its first assignment until stopped, as
    ``running`` in ``bench/bench_webhooks.py`` yields the product's app: the floor and a task
    that fails once the run cannot finish (:meth:`FloorWebhooks.watch`), for
    ``Partners.wait_accepted`` to watch.  At exit the floor is stopped (drained, committed,
    flushed, closed); the end offsets of its output topics are then in ``floor.ends``."""
    floor = FloorWebhooks(settings, catalogue, concurrency=concurrency)
    watchdog: asyncio.Task[None] | None = None
    try:
        await floor.start()
        watchdog = asyncio.create_task(floor.watch())
        await floor.wait_assigned()
        yield floor, watchdog
    finally:
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        await floor.stop()


async def webhooks_floor_run(
    info: BrokerInfo, partners: Partners, *, events: int, concurrency: int, per_host: int
) -> Run:
    """Deliveries of ``events`` pre-published events to the 100 healthy endpoints by the floor,
    set up and timed as ``pipeline_run`` sets up and times the ``webhooks`` stage (from the
    first assignment to the last delivery the receivers accepted); then checked."""
    # bench_webhooks imports this module: its helpers are imported when the stage runs
    from bench.bench_webhooks import _publish, matching, pipeline_settings, sample, subscribe

    for spoiled in range(SPOILED_RUNS_ALLOWED + 1):
        with tempfile.TemporaryDirectory() as tmp:
            catalogue, path, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
            settings = pipeline_settings(
                info, path, prefix, concurrency=concurrency, per_host=per_host, resilience=True
            )
            names = await subscribe(info, prefix, partners.base, dead=0)
            events_ = sample(events)
            expected = sum(len(matching(e.event_type)) for e in events_)
            await asyncio.to_thread(_publish, info.bootstrap_servers, prefix, events_)
            await partners.reset()
            try:
                async with floor_running(settings, catalogue, concurrency=concurrency) as (floor, watchdog):
                    watch = Stopwatch()
                    done = await partners.wait_accepted(expected, names, watchdog)
                    run = watch.stop(done)
            except RunSpoiled as exc:
                if spoiled == SPOILED_RUNS_ALLOWED:
                    raise
                print(f"    {STAGE}: run discarded ({exc}); running again on fresh topics")
                continue
        break
    ends = floor.ends
    assert floor.events == len(events_), f"{floor.events} events fanned out of {len(events_)}"
    assert floor.dispatched == expected, f"{floor.dispatched} dispatch records for {expected} deliveries"
    assert ends[floor.dispatch_topic] == expected, f"dispatch topic holds {ends[floor.dispatch_topic]}"
    assert floor.delivered == expected, f"{floor.delivered} deliveries finished of {expected}"
    assert floor.retried == floor.dead == floor.skipped == floor.forwarded == 0, (
        "a delivery did not go through"
    )
    assert floor.lines == floor.attempts == expected, f"{floor.lines} log lines, {floor.attempts} attempts"
    assert ends[floor.deliveries_topic] == floor.lines, f"delivery log holds {ends[floor.deliveries_topic]}"
    assert floor.audit_lost == 0, f"{floor.audit_lost} audit records not handed to the producer"
    assert ends[floor.audit_topic] == floor.attempts, (
        f"{ends[floor.audit_topic]} audit records for {floor.attempts} attempts"
    )
    failed = {t: n for t, n in ends.items() if n and (t in floor.tier_topics or t == floor.dlq_topic)}
    assert not failed, f"records on the failure topics: {failed}"
    mean = await partners.note_bodies(STAGE)
    print(f"    {STAGE}: mean body {mean:.0f} B at the receivers")
    return run
