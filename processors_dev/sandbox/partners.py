"""Simulated partner webhook receivers: many partners at ``POST /partners/{name}`` on one port.

Each partner has a :class:`PartnerBehaviour` (how it answers), one or more secrets (every request's
signature is checked with them, tolerance 300 s, by :func:`processors.webhooks.verify.verify_webhook`)
and a :class:`Partner` record of what it received.

=============  ======================================================================================
mode           answer
=============  ======================================================================================
``healthy``    200 (after ``delay_ms``, 0 by default)
``slow``       200 after ``delay_ms`` (required, > 0)
``flaky``      503 for a ``failure_rate`` fraction of requests, the rest 200; the draw is a hash of
               ``seed``, the webhook id and its attempt number at this partner, so a run repeats
               exactly; at most ``max_consecutive_failures`` 503s in a row per webhook id, so every
               message is accepted in the end
``gone``       410
``redirect``   ``redirect_status`` (307 by default) with ``Location: redirect_to``
``timeout``    no answer: the request is held until the client gives up (or the server stops)
``error``      ``status`` (500 by default) every time
=============  ======================================================================================

``delay_ms`` delays every answer, whatever the mode.  ``timeout``, ``gone``, ``redirect`` and
``error`` answer whatever the signature (the endpoint is not there, elsewhere or broken);
``healthy``, ``slow`` and ``flaky`` answer a request whose signature does not verify with 401
(``{"error": "invalid_signature", "reason": ...}``).  Every request is recorded with its
signature's validity.  ``Retry-After: retry_after_s`` goes with 503 and 429 answers when set.
A connection-refused ("dead") partner is no partner at all: :func:`closed_port_url`.

The webhook id is read from ``webhook-id`` (else ``X-Webhook-Id``), the event type from
``X-Webhook-Event-Type``; requests without them fall back to the body's ``webhook_id`` and
``event_type``.

In the caller's event loop (tests)::

    async with PartnerSandbox() as partners:
        partners.add("acme", PartnerBehaviour(mode="flaky", failure_rate=0.3), ["whsec_..."])
        partners.url("acme")                      # http://127.0.0.1:<port>/partners/acme
        await partners.partner("acme").wait_for(10)
        partners.partner("acme").accepted()

:class:`processors_dev.sandbox.server.SandboxServer` mounts the same routes (``sandbox.partners``), so
``processors sandbox`` serves partners too.

The control API under ``/_control/partners`` (no auth; sandbox only): ``GET`` (every partner with
its counts), ``POST`` ``{"name", "behaviour", "secrets", "record_bodies"}`` (201), and per partner
``GET /_control/partners/{name}``, ``PATCH`` ``{"behaviour": {<fields to change>}, "secrets": [...]}``,
``DELETE``, ``GET .../deliveries`` (``?after=<seq>``; bodies and headers included) and
``DELETE .../deliveries`` (forget what was received).  Secrets are never shown, only counted.

**Memory is bounded.**  Each partner keeps the newest ``max_deliveries`` requests (10,000 by
default; older ones are dropped from ``received()`` and the deliveries listing) and remembers
at most ``max_ids`` webhook ids (1,000,000 by default) for attempt numbers, flaky streaks and
acceptances, forgetting the least recently seen one when full.  A forgotten id starts again
at attempt 1.  The counts (``received``, ``accepted``, ``unique_ids``, ``duplicates``) cover
every request, dropped ones included; each partner's summary shows the bounds and evictions
under ``bounds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from processors.adapters import jsonwire
from processors.errors import ConfigError
from processors.httpserve import base_url, listen
from processors_dev.sandbox.common import DEFAULT_MAX_KEYS, BoundedDict, SandboxConfig

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_PARTNER_SECRET",
    "PARTNERS_APP_KEY",
    "PARTNER_PATH",
    "PARTNER_SECRET_ENV",
    "SIGNATURE_TOLERANCE_S",
    "Delivery",
    "Partner",
    "PartnerBehaviour",
    "PartnerMode",
    "PartnerReceivers",
    "PartnerSandbox",
    "PartnerSpec",
    "PartnersConfig",
    "closed_port_url",
]

log = logging.getLogger(__name__)

PARTNER_PATH: Final = "/partners/{name}"
CONTROL_PREFIX: Final = "/_control/partners"
SIGNATURE_TOLERANCE_S: Final = 300
DEFAULT_PARTNER_SECRET: Final = "whsec_c2FuZGJveC1wYXJ0bmVyLXdlYmhvb2stc2VjcmV0"  # noqa: S105 - documented
PARTNER_SECRET_ENV: Final = "SANDBOX_PARTNER_SECRET"  # noqa: S105 - the name of the variable
DEFAULT_MAX_DELIVERIES: Final = 10_000
"""Requests each partner keeps by default (the newest)."""

PartnerMode = Literal["healthy", "slow", "flaky", "gone", "redirect", "timeout", "error"]

_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE: Final = re.compile(_NAME_PATTERN)
_MAX_SECRET_LEN: Final = 256
_HOLD_POLL_S: Final = 0.2
"""How often a held (``timeout`` mode) request looks whether its client has gone."""

_JSON: Final = "application/json"
_OK_BODY: Final = b'{"received":true}'
_UNAVAILABLE_BODY: Final = b'{"error":"service_unavailable","message":"temporary failure, try again"}'
_GONE_BODY: Final = b'{"error":"gone","message":"this endpoint no longer exists"}'
_ERROR_BODY: Final = b'{"error":"partner_error","message":"the partner failed to process the delivery"}'
_NO_PARTNER_BODY: Final = b'{"error":"not_found","message":"no partner with this name"}'
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


class PartnerBehaviour(SandboxConfig):
    """How a partner answers.  Frozen; change it with :meth:`PartnerReceivers.update`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    config_name: ClassVar[str] = "partner behaviour"

    mode: PartnerMode = "healthy"
    delay_ms: int = Field(default=0, ge=0, le=600_000)
    """Every answer waits this long first (``slow``: required, > 0)."""
    failure_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """``flaky``: the fraction of requests answered 503."""
    max_consecutive_failures: int = Field(default=3, ge=0, le=1000)
    """``flaky``: after this many 503s in a row for one webhook id, the next request is accepted."""
    seed: int = 0
    """``flaky``: the same seed and requests give the same answers."""
    retry_after_s: int | None = Field(default=None, ge=0, le=86_400)
    """Sent as ``Retry-After`` with 503 and 429 answers when set."""
    redirect_to: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    """``redirect``: the ``Location`` (required)."""
    redirect_status: Literal[301, 302, 303, 307, 308] = 307
    status: int = Field(default=500, ge=400, le=599)
    """``error``: the status of every answer."""
    accept_seed: bool = False
    """Also accept a request signed with the seed scheme only (``X-Webhook-Signature``), as a
    receiver that cannot read the timestamped headers would; such a receiver accepts replays."""

    @model_validator(mode="after")
    def _mode_has_what_it_needs(self) -> Self:
        if self.mode == "redirect" and self.redirect_to is None:
            raise ValueError("redirect mode needs redirect_to")
        if self.mode == "slow" and self.delay_ms <= 0:
            raise ValueError("slow mode needs delay_ms > 0")
        return self


