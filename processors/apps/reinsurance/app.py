"""Bordereaux delivery: closed reports on ``reinsurance.bordereaux`` → the reinsurer's API → delivery results.

The ``bordereaux`` app writes each premium and claims bordereau once, in a Kafka transaction,
when its period closes (``docs/bordereaux.md``).  This app reads them with
``isolation.level=read_committed`` (an aborted transaction's reports are never delivered),
sends each report's bytes unchanged to ``POST /api/v1/bordereaux`` with
``Idempotency-Key: <report_id>`` through the reinsurer's endpoint guard (breaker, in-place
retries, deadline, audit), and writes one delivery result per report to
``integrations.reinsurance.deliveries`` (key: the treaty number)::

    {"report_id": "BRD-TRY-2024-001-2024-01-P", "status": "ACCEPTED",
     "acknowledged_at": "2024-02-06T00:00:01.234Z", "duplicate": false}

Which reinsurer: with ``reinsurers`` configured (one entry per reinsurer code, each with its own
URL, token and breaker ``reinsurer:<code>``), a report goes to the entry of its
``reinsurer.code`` and nowhere else; a report whose code has no entry goes to the DLQ (a
bordereau is confidential to its reinsurer: it is never sent to another one).  Without
``reinsurers``, every report goes to the single ``reinsurer`` endpoint.

A report that ends in the DLQ (or the parking topic) gets a result too, so the deliveries topic
answers for every report it has seen (poison records, which are not readable reports, do not)::

    {"report_id": "BRD-TRY-2024-001-2024-01-P", "status": "FAILED", "acknowledged_at": null,
     "duplicate": false, "error_class": "ReportConflict", "error": "…",
     "dead_letter_topic": "integrations.bordereaux-delivery.dlq"}

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
needs :data:`MAX_MESSAGE_BYTES` and its retry, DLQ and parking topics the same
``max.message.bytes`` as ``reinsurance.bordereaux``, or a failed large report could not move on.

Nothing here logs or audits a report body (policy numbers, amounts): only the report id.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.adapters import jsonwire
from processors.adapters.http import AiohttpTransport, HttpTransport
from processors.adapters.reinsurer import (
    ENDPOINT,
    ReinsurerClient,
    ReinsurerSettings,
    SubmitResult,
    check_report_id,
)
from processors.context import RecordContext
from processors.errors import ContractError, DecodeError, Permanent, ValidationFailed
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import ResilienceConfig
from processors.resilience.guard import CallContext, EndpointGuard, Unguarded
from processors.runtime.app import PendingReader, RecordApp
from processors.runtime.failures import describe_error
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord, header_value
from processors.topics.catalogue import AppTopics

__all__ = [
    "APP",
    "DELIVERIES_TOPIC",
    "MAX_MESSAGE_BYTES",
    "MAX_REPORT_BYTES",
    "REPORT_TYPES",
    "ReinsuranceApp",
    "ReinsuranceSettings",
    "ReportRef",
    "UnknownReinsurer",
    "build_reinsurance_app",
    "delivery_result",
    "endpoint_of",
    "failed_result",
    "read_report",
]

log = logging.getLogger(__name__)

APP: Final = "bordereaux-delivery"
"""The app's name: its consumer group suffix, its ``topics.yaml`` entry (retry tiers, DLQ)."""

DELIVERIES_TOPIC: Final = "integrations.reinsurance.deliveries"

MAX_REPORT_BYTES: Final = 16 * 1024 * 1024
"""A bordereau is one record of up to this size (``max.message.bytes`` of ``reinsurance.bordereaux``)."""

MAX_MESSAGE_BYTES: Final = MAX_REPORT_BYTES
"""The largest record this app's producer sends (a report moving to a retry tier or the DLQ)."""
"""Producer settings this app needs: a failed report moves whole to a retry tier or the DLQ."""

REPORT_TYPES: Final[Mapping[str, str]] = {"PREMIUM_BORDEREAUX": "P", "CLAIMS_BORDEREAUX": "C"}
"""Report types and the suffix of their report ids."""

