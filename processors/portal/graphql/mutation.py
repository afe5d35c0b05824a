"""``Mutation``: a partner changes its own endpoints, sends test events and redelivers.

Every field parses its arguments and calls the process's services, which hold the rules (the
same ones the REST API applies) and record each call on ``integrations.audit`` as
``portal.<field>`` (:mod:`processors.webhooks.service`):

* ``createEndpoint`` → ``services.endpoints.create``: the endpoint and its secret, shown this
  once;
* ``updateEndpoint`` → ``services.endpoints.update``: fields left out stay as they are, ``null``
  clears ``description`` and ``rateLimitPerS`` (and is refused for the others);
* ``disableEndpoint``, ``enableEndpoint`` → ``services.endpoints.disable`` / ``enable``;
* ``rotateSecret`` → ``services.endpoints.rotate_secret``: the new secret, shown once;
* ``sendTestEvent``, ``redeliver``, ``recover`` → ``services.deliveries.send_test_event`` /
  ``redeliver`` / ``recover``: the test event's ids, what was queued again.

Each answer reflects the change (the service returns once the subscriptions table shows it).
Errors carry ``extensions.code`` (:mod:`processors.portal.graphql.errors`) and, but for
``NOT_FOUND``, ``extensions.reason`` (the service's finer code):

* ``NOT_FOUND`` — no such endpoint (or message) for this partner: another partner's id is
  answered exactly like an id that does not exist;
* ``BAD_USER_INPUT`` — ``extensions.reasons`` lists ``"field: what is wrong"`` with the
  schema's field names, never a value (``reason`` ``invalid_request``; ``url_refused`` when the
  URL may not be registered);
* ``FORBIDDEN`` — a rule forbids it: the partner's endpoint limit (``limit_reached``), a
  test or redelivery to an endpoint that is disabled (``endpoint_disabled``: enable it first);
* ``UNAVAILABLE`` — the broker did not answer; nothing was changed or the change is unknown
  to this answer: try again.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, TypeVar

import strawberry

from processors.portal.graphql.errors import BadUserInput, Forbidden, NotFound, PortalError, Unavailable
from processors.portal.graphql.types import (
    CreateEndpointInput,
    Endpoint,
    EndpointWithSecret,
    Info,
    Redelivery,
    SecretRotation,
    TestEvent,
    UpdateEndpointInput,
)
from processors.webhooks.service import (
    DeliveryService,
    EndpointError,
    EndpointNotFound,
    EndpointService,
    EndpointsUnavailable,
    EndpointUrlRefused,
    InvalidEndpoint,
    NewEndpoint,
    Redelivered,
)

__all__ = ["Mutation", "portal_error"]

_T = TypeVar("_T")

_GRAPHQL_NAMES: Final = {
    "max_concurrency": "maxConcurrency",
    "rate_limit_per_s": "rateLimitPerS",
    "grace_s": "graceSeconds",
    "disabled_reason": "reason",
}
"""The service's field names that the schema spells differently."""

_UPDATE_FIELDS: Final = {
    "url": "url",
    "events": "events",
    "description": "description",
    "ordered": "ordered",
    "max_concurrency": "max_concurrency",
    "rate_limit_per_s": "rate_limit_per_s",
}
"""``UpdateEndpointInput``'s attributes → the service's field names."""

_FIELD: Final = re.compile(r"^([a-z_]+)(?=[.:])")
_QUOTED: Final = re.compile(r" ?'[^']*'")
"""A value the model's reason quotes (an event filter): left out here."""


def _graphql_reason(reason: str) -> str:
    """``"max_concurrency: ..."`` → ``"maxConcurrency: ..."`` (the schema's names), without the
    values the reason quotes (``"events.0: unknown event type (known: ...)"``)."""
    named = _FIELD.sub(lambda m: _GRAPHQL_NAMES.get(m.group(1), m.group(1)), reason, count=1)
    return _QUOTED.sub("", named)


def portal_error(exc: EndpointError) -> PortalError:
    """The GraphQL error of a refusal of the service (see the module docstring)."""
    if isinstance(exc, EndpointNotFound):
        return NotFound(exc.message)
    if isinstance(exc, InvalidEndpoint):
        reasons = [_graphql_reason(r) for r in exc.reasons]
        return BadUserInput(
            "; ".join(reasons) or "invalid input", extensions={"reason": exc.code, "reasons": reasons}
        )
    if isinstance(exc, EndpointUrlRefused):
        reasons = [f"url: {exc.message}"]
        return BadUserInput(reasons[0], extensions={"reason": exc.code, "reasons": reasons})
    if isinstance(exc, EndpointsUnavailable):
        return Unavailable(exc.message)
    return Forbidden(exc.message, extensions={"reason": exc.code})


async def _answer(call: Callable[[], Awaitable[_T]]) -> _T:
    try:
        return await call()
    except EndpointError as exc:
        raise portal_error(exc) from exc


def _endpoints(info: Info) -> EndpointService:
    service = info.context.services.endpoints
    if not isinstance(service, EndpointService):
        raise Unavailable("endpoints cannot be changed on this server now")
    return service


def _deliveries(info: Info) -> DeliveryService:
    service = info.context.services.deliveries
    if not isinstance(service, DeliveryService):
        raise Unavailable("deliveries cannot be sent from this server now")
    return service


