"""What operators do with partners and keys: the operator API and the CLI both call this.

Every change first waits until the table holds every record written before it (so it starts
from the latest versions and sees the codes other partners hold), then writes one record and
returns once the table shows it.  Changes made through one registry are serialised; two
instances changing the same partner at the same moment both write, and the later record wins
(the same rule as the webhook subscriptions).

Errors: :class:`~processors.partners.model.InvalidPartner` (the reasons say which field and
rule), :class:`~processors.partners.model.PartnerNotFound`,
:class:`~processors.partners.model.PartnerConflict` (a code another partner has),
:class:`LimitReached`, and :class:`~processors.errors.BrokerError` when the topic cannot be
read up to date or a write is not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from processors.partners.keys import KEY_PREFIX, IssuedKey, generate_key
from processors.partners.model import (
    ACTIVE,
    MAX_ACTIVE_KEYS,
    ApiKey,
    InvalidPartner,
    Partner,
    PartnerConflict,
    PartnerError,
    PartnerNotFound,
    RegistryEntry,
)
from processors.partners.projection import DATA_CLASSES
from processors.partners.table import PartnerTable

__all__ = ["CreatedKey", "LimitReached", "PartnerRegistry", "RegistryStore"]

log = logging.getLogger(__name__)

_ID_ATTEMPTS: Final = 5


class LimitReached(PartnerError):
    """A bound of the registry (partners, a partner's active keys) is reached."""


class RegistryStore(Protocol):
    """What the registry needs of :class:`~processors.partners.store.PartnerStore`."""

    @property
    def table(self) -> PartnerTable: ...
    async def put(self, entry: RegistryEntry) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30) -> None: ...


@dataclass(frozen=True)
class CreatedKey:
    """A key just stored: its record, and the key itself (to show once, then forget)."""

    record: ApiKey
    issued: IssuedKey

    def document(self, now: datetime) -> dict[str, Any]:
        """The one answer that carries the key."""
        return {**self.record.public_view(now), "key": self.issued.key.get_secret_value()}