_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ReinsuranceSettings(BaseModel):
    """``PROCESSORS_REINSURANCE__*``: the reinsurers' APIs and where delivery results go.

    ``reinsurers`` maps a reinsurer code (a treaty's ``reinsurer.code``) to its API; when it is
    empty, every report goes to ``reinsurer``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reinsurer: ReinsurerSettings = Field(default_factory=ReinsurerSettings)
    reinsurers: dict[str, ReinsurerSettings] = Field(default_factory=dict)
    deliveries_topic: str = DELIVERIES_TOPIC
    replay_limit: int = Field(default=3, ge=0)

    @field_validator("reinsurers")
    @classmethod
    def _codes(cls, value: dict[str, ReinsurerSettings]) -> dict[str, ReinsurerSettings]:
        """Codes are matched without regard to case (environment variable names lose it)."""
        codes: dict[str, ReinsurerSettings] = {}
        for code, target in value.items():
            if not _CODE.fullmatch(code):
                raise ValueError(
                    f"reinsurer code {code[:64]!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
                )
            if code.upper() in codes:
                raise ValueError(f"reinsurer code {code!r} is given twice (codes ignore case)")
            codes[code.upper()] = target
        return codes

    def endpoints(self) -> tuple[str, ...]:
        """The breaker names of the endpoints reports go to."""
        if not self.reinsurers:
            return (ENDPOINT,)
        return tuple(endpoint_of(code) for code in sorted(self.reinsurers))


def endpoint_of(code: str) -> str:
    """The endpoint (breaker, resilience entry, audit) name of reinsurer ``code``."""
    return f"{ENDPOINT}:{code}"


class UnknownReinsurer(Permanent):
    """A report for a reinsurer this instance has no endpoint for: never sent anywhere else."""


# -- pure mapping (no Kafka, no HTTP) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRef:
    """What the app needs to know about one report: enough to deliver and describe it."""

    report_id: str
    report_type: str
    treaty_number: str
    period_id: str
    reinsurer_code: str | None = None
    """The treaty's ``reinsurer.code`` (``None`` when the report names none)."""


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
    reinsurer = payload.get("reinsurer")
    code: str | None = None
    if reinsurer is not None:
        if not isinstance(reinsurer, dict):
            raise ValidationFailed("reinsurer must be an object")
        code = _text(reinsurer.get("code"), "reinsurer.code")
    return ReportRef(report_id, report_type, treaty_number, period_id, code)


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


