"""Partner endpoints (webhook subscriptions) as a service: the rules every API applies, once.

The REST routes (:mod:`processors.api.webhooks`) and the partner portal's GraphQL mutations
(:mod:`processors.portal.graphql.mutation`) parse their requests and call these two objects;
neither holds a rule of its own.

:class:`EndpointService` creates, reads, changes, disables, enables, deletes endpoints and
rotates their secrets, for a :class:`~processors.partners.auth.Caller`:

* **Ownership.**  A partner's key sees and changes only its partner's endpoints: another
  partner's id raises :class:`EndpointNotFound` exactly as an unknown id does.  The operator
  sees every endpoint and may create one for a partner, or keep it (no ``partner_id``).
* **Validation.**  The subscription model's rules (:class:`~processors.webhooks.subscriptions.
  Subscription`), a partner-chosen secret's strength, the URL check (the SSRF policy: ``url_check``,
  :class:`EndpointUrlRefused`), the limits (``max_subscriptions`` in all, ``max_per_partner``
  each: :class:`EndpointLimitReached`), and grants (set by operators only, on their own
  endpoints: :class:`EndpointForbidden` / :class:`InvalidEndpoint`).
* **Read-your-writes.**  A change first waits until the local table holds every record
  written before it (so it starts from the latest version), is written to the subscriptions
  topic, and returns once the table shows it.  Writes are serialised in this process.
* **Errors** are typed (the tree below); each carries a ``code`` and a message safe to show
  (field names, never values); a broker that does not answer is :class:`EndpointsUnavailable`.

:class:`DeliveryService` sends a signed test event (``webhook.test``) through the real
delivery path, redelivers one message and recovers every failed message since a time, on the
operator redelivery machinery (:class:`~processors.webhooks.attempts.AttemptsView`,
:class:`~processors.webhooks.attempts.AttemptsFeed`,
:class:`~processors.webhooks.attempts.Redeliverer`), after the owner check of
:class:`EndpointService`.

Every change (success or refusal) is recorded once on the audit trail (``integrations.audit``,
:mod:`processors.observability.audit`; app ``api``, direction ``inbound``):

==================  ===========================================================================
``operation``       ``<surface>.<mutation>``: the surface is ``rest`` (the REST API) or
                    ``portal`` (the GraphQL API); the mutation is named as in the GraphQL
                    schema: ``createEndpoint``, ``updateEndpoint``, ``disableEndpoint``,
                    ``enableEndpoint``, ``rotateSecret``, ``sendTestEvent``, ``redeliver``,
                    ``recover``, and ``deleteEndpoint`` (REST only)
``endpoint``        ``webhook:<endpoint id>`` (as the delivery audit names it); ``webhooks``
                    for a creation refused before it had an id
``actor``           ``{"kind": "partner", "partner_id", "key_id"}`` or ``{"kind": "operator"}``
``status``          ``ok``, or the error's code (``not_found``, ``invalid_request``, ...)
``outcome``         ``success``; ``rejected`` for a refusal; ``failure`` when the broker did not
                    answer (``unavailable``), the operation failed unexpectedly (``error``) or
                    was cancelled half-way, its caller gone (``cancelled``: it may have been made)
``latency_ms``      the operation's wall time
``correlation_id``  the request id, when the surface has one
summaries           field names, counts, ids, the scheme and host of a URL stored (never its
                    userinfo, path or query): never a secret, a URL's credentials, a value
                    refused, a reason's text or personal data
==================  ===========================================================================

Error tree (all :class:`~processors.errors.ProcessorsError`)::

    EndpointError                  code
    ├── EndpointNotFound           not_found          unknown, or another partner's
    │   └── MessageNotFound        not_found          no such message for this endpoint
    ├── InvalidEndpoint            invalid_request    ``reasons``: "field: what is wrong"
    ├── EndpointLimitReached       limit_reached
    ├── EndpointUrlRefused         url_refused        the SSRF policy refused the URL
    ├── EndpointForbidden          operator_only      a rule keeps this for operators
    ├── EndpointDisabled           endpoint_disabled  the endpoint receives nothing now
    └── EndpointsUnavailable       unavailable        the broker did not answer; retry
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, TypeVar

from pydantic import SecretStr

from processors.errors import BrokerError, ProcessorsError
from processors.kafka import KafkaClients
from processors.observability.audit import Actor, AuditLogger, Outcome, audit_logger
from processors.partners.auth import Caller
from processors.partners.model import PARTNER_ID_PATTERN, Partner
from processors.partners.projection import DATA_CLASSES, DataClass, parse_grants
from processors.runtime.engine import OutputProducer
from processors.runtime.producer import ProducerSlot
from processors.webhooks.attempts import AttemptsView, JobRef, RedeliveryReport
from processors.webhooks.delivery import TEST_EVENT_TYPE, webhook_test_record
from processors.webhooks.secrets import (
    InvalidSecret,
    SecretBox,
    StoredSecret,
    generate_secret,
    validate_secret,
)
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.subscriptions import ID_PATTERN as ENDPOINT_ID_PATTERN
from processors.webhooks.subscriptions import (
    MAX_DISABLED_REASON_CHARS,
    MAX_GRACE_S,
    UPDATABLE_FIELDS,
    InvalidSubscription,
    Subscription,
    SubscriptionTable,
    loggable_url,
    new_subscription_id,
)

if TYPE_CHECKING:
    from processors.api.webhook_ops import WebhookOpsRoutes

__all__ = [
    "AUDIT_APP",
    "CreatedEndpoint",
    "DeliveryService",
    "EndpointDisabled",
    "EndpointError",
    "EndpointForbidden",
    "EndpointLimitReached",
    "EndpointNotFound",
    "EndpointService",
    "EndpointUrlRefused",
    "EndpointsUnavailable",
    "InvalidEndpoint",
    "MessageNotFound",
    "NewEndpoint",
    "PartnerDirectory",
    "Redelivered",
    "RotatedSecret",
    "SubscriptionWriter",
    "Surface",
    "TestEventSent",
    "UrlCheck",
]

log = logging.getLogger(__name__)

AUDIT_APP: Final = "api"
"""The ``app`` of the audit records of endpoint changes (the API process, as for inbound calls)."""

Surface = Literal["rest", "portal"]
"""Which API a change came through: the first part of its audit ``operation``."""

UrlCheck = Callable[[str], Awaitable[None]]
"""Raises :class:`~processors.webhooks.ssrf.AddressRefused` when a URL may not be registered."""

_PARTNER_ID: Final = re.compile(PARTNER_ID_PATTERN)
_ENDPOINT_ID: Final = re.compile(ENDPOINT_ID_PATTERN)
_MAX_LABEL_CHARS: Final = 128
_NULLABLE: Final = frozenset({"rate_limit_per_s", "description"})
"""Fields a change may clear with ``None``; the others must not be None."""


# ------------------------------------------------------------------------------------ seams


class SubscriptionWriter(Protocol):
    """What the service needs of :class:`~processors.webhooks.store.SubscriptionStore`."""

    @property
    def table(self) -> SubscriptionTable: ...
    async def put(self, sub: Subscription) -> None: ...
    async def delete(self, sub_id: str) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30) -> None: ...


class PartnerDirectory(Protocol):
    """The partners an endpoint may belong to (:class:`~processors.partners.table.PartnerTable`)."""

    def partner(self, partner_id: str) -> Partner | None: ...


class _CatchingUp(Protocol):
    """What :class:`DeliveryService` needs of :class:`~processors.webhooks.attempts.AttemptsFeed`."""

    async def wait_caught_up(self, timeout_s: float) -> bool: ...


class _Redelivering(Protocol):
    """What :class:`DeliveryService` needs of :class:`~processors.webhooks.attempts.Redeliverer`."""

    async def redeliver(
        self, jobs: Sequence[JobRef], *, expect_subscription: str | None = None
    ) -> RedeliveryReport: ...


# ------------------------------------------------------------------------------------ errors


class EndpointError(ProcessorsError):
    """A request about an endpoint was refused (or could not be carried out).

    ``code`` names the kind (see the module docstring); ``message`` is safe to show the
    caller: it names fields, never their values.
    """

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EndpointNotFound(EndpointError):
    """No such endpoint for this caller: unknown, or another partner's (the same answer)."""

    code = "not_found"

    def __init__(self, message: str = "no such webhook subscription") -> None:
        super().__init__(message)


