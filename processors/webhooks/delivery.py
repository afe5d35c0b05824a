"""Pure mapping of the webhooks app: event → dispatch records, response → outcome, log records.

Imports neither Kafka nor an HTTP library.  The record formats are the contract of
``docs/webhooks.md``: a dispatch record's value is the exact body a partner receives, so
its signature and ``webhook-id`` are the same on every attempt, after a crash and on replay.
That body's ``data`` is the partner-facing projection of the event
(:mod:`processors.partners.projection`) for the subscription's grants, taken at fan-out.

A *test event* (``webhook.test``, :func:`webhook_test_record`) is a dispatch record made on
request for one endpoint (the partner portal's ``sendTestEvent``), not fanned out from an
event: it is delivered, signed and logged like any other, and carries no insurance data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Final, Literal

from processors.adapters import jsonwire
from processors.contract import Event
from processors.errors import ValidationFailed
from processors.observability.redact import redact_text
from processors.partners.projection import NO_GRANTS, Grants, project
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord, header_value
from processors.webhooks.signing import webhook_id_for

__all__ = [
    "TEST_EVENT_TYPE",
    "DispatchJob",
    "Outcome",
    "classify_status",
    "delivery_body",
    "dispatch_records",
    "event_data_json",
    "log_record",
    "webhook_test_body",
    "webhook_test_record",
]

HX_SUBSCRIPTION = "x-subscription-id"
HX_WEBHOOK = "x-webhook-id"
HX_EVENT_ID = "x-event-id"
HX_EVENT_TYPE = "x-event-type"
HX_SUBJECT = "x-subject"
HX_ORDERING = "x-ordering"
"""``entity`` when the subscription delivers one entity's events in order, else ``none``."""

Status = Literal["delivered", "failed", "refused", "skipped", "disabled"]


def event_data_json(event: Event, grants: Grants = NO_GRANTS) -> bytes:
    """The event's payload as a subscriber granted ``grants`` sees it (none: no personal data):
    money and dates as strings."""
    return jsonwire.dumps(project(event.event_type, event.data.model_dump(mode="json"), grants))


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_body(webhook_id: str, event: Event, data_json: bytes) -> bytes:
    """The seed's payload: ``webhook_id``, ``event_type``, ``timestamp`` (event time) and ``data``."""
    head = jsonwire.dumps(
        {"webhook_id": webhook_id, "event_type": event.event_type, "timestamp": _utc_iso(event.occurred_at)}
    )
    return head[:-1] + b',"data":' + data_json + b"}"


@dataclass(frozen=True, slots=True)
class Target:
    """What fan-out needs of a subscription: ``grants`` are its effective grants (the data
    classes its body may carry; none by default)."""

    id: str
    ordered: bool
    grants: Grants = NO_GRANTS


def dispatch_records(
    event: Event, targets: Sequence[Target], *, topic: str, traceparent: str | None = None
) -> list[OutRecord]:
    """One dispatch record per matching subscription, its body projected for its grants.

    The payload is dumped once, and projected and encoded once per distinct grant set: eleven
    subscriptions with the same grants cost one projection.
    """
    if not targets:
        return []
    document = event.data.model_dump(mode="json")
    data_by_grants: dict[Grants, bytes] = {}
    records = []
    for target in targets:
        data_json = data_by_grants.get(target.grants)
        if data_json is None:
            data_json = jsonwire.dumps(project(event.event_type, document, target.grants))
            data_by_grants[target.grants] = data_json
        webhook_id = webhook_id_for(target.id, str(event.event_id))
        key = f"{target.id}|{event.subject if target.ordered else webhook_id}".encode()
        headers: HeaderList = [
            ("content-type", b"application/json"),
            (HX_SUBSCRIPTION, target.id.encode()),
            (HX_WEBHOOK, webhook_id.encode()),
            (HX_EVENT_ID, str(event.event_id).encode()),
            (HX_EVENT_TYPE, event.event_type.encode()),
            (HX_SUBJECT, event.subject.encode()),
            (HX_ORDERING, b"entity" if target.ordered else b"none"),
        ]
        if traceparent:
            headers.append(("traceparent", traceparent.encode()))
        body = delivery_body(webhook_id, event, data_json)
        records.append(OutRecord(topic=topic, key=key, value=body, headers=headers))
    return records


