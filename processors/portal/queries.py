"""Owner-scoped reads of the query store: what the portal's GraphQL API answers from.

Every read takes its owner as a mandatory argument — the partner id, and for bordereaux the
partner's reinsurer key — and filters on it in SQL, whatever else the caller asks for: no query
of this module can forget the owner.  Another partner's id is answered exactly like an id that
does not exist (nothing).

::

    queries = PortalQueries(store)                    # a small thread pool, no I/O yet
    page = await queries.deliveries("prt_…", first=20, after=None, filters=DeliveryFilters())
    page.rows, page.has_next
    queries.close()

The statements are synchronous SQLAlchemy Core; :class:`PortalQueries` runs them on its own
threads (``threads``), so the event loop never waits on the database.  :class:`StoreReads` is
the same reads, synchronous (the benchmark's "query run directly on the store" is
:meth:`PortalQueries.deliveries`, the GraphQL resolver's own call).

**Pagination** is keyset (a cursor is a position, never an offset): the delivery log newest
first on ``(attempted_at, log_partition, log_offset)`` — unique, since a line's key is its
place in the log — and bordereaux newest period first on ``(period_id, report_id)``.  A page
asks for one row more than it returns to know whether another page follows.  Rows written
between two pages never shift a page: a newer row sorts before the cursor, an older one is met
in its place.  The indexes are the partner-scoped keyset indexes of schema version 2
(:mod:`processors.portal.migrations`).

**Cursors** (:class:`CursorCodec`) are opaque to the caller: the position as compact JSON
with a MAC (keyed BLAKE2b, 128 bits) over the list's name, the owner and the position,
base64url.  A cursor
that was garbled, forged, or made for another partner or another list is refused
(:class:`InvalidCursor`), never read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Connection, Select, func, literal, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from processors.portal.records import MAX_EXCERPT_CHARS
from processors.portal.schema import (
    BORDEREAU_DELIVERIES,
    BORDEREAUX,
    DELIVERIES,
    PARTNERS,
    UtcDateTime,
)
from processors.portal.store import PortalStore, PortalStoreError

__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_RESPONSE_BODY_CHARS",
    "BordereauFilters",
    "BordereauPosition",
    "CursorCodec",
    "DeliveryFilters",
    "DeliveryPosition",
    "HealthRow",
    "InvalidCursor",
    "Page",
    "PortalQueries",
    "PortalStoreUnavailable",
    "StoreReads",
]

MAX_PAGE_SIZE: Final = 100
"""Rows one page holds at most (the GraphQL ``first`` argument's limit)."""
MAX_RESPONSE_BODY_CHARS: Final = MAX_EXCERPT_CHARS
"""A receiver's answer is shown up to this many characters (the store keeps as many)."""
MAX_MESSAGE_ATTEMPTS: Final = 1_000
"""Lines of one message read at most (a message has a handful: retries and redeliveries)."""
_MAX_CURSOR_CHARS: Final = 512
_TAG_BYTES: Final = 16
_MAX_PREFIXES: Final = 10_000
"""MAC states kept (one per list and owner that made a cursor lately); all go when full."""
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
"""base64 → base64url (RFC 4648 §5), as :func:`base64.urlsafe_b64encode` does."""

PortalStoreUnavailable = PortalStoreError
"""The database failed a read (unreachable, locked too long); the caller may try again."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class DeliveryPosition:
    """A place in a partner's delivery log (its newest-first order)."""

    attempted_at: datetime
    log_partition: int
    log_offset: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> DeliveryPosition:
        return cls(row["attempted_at"], row["log_partition"], row["log_offset"])


@dataclass(frozen=True, slots=True)
class BordereauPosition:
    """A place in a reinsurer's bordereaux (newest period first)."""

    period_id: str
    report_id: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> BordereauPosition:
        return cls(row["period_id"], row["report_id"])


@dataclass(frozen=True, slots=True)
class DeliveryFilters:
    """The delivery log's filters; None: not filtered on.  ``since`` inclusive, ``until``
    exclusive; times are timezone-aware."""

    endpoint_id: str | None = None
    event_type: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class BordereauFilters:
    treaty_number: str | None = None
    period_id: str | None = None
    report_type: str | None = None
    """``PREMIUM_BORDEREAUX`` or ``CLAIMS_BORDEREAUX``."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows (mappings of column → value) and whether more follow."""

    rows: list[dict[str, Any]]
    has_next: bool


@dataclass(frozen=True, slots=True)
class HealthRow:
    """An endpoint's delivery figures: ``attempts`` (lines with a request) and ``succeeded``
    since the window's start; the last line with a request and the last success, ever."""

    attempts: int = 0
    succeeded: int = 0
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None


# ----------------------------------------------------------------------------------- cursors


class InvalidCursor(ValueError):
    """A cursor that was not made by this list for this caller (garbled, forged, another
    partner's, another list's, or made with another key)."""


class CursorCodec:
    """Opaque, tamper-evident cursors (see the module docstring).

    ``key``: the HMAC key.  Instances that serve one address behind a load balancer need the
    same key (the ``portal.graphql.cursor_secret`` setting); without one, a random key of this
    process (cursors do not survive a restart, which only restarts a listing).
    """

    def __init__(self, key: bytes | None = None) -> None:
        given = key if key else secrets.token_bytes(32)
        # BLAKE2b takes keys of up to 64 bytes; a longer secret is hashed to 32 first
        self._key = given if len(given) <= 64 else hashlib.sha256(given).digest()
        self._prefixes: dict[tuple[str, str], Any] = {}

    def _tag(self, kind: str, owner: str, payload: bytes) -> bytes:
        # BLAKE2b in keyed mode is a MAC (RFC 7693), and several times cheaper than HMAC-SHA256
        # for the few bytes of a cursor: a page makes one cursor per row.  The MAC of
        # ``kind NUL owner NUL payload``: the state after the key block and ``kind NUL owner
        # NUL`` is kept per list and owner, and copied for each payload (the same digest as
        # hashing the whole message, for less than half the work).
        prefix = self._prefixes.get((kind, owner))
        if prefix is None:
            head = kind.encode() + b"\x00" + owner.encode() + b"\x00"
            prefix = hashlib.blake2b(head, key=self._key, digest_size=_TAG_BYTES)
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()
            self._prefixes[(kind, owner)] = prefix
        state = prefix.copy()
        state.update(payload)
        return bytes(state.digest())

    def _encode(self, kind: str, owner: str, payload: bytes) -> str:
        raw = self._tag(kind, owner, payload) + payload
        return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")

    def _decode(self, kind: str, owner: str, cursor: str) -> list[Any]:
        if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR_CHARS:
            raise InvalidCursor("not a cursor of this list")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor("not a cursor of this list") from None
        tag, payload = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        if len(tag) != _TAG_BYTES or not hmac.compare_digest(tag, self._tag(kind, owner, payload)):
            raise InvalidCursor("not a cursor of this list")
        try:
            position = json.loads(payload)
        except ValueError:
            raise InvalidCursor("not a cursor of this list") from None
        if not isinstance(position, list):
            raise InvalidCursor("not a cursor of this list")
        return position

    def delivery(self, partner_id: str, position: DeliveryPosition) -> str:
        micros = _micros(position.attempted_at)
        payload = f"[{micros},{int(position.log_partition)},{int(position.log_offset)}]".encode("ascii")
        return self._encode("deliveries", partner_id, payload)

    def read_delivery(self, partner_id: str, cursor: str) -> DeliveryPosition:
        found = self._decode("deliveries", partner_id, cursor)
        if len(found) != 3 or not all(type(v) is int for v in found):
            raise InvalidCursor("not a cursor of this list")
        micros, partition, offset = found
        try:
            moment = _EPOCH + timedelta(microseconds=micros)
        except (OverflowError, ValueError):
            raise InvalidCursor("not a cursor of this list") from None
        return DeliveryPosition(moment, partition, offset)

    def bordereau(self, partner_id: str, position: BordereauPosition) -> str:
        payload = json.dumps([position.period_id, position.report_id], separators=(",", ":")).encode("ascii")
        return self._encode("bordereaux", partner_id, payload)

    def read_bordereau(self, partner_id: str, cursor: str) -> BordereauPosition:
        found = self._decode("bordereaux", partner_id, cursor)
        if len(found) != 2 or not all(isinstance(v, str) for v in found):
            raise InvalidCursor("not a cursor of this list")
        return BordereauPosition(found[0], found[1])


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (no float)."""
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ------------------------------------------------------------------------------------- reads


class StoreReads:
    """The portal's reads of ``store``, synchronous (one short read transaction each)."""

    def __init__(self, store: PortalStore) -> None:
        self.store = store

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.store.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            # the driver's class only: the statement and its parameters hold data
            raise PortalStoreUnavailable(
                f"portal store {self.store.display_url}: a read failed ({type(exc).__name__})"
            ) from exc

    def _rows(self, statement: Select[Any]) -> list[dict[str, Any]]:
        with self._read() as conn:
            result = conn.execute(statement)
            # every row in one fetch, and the names once per statement zipped with each row: a
            # row's own mapping view costs a third of the read again (every statement here
            # names each column once)
            columns = tuple(result.keys())
            return [dict(zip(columns, row, strict=True)) for row in result.all()]

    def _page(self, statement: Select[Any], first: int) -> Page:
        """The first ``first`` rows that ``statement`` reads, and whether it read more (it asks
        for ``first`` + 1 rows: one more tells that a next page follows)."""
        rows = self._rows(statement)
        return Page(rows[:first], len(rows) > first)

    # -- partners -----------------------------------------------------------------------------

    def partner(self, partner_id: str) -> dict[str, Any] | None:
        """The partner's row as the store holds it (None: not projected yet, or deleted)."""
        rows = self._rows(select(PARTNERS).where(PARTNERS.c.id == partner_id))
        return rows[0] if rows else None

    # -- endpoint health ----------------------------------------------------------------------

    def endpoint_health(
        self, partner_id: str, endpoint_ids: Sequence[str], *, since: datetime
    ) -> dict[str, HealthRow]:
        """Per endpoint of ``partner_id`` among ``endpoint_ids``: its :class:`HealthRow` (an
        endpoint without lines, or another partner's, has the empty one)."""
        wanted = sorted(set(endpoint_ids))
        found: dict[str, HealthRow] = {endpoint_id: HealthRow() for endpoint_id in endpoint_ids}
        if not wanted:
            return found
        d = DELIVERIES.c
        requested = d.attempt >= 1
        window = (
            select(
                d.subscription_id,
                func.count().label("attempts"),
                func.coalesce(func.sum((d.status == "delivered").cast(_INT)), 0).label("succeeded"),
            )
            .where(d.partner_id == partner_id, d.subscription_id.in_(wanted), requested)
            .where(d.attempted_at >= literal(since, UtcDateTime))
            .group_by(d.subscription_id)
        )
        with self._read() as conn:
            counts = {row.subscription_id: (row.attempts, row.succeeded) for row in conn.execute(window)}
            for endpoint_id in wanted:
                last_attempt = conn.execute(
                    select(d.attempted_at)
                    .where(d.partner_id == partner_id, d.subscription_id == endpoint_id, requested)
                    .order_by(d.attempted_at.desc())
                    .limit(1)
                ).scalar()
                last_success = conn.execute(
                    select(d.attempted_at)
                    .where(
                        d.partner_id == partner_id, d.subscription_id == endpoint_id, d.status == "delivered"
                    )
                    .order_by(d.attempted_at.desc())
                    .limit(1)
                ).scalar()
                attempts, succeeded = counts.get(endpoint_id, (0, 0))
                found[endpoint_id] = HealthRow(int(attempts), int(succeeded), last_attempt, last_success)
        return found

    # -- the delivery log ---------------------------------------------------------------------

    def deliveries(
        self,
        partner_id: str,
        *,
        first: int,
        after: DeliveryPosition | None = None,
        filters: DeliveryFilters = DeliveryFilters(),
    ) -> Page:
        """A page of ``partner_id``'s delivery log, newest first, after ``after``."""
        _check_first(first)
        statement = self.deliveries_statement(partner_id, first=first, after=after, filters=filters)
        return self._page(statement, first)

    def deliveries_statement(
        self, partner_id: str, *, first: int, after: DeliveryPosition | None, filters: DeliveryFilters
    ) -> Select[Any]:
        """The statement of :meth:`deliveries` (``first`` + 1 rows: one more tells a next page)."""
        d = DELIVERIES.c
        statement = select(DELIVERIES).where(
            d.partner_id == partner_id, *_conditions(filters, _DELIVERY_FILTERS)
        )
        if after is not None:
            statement = statement.where(
                tuple_(d.attempted_at, d.log_partition, d.log_offset)
                < tuple_(
                    literal(after.attempted_at, UtcDateTime),
                    literal(after.log_partition),
                    literal(after.log_offset),
                )
            )
        order = (d.attempted_at.desc(), d.log_partition.desc(), d.log_offset.desc())
        return statement.order_by(*order).limit(first + 1)

    def message(self, partner_id: str, webhook_id: str) -> list[dict[str, Any]]:
        """Every line of message ``webhook_id`` of ``partner_id``, oldest first (none: not this
        partner's, or no such message)."""
        d = DELIVERIES.c
        return self._rows(
            select(DELIVERIES)
            .where(d.webhook_id == webhook_id, d.partner_id == partner_id)
            .order_by(d.attempted_at, d.log_partition, d.log_offset)
            .limit(MAX_MESSAGE_ATTEMPTS)
        )

    # -- bordereaux ---------------------------------------------------------------------------

    def bordereaux(
        self,
        reinsurer_key: str,
        *,
        first: int,
        after: BordereauPosition | None = None,
        filters: BordereauFilters = BordereauFilters(),
    ) -> Page:
        """A page of the bordereaux of reinsurer ``reinsurer_key``, newest period first."""
        _check_first(first)
        b = BORDEREAUX.c
        statement = select(BORDEREAUX).where(
            b.reinsurer_key == _owner_key(reinsurer_key), *_conditions(filters, _BORDEREAU_FILTERS)
        )
        if after is not None:
            statement = statement.where(
                tuple_(b.period_id, b.report_id) < tuple_(literal(after.period_id), literal(after.report_id))
            )
        return self._page(statement.order_by(b.period_id.desc(), b.report_id.desc()).limit(first + 1), first)

    def bordereau(self, reinsurer_key: str, report_id: str) -> dict[str, Any] | None:
        """Report ``report_id`` if it is reinsurer ``reinsurer_key``'s (else None)."""
        b = BORDEREAUX.c
        rows = self._rows(
            select(BORDEREAUX).where(b.report_id == report_id, b.reinsurer_key == _owner_key(reinsurer_key))
        )
        return rows[0] if rows else None

    def bordereau_deliveries(
        self, reinsurer_key: str, report_ids: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Per report of reinsurer ``reinsurer_key`` among ``report_ids``: its delivery results in
        log order (another reinsurer's report has none)."""
        wanted = sorted(set(report_ids))
        found: dict[str, list[dict[str, Any]]] = {report_id: [] for report_id in wanted}
        if not wanted:
            return found
        r, b = BORDEREAU_DELIVERIES.c, BORDEREAUX.c
        statement = (
            select(BORDEREAU_DELIVERIES)
            .join(BORDEREAUX, b.report_id == r.report_id)
            .where(r.report_id.in_(wanted), b.reinsurer_key == _owner_key(reinsurer_key))
            .order_by(r.report_id, r.log_partition, r.log_offset)
        )
        for row in self._rows(statement):
            found[row["report_id"]].append(row)
        return found


_INT: Final = DELIVERIES.c.attempt.type

_FilterTable = tuple[tuple[str, Callable[[Any], ColumnElement[bool]]], ...]
"""Per filter field, the condition a value of it puts on the list's rows."""

_DELIVERY_FILTERS: Final[_FilterTable] = (
    ("endpoint_id", lambda endpoint_id: DELIVERIES.c.subscription_id == endpoint_id),
    ("event_type", lambda event_type: DELIVERIES.c.event_type == event_type),
    ("status", lambda status: DELIVERIES.c.status == status),
    ("since", lambda since: DELIVERIES.c.attempted_at >= literal(since, UtcDateTime)),
    ("until", lambda until: DELIVERIES.c.attempted_at < literal(until, UtcDateTime)),
)
"""The conditions of :class:`DeliveryFilters`."""

_BORDEREAU_FILTERS: Final[_FilterTable] = (
    ("treaty_number", lambda treaty_number: BORDEREAUX.c.treaty_number == treaty_number),
    ("period_id", lambda period_id: BORDEREAUX.c.period_id == period_id),
    ("report_type", lambda report_type: BORDEREAUX.c.report_type == report_type),
)
"""The conditions of :class:`BordereauFilters`."""


def _conditions(
    filters: DeliveryFilters | BordereauFilters, table: _FilterTable
) -> list[ColumnElement[bool]]:
    """The conditions of ``table`` for the fields set in ``filters`` (None: not filtered on), in
    the table's order."""
    return [condition(value) for field, condition in table if (value := getattr(filters, field)) is not None]


def _owner_key(reinsurer_key: str) -> str:
    if not reinsurer_key:
        raise ValueError("a reinsurer key is required")
    return reinsurer_key.upper()


def _check_first(first: int) -> None:
    if not 0 <= first <= MAX_PAGE_SIZE:
        raise ValueError(f"first must be between 0 and {MAX_PAGE_SIZE}")


# ------------------------------------------------------------------------------------- async


class PortalQueries:
    """:class:`StoreReads` from the event loop: each read runs on one of ``threads`` threads.

    ``codec`` makes and reads the API's cursors (:class:`CursorCodec`).  ``close()`` ends the
    threads (the store is its owner's to close).
    """

    def __init__(self, store: PortalStore, *, threads: int = 8, codec: CursorCodec | None = None) -> None:
        self.reads = StoreReads(store)
        self.codec = codec if codec is not None else CursorCodec()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="portal-query")

    @property
    def store(self) -> PortalStore:
        return self.reads.store

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    async def partner(self, partner_id: str) -> dict[str, Any] | None:
        return await self._run(self.reads.partner, partner_id)

    async def endpoint_health(
        self, partner_id: str, endpoint_ids: Sequence[str], *, since: datetime
    ) -> dict[str, HealthRow]:
        return await self._run(self.reads.endpoint_health, partner_id, list(endpoint_ids), since=since)

    async def deliveries(
        self,
        partner_id: str,
        *,
        first: int,
        after: DeliveryPosition | None = None,
        filters: DeliveryFilters = DeliveryFilters(),
    ) -> Page:
        return await self._run(self.reads.deliveries, partner_id, first=first, after=after, filters=filters)

    async def message(self, partner_id: str, webhook_id: str) -> list[dict[str, Any]]:
        return await self._run(self.reads.message, partner_id, webhook_id)

    async def bordereaux(
        self,
        reinsurer_key: str,
        *,
        first: int,
        after: BordereauPosition | None = None,
        filters: BordereauFilters = BordereauFilters(),
    ) -> Page:
        return await self._run(
            self.reads.bordereaux, reinsurer_key, first=first, after=after, filters=filters
        )

    async def bordereau(self, reinsurer_key: str, report_id: str) -> dict[str, Any] | None:
        return await self._run(self.reads.bordereau, reinsurer_key, report_id)

    async def bordereau_deliveries(
        self, reinsurer_key: str, report_ids: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        return await self._run(self.reads.bordereau_deliveries, reinsurer_key, list(report_ids))