class MessageNotFound(EndpointNotFound):
    """The endpoint has no such message (webhook id) in the delivery log."""

    def __init__(self) -> None:
        super().__init__("no such message for this endpoint")


class InvalidEndpoint(EndpointError):
    """The request breaks a rule; ``reasons`` are ``"field: what is wrong"`` (no values)."""

    code = "invalid_request"

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons) or "invalid request")
        self.reasons = tuple(reasons)

    @property
    def fields(self) -> list[str]:
        """The fields the reasons name (what the audit trail records)."""
        return sorted({reason.partition(":")[0].strip() for reason in self.reasons})


class EndpointLimitReached(EndpointError):
    """One more endpoint would pass a limit (in all, or of the partner)."""

    code = "limit_reached"


class EndpointUrlRefused(EndpointError):
    """The URL may not be registered (the SSRF policy); the message says why."""

    code = "url_refused"


class EndpointForbidden(EndpointError):
    """A rule keeps this for the insurer's operators (grants)."""

    code = "operator_only"


class EndpointDisabled(EndpointError):
    """The endpoint receives nothing now (disabled, or made inactive): nothing is sent."""

    code = "endpoint_disabled"


class EndpointsUnavailable(EndpointError):
    """The subscriptions (or the delivery log) could not be read or written: retry later."""

    code = "unavailable"


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class NewEndpoint:
    """What a new endpoint is made of.

    ``partner_id`` (whose it is) and ``grants`` are the operator's to set: a partner's key
    creates endpoints of its own partner, and ``partner_id`` may only repeat it.  ``secret`` is
    a partner-chosen signing secret (None: a new random one).
    """

    url: str
    events: Sequence[str]
    description: str | None = None
    ordered: bool = False
    max_concurrency: int = 10
    rate_limit_per_s: float | None = None
    active: bool = True
    partner_id: str | None = None
    grants: Sequence[str] | None = None
    secret: SecretStr | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CreatedEndpoint:
    """A new endpoint and its signing secret (the one time it is shown)."""

    endpoint: Subscription
    secret: SecretStr = field(repr=False)
    at: datetime


