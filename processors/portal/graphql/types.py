"""The portal schema's object, input, enum and union types (``docs/portal-schema.graphql``).

Python names are the GraphQL names.  Types are plain values built by the resolvers from the
query store's rows (``from_row``), the live subscription table (:meth:`Endpoint.of`), the
registry (:meth:`Partner.of`) or a delivery-log record (:meth:`DeliveryAttempt.of_log`); the
few fields that need more data resolve through ``info.context.services``, always for the
caller's own partner:

* ``Endpoint.health`` — the query store's aggregates for the endpoint (batched per request:
  a page of endpoints costs one query), and its breaker's state when this process delivers.
* ``Bordereau.deliveries`` — the report's delivery results (batched per request).
* ``Bordereau.download`` — the report as JSON or CSV, in the reinsurance wing's own formats
  (:mod:`processors.bordereaux.reports`).
* ``Message.request`` — the body as sent, read back from the dispatch topic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Final, TypeVar

import strawberry
from strawberry.dataloader import DataLoader

from processors.bordereaux.reports import compact_json, report_csv, report_rows
from processors.errors import BrokerError
from processors.partners.model import Partner as RegistryPartner
from processors.portal.graphql.context import PortalContext
from processors.portal.graphql.errors import Unavailable
from processors.portal.graphql.scalars import JSON
from processors.portal.queries import MAX_RESPONSE_BODY_CHARS, HealthRow, PortalStoreUnavailable
from processors.webhooks.attempts import DeliveryAttempt as LoggedAttempt
from processors.webhooks.attempts import JobRef
from processors.webhooks.subscriptions import Subscription

__all__ = [
    "Bordereau",
    "BordereauConnection",
    "BordereauDelivery",
    "BordereauEdge",
    "BordereauFilter",
    "BordereauType",
    "CreateEndpointInput",
    "DeliveryAttempt",
    "DeliveryConnection",
    "DeliveryEdge",
    "DeliveryFilter",
    "DeliveryStatus",
    "DownloadFormat",
    "Endpoint",
    "EndpointHealth",
    "EndpointWithSecret",
    "EventType",
    "FeedEvent",
    "FeedItem",
    "FeedOutcome",
    "Header",
    "Info",
    "Message",
    "PageInfo",
    "Partner",
    "PartnerKind",
    "Redelivery",
    "SecretRotation",
    "SentRequest",
    "TestEvent",
    "UpdateEndpointInput",
    "loader",
]

Info = strawberry.Info[PortalContext, None]
"""What a resolver of this schema receives (``info.context`` is a :class:`PortalContext`)."""

_K = TypeVar("_K")
_V = TypeVar("_V")


def loader(info: Info, name: str, load: Callable[[list[_K]], Awaitable[Sequence[_V]]]) -> DataLoader[_K, _V]:
    """The request's data loader ``name`` (created on first use): the fields of one request
    that need the same kind of row are answered with one query."""
    loaders: dict[str, Any] = info.context.loaders
    found: DataLoader[_K, _V] | None = loaders.get(name)
    if found is None:
        # no cache: a WebSocket connection shares one context over many operations
        found = loaders[name] = DataLoader(load_fn=load, cache=False)
    return found


# ------------------------------------------------------------------------------------ partners


@strawberry.enum
class PartnerKind(Enum):
    BROKER = "broker"
    REINSURER = "reinsurer"
    SERVICE_PROVIDER = "service_provider"
    OTHER = "other"

    @classmethod
    def of(cls, kind: str) -> PartnerKind:
        """The registry's kind; one this build does not know reads as ``OTHER``."""
        try:
            return cls(kind)
        except ValueError:
            return cls.OTHER


@strawberry.type
class Partner:
    id: strawberry.ID
    name: str
    kind: PartnerKind = strawberry.field(
        description="The registry's kind; a kind added by a newer build reads as OTHER."
    )
    status: str
    reinsurer_code: str | None
    distributor_code: str | None
    grants: list[str] = strawberry.field(
        description="The classes of personal data this partner's deliveries may carry."
    )
    created_at: datetime

    @classmethod
    def of(cls, partner: RegistryPartner) -> Partner:
        return cls(
            id=strawberry.ID(partner.id),
            name=partner.name,
            kind=PartnerKind.of(partner.kind),
            status=partner.status,
            reinsurer_code=partner.reinsurer_code,
            distributor_code=partner.distributor_code,
            grants=[str(grant) for grant in partner.grants],
            created_at=partner.created_at,
        )


