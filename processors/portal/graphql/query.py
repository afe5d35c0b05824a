"""The portal schema's ``Query`` type: what a partner reads about itself.

Every resolver answers for the caller's own partner (``info.context.partner_id``, set by the
view from the partner key); the owner is never taken from an argument:

=================  ==========================================================================
field              source
=================  ==========================================================================
``me``             the partner registry table (``services.partners``): grants as they are now
``eventTypes``     the partner-facing catalogue (:mod:`processors.partners.catalogue`) for
                   the partner's grants: what its webhooks carry
``endpoints``      the live subscription table the REST API writes (``services.endpoints``,
``endpoint``       :class:`~processors.webhooks.service.EndpointService`): a mutation's change
                   is read back at once; another partner's id is null
``deliveries``     the query store (:class:`~processors.portal.queries.PortalQueries`), keyset
``message``        pages newest first; a message's attempts oldest first
``bordereaux``     the query store, filtered on the caller's reinsurer key (a partner of another
``bordereau``      kind has none)
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import strawberry

from processors.partners.catalogue import event_catalogue
from processors.portal.graphql.errors import BadUserInput, Unauthenticated, Unavailable
from processors.portal.graphql.types import (
    Bordereau,
    BordereauConnection,
    BordereauEdge,
    BordereauFilter,
    DeliveryAttempt,
    DeliveryConnection,
    DeliveryEdge,
    DeliveryFilter,
    Endpoint,
    EventType,
    Info,
    Message,
    PageInfo,
    Partner,
)
from processors.portal.queries import (
    BordereauFilters,
    BordereauPosition,
    DeliveryFilters,
    DeliveryPosition,
    InvalidCursor,
    Page,
    PortalStoreUnavailable,
)
from processors.webhooks.service import EndpointNotFound

__all__ = ["DEFAULT_PAGE_SIZE", "Query"]

DEFAULT_PAGE_SIZE: Final = 20
_MAX_ID_CHARS: Final = 255
"""Longer ids name nothing (the store's longest key is a report id of 255 characters)."""
_CURSOR_HINT: Final = (
    "after: not a cursor of this list (use an edge's cursor or pageInfo.endCursor of the same list)"
)


def _set(value: object) -> bool:
    return value is not None and value is not strawberry.UNSET


def _page_size(info: Info, first: int | None) -> int:
    limit = info.context.services.max_page_size
    if first is None:
        return min(DEFAULT_PAGE_SIZE, limit)
    if first < 0:
        raise BadUserInput("first must be 0 or more")
    if first > limit:
        raise BadUserInput(
            f"first must be at most {limit} (the maximum page size)", extensions={"max": limit}
        )
    return first


_Position = TypeVar("_Position")
_Connection = TypeVar("_Connection")


def _position_after(
    read: Callable[[str, str], _Position], partner_id: str, after: str | None
) -> _Position | None:
    """The position that cursor ``after`` names in ``partner_id``'s list, as ``read`` (the list's
    reading of :class:`~processors.portal.queries.CursorCodec`) finds it; None: ``after`` is not
    given (the list from its start).  A cursor that is not of this list is the caller's error."""
    if not _set(after):
        return None
    try:
        return read(partner_id, str(after))
    except InvalidCursor:
        raise BadUserInput(_CURSOR_HINT) from None


def _connection(
    page: Page,
    cursor: Callable[[Mapping[str, Any]], str],
    node: Callable[[Mapping[str, Any]], Any],
    edge_type: Callable[..., Any],
    connection_type: Callable[..., _Connection],
) -> _Connection:
    """``page`` as a Relay connection: an edge of each row's ``node`` and ``cursor``, and the last
    edge's cursor as the page's ``endCursor``."""
    edges = [edge_type(cursor=cursor(row), node=node(row)) for row in page.rows]
    return connection_type(
        edges=edges,
        page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
    )


def _me(info: Info) -> Partner:
    partner = info.context.services.partners.partner(info.context.partner_id)
    if partner is None:  # removed from the registry since the key was checked
        raise Unauthenticated("the API key's partner is not in the registry")
    return Partner.of(partner)


def _event_types(info: Info) -> list[EventType]:
    partner = info.context.services.partners.partner(info.context.partner_id)
    if partner is None:
        raise Unauthenticated("the API key's partner is not in the registry")
    return [
        EventType(
            event_type=entry["event_type"],
            withheld=entry["withheld"],
            schema=entry["schema"],
            example=entry["example"],
        )
        for entry in event_catalogue(frozenset(partner.grants))
    ]


async def _endpoints(info: Info) -> list[Endpoint]:
    service = info.context.services.endpoints
    if service is None:
        raise Unavailable("endpoints are not served by this instance")
    subs = await service.list_endpoints(info.context.caller)
    subs.sort(key=lambda sub: (sub.created_at, sub.id), reverse=True)
    return [Endpoint.of(sub) for sub in subs]


async def _endpoint(info: Info, id: strawberry.ID) -> Endpoint | None:
    service = info.context.services.endpoints
    if service is None:
        raise Unavailable("endpoints are not served by this instance")
    if len(id) > _MAX_ID_CHARS:
        return None
    try:
        sub = await service.get(info.context.caller, str(id))
    except EndpointNotFound:
        return None
    return Endpoint.of(sub)


async def _deliveries(
    info: Info,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = strawberry.UNSET,
    filter: DeliveryFilter | None = strawberry.UNSET,
) -> DeliveryConnection:
    context = info.context
    queries = context.services.queries
    partner_id = context.partner_id
    size = _page_size(info, first)
    position = _position_after(queries.codec.read_delivery, partner_id, after)
    filters = DeliveryFilters()
    if filter is not None and filter is not strawberry.UNSET:
        status = filter.status
        filters = DeliveryFilters(
            endpoint_id=str(filter.endpoint_id) if _set(filter.endpoint_id) else None,
            event_type=filter.event_type if _set(filter.event_type) else None,
            status=status.value if status is not None and _set(status) else None,
            since=filter.since if _set(filter.since) else None,
            until=filter.until if _set(filter.until) else None,
        )
    try:
        page = await queries.deliveries(partner_id, first=size, after=position, filters=filters)
    except PortalStoreUnavailable as exc:
        raise Unavailable("the delivery log cannot be read now; retry later") from exc
    delivery, position_of = queries.codec.delivery, DeliveryPosition.of
    return _connection(
        page,
        lambda row: delivery(partner_id, position_of(row)),
        DeliveryAttempt.from_row,
        DeliveryEdge,
        DeliveryConnection,
    )


async def _message(info: Info, webhook_id: strawberry.ID) -> Message | None:
    if len(webhook_id) > _MAX_ID_CHARS:
        return None
    try:
        rows = await info.context.services.queries.message(info.context.partner_id, str(webhook_id))
    except PortalStoreUnavailable as exc:
        raise Unavailable("the delivery log cannot be read now; retry later") from exc
    if not rows:
        return None
    first = rows[0]
    return Message(
        webhook_id=strawberry.ID(first["webhook_id"]),
        endpoint_id=strawberry.ID(first["subscription_id"]),
        event_type=first["event_type"],
        event_id=strawberry.ID(first["event_id"]),
        attempts=[DeliveryAttempt.from_row(row) for row in rows],
    )


async def _bordereaux(
    info: Info,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = strawberry.UNSET,
    filter: BordereauFilter | None = strawberry.UNSET,
) -> BordereauConnection:
    context = info.context
    queries = context.services.queries
    partner_id = context.partner_id
    size = _page_size(info, first)
    position = _position_after(queries.codec.read_bordereau, partner_id, after)
    reinsurer_key = context.reinsurer_key
    if reinsurer_key is None:
        return BordereauConnection(edges=[], page_info=PageInfo(has_next_page=False, end_cursor=None))
    filters = BordereauFilters()
    if filter is not None and filter is not strawberry.UNSET:
        report_type = filter.report_type
        filters = BordereauFilters(
            treaty_number=filter.treaty_number if _set(filter.treaty_number) else None,
            period_id=filter.period_id if _set(filter.period_id) else None,
            report_type=report_type.value if report_type is not None and _set(report_type) else None,
        )
    try:
        page = await queries.bordereaux(reinsurer_key, first=size, after=position, filters=filters)
    except PortalStoreUnavailable as exc:
        raise Unavailable("bordereaux cannot be read now; retry later") from exc
    bordereau, position_of = queries.codec.bordereau, BordereauPosition.of
    return _connection(
        page,
        lambda row: bordereau(partner_id, position_of(row)),
        Bordereau.from_row,
        BordereauEdge,
        BordereauConnection,
    )


async def _bordereau(info: Info, report_id: strawberry.ID) -> Bordereau | None:
    reinsurer_key = info.context.reinsurer_key
    if reinsurer_key is None or len(report_id) > _MAX_ID_CHARS:
        return None
    try:
        row = await info.context.services.queries.bordereau(reinsurer_key, str(report_id))
    except PortalStoreUnavailable as exc:
        raise Unavailable("bordereaux cannot be read now; retry later") from exc
    return Bordereau.from_row(row) if row is not None else None


@strawberry.type
class Query:
    me: Partner = strawberry.field(resolver=_me, description="The partner the key belongs to.")
    event_types: list[EventType] = strawberry.field(
        resolver=_event_types,
        description=(
            "What this partner receives of each event type: projected schema, example, withheld fields."
        ),
    )
    endpoints: list[Endpoint] = strawberry.field(
        resolver=_endpoints, description="This partner's endpoints (webhook subscriptions), newest first."
    )
    endpoint: Endpoint | None = strawberry.field(resolver=_endpoint)
    deliveries: DeliveryConnection = strawberry.field(
        resolver=_deliveries,
        description="This partner's delivery log, newest first (Relay cursor pagination; first ≤ 100).",
    )
    message: Message | None = strawberry.field(
        resolver=_message,
        description="One message (webhook id) with every attempt, oldest first; null if not this partner's.",
    )
    bordereaux: BordereauConnection = strawberry.field(
        resolver=_bordereaux,
        description="Reinsurer partners: their bordereaux, newest period first; empty for other kinds.",
    )
    bordereau: Bordereau | None = strawberry.field(resolver=_bordereau)
