"""Who a request comes from: the operator (the API token) or a partner (one of its keys).

:class:`PartnerKeys` checks an offered partner key against the registry table the instance
tails (:class:`~processors.partners.store.PartnerStore`), so a decision costs a dictionary read
and one SHA-256, and a revocation or suspension made through any instance is refused here as
soon as this instance's table shows it (well under a second on a healthy cluster).  A key is
refused when:

===================  ==========================================================================
``invalid_key``      it is malformed, no key has its id, or it does not match the stored digest
                     (nothing more is said: the caller may not hold a real key)
``key_revoked``      it was revoked
``key_expired``      its ``expires_at`` has passed
``partner_suspended``  its partner's status is not ``active``
``unavailable``      the registry is not being read (its reader stopped): nothing is decided on
                     a table that may miss a revocation
===================  ==========================================================================

The reasons after ``invalid_key`` are given only to a caller that holds the real key.

The API server puts who a request comes from under :data:`CALLER` in the request;
:func:`caller_of` reads it.

When a key was last used is written to the registry topic at most once a minute per key and
instance (a use is not written when the table shows one less than a minute old, whichever
instance wrote it), in the background: a request never waits for it, and a failed write is
logged (with the key's id, never the key) and tried again on a later use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from aiohttp import web

from processors.errors import BrokerError
from processors.partners.keys import key_id_of, verify_key
from processors.partners.model import KeyUsage, RegistryEntry
from processors.partners.table import PartnerTable

__all__ = [
    "CALLER",
    "OPERATOR",
    "Caller",
    "KeyRefused",
    "PartnerAuthenticator",
    "PartnerKeys",
    "caller_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """The operator (no ``partner_id``), or a partner through one of its keys."""

    partner_id: str | None = None
    key_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.partner_id is None

    def sees(self, owner: str | None) -> bool:
        """Whether this caller may see something owned by ``owner`` (None: the operator's)."""
        return self.is_operator or owner == self.partner_id


OPERATOR: Final = Caller()

CALLER: Final = web.RequestKey("caller", Caller)
"""Where the API server puts the :class:`Caller` of every request it authenticated."""


def caller_of(request: web.Request) -> Caller:
    """Who ``request`` comes from; a route the server did not authenticate is a bug (500)."""
    caller = request.get(CALLER)
    if not isinstance(caller, Caller):
        raise RuntimeError("the request was not authenticated by the API server")
    return caller


@dataclass(frozen=True, slots=True)
class KeyRefused:
    """Why a partner key was refused: ``reason`` is a code, ``message`` a sentence."""

    reason: str
    message: str


INVALID: Final = KeyRefused("invalid_key", "the API key is not valid")
REVOKED: Final = KeyRefused("key_revoked", "the API key was revoked")
EXPIRED: Final = KeyRefused("key_expired", "the API key has expired")
SUSPENDED: Final = KeyRefused("partner_suspended", "the partner is suspended")
UNAVAILABLE: Final = KeyRefused("unavailable", "partner keys cannot be checked now; retry later")


class PartnerAuthenticator(Protocol):
    """What the API server needs to accept partner keys."""

    async def authenticate(self, key: str) -> Caller | KeyRefused: ...


class KeyStore(Protocol):
    """What :class:`PartnerKeys` needs of :class:`~processors.partners.store.PartnerStore`."""

    @property
    def table(self) -> PartnerTable: ...
    @property
    def running(self) -> bool: ...
    async def put(self, entry: RegistryEntry) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30) -> None: ...


class PartnerKeys:
    """Partner keys checked against ``store``'s table.  See the module docstring.

    ``usage_interval_s`` is how often a key's last use is written at most;
    ``unknown_catch_up_s`` how long an unknown key id waits for the table to catch up (a key
    made through another instance a moment ago); ``max_pending_writes`` bounds the usage
    writes in flight.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        usage_interval_s: float = 60.0,
        unknown_catch_up_s: float = 1.0,
        max_pending_writes: int = 100,
    ) -> None:
        self.store = store
        self.clock = clock
        self.usage_interval = timedelta(seconds=usage_interval_s)
        self.unknown_catch_up_s = unknown_catch_up_s
        self.max_pending_writes = max_pending_writes
        self._written: dict[str, datetime] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self.usage_writes = 0
        """Usage records written (or being written) by this instance."""

    async def authenticate(self, key: str) -> Caller | KeyRefused:
        """The partner holding ``key``, or why it is refused."""
        if not self.store.running:
            return UNAVAILABLE
        table = self.store.table
        key_id = key_id_of(key)
        record = table.key(key_id) if key_id is not None else None
        if record is None and key_id is not None:
            with contextlib.suppress(BrokerError):  # answered from the table as it is
                await self.store.wait_caught_up(self.unknown_catch_up_s)
            record = table.key(key_id)
        if not verify_key(key, record.digest if record is not None else None) or record is None:
            return INVALID
        now = self.clock()
        state = record.state(now)
        if state == "revoked":
            return REVOKED
        if state == "expired":
            return EXPIRED
        partner = table.partner(record.partner_id)
        if partner is None:
            return INVALID
        if not partner.active:
            return SUSPENDED
        self._note_use(record.id, now)
        return Caller(partner_id=partner.id, key_id=record.id)

    def _note_use(self, key_id: str, now: datetime) -> None:
        seen = [t for t in (self._written.get(key_id), self.store.table.last_used(key_id)) if t is not None]
        if seen and now - max(seen) < self.usage_interval:
            return
        if len(self._pending) >= self.max_pending_writes:
            return  # written on a later use
        self._written[key_id] = now
        self.usage_writes += 1
        task = asyncio.create_task(self._write_use(key_id, now), name=f"partner-key-usage-{key_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_use(self, key_id: str, now: datetime) -> None:
        try:
            await self.store.put(KeyUsage(id=key_id, last_used_at=now))
        except BrokerError as exc:
            self._written.pop(key_id, None)
            log.warning("partners: last use of key %s not stored: %s", key_id, exc)

    async def close(self) -> None:
        """Wait for the usage writes in flight (each bounded by the store's write timeout)."""
        pending = list(self._pending)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