class PartnerSpec(BaseModel):
    """A partner to create when the sandbox starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    behaviour: PartnerBehaviour = PartnerBehaviour()
    secrets: tuple[SecretStr, ...] = Field(min_length=1)

    @field_validator("secrets")
    @classmethod
    def _secrets_are_usable(cls, secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        try:
            _checked_secrets(secrets)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return secrets


class PartnersConfig(BaseModel):
    """The partner receivers' start-up configuration: partners to create and whether to keep bodies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partners: tuple[PartnerSpec, ...] = ()
    record_bodies: bool = True
    """Keep each request's body and headers (``False`` for benchmarks; counts are kept either way)."""
    max_deliveries: int = Field(default=DEFAULT_MAX_DELIVERIES, ge=1)
    """Requests each partner keeps (the newest); counts cover the dropped ones too."""
    max_ids: int = Field(default=DEFAULT_MAX_KEYS, ge=1)
    """Webhook ids each partner remembers (attempt numbers, flaky streaks, acceptances)."""


def _checked_secrets(secrets: Iterable[str | SecretStr]) -> tuple[str, ...]:
    values = tuple(s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets)
    if not values:
        raise ConfigError("a partner needs at least one secret")
    for position, value in enumerate(values):
        if (
            not isinstance(value, str)
            or not 0 < len(value) <= _MAX_SECRET_LEN
            or not value.isascii()
            or not value.isprintable()
            or any(char.isspace() for char in value)
        ):
            raise ConfigError(
                f"secret {position + 1} must be 1..{_MAX_SECRET_LEN} printable ASCII characters, no spaces"
            )
    return values


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError("a partner name is 1..64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return name


@dataclass(slots=True)
class Delivery:
    """One request a partner received.  ``status`` is 0 until answered (and stays 0 in ``timeout`` mode);
    it is the partner's answer even when the client had given up before it was sent.

    ``attempt`` counts the requests with this webhook id at this partner (1-based).  ``headers``
    (names lower-cased) and ``body`` are None when the partner does not record bodies.
    """

    seq: int
    """Arrival order across every partner of the sandbox (1-based)."""
    partner: str
    webhook_id: str | None
    event_type: str | None
    attempt: int
    signature_valid: bool
    signature_reason: str | None
    received_at: float
    """Unix seconds."""
    status: int = 0
    body: bytes | None = field(default=None, repr=False)
    headers: dict[str, str] | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status <= 299

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "webhook_id": self.webhook_id,
            "event_type": self.event_type,
            "attempt": self.attempt,
            "signature_valid": self.signature_valid,
            "signature_reason": self.signature_reason,
            "status": self.status,
            "received_at": self.received_at,
            "headers": self.headers,
            "body": None if self.body is None else self.body.decode("utf-8", "replace"),
        }


