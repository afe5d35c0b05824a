"""The live feed behind the GraphQL ``Subscription.feed``: a partner's events and delivery outcomes.

One consumer per API process tails two topics of the webhooks app from their end, without a
consumer group (the ``reader`` role of :class:`~processors.kafka.KafkaClients`: partitions
assigned, nothing committed, ``read_committed``):

* the **dispatch topic** (``integrations.webhooks.dispatch``): one record per event and
  endpoint, whose value is the exact body that endpoint receives, the event as projected for
  its partner's grants (:mod:`processors.webhooks.delivery`) → :class:`LiveEvent`;
* the **delivery log** (``integrations.webhook.deliveries``): one line per attempt or decision,
  read with :meth:`DeliveryAttempt.parse <processors.webhooks.attempts.DeliveryAttempt.parse>`
  → :class:`LiveOutcome`.

**Routing.**  An item belongs to the partner that owns its endpoint, as the live subscription
table says (the table the webhooks app delivers from and the REST API checks owners against),
looked up when the record is read.  An endpoint without an owner (an operator's subscription, a
deleted one) reaches nobody.  Among that partner's open feeds, each takes what its filters
select (an endpoint id; event types as ``*``, ``policy.*`` or ``policy.issued``).  Records of
partners with no open feed are not even decoded.

**Back-pressure.**  Every feed has a queue of at most ``queue_size`` items.  Handing an item
over never waits: a feed whose queue is full is *ended* — it keeps the items already queued
(a gap-free run), then ends with the code ``LAGGED`` and receives nothing more.  The client
subscribes again and reads what it missed from the delivery log.  Memory is bounded by
``queue_size`` × open feeds, and open feeds by ``max_subscriptions_per_partner`` per partner.

**Where it starts.**  Each partition is assigned at its end offset of the moment it is found,
so a feed carries what is written after it opened, never history; new partitions are looked
for every ``metadata_refresh_s``.  :meth:`LiveFeed.wait_ready` answers once every partition of
both topics is assigned at a known offset.

**Broker outage.**  The consumer keeps its position and librdkafka keeps reconnecting; the feed
logs the outage when it starts, every 30 s while it lasts, and when the cluster answers again.
Open feeds stay open and receive what was written meanwhile once it is readable.  A fatal
consumer error, or :meth:`LiveFeed.stop`, ends every open feed with ``UNAVAILABLE``: no feed is
dropped silently.

**Key changes.**  With ``partners`` (the registry store, which calls its listeners after each
change), a change to a partner or to one of its keys asks that partner's open feeds to check
their key again at once (the resolver does it, :mod:`processors.portal.graphql.subscription`);
between changes the resolver checks every ``key_check_interval_s`` (an expiry changes nothing
in the table).

Nothing here logs a body, a key or any field of an event; partner and endpoint ids only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

import confluent_kafka

from processors.errors import BrokerError, ConfigError, ContractError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch
from processors.kafka.threaded import ThreadBoundConsumer
from processors.partners.model import ApiKey, Partner
from processors.portal.config import LiveFeedSettings
from processors.runtime.message import KafkaMessage
from processors.webhooks.attempts import DeliveryAttempt
from processors.webhooks.delivery import HX_SUBSCRIPTION, DispatchJob
from processors.webhooks.subscriptions import MAX_FILTERS, filter_matches, valid_event_type

__all__ = [
    "LAGGED",
    "UNAVAILABLE",
    "EndpointDirectory",
    "FeedEnd",
    "FeedLimitReached",
    "FeedRouter",
    "FeedSubscription",
    "FeedUnavailable",
    "InvalidFeedFilter",
    "LiveEvent",
    "LiveFeed",
    "LiveItem",
    "LiveOutcome",
    "RegistryEvents",
    "check_event_filters",
    "read_record",
]

log = logging.getLogger(__name__)

LAGGED: Final = "LAGGED"
"""The feed fell ``queue_size`` items behind and was ended (after the items it had)."""
UNAVAILABLE: Final = "UNAVAILABLE"
"""The live feed stopped (the server shuts down, or the consumer failed for good)."""

EndCode = Literal["LAGGED", "UNAVAILABLE"]

_OUTAGE_REPEAT_S: Final = 30.0
_FAST_REFRESH_S: Final = 1.0
_BACKOFF_MAX_S: Final = 5.0
_SUBSCRIPTION_ID_MAX: Final = 64
_UNREACHABLE: Final = frozenset(
    {
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._RESOLVE,
        confluent_kafka.KafkaError._TIMED_OUT,
    }
)


# --------------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An event dispatched to one endpoint: ``body`` is the JSON the endpoint receives (projected
    for its partner; a JSON fraction read as a ``Decimal``, never a float); ``at`` is when it
    was dispatched (the dispatch record's time, UTC)."""

    endpoint_id: str
    webhook_id: str
    event_type: str
    event_id: str
    body: Any
    at: datetime