def _given(value: Any) -> bool:
    return value is not strawberry.UNSET


def _redelivery(done: Redelivered) -> Redelivery:
    return Redelivery(
        queued=done.queued, webhook_ids=[strawberry.ID(w) for w in done.webhook_ids], caught_up=done.caught_up
    )


async def _create_endpoint(
    info: Info,
    input: CreateEndpointInput,
) -> EndpointWithSecret:
    context = info.context
    new = NewEndpoint(
        url=input.url,
        events=list(input.events),
        description=input.description if _given(input.description) else None,
        ordered=bool(input.ordered),
        max_concurrency=10 if input.max_concurrency is None else input.max_concurrency,
        rate_limit_per_s=input.rate_limit_per_s if _given(input.rate_limit_per_s) else None,
    )
    created = await _answer(
        lambda: _endpoints(info).create(context.caller, new, surface="portal", request_id=context.request_id)
    )
    return EndpointWithSecret(
        endpoint=Endpoint.of(created.endpoint, created.at), secret=created.secret.get_secret_value()
    )


async def _update_endpoint(
    info: Info,
    id: strawberry.ID,
    input: UpdateEndpointInput,
) -> Endpoint:
    context = info.context
    changes = {
        name: getattr(input, attribute)
        for attribute, name in _UPDATE_FIELDS.items()
        if _given(getattr(input, attribute))
    }
    if isinstance(changes.get("events"), list):
        changes["events"] = list(changes["events"])
    sub = await _answer(
        lambda: _endpoints(info).update(
            context.caller, str(id), changes, surface="portal", request_id=context.request_id
        )
    )
    return Endpoint.of(sub)


async def _disable_endpoint(
    info: Info,
    id: strawberry.ID,
    reason: str | None = strawberry.UNSET,
) -> Endpoint:
    context = info.context
    given = reason if _given(reason) else None
    sub = await _answer(
        lambda: _endpoints(info).disable(
            context.caller, str(id), given, surface="portal", request_id=context.request_id
        )
    )
    return Endpoint.of(sub)


async def _enable_endpoint(
    info: Info,
    id: strawberry.ID,
) -> Endpoint:
    context = info.context
    sub = await _answer(
        lambda: _endpoints(info).enable(
            context.caller, str(id), surface="portal", request_id=context.request_id
        )
    )
    return Endpoint.of(sub)


async def _rotate_secret(
    info: Info,
    id: strawberry.ID,
    grace_seconds: int | None = 86400,
) -> SecretRotation:
    context = info.context
    grace = 86400 if grace_seconds is None else grace_seconds
    rotated = await _answer(
        lambda: _endpoints(info).rotate_secret(
            context.caller, str(id), grace_s=grace, surface="portal", request_id=context.request_id
        )
    )
    return SecretRotation(
        endpoint=Endpoint.of(rotated.endpoint, rotated.at),
        secret=rotated.secret.get_secret_value(),
        previous_expires_at=rotated.previous_expires_at,
    )


async def _send_test_event(info: Info, endpoint_id: strawberry.ID) -> TestEvent:
    context = info.context
    sent = await _answer(
        lambda: _deliveries(info).send_test_event(
            context.caller, str(endpoint_id), surface="portal", request_id=context.request_id
        )
    )
    return TestEvent(
        webhook_id=strawberry.ID(sent.webhook_id),
        event_id=strawberry.ID(sent.event_id),
        endpoint_id=strawberry.ID(sent.endpoint_id),
    )


async def _redeliver(info: Info, endpoint_id: strawberry.ID, webhook_id: strawberry.ID) -> Redelivery:
    context = info.context
    done = await _answer(
        lambda: _deliveries(info).redeliver(
            context.caller,
            str(endpoint_id),
            str(webhook_id),
            surface="portal",
            request_id=context.request_id,
        )
    )
    return _redelivery(done)


async def _recover(info: Info, endpoint_id: strawberry.ID, since: datetime) -> Redelivery:
    context = info.context
    done = await _answer(
        lambda: _deliveries(info).recover(
            context.caller, str(endpoint_id), since, surface="portal", request_id=context.request_id
        )
    )
    return _redelivery(done)


@strawberry.type
class Mutation:
    create_endpoint: EndpointWithSecret = strawberry.mutation(resolver=_create_endpoint)
    update_endpoint: Endpoint = strawberry.mutation(resolver=_update_endpoint)
    disable_endpoint: Endpoint = strawberry.mutation(resolver=_disable_endpoint)
    enable_endpoint: Endpoint = strawberry.mutation(resolver=_enable_endpoint)
    rotate_secret: SecretRotation = strawberry.mutation(
        resolver=_rotate_secret,
        description="A new signing secret, shown once; the previous one keeps signing for graceSeconds.",
    )
    send_test_event: TestEvent = strawberry.mutation(
        resolver=_send_test_event,
        description="A signed `webhook.test` event delivered through the real delivery path.",
    )
    redeliver: Redelivery = strawberry.mutation(
        resolver=_redeliver, description="Deliver one message again (a new attempt with the same webhook id)."
    )
    recover: Redelivery = strawberry.mutation(
        resolver=_recover,
        description="Deliver again every message of the endpoint whose latest attempt failed since `since`.",
    )
