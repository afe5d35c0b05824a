"""Partner webhook subscriptions over HTTP (create, list, read, change, delete, rotate the secret).

==================================================  ==========================================
route                                               answers
==================================================  ==========================================
``POST /api/v1/webhooks``                           201 the subscription and its secret,
                                                    400, 409 (limit), 422 (URL refused), 503
``GET /api/v1/webhooks[?event_type=&partner_id=]``  200 ``{"webhooks": [...], "count": n}``, 400
``GET /api/v1/webhooks/{id}``                       200, 404
``PATCH /api/v1/webhooks/{id}``                     200, 400, 404, 422, 503
``DELETE /api/v1/webhooks/{id}``                    204, 404, 503
``POST /api/v1/webhooks/{id}/rotate-secret``        200 ``{id, secret, previous_expires_at}``,
                                                    400, 404, 503
``GET /api/v1/event-types[?partner_id=|?grants=]``   200 what a subscriber receives of each
                                                    event type (schema, example, withheld
                                                    fields), 400, 404
==================================================  ==========================================

Mounted on :class:`processors.api.server.ApiServer` through ``extra_routes``, so every route
needs a Bearer token (401 without): the API's operator token, or a partner's key
(``pk_live_...``) when the server has the partner registry (:mod:`processors.api.partners`)::

    partner_routes = PartnerRoutes.create(settings.bootstrap_servers, partners_topic)
    routes = WebhookRoutes.create(
        settings.bootstrap_servers, SecretBox.from_env(), url_check, partners=partner_routes.table
    )
    ApiServer(settings, extra_routes=[partner_routes, routes])

Ownership: every subscription belongs to a partner (``partner_id``).  A partner's key sees and
changes only that partner's subscriptions: the list leaves the others out, and any other id
answers 404 exactly as an id that does not exist (nothing confirms another partner's id); a
subscription it creates is its own.  The operator token sees and changes every subscription,
and names the partner when it creates one for a partner (400 for a partner the registry does
not have); without ``partner_id`` the subscription is the operator's, and no partner key sees
it, as subscriptions from before owners.
Without a partner registry (``partners`` None) the routes take the operator token only and
``partner_id`` is optional.

A secret appears in two answers only: the one creating the subscription and the one rotating
its secret.  Everything else shows :meth:`Subscription.public_view`; errors never echo a field's
value.  Changes are written to the subscriptions topic and answered once this instance's table
shows them (read-your-writes); a change first waits until the table holds every record written
before the request, so it starts from the latest version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from processors.adapters import jsonwire
from processors.errors import BrokerError
from processors.partners.auth import Caller, caller_of
from processors.partners.catalogue import catalogue_json
from processors.partners.model import PARTNER_ID_PATTERN, Partner
from processors.partners.projection import DATA_CLASSES, NO_GRANTS, DataClass, Grants, parse_grants
from processors.webhooks.secrets import (
    InvalidSecret,
    SecretBox,
    StoredSecret,
    generate_secret,
    validate_secret,
)
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import (
    MAX_GRACE_S,
    InvalidSubscription,
    Subscription,
    SubscriptionTable,
    loggable_url,
    new_subscription_id,
    summarise_errors,
    valid_event_type,
)

__all__ = [
    "DEFAULT_SUBSCRIPTIONS_TOPIC",
    "EVENT_TYPES_PATH",
    "ROTATE_PATH",
    "WEBHOOKS_PATH",
    "WEBHOOK_PATH",
    "PartnerDirectory",
    "SubscriptionWriter",
    "UrlCheck",
    "WebhookRoutes",
]

log = logging.getLogger(__name__)

WEBHOOKS_PATH: Final = "/api/v1/webhooks"
WEBHOOK_PATH: Final = "/api/v1/webhooks/{id}"
ROTATE_PATH: Final = "/api/v1/webhooks/{id}/rotate-secret"
EVENT_TYPES_PATH: Final = "/api/v1/event-types"
DEFAULT_SUBSCRIPTIONS_TOPIC: Final = "integrations.webhook.subscriptions"
MAX_BODY_BYTES: Final = 64 * 1024

UrlCheck = Callable[[str], Awaitable[None]]
"""Raises :class:`~processors.webhooks.ssrf.AddressRefused` when a URL may not be registered."""


class SubscriptionWriter(Protocol):
    """What the routes need of :class:`~processors.webhooks.store.SubscriptionStore`."""

    @property
    def table(self) -> SubscriptionTable: ...
    async def put(self, sub: Subscription) -> None: ...
    async def delete(self, sub_id: str) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30) -> None: ...


class PartnerDirectory(Protocol):
    """The partners a subscription may belong to (:class:`~processors.partners.table.PartnerTable`)."""

    def partner(self, partner_id: str) -> Partner | None: ...


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _CreateBody(_Body):
    partner_id: str | None = None
    url: str
    events: list[str]
    secret: SecretStr | None = None
    active: bool = True
    ordered: bool = False
    max_concurrency: int = 10
    rate_limit_per_s: float | None = None
    description: str | None = None
    grants: list[str] | None = None


class _PatchBody(_Body):
    url: str | None = None
    events: list[str] | None = None
    active: bool | None = None
    ordered: bool | None = None
    max_concurrency: int | None = None
    rate_limit_per_s: float | None = None
    description: str | None = None
    grants: list[str] | None = None


class _RotateBody(_Body):
    secret: SecretStr | None = None
    grace_s: float | None = Field(default=None, ge=0, le=MAX_GRACE_S)


_BodyT = TypeVar("_BodyT", bound=_Body)

_NULLABLE: Final = frozenset({"rate_limit_per_s", "description"})
"""PATCH fields that ``null`` clears; the others must not be null."""


class _Refused(Exception):
    def __init__(self, status: int, error: str, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.reasons = reasons

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.reasons is not None:
            body["reasons"] = self.reasons
        return web.json_response(body, status=self.status)


def _invalid(reasons: list[str]) -> _Refused:
    return _Refused(400, "invalid_request", "; ".join(reasons) or "invalid request", reasons)


_NOT_FOUND: Final = (404, "not_found", "no such webhook subscription")
_PARTNER_ID: Final = re.compile(PARTNER_ID_PATTERN)


class WebhookRoutes:
    """The subscription routes (a route provider for ``ApiServer(extra_routes=...)``).

    ``store`` is read and written; with ``owns_store`` the routes' ``start()``/``stop()``
    start and stop it.  ``box`` encrypts new secrets (associated data = the subscription id);
    ``url_check`` vets every URL registered or changed.  ``default_grace_s`` is how long a
    rotated-out secret keeps signing when the caller does not say; ``max_subscriptions``
    bounds the table and ``max_per_partner`` each partner's share of it.
    ``catch_up_timeout_s`` bounds the wait for the latest versions.  ``partners`` is the
    partner registry (see the module docstring).
    """

    partner_access: Final = True
    """The server accepts partner keys on these routes (and says who called: :func:`caller_of`)."""

    def __init__(
        self,
        store: SubscriptionWriter,
        box: SecretBox,
        url_check: UrlCheck,
        *,
        default_grace_s: int = 86_400,
        max_subscriptions: int = 10_000,
        owns_store: bool = False,
        catch_up_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        partners: PartnerDirectory | None = None,
        max_per_partner: int = 100,
    ) -> None:
        if not 0 <= default_grace_s <= MAX_GRACE_S:
            raise ValueError(f"default_grace_s must be within 0..{MAX_GRACE_S}")
        self.store = store
        self.partners = partners
        self.max_per_partner = max_per_partner
        self.box = box
        self.url_check = url_check
        self.default_grace_s = default_grace_s
        self.max_subscriptions = max_subscriptions
        self.owns_store = owns_store
        self.catch_up_timeout_s = catch_up_timeout_s
        self._clock = clock
        self._write_lock = asyncio.Lock()

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        box: SecretBox,
        url_check: UrlCheck,
        *,
        topic: str = DEFAULT_SUBSCRIPTIONS_TOPIC,
        client_overrides: Mapping[str, str] | None = None,
        default_grace_s: int = 86_400,
        max_subscriptions: int = 10_000,
        partners: PartnerDirectory | None = None,
    ) -> WebhookRoutes:
        """Routes over a store of their own on ``topic`` (started and stopped with the routes; no I/O)."""
        store = SubscriptionStore(bootstrap_servers, topic, client_overrides=client_overrides)
        return cls(
            store,
            box,
            url_check,
            default_grace_s=default_grace_s,
            max_subscriptions=max_subscriptions,
            owns_store=True,
            partners=partners,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(WEBHOOKS_PATH, self.create_subscription),
            web.get(WEBHOOKS_PATH, self.list_subscriptions, allow_head=False),
            web.get(WEBHOOK_PATH, self.get_subscription, allow_head=False),
            web.patch(WEBHOOK_PATH, self.update_subscription),
            web.delete(WEBHOOK_PATH, self.delete_subscription),
            web.post(ROTATE_PATH, self.rotate_secret),
            web.get(EVENT_TYPES_PATH, self.event_types, allow_head=False),
        ]

    async def start(self) -> None:
        start = getattr(self.store, "start", None)
        if self.owns_store and start is not None:
            await start()

    async def stop(self) -> None:
        stop = getattr(self.store, "stop", None)
        if self.owns_store and stop is not None:
            await stop()

    # ------------------------------------------------------------------------ handlers

    async def create_subscription(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            body = _parse(_CreateBody, await _read_json(request, required=True))
            owner = self._owner(caller, body.partner_id)
            grants = _grants(caller, owner, body.grants) if body.grants is not None else ()
            secret = _partner_or_new_secret(body.secret)
            sub_id = new_subscription_id()
            now = self._clock()
            ciphertext = self.box.encrypt(secret, associated=sub_id)
            sub = _build(
                id=sub_id,
                partner_id=owner,
                url=body.url,
                events=body.events,
                secrets=(StoredSecret(ciphertext=ciphertext, created_at=now),),
                active=body.active,
                ordered=body.ordered,
                max_concurrency=body.max_concurrency,
                rate_limit_per_s=body.rate_limit_per_s,
                description=body.description,
                grants=grants,
                created_at=now,
                updated_at=now,
            )
            await self._check_url(sub.url)
            async with self._write_lock:
                await self._catch_up()
                if len(self.store.table) >= self.max_subscriptions:
                    raise _Refused(
                        409, "limit_reached", f"at most {self.max_subscriptions} webhook subscriptions"
                    )
                if owner is not None and self._count_of(owner) >= self.max_per_partner:
                    raise _Refused(
                        409,
                        "limit_reached",
                        f"at most {self.max_per_partner} webhook subscriptions per partner",
                    )
                await self._put(sub)
        except _Refused as refused:
            return refused.response()
        log.info(
            "webhook subscription %s created for %s (%s), partner %s",
            sub.id,
            loggable_url(sub.url),
            ", ".join(sub.events),
            sub.partner_id or "none (operator)",
        )
        document = sub.public_view(now)
        document["secret"] = secret.get_secret_value()
        return _no_store(
            web.json_response(document, status=201, headers={"Location": f"{WEBHOOKS_PATH}/{sub.id}"})
        )

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        event_type = request.query.get("event_type")
        partner_id = request.query.get("partner_id")
        reasons = []
        if event_type is not None and not valid_event_type(event_type):
            reasons.append("event_type: must be an event type such as policy.issued")
        if partner_id is not None and not _PARTNER_ID.fullmatch(partner_id):
            reasons.append("partner_id: must be a partner id such as prt_0123456789abcdef01234567")
        if reasons:
            return _invalid(reasons).response()
        await self._catch_up_quietly()
        subs = [s for s in self.store.table.all() if caller.sees(s.partner_id)]
        if event_type is not None:
            subs = [s for s in subs if s.matches(event_type)]
        if partner_id is not None:
            subs = [s for s in subs if s.partner_id == partner_id]
        now = self._clock()
        return web.json_response({"webhooks": [s.public_view(now) for s in subs], "count": len(subs)})

    async def get_subscription(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        await self._catch_up_quietly()
        sub = self._get(sub_id, caller_of(request))
        if sub is None:
            return _Refused(*_NOT_FOUND).response()
        return web.json_response(sub.public_view(self._clock()))

    async def update_subscription(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        caller = caller_of(request)
        try:
            raw = await _read_json(request, required=True)
            if isinstance(raw, dict) and "secret" in raw:
                raise _invalid([f"secret: not changed here; use POST {WEBHOOKS_PATH}/{{id}}/rotate-secret"])
            if isinstance(raw, dict) and "partner_id" in raw:
                raise _invalid(["partner_id: a subscription stays with its partner"])
            body = _parse(_PatchBody, raw)
            changes = {name: getattr(body, name) for name in body.model_fields_set}
            nulls = sorted(name for name, value in changes.items() if value is None and name not in _NULLABLE)
            if nulls:
                raise _invalid([f"{name}: must not be null" for name in nulls])
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(sub_id, caller)
                if sub is None:
                    raise _Refused(*_NOT_FOUND)
                if "grants" in changes:
                    changes["grants"] = _grants(caller, sub.partner_id, changes["grants"])
                changes = {k: v for k, v in changes.items() if _differs(getattr(sub, k), v)}
                if not changes:
                    return web.json_response(sub.public_view(self._clock()))
                try:
                    new = sub.updated(now=self._clock(), **changes)
                except InvalidSubscription as exc:
                    raise _invalid(list(exc.reasons)) from exc
                if "url" in changes:
                    await self._check_url(new.url)
                await self._put(new)
        except _Refused as refused:
            return refused.response()
        log.info("webhook subscription %s changed (%s)", new.id, ", ".join(sorted(changes)))
        return web.json_response(new.public_view(self._clock()))

    async def delete_subscription(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        caller = caller_of(request)
        try:
            async with self._write_lock:
                await self._catch_up()
                if self._get(sub_id, caller) is None:
                    raise _Refused(*_NOT_FOUND)
                try:
                    await self.store.delete(sub_id)
                except BrokerError as exc:
                    raise _unavailable(sub_id, exc) from exc
        except _Refused as refused:
            return refused.response()
        log.info("webhook subscription %s deleted", sub_id)
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        caller = caller_of(request)
        try:
            body = _parse(_RotateBody, await _read_json(request, required=False) or {})
            secret = _partner_or_new_secret(body.secret)
            grace_s = self.default_grace_s if body.grace_s is None else body.grace_s
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(sub_id, caller)
                if sub is None:
                    raise _Refused(*_NOT_FOUND)
                now = self._clock()
                ciphertext = self.box.encrypt(secret, associated=sub.id)
                previous_expires_at = now + timedelta(seconds=grace_s)
                current = sub.secrets[0].expires_at
                if current is not None and current < previous_expires_at:
                    previous_expires_at = current
                try:
                    new = sub.rotated(ciphertext, now=now, grace_s=grace_s)
                except InvalidSubscription as exc:
                    raise _invalid(list(exc.reasons)) from exc
                await self._put(new)
        except _Refused as refused:
            return refused.response()
        log.info("webhook subscription %s: secret rotated (previous signs for %g s)", sub_id, grace_s)
        return _no_store(
            web.json_response(
                {
                    "id": new.id,
                    "secret": secret.get_secret_value(),
                    "previous_expires_at": _iso(previous_expires_at),
                }
            )
        )

    async def event_types(self, request: web.Request) -> web.Response:
        """What a subscriber receives of every event type: with a partner key, what that
        partner receives (its grants); with the operator token, what the partner
        ``partner_id`` receives, or a subscriber granted ``grants`` (comma-separated), or by
        default a subscriber granted nothing."""
        try:
            grants = self._catalogue_grants(caller_of(request), request.query)
        except _Refused as refused:
            return refused.response()
        return web.Response(body=catalogue_json(grants), content_type="application/json")

    # ------------------------------------------------------------------------ helpers

    def _catalogue_grants(self, caller: Caller, query: Mapping[str, str]) -> Grants:
        partner_id = query.get("partner_id")
        given = query.get("grants")
        if not caller.is_operator:
            if partner_id is not None or given is not None:
                raise _invalid(["query: a partner key sees what its own partner receives; no parameters"])
            partner = self.partners.partner(caller.partner_id or "") if self.partners is not None else None
            return frozenset(partner.grants) if partner is not None else NO_GRANTS
        if partner_id is not None and given is not None:
            raise _invalid(["query: give partner_id or grants, not both"])
        if partner_id is not None:
            if not _PARTNER_ID.fullmatch(partner_id):
                raise _invalid(["partner_id: must be a partner id such as prt_0123456789abcdef01234567"])
            partner = self.partners.partner(partner_id) if self.partners is not None else None
            if partner is None:
                raise _Refused(404, "not_found", "no such partner")
            return frozenset(partner.grants)
        if given:
            try:
                return parse_grants(part.strip() for part in given.split(",") if part.strip())
            except ValueError as exc:
                raise _invalid([f"grants: {exc}"]) from exc
        return NO_GRANTS

    def _get(self, sub_id: str, caller: Caller) -> Subscription | None:
        """The subscription, if ``caller`` may see it (another partner's is as if absent)."""
        sub = self.store.table.get(sub_id)
        if sub is None or not caller.sees(sub.partner_id):
            return None
        return sub

    def _owner(self, caller: Caller, given: str | None) -> str | None:
        """Who a new subscription belongs to: the calling partner, or the one the operator names."""
        if not caller.is_operator:
            if given is not None and given != caller.partner_id:
                raise _invalid(["partner_id: leave it out or give your own; your key names your partner"])
            return caller.partner_id
        if self.partners is None or given is None:
            # no registry, or the operator keeps it: an operator-owned subscription (no partner
            # key sees it), like those from before subscriptions had owners
            return given
        if not _PARTNER_ID.fullmatch(given) or self.partners.partner(given) is None:
            raise _invalid(["partner_id: no such partner"])
        return given

    def _count_of(self, partner_id: str) -> int:
        return sum(1 for s in self.store.table.all() if s.partner_id == partner_id)

    async def _check_url(self, url: str) -> None:
        try:
            await self.url_check(url)
        except AddressRefused as exc:
            log.info("webhook URL refused for %s: %s", loggable_url(url), exc.reason)
            raise _Refused(422, "url_refused", exc.reason) from exc

    async def _catch_up(self) -> None:
        try:
            await self.store.wait_caught_up(self.catch_up_timeout_s)
        except BrokerError as exc:
            log.warning("webhook subscriptions not caught up: %s", exc)
            raise _Refused(503, "unavailable", "the subscriptions could not be read; retry later") from exc

    async def _catch_up_quietly(self) -> None:
        """Reads answer from the local table even when it could not catch up."""
        try:
            await self.store.wait_caught_up(self.catch_up_timeout_s)
        except BrokerError as exc:
            log.warning("webhook subscriptions not caught up; answering from the local table: %s", exc)

    async def _put(self, sub: Subscription) -> None:
        try:
            await self.store.put(sub)
        except BrokerError as exc:
            raise _unavailable(sub.id, exc) from exc


def _unavailable(sub_id: str, exc: BrokerError) -> _Refused:
    log.error("webhook subscription %s: not stored: %s", sub_id, exc)
    return _Refused(503, "unavailable", "the change could not be stored; retry later")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _no_store(response: web.Response) -> web.Response:
    """An answer carrying a secret must not be kept by a cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _differs(current: Any, wanted: Any) -> bool:
    if isinstance(current, tuple) and isinstance(wanted, list):
        return current != tuple(dict.fromkeys(wanted))
    return bool(current != wanted)


def _grants(caller: Caller, owner: str | None, given: list[str]) -> tuple[DataClass, ...]:
    """The grants an operator sets on its own subscription (documented order, each once).

    A partner key may not set any (403: grants are the insurer's decision, not the partner's),
    and a partner's subscription takes its partner's grants (400).
    """
    if not caller.is_operator:
        raise _Refused(
            403, "operator_only", "grants are set by the insurer's operators, not with a partner key"
        )
    if owner is not None:
        raise _invalid(
            [
                "grants: a partner's subscriptions receive the partner's grants; "
                "set them on the partner (PATCH /api/v1/partners/{id})"
            ]
        )
    try:
        granted = parse_grants(given)
    except ValueError as exc:
        raise _invalid([f"grants: {exc}"]) from exc
    return tuple(c for c in DATA_CLASSES if c in granted)


def _partner_or_new_secret(given: SecretStr | None) -> SecretStr:
    if given is None:
        return generate_secret()
    try:
        validate_secret(given.get_secret_value())
    except InvalidSecret as exc:
        raise _invalid([f"secret: {exc.reason}"]) from exc
    return given


def _build(**fields: Any) -> Subscription:
    try:
        return Subscription.create(**fields)
    except InvalidSubscription as exc:
        raise _invalid(list(exc.reasons)) from exc


def _parse(model: type[_BodyT], raw: Any) -> _BodyT:
    try:
        return model.model_validate_json(json.dumps(raw))
    except ValidationError as exc:
        raise _invalid(summarise_errors(exc)) from exc


async def _read_json(request: web.Request, *, required: bool) -> Any:
    """The body as JSON (None when empty and not ``required``); 400 otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _invalid([f"body: exceeds {MAX_BODY_BYTES} bytes"])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(MAX_BODY_BYTES):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _invalid([f"body: exceeds {MAX_BODY_BYTES} bytes"])
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise _invalid(["body: a JSON object is required"])
        return None
    try:
        document = jsonwire.loads_strict(raw, decimals=False)
    except jsonwire.JsonRejected as exc:
        raise _invalid(["body: not valid JSON"]) from exc
    if not isinstance(document, dict):
        raise _invalid(["body: must be a JSON object"])
    return document