@dataclass(frozen=True, slots=True)
class LiveOutcome:
    """One delivery-log line and where it is (its ``id`` is the delivery log's id of it)."""

    attempt: DeliveryAttempt
    partition: int
    offset: int

    @property
    def id(self) -> str:
        """``<partition>:<offset>``, as the delivery-log query names the same line."""
        return f"{self.partition}:{self.offset}"

    @property
    def endpoint_id(self) -> str:
        return self.attempt.subscription_id

    @property
    def event_type(self) -> str:
        return self.attempt.event_type


LiveItem = LiveEvent | LiveOutcome


@dataclass(frozen=True, slots=True)
class FeedEnd:
    """Why a feed ended: ``code`` (``LAGGED``, ``UNAVAILABLE``) and a sentence for the client."""

    code: EndCode
    message: str


class FeedLimitReached(Exception):
    """The partner has ``max_subscriptions_per_partner`` feeds open on this instance."""


class FeedUnavailable(Exception):
    """The live feed is not running (not started, stopped, or failed)."""


class InvalidFeedFilter(ValueError):
    """An ``eventTypes`` filter that is not ``*``, a prefix (``policy.*``) or an event type."""


def check_event_filters(values: Iterable[str]) -> tuple[str, ...]:
    """The filters, each checked (the grammar of a subscription's filters), duplicates removed."""
    found: list[str] = []
    for value in values:
        ok = (
            value == "*"
            or valid_event_type(value)
            or (value.endswith(".*") and valid_event_type(value[:-1] + "x"))
        )
        if not ok:
            raise InvalidFeedFilter(
                "eventTypes: each must be an event type (policy.issued), a prefix (policy.*) or *"
            )
        if value not in found:
            found.append(value)
    if len(found) > MAX_FILTERS:
        raise InvalidFeedFilter(f"eventTypes: at most {MAX_FILTERS} filters")
    return tuple(found)


# --------------------------------------------------------------------------------- subscribers


