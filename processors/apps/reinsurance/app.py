"""Bordereaux delivery: closed reports on ``reinsurance.bordereaux`` → the reinsurer's API → delivery results.

The ``bordereaux`` app writes each premium and claims bordereau once, in a Kafka transaction,
when its period closes (``docs/bordereaux.md``).  This app reads them with
``isolation.level=read_committed`` (an aborted transaction's reports are never delivered),
sends each report's bytes unchanged to ``POST /api/v1/bordereaux`` with
``Idempotency-Key: <report_id>`` through the ``reinsurer`` endpoint guard (breaker, in-place
retries, deadline, audit), and writes one delivery result per report to
``integrations.reinsurance.deliveries`` (key: the treaty number)::

    {"report_id": "BRD-TRY-2024-001-2024-01-P", "status": "ACCEPTED",
     "acknowledged_at": "2024-02-06T00:00:01.234Z", "duplicate": false}

Delivery is at least once, made effectively once by the report id: a report delivered again
(after a crash before the offset commit, or a replay from the DLQ) is acknowledged by the
reinsurer as a duplicate with its original time, and the result says ``"duplicate": true``.

Failures take the runtime's path, under the app name ``bordereaux-delivery``: a ``Retriable``
error (timeouts, 5xx, 429) moves the report through the retry tiers, a ``Permanent`` one
(422: the reinsurer refused the report; 409: it holds a different report under this id) goes
to the DLQ at once; an open breaker pauses consumption without spending attempts.  A record
that is not a readable report (poison input) goes to the DLQ with the reason and no call.
With key order kept, a treaty's later reports wait behind one in a retry tier, so a reinsurer
receives a treaty's periods in the order they closed.

A bordereau is one record of up to 16 MiB (:data:`MAX_REPORT_BYTES`): the app's producer
needs :data:`PRODUCER_OVERRIDES` and its retry, DLQ and parking topics the same
``max.message.bytes`` as ``reinsurance.bordereaux``, or a failed large report could not move on.

Nothing here logs or audits a report body (policy numbers, amounts): only the report id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters import jsonwire
from processors.adapters.http import AiohttpTransport, HttpTransport
from processors.adapters.reinsurer import (
    ENDPOINT,
    ReinsurerClient,
    ReinsurerSettings,
    SubmitResult,
    check_report_id,
)
from processors.errors import ContractError, DecodeError, ValidationFailed
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import ResilienceConfig
from processors.resilience.guard import ATTEMPTS, TRACEPARENT, CallContext, EndpointGuard, Unguarded
from processors.runtime.app import PendingReader, RetryGateMixin
from processors.runtime.failures import H
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord, header_value
from processors.runtime.routing import RetryRouter
from processors.topics.catalogue import AppTopics

__all__ = [
    "APP",
    "CONSUMER_OVERRIDES",
    "DELIVERIES_TOPIC",
    "MAX_REPORT_BYTES",
    "PRODUCER_OVERRIDES",
    "REPORT_TYPES",
    "ReinsuranceApp",
    "ReinsuranceSettings",
    "ReportRef",
    "build_reinsurance_app",
    "delivery_result",
    "read_report",
]

APP: Final = "bordereaux-delivery"
"""The app's name: its consumer group suffix, its ``topics.yaml`` entry (retry tiers, DLQ)."""

DELIVERIES_TOPIC: Final = "integrations.reinsurance.deliveries"

CONSUMER_OVERRIDES: Final[Mapping[str, str]] = {"isolation.level": "read_committed"}
"""Consumer settings this app cannot do without, applied after any operator override."""

MAX_REPORT_BYTES: Final = 16 * 1024 * 1024
"""A bordereau is one record of up to this size (``max.message.bytes`` of ``reinsurance.bordereaux``)."""

PRODUCER_OVERRIDES: Final[Mapping[str, str]] = {"message.max.bytes": str(MAX_REPORT_BYTES)}
"""Producer settings this app needs: a failed report moves whole to a retry tier or the DLQ."""