TEST_EVENT_TYPE: Final = "webhook.test"
"""The event type of a test event: never fanned out, only sent to one endpoint on request."""

TEST_EVENT_MESSAGE: Final = (
    "A test event sent on request to check this endpoint; it carries no insurance data."
)


def webhook_test_body(webhook_id: str, endpoint_id: str, at: datetime) -> bytes:
    """The body of a test event for ``endpoint_id``: the seed's envelope, and ``data`` naming
    the endpoint (nothing else: no insurance data, no personal data)."""
    return jsonwire.dumps(
        {
            "webhook_id": webhook_id,
            "event_type": TEST_EVENT_TYPE,
            "timestamp": _utc_iso(at),
            "data": {"endpoint_id": endpoint_id, "message": TEST_EVENT_MESSAGE},
        }
    )


def webhook_test_record(subscription_id: str, *, event_id: str, at: datetime, topic: str) -> OutRecord:
    """A dispatch record of a test event for one subscription (its ``webhook_id`` derives from
    ``event_id`` as for any event).  Keyed by its own webhook id, so it never waits behind an
    ordered subscription's failing entity; its subject is the endpoint."""
    webhook_id = webhook_id_for(subscription_id, event_id)
    headers: HeaderList = [
        ("content-type", b"application/json"),
        (HX_SUBSCRIPTION, subscription_id.encode()),
        (HX_WEBHOOK, webhook_id.encode()),
        (HX_EVENT_ID, event_id.encode()),
        (HX_EVENT_TYPE, TEST_EVENT_TYPE.encode()),
        (HX_SUBJECT, subscription_id.encode()),
        (HX_ORDERING, b"none"),
    ]
    return OutRecord(
        topic=topic,
        key=f"{subscription_id}|{webhook_id}".encode(),
        value=webhook_test_body(webhook_id, subscription_id, at),
        headers=headers,
    )


@dataclass(frozen=True, slots=True)
class DispatchJob:
    """A dispatch record (or its retry-tier copy) read back."""

    subscription_id: str
    webhook_id: str
    event_id: str
    event_type: str
    subject: str
    ordered: bool
    body: bytes

    @classmethod
    def from_message(cls, msg: KafkaMessage) -> DispatchJob:
        # One pass over the headers (this runs for every delivery attempt).
        wanted = (HX_SUBSCRIPTION, HX_WEBHOOK, HX_EVENT_ID, HX_EVENT_TYPE, HX_SUBJECT, HX_ORDERING)
        found = {
            name: value.decode("utf-8", "replace")
            for name, value in msg.headers() or ()
            if name in wanted and value is not None
        }
        values = {name: found.get(name) for name in wanted[:-1]}
        missing = sorted(name for name, value in values.items() if not value)
        if missing:
            raise ValidationFailed(f"dispatch record lacks header(s) {', '.join(missing)}")
        body = msg.value()
        if not body:
            raise ValidationFailed("dispatch record has no body")
        return cls(
            subscription_id=values[HX_SUBSCRIPTION] or "",
            webhook_id=values[HX_WEBHOOK] or "",
            event_id=values[HX_EVENT_ID] or "",
            event_type=values[HX_EVENT_TYPE] or "",
            subject=values[HX_SUBJECT] or "",
            ordered=found.get(HX_ORDERING) == "entity",
            body=body,
        )


def is_ordered(msg: KafkaMessage) -> bool:
    return header_value(msg.headers(), HX_ORDERING) == "entity"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one answer means: delivered, gone (disable the endpoint) or retry later."""

    kind: Literal["delivered", "gone", "retry"]
    reason: str
    retry_after_s: float | None = None


def classify_status(status: int, retry_after_s: float | None, *, retry_after_cap_s: float) -> Outcome:
    """Only 2xx is success; 410 disables the endpoint; everything else is tried again later.

    Redirects are failures (never followed: the target could be an internal address).
    ``Retry-After`` is honoured up to the cap.
    """
    if 200 <= status < 300:
        return Outcome("delivered", f"HTTP {status}")
    if status == 410:
        return Outcome("gone", "HTTP 410 Gone: the partner removed this endpoint")
    delay = min(retry_after_s, retry_after_cap_s) if retry_after_s is not None else None
    if 300 <= status < 400:
        return Outcome("retry", f"HTTP {status}: redirects are not followed", delay)
    return Outcome("retry", f"HTTP {status}", delay)


def excerpt(body: bytes, max_chars: int) -> str | None:
    """The start of a partner's answer for the operator view, personal data and secrets masked."""
    if not body or max_chars <= 0:
        return None
    text = body[: max_chars * 4].decode("utf-8", errors="replace")[:max_chars]
    return redact_text(text)