class FeedSubscription:
    """One open feed: one partner, optionally one endpoint and some event types.

    Lives on the event loop.  :meth:`next` hands out queued items in order, then the end once
    the feed ended; ``None`` when ``timeout_s`` passed or a key check was asked for first
    (:meth:`check_requested`).  :meth:`close` when the client goes away.
    """

    def __init__(
        self,
        router: FeedRouter,
        partner_id: str,
        *,
        endpoint_id: str | None,
        event_types: tuple[str, ...],
        queue_size: int,
    ) -> None:
        self.partner_id = partner_id
        self.endpoint_id = endpoint_id
        self.event_types = event_types
        self.queue_size = queue_size
        self.queued = 0
        """Items taken into the queue since the feed opened."""
        self._router = router
        self._items: deque[LiveItem] = deque()
        self._end: FeedEnd | None = None
        self._wake = asyncio.Event()
        self._check = False
        self._closed = False

    @property
    def ended(self) -> FeedEnd | None:
        return self._end

    @property
    def waiting(self) -> int:
        """Items queued and not handed out yet."""
        return len(self._items)

    def selects(self, item: LiveItem) -> bool:
        """Whether this feed's filters take ``item`` (its owner was checked by the router)."""
        if self.endpoint_id is not None and item.endpoint_id != self.endpoint_id:
            return False
        if self.event_types:
            return any(filter_matches(f, item.event_type) for f in self.event_types)
        return True

    def offer(self, item: LiveItem) -> bool:
        """Queue ``item``; never waits.  A full queue ends the feed with ``LAGGED``."""
        if self._end is not None:
            return False
        if len(self._items) >= self.queue_size:
            self.end(
                FeedEnd(
                    LAGGED,
                    f"the feed fell more than {self.queue_size} items behind and was ended; "
                    "subscribe again and read what was missed from `deliveries`",
                )
            )
            return False
        self._items.append(item)
        self.queued += 1
        self._wake.set()
        return True

    def end(self, end: FeedEnd) -> None:
        """End the feed (after the items already queued); the first end given stays."""
        if self._end is None:
            self._end = end
            if end.code == LAGGED:
                log.info(
                    "live feed: a feed of partner %s fell %d items behind; ended with %s",
                    self.partner_id,
                    self.queue_size,
                    LAGGED,
                )
        self._router.remove(self)
        self._wake.set()

    def request_check(self) -> None:
        """Ask the reader of this feed to check its key before handing out anything more."""
        self._check = True
        self._wake.set()

    def check_requested(self) -> bool:
        """Whether a key check was asked for since the last call (and forget it)."""
        asked, self._check = self._check, False
        return asked

    async def next(self, timeout_s: float) -> LiveItem | FeedEnd | None:
        """The next item, the end, or None (``timeout_s`` passed, or a key check was asked)."""
        while True:
            if self._check:
                return None
            if self._items:
                return self._items.popleft()
            if self._end is not None:
                return self._end
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, timeout_s)):
                    await self._wake.wait()
            except TimeoutError:
                return None

    def close(self) -> None:
        """The client went away: leave the router, drop what is queued."""
        self._closed = True
        self._items.clear()
        self._router.remove(self)