@strawberry.type
class EventType:
    event_type: str
    withheld: JSON = strawberry.field(
        description="Data class → the fields of that class left out for this partner."
    )
    schema: JSON
    example: JSON


# ----------------------------------------------------------------------------------- endpoints


@strawberry.type
class EndpointHealth:
    success_rate: float | None = strawberry.field(
        description="Succeeded attempts / attempts with a request, over the window; null without attempts."
    )
    attempts: int
    failures: int
    window_hours: int
    breaker_state: str = strawberry.field(
        description="closed, open or half_open; unknown when this instance does not deliver for it."
    )
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    disabled_reason: str | None


@strawberry.type
class Endpoint:
    id: strawberry.ID
    url: str
    description: str | None
    events: list[str]
    active: bool
    ordered: bool
    max_concurrency: int
    rate_limit_per_s: float | None
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    secret_rotation_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @strawberry.field
    async def health(self, info: Info) -> EndpointHealth:
        context = info.context
        services = context.services
        window_h = services.health_window_h
        partner_id = context.partner_id

        async def load(ids: list[str]) -> list[HealthRow]:
            since = datetime.now(UTC) - timedelta(hours=window_h)
            try:
                found = await services.queries.endpoint_health(partner_id, ids, since=since)
            except PortalStoreUnavailable as exc:
                raise Unavailable("endpoint health cannot be read now; retry later") from exc
            return [found[i] for i in ids]

        row = await loader(info, "endpoint_health", load).load(str(self.id))
        return EndpointHealth(
            success_rate=(row.succeeded / row.attempts) if row.attempts else None,
            attempts=row.attempts,
            failures=row.attempts - row.succeeded,
            window_hours=window_h,
            breaker_state=services.breaker_state(str(self.id)),
            last_attempt_at=row.last_attempt_at,
            last_success_at=row.last_success_at,
            disabled_reason=self.disabled_reason,
        )

    @classmethod
    def of(cls, sub: Subscription, now: datetime | None = None) -> Endpoint:
        """The partner's view of a subscription: no secret, a password in the URL masked."""
        moment = now or datetime.now(UTC)
        return cls(
            id=strawberry.ID(sub.id),
            url=sub.public_view(moment)["url"],
            description=sub.description,
            events=list(sub.events),
            active=sub.active,
            ordered=sub.ordered,
            max_concurrency=sub.max_concurrency,
            rate_limit_per_s=sub.rate_limit_per_s,
            disabled_reason=sub.disabled_reason,
            disabled_at=sub.disabled_at,
            failing_since=sub.failing_since,
            secret_rotation_expires_at=sub.rotation_expires_at(moment),
            created_at=sub.created_at,
            updated_at=sub.updated_at,
        )


@strawberry.type
class EndpointWithSecret:
    endpoint: Endpoint
    secret: str = strawberry.field(description="Shown once.")


@strawberry.type
class SecretRotation:
    endpoint: Endpoint
    secret: str = strawberry.field(description="Shown once.")
    previous_expires_at: datetime


@strawberry.input
class CreateEndpointInput:
    url: str
    events: list[str]
    description: str | None = strawberry.UNSET
    ordered: bool | None = False
    max_concurrency: int | None = 10
    rate_limit_per_s: float | None = strawberry.UNSET


@strawberry.input
class UpdateEndpointInput:
    url: str | None = strawberry.UNSET
    events: list[str] | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    ordered: bool | None = strawberry.UNSET
    max_concurrency: int | None = strawberry.UNSET
    rate_limit_per_s: float | None = strawberry.UNSET


# ---------------------------------------------------------------------------------- deliveries


@strawberry.enum(
    description="The delivery log's statuses; `nextStep` says what follows a failure (retry, dlq)."
)
class DeliveryStatus(Enum):
    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"
    SKIPPED = "skipped"
    DISABLED = "disabled"