def failed_result(report_id: str, error_class: str, message: str, dead_letter_topic: str) -> bytes:
    """The value written to the deliveries topic when a report went to the DLQ or parking topic."""
    return json.dumps(
        {
            "report_id": report_id,
            "status": "FAILED",
            "acknowledged_at": None,
            "duplicate": False,
            "error_class": error_class,
            "error": message,
            "dead_letter_topic": dead_letter_topic,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the app -------------------------------------------------------------------------------------


class ReinsuranceApp(RecordApp[tuple[ReportRef, bytes], tuple[ReportRef, SubmitResult]]):
    """Delivers closed bordereaux to the reinsurer; a :class:`~processors.runtime.engine.Processor`."""

    name: ClassVar[str] = APP
    max_message_bytes: ClassVar[int] = MAX_MESSAGE_BYTES

    def __init__(
        self,
        *,
        client: ReinsurerClient | None = None,
        guard: EndpointGuard | None = None,
        settings: ReinsuranceSettings,
        topics: AppTopics,
        routes: Mapping[str, tuple[ReinsurerClient, EndpointGuard]] | None = None,
        keep_key_order: bool = True,
        pending_reader: PendingReader | None = None,
    ) -> None:
        """``client`` and ``guard`` serve every report, or ``routes`` (reinsurer code → client
        and guard) serve each report by its reinsurer's code; one of the two, not both."""
        if (client is None) != (guard is None) or (client is None) == (not routes):
            raise ValueError("give either client and guard, or routes")
        self.client = client
        self.guard = guard
        self.routes = {code.upper(): route for code, route in (routes or {}).items()}
        self.settings = settings
        self.setup(
            topics,
            replay_limit=settings.replay_limit,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
        )

    def _clients(self) -> list[ReinsurerClient]:
        return [self.client] if self.client is not None else [c for c, _ in self.routes.values()]

    async def start(self) -> None:
        if self.client is not None:
            log.info(
                "%s: every report goes to one endpoint (%s), whatever its reinsurer code; "
                "set reinsurance.reinsurers to route each reinsurer's reports to its own API",
                self.name,
                _origin(self.client.url),
            )
        else:
            log.info("%s: reports routed by reinsurer code: %s", self.name, ", ".join(sorted(self.routes)))
        for client in self._clients():
            await client.start()

    async def stop(self) -> None:
        for client in self._clients():
            await client.close()

    def decode(self, msg: KafkaMessage) -> tuple[ReportRef, bytes]:
        return read_report(msg.key(), msg.value()), msg.value() or b""

    async def handle(self, item: tuple[ReportRef, bytes]) -> Sequence[tuple[ReportRef, SubmitResult]]:
        ref, body = item
        return [(ref, await self.deliver(ref, body))]

    def records(
        self, msg: KafkaMessage, outputs: Sequence[tuple[ReportRef, SubmitResult]], context: RecordContext
    ) -> list[OutRecord]:
        headers: HeaderList = [("content-type", b"application/json")]
        return [
            OutRecord(
                topic=self.settings.deliveries_topic,
                key=ref.treaty_number.encode(),
                value=delivery_result(result),
                headers=headers,
            )
            for ref, result in outputs
        ]

    async def deliver(self, ref: ReportRef, body: bytes) -> SubmitResult:
        """One report through its reinsurer's guard: in-place retries, breaker, deadline, an
        audit record per attempt.  ``UnknownReinsurer`` when routing by code finds no entry."""
        if self.client is not None and self.guard is not None:
            client, guard = self.client, self.guard
        else:
            code = ref.reinsurer_code
            route = self.routes.get(code.upper()) if code is not None else None
            if route is None:
                named = (
                    "names no reinsurer"
                    if ref.reinsurer_code is None
                    else (f"is for reinsurer {ref.reinsurer_code}")
                )
                raise UnknownReinsurer(
                    f"report {ref.report_id} {named}, and no reinsurer endpoint is configured for it "
                    f"(configured: {', '.join(sorted(self.routes))}); add it to reinsurance.reinsurers "
                    "and replay the dead letter"
                )
            client, guard = route

        async def submit() -> SubmitResult:
            return await client.submit(ref.report_id, body)

        context = CallContext(
            app=self.name,
            operation="submit_bordereau",
            idempotency_key=ref.report_id,
            correlation_id=ref.report_id,
            request_summary={"report_id": ref.report_id},
            describe=_describe,
        )
        return await guard.call(submit, context=context)

    def counts_as_attempt(self, exc: Exception) -> bool:
        return not isinstance(exc, ContractError)  # an unreadable report was never attempted

    def on_failed(self, msg: KafkaMessage, exc: Exception, moved: OutRecord) -> Sequence[OutRecord]:
        if moved.topic in self.router.tier_topics:
            return [moved]
        try:
            ref = read_report(msg.key(), msg.value())
        except ContractError:
            return [moved]  # not a report: nothing to answer for on the deliveries topic
        error_class, message = describe_error(exc)
        headers: HeaderList = [("content-type", b"application/json")]
        traceparent = header_value(msg.headers(), "traceparent")
        if traceparent is not None:
            headers.append(("traceparent", traceparent.encode()))
        result = OutRecord(
            topic=self.settings.deliveries_topic,
            key=ref.treaty_number.encode(),
            value=failed_result(ref.report_id, error_class, message, moved.topic),
            headers=headers,
        )
        return [moved, result]


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: never its path, query or user info."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


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
    """The app as the runner builds it: each endpoint's policy (``reinsurer:<code>`` in
    ``resilience.yaml``, else ``reinsurer``, else the defaults) sets its transport's connect
    and read timeouts and its guard's breaker, retries and deadline.  No I/O here."""
    guard_class = EndpointGuard if resilience_enabled else Unguarded

    def route(name: str, target: ReinsurerSettings) -> tuple[ReinsurerClient, EndpointGuard]:
        policy = resilience.for_endpoint(name)
        client_settings = target.model_copy(update={"timeouts": policy.timeout.http()})
        client = ReinsurerClient(
            client_settings, transport or AiohttpTransport(max_connections=max_connections)
        )
        return client, guard_class(name, policy, breakers.get(name))

    if not settings.reinsurers:
        client, guard = route(ENDPOINT, settings.reinsurer)
        return ReinsuranceApp(
            client=client,
            guard=guard,
            settings=settings,
            topics=topics,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
        )
    return ReinsuranceApp(
        routes={code: route(endpoint_of(code), target) for code, target in settings.reinsurers.items()},
        settings=settings,
        topics=topics,
        keep_key_order=keep_key_order,
        pending_reader=pending_reader,
    )
