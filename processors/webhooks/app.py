"""The webhooks app: fan subscribed events out to partners and deliver them, one partner at a time.

One consumer group reads two kinds of records:

* **Events** from the ``insurance.*.events`` topics.  Fan-out looks the event type up in the
  subscriptions table (materialised from the compacted ``integrations.webhook.subscriptions``
  topic) and writes one *dispatch record* per matching subscription to
  ``integrations.webhooks.dispatch``.  The record's value is the exact body the partner gets:
  its ``data`` is the partner-facing projection of the event for the subscription's effective
  grants (:func:`~processors.webhooks.subscriptions.effective_grants`; a partner's grants are
  read from the partner registry table, ``partners``, at fan-out).
* **Dispatch records** (and their retry-tier copies).  Delivery signs the body, sends it through
  the SSRF-pinned transport under the endpoint's own breaker, concurrency and rate limits, and
  writes one line per attempt to ``integrations.webhook.deliveries``.

Isolation: every endpoint has its own breaker (``webhook:<subscription id>``), connection
slots and waiting room.  A delivery never waits behind another partner: when its endpoint's
breaker is open or its waiting room is full, the record goes to the next retry tier at once
instead of holding one of the app's slots.  Key order: an *ordered* subscription keys its
dispatch records by ``subscription|entity``, and the retry router's ordering gate keeps a
failed delivery's followers behind it; other dispatch records have unique keys and never wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from processors import __version__
from processors import context as record_context
from processors.adapters.http import HttpRequest, HttpResponse, HttpTransport
from processors.contract import Codec
from processors.errors import ConfigError, ContractError, Permanent, Retriable, ValidationFailed
from processors.observability.webhook_metrics import WebhookDeliveryMetrics
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import EndpointPolicy
from processors.resilience.guard import CallContext, EndpointGuard, EndpointUnavailable
from processors.resilience.retry import RetriesExhausted
from processors.runtime.app import PendingReader, RetryGateMixin
from processors.runtime.failures import H, describe_error
from processors.runtime.message import KafkaMessage, OutRecord, header_value
from processors.runtime.routing import Deferred, RetryRouter, original_id
from processors.topics.catalogue import AppTopics
from processors.webhooks.config import WebhooksSettings
from processors.webhooks.delivery import (
    DispatchJob,
    Outcome,
    Target,
    classify_status,
    dispatch_records,
    endpoint_event,
    excerpt,
    is_ordered,
    log_record,
)
from processors.webhooks.secrets import SecretBox, SecretDecryptFailed, active_secrets
from processors.webhooks.signing import signature_headers
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.store import CatchUpTimeout
from processors.webhooks.subscriptions import (
    GrantDirectory,
    Subscription,
    SubscriptionTable,
    effective_grants,
)

__all__ = ["PartnerSource", "SubscriptionSource", "WebhooksApp"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
USER_AGENT = f"insurance-processors-webhooks/{__version__}"
_ASSIGNMENT_WAIT_S = 300.0
"""How long an assignment waits for the subscriptions table (librdkafka's max.poll.interval.ms)."""


class SubscriptionSource(Protocol):
    """The subscriptions table and how to change it (``processors.webhooks.store.SubscriptionStore``)."""

    @property
    def table(self) -> SubscriptionTable: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...
    async def put(self, sub: Subscription) -> None: ...
    def add_listener(self, callback: Callable[[str, Subscription | None], None]) -> None: ...


class PartnerSource(Protocol):
    """The partner registry table, for the partners' grants (``processors.partners.store.PartnerStore``)."""

    @property
    def table(self) -> GrantDirectory: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...


class _NotDelivered(Retriable):
    """The partner answered, but not 2xx (410 is :class:`_Gone`)."""

    def __init__(self, outcome: Outcome, response: HttpResponse) -> None:
        super().__init__(outcome.reason, retry_after_s=outcome.retry_after_s)
        self.response = response


class _Gone(Permanent):
    def __init__(self, outcome: Outcome, response: HttpResponse) -> None:
        super().__init__(outcome.reason)
        self.response = response


class _TokenBucket:
    """At most ``rate_per_s`` requests per second on average, bursts up to one second's worth."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_per_s)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate_per_s)


class _Endpoint:
    """The run-time side of one subscription: slots, waiting room, rate, breaker, secrets."""

    def __init__(self, sub: Subscription, guard: EndpointGuard) -> None:
        self.id = sub.id
        self.guard = guard
        self.limits: tuple[int, float | None] = (sub.max_concurrency, sub.rate_limit_per_s)
        self.slots = asyncio.Semaphore(sub.max_concurrency)
        self.in_flight = 0
        self.waiting = 0
        self.rate = _TokenBucket(sub.rate_limit_per_s) if sub.rate_limit_per_s else None
        self.disabled_reason: str | None = None
        """Set the moment this process disables the endpoint, before the table shows it."""
        self.failing_marked = False
        self.recovery_marked = False
        self._secrets: tuple[int, float, list[str]] | None = None

    def is_disabled(self) -> bool:
        return self.disabled_reason is not None

    def secrets(self, sub: Subscription, box: SecretBox) -> list[str]:
        """The unexpired secrets, newest first (decrypted once per subscription version)."""
        now = time.time()
        cached = self._secrets
        if cached is not None and cached[0] == sub.version and now < cached[1]:
            return cached[2]
        moment = datetime.fromtimestamp(now, UTC)
        plain = [
            s.get_secret_value() for s in active_secrets(sub.secrets, box, associated=sub.id, now=moment)
        ]
        expiries = [s.expires_at.timestamp() for s in sub.secrets if s.expires_at is not None]
        valid_until = min((e for e in expiries if e > now), default=float("inf"))
        self._secrets = (sub.version, valid_until, plain)
        return plain


@functools.lru_cache(maxsize=4096)
def url_host(url: str) -> str:
    """Host (and port) of a partner URL for logs: never the path, query or user info.

    Cached per URL (a pure function of the text; every delivery logs its endpoint's host)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


class WebhooksApp(RetryGateMixin):
    """Fan-out and delivery of partner webhooks; see the module docstring."""

    name = "webhooks"

    def __init__(
        self,
        *,
        codec: Codec,
        topics: AppTopics,
        store: SubscriptionSource,
        box: SecretBox,
        transport: HttpTransport,
        policy: EndpointPolicy,
        breakers: BreakerRegistry,
        settings: WebhooksSettings,
        dispatch_topic: str,
        deliveries_topic: str,
        endpoint_events_topic: str,
        group: str,
        pending_reader: PendingReader | None = None,
        guard_factory: Callable[[str, EndpointPolicy, BreakerRegistry], EndpointGuard] | None = None,
        partners: PartnerSource | None = None,
    ) -> None:
        self.codec = codec
        self.topics = topics
        self.store = store
        self.partners = partners
        """The partner registry (partners' grants); None: no registry, partners are granted nothing."""
        self.box = box
        self.transport = transport
        self.policy = policy
        self.breakers = breakers
        self.settings = settings
        self.dispatch_topic = dispatch_topic
        self.deliveries_topic = deliveries_topic
        self.endpoint_events_topic = endpoint_events_topic
        self.group = group
        self._event_sources = frozenset(topics.sources)
        self.router = RetryRouter(
            dataclasses.replace(topics, sources=(dispatch_topic,)),
            app=self.name,
            keep_key_order=True,
            ordered=is_ordered,
            jitter_ratio=settings.jitter_ratio,
        )
        self._sources = (*topics.sources, dispatch_topic, *(tier.topic for tier in topics.retry_tiers))
        self._pending_reader = pending_reader
        self._endpoints: dict[str, _Endpoint] = {}
        self._guard_factory = guard_factory or _default_guard
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store_started = False
        self._store_loading: asyncio.Future[None] | None = None
        self._timeouts = policy.timeout.http()
        self.deliveries = WebhookDeliveryMetrics()
        """Delivery outcomes per subscription, for ``/metrics`` (one count per delivery-log line)."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def sources(self) -> Sequence[str]:
        return self._sources

    async def start_store(self) -> None:
        """Load the subscriptions and the partner registry, once: the API may need them before
        the engine starts the app, and whichever caller comes second waits for the same load
        (no record may run before both tables are read)."""
        if self._store_loading is None:
            self._store_started = True
            self._store_loading = asyncio.ensure_future(self._load_stores())
        await asyncio.shield(self._store_loading)

    async def _load_stores(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._changed)
        await self.store.start()
        await self.store.wait_caught_up()
        if self.partners is not None:
            await self.partners.start()  # returns once the records written before it are read
        self.check_secrets()

    def check_secrets(self) -> list[str]:
        """Decrypt every stored secret once, at start-up: a wrong or missing encryption key is
        found here, not one dead-lettered delivery at a time.

        Raises :class:`ConfigError` when the key opens none of the stored secrets (a wrong key,
        or a rotated key whose old value is not among the previous keys); logs the subscriptions
        whose secret it cannot open when it opens the others.  Returns those subscription ids.
        """
        now = datetime.now(UTC)
        failing: list[str] = []
        readable = 0
        for sub in self.store.table.all():
            try:
                if active_secrets(sub.secrets, self.box, associated=sub.id, now=now):
                    readable += 1
            except SecretDecryptFailed:
                failing.append(sub.id)
        if not failing:
            return failing
        shown = ", ".join(failing[:10]) + (f" and {len(failing) - 10} more" if len(failing) > 10 else "")
        if readable == 0:
            raise ConfigError(
                f"the webhook encryption key opens none of the stored partner secrets "
                f"({len(failing)} subscription(s): {shown}): a wrong key, or a rotated key whose old "
                "value is missing from PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS "
                "(webhooks.previous_encryption_keys)"
            )
        log.error(
            "webhooks: the secrets of %d subscription(s) cannot be decrypted with the configured keys: "
            "%s; their deliveries wait in the retry tiers until the key is fixed or their secret rotated",
            len(failing),
            shown,
        )
        return failing

    async def start(self) -> None:
        await self.start_store()
        await self.transport.start()

    async def stop(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.transport.close()
        if self._store_started:
            self._store_started = False
            self._store_loading = None
            await self.store.stop()
            if self.partners is not None:
                await self.partners.stop()

    async def on_assigned(self, partitions: Sequence[TP]) -> None:
        """Subscriptions (and partners' grants) caught up, and the ordering gate rebuilt, before
        any record runs.

        While the broker is away the table cannot catch up: the assignment waits for it (the
        records of these partitions could not run anyway) instead of failing the rebalance,
        which would leave the partitions assigned and never fetched.  A store that stopped,
        or a wait past the consumer's poll interval (the group has dropped this member by
        then), still fails it: the engine stops and the process exits to be restarted.
        """
        deadline = time.monotonic() + _ASSIGNMENT_WAIT_S
        while True:
            try:
                await self.store.wait_caught_up()
                if self.partners is not None:
                    await self.partners.wait_caught_up()  # their grants, before any fan-out
                break
            except CatchUpTimeout as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("webhooks: %s; the assigned partitions wait for the subscriptions", exc)
        await self.rebuild_gate(partitions, only=is_ordered)

    def _changed(self, sub_id: str, sub: Subscription | None) -> None:
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self._apply_change, sub_id, sub)
        else:
            self._apply_change(sub_id, sub)

    def _apply_change(self, sub_id: str, sub: Subscription | None) -> None:
        if sub is None:
            # Deleted: its breaker goes too, so breakers are bounded by the live subscriptions.
            self.breakers.discard(_breaker_name(sub_id))
        endpoint = self._endpoints.get(sub_id)
        if endpoint is None:
            return
        if sub is None or (sub.max_concurrency, sub.rate_limit_per_s) != endpoint.limits:
            # New limits take effect for new deliveries; running ones finish on the old slots.
            del self._endpoints[sub_id]
        elif sub.deliverable:
            endpoint.disabled_reason = None  # re-enabled by an operator

    # ------------------------------------------------------------------ processing

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        if msg.topic() in self._event_sources:
            return self._fan_out(msg)
        return await self._deliver(msg)

    def _fan_out(self, msg: KafkaMessage) -> list[OutRecord]:
        headers = msg.headers()
        event = self.codec.decode(msg.value(), headers)
        key = msg.key()
        if key is None or key != event.subject.encode():
            raise ValidationFailed(f"message key does not match the event subject ({event.event_type})")
        subs = self.store.table.matching(event.event_type)
        # Grants as the registry shows them now: a change applies from the next event on.
        partners = self.partners.table if self.partners is not None else None
        targets = [Target(sub.id, sub.ordered, effective_grants(sub, partners)) for sub in subs]
        return dispatch_records(
            event, targets, topic=self.dispatch_topic, traceparent=header_value(headers, "traceparent")
        )

    async def _deliver(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        job = DispatchJob.from_message(msg)
        if self.router.already_in_retry(msg):
            return ()
        forward = self.router.follow(msg)
        if forward is not None:
            return [forward]
        coordinates = original_id(msg)
        headers = msg.headers()
        previous = _int(header_value(headers, H.ATTEMPTS))
        sub = self.store.table.get(job.subscription_id)
        if sub is None or not sub.deliverable:
            reason = "subscription deleted" if sub is None else _inactive_reason(sub)
            self.router.succeeded(msg)
            host = url_host(sub.url) if sub is not None else "?"
            return [self._log(job, coordinates, status="skipped", attempt=0, host=host, error=reason)]
        host = url_host(sub.url)
        endpoint = self._endpoint(sub)
        if endpoint.disabled_reason is not None:
            self.router.succeeded(msg)
            return [
                self._log(
                    job, coordinates, status="skipped", attempt=0, host=host, error=endpoint.disabled_reason
                )
            ]
        if len(job.body) > self.settings.max_payload_bytes:
            error = Permanent(
                f"payload of {len(job.body)} bytes exceeds the {self.settings.max_payload_bytes}-byte limit"
            )
            return self._failed(msg, job, coordinates, error, attempt=0, host=host, sent=False)
        if (
            endpoint.in_flight >= sub.max_concurrency
            and endpoint.waiting >= self.settings.max_waiting_per_endpoint
        ):
            busy = Deferred(
                "deferred: the endpoint is busy (all its connections and waiting places taken)",
                max_tier_index=1,
            )
            return self._failed(msg, job, coordinates, busy, attempt=0, host=host, sent=False)

        try:
            secrets = endpoint.secrets(sub, self.box)
        except SecretDecryptFailed as undecryptable:
            # our configuration, not the partner's fault: no breaker count, a delivery-log entry
            log.error(
                "webhooks: the secret of subscription %s cannot be decrypted; check the encryption "
                "key and its previous keys (PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS)",
                sub.id,
            )
            return self._failed(msg, job, coordinates, undecryptable, attempt=0, host=host, sent=False)

        # this delivery's own context: calls add up from the attempts made before it
        record_context.enter_new(traceparent=header_value(headers, "traceparent"), previous_attempts=previous)
        attempt = previous + 1
        endpoint.waiting += 1
        try:
            await endpoint.slots.acquire()
        finally:
            endpoint.waiting -= 1
        endpoint.in_flight += 1
        started = time.perf_counter()
        try:
            if endpoint.is_disabled():  # disabled while this one waited
                self.router.succeeded(msg)
                return [
                    self._log(
                        job,
                        coordinates,
                        status="skipped",
                        attempt=0,
                        host=host,
                        error=endpoint.disabled_reason,
                    )
                ]
            if endpoint.rate is not None:
                await endpoint.rate.acquire()
            response = await self._send(endpoint, sub, job, secrets, host)
        except EndpointUnavailable:
            # Straight to a tier that waits at least until the breaker admits a probe again:
            # no pointless round through a shorter tier while it is still open.
            unavailable = Retriable(
                "deferred: the endpoint's circuit breaker is open",
                retry_after_s=endpoint.guard.breaker.next_admission_in_s(),
            )
            self._note_failure(sub, endpoint)
            return self._failed(msg, job, coordinates, unavailable, attempt=0, host=host, sent=False)
        except (Retriable, Permanent) as raised:
            # One attempt per delivery: the retry policy's "exhausted" wraps what happened.
            cause = raised.__cause__ if isinstance(raised, RetriesExhausted) else None
            exc = cause if isinstance(cause, (Retriable, Permanent)) else raised
            if isinstance(exc, AddressRefused):
                return self._failed(
                    msg, job, coordinates, exc, attempt=attempt, host=host, sent=False, status="refused"
                )
            if isinstance(exc, _Gone):
                return self._gone(msg, job, coordinates, sub, endpoint, exc, attempt, host, started)
            answer = exc.response if isinstance(exc, _NotDelivered) else None
            records = self._failed(
                msg, job, coordinates, exc, attempt=attempt, host=host, sent=True,
                http_status=answer.status if answer is not None else None,
                latency_ms=_ms(started),
                response_excerpt=(
                    excerpt(answer.body, self.settings.response_excerpt_chars) if answer is not None else None
                ),
            )  # fmt: skip
            return [*records, *self._note_failure(sub, endpoint, host=host, job=job, coordinates=coordinates)]
        finally:
            endpoint.in_flight -= 1
            endpoint.slots.release()
        self.router.succeeded(msg)
        self._note_success(sub, endpoint)
        return [
            self._log(
                job, coordinates, status="delivered", attempt=attempt, host=host,
                http_status=response.status, latency_ms=_ms(started),
            )
        ]  # fmt: skip

    async def _send(
        self, endpoint: _Endpoint, sub: Subscription, job: DispatchJob, secrets: list[str], host: str
    ) -> HttpResponse:
        headers = signature_headers(
            webhook_id=job.webhook_id,
            event_type=job.event_type,
            timestamp_s=int(time.time()),
            body=job.body,
            secrets=secrets,
        )
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        request = HttpRequest("POST", sub.url, headers, job.body)
        cap = self.settings.retry_after_cap_s
        transport = self.transport
        timeouts = self._timeouts

        async def attempt() -> HttpResponse:
            response = await transport.send(request, timeouts=timeouts)
            if 200 <= response.status < 300:
                return response  # delivered (classify_status's first rule, without its lookups)
            outcome = classify_status(response.status, response.retry_after_s(), retry_after_cap_s=cap)
            if outcome.kind == "gone":
                raise _Gone(outcome, response)
            if outcome.kind == "retry":
                raise _NotDelivered(outcome, response)
            return response

        context = CallContext(
            app=self.name,
            operation="deliver",
            idempotency_key=job.webhook_id,
            request_summary={
                "subscription_id": sub.id,
                "url_host": host,
                "event_type": job.event_type,
                "bytes": len(job.body),
            },
            describe=_describe,
        )
        return await endpoint.guard.call(attempt, context=context)

    # ------------------------------------------------------------------ outcomes

    def _failed(
        self,
        msg: KafkaMessage,
        job: DispatchJob,
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
        moved = self.router.failed(msg, exc, group=self.group, attempts=1 if sent else 0)
        next_step: Literal["retry", "dlq"] = "retry" if moved.topic in self.router.tier_topics else "dlq"
        _, message = describe_error(exc)
        return [
            moved,
            self._log(
                job, coordinates, status=status, attempt=attempt if sent or status == "refused" else 0,
                host=host, error=message, http_status=http_status, latency_ms=latency_ms,
                response_excerpt=response_excerpt, next_step=next_step,
            ),
        ]  # fmt: skip

    def _gone(
        self,
        msg: KafkaMessage,
        job: DispatchJob,
        coordinates: tuple[str, int, int],
        sub: Subscription,
        endpoint: _Endpoint,
        exc: _Gone,
        attempt: int,
        host: str,
        started: float,
    ) -> list[OutRecord]:
        """410: the endpoint is disabled at once; this message is kept for an operator's recovery."""
        self.router.succeeded(msg)
        records = [
            self._log(
                job, coordinates, status="disabled", attempt=attempt, host=host, error=str(exc),
                http_status=exc.response.status, latency_ms=_ms(started),
                response_excerpt=excerpt(exc.response.body, self.settings.response_excerpt_chars),
            )
        ]  # fmt: skip
        records.extend(self._disable(sub, endpoint, "the endpoint answered 410 Gone", host))
        return records

    def _disable(self, sub: Subscription, endpoint: _Endpoint, reason: str, host: str) -> list[OutRecord]:
        if endpoint.disabled_reason is not None:
            return []
        endpoint.disabled_reason = f"endpoint disabled: {reason}"
        log.warning("webhook endpoint %s disabled: %s", sub.id, reason)

        async def write() -> None:
            latest = self.store.table.get(sub.id)
            if latest is not None and latest.disabled_reason is None:
                await self.store.put(latest.disabled(reason, datetime.now(UTC)))

        self._in_background(write(), f"disable {sub.id}")
        return [
            endpoint_event(
                self.endpoint_events_topic,
                subscription_id=sub.id,
                kind="disabled",
                reason=reason,
                url_host=host,
            )
        ]

    def _note_failure(
        self,
        sub: Subscription,
        endpoint: _Endpoint,
        *,
        host: str | None = None,
        job: DispatchJob | None = None,
        coordinates: tuple[str, int, int] | None = None,
    ) -> list[OutRecord]:
        """Start the failing clock, or disable the endpoint when it has run out."""
        endpoint.recovery_marked = False
        now = datetime.now(UTC)
        if sub.failing_since is None:
            if not endpoint.failing_marked:
                endpoint.failing_marked = True

                async def mark() -> None:
                    latest = self.store.table.get(sub.id)
                    if latest is not None and latest.failing_since is None:
                        await self.store.put(latest.with_failing_since(now))

                self._in_background(mark(), f"failing since {sub.id}")
            return []
        failing_s = (now - sub.failing_since).total_seconds()
        if failing_s < self.settings.disable_after_failing_s:
            return []
        days = self.settings.disable_after_failing_s / 86_400
        reason = f"failing without a success for {days:g} day(s)"
        return self._disable(sub, endpoint, reason, host or url_host(sub.url))

    def _note_success(self, sub: Subscription, endpoint: _Endpoint) -> None:
        endpoint.failing_marked = False
        if sub.failing_since is None or endpoint.recovery_marked:
            return
        endpoint.recovery_marked = True

        async def clear() -> None:
            latest = self.store.table.get(sub.id)
            if latest is not None and latest.failing_since is not None:
                await self.store.put(latest.with_failing_since(None))

        self._in_background(clear(), f"recovered {sub.id}")

    def _in_background(self, work: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("webhooks: could not record %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _log(
        self,
        job: DispatchJob,
        coordinates: tuple[str, int, int],
        *,
        status: Literal["delivered", "failed", "refused", "skipped", "disabled"],
        attempt: int,
        host: str,
        **details: Any,
    ) -> OutRecord:
        self.deliveries.count(job.subscription_id, status)
        return log_record(
            self.deliveries_topic,
            job,
            status=status,
            attempt=attempt,
            url_host=host,
            job_coordinates=coordinates,
            **details,
        )

    def _endpoint(self, sub: Subscription) -> _Endpoint:
        endpoint = self._endpoints.get(sub.id)
        if endpoint is None:
            guard = self._guard_factory(_breaker_name(sub.id), self.policy, self.breakers)
            endpoint = self._endpoints[sub.id] = _Endpoint(sub, guard)
        return endpoint

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        """An error ``process`` did not turn into an outcome itself: poison input, mostly."""
        moved = self.router.failed(msg, exc, group=group, attempts=0 if isinstance(exc, ContractError) else 1)
        if msg.topic() in self._event_sources:
            return [moved]
        try:
            job = DispatchJob.from_message(msg)
        except ContractError:
            return [moved]
        _, message = describe_error(exc)
        next_step: Literal["retry", "dlq"] = "retry" if moved.topic in self.router.tier_topics else "dlq"
        sub = self.store.table.get(job.subscription_id)
        return [
            moved,
            self._log(
                job, original_id(msg), status="failed", attempt=0,
                host=url_host(sub.url) if sub else "?", error=message, next_step=next_step,
            ),
        ]  # fmt: skip


def _breaker_name(sub_id: str) -> str:
    """The endpoint name of a subscription's breaker (and of its metrics and audit records)."""
    return f"webhook:{sub_id}"


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _default_guard(endpoint: str, policy: EndpointPolicy, breakers: BreakerRegistry) -> EndpointGuard:
    return EndpointGuard(endpoint, policy, breakers.get(endpoint))


def _describe(response: Any) -> tuple[str, Any]:
    status = getattr(response, "status", None)
    return "DELIVERED", {"http_status": status}


def _inactive_reason(sub: Subscription) -> str:
    if sub.disabled_reason:
        return f"endpoint disabled: {sub.disabled_reason}"
    return "endpoint inactive"


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