@dataclass(frozen=True)
class RotatedSecret:
    """An endpoint after a rotation, its new secret (shown once) and when the previous one stops."""

    endpoint: Subscription
    secret: SecretStr = field(repr=False)
    previous_expires_at: datetime
    grace_s: float
    at: datetime


@dataclass(frozen=True)
class TestEventSent:
    """A test event queued for delivery (acknowledged by the broker)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    endpoint_id: str
    webhook_id: str
    event_id: str


@dataclass(frozen=True)
class Redelivered:
    """Messages queued for delivery again.

    ``webhook_ids``: one per copy produced; ``missing``: messages whose dispatch record is no
    longer kept (retention); ``caught_up``: whether the delivery log was read to its end first.
    """

    webhook_ids: tuple[str, ...]
    missing: int
    caught_up: bool

    @property
    def queued(self) -> int:
        return len(self.webhook_ids)


# ------------------------------------------------------------------------------------ audit

_T = TypeVar("_T")


def _actor(caller: Caller) -> Actor:
    if caller.is_operator:
        return Actor(kind="operator")
    return Actor(kind="partner", partner_id=caller.partner_id, key_id=caller.key_id)


class _Audit:
    """Records one audit event per operation (see the module docstring)."""

    def __init__(self, logger: AuditLogger) -> None:
        self.logger = logger

    async def run(
        self,
        operation: str,
        caller: Caller,
        surface: Surface,
        request_id: str | None,
        endpoint_id: str | None,
        work: Callable[[dict[str, Any]], Awaitable[_T]],
        request_summary: Mapping[str, Any] | None = None,
    ) -> _T:
        """Run ``work(response_summary)`` and record how it went (it fills in the summary)."""
        started = time.perf_counter()
        response: dict[str, Any] = {}
        try:
            result = await work(response)
        except EndpointError as exc:
            outcome: Outcome = "failure" if isinstance(exc, EndpointsUnavailable) else "rejected"
            request = dict(request_summary or {})
            if isinstance(exc, InvalidEndpoint):
                request["invalid_fields"] = exc.fields
            self._record(
                operation, caller, surface, request_id, response.get("endpoint_id", endpoint_id),
                started, exc.code, outcome, request, response,
                None if isinstance(exc, InvalidEndpoint) else exc.message,
            )  # fmt: skip
            raise
        except (Exception, asyncio.CancelledError) as exc:
            # A failure of ours, or the caller went away mid-way (the change may have been made):
            # recorded (the class only, never its text), then left to the caller.
            status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            self._record(
                operation, caller, surface, request_id, response.get("endpoint_id", endpoint_id),
                started, status, "failure", dict(request_summary or {}), response, type(exc).__name__,
            )  # fmt: skip
            raise
        self._record(
            operation, caller, surface, request_id, response.get("endpoint_id", endpoint_id),
            started, "ok", "success", dict(request_summary or {}), response, None,
        )  # fmt: skip
        return result

    def _record(
        self,
        operation: str,
        caller: Caller,
        surface: Surface,
        request_id: str | None,
        endpoint_id: str | None,
        started: float,
        status: str,
        outcome: Outcome,
        request: dict[str, Any],
        response: dict[str, Any],
        error: str | None,
    ) -> None:
        if endpoint_id is None:
            endpoint = "webhooks"
        elif _ENDPOINT_ID.fullmatch(endpoint_id):
            endpoint = f"webhook:{endpoint_id}"
        else:
            endpoint = "webhook:(not an endpoint id)"  # whatever was asked, it names nothing
        self.logger.record_interaction(
            direction="inbound",
            endpoint=endpoint,
            operation=f"{surface}.{operation}",
            status=status,
            outcome=outcome,
            latency_ms=(time.perf_counter() - started) * 1000,
            correlation_id=request_id[:_MAX_LABEL_CHARS] if request_id else None,
            request_summary=request,
            response_summary={k: v for k, v in response.items() if k != "endpoint_id"},
            error=error,
            actor=_actor(caller),
        )


# ------------------------------------------------------------------------------------ endpoints


class EndpointService:
    """Partner endpoints for a caller: the rules of the REST and GraphQL APIs, once.

    ``store`` is read and written (its table is the truth of this process); ``box`` encrypts
    new secrets (associated data = the endpoint id); ``url_check`` vets every URL registered
    or changed.  ``default_grace_s`` is how long a rotated-out secret keeps signing when the
    caller does not say; ``max_subscriptions`` bounds the table and ``max_per_partner`` each
    partner's share of it.  ``catch_up_timeout_s`` bounds the wait for the latest versions.
    ``partners`` is the partner registry (None: no registry; an operator's ``partner_id`` is
    then taken as given).  ``audit`` records every change (default: the ``api`` audit logger,
    on the sink the process configured).

    Every method takes the ``caller``; changes also take the ``surface`` they came through and
    the ``request_id`` (for the audit trail).  Reads never raise for a broker outage: they
    answer from the local table.  See the module docstring for the rules and errors.
    """

    def __init__(
        self,
        store: SubscriptionWriter,
        box: SecretBox,
        url_check: UrlCheck,
        *,
        default_grace_s: int = 86_400,
        max_subscriptions: int = 10_000,
        catch_up_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        partners: PartnerDirectory | None = None,
        max_per_partner: int = 100,
        audit: AuditLogger | None = None,
    ) -> None:
        if not 0 <= default_grace_s <= MAX_GRACE_S:
            raise ValueError(f"default_grace_s must be within 0..{MAX_GRACE_S}")
        self.store = store
        self.box = box
        self.url_check = url_check
        self.default_grace_s = default_grace_s
        self.max_subscriptions = max_subscriptions
        self.catch_up_timeout_s = catch_up_timeout_s
        self.partners = partners
        self.max_per_partner = max_per_partner
        self.clock = clock
        self.audit = _Audit(audit or audit_logger(AUDIT_APP))
        self._write_lock = asyncio.Lock()

    # -------------------------------------------------------------------------------- reads

    async def list_endpoints(
        self, caller: Caller, *, event_type: str | None = None, partner_id: str | None = None
    ) -> list[Subscription]:
        """The endpoints ``caller`` sees (by id), optionally those selecting ``event_type`` or of
        ``partner_id``; from the local table when it cannot catch up."""
        await self._catch_up_quietly()
        subs = [s for s in self.store.table.all() if caller.sees(s.partner_id)]
        if event_type is not None:
            subs = [s for s in subs if s.matches(event_type)]
        if partner_id is not None:
            subs = [s for s in subs if s.partner_id == partner_id]
        return subs

    async def get(self, caller: Caller, endpoint_id: str) -> Subscription:
        """The endpoint, if ``caller`` sees it; :class:`EndpointNotFound` otherwise."""
        await self._catch_up_quietly()
        return self._get(endpoint_id, caller)

    def find(self, caller: Caller, endpoint_id: str) -> Subscription | None:
        """The endpoint as the local table holds it now, if ``caller`` sees it (no wait)."""
        sub = self.store.table.get(endpoint_id)
        return sub if sub is not None and caller.sees(sub.partner_id) else None

    # -------------------------------------------------------------------------------- changes

    async def create(
        self, caller: Caller, new: NewEndpoint, *, surface: Surface = "rest", request_id: str | None = None
    ) -> CreatedEndpoint:
        """A new endpoint and its secret (shown this once)."""
        summary = {"events": len(new.events)}

        async def work(response: dict[str, Any]) -> CreatedEndpoint:
            owner = self._owner(caller, new.partner_id)
            grants = _grants(caller, owner, new.grants) if new.grants is not None else ()
            secret = _partner_or_new_secret(new.secret)
            sub_id = new_subscription_id()
            now = self.clock()
            ciphertext = self.box.encrypt(secret, associated=sub_id)
            sub = _build(
                id=sub_id,
                partner_id=owner,
                url=new.url,
                events=list(new.events),
                secrets=(StoredSecret(ciphertext=ciphertext, created_at=now),),
                active=new.active,
                ordered=new.ordered,
                max_concurrency=new.max_concurrency,
                rate_limit_per_s=new.rate_limit_per_s,
                description=new.description,
                grants=grants,
                created_at=now,
                updated_at=now,
            )
            await self._check_url(sub.url)
            async with self._write_lock:
                await self._catch_up()
                if len(self.store.table) >= self.max_subscriptions:
                    raise EndpointLimitReached(f"at most {self.max_subscriptions} webhook subscriptions")
                if owner is not None and self._count_of(owner) >= self.max_per_partner:
                    raise EndpointLimitReached(
                        f"at most {self.max_per_partner} webhook subscriptions per partner"
                    )
                await self._put(sub)
            response.update(endpoint_id=sub.id, url_host=loggable_url(sub.url))
            log.info(
                "webhook subscription %s created for %s (%s), partner %s",
                sub.id,
                loggable_url(sub.url),
                ", ".join(sub.events),
                sub.partner_id or "none (operator)",
            )
            return CreatedEndpoint(sub, secret, now)

        return await self.audit.run("createEndpoint", caller, surface, request_id, None, work, summary)

    async def update(
        self,
        caller: Caller,
        endpoint_id: str,
        changes: Mapping[str, Any],
        *,
        surface: Surface = "rest",
        request_id: str | None = None,
    ) -> Subscription:
        """The endpoint with ``changes`` (names of :data:`~processors.webhooks.subscriptions.
        UPDATABLE_FIELDS`; ``None`` clears ``description`` and ``rate_limit_per_s`` and is
        refused for the others).  ``active=True`` enables a disabled endpoint.  Changes equal to
        the current values are dropped; with none left, nothing is written."""
        unknown = sorted(set(changes) - UPDATABLE_FIELDS)
        if unknown:
            raise TypeError(f"not updatable: {', '.join(unknown)}")
        summary: dict[str, Any] = {"fields": sorted(changes)}

        async def work(response: dict[str, Any]) -> Subscription:
            nulls = sorted(name for name, value in changes.items() if value is None and name not in _NULLABLE)
            if nulls:
                raise InvalidEndpoint([f"{name}: must not be null" for name in nulls])
            wanted = dict(changes)
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(endpoint_id, caller)
                if "grants" in wanted:
                    wanted["grants"] = _grants(caller, sub.partner_id, wanted["grants"])
                wanted = {k: v for k, v in wanted.items() if _differs(getattr(sub, k), v)}
                if not wanted:
                    return sub
                try:
                    new = sub.updated(now=self.clock(), **wanted)
                except InvalidSubscription as exc:
                    raise InvalidEndpoint(exc.reasons) from None  # no input travels on
                if "url" in wanted:
                    await self._check_url(new.url)
                await self._put(new)
            if "url" in wanted:
                response["url_host"] = loggable_url(new.url)
            log.info("webhook subscription %s changed (%s)", new.id, ", ".join(sorted(wanted)))
            return new

        return await self.audit.run("updateEndpoint", caller, surface, request_id, endpoint_id, work, summary)

    async def disable(
        self,
        caller: Caller,
        endpoint_id: str,
        reason: str | None = None,
        *,
        surface: Surface = "rest",
        request_id: str | None = None,
    ) -> Subscription:
        """The endpoint, disabled with ``reason`` (shown with the endpoint; default: who did it).

        It receives nothing until enabled; its deliveries are logged as skipped.  Disabling a
        disabled endpoint changes nothing.
        """

        async def work(_response: dict[str, Any]) -> Subscription:
            text = (reason or "").strip()
            if len(text) > MAX_DISABLED_REASON_CHARS:
                raise InvalidEndpoint([f"reason: at most {MAX_DISABLED_REASON_CHARS} characters"])
            if not text:
                text = "disabled by an operator" if caller.is_operator else "disabled by the partner"
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(endpoint_id, caller)
                if sub.disabled_reason is not None:
                    return sub
                new = sub.disabled(text, self.clock())
                await self._put(new)
            log.info(
                "webhook subscription %s disabled (%s)",
                new.id,
                "operator" if caller.is_operator else "partner",
            )
            return new

        return await self.audit.run("disableEndpoint", caller, surface, request_id, endpoint_id, work)

    async def enable(
        self, caller: Caller, endpoint_id: str, *, surface: Surface = "rest", request_id: str | None = None
    ) -> Subscription:
        """The endpoint, active again (its disabled reason and failing clock cleared).

        Enabling an endpoint that receives deliveries changes nothing.
        """

        async def work(_response: dict[str, Any]) -> Subscription:
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(endpoint_id, caller)
                if sub.deliverable:
                    return sub
                new = sub.enabled(self.clock())
                await self._put(new)
            log.info("webhook subscription %s enabled", new.id)
            return new

        return await self.audit.run("enableEndpoint", caller, surface, request_id, endpoint_id, work)

    async def delete(
        self, caller: Caller, endpoint_id: str, *, surface: Surface = "rest", request_id: str | None = None
    ) -> None:
        """Delete the endpoint (a tombstone); returns once the table no longer has it."""

        async def work(_response: dict[str, Any]) -> None:
            async with self._write_lock:
                await self._catch_up()
                self._get(endpoint_id, caller)
                try:
                    await self.store.delete(endpoint_id)
                except BrokerError as exc:
                    raise _unavailable(endpoint_id, exc) from exc
            log.info("webhook subscription %s deleted", endpoint_id)

        await self.audit.run("deleteEndpoint", caller, surface, request_id, endpoint_id, work)

    async def rotate_secret(
        self,
        caller: Caller,
        endpoint_id: str,
        *,
        secret: SecretStr | None = None,
        grace_s: float | None = None,
        surface: Surface = "rest",
        request_id: str | None = None,
    ) -> RotatedSecret:
        """A new signing secret (``secret``, or a random one), shown once; the previous one keeps
        signing for ``grace_s`` (default ``default_grace_s``; 0..30 days), never past its own
        expiry."""
        grace = self.default_grace_s if grace_s is None else grace_s
        summary = {"grace_s": grace}

        async def work(_response: dict[str, Any]) -> RotatedSecret:
            new_secret = _partner_or_new_secret(secret)
            async with self._write_lock:
                await self._catch_up()
                sub = self._get(endpoint_id, caller)
                now = self.clock()
                ciphertext = self.box.encrypt(new_secret, associated=sub.id)
                try:
                    new = sub.rotated(ciphertext, now=now, grace_s=grace)
                except InvalidSubscription as exc:
                    raise InvalidEndpoint(exc.reasons) from None  # no input travels on
                previous_expires_at = now + timedelta(seconds=grace)
                current = sub.secrets[0].expires_at
                if current is not None and current < previous_expires_at:
                    previous_expires_at = current
                await self._put(new)
            log.info("webhook subscription %s: secret rotated (previous signs for %g s)", endpoint_id, grace)
            return RotatedSecret(new, new_secret, previous_expires_at, grace, now)

        return await self.audit.run("rotateSecret", caller, surface, request_id, endpoint_id, work, summary)

    # -------------------------------------------------------------------------------- helpers

    def _get(self, endpoint_id: str, caller: Caller) -> Subscription:
        sub = self.find(caller, endpoint_id)
        if sub is None:
            raise EndpointNotFound()
        return sub

    def _owner(self, caller: Caller, given: str | None) -> str | None:
        """Who a new endpoint belongs to: the calling partner, or the one the operator names."""
        if not caller.is_operator:
            if given is not None and given != caller.partner_id:
                raise InvalidEndpoint(
                    ["partner_id: leave it out or give your own; your key names your partner"]
                )
            return caller.partner_id
        if self.partners is None or given is None:
            # no registry, or the operator keeps it: an operator-owned endpoint (no partner key
            # sees it), like those from before endpoints had owners
            return given
        if not _PARTNER_ID.fullmatch(given) or self.partners.partner(given) is None:
            raise InvalidEndpoint(["partner_id: no such partner"])
        return given

    def _count_of(self, partner_id: str) -> int:
        return sum(1 for s in self.store.table.all() if s.partner_id == partner_id)

    async def _check_url(self, url: str) -> None:
        try:
            await self.url_check(url)
        except AddressRefused as exc:
            log.info("webhook URL refused for %s: %s", loggable_url(url), exc.reason)
            raise EndpointUrlRefused(exc.reason) from exc

    async def _catch_up(self) -> None:
        try:
            await self.store.wait_caught_up(self.catch_up_timeout_s)
        except BrokerError as exc:
            log.warning("webhook subscriptions not caught up: %s", exc)
            raise EndpointsUnavailable("the subscriptions could not be read; retry later") from exc

    async def _catch_up_quietly(self) -> None:
        try:
            await self.store.wait_caught_up(self.catch_up_timeout_s)
        except BrokerError as exc:
            log.warning("webhook subscriptions not caught up; answering from the local table: %s", exc)

    async def _put(self, sub: Subscription) -> None:
        try:
            await self.store.put(sub)
        except BrokerError as exc:
            raise _unavailable(sub.id, exc) from exc


def _unavailable(sub_id: str, exc: BrokerError) -> EndpointsUnavailable:
    log.error("webhook subscription %s: not stored: %s", sub_id, exc)
    return EndpointsUnavailable("the change could not be stored; retry later")


def _differs(current: Any, wanted: Any) -> bool:
    if isinstance(current, tuple) and isinstance(wanted, (list, tuple)):
        return current != tuple(dict.fromkeys(wanted))
    return bool(current != wanted)


def _grants(caller: Caller, owner: str | None, given: Sequence[str]) -> tuple[DataClass, ...]:
    """The grants an operator sets on its own endpoint (documented order, each once).

    A partner key may not set any (grants are the insurer's decision, not the partner's), and
    a partner's endpoint takes its partner's grants.
    """
    if not caller.is_operator:
        raise EndpointForbidden("grants are set by the insurer's operators, not with a partner key")
    if owner is not None:
        raise InvalidEndpoint(
            [
                "grants: a partner's subscriptions receive the partner's grants; "
                "set them on the partner (PATCH /api/v1/partners/{id})"
            ]
        )
    try:
        granted = parse_grants(given)
    except ValueError as exc:
        raise InvalidEndpoint([f"grants: {exc}"]) from exc
    return tuple(c for c in DATA_CLASSES if c in granted)


def _partner_or_new_secret(given: SecretStr | None) -> SecretStr:
    if given is None:
        return generate_secret()
    try:
        validate_secret(given.get_secret_value())
    except InvalidSecret as exc:
        raise InvalidEndpoint([f"secret: {exc.reason}"]) from exc
    return given


def _build(**fields: Any) -> Subscription:
    try:
        return Subscription.create(**fields)
    except InvalidSubscription as exc:
        raise InvalidEndpoint(exc.reasons) from None  # no input travels on


# ------------------------------------------------------------------------------------ deliveries


class DeliveryService:
    """Test events, redelivery and recovery for a caller's own endpoints (``services.deliveries``).

    Interface (each checks ownership first through ``endpoints``: another partner's endpoint is
    :class:`EndpointNotFound`, as an unknown one; an endpoint that receives nothing now is
    :class:`EndpointDisabled`; a broker that does not answer is :class:`EndpointsUnavailable`;
    each call is audited like the changes of :class:`EndpointService`):

    ``await send_test_event(caller, endpoint_id, *, surface, request_id) -> TestEventSent``
        Produces a ``webhook.test`` dispatch record for the endpoint
        (:func:`~processors.webhooks.delivery.webhook_test_record`) and returns once the broker
        acknowledged it; the webhooks app signs, delivers and logs it like any delivery.
    ``await redeliver(caller, endpoint_id, webhook_id, *, surface, request_id) -> Redelivered``
        Copies the dispatch record of the message's latest attempt (same webhook id) to the
        dispatch topic; :class:`MessageNotFound` when the endpoint has no such message.
    ``await recover(caller, endpoint_id, since, *, surface, request_id) -> Redelivered``
        The same for every message of the endpoint whose latest attempt failed at or after
        ``since`` (timezone-aware), once each.

    Before looking a message up, the delivery-log view is given ``catch_up_timeout_s`` to hold
    everything the log held at the call (``Redelivered.caught_up`` says whether it did).  The
    view, its feed and the redeliverer are the operator routes' (:mod:`processors.api.
    webhook_ops`), started and stopped by their owner; this object owns only the producer of
    test events: ``start()`` creates it (unless ``producer`` was given) and ``stop()`` closes it
    (the GraphQL routes start and stop it with the server: ``processors.apps.registry``).
    """

    def __init__(
        self,
        endpoints: EndpointService,
        view: AttemptsView,
        feed: _CatchingUp,
        redeliverer: _Redelivering,
        dispatch_topic: str,
        *,
        kafka: KafkaClients | None = None,
        producer: OutputProducer | None = None,
        catch_up_timeout_s: float = 2.0,
        produce_timeout_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        audit: AuditLogger | None = None,
    ) -> None:
        if producer is None and kafka is None:
            raise ValueError("give a producer, or the Kafka clients to make one")
        self.endpoints = endpoints
        self.view = view
        self.feed = feed
        self.redeliverer = redeliverer
        self.dispatch_topic = dispatch_topic
        self.catch_up_timeout_s = catch_up_timeout_s
        self.produce_timeout_s = produce_timeout_s
        self.clock = clock
        self.audit = _Audit(audit) if audit is not None else endpoints.audit

        def producer_config() -> dict[str, Any]:
            # A partner waits for the answer: a record that cannot be written fails, it does not linger.
            assert kafka is not None  # without a producer there are Kafka clients (checked above)
            return kafka.producer(delivery_timeout_s=produce_timeout_s, linger_ms=0)

        self._slot = ProducerSlot(producer, producer_config, stop_timeout_s=produce_timeout_s)

    @classmethod
    def create(
        cls,
        endpoints: EndpointService,
        ops: WebhookOpsRoutes,
        *,
        bootstrap_servers: str,
        client_overrides: Mapping[str, str] | None = None,
        catch_up_timeout_s: float = 2.0,
    ) -> DeliveryService:
        """The service over the operator routes' machinery (``ops``: a
        :class:`~processors.api.webhook_ops.WebhookOpsRoutes`, whose view, feed and
        redeliverer it uses); its own producer of test events (no I/O here)."""
        return cls(
            endpoints,
            ops.view,
            ops.feed,
            ops.redeliverer,
            ops.redeliverer.dispatch_topic,
            kafka=KafkaClients(bootstrap_servers, client_overrides or {}),
            catch_up_timeout_s=catch_up_timeout_s,
        )

    async def start(self) -> None:
        """Create the producer of test events (unless one was given)."""
        await self._slot.start()

    async def stop(self) -> None:
        """Flush and close the producer this created (a given one is left to its owner)."""
        await self._slot.stop()

    # -------------------------------------------------------------------------------- operations

    async def send_test_event(
        self, caller: Caller, endpoint_id: str, *, surface: Surface = "portal", request_id: str | None = None
    ) -> TestEventSent:
        """Queue a signed ``webhook.test`` delivery to the endpoint (see the class docstring)."""

        async def work(response: dict[str, Any]) -> TestEventSent:
            sub = await self._deliverable(caller, endpoint_id)
            producer = self._slot.producer
            if producer is None:
                raise EndpointsUnavailable("test events cannot be sent now; retry later")
            event_id = str(uuid.uuid4())
            record = webhook_test_record(
                sub.id, event_id=event_id, at=self.clock(), topic=self.dispatch_topic
            )
            try:
                async with asyncio.timeout(self.produce_timeout_s + 5.0):
                    await producer.send_all([record])
            except (BrokerError, TimeoutError) as exc:
                log.error("webhook subscription %s: test event not queued: %s", sub.id, exc)
                raise EndpointsUnavailable("the test event could not be queued; retry later") from exc
            sent = TestEventSent(sub.id, webhook_id_for(sub.id, event_id), event_id)
            response.update(webhook_id=sent.webhook_id, event_id=event_id, event_type=TEST_EVENT_TYPE)
            log.info("webhook subscription %s: test event %s queued", sub.id, sent.webhook_id)
            return sent

        return await self.audit.run("sendTestEvent", caller, surface, request_id, endpoint_id, work)

    async def redeliver(
        self,
        caller: Caller,
        endpoint_id: str,
        webhook_id: str,
        *,
        surface: Surface = "portal",
        request_id: str | None = None,
    ) -> Redelivered:
        """Deliver one message again (a new attempt, same webhook id)."""

        async def work(response: dict[str, Any]) -> Redelivered:
            sub = await self._deliverable(caller, endpoint_id)
            caught_up = await self.feed.wait_caught_up(self.catch_up_timeout_s)
            latest = self.view.latest(sub.id, webhook_id)
            if latest is None:
                raise MessageNotFound()
            return await self._copy(sub.id, [latest.job], caught_up, response)

        return await self.audit.run(
            "redeliver", caller, surface, request_id, endpoint_id, work, {"webhook_id": webhook_id[:64]}
        )

    async def recover(
        self,
        caller: Caller,
        endpoint_id: str,
        since: datetime,
        *,
        surface: Surface = "portal",
        request_id: str | None = None,
    ) -> Redelivered:
        """Deliver again every message of the endpoint whose latest attempt failed since ``since``."""

        async def work(response: dict[str, Any]) -> Redelivered:
            if since.utcoffset() is None:
                raise InvalidEndpoint(["since: must carry a timezone"])
            sub = await self._deliverable(caller, endpoint_id)
            caught_up = await self.feed.wait_caught_up(self.catch_up_timeout_s)
            failed = self.view.failed_since(sub.id, since)
            return await self._copy(sub.id, [m.job for m in failed], caught_up, response)

        summary = {"since": since.astimezone(UTC).isoformat() if since.utcoffset() is not None else None}
        return await self.audit.run("recover", caller, surface, request_id, endpoint_id, work, summary)

    # -------------------------------------------------------------------------------- helpers

    async def _deliverable(self, caller: Caller, endpoint_id: str) -> Subscription:
        sub = await self.endpoints.get(caller, endpoint_id)
        if not sub.deliverable:
            what = "disabled" if sub.disabled_reason is not None else "not active"
            raise EndpointDisabled(f"the endpoint is {what}: enable it first; nothing was sent")
        return sub

    async def _copy(
        self, sub_id: str, jobs: Sequence[JobRef], caught_up: bool, response: dict[str, Any]
    ) -> Redelivered:
        try:
            report = await self.redeliverer.redeliver(jobs, expect_subscription=sub_id)
        except BrokerError as exc:
            log.error("webhook redelivery for %s failed: %s", sub_id, exc)
            raise EndpointsUnavailable("the messages could not be queued again; retry later") from exc
        done = Redelivered(report.redelivered, report.missing_count + len(report.mismatched), caught_up)
        response.update(queued=done.queued, missing=done.missing, caught_up=caught_up)
        log.info("webhook redelivery for %s: %d queued, %d missing", sub_id, done.queued, done.missing)
        return done
