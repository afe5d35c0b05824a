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

The handlers parse HTTP and answer; every rule above is
:class:`~processors.webhooks.service.EndpointService`'s, shared with the partner portal's
GraphQL mutations.  Each change (refusals included) is recorded on ``integrations.audit`` as
``rest.<mutation>``; a caller's ``X-Request-Id`` (up to 128 printable characters) becomes its
``correlation_id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from processors.adapters import jsonwire
from processors.observability.audit import AuditLogger
from processors.partners.auth import Caller, caller_of
from processors.partners.catalogue import catalogue_json
from processors.partners.model import PARTNER_ID_PATTERN
from processors.partners.projection import NO_GRANTS, Grants, parse_grants
from processors.webhooks.secrets import SecretBox
from processors.webhooks.service import (
    EndpointDisabled,
    EndpointError,
    EndpointForbidden,
    EndpointLimitReached,
    EndpointNotFound,
    EndpointService,
    EndpointsUnavailable,
    EndpointUrlRefused,
    InvalidEndpoint,
    NewEndpoint,
    PartnerDirectory,
    SubscriptionWriter,
    UrlCheck,
)
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import MAX_GRACE_S, summarise_errors, valid_event_type

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

WEBHOOKS_PATH: Final = "/api/v1/webhooks"
WEBHOOK_PATH: Final = "/api/v1/webhooks/{id}"
ROTATE_PATH: Final = "/api/v1/webhooks/{id}/rotate-secret"
EVENT_TYPES_PATH: Final = "/api/v1/event-types"
DEFAULT_SUBSCRIPTIONS_TOPIC: Final = "integrations.webhook.subscriptions"
MAX_BODY_BYTES: Final = 64 * 1024


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


_PARTNER_ID: Final = re.compile(PARTNER_ID_PATTERN)


_STATUS: Final[Mapping[str, int]] = {
    EndpointNotFound.code: 404,
    InvalidEndpoint.code: 400,
    EndpointLimitReached.code: 409,
    EndpointUrlRefused.code: 422,
    EndpointForbidden.code: 403,
    EndpointDisabled.code: 409,
    EndpointsUnavailable.code: 503,
}


def _refused(exc: EndpointError) -> _Refused:
    """The HTTP answer to a refusal of the service."""
    reasons = list(exc.reasons) if isinstance(exc, InvalidEndpoint) else None
    return _Refused(_STATUS.get(exc.code, 400), exc.code, exc.message, reasons)


class WebhookRoutes:
    """The subscription routes (a route provider for ``ApiServer(extra_routes=...)``).

    The rules are :class:`~processors.webhooks.service.EndpointService`'s (:attr:`service`,
    built here from the arguments, which it documents; or given as ``service``, shared with
    the partner portal): the handlers parse HTTP and answer.  With ``owns_store`` the routes'
    ``start()``/``stop()`` start and stop the store.
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
        audit: AuditLogger | None = None,
        service: EndpointService | None = None,
    ) -> None:
        self.store = store
        self.partners = partners
        self.owns_store = owns_store
        self.service = service or EndpointService(
            store,
            box,
            url_check,
            default_grace_s=default_grace_s,
            max_subscriptions=max_subscriptions,
            catch_up_timeout_s=catch_up_timeout_s,
            clock=clock,
            partners=partners,
            max_per_partner=max_per_partner,
            audit=audit,
        )
        self._clock = clock

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
            new = NewEndpoint(
                url=body.url,
                events=body.events,
                description=body.description,
                ordered=body.ordered,
                max_concurrency=body.max_concurrency,
                rate_limit_per_s=body.rate_limit_per_s,
                active=body.active,
                partner_id=body.partner_id,
                grants=body.grants,
                secret=body.secret,
            )
            created = await self.service.create(caller, new, surface="rest", request_id=_request_id(request))
        except _Refused as refused:
            return refused.response()
        except EndpointError as exc:
            return _refused(exc).response()
        sub = created.endpoint
        document = sub.public_view(created.at)
        document["secret"] = created.secret.get_secret_value()
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
        subs = await self.service.list_endpoints(caller, event_type=event_type, partner_id=partner_id)
        now = self._clock()
        return web.json_response({"webhooks": [s.public_view(now) for s in subs], "count": len(subs)})

    async def get_subscription(self, request: web.Request) -> web.Response:
        try:
            sub = await self.service.get(caller_of(request), request.match_info["id"])
        except EndpointError as exc:
            return _refused(exc).response()
        return web.json_response(sub.public_view(self._clock()))

    async def update_subscription(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            raw = await _read_json(request, required=True)
            if isinstance(raw, dict) and "secret" in raw:
                raise _invalid([f"secret: not changed here; use POST {WEBHOOKS_PATH}/{{id}}/rotate-secret"])
            if isinstance(raw, dict) and "partner_id" in raw:
                raise _invalid(["partner_id: a subscription stays with its partner"])
            body = _parse(_PatchBody, raw)
            changes = {name: getattr(body, name) for name in body.model_fields_set}
            new = await self.service.update(
                caller, request.match_info["id"], changes, surface="rest", request_id=_request_id(request)
            )
        except _Refused as refused:
            return refused.response()
        except EndpointError as exc:
            return _refused(exc).response()
        return web.json_response(new.public_view(self._clock()))

    async def delete_subscription(self, request: web.Request) -> web.Response:
        try:
            await self.service.delete(
                caller_of(request), request.match_info["id"], surface="rest", request_id=_request_id(request)
            )
        except EndpointError as exc:
            return _refused(exc).response()
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            body = _parse(_RotateBody, await _read_json(request, required=False) or {})
            rotated = await self.service.rotate_secret(
                caller,
                request.match_info["id"],
                secret=body.secret,
                grace_s=body.grace_s,
                surface="rest",
                request_id=_request_id(request),
            )
        except _Refused as refused:
            return refused.response()
        except EndpointError as exc:
            return _refused(exc).response()
        return _no_store(
            web.json_response(
                {
                    "id": rotated.endpoint.id,
                    "secret": rotated.secret.get_secret_value(),
                    "previous_expires_at": _iso(rotated.previous_expires_at),
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


def _request_id(request: web.Request) -> str | None:
    """The caller's ``X-Request-Id`` (for the audit trail), if it gave a short printable one."""
    given = request.headers.get("X-Request-Id")
    return given if given is not None and 0 < len(given) <= 128 and given.isprintable() else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _no_store(response: web.Response) -> web.Response:
    """An answer carrying a secret must not be kept by a cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


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