REPORT_TYPES: Final[Mapping[str, str]] = {"PREMIUM_BORDEREAUX": "P", "CLAIMS_BORDEREAUX": "C"}
"""Report types and the suffix of their report ids."""

_CURRENT: ContextVar[tuple[str | None, int | None, int | None] | None] = ContextVar(
    "processors_reinsurance_record", default=None
)
"""The record the current lane is processing (so attempts add up across backpressure waits)."""


class ReinsuranceSettings(BaseModel):
    """``PROCESSORS_REINSURANCE__*``: the reinsurer's API and where delivery results go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reinsurer: ReinsurerSettings = Field(default_factory=ReinsurerSettings)
    deliveries_topic: str = DELIVERIES_TOPIC
    replay_limit: int = Field(default=3, ge=0)


# -- pure mapping (no Kafka, no HTTP) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRef:
    """What the app needs to know about one report: enough to deliver and describe it."""

    report_id: str
    report_type: str
    treaty_number: str
    period_id: str


def read_report(key: bytes | None, value: bytes | None) -> ReportRef:
    """The report's identity from a ``reinsurance.bordereaux`` record; the rest is the reinsurer's to check.

    Raises :class:`DecodeError` (not a JSON object) or :class:`ValidationFailed`: the Kafka key
    must be the treaty number, and the report id must be the one ``docs/bordereaux.md`` defines,
    ``BRD-<treaty_number>-<period id>-P|C``: it is the idempotency key, so a report id that does
    not name exactly one report could make the reinsurer drop a different report as a duplicate.
    Reasons name the field, never a value.
    """
    if value is None:
        raise DecodeError("the record has no value (a report was expected)")
    try:
        payload = jsonwire.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DecodeError("the value is not UTF-8 JSON") from exc
    if not isinstance(payload, dict):
        raise DecodeError("the value must be a JSON object (a report)")
    report_id = _text(payload.get("report_id"), "report_id")
    check_report_id(report_id)
    treaty_number = _text(payload.get("treaty_number"), "treaty_number")
    report_type = payload.get("report_type")
    if not isinstance(report_type, str) or report_type not in REPORT_TYPES:
        raise ValidationFailed(f"report_type must be one of {', '.join(REPORT_TYPES)}")
    period = payload.get("period")
    if not isinstance(period, dict):
        raise ValidationFailed("period must be an object")
    period_id = _text(period.get("id"), "period.id")
    if key is None:
        raise ValidationFailed("the message key is missing; it must be the treaty number")
    if key != treaty_number.encode():
        raise ValidationFailed("the message key does not match treaty_number")
    if report_id != f"BRD-{treaty_number}-{period_id}-{REPORT_TYPES[report_type]}":
        raise ValidationFailed("report_id must be BRD-<treaty_number>-<period.id>-P (premium) or -C (claims)")
    return ReportRef(report_id, report_type, treaty_number, period_id)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationFailed(f"{name} must be a non-empty string")
    return value


def delivery_result(result: SubmitResult) -> bytes:
    """The value written to the deliveries topic (UTF-8 JSON, keys in this order, no spaces)."""
    return json.dumps(
        {
            "report_id": result.report_id,
            "status": result.status,
            "acknowledged_at": _utc_text(result.acknowledged_at),
            "duplicate": result.duplicate,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the app -------------------------------------------------------------------------------------


class ReinsuranceApp(RetryGateMixin):
    """Delivers closed bordereaux to the reinsurer; a :class:`~processors.runtime.engine.Processor`."""

    name: ClassVar[str] = APP
    consumer_overrides: ClassVar[Mapping[str, str]] = CONSUMER_OVERRIDES
    producer_overrides: ClassVar[Mapping[str, str]] = PRODUCER_OVERRIDES

    def __init__(
        self,
        *,
        client: ReinsurerClient,
        guard: EndpointGuard,
        settings: ReinsuranceSettings,
        topics: AppTopics,
        keep_key_order: bool = True,
        pending_reader: PendingReader | None = None,
    ) -> None:
        self.client = client
        self.guard = guard
        self.settings = settings
        self.topics = topics
        self.router = RetryRouter(
            topics, app=self.name, replay_limit=settings.replay_limit, keep_key_order=keep_key_order
        )
        self._sources = (*topics.sources, *(tier.topic for tier in topics.retry_tiers))
        self._pending_reader = pending_reader

    @property
    def sources(self) -> Sequence[str]:
        """``reinsurance.bordereaux`` and the app's retry tiers: one consumer group reads them all."""
        return self._sources

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.close()

    async def process(self, msg: KafkaMessage) -> Sequence[OutRecord]:
        ref = read_report(msg.key(), msg.value())
        if self.router.already_in_retry(msg):
            return ()
        forward = self.router.follow(msg)
        if forward is not None:
            return [forward]
        identity = (msg.topic(), msg.partition(), msg.offset())
        if _CURRENT.get() != identity:  # a new record, not the same one again after a backpressure wait
            _CURRENT.set(identity)
            ATTEMPTS.set(0)
        headers = msg.headers()
        traceparent = header_value(headers, "traceparent")
        TRACEPARENT.set(traceparent)
        result = await self.deliver(ref, msg.value() or b"")
        self.router.succeeded(msg)
        previous = header_value(headers, H.ATTEMPTS)
        attempts = (int(previous) if previous and previous.isdigit() else 0) + max(ATTEMPTS.get(), 1)
        out: HeaderList = [("content-type", b"application/json"), (H.ATTEMPTS, str(attempts).encode())]
        if traceparent is not None:
            out.append(("traceparent", traceparent.encode()))
        return [
            OutRecord(
                topic=self.settings.deliveries_topic,
                key=ref.treaty_number.encode(),
                value=delivery_result(result),
                headers=out,
            )
        ]

    async def deliver(self, ref: ReportRef, body: bytes) -> SubmitResult:
        """One report through the guard: in-place retries, breaker, deadline, an audit record per attempt."""

        async def submit() -> SubmitResult:
            return await self.client.submit(ref.report_id, body)

        context = CallContext(
            app=self.name,
            operation="submit_bordereau",
            idempotency_key=ref.report_id,
            correlation_id=ref.report_id,
            request_summary={"report_id": ref.report_id},
            describe=_describe,
        )
        return await self.guard.call(submit, context=context)

    def failure(self, msg: KafkaMessage, exc: Exception, *, group: str) -> Sequence[OutRecord]:
        identity = (msg.topic(), msg.partition(), msg.offset())
        attempts = ATTEMPTS.get() if _CURRENT.get() == identity else 0
        if not isinstance(exc, ContractError):
            attempts = max(attempts, 1)
        return [self.router.failed(msg, exc, group=group, attempts=attempts)]