class FeedRouter:
    """The open feeds by partner, and the fan-out of items to them (event loop only).

    ``watched`` is the set of partners with an open feed, replaced (never changed in place) on
    every change, so the consumer thread may read it to skip everyone else's records.
    """

    def __init__(self, *, queue_size: int, max_per_partner: int) -> None:
        self.queue_size = queue_size
        self.max_per_partner = max_per_partner
        self.watched: frozenset[str] = frozenset()
        self.routed = 0
        """Items queued for a feed (one per feed that took it)."""
        self._feeds: dict[str, list[FeedSubscription]] = {}
        self._changed = asyncio.Event()
        """Set (and replaced) whenever a feed opens or closes."""

    def subscribe(
        self, partner_id: str, *, endpoint_id: str | None = None, event_types: Sequence[str] = ()
    ) -> FeedSubscription:
        """Open a feed for ``partner_id`` (the caller checked ``endpoint_id`` is its own)."""
        feeds = self._feeds.get(partner_id, [])
        if len(feeds) >= self.max_per_partner:
            raise FeedLimitReached(f"at most {self.max_per_partner} open feeds per partner")
        feed = FeedSubscription(
            self,
            partner_id,
            endpoint_id=endpoint_id,
            event_types=check_event_filters(event_types),
            queue_size=self.queue_size,
        )
        self._feeds[partner_id] = [*feeds, feed]
        self._changed_now()
        return feed

    def remove(self, feed: FeedSubscription) -> None:
        feeds = self._feeds.get(feed.partner_id)
        if feeds is None or feed not in feeds:
            return
        rest = [f for f in feeds if f is not feed]
        if rest:
            self._feeds[feed.partner_id] = rest
        else:
            del self._feeds[feed.partner_id]
        self._changed_now()

    def count(self, partner_id: str | None = None) -> int:
        """Open feeds of ``partner_id`` (of everyone with None)."""
        if partner_id is not None:
            return len(self._feeds.get(partner_id, ()))
        return sum(len(feeds) for feeds in self._feeds.values())

    def route(self, owner: str, item: LiveItem) -> int:
        """Hand ``item`` (whose endpoint ``owner`` owns) to the owner's feeds that select it."""
        taken = 0
        for feed in self._feeds.get(owner, ()):
            if feed.selects(item) and feed.offer(item):
                taken += 1
        self.routed += taken
        return taken

    def request_check(self, partner_id: str | None = None) -> None:
        """Ask the feeds of ``partner_id`` (every feed with None) to check their key now."""
        groups = self._feeds.values() if partner_id is None else [self._feeds.get(partner_id, [])]
        for feeds in list(groups):
            for feed in feeds:
                feed.request_check()

    def end_all(self, end: FeedEnd) -> int:
        """End every open feed; how many there were."""
        feeds = [f for group in self._feeds.values() for f in group]
        for feed in feeds:
            feed.end(end)
        return len(feeds)

    def feeds(self, partner_id: str) -> list[FeedSubscription]:
        """The open feeds of ``partner_id``, oldest first."""
        return list(self._feeds.get(partner_id, ()))

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """True once ``condition()`` holds, asked again whenever a feed opens or closes
        (False after ``timeout_s``)."""
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_count(self, partner_id: str, count: int, timeout_s: float) -> bool:
        """True once ``partner_id`` has at least ``count`` open feeds (False after ``timeout_s``)."""
        return await self.wait_for(lambda: self.count(partner_id) >= count, timeout_s)

    def _changed_now(self) -> None:
        self.watched = frozenset(self._feeds)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


# --------------------------------------------------------------------------------- records


class _Owned(Protocol):
    @property
    def partner_id(self) -> str | None: ...


class EndpointDirectory(Protocol):
    """Endpoint (subscription) id → the subscription and its owner
    (:class:`~processors.webhooks.subscriptions.SubscriptionTable`; thread-safe reads)."""

    def get(self, sub_id: str) -> _Owned | None: ...


@dataclass(frozen=True, slots=True)
class _Read:
    """One record read for the feed: its owner and item, or why it was left out."""

    owner: str | None = None
    item: LiveItem | None = None
    skipped: bool = False
    """Undecodable (counted); a record of nobody watched is neither skipped nor an item."""


def read_record(
    msg: KafkaMessage,
    *,
    dispatch_topic: str,
    endpoints: EndpointDirectory,
    watched: frozenset[str],
) -> _Read:
    """The item a record of either topic carries, with the partner it belongs to.

    The owner is looked up first, from the endpoint id in the record's header (dispatch) or key
    (delivery log): the record is decoded only when that partner has an open feed.
    """
    dispatch = msg.topic() == dispatch_topic
    endpoint_id = _header(msg, HX_SUBSCRIPTION) if dispatch else _text(msg.key())
    if not endpoint_id:
        return _Read(skipped=True)
    sub = endpoints.get(endpoint_id)
    owner = sub.partner_id if sub is not None else None
    if owner is None or owner not in watched:
        return _Read()
    item: LiveItem | None
    if dispatch:
        item = _event(msg)
    else:
        attempt = DeliveryAttempt.parse(msg.value())
        item = None if attempt is None else LiveOutcome(attempt, msg.partition() or 0, msg.offset() or 0)
    if item is None or item.endpoint_id != endpoint_id:
        return _Read(skipped=True)
    return _Read(owner, item)