def log_record(
    topic: str,
    job: DispatchJob,
    *,
    status: Status,
    attempt: int,
    url_host: str,
    job_coordinates: tuple[str, int, int],
    http_status: int | None = None,
    latency_ms: float | None = None,
    error: str | None = None,
    response_excerpt: str | None = None,
    next_step: Literal["retry", "dlq"] | None = None,
    attempted_at: datetime | None = None,
) -> OutRecord:
    """One line of ``integrations.webhook.deliveries`` (key: the subscription id).

    The value is compact JSON with non-ASCII escaped, byte for byte what ``json.dumps(...,
    separators=(",", ":"))`` writes for the line's fields in this order
    (:func:`log_line_json`); written directly, since one is written per attempt.
    """
    return OutRecord(
        topic=topic,
        key=job.subscription_id.encode(),
        value=log_line_json(
            job,
            status=status,
            attempt=attempt,
            url_host=url_host,
            job_coordinates=job_coordinates,
            http_status=http_status,
            latency_ms=latency_ms,
            error=error,
            response_excerpt=response_excerpt,
            next_step=next_step,
            attempted_at=attempted_at,
        ),
        headers=[("content-type", b"application/json")],
    )


def log_line_json(
    job: DispatchJob,
    *,
    status: Status,
    attempt: int,
    url_host: str,
    job_coordinates: tuple[str, int, int],
    http_status: int | None = None,
    latency_ms: float | None = None,
    error: str | None = None,
    response_excerpt: str | None = None,
    next_step: Literal["retry", "dlq"] | None = None,
    attempted_at: datetime | None = None,
) -> bytes:
    """The value of a delivery-log line (see :func:`log_record`)."""
    topic, partition, offset = job_coordinates
    latency = None if latency_ms is None else round(latency_ms, 3)
    return (
        f'{{"subscription_id":{_text(job.subscription_id)},"webhook_id":{_text(job.webhook_id)},'
        f'"event_id":{_text(job.event_id)},"event_type":{_text(job.event_type)},'
        f'"subject":{_text(job.subject)},"attempt":{_number(attempt)},"status":{_text(status)},'
        f'"http_status":{_number(http_status)},"latency_ms":{_number(latency)},'
        f'"error":{_text(error)},"response_excerpt":{_text(response_excerpt)},'
        f'"attempted_at":{_text(_utc_iso(attempted_at or datetime.now(UTC)))},'
        f'"url_host":{_text(url_host)},"next":{_text(next_step)},'
        f'"job":{{"topic":{_text(topic)},"partition":{_number(partition)},"offset":{_number(offset)}}}}}'
    ).encode("ascii")


def _text(value: str | None) -> str:
    """A JSON string as ``json.dumps`` writes it (ASCII, escaped), or ``null``."""
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: float | None) -> str:
    """A JSON number as ``json.dumps`` writes it, or ``null``."""
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)  # NaN and the infinities as json.dumps writes them; bool


def endpoint_event(
    topic: str, *, subscription_id: str, kind: Literal["disabled", "enabled"], reason: str, url_host: str
) -> OutRecord:
    """A ``webhook.endpoint_disabled`` / ``_enabled`` notice partners can be told about."""
    value = {
        "type": f"webhook.endpoint_{kind}",
        "subscription_id": subscription_id,
        "reason": reason,
        "url_host": url_host,
        "at": _utc_iso(datetime.now(UTC)),
    }
    return OutRecord(
        topic=topic,
        key=subscription_id.encode(),
        value=json.dumps(value, separators=(",", ":")).encode(),
        headers=[("content-type", b"application/json")],
    )