@strawberry.input
class DeliveryFilter:
    endpoint_id: strawberry.ID | None = strawberry.UNSET
    event_type: str | None = strawberry.UNSET
    status: DeliveryStatus | None = strawberry.UNSET
    since: datetime | None = strawberry.field(default=strawberry.UNSET, description="Attempted at or after.")
    until: datetime | None = strawberry.field(default=strawberry.UNSET, description="Attempted before.")


@strawberry.type(
    description="One line of the delivery log: one attempt (or decision) for one message to one endpoint."
)
class DeliveryAttempt:
    id: strawberry.ID = strawberry.field(description="`<partition>:<offset>` of the delivery-log line.")
    webhook_id: strawberry.ID
    endpoint_id: strawberry.ID
    event_id: strawberry.ID
    event_type: str
    attempt: int
    status: DeliveryStatus
    http_status: int | None
    latency_ms: float | None
    error: str | None
    response_body: str | None = strawberry.field(
        description="The receiver's answer, at most 1,024 characters."
    )
    attempted_at: datetime
    url_host: str
    next_step: str | None
    job: strawberry.Private[JobRef]
    """The dispatch record this line delivered (where ``Message.request`` reads the body)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DeliveryAttempt:
        """From a row of the query store's ``deliveries`` table."""
        return cls(
            id=strawberry.ID(f"{row['log_partition']}:{row['log_offset']}"),
            webhook_id=strawberry.ID(row["webhook_id"]),
            endpoint_id=strawberry.ID(row["subscription_id"]),
            event_id=strawberry.ID(row["event_id"]),
            event_type=row["event_type"],
            attempt=row["attempt"],
            status=_STATUS_OF.get(row["status"]) or DeliveryStatus(row["status"]),
            http_status=row["http_status"],
            latency_ms=row["latency_ms"],
            error=row["error"],
            response_body=_clip(row["response_excerpt"]),
            attempted_at=row["attempted_at"],
            url_host=row["url_host"],
            next_step=row["next_step"],
            job=JobRef(row["job_topic"], row["job_partition"], row["job_offset"]),
        )

    @classmethod
    def of_log(cls, attempt: LoggedAttempt, partition: int, offset: int) -> DeliveryAttempt:
        """From a delivery-log record (its value read with
        :meth:`processors.webhooks.attempts.DeliveryAttempt.parse`) at ``partition``/``offset``."""
        return cls(
            id=strawberry.ID(f"{partition}:{offset}"),
            webhook_id=strawberry.ID(attempt.webhook_id),
            endpoint_id=strawberry.ID(attempt.subscription_id),
            event_id=strawberry.ID(attempt.event_id),
            event_type=attempt.event_type,
            attempt=attempt.attempt,
            status=DeliveryStatus(attempt.status),
            http_status=attempt.http_status,
            latency_ms=attempt.latency_ms,
            error=attempt.error,
            response_body=_clip(attempt.response_excerpt),
            attempted_at=attempt.attempted_at,
            url_host=attempt.url_host,
            next_step=attempt.next_step,
            job=attempt.job,
        )


_STATUS_OF: Final = {status.value: status for status in DeliveryStatus}
"""The store's spelling → the status (a dictionary read: an enum's lookup by value costs
several times more, once per line of a page); a spelling not in it goes through the enum,
which refuses it."""


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_RESPONSE_BODY_CHARS:
        return text
    return text[: MAX_RESPONSE_BODY_CHARS - 1] + "…"


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class DeliveryEdge:
    cursor: str
    node: DeliveryAttempt


@strawberry.type
class DeliveryConnection:
    edges: list[DeliveryEdge]
    page_info: PageInfo


@strawberry.type
class Header:
    name: str
    value: str


@strawberry.type
class SentRequest:
    headers: list[Header]
    body: str


_SENT_HEADERS: Final = ("Content-Type", "User-Agent", "X-Webhook-Id", "X-Webhook-Event-Type", "webhook-id")