def _event(msg: KafkaMessage) -> LiveEvent | None:
    try:
        job = DispatchJob.from_message(msg)
        body = json.loads(job.body, parse_float=Decimal)
    except (ContractError, ValueError, RecursionError):
        return None
    kind, stamp_ms = msg.timestamp()
    at = (
        datetime.fromtimestamp(stamp_ms / 1000, UTC)
        if kind != confluent_kafka.TIMESTAMP_NOT_AVAILABLE and stamp_ms > 0
        else datetime.now(UTC)
    )
    return LiveEvent(job.subscription_id, job.webhook_id, job.event_type, job.event_id, body, at)


def _header(msg: KafkaMessage, name: str) -> str | None:
    for key, value in msg.headers() or ():
        if key == name:
            return _text(value)
    return None


def _text(value: bytes | None) -> str | None:
    """An endpoint id from a key or header (a subscription id is short ASCII)."""
    if not value or len(value) > _SUBSCRIPTION_ID_MAX:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


# --------------------------------------------------------------------------------- the feed


class RegistryEvents(Protocol):
    """The partner registry's change hook (:class:`~processors.partners.store.PartnerStore`)."""

    def add_listener(self, callback: Callable[[str, Any], None]) -> None: ...


@dataclass(slots=True)
class _Step:
    """What one turn of the poll thread brings back to the event loop."""

    items: list[tuple[str, LiveItem]] = field(default_factory=list)
    skipped: int = 0
    unreachable: str | None = None
    """A connection error seen in this turn (the cluster is away)."""
    answered: bool = False
    """The cluster answered a metadata request in this turn."""


ConsumerFactory = Callable[[dict[str, Any]], Any]


