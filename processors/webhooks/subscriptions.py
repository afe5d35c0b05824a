"""Partner webhook subscriptions: the model, event filters and the local table.

Pure code: no Kafka, no HTTP.  A :class:`Subscription` is immutable; every change returns a
new version (``version`` + 1).  It belongs to the partner ``partner_id`` (see
:mod:`processors.partners`); one without (written before subscriptions had owners) is the
operator's: only the operator token sees and changes it.  Its secrets are kept encrypted
(:class:`StoredSecret`, newest first); :meth:`Subscription.to_record` is the value written to
the compacted ``integrations.webhook.subscriptions`` topic (key = the id) and never holds a
secret in clear.

What its deliveries carry is the partner-facing projection of each event
(:mod:`processors.partners.projection`) for its *effective grants*
(:func:`effective_grants`): a partner's subscription receives the classes of personal data
granted to the partner, at the moment each event is fanned out; an operator's own
subscription receives the classes set on the subscription itself (``grants``, operator token
only).  Both default to none.

Event filters::

    policy.issued      exactly this event type
    policy.*           every type under ``policy.`` (``policy.issued``, ``policy.cancelled``...)
    *                  every event type

A new or changed filter list must name event types this build knows (a typo is refused with
the known types); a stored record is read back with the grammar check only, so a table never
drops a subscription for a type a newer build added.

:class:`SubscriptionTable` is the materialised topic: ``apply(key, value)`` per record
(``None`` = tombstone), ``matching(event_type)`` for the fan-out (indexed, cached per type).
"""

from __future__ import annotations

import json
import logging
import re
import secrets as _random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from processors.contract import EVENT_TYPES
from processors.errors import DecodeError, ValidationFailed
from processors.partners.model import PARTNER_ID_PATTERN, Partner, grants_field
from processors.partners.projection import NO_GRANTS, DataClass, Grants
from processors.utc import UtcDatetime
from processors.webhooks.secrets import StoredSecret

__all__ = [
    "ID_PATTERN",
    "MAX_FILTERS",
    "UPDATABLE_FIELDS",
    "GrantDirectory",
    "InvalidSubscription",
    "Subscription",
    "SubscriptionTable",
    "effective_grants",
    "filter_matches",
    "loggable_url",
    "new_subscription_id",
    "summarise_errors",
    "valid_event_type",
]

log = logging.getLogger(__name__)

ID_PATTERN: Final = r"^ep_[0-9a-f]{24}$"
MAX_FILTERS: Final = 100
MAX_SECRETS: Final = 10
MAX_URL_CHARS: Final = 2048
MAX_DISABLED_REASON_CHARS: Final = 500
MAX_GRACE_S: Final = 30 * 24 * 3600
UPDATABLE_FIELDS: Final = frozenset(
    {"url", "events", "active", "ordered", "max_concurrency", "rate_limit_per_s", "description", "grants"}
)
"""What :meth:`Subscription.updated` may change (secrets rotate with :meth:`Subscription.rotated`)."""

_SEGMENT = r"[a-z][a-z0-9_]*"
_EXACT = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})+")
_PREFIX = re.compile(rf"(?:{_SEGMENT}\.)+\*")
_MAX_FILTER_CHARS = 128
_ID = re.compile(ID_PATTERN)
_STORED: Final = "stored"
"""Validation context key: True when reading a record back (grammar check only)."""


def new_subscription_id() -> str:
    """``ep_`` + 24 lowercase hex characters (96 random bits)."""
    return "ep_" + _random.token_hex(12)


def valid_event_type(value: str) -> bool:
    """Whether ``value`` follows the event-type grammar (``policy.issued``, ``customer.kyc_requested``)."""
    return len(value) <= _MAX_FILTER_CHARS and _EXACT.fullmatch(value) is not None


def filter_matches(event_filter: str, event_type: str) -> bool:
    """Whether one filter (``*``, ``policy.*`` or ``policy.issued``) selects ``event_type``."""
    if event_filter == "*":
        return True
    if event_filter.endswith(".*"):
        return event_type.startswith(event_filter[:-1])
    return event_filter == event_type