class PartnerRegistry:
    """Partners and keys on ``store``.  See the module docstring.

    ``catch_up_timeout_s`` bounds the wait for the latest records before a change;
    ``max_partners`` and ``max_active_keys`` bound the registry.
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        catch_up_timeout_s: float = 5.0,
        max_partners: int = 10_000,
        max_active_keys: int = MAX_ACTIVE_KEYS,
    ) -> None:
        self.store = store
        self.catch_up_timeout_s = catch_up_timeout_s
        self.max_partners = max_partners
        self.max_active_keys = max_active_keys
        self.clock = clock
        self._lock = asyncio.Lock()

    @property
    def table(self) -> PartnerTable:
        return self.store.table

    async def catch_up(self) -> None:
        """Wait until the table holds every record written before the call (BrokerError if not)."""
        await self.store.wait_caught_up(self.catch_up_timeout_s)

    # -- reads -------------------------------------------------------------------------------

    def partner(self, partner_id: str) -> Partner:
        partner = self.table.partner(partner_id)
        if partner is None:
            raise PartnerNotFound("no such partner")
        return partner

    def partners(self, *, kind: str | None = None, status: str | None = None) -> list[Partner]:
        return [
            p
            for p in self.table.partners()
            if (kind is None or p.kind == kind) and (status is None or p.status == status)
        ]

    def keys(self, partner_id: str) -> list[ApiKey]:
        self.partner(partner_id)
        return self.table.keys_of(partner_id)

    def key(self, partner_id: str, key_id: str) -> ApiKey:
        """The key ``key_id`` (its id or its ``pk_live_`` prefix) of the partner."""
        wanted = key_id[len(KEY_PREFIX) :] if key_id.startswith(KEY_PREFIX) else key_id
        key = self.table.key(wanted)
        if key is None or key.partner_id != partner_id:
            raise PartnerNotFound("no such key for this partner")
        return key

    # -- changes -----------------------------------------------------------------------------

    async def create_partner(
        self,
        *,
        name: str,
        kind: str,
        status: str = ACTIVE,
        reinsurer_code: str | None = None,
        distributor_code: str | None = None,
        grants: Sequence[str] = (),
    ) -> Partner:
        now = self.clock()
        partner = Partner.create(
            name=name,
            kind=kind,
            status=status,
            reinsurer_code=reinsurer_code,
            distributor_code=distributor_code,
            grants=list(grants),
            created_at=now,
            updated_at=now,
        )
        async with self._lock:
            await self.catch_up()
            if len(self.table) >= self.max_partners:
                raise LimitReached(f"at most {self.max_partners} partners")
            self._check_codes(partner)
            await self.store.put(partner)
        log.info(
            "partner %s created (%s, %s, grants: %s)",
            partner.id,
            partner.kind,
            partner.status,
            ", ".join(partner.grants) or "none",
        )
        return partner

    async def update_partner(self, partner_id: str, **changes: Any) -> Partner:
        """A new version of the partner with ``changes`` (name, status, codes, grants); the
        same partner when nothing differs.  ``grants`` replaces the partner's grants."""
        async with self._lock:
            await self.catch_up()
            partner = self.partner(partner_id)
            if "grants" in changes:
                changes["grants"] = _grant_set(changes["grants"])
            changes = {k: v for k, v in changes.items() if getattr(partner, k, object()) != v}
            if not changes:
                return partner
            try:
                new = partner.updated(now=self.clock(), **changes)
            except TypeError as exc:
                raise InvalidPartner([str(exc)]) from exc
            self._check_codes(new)
            await self.store.put(new)
        if "grants" in changes:
            log.info("partner %s: grants now %s", new.id, ", ".join(new.grants) or "none")
        log.info("partner %s changed (%s)", new.id, ", ".join(sorted(changes)))
        return new

    async def create_key(
        self, partner_id: str, *, name: str | None = None, expires_at: datetime | None = None
    ) -> CreatedKey:
        """A new key for the partner (also when it is suspended: the key works once it is
        active again).  The key is in the answer only."""
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise InvalidPartner(["expires_at: must be in the future"])
        async with self._lock:
            await self.catch_up()
            self.partner(partner_id)
            active = [k for k in self.table.keys_of(partner_id) if k.state(now) == "active"]
            if len(active) >= self.max_active_keys:
                raise LimitReached(
                    f"at most {self.max_active_keys} active keys per partner; revoke one first"
                )
            issued = self._unused_key()
            record = ApiKey.create(
                id=issued.key_id,
                partner_id=partner_id,
                name=name,
                digest=issued.digest,
                created_at=now,
                expires_at=expires_at,
            )
            await self.store.put(record)
        log.info("partner %s: key %s created", partner_id, record.prefix)
        return CreatedKey(record, issued)

    async def revoke_key(self, partner_id: str, key_id: str) -> ApiKey:
        """Revoke a key (at once, on every instance once their tables show it); revoking a
        revoked key changes nothing."""
        async with self._lock:
            await self.catch_up()
            self.partner(partner_id)
            key = self.key(partner_id, key_id)
            if key.revoked_at is not None:
                return key
            revoked = key.revoked(self.clock())
            await self.store.put(revoked)
        log.info("partner %s: key %s revoked", partner_id, revoked.prefix)
        return revoked

    # -- helpers -----------------------------------------------------------------------------

    def _unused_key(self) -> IssuedKey:
        for _ in range(_ID_ATTEMPTS):
            issued = generate_key()
            if self.table.key(issued.key_id) is None:
                return issued
        raise PartnerConflict("no unused key id found; try again")

    def _check_codes(self, partner: Partner) -> None:
        for field in ("reinsurer_code", "distributor_code"):
            code = getattr(partner, field)
            if code is None:
                continue
            for other in self.table.partners():
                theirs = getattr(other, field)
                if other.id != partner.id and theirs is not None and theirs.casefold() == code.casefold():
                    raise PartnerConflict(f"{field}: partner {other.id} has this code already")


def _grant_set(grants: Sequence[str] | None) -> tuple[str, ...]:
    """Grants as the partner holds them (documented order, each once), so an unchanged set
    is no change; an unknown class is refused."""
    given = set(grants or ())
    unknown = given - set(DATA_CLASSES)
    if unknown:
        raise InvalidPartner([f"grants: each must be one of {', '.join(DATA_CLASSES)}"])
    return tuple(c for c in DATA_CLASSES if c in given)