class LiveFeed:
    """The live feed of one API process; see the module docstring.

    ``endpoints`` is the live subscription table (owners); ``partners`` the registry store whose
    changes ask the feeds of the partner concerned to check their key at once.  Consumer calls
    happen on one worker thread only; routing happens on the event loop, never waiting.
    """

    def __init__(
        self,
        kafka: KafkaClients,
        *,
        dispatch_topic: str,
        deliveries_topic: str,
        endpoints: EndpointDirectory,
        partners: RegistryEvents | None = None,
        settings: LiveFeedSettings | None = None,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
        poll_batch: int = 500,
        poll_timeout_s: float = 0.1,
        broker_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings or LiveFeedSettings()
        self.dispatch_topic = dispatch_topic
        self.deliveries_topic = deliveries_topic
        self.endpoints = endpoints
        self.router = FeedRouter(
            queue_size=self.settings.queue_size,
            max_per_partner=self.settings.max_subscriptions_per_partner,
        )
        self.skipped = 0
        """Records of a watched partner that could not be read (content never logged)."""
        self._partners = partners
        self._conf = kafka.reader("portal-live")
        self._consumer_factory = consumer_factory
        self._poll_batch = poll_batch
        self._poll_timeout_s = poll_timeout_s
        self._broker_timeout_s = broker_timeout_s
        self._thread = ThreadBoundConsumer("portal-live")
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._error: BaseException | None = None
        # poll-thread state
        self._assigned: dict[str, frozenset[int]] = {
            dispatch_topic: frozenset(),
            deliveries_topic: frozenset(),
        }
        self._known: dict[str, frozenset[int]] = dict(self._assigned)
        self._metadata_due = 0.0
        # event-loop state
        self._outage_since: float | None = None
        self._outage_told = 0.0
        self._ready = asyncio.Event()

    # ------------------------------------------------------------------------ public face

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the feed, if one did."""
        return self._error

    @property
    def ready(self) -> bool:
        """Every partition of both topics found so far is assigned at a known offset."""
        return self._ready.is_set()

    @property
    def outage(self) -> bool:
        """The cluster does not answer (as far as the last turns saw)."""
        return self._outage_since is not None

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once :attr:`ready` (False after ``timeout_s``, or when the feed is not running)."""
        if not self.running:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def owner_of(self, endpoint_id: str) -> str | None:
        """The partner that owns the endpoint, or None (unknown, or the operator's)."""
        sub = self.endpoints.get(endpoint_id)
        return sub.partner_id if sub is not None else None

    def subscribe(
        self, partner_id: str, *, endpoint_id: str | None = None, event_types: Sequence[str] = ()
    ) -> FeedSubscription:
        """Open a feed (see :class:`FeedRouter`); raises :class:`FeedUnavailable`,
        :class:`FeedLimitReached` or :class:`InvalidFeedFilter`."""
        if not self.running:
            raise FeedUnavailable("the live feed is not running")
        return self.router.subscribe(partner_id, endpoint_id=endpoint_id, event_types=event_types)

    async def wait_subscribed(self, partner_id: str, count: int, timeout_s: float) -> bool:
        """True once ``partner_id`` has at least ``count`` open feeds here."""
        return await self.router.wait_count(partner_id, count, timeout_s)

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the consumer and start tailing; returns without waiting for the cluster."""
        if self._task is not None:
            raise RuntimeError("a LiveFeed starts once")
        loop = self._loop = asyncio.get_running_loop()
        try:
            await self._thread.open(self._consumer_factory, self._conf)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            await self._thread.close()
            raise ConfigError(f"live feed: cannot create its Kafka consumer: {exc}") from exc
        if self._partners is not None:
            self._partners.add_listener(self._registry_changed)
        self._task = loop.create_task(self._run(), name="portal-live")
        log.info("live feed: tailing %s and %s from their end", self.dispatch_topic, self.deliveries_topic)

    async def stop(self) -> None:
        """Stop tailing, end every open feed with ``UNAVAILABLE``, close the consumer."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self.router.end_all(FeedEnd(UNAVAILABLE, "the live feed stopped; subscribe again later"))
        await self._thread.close()

    def _registry_changed(self, _key: str, entry: Any) -> None:
        """On the registry store's thread: the feeds of the partner concerned check their key."""
        loop = self._loop
        if loop is None or self._stopping or loop.is_closed():
            return
        if isinstance(entry, Partner):
            partner_id: str | None = entry.id
        elif isinstance(entry, ApiKey):
            partner_id = entry.partner_id
        elif entry is None:
            partner_id = None  # a tombstone: whose it was is gone with it
        else:
            return  # a key's last use changes nobody's rights
        try:
            loop.call_soon_threadsafe(self.router.request_check, partner_id)
        except RuntimeError:
            return  # the loop closed meanwhile

    # ------------------------------------------------------------------------ the loop side

    async def _run(self) -> None:
        backoff_s = 0.1
        while not self._stopping:
            try:
                step = await self._thread.call(self._poll_step)
            except BrokerError as exc:
                self._error = exc
                ended = self.router.end_all(
                    FeedEnd(UNAVAILABLE, "the live feed stopped; subscribe again later")
                )
                log.error("live feed stopped: %s; %d open feed(s) ended", exc, ended)
                return
            except confluent_kafka.KafkaException as exc:
                self._note_unreachable(str(exc))
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                continue
            except Exception as exc:
                log.exception("live feed: the poll thread failed")
                self._error = exc
                ended = self.router.end_all(
                    FeedEnd(UNAVAILABLE, "the live feed stopped; subscribe again later")
                )
                log.error("live feed stopped; %d open feed(s) ended", ended)
                return
            backoff_s = 0.1
            if step.unreachable is not None:
                self._note_unreachable(step.unreachable)
            elif step.answered or step.items:
                self._note_reachable()
            for owner, item in step.items:
                self.router.route(owner, item)
            if step.skipped:
                self.skipped += step.skipped
                log.warning("live feed: skipped %d record(s) that could not be read", step.skipped)
            if self._all_assigned():
                self._ready.set()
            else:
                self._ready.clear()

    def _note_unreachable(self, error: str) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_told = now
            log.warning(
                "live feed: the Kafka cluster does not answer (%s); retrying, %d open feed(s) kept",
                error,
                self.router.count(),
            )
        elif now - self._outage_told >= _OUTAGE_REPEAT_S:
            self._outage_told = now
            log.warning(
                "live feed: the Kafka cluster has not answered for %.0f s (%s); retrying, %d feed(s) kept",
                now - self._outage_since,
                error,
                self.router.count(),
            )

    def _note_reachable(self) -> None:
        if self._outage_since is not None:
            log.info(
                "live feed: the Kafka cluster answers again after %.1f s",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    def _all_assigned(self) -> bool:
        return all(self._assigned[t] and self._assigned[t] >= self._known[t] for t in self._assigned)

    # ------------------------------------------------------------------------ the poll thread

    def _poll_step(self) -> _Step:
        """Runs on the poll thread: the only place the consumer is used."""
        consumer = self._thread.consumer
        step = _Step()
        now = time.monotonic()
        if now >= self._metadata_due:
            step.answered = self._refresh_assignment(consumer)
            missing = not all(self._assigned.values()) or any(
                self._known[t] - self._assigned[t] for t in self._assigned
            )
            self._metadata_due = now + (_FAST_REFRESH_S if missing else self.settings.metadata_refresh_s)
        if not any(self._assigned.values()):
            time.sleep(self._poll_timeout_s)  # the poll thread waits for the topics to appear
            return step
        for msg in fetch(consumer, self._poll_batch, self._poll_timeout_s):
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"fatal consumer error: {error.str()}")
                if error.code() in _UNREACHABLE:
                    step.unreachable = error.str()
                else:
                    log.warning("live feed: consumer error: %s", error.str())
                continue
            # The set of now, for each record: a feed opened while this turn waited for records
            # gets those that arrive after it opened.
            try:
                read = read_record(
                    msg,
                    dispatch_topic=self.dispatch_topic,
                    endpoints=self.endpoints,
                    watched=self.router.watched,
                )
            except Exception as exc:  # poison must not stop the feed; the record may hold content
                log.debug("live feed: a record could not be read (%s)", type(exc).__name__)
                read = _Read(skipped=True)
            if read.skipped:
                step.skipped += 1
                log.debug(
                    "live feed: unreadable record at %s[%s]@%s", msg.topic(), msg.partition(), msg.offset()
                )
            elif read.owner is not None and read.item is not None:
                step.items.append((read.owner, read.item))
        if step.unreachable is not None:
            # Ask the cluster again soon: its first answer is how the end of the outage is known.
            self._metadata_due = min(self._metadata_due, time.monotonic() + _FAST_REFRESH_S)
        return step

    def _refresh_assignment(self, consumer: Any) -> bool:
        """Assign the partitions not assigned yet, each at its end offset of now.

        True when the cluster answered.  A connection failure raises ``KafkaException`` (the loop
        side logs it and tries again); a partition whose end cannot be asked now waits for the
        next turn.
        """
        answered = False
        for topic in (self.dispatch_topic, self.deliveries_topic):
            metadata = consumer.list_topics(topic, timeout=self._broker_timeout_s)
            answered = True
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                if not self._known[topic]:
                    log.debug("live feed: topic %s is not available yet", topic)
                continue
            self._known[topic] = frozenset(found.partitions)
            new = sorted(self._known[topic] - self._assigned[topic])
            if not new:
                continue
            positioned = []
            for partition in new:
                tp = confluent_kafka.TopicPartition(topic, partition)
                try:
                    _low, high = consumer.get_watermark_offsets(
                        tp, timeout=self._broker_timeout_s, cached=False
                    )
                except confluent_kafka.KafkaException as exc:
                    log.debug("live feed: the end of %s[%d] is not known yet: %s", topic, partition, exc)
                    continue
                positioned.append(confluent_kafka.TopicPartition(topic, partition, int(high)))
            if positioned:
                consumer.incremental_assign(positioned)
                self._assigned[topic] = self._assigned[topic] | frozenset(tp.partition for tp in positioned)
                log.info(
                    "live feed: reading %s partitions %s from their end",
                    topic,
                    [tp.partition for tp in positioned],
                )
        return answered