def _describe(result: SubmitResult) -> tuple[str, dict[str, Any]]:
    return str(result.http_status), {
        "report_id": result.report_id,
        "status": result.status,
        "duplicate": result.duplicate,
    }


# -- wiring --------------------------------------------------------------------------------------


def build_reinsurance_app(
    settings: ReinsuranceSettings,
    topics: AppTopics,
    *,
    resilience: ResilienceConfig,
    breakers: BreakerRegistry,
    resilience_enabled: bool = True,
    max_connections: int = 100,
    keep_key_order: bool = True,
    pending_reader: PendingReader | None = None,
    transport: HttpTransport | None = None,
) -> ReinsuranceApp:
    """The app as the runner builds it: the ``reinsurer`` endpoint's policy sets the transport's
    connect and read timeouts and the guard's breaker, retries and deadline.  No I/O here."""
    policy = resilience.for_endpoint(ENDPOINT)
    client_settings = settings.reinsurer.model_copy(update={"timeouts": policy.timeout.http()})
    client = ReinsurerClient(client_settings, transport or AiohttpTransport(max_connections=max_connections))
    guard_class = EndpointGuard if resilience_enabled else Unguarded
    return ReinsuranceApp(
        client=client,
        guard=guard_class(ENDPOINT, policy, breakers.get(ENDPOINT)),
        settings=settings,
        topics=topics,
        keep_key_order=keep_key_order,
        pending_reader=pending_reader,
    )
