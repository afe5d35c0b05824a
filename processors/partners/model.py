"""Partners and their API keys: the model, validation and the registry topic's records.

Pure code: no Kafka, no HTTP.  Every object is immutable; a change returns a new version.

A :class:`Partner` is a broker, a reinsurer, a service provider...: an id (``prt_`` and 24
hex characters), a name, a kind, a status (``active`` or ``suspended``: a suspended partner's
keys are refused) and the codes that tie it to data: ``reinsurer_code`` for a reinsurer (the
``reinsurer.code`` of its treaties in ``treaties.yaml``, e.g. ``RE001``), ``distributor_code``
for a broker.  Its ``grants`` are the classes of personal data its webhook deliveries may
carry (:mod:`processors.partners.projection`; none by default).  Only an operator sets them.

An :class:`ApiKey` is one key of a partner: its id (the visible part of the key), a digest of
the key (never the key; see :mod:`processors.partners.keys`), when it was made, when it
expires (optional) and when it was revoked.  When it was last used is a separate
:class:`KeyUsage` record, so the frequent usage writes can never undo a revocation.

The registry topic (``integrations.partners``, compacted) holds three kinds of records, told
apart by their key::

    prt_<24 hex>                 a partner              {"type": "partner", ...}
    pk_live_<key id>             an API key             {"type": "api_key", ...}
    pk_live_<key id>.last_used   when a key was used    {"type": "api_key_usage", ...}

A record is read back with the kind and status checked against their grammar only, so one
written by a newer build (a new kind) still loads; a status other than ``active`` refuses the
partner's keys whatever it is.
"""

from __future__ import annotations

import json
import re
import secrets as _random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

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

from processors.errors import DecodeError, ProcessorsError
from processors.partners.keys import DIGEST_PATTERN, KEY_ID_PATTERN, KEY_PREFIX
from processors.partners.projection import DATA_CLASSES, DataClass
from processors.utc import UtcDatetime

__all__ = [
    "ACTIVE",
    "KINDS",
    "MAX_ACTIVE_KEYS",
    "PARTNER_ID_PATTERN",
    "STATUSES",
    "SUSPENDED",
    "UPDATABLE_FIELDS",
    "ApiKey",
    "InvalidPartner",
    "KeyState",
    "KeyUsage",
    "Partner",
    "PartnerConflict",
    "PartnerError",
    "PartnerNotFound",
    "RegistryEntry",
    "decode_record",
    "grants_field",
    "iso",
    "key_record_key",
    "new_partner_id",
    "summarise_errors",
    "usage_record_key",
]

PARTNER_ID_PATTERN: Final = r"^prt_[0-9a-f]{24}$"
ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"
STATUSES: Final = (ACTIVE, SUSPENDED)
KINDS: Final = ("broker", "reinsurer", "service_provider", "other")
"""The kinds a new partner may have (a stored record may carry one a newer build added)."""
MAX_NAME_CHARS: Final = 200
MAX_KEY_NAME_CHARS: Final = 100
MAX_ACTIVE_KEYS: Final = 10
"""Keys a partner may hold that are neither revoked nor expired (enough to rotate)."""
UPDATABLE_FIELDS: Final = frozenset({"name", "status", "reinsurer_code", "distributor_code", "grants"})
"""What :meth:`Partner.updated` may change (the kind is fixed at creation)."""
USAGE_SUFFIX: Final = ".last_used"

_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STORED: Final = "stored"
"""Validation context key: True when reading a record back (grammar checks only)."""

KeyState = Literal["active", "expired", "revoked"]


# --- errors -----------------------------------------------------------------------------------


class PartnerError(ProcessorsError):
    """A registry operation was refused; the message is safe to show and log."""


class InvalidPartner(PartnerError):
    """A partner, a key or a change to one breaks the rules; ``reasons`` are ``field: rule``."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons) or "invalid request")
        self.reasons = tuple(reasons)

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidPartner:
        return cls(summarise_errors(exc))


class PartnerNotFound(PartnerError):
    """No such partner, or no such key of that partner."""


class PartnerConflict(PartnerError):
    """The change conflicts with the registry (a code another partner has, too many keys)."""


def summarise_errors(exc: ValidationError) -> list[str]:
    """``field: message`` per error, never the offending input."""
    reasons = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        reasons.append(f"{where}: {error['msg']}")
    return reasons


# --- fields -----------------------------------------------------------------------------------


def new_partner_id() -> str:
    """``prt_`` + 24 lowercase hex characters (96 random bits)."""
    return "prt_" + _random.token_hex(12)


def _now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """``2025-03-01T12:00:00Z`` (UTC), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: str, limit: int, what: str) -> str:
    text = value.strip()
    if not text:
        raise PydanticCustomError("text", "must not be empty")
    if len(text) > limit:
        raise PydanticCustomError("text", "must be at most {limit} characters", {"limit": limit})
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text):
        raise PydanticCustomError("text", "{what} must not contain control characters", {"what": what})
    return text