class Partner:
    """One simulated partner: its behaviour, its secrets (never shown) and what it received."""

    def __init__(
        self,
        name: str,
        behaviour: PartnerBehaviour,
        secrets: tuple[str, ...],
        *,
        record_bodies: bool,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        max_ids: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_deliveries < 1:
            raise ConfigError("max_deliveries must be at least 1")
        self.name = name
        self.behaviour = behaviour
        self.record_bodies = record_bodies
        self._secrets = secrets
        self._deliveries: deque[Delivery] = deque(maxlen=max_deliveries)
        self._dropped_deliveries = 0
        self._received = 0
        self._attempts: BoundedDict[str, int] = BoundedDict(max_ids)
        self._ids_seen = 0
        self._failures_in_a_row: BoundedDict[str, int] = BoundedDict(max_ids)
        self._accepted_by_id: BoundedDict[str, int] = BoundedDict(max_ids)
        self._accepted_ids = 0
        self._accepted = 0
        self._invalid_signatures = 0
        self._by_status: dict[int, int] = {}
        self._waiters: list[tuple[Callable[[Partner], bool], asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return (
            f"Partner(name={self.name!r}, mode={self.behaviour.mode!r}, "
            f"received={self._received}, accepted={self._accepted})"
        )

    # -- what it received --------------------------------------------------------------------

    def received(self) -> list[Delivery]:
        """Every request kept (the newest ``max_deliveries``), in arrival order."""
        return list(self._deliveries)

    def accepted(self) -> list[Delivery]:
        """The requests kept that were answered 2xx, in arrival order."""
        return [delivery for delivery in self._deliveries if delivery.accepted]

    def unique_ids(self) -> set[str]:
        """The webhook ids received (accepted or not) and still remembered."""
        ids = set(self._attempts)
        ids.discard("")  # requests without an id are counted under ""
        return ids

    def accepted_ids(self) -> set[str]:
        """The webhook ids accepted at least once and still remembered."""
        ids = set(self._accepted_by_id)
        ids.discard("")
        return ids

    def has_accepted(self, ids: Set[str]) -> bool:
        """Whether every one of ``ids`` was accepted at least once and is still remembered.

        Cheap while fewer ids are remembered than asked for, so a :meth:`wait_until` that asks
        after every request stays linear in the requests (building :meth:`accepted_ids` for
        each one made a wait for thousands of deliveries quadratic)."""
        remembered = self._accepted_by_id
        return len(remembered) >= len(ids) and ids <= remembered.keys()

    @property
    def received_count(self) -> int:
        """Every request received, dropped ones included."""
        return self._received

    @property
    def accepted_count(self) -> int:
        return self._accepted

    @property
    def duplicates_count(self) -> int:
        """Acceptances beyond the first per webhook id (a message delivered twice counts 1).

        An id accepted again after it was forgotten counts as a first acceptance."""
        return self._accepted - self._accepted_ids

    @property
    def invalid_signatures(self) -> int:
        return self._invalid_signatures

    @property
    def by_status(self) -> dict[int, int]:
        """Answers by HTTP status (requests never answered are not counted)."""
        return dict(self._by_status)

    @property
    def secrets_count(self) -> int:
        return len(self._secrets)

    def bounds(self) -> dict[str, dict[str, int]]:
        """Size, bound and evictions of each structure that grows with requests."""
        deliveries = self._deliveries
        return {
            "deliveries": {
                "size": len(deliveries),
                "max_size": deliveries.maxlen or 0,
                "evictions": self._dropped_deliveries,
            },
            "webhook_ids": self._attempts.stats(),
            "accepted_ids": self._accepted_by_id.stats(),
            "failure_streaks": self._failures_in_a_row.stats(),
        }

    def clear(self) -> int:
        """Forget every request (and the flaky streaks); returns how many were forgotten."""
        forgotten = len(self._deliveries)
        self._deliveries.clear()
        self._dropped_deliveries = 0
        self._received = 0
        self._attempts.forget()
        self._ids_seen = 0
        self._failures_in_a_row.forget()
        self._accepted_by_id.forget()
        self._accepted_ids = 0
        self._accepted = 0
        self._invalid_signatures = 0
        self._by_status.clear()
        return forgotten

    async def wait_until(self, predicate: Callable[[Partner], bool]) -> None:
        """Return once ``predicate(self)`` holds (checked after each arrival and each answer).

        Bound the wait with ``asyncio.timeout``.
        """
        if predicate(self):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def wait_for(self, count: int) -> None:
        """Return once at least ``count`` requests have arrived."""
        await self.wait_until(lambda partner: partner.received_count >= count)

    async def wait_for_accepted_ids(self, count: int) -> None:
        """Return once at least ``count`` distinct webhook ids have been accepted."""
        await self.wait_until(lambda partner: partner._accepted_ids >= count)

    def summary(self, url: str | None = None) -> dict[str, Any]:
        """JSON-ready counts and behaviour (secrets only counted)."""
        return {
            "name": self.name,
            "url": url,
            "behaviour": self.behaviour.model_dump(mode="json"),
            "secrets": len(self._secrets),
            "record_bodies": self.record_bodies,
            "received": self._received,
            "accepted": self._accepted,
            "unique_ids": self._ids_seen,
            "duplicates": self.duplicates_count,
            "invalid_signatures": self._invalid_signatures,
            "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
            "bounds": self.bounds(),
        }

    # -- recording (used by the receivers) ---------------------------------------------------

    def _set_secrets(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the signature verifies with one of the secrets, else the reason."""
        from processors.webhooks.verify import WebhookVerificationError, verify_webhook

        try:
            verify_webhook(
                body,
                headers,
                self._secrets,
                tolerance_s=SIGNATURE_TOLERANCE_S,
                allow_seed=self.behaviour.accept_seed,
            )
        except WebhookVerificationError as exc:
            return str(exc.reason)
        return None

    def _arrive(
        self,
        seq: int,
        webhook_id: str | None,
        event_type: str | None,
        body: bytes,
        headers: Mapping[str, str],
        reason: str | None,
    ) -> Delivery:
        key = webhook_id or ""
        seen = self._attempts.get(key)
        if seen is None:
            self._ids_seen += 1
        attempt = (seen or 0) + 1
        self._attempts[key] = attempt
        if reason is not None:
            self._invalid_signatures += 1
        delivery = Delivery(
            seq=seq,
            partner=self.name,
            webhook_id=webhook_id,
            event_type=event_type,
            attempt=attempt,
            signature_valid=reason is None,
            signature_reason=reason,
            received_at=time.time(),
        )
        if self.record_bodies:
            delivery.body = body
            delivery.headers = {name.lower(): value for name, value in headers.items()}
        if len(self._deliveries) == self._deliveries.maxlen:
            self._dropped_deliveries += 1
        self._deliveries.append(delivery)
        self._received += 1
        self._notify()
        return delivery

    def _answered(self, delivery: Delivery, status: int) -> None:
        delivery.status = status
        self._by_status[status] = self._by_status.get(status, 0) + 1
        if 200 <= status <= 299:
            self._accepted += 1
            key = delivery.webhook_id or ""
            accepted = self._accepted_by_id.get(key)
            if accepted is None:
                self._accepted_ids += 1
            self._accepted_by_id[key] = (accepted or 0) + 1
        self._notify()

    def _flaky_fails(self, behaviour: PartnerBehaviour, delivery: Delivery) -> bool:
        """The deterministic draw of ``flaky`` mode, bounded by ``max_consecutive_failures``."""
        key = delivery.webhook_id or ""
        in_a_row = self._failures_in_a_row.get(key, 0)
        if in_a_row >= behaviour.max_consecutive_failures or behaviour.failure_rate <= 0.0:
            fails = False
        else:
            digest = hashlib.blake2b(
                f"{behaviour.seed}:{key}:{delivery.attempt}".encode("utf-8", "surrogatepass"), digest_size=8
            ).digest()
            fails = int.from_bytes(digest, "big") / 2.0**64 < behaviour.failure_rate
        if fails:
            self._failures_in_a_row[key] = in_a_row + 1
        else:
            self._failures_in_a_row.pop(key, None)
        return fails

    def _notify(self) -> None:
        if not self._waiters:
            return
        for entry in list(self._waiters):
            predicate, waiter = entry
            if waiter.done():
                continue
            try:
                satisfied = predicate(self)
            except Exception as exc:  # a broken predicate fails its waiter, not the request
                waiter.set_exception(exc)
                continue
            if satisfied:
                waiter.set_result(None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _response(status: int, body: bytes, retry_after_s: int | None = None) -> web.Response:
    headers = None
    if retry_after_s is not None and status in _RETRY_AFTER_STATUSES:
        headers = {"Retry-After": str(retry_after_s)}
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _refusal(status: int, error: str, message: str) -> web.Response:
    return web.Response(
        status=status, body=jsonwire.dumps({"error": error, "message": message}), content_type=_JSON
    )


def _ids_from_body(body: bytes) -> tuple[str | None, str | None]:
    try:
        document = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    webhook_id = document.get("webhook_id")
    event_type = document.get("event_type")
    return (
        webhook_id if isinstance(webhook_id, str) else None,
        event_type if isinstance(event_type, str) else None,
    )


class PartnerReceivers:
    """State and HTTP routes of the simulated partners (mounted by :class:`PartnerSandbox` and
    :class:`~processors_dev.sandbox.server.SandboxServer`).

    All state lives on one event loop.  ``unknown_requests`` counts requests for partners that do
    not exist (answered 404, not recorded).  :meth:`url` needs ``base_url``, which the server
    hosting the routes sets when it starts.
    """

    def __init__(self, config: PartnersConfig | None = None) -> None:
        config = config or PartnersConfig()
        self.record_bodies = config.record_bodies
        self.max_deliveries = config.max_deliveries
        self.max_ids = config.max_ids
        self.base_url: str | None = None
        self.unknown_requests = 0
        self._partners: dict[str, Partner] = {}
        self._seq = itertools.count(1)
        self._sleepers: set[asyncio.Future[None]] = set()
        self._held: set[asyncio.Future[None]] = set()
        for spec in config.partners:
            self.add(spec.name, spec.behaviour, spec.secrets)

    # -- partners ----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        behaviour: PartnerBehaviour,
        secrets: Sequence[str | SecretStr],
        *,
        record_bodies: bool | None = None,
    ) -> Partner:
        """Create a partner (:class:`ConfigError` when the name is taken or a value is invalid).

        ``record_bodies`` None: the receivers' setting.
        """
        _checked_name(name)
        if name in self._partners:
            raise ConfigError(f"a partner named {name!r} exists already")
        partner = Partner(
            name,
            behaviour,
            _checked_secrets(secrets),
            record_bodies=self.record_bodies if record_bodies is None else record_bodies,
            max_deliveries=self.max_deliveries,
            max_ids=self.max_ids,
        )
        self._partners[name] = partner
        log.info("sandbox partner %s added (%s)", name, behaviour.mode)
        return partner

    def update(
        self,
        name: str,
        behaviour: PartnerBehaviour | None = None,
        *,
        secrets: Sequence[str | SecretStr] | None = None,
    ) -> Partner:
        """Change a partner's behaviour and/or secrets (requests being answered keep the old ones).

        :class:`KeyError` when there is no such partner.
        """
        partner = self._partners[name]
        checked = _checked_secrets(secrets) if secrets is not None else None
        if behaviour is not None:
            partner.behaviour = behaviour
        if checked is not None:
            partner._set_secrets(checked)
        log.info("sandbox partner %s updated (%s)", name, partner.behaviour.mode)
        return partner

    def remove(self, name: str) -> Partner:
        """Remove a partner (its URL answers 404 from now on); :class:`KeyError` when unknown."""
        partner = self._partners.pop(name)
        log.info("sandbox partner %s removed", name)
        return partner

    def partner(self, name: str) -> Partner:
        """The partner called ``name``; :class:`KeyError` when unknown."""
        return self._partners[name]

    def partners(self) -> list[Partner]:
        return list(self._partners.values())

    def url(self, name: str) -> str:
        """The partner's delivery URL (the partner need not exist yet)."""
        if self.base_url is None:
            raise RuntimeError("the partner receivers are not being served")
        return self.base_url + PARTNER_PATH.format(name=_checked_name(name))

    @property
    def waiting(self) -> int:
        """Requests waiting now: delayed ones not yet answered and held ones (``timeout`` mode)."""
        return len(self._sleepers) + len(self._held)

    def release_waiting(self) -> int:
        """Answer every delayed request now and drop every held one; returns how many there were."""
        waiting = [*self._sleepers, *self._held]
        for waiter in waiting:
            _wake(waiter)
        return len(waiting)

    # -- HTTP --------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PARTNER_PATH, self._handle_delivery),
            web.get(CONTROL_PREFIX, self._handle_list),
            web.post(CONTROL_PREFIX, self._handle_create),
            web.get(f"{CONTROL_PREFIX}/{{name}}", self._handle_get),
            web.patch(f"{CONTROL_PREFIX}/{{name}}", self._handle_patch),
            web.delete(f"{CONTROL_PREFIX}/{{name}}", self._handle_delete),
            web.get(f"{CONTROL_PREFIX}/{{name}}/deliveries", self._handle_deliveries),
            web.delete(f"{CONTROL_PREFIX}/{{name}}/deliveries", self._handle_clear),
        ]

    def add_to(self, app: web.Application) -> None:
        """Mount the routes on ``app`` and make the receivers reachable as ``app[PARTNERS_APP_KEY]``."""
        app.add_routes(self.routes())
        app[PARTNERS_APP_KEY] = self
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Delayed requests answer now and held ones end, instead of holding the shutdown.
        self.release_waiting()

    async def _handle_delivery(self, request: web.Request) -> web.Response:
        partner = self._partners.get(request.match_info["name"])
        if partner is None:
            self.unknown_requests += 1
            return _response(404, _NO_PARTNER_BODY)
        body = await request.read()
        headers = request.headers
        webhook_id = headers.get("webhook-id") or headers.get("X-Webhook-Id")
        event_type = headers.get("X-Webhook-Event-Type")
        if webhook_id is None or event_type is None:
            body_id, body_type = _ids_from_body(body)
            webhook_id = webhook_id or body_id
            event_type = event_type or body_type
        reason = partner._verify(body, headers)
        delivery = partner._arrive(next(self._seq), webhook_id, event_type, body, headers, reason)
        behaviour = partner.behaviour
        if behaviour.mode == "timeout":
            await self._hold(request)
            # The client gave up or the server is stopping: nobody reads an answer any more.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if behaviour.delay_ms:
            await self._pause(behaviour.delay_ms / 1000.0)
        response = self._answer(partner, behaviour, delivery)
        partner._answered(delivery, response.status)
        return response

    @staticmethod
    def _answer(partner: Partner, behaviour: PartnerBehaviour, delivery: Delivery) -> web.Response:
        mode = behaviour.mode
        if mode == "gone":
            return _response(410, _GONE_BODY)
        if mode == "redirect":
            assert behaviour.redirect_to is not None
            return web.Response(status=behaviour.redirect_status, headers={"Location": behaviour.redirect_to})
        if mode == "error":
            return _response(behaviour.status, _ERROR_BODY, behaviour.retry_after_s)
        if not delivery.signature_valid:
            return _refusal(401, "invalid_signature", delivery.signature_reason or "invalid signature")
        if mode == "flaky" and partner._flaky_fails(behaviour, delivery):
            return _response(503, _UNAVAILABLE_BODY, behaviour.retry_after_s)
        return _response(200, _OK_BODY)

    async def _pause(self, delay_s: float) -> None:
        # asyncio.sleep's own mechanism, kept in a set so release_waiting() can end it early.
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_s, _wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)

    async def _hold(self, request: web.Request) -> None:
        """Wait until the client closes the connection or :meth:`release_waiting` is called."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.add(waiter)
        try:
            while not waiter.done():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                await asyncio.wait([waiter], timeout=_HOLD_POLL_S)
        finally:
            self._held.discard(waiter)

    # -- control API -------------------------------------------------------------------------

    def _summary(self, partner: Partner) -> dict[str, Any]:
        url = self.url(partner.name) if self.base_url is not None else None
        return partner.summary(url)

    def _lookup(self, request: web.Request) -> Partner | None:
        return self._partners.get(request.match_info["name"])

    async def _handle_list(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "partners": [self._summary(partner) for partner in self._partners.values()],
                "unknown_requests": self.unknown_requests,
            }
        )

    async def _handle_create(self, request: web.Request) -> web.Response:
        document = await _json_object(request)
        if isinstance(document, web.Response):
            return document
        unexpected = set(document) - {"name", "behaviour", "secrets", "record_bodies"}
        if unexpected:
            return _refusal(400, "validation_error", f"unexpected fields: {', '.join(sorted(unexpected))}")
        name = document.get("name")
        secrets = document.get("secrets")
        record_bodies = document.get("record_bodies")
        if not isinstance(name, str):
            return _refusal(400, "validation_error", "name must be a string")
        if not isinstance(secrets, list) or not all(isinstance(secret, str) for secret in secrets):
            return _refusal(400, "validation_error", "secrets must be a list of strings")
        if record_bodies is not None and not isinstance(record_bodies, bool):
            return _refusal(400, "validation_error", "record_bodies must be true or false")
        behaviour_values = document.get("behaviour") or {}
        if not isinstance(behaviour_values, dict):
            return _refusal(400, "validation_error", "behaviour must be a JSON object")
        if name in self._partners:
            return _refusal(409, "conflict", f"a partner named {name!r} exists already")
        try:
            partner = self.add(
                name, PartnerBehaviour.from_mapping(behaviour_values), secrets, record_bodies=record_bodies
            )
        except ConfigError as exc:
            return _refusal(400, "validation_error", str(exc))
        return web.json_response(self._summary(partner), status=201)

    async def _handle_get(self, request: web.Request) -> web.Response:
        partner = self._lookup(request)
        if partner is None:
            return _response(404, _NO_PARTNER_BODY)
        return web.json_response(self._summary(partner))

    async def _handle_patch(self, request: web.Request) -> web.Response:
        partner = self._lookup(request)
        if partner is None:
            return _response(404, _NO_PARTNER_BODY)
        document = await _json_object(request)
        if isinstance(document, web.Response):
            return document
        unexpected = set(document) - {"behaviour", "secrets"}
        if unexpected:
            return _refusal(400, "validation_error", f"unexpected fields: {', '.join(sorted(unexpected))}")
        changes = document.get("behaviour")
        secrets = document.get("secrets")
        if changes is not None and not isinstance(changes, dict):
            return _refusal(400, "validation_error", "behaviour must be a JSON object of fields to change")
        if secrets is not None and (
            not isinstance(secrets, list) or not all(isinstance(secret, str) for secret in secrets)
        ):
            return _refusal(400, "validation_error", "secrets must be a list of strings")
        try:
            behaviour = partner.behaviour.updated(changes) if changes is not None else None
            self.update(partner.name, behaviour, secrets=secrets)
        except ConfigError as exc:
            return _refusal(400, "validation_error", str(exc))
        return web.json_response(self._summary(partner))

    async def _handle_delete(self, request: web.Request) -> web.Response:
        partner = self._lookup(request)
        if partner is None:
            return _response(404, _NO_PARTNER_BODY)
        self.remove(partner.name)
        return web.json_response({"deleted": partner.name})

    async def _handle_deliveries(self, request: web.Request) -> web.Response:
        partner = self._lookup(request)
        if partner is None:
            return _response(404, _NO_PARTNER_BODY)
        after_text = request.query.get("after", "0")
        if not after_text.isdigit():
            return _refusal(400, "validation_error", "after must be a sequence number")
        after = int(after_text)
        deliveries = [d.to_json() for d in partner._deliveries if d.seq > after]
        return web.json_response({"name": partner.name, "deliveries": deliveries})

    async def _handle_clear(self, request: web.Request) -> web.Response:
        partner = self._lookup(request)
        if partner is None:
            return _response(404, _NO_PARTNER_BODY)
        return web.json_response({"cleared": partner.clear()})


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        document = json.loads(await request.read())
    except ValueError:
        return _refusal(400, "validation_error", "body is not valid JSON")
    if not isinstance(document, dict):
        return _refusal(400, "validation_error", "body must be a JSON object")
    return document


PARTNERS_APP_KEY: Final = web.AppKey("partner_receivers", PartnerReceivers)


class PartnerSandbox:
    """The partner receivers alone, served on ``host:port`` (``port=0``: any free port).

    One-shot: ``start()`` once, ``stop()`` once (or use ``async with``).  No I/O happens before
    ``start()``; partners can be added before or after it.  Stopping answers delayed requests and
    drops held ones at once.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: PartnersConfig | None = None,
        *,
        access_log: bool = False,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.receivers = PartnerReceivers(config)
        self.app = web.Application()
        self.receivers.add_to(self.app)
        self._access_log = access_log
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._used = False

    # -- partners (see PartnerReceivers) -----------------------------------------------------

    def add(
        self,
        name: str,
        behaviour: PartnerBehaviour,
        secrets: Sequence[str | SecretStr],
        *,
        record_bodies: bool | None = None,
    ) -> Partner:
        return self.receivers.add(name, behaviour, secrets, record_bodies=record_bodies)

    def update(
        self,
        name: str,
        behaviour: PartnerBehaviour | None = None,
        *,
        secrets: Sequence[str | SecretStr] | None = None,
    ) -> Partner:
        return self.receivers.update(name, behaviour, secrets=secrets)

    def remove(self, name: str) -> Partner:
        return self.receivers.remove(name)

    def partner(self, name: str) -> Partner:
        return self.receivers.partner(name)

    def url(self, name: str) -> str:
        """``http://<host>:<port>/partners/<name>``."""
        return self.receivers.url(name)

    @property
    def base_url(self) -> str:
        """``http://<host>:<bound port>``; the control API is at ``base_url + CONTROL_PREFIX``."""
        if self.receivers.base_url is None:
            raise RuntimeError("the partner sandbox is not running")
        return self.receivers.base_url

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._used:
            raise RuntimeError("a PartnerSandbox starts once; create a new one")
        self._used = True
        self._runner, self.receivers.base_url = await listen(
            self.app,
            self.host,
            self.port,
            what="the partner sandbox",
            access_log=self._access_log,
            shutdown_timeout_s=self._shutdown_timeout_s,
        )
        log.info("partner sandbox listening on %s", self.receivers.base_url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        self.receivers.base_url = None
        log.info("partner sandbox stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def closed_port_url(host: str = "127.0.0.1", path: str = "/partners/dead") -> str:
    """A URL on ``host`` whose port has nothing listening: connecting is refused.

    The port is one the system just handed out and took back; another program could take it
    in the meantime, which is unlikely in the instant a test needs it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    return base_url(host, port) + path