async def _sent_request(root: strawberry.Parent[Message], info: Info) -> SentRequest | None:
    """The body and the headers as the webhooks app sent them to this partner.

    The body is the dispatch record's value, read back at the coordinates the delivery log
    names (``job``): the webhooks app sends exactly those bytes, already projected for the
    partner's grants at fan-out, so this is the body as sent, byte for byte (decoded as UTF-8,
    which the JSON body is).  A record that does not carry this endpoint's id is not shown.

    Headers: those that are the same on every attempt and need nothing but the record —
    ``Content-Type``, ``User-Agent`` (this build's: the build that delivers from this
    process), ``X-Webhook-Id``, ``X-Webhook-Event-Type`` and ``webhook-id``.  Not
    reconstructed, because they were never kept and cannot be truthfully made again:
    ``webhook-timestamp`` (the second each attempt was sent), and ``X-Webhook-Signature``,
    ``X-Webhook-Signature-Previous`` and ``webhook-signature`` (made per attempt from that
    timestamp and the secrets valid then; the portal never decrypts a secret).

    Null when no dispatch record of the message is left on its topic (retention); an
    ``UNAVAILABLE`` error when the broker does not answer.
    """
    services = info.context.services
    reader = services.dispatch
    jobs = sorted({attempt.job for attempt in root.attempts}, reverse=True)
    if reader is None or not jobs:
        return None
    try:
        found = await reader.read(jobs)
    except BrokerError as exc:
        raise Unavailable("the request cannot be read back now; retry later") from exc
    for record in sorted(found, key=lambda r: r.job, reverse=True):
        if record.subscription_id != str(root.endpoint_id) or record.value is None:
            continue
        values = {
            "Content-Type": "application/json",
            "User-Agent": services.user_agent,
            "X-Webhook-Id": str(root.webhook_id),
            "X-Webhook-Event-Type": root.event_type,
            "webhook-id": str(root.webhook_id),
        }
        return SentRequest(
            headers=[Header(name=name, value=values[name]) for name in _SENT_HEADERS],
            body=record.value.decode("utf-8", "replace"),
        )
    return None


@strawberry.type
class Message:
    webhook_id: strawberry.ID
    endpoint_id: strawberry.ID
    event_type: str
    event_id: strawberry.ID
    request: SentRequest | None = strawberry.field(
        resolver=_sent_request,
        description=(
            "The request as sent: the projected body and the headers every attempt carried "
            "(signature headers are made per attempt and not kept); null once gone from the "
            "dispatch topic."
        ),
    )
    attempts: list[DeliveryAttempt]


# ---------------------------------------------------------------------------------- bordereaux


@strawberry.enum
class BordereauType(Enum):
    PREMIUM = "PREMIUM_BORDEREAUX"
    CLAIMS = "CLAIMS_BORDEREAUX"


@strawberry.input
class BordereauFilter:
    treaty_number: str | None = strawberry.UNSET
    period_id: str | None = strawberry.UNSET
    report_type: BordereauType | None = strawberry.UNSET


@strawberry.enum
class DownloadFormat(Enum):
    JSON = "json"
    CSV = "csv"


@strawberry.type
class BordereauDelivery:
    status: str
    acknowledged_at: datetime | None
    duplicate: bool
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BordereauDelivery:
        return cls(
            status=row["status"],
            acknowledged_at=row["acknowledged_at"],
            duplicate=row["duplicate"],
            error=row["error"],
        )


_ROWS_KEY: Final = {BordereauType.PREMIUM: "policies", BordereauType.CLAIMS: "claims"}


async def _bordereau_deliveries(root: strawberry.Parent[Bordereau], info: Info) -> list[BordereauDelivery]:
    """The report's delivery results (one query for every report of the request)."""
    context = info.context
    reinsurer_key = context.reinsurer_key
    if reinsurer_key is None:
        return []
    queries = context.services.queries

    async def load(report_ids: list[str]) -> list[list[BordereauDelivery]]:
        try:
            found = await queries.bordereau_deliveries(reinsurer_key, report_ids)
        except PortalStoreUnavailable as exc:
            raise Unavailable("bordereau deliveries cannot be read now; retry later") from exc
        return [[BordereauDelivery.from_row(row) for row in found.get(i, ())] for i in report_ids]

    return await loader(info, "bordereau_deliveries", load).load(str(root.report_id))