def loggable_url(url: str) -> str:
    """``url`` fit for a log line: scheme, host and port only (no userinfo, path or query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _public_url(url: str) -> str:
    """``url`` with a password in its userinfo masked (the rest is what the partner registered)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:****@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _printable(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --- field checks -----------------------------------------------------------------------------


def _check_url(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise PydanticCustomError("url", "must be at most {limit} characters", {"limit": MAX_URL_CHARS})
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise PydanticCustomError("url", "must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise PydanticCustomError("url", "is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise PydanticCustomError("url", "must be an absolute http:// or https:// URL")
    if not parts.hostname:
        raise PydanticCustomError("url", "must name a host")
    if port == 0:
        raise PydanticCustomError("url", "must not use port 0")
    return value


def _check_filter(event_filter: str, *, known: bool) -> None:
    if len(event_filter) > _MAX_FILTER_CHARS:
        raise PydanticCustomError(
            "event_filter", "an event filter is at most {limit} characters", {"limit": _MAX_FILTER_CHARS}
        )
    if event_filter == "*":
        return
    if _PREFIX.fullmatch(event_filter):
        if known and not any(filter_matches(event_filter, t) for t in EVENT_TYPES):
            raise PydanticCustomError(
                "unknown_event_type",
                "'{filter}' matches no known event type (known: {known})",
                {"filter": _printable(event_filter), "known": ", ".join(sorted(EVENT_TYPES))},
            )
        return
    if not _EXACT.fullmatch(event_filter):
        raise PydanticCustomError(
            "event_filter",
            "'{filter}' is not an event filter: use an event type (policy.issued), a prefix (policy.*) or *",
            {"filter": _printable(event_filter)},
        )
    if known and event_filter not in EVENT_TYPES:
        raise PydanticCustomError(
            "unknown_event_type",
            "unknown event type '{filter}' (known: {known})",
            {"filter": _printable(event_filter), "known": ", ".join(sorted(EVENT_TYPES))},
        )


def summarise_errors(exc: ValidationError) -> list[str]:
    """``field: message`` per error, never the offending input (it may be a secret)."""
    reasons = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        reasons.append(f"{where}: {error['msg']}")
    return reasons


class InvalidSubscription(ValidationFailed):
    """A subscription (or a change to one) breaks the rules; ``reasons`` are safe to show."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons) or "invalid subscription")
        self.reasons = tuple(reasons)

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidSubscription:
        return cls(summarise_errors(exc))


# --- the model --------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class Subscription(BaseModel):
    """One partner endpoint and the events it receives.  Immutable; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(default_factory=new_subscription_id)
    partner_id: Annotated[str, Field(pattern=PARTNER_ID_PATTERN)] | None = None
    """The partner it belongs to; None: the operator's (a subscription from before owners)."""
    url: Annotated[str, AfterValidator(_check_url)]
    events: tuple[str, ...]
    """Filters, deduplicated in their given order."""
    secrets: tuple[StoredSecret, ...] = Field(repr=False)
    """Encrypted secrets, newest first (the newest has no expiry; older ones sign until theirs)."""
    active: bool = True
    ordered: bool = False
    """Deliver each entity's (subject's) events one at a time, in order."""
    max_concurrency: int = Field(default=10, ge=1, le=100)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=10_000)
    description: str | None = Field(default=None, max_length=200)
    grants: tuple[DataClass, ...] = ()
    """An operator's own subscription (no ``partner_id``): the classes of personal data its
    deliveries carry.  Set with the operator token only; a partner's subscription receives
    the partner's grants instead (see :func:`effective_grants`)."""
    created_at: UtcDatetime = Field(default_factory=_now)
    updated_at: UtcDatetime = Field(default_factory=_now)
    disabled_reason: str | None = Field(default=None, min_length=1, max_length=MAX_DISABLED_REASON_CHARS)
    disabled_at: UtcDatetime | None = None
    failing_since: UtcDatetime | None = None
    """Start of the current run of failed deliveries (None after a success)."""
    version: int = Field(default=1, ge=1)

    @field_validator("events", mode="after")
    @classmethod
    def _filters(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value:
            raise PydanticCustomError("events", "at least one event filter is required")
        stored = bool(info.context and info.context.get(_STORED))
        unique = tuple(dict.fromkeys(value))
        if len(unique) > MAX_FILTERS:
            raise PydanticCustomError("events", "at most {limit} event filters", {"limit": MAX_FILTERS})
        for event_filter in unique:
            _check_filter(event_filter, known=not stored)
        return unique

    @field_validator("grants", mode="before")
    @classmethod
    def _grants(cls, value: Any, info: ValidationInfo) -> Any:
        return grants_field(value, info)

    @field_validator("secrets", mode="after")
    @classmethod
    def _secrets(cls, value: tuple[StoredSecret, ...]) -> tuple[StoredSecret, ...]:
        if not value:
            raise PydanticCustomError("secrets", "at least one secret is required")
        if len(value) > MAX_SECRETS:
            raise PydanticCustomError("secrets", "at most {limit} secrets", {"limit": MAX_SECRETS})
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.disabled_reason is None) != (self.disabled_at is None):
            raise PydanticCustomError("disabled", "disabled_reason and disabled_at go together")
        if self.disabled_reason is not None and self.active:
            raise PydanticCustomError("disabled", "a disabled subscription is not active")
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (loggable_url(value) if name == "url" else value)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, **fields: Any) -> Subscription:
        """A new subscription from ``fields``; :class:`InvalidSubscription` with reasons if invalid."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidSubscription.from_validation(exc) from exc

    # -- queries -----------------------------------------------------------------------------

    def matches(self, event_type: str) -> bool:
        """Whether one of the filters selects ``event_type`` (whatever ``active`` says)."""
        return any(filter_matches(f, event_type) for f in self.events)

    @property
    def deliverable(self) -> bool:
        """Active and not disabled: deliveries are made."""
        return self.active and self.disabled_reason is None

    def rotation_expires_at(self, now: datetime | None = None) -> datetime | None:
        """When the last previous secret stops signing, if a rotation grace is running."""
        moment = now or _now()
        running = [s.expires_at for s in self.secrets[1:] if s.expires_at is not None and s.active(moment)]
        return max(running) if running else None

    def public_view(self, now: datetime | None = None) -> dict[str, Any]:
        """What the API shows: no secret, no ciphertext, a userinfo password masked."""
        return {
            "id": self.id,
            "partner_id": self.partner_id,
            "url": _public_url(self.url),
            "events": list(self.events),
            "active": self.active,
            "ordered": self.ordered,
            "max_concurrency": self.max_concurrency,
            "rate_limit_per_s": self.rate_limit_per_s,
            "description": self.description,
            "grants": [str(g) for g in self.grants],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "disabled_reason": self.disabled_reason,
            "disabled_at": _iso(self.disabled_at),
            "failing_since": _iso(self.failing_since),
            "secret_rotation_expires_at": _iso(self.rotation_expires_at(now)),
            "version": self.version,
        }

    # -- records -----------------------------------------------------------------------------

    def to_record(self) -> bytes:
        """The compacted-topic value: compact JSON, secrets encrypted only."""
        document = self.model_dump(mode="json")
        document["secrets"] = [s.to_json() for s in self.secrets]
        return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_record(cls, value: bytes) -> Subscription:
        """Read a record back; :class:`DecodeError` (no content in its reason) if it cannot be.

        Unknown fields are ignored and event filters are checked against the grammar only, so
        records written by a newer build still load.
        """
        try:
            document = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("subscription record is not JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("secrets"), list):
            raise DecodeError("subscription record is not a subscription object")
        try:
            document["secrets"] = tuple(_stored_secret(s) for s in document["secrets"])
        except (DecodeError, ValueError, TypeError) as exc:
            raise DecodeError("subscription record has invalid fields: secrets") from exc
        # Fields a newer build added are left out rather than losing the whole subscription.
        document = {name: value for name, value in document.items() if name in cls.model_fields}
        try:
            return cls.model_validate(document, context={_STORED: True})
        except ValidationError as exc:
            fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}) or ["body"]
            raise DecodeError(f"subscription record has invalid fields: {', '.join(fields)}") from exc

    # -- new versions ------------------------------------------------------------------------

    def _next(self, changes: Mapping[str, Any], *, now: datetime | None, stored: bool = True) -> Subscription:
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields.update(changes)
        fields["version"] = self.version + 1
        fields["updated_at"] = now or _now()
        try:
            return type(self).model_validate(fields, context={_STORED: stored})
        except ValidationError as exc:
            raise InvalidSubscription.from_validation(exc) from exc

    def updated(self, *, now: datetime | None = None, **changes: Any) -> Subscription:
        """A new version with ``changes`` (names in :data:`UPDATABLE_FIELDS`).

        ``active=True`` on an inactive subscription enables it (see :meth:`enabled`); new
        ``events`` must name known event types.  Raises :class:`InvalidSubscription`.
        """
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise TypeError(f"not updatable: {', '.join(sorted(unknown))}")
        changes = dict(changes)
        if changes.get("active") is True and not self.active:
            changes.update(disabled_reason=None, disabled_at=None, failing_since=None)
        return self._next(changes, now=now, stored="events" not in changes)

    def rotated(self, new_ciphertext: str, *, now: datetime, grace_s: float = 86_400) -> Subscription:
        """A new version signing with ``new_ciphertext`` first.

        The previous newest secret keeps signing until ``now + grace_s`` (0: stops at once);
        older secrets keep their own expiry, expired ones are dropped.
        """
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise InvalidSubscription([f"grace_s: must be between 0 and {MAX_GRACE_S}"])
        grace_end = now + timedelta(seconds=grace_s)
        kept: list[StoredSecret] = [StoredSecret(ciphertext=new_ciphertext, created_at=now, expires_at=None)]
        for index, old in enumerate(self.secrets):
            expires_at = old.expires_at
            if index == 0:
                expires_at = grace_end if expires_at is None else min(expires_at, grace_end)
            if expires_at is not None and expires_at <= now:
                continue
            kept.append(replace(old, expires_at=expires_at))
        return self._next({"secrets": tuple(kept[:MAX_SECRETS])}, now=now)

    def disabled(self, reason: str, now: datetime) -> Subscription:
        """A new version that receives nothing until enabled; ``reason`` is shown to operators."""
        text = reason.strip() or "disabled"
        return self._next(
            {
                "active": False,
                "disabled_reason": _printable(text, MAX_DISABLED_REASON_CHARS),
                "disabled_at": now,
            },
            now=now,
        )

    def enabled(self, now: datetime) -> Subscription:
        """A new version that is active again, with ``disabled_*`` and ``failing_since`` cleared."""
        return self._next(
            {"active": True, "disabled_reason": None, "disabled_at": None, "failing_since": None}, now=now
        )

    def with_failing_since(self, moment: datetime | None, *, now: datetime | None = None) -> Subscription:
        """A new version whose current run of failures started at ``moment`` (None: it ended)."""
        return self._next({"failing_since": moment}, now=now)


def _stored_secret(document: Any) -> StoredSecret:
    if not isinstance(document, dict):
        raise TypeError("a stored secret is an object")
    return StoredSecret.from_json(document)


# --- grants ---------------------------------------------------------------------------------


class GrantDirectory(Protocol):
    """Where a partner's grants are read (:class:`~processors.partners.table.PartnerTable`)."""

    def partner(self, partner_id: str) -> Partner | None: ...


def effective_grants(sub: Subscription, partners: GrantDirectory | None) -> Grants:
    """The classes of personal data ``sub``'s deliveries carry.

    A partner's subscription: the partner's grants as ``partners`` shows them now (none when
    it does not show the partner, or there is no registry); its own ``grants`` are ignored.
    An operator's own subscription: the ``grants`` set on it.
    """
    if sub.partner_id is None:
        return frozenset(sub.grants) if sub.grants else NO_GRANTS
    partner = partners.partner(sub.partner_id) if partners is not None else None
    if partner is None or not partner.grants:
        return NO_GRANTS
    return frozenset(partner.grants)


# --- the table --------------------------------------------------------------------------------


class SubscriptionTable:
    """The subscriptions topic materialised in memory (thread-safe).

    ``matching`` looks up exact types and each dotted prefix of the type in indexes of the
    deliverable subscriptions, and caches the answer per event type until the next change.
    """

    _CACHE_LIMIT: Final = 4096

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subs: dict[str, Subscription] = {}
        self._exact: dict[str, set[str]] = {}
        self._prefix: dict[str, set[str]] = {}
        self._everything: set[str] = set()
        self._cache: dict[str, tuple[Subscription, ...]] = {}
        self.skipped = 0
        """Records that could not be decoded (left out, counted, logged without content)."""

    def __len__(self) -> int:
        return len(self._subs)

    def __contains__(self, sub_id: object) -> bool:
        return sub_id in self._subs

    def get(self, sub_id: str) -> Subscription | None:
        return self._subs.get(sub_id)

    def all(self) -> list[Subscription]:
        """Every subscription (active or not), by id."""
        with self._lock:
            return sorted(self._subs.values(), key=lambda s: s.id)

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one topic record; False when it was skipped (bad key or undecodable value).

        A tombstone (``value`` None) deletes.  An undecodable value leaves the previous entry
        for the key as it was.
        """
        sub_id = _key_id(key)
        if sub_id is None:
            self._skip("a record with an invalid key", None)
            return False
        if value is None:
            self.put(sub_id, None)
            return True
        try:
            sub = Subscription.from_record(value)
        except DecodeError as exc:
            self._skip(exc.reason, sub_id)
            return False
        if sub.id != sub_id:
            self._skip("the record's id differs from its key", sub_id)
            return False
        self.put(sub_id, sub)
        return True

    def put(self, sub_id: str, sub: Subscription | None) -> None:
        """Set (or with None, remove) one entry directly."""
        with self._lock:
            old = self._subs.pop(sub_id, None)
            if old is not None:
                self._unindex(old)
            if sub is not None:
                self._subs[sub_id] = sub
                self._index(sub)
            self._cache.clear()

    def matching(self, event_type: str) -> list[Subscription]:
        """The deliverable subscriptions whose filters select ``event_type``, by id."""
        cached = self._cache.get(event_type)
        if cached is not None:
            return list(cached)
        with self._lock:
            ids = set(self._everything)
            ids |= self._exact.get(event_type, set())
            for prefix in _prefixes(event_type):
                ids |= self._prefix.get(prefix, set())
            found = tuple(self._subs[i] for i in sorted(ids))
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[event_type] = found
        return list(found)

    def _index(self, sub: Subscription) -> None:
        if not sub.deliverable:
            return
        for event_filter in sub.events:
            if event_filter == "*":
                self._everything.add(sub.id)
            elif event_filter.endswith(".*"):
                self._prefix.setdefault(event_filter[:-1], set()).add(sub.id)
            else:
                self._exact.setdefault(event_filter, set()).add(sub.id)

    def _unindex(self, sub: Subscription) -> None:
        self._everything.discard(sub.id)
        for event_filter in sub.events:
            if event_filter == "*":
                continue
            if event_filter.endswith(".*"):
                index, name = self._prefix, event_filter[:-1]
            else:
                index, name = self._exact, event_filter
            ids = index.get(name)
            if ids is not None:
                ids.discard(sub.id)
                if not ids:
                    del index[name]

    def _skip(self, reason: str, sub_id: str | None) -> None:
        self.skipped += 1
        log.warning(
            "webhook subscriptions: record for %s skipped (%s); %d skipped so far",
            sub_id or "an unreadable key",
            reason,
            self.skipped,
        )


def _key_id(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if _ID.fullmatch(text) else None


def _prefixes(event_type: str) -> Iterable[str]:
    """``a.b.c`` → ``a.``, ``a.b.`` (the keys of prefix filters that can select it)."""
    position = event_type.find(".")
    while position != -1:
        yield event_type[: position + 1]
        position = event_type.find(".", position + 1)