def _name(value: str) -> str:
    return _text(value, MAX_NAME_CHARS, "a name")


def _key_name(value: str) -> str:
    return _text(value, MAX_KEY_NAME_CHARS, "a key name")


def _code(value: str) -> str:
    if _CODE.fullmatch(value) is None:
        raise PydanticCustomError("code", "must be 1 to 64 ASCII letters, digits, '_', '.' or '-'")
    return value


Code = Annotated[str, AfterValidator(_code)]


def grants_field(value: Any, info: ValidationInfo) -> Any:
    """Grants in the documented order, each once.  Read back from a record, a class this build
    does not know (a newer build's) is left out: this build cannot project it, and leaving it
    out sends less, never more."""
    if not isinstance(value, list | tuple | set | frozenset):
        return value
    if info.context and info.context.get(_STORED):
        value = [v for v in value if v in DATA_CLASSES]
    known = [v for v in value if v in DATA_CLASSES]
    if len(known) != len(value):
        return value  # the unknown value fails validation with its reason
    given = set(known)
    return tuple(c for c in DATA_CLASSES if c in given)


def _word(value: str, known: Sequence[str], what: str, info: ValidationInfo) -> str:
    stored = bool(info.context and info.context.get(_STORED))
    if stored:
        if _WORD.fullmatch(value) is None:
            raise PydanticCustomError("word", "is not a valid {what}", {"what": what})
        return value
    if value not in known:
        raise PydanticCustomError("unknown", "must be one of {known}", {"known": ", ".join(known)})
    return value


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    _TYPE: ClassVar[str] = ""

    def to_record(self) -> bytes:
        """The topic value: compact JSON with a ``type``."""
        document = {"type": self._TYPE, **self.model_dump(mode="json")}
        return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> Self:
        # Fields a newer build added are left out rather than losing the whole record.
        known = {name: value for name, value in document.items() if name in cls.model_fields}
        try:
            return cls.model_validate(known, context={_STORED: True})
        except ValidationError as exc:
            fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}) or ["body"]
            raise DecodeError(f"{cls._TYPE} record has invalid fields: {', '.join(fields)}") from exc


# --- partners ---------------------------------------------------------------------------------


