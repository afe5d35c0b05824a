"""The partner registry over HTTP, for operators (the API token only; partner keys are refused).

==================================================  ==========================================
route                                               answers
==================================================  ==========================================
``POST /api/v1/partners``                           201 the partner, 400, 409, 503
``GET /api/v1/partners[?kind=&status=]``            200 ``{"partners": [...], "count": n}``, 400
``GET /api/v1/partners/{id}``                       200, 404
``PATCH /api/v1/partners/{id}``                     200, 400, 404, 409, 503
``POST /api/v1/partners/{id}/keys``                 201 the key's view and ``key`` (the only
                                                    time it is shown), 400, 404, 409, 503
``GET /api/v1/partners/{id}/keys``                  200 ``{"keys": [...], "count": n}``, 404
``DELETE /api/v1/partners/{id}/keys/{key_id}``      204 (revoked), 404, 503
==================================================  ==========================================

A partner's ``grants`` (the classes of personal data its webhook deliveries may carry, see
:mod:`processors.partners.projection`) are set on create and PATCH, here only: a partner key
is refused on these routes, so no partner can grant itself anything.

Mounted on :class:`processors.api.server.ApiServer` through ``extra_routes``; these routes
are also the provider of :attr:`PartnerRoutes.partner_keys`, with which the server accepts
partner keys on the routes that take them (the webhook subscription routes)::

    routes = PartnerRoutes.create(settings.bootstrap_servers, topic)
    ApiServer(settings, extra_routes=[routes, WebhookRoutes(..., partners=routes.table)])
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Final, TypeVar

from aiohttp import web
from pydantic import Field

from processors.api.webhooks import _Body, _invalid, _no_store, _parse, _read_json, _Refused
from processors.errors import BrokerError
from processors.partners.auth import PartnerKeys
from processors.partners.model import (
    KINDS,
    STATUSES,
    InvalidPartner,
    PartnerConflict,
    PartnerError,
    PartnerNotFound,
)
from processors.partners.registry import LimitReached, PartnerRegistry
from processors.partners.store import PARTNERS_TOPIC, PartnerStore
from processors.partners.table import PartnerTable
from processors.utc import UtcDatetime

__all__ = ["KEYS_PATH", "KEY_PATH", "PARTNERS_PATH", "PARTNER_PATH", "PartnerRoutes"]

log = logging.getLogger(__name__)

PARTNERS_PATH: Final = "/api/v1/partners"
PARTNER_PATH: Final = "/api/v1/partners/{id}"
KEYS_PATH: Final = "/api/v1/partners/{id}/keys"
KEY_PATH: Final = "/api/v1/partners/{id}/keys/{key_id}"


class _CreatePartner(_Body):
    name: str
    kind: str
    status: str = "active"
    reinsurer_code: str | None = None
    distributor_code: str | None = None
    grants: list[str] = Field(default_factory=list)


class _PatchPartner(_Body):
    name: str | None = None
    status: str | None = None
    reinsurer_code: str | None = None
    distributor_code: str | None = None
    grants: list[str] | None = None


class _CreateKey(_Body):
    name: str | None = None
    expires_at: UtcDatetime | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


_NULLABLE: Final = frozenset({"reinsurer_code", "distributor_code"})
"""PATCH fields that ``null`` clears; the others must not be null."""

_T = TypeVar("_T")


class PartnerRoutes:
    """The operator routes of the partner registry (a route provider for ``ApiServer``).

    ``registry`` does the work; with ``owns_store`` the routes' ``start()``/``stop()`` start
    and stop its store.  ``partner_keys`` (checking keys against the same table) is what the
    server accepts partner keys with; without it, it accepts none.
    """

    partner_access: Final = False
    """Operator routes: a partner key is refused here."""

    def __init__(
        self,
        registry: PartnerRegistry,
        *,
        partner_keys: PartnerKeys | None = None,
        owns_store: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.registry = registry
        self.owns_store = owns_store
        self.partner_keys = partner_keys
        self._clock = clock or registry.clock

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        topic: str = PARTNERS_TOPIC,
        *,
        client_overrides: Mapping[str, str] | None = None,
    ) -> PartnerRoutes:
        """Routes over a store of their own on ``topic`` (started and stopped with the routes; no I/O)."""
        store = PartnerStore(bootstrap_servers, topic, client_overrides=client_overrides)
        return cls(PartnerRegistry(store), partner_keys=PartnerKeys(store), owns_store=True)

    @property
    def table(self) -> PartnerTable:
        return self.registry.table

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PARTNERS_PATH, self.create_partner),
            web.get(PARTNERS_PATH, self.list_partners, allow_head=False),
            web.get(PARTNER_PATH, self.get_partner, allow_head=False),
            web.patch(PARTNER_PATH, self.update_partner),
            web.post(KEYS_PATH, self.create_key),
            web.get(KEYS_PATH, self.list_keys, allow_head=False),
            web.delete(KEY_PATH, self.revoke_key),
        ]

    async def start(self) -> None:
        start = getattr(self.registry.store, "start", None)
        if self.owns_store and start is not None:
            await start()

    async def stop(self) -> None:
        if self.partner_keys is not None:
            await self.partner_keys.close()
        stop = getattr(self.registry.store, "stop", None)
        if self.owns_store and stop is not None:
            await stop()

    # ------------------------------------------------------------------------ handlers

    async def create_partner(self, request: web.Request) -> web.Response:
        try:
            body = _parse(_CreatePartner, await _read_json(request, required=True))
            partner = await self._do(
                self.registry.create_partner(
                    name=body.name,
                    kind=body.kind,
                    status=body.status,
                    reinsurer_code=body.reinsurer_code,
                    distributor_code=body.distributor_code,
                    grants=body.grants,
                )
            )
        except _Refused as refused:
            return refused.response()
        return web.json_response(
            partner.public_view(), status=201, headers={"Location": f"{PARTNERS_PATH}/{partner.id}"}
        )

    async def list_partners(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        status = request.query.get("status")
        reasons = []
        if kind is not None and kind not in KINDS:
            reasons.append(f"kind: must be one of {', '.join(KINDS)}")
        if status is not None and status not in STATUSES:
            reasons.append(f"status: must be one of {', '.join(STATUSES)}")
        if reasons:
            return _invalid(reasons).response()
        await self._catch_up_quietly()
        partners = self.registry.partners(kind=kind, status=status)
        return web.json_response({"partners": [p.public_view() for p in partners], "count": len(partners)})

    async def get_partner(self, request: web.Request) -> web.Response:
        await self._catch_up_quietly()
        try:
            partner = self._read(lambda: self.registry.partner(request.match_info["id"]))
        except _Refused as refused:
            return refused.response()
        return web.json_response(partner.public_view())

    async def update_partner(self, request: web.Request) -> web.Response:
        try:
            raw = await _read_json(request, required=True)
            if isinstance(raw, dict) and "kind" in raw:
                raise _invalid(["kind: cannot be changed; create a new partner"])
            body = _parse(_PatchPartner, raw)
            changes = {name: getattr(body, name) for name in body.model_fields_set}
            nulls = sorted(name for name, value in changes.items() if value is None and name not in _NULLABLE)
            if nulls:
                raise _invalid([f"{name}: must not be null" for name in nulls])
            partner = await self._do(self.registry.update_partner(request.match_info["id"], **changes))
        except _Refused as refused:
            return refused.response()
        return web.json_response(partner.public_view())

    async def create_key(self, request: web.Request) -> web.Response:
        try:
            body = _parse(_CreateKey, await _read_json(request, required=False) or {})
            if body.expires_at is not None and body.expires_in_days is not None:
                raise _invalid(["expires_at: give expires_at or expires_in_days, not both"])
            expires_at = body.expires_at
            if body.expires_in_days is not None:
                expires_at = self._clock() + timedelta(days=body.expires_in_days)
            created = await self._do(
                self.registry.create_key(request.match_info["id"], name=body.name, expires_at=expires_at)
            )
        except _Refused as refused:
            return refused.response()
        document = created.document(self._clock())
        location = f"{PARTNERS_PATH}/{created.record.partner_id}/keys/{created.record.id}"
        return _no_store(web.json_response(document, status=201, headers={"Location": location}))

    async def list_keys(self, request: web.Request) -> web.Response:
        await self._catch_up_quietly()
        partner_id = request.match_info["id"]
        try:
            keys = self._read(lambda: self.registry.keys(partner_id))
        except _Refused as refused:
            return refused.response()
        now = self._clock()
        table = self.registry.table
        views = [k.public_view(now, table.last_used(k.id)) for k in keys]
        return web.json_response({"keys": views, "count": len(views)})

    async def revoke_key(self, request: web.Request) -> web.Response:
        try:
            await self._do(self.registry.revoke_key(request.match_info["id"], request.match_info["key_id"]))
        except _Refused as refused:
            return refused.response()
        return web.Response(status=204)

    # ------------------------------------------------------------------------ helpers

    async def _do(self, operation: Awaitable[_T]) -> _T:
        """Await a registry change; its errors become answers."""
        try:
            return await operation
        except PartnerError as exc:
            raise _refusal(exc) from exc
        except BrokerError as exc:
            log.error("partner registry change not stored: %s", exc)
            raise _Refused(503, "unavailable", "the change could not be stored; retry later") from exc

    @staticmethod
    def _read(read: Callable[[], _T]) -> _T:
        try:
            return read()
        except PartnerError as exc:
            raise _refusal(exc) from exc

    async def _catch_up_quietly(self) -> None:
        """Reads answer from the local table even when it could not catch up."""
        try:
            await self.registry.catch_up()
        except BrokerError as exc:
            log.warning("partner registry not caught up; answering from the local table: %s", exc)


def _refusal(exc: PartnerError) -> _Refused:
    if isinstance(exc, InvalidPartner):
        return _invalid(list(exc.reasons))
    if isinstance(exc, PartnerNotFound):
        return _Refused(404, "not_found", str(exc))
    if isinstance(exc, LimitReached):
        return _Refused(409, "limit_reached", str(exc))
    if isinstance(exc, PartnerConflict):
        return _Refused(409, "conflict", str(exc))
    return _Refused(400, "invalid_request", str(exc))