def _download(root: strawberry.Parent[Bordereau], format: DownloadFormat) -> str:
    """The report as JSON or CSV, in the reinsurance wing's formats
    (:mod:`processors.bordereaux.reports`): the rows (adjustments among them) in the report's
    order; JSON keys in the report's order, written by its JSON writer.  The cedant is named by
    its code (the store does not keep its name)."""
    report_type = root.report_type.value
    rows = report_rows(report_type, [*_list(root.rows), *_list(root.adjustments)])
    if format is DownloadFormat.CSV:
        return report_csv(report_type, rows).decode("utf-8")
    document = {
        "report_id": str(root.report_id),
        "report_type": report_type,
        "treaty_number": root.treaty_number,
        "period": {"id": root.period_id, "from": root.period_from, "to": root.period_to},
        "cedant": {"code": root.cedant_code},
        "reinsurer": {"code": root.reinsurer_code, "name": root.reinsurer_name},
        "treaty_type": root.treaty_type,
        "settlement_currency": root.settlement_currency,
        _ROWS_KEY[root.report_type]: rows,
        "summary": root.totals,
    }
    return compact_json(_plain(document)).decode("utf-8")


@strawberry.type
class Bordereau:
    report_id: strawberry.ID
    report_type: BordereauType
    treaty_number: str
    treaty_type: str | None
    period_id: str
    period_from: str
    period_to: str
    cedant_code: str | None
    settlement_currency: str | None
    row_count: int
    adjustment_count: int
    ceded_total: Decimal | None
    rows: JSON
    adjustments: JSON
    totals: JSON
    reinsurer_code: strawberry.Private[str | None]
    reinsurer_name: strawberry.Private[str | None]

    deliveries: list[BordereauDelivery] = strawberry.field(resolver=_bordereau_deliveries)
    download: str = strawberry.field(
        resolver=_download,
        description="The report as a download: JSON or CSV text.",
    )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Bordereau:
        return cls(
            report_id=strawberry.ID(row["report_id"]),
            report_type=BordereauType(row["report_type"]),
            treaty_number=row["treaty_number"],
            treaty_type=row["treaty_type"],
            period_id=row["period_id"],
            period_from=row["period_from"].isoformat(),
            period_to=row["period_to"].isoformat(),
            cedant_code=row["cedant_code"],
            settlement_currency=row["settlement_currency"],
            row_count=row["row_count"],
            adjustment_count=row["adjustment_count"],
            ceded_total=row["ceded_total"],
            rows=row["rows"],
            adjustments=row["adjustments"],
            totals=row["totals"],
            reinsurer_code=row["reinsurer_code"],
            reinsurer_name=row["reinsurer_name"],
        )


def _list(value: Any) -> list[dict[str, Any]]:
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _plain(value: Any) -> Any:
    """``value`` ready for the report's JSON writer.  The reports write amounts as decimal
    strings; a JSON fraction the store read back as a Decimal is written as its exact decimal
    string too (never through a float), a whole number as an integer."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else format(value, "f")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@strawberry.type
class BordereauEdge:
    cursor: str
    node: Bordereau


@strawberry.type
class BordereauConnection:
    edges: list[BordereauEdge]
    page_info: PageInfo


# ----------------------------------------------------------------------------------- mutations


@strawberry.type
class TestEvent:
    webhook_id: strawberry.ID
    event_id: strawberry.ID
    endpoint_id: strawberry.ID


@strawberry.type
class Redelivery:
    queued: int = strawberry.field(description="Messages queued for delivery again.")
    webhook_ids: list[strawberry.ID]
    caught_up: bool = strawberry.field(
        description="Whether the delivery log was read to its end before answering."
    )


# -------------------------------------------------------------------------------------- feed


@strawberry.type
class FeedEvent:
    endpoint_id: strawberry.ID
    webhook_id: strawberry.ID
    event_type: str
    event_id: strawberry.ID
    body: JSON = strawberry.field(description="The body as projected for this partner.")
    at: datetime


@strawberry.type
class FeedOutcome:
    attempt: DeliveryAttempt


FeedItem = Annotated[FeedEvent | FeedOutcome, strawberry.union("FeedItem")]
