"""``Subscription.feed``: a partner's events and delivery outcomes, live, over WebSocket.

The feed comes from the process's :class:`~processors.portal.live.LiveFeed`
(``info.context.services.live``), which routes each item to the partner that owns its endpoint
only.  This resolver adds what depends on the caller:

* ``endpointId`` must be one of the caller's endpoints; any other id (another partner's, an
  operator's, one that does not exist) is the same ``NOT_FOUND``.  ``eventTypes`` are filters
  as on a subscription (``policy.issued``, ``policy.*``, ``*``); anything else is
  ``BAD_USER_INPUT``.
* The key the connection was opened with is checked again (the same check the API makes on
  every request) every ``portal.live.key_check_interval_s`` (0.25 s by default), and at once
  when the partner registry changes for this partner.  A revoked or expired key, or a
  suspended partner, ends the feed with ``UNAUTHENTICATED``; a registry that cannot be read
  ends it with ``UNAVAILABLE`` (nothing is delivered on a key that cannot be checked).
* The feed ends with ``LAGGED`` when its client does not read fast enough to keep its queue
  (``portal.live.queue_size``) from filling, and with ``UNAVAILABLE`` when the live feed stops.
  A partner has at most ``portal.live.max_subscriptions_per_partner`` feeds open on one
  instance (``RATE_LIMITED`` beyond).

How the end reaches the client (strawberry's graphql-transport-ws handler,
``strawberry.subscriptions.protocols.graphql_transport_ws.handlers``): an error raised by the
subscription's generator becomes one ``next`` message whose payload is ``{"data": null,
"errors": [{"message": ..., "extensions": {"code": ...}}]}`` (the code put there by
:class:`~processors.portal.graphql.errors.ErrorCodes`), followed by ``complete`` for the same
operation id.  The connection itself stays open: other operations on it are checked the same
way (every feed re-checks the key), and a client reconnecting must offer a valid key in
``connection_init`` again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Final

import strawberry

from processors.partners.auth import KeyRefused
from processors.portal.graphql.context import PortalContext
from processors.portal.graphql.errors import (
    BadUserInput,
    ErrorCode,
    Lagged,
    NotFound,
    PortalError,
    Unauthenticated,
    Unavailable,
)
from processors.portal.graphql.types import DeliveryAttempt, FeedEvent, FeedItem, FeedOutcome, Info
from processors.portal.live import (
    LAGGED,
    FeedEnd,
    FeedLimitReached,
    FeedUnavailable,
    InvalidFeedFilter,
    LiveEvent,
    LiveFeed,
    LiveItem,
)
from processors.webhooks.service import EndpointNotFound

__all__ = ["ENDPOINT_NOT_FOUND", "Subscription", "TooManyFeeds", "feed_item"]

log = logging.getLogger(__name__)

ENDPOINT_NOT_FOUND: Final = EndpointNotFound().message
"""The one answer for an endpoint id that is not the caller's, whoever's it is (the mutations'
answer for such an id too)."""

_FEED_DESCRIPTION: Final = (
    "Live: this partner's events (as projected for it) and delivery outcomes, as they happen.\n"
    "Over WebSocket with the graphql-transport-ws protocol; the key goes in connection_init's\n"
    'payload as {"authorization": "Bearer pk_live_..."}.  A revoked or expired key ends the feed.'
)


class TooManyFeeds(PortalError):
    """The partner has as many feeds open on this instance as it may."""

    code = ErrorCode.RATE_LIMITED


def feed_item(item: LiveItem) -> FeedEvent | FeedOutcome:
    """The schema's ``FeedItem`` for an item of the live feed."""
    if isinstance(item, LiveEvent):
        return FeedEvent(
            endpoint_id=strawberry.ID(item.endpoint_id),
            webhook_id=strawberry.ID(item.webhook_id),
            event_type=item.event_type,
            event_id=strawberry.ID(item.event_id),
            body=item.body,
            at=item.at,
        )
    return FeedOutcome(attempt=DeliveryAttempt.of_log(item.attempt, item.partition, item.offset))


async def check_key(context: PortalContext) -> None:
    """Raise unless the connection's key still names the caller's partner, active."""
    try:
        answer = await context.services.keys.authenticate(context.key.get_secret_value())
    except Exception:
        log.exception("portal feed: the key of a feed of partner %s could not be checked", context.partner_id)
        raise Unavailable("the key cannot be checked now; subscribe again later") from None
    if isinstance(answer, KeyRefused):
        if answer.reason == "unavailable":
            raise Unavailable(answer.message)
        raise Unauthenticated(answer.message)
    if answer.partner_id != context.partner_id:  # pragma: no cover - a key names one partner for ever
        raise Unauthenticated("the API key is not valid")


def _live(context: PortalContext) -> LiveFeed:
    live: LiveFeed | None = context.services.live
    if live is None:
        raise Unavailable("the live feed is not available on this server")
    return live


async def _feed(
    info: Info,
    endpoint_id: strawberry.ID | None = strawberry.UNSET,
    event_types: list[str] | None = strawberry.UNSET,
) -> AsyncGenerator[FeedItem, None]:
    context = info.context
    await check_key(context)
    live = _live(context)
    partner_id = context.partner_id
    endpoint = str(endpoint_id) if isinstance(endpoint_id, str) else None
    if endpoint is not None and live.owner_of(endpoint) != partner_id:
        raise NotFound(ENDPOINT_NOT_FOUND)
    filters = event_types if isinstance(event_types, list) else []
    try:
        feed = live.subscribe(partner_id, endpoint_id=endpoint, event_types=filters)
    except InvalidFeedFilter as exc:
        raise BadUserInput(str(exc)) from None
    except FeedLimitReached as exc:
        raise TooManyFeeds(f"{exc}; close one first") from None
    except FeedUnavailable:
        raise Unavailable("the live feed is not running; subscribe again later") from None
    interval_s = live.settings.key_check_interval_s
    try:
        due = time.monotonic() + interval_s
        while True:
            if feed.check_requested() or time.monotonic() >= due:
                await check_key(context)
                due = time.monotonic() + interval_s
            got = await feed.next(due - time.monotonic())
            if got is None:
                continue
            if isinstance(got, FeedEnd):
                raise (Lagged if got.code == LAGGED else Unavailable)(got.message)
            yield feed_item(got)
    finally:
        feed.close()


@strawberry.type
class Subscription:
    feed = strawberry.subscription(resolver=_feed, description=_FEED_DESCRIPTION)