class Partner(_Record):
    """One partner.  Immutable; see the module docstring."""

    _TYPE: ClassVar[str] = "partner"

    id: Annotated[str, Field(pattern=PARTNER_ID_PATTERN)] = Field(default_factory=new_partner_id)
    name: Annotated[str, AfterValidator(_name)]
    kind: str
    status: str = ACTIVE
    reinsurer_code: Code | None = None
    """A reinsurer's code in the treaty book (``RE001``); reinsurers only."""
    distributor_code: Code | None = None
    """A broker's distributor code; brokers only."""
    grants: tuple[DataClass, ...] = ()
    """The classes of personal data its deliveries may carry (operators set them; none by default)."""
    created_at: UtcDatetime = Field(default_factory=_now)
    updated_at: UtcDatetime = Field(default_factory=_now)
    version: int = Field(default=1, ge=1)

    @field_validator("kind", mode="after")
    @classmethod
    def _kind(cls, value: str, info: ValidationInfo) -> str:
        return _word(value, KINDS, "kind", info)

    @field_validator("status", mode="after")
    @classmethod
    def _status(cls, value: str, info: ValidationInfo) -> str:
        return _word(value, STATUSES, "status", info)

    @field_validator("grants", mode="before")
    @classmethod
    def _grants(cls, value: Any, info: ValidationInfo) -> Any:
        return grants_field(value, info)

    @model_validator(mode="after")
    def _codes(self) -> Self:
        if self.reinsurer_code is not None and self.kind != "reinsurer":
            raise PydanticCustomError("code", "reinsurer_code is for partners of kind reinsurer")
        if self.distributor_code is not None and self.kind != "broker":
            raise PydanticCustomError("code", "distributor_code is for partners of kind broker")
        return self

    @property
    def active(self) -> bool:
        """Its keys are accepted (any status but ``active`` refuses them)."""
        return self.status == ACTIVE

    @classmethod
    def create(cls, **fields: Any) -> Partner:
        """A new partner from ``fields``; :class:`InvalidPartner` with reasons if invalid."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidPartner.from_validation(exc) from exc

    def updated(self, *, now: datetime | None = None, **changes: Any) -> Partner:
        """A new version with ``changes`` (names in :data:`UPDATABLE_FIELDS`)."""
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise TypeError(f"not updatable: {', '.join(sorted(unknown))}")
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields.update(changes)
        fields["version"] = self.version + 1
        fields["updated_at"] = now or _now()
        if "status" in changes and changes["status"] not in STATUSES:
            raise InvalidPartner([f"status: must be one of {', '.join(STATUSES)}"])
        if "grants" in changes and any(g not in DATA_CLASSES for g in changes["grants"] or ()):
            raise InvalidPartner([f"grants: each must be one of {', '.join(DATA_CLASSES)}"])
        try:
            # a kind a newer build added stays as it is
            return type(self).model_validate(fields, context={_STORED: True})
        except ValidationError as exc:
            raise InvalidPartner.from_validation(exc) from exc

    def public_view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "reinsurer_code": self.reinsurer_code,
            "distributor_code": self.distributor_code,
            "grants": [str(g) for g in self.grants],
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "version": self.version,
        }

    @property
    def record_key(self) -> str:
        return self.id


# --- keys -------------------------------------------------------------------------------------


def key_record_key(key_id: str) -> str:
    """``pk_live_<key id>``: the record key of a key (its visible prefix)."""
    return KEY_PREFIX + key_id


def usage_record_key(key_id: str) -> str:
    """``pk_live_<key id>.last_used``: the record key of a key's last use."""
    return KEY_PREFIX + key_id + USAGE_SUFFIX


class ApiKey(_Record):
    """One API key of a partner: never the key itself, only its digest."""

    _TYPE: ClassVar[str] = "api_key"

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    partner_id: Annotated[str, Field(pattern=PARTNER_ID_PATTERN)]
    name: Annotated[str, AfterValidator(_key_name)] | None = None
    digest: Annotated[str, Field(pattern=DIGEST_PATTERN)] = Field(repr=False)
    created_at: UtcDatetime = Field(default_factory=_now)
    expires_at: UtcDatetime | None = None
    revoked_at: UtcDatetime | None = None
    version: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _times(self) -> Self:
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise PydanticCustomError("expires_at", "expires_at must be after created_at")
        return self

    @property
    def prefix(self) -> str:
        return KEY_PREFIX + self.id

    @property
    def record_key(self) -> str:
        return key_record_key(self.id)

    @classmethod
    def create(cls, **fields: Any) -> ApiKey:
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidPartner.from_validation(exc) from exc

    def state(self, now: datetime) -> KeyState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def revoked(self, now: datetime) -> ApiKey:
        """A new version revoked at ``now`` (the same key when it was revoked already)."""
        if self.revoked_at is not None:
            return self
        return self.model_copy(update={"revoked_at": now, "version": self.version + 1})

    def public_view(self, now: datetime, last_used_at: datetime | None = None) -> dict[str, Any]:
        """What operators see: never the key or its digest."""
        return {
            "id": self.id,
            "prefix": self.prefix,
            "partner_id": self.partner_id,
            "name": self.name,
            "state": self.state(now),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(last_used_at),
        }


class KeyUsage(_Record):
    """When a key was last used (a record of its own; see the module docstring)."""

    _TYPE: ClassVar[str] = "api_key_usage"

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    last_used_at: UtcDatetime

    @property
    def record_key(self) -> str:
        return usage_record_key(self.id)


RegistryEntry = Partner | ApiKey | KeyUsage

_TYPES: Final[Mapping[str, type[Partner] | type[ApiKey] | type[KeyUsage]]] = {
    "partner": Partner,
    "api_key": ApiKey,
    "api_key_usage": KeyUsage,
}


def decode_record(value: bytes) -> RegistryEntry:
    """One registry record; :class:`DecodeError` (no content in its reason) if it cannot be."""
    try:
        document = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("partner registry record is not JSON") from exc
    if not isinstance(document, dict):
        raise DecodeError("partner registry record is not an object")
    kind = _TYPES.get(str(document.pop("type", "")))
    if kind is None:
        raise DecodeError("partner registry record has no known type")
    return kind._from_document(document)
