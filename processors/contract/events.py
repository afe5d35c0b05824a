"""The event contract: the envelope and one payload model per event type.

Every model is a frozen pydantic model that forbids unknown fields.  Fields that hold
personal data (names, dates of birth, e-mail addresses, card tokens, addresses, document
numbers and images) are left out of ``repr()``, and validation errors never quote input
values (``hide_input_in_errors``), so neither reaches a log line by accident.

Payload models are registered in :data:`EVENT_TYPES`; :class:`Event` checks that its
``data`` is the model registered for its ``event_type`` and that its ``subject`` is the
payload's aggregate id (the Kafka key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType, UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, Union, cast, get_args, get_origin
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializeAsAny,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from processors.contract.countries import COUNTRY_CODES
from processors.contract.money import CurrencyCode, Money, NonNegativeMoney, PositiveMoney
from processors.errors import UnknownEventType
from processors.utc import utc_field

__all__ = [
    "EVENT_TYPES",
    "PII_FIELDS",
    "SCHEMA_VERSION",
    "Address",
    "ClaimClosed",
    "ClaimData",
    "ClaimPaid",
    "ClaimReported",
    "ClaimReserved",
    "ClaimSettled",
    "CountryCode",
    "CustomerCreated",
    "Event",
    "EventData",
    "KycApproved",
    "KycCheck",
    "KycConsent",
    "KycDecision",
    "KycDocument",
    "KycMatch",
    "KycPending",
    "KycRefused",
    "KycRejected",
    "KycRequested",
    "KycReview",
    "PaymentCompleted",
    "PaymentConfirmed",
    "PaymentFailed",
    "PaymentMethod",
    "PaymentPending",
    "PaymentResultData",
    "PolicyCancelled",
    "PolicyChangeData",
    "PolicyData",
    "PolicyEndorsed",
    "PolicyIssued",
    "PolicyRenewed",
    "PremiumDue",
    "RefundRequested",
    "Score",
    "UtcDatetime",
    "payload_model",
]

SCHEMA_VERSION = 1
"""The envelope and payload version this build reads and writes."""

_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
MODEL_CONFIG = _CONFIG
"""The configuration of every contract model (strictness, extra fields, errors without input)."""


# --- field types --------------------------------------------------------------------------


def _country(value: str) -> str:
    if value not in COUNTRY_CODES:
        raise PydanticCustomError("country_code", "must be an ISO 3166-1 alpha-2 country code such as 'US'")
    return value


_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_TEXT_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _iso_text(value: object, handler: ValidatorFunctionWrapHandler) -> datetime:
    """A date-time given as text must be ISO 8601: pydantic would also read a number in a
    string (``"1700000000"``) as a time.  Text is parsed by pydantic's own parser, so the
    accepted ISO forms are exactly the ones it accepts."""
    if isinstance(value, str):
        if not _ISO_DATETIME.match(value):
            raise PydanticCustomError(
                "datetime_format", "must be an ISO 8601 date-time with a zone, e.g. 2024-01-15T10:30:00Z"
            )
        try:
            value = _TEXT_DATETIME.validate_python(value, strict=False)
        except ValidationError:
            raise PydanticCustomError(
                "datetime_format", "must be an ISO 8601 date-time with a zone, e.g. 2024-01-15T10:30:00Z"
            ) from None
    result: datetime = handler(value)
    return result


NO_WHITESPACE = r"^[^\s\x00-\x1f\x7f]+$"
"""The pattern of identifiers and tokens (the codec words its errors as "contains whitespace")."""

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_WHITESPACE)]
"""An id or reference such as ``POL-2024-001234``: 1..128 characters, no whitespace."""

Code = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""A short code such as a line of business (``MOTOR``) or a decline code."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
"""Free text for people (a reason, a name)."""

CountryCode = Annotated[str, AfterValidator(_country)]
"""An ISO 3166-1 alpha-2 country code (``US``, ``GB``, ``DE``)."""

UtcDatetime = Annotated[datetime, WrapValidator(_iso_text), AfterValidator(utc_field)]
"""A timezone-aware timestamp, normalised to UTC; naive datetimes are rejected."""

Url = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")]
"""An absolute http(s) URL."""

PostalCode = Annotated[
    str, StringConstraints(min_length=2, max_length=12, pattern=r"^[A-Za-z0-9][A-Za-z0-9 -]*$")
]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _email(value: str) -> str:
    if len(value) > 254 or _EMAIL.fullmatch(value) is None:
        raise PydanticCustomError("email", "must be an e-mail address")
    return value


_CARD_NUMBER = re.compile(r"[0-9][0-9 -]{10,}[0-9]")


def _not_a_card_number(value: Any) -> Any:
    if isinstance(value, str) and _CARD_NUMBER.fullmatch(value) is not None:
        raise PydanticCustomError("card_number", "must be a payment gateway token, never a card number")
    return value


Email = Annotated[str, AfterValidator(_email)]
CardToken = Annotated[
    str,
    StringConstraints(min_length=4, max_length=128, pattern=NO_WHITESPACE),
    BeforeValidator(_not_a_card_number),  # before the whitespace rule: "4242 4242 ..." is a card number
]

_SCORE_PLACES = 4
_SCORE_STRING = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _parse_score(value: Any) -> Decimal:
    # Like money: a Decimal, or a decimal string in JSON; floats (and bools) are refused.
    if isinstance(value, Decimal):
        score = value
    elif isinstance(value, str) and _SCORE_STRING.fullmatch(value) is not None:
        score = Decimal(value)
    else:
        raise PydanticCustomError("score_type", 'a score must be a decimal string such as "0.98"')
    if not score.is_finite() or not 0 <= score <= 1:
        raise PydanticCustomError("score_range", "a score must lie between 0 and 1")
    exponent = score.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > _SCORE_PLACES:
        raise PydanticCustomError(
            "score_places", "a score has at most {places} decimal places", {"places": _SCORE_PLACES}
        )
    # Trailing zeros carry nothing (the Avro-decoded 0.9800 is 0.98); 1.0000 becomes 1.
    return score.normalize() if score else Decimal(0)


def _score_to_json(score: Decimal) -> str:
    return format(score, "f")


Score = Annotated[
    Decimal,
    PlainValidator(_parse_score, json_schema_input_type=str),
    PlainSerializer(_score_to_json, return_type=str, when_used="json"),
]
"""A confidence or match score between 0 and 1, at most 4 decimal places (a decimal string in
JSON, the Avro ``decimal`` logical type, ``Decimal`` in Python; never a float)."""


# --- payload base -------------------------------------------------------------------------


def _has_money(annotation: Any) -> bool:
    if annotation is Decimal:
        return True
    if get_origin(annotation) in (Union, UnionType, Annotated) or get_args(annotation):
        return any(_has_money(arg) for arg in get_args(annotation))
    return False


class EventData(BaseModel):
    """Base of every payload model.

    ``aggregate_field`` names the field that is the aggregate id: the envelope's ``subject``
    and the Kafka key must equal it.  Money fields must follow the ``currency`` field (their
    decimal places are checked against it); a model that breaks this is refused when the
    class is defined.
    """

    model_config = _CONFIG

    aggregate_field: ClassVar[str] = ""
    money_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names = list(cls.model_fields)
        money = tuple(name for name, field in cls.model_fields.items() if _has_money(field.annotation))
        if money and (
            "currency" not in names or any(names.index(m) < names.index("currency") for m in money)
        ):
            raise TypeError(f"{cls.__name__}: money fields {money} must follow a 'currency' field")
        if cls.aggregate_field and cls.aggregate_field not in names:
            raise TypeError(f"{cls.__name__}: aggregate_field {cls.aggregate_field!r} is not a field")
        cls.money_fields = money

    @property
    def aggregate_id(self) -> str:
        """The id of the aggregate this payload is about (``policy_id``, ``claim_id``...)."""
        value = getattr(self, self.aggregate_field)
        assert isinstance(value, str)
        return value


# --- policy events ------------------------------------------------------------------------


class PolicyData(EventData):
    """Fields every policy event carries (values as they are after the event)."""

    aggregate_field = "policy_id"

    policy_id: Identifier
    policy_number: Identifier
    customer_id: Identifier
    line_of_business: Code
    territory: CountryCode | None = None
    inception_date: date
    expiry_date: date
    currency: CurrencyCode
    gross_premium: NonNegativeMoney
    sum_insured: NonNegativeMoney

    @model_validator(mode="after")
    def _period(self) -> Self:
        if self.expiry_date <= self.inception_date:
            raise PydanticCustomError("policy_period", "expiry_date must be after inception_date")
        return self


class PolicyIssued(PolicyData):
    """``policy.issued``: a new policy is in force."""


class PolicyRenewed(PolicyData):
    """``policy.renewed``: a policy was renewed for a new period."""

    previous_policy_number: Identifier | None = None


class PolicyChangeData(PolicyData):
    """A mid-term change: ``gross_premium``/``sum_insured`` are the values after it."""

    effective_date: date
    premium_change: Money
    """Signed: positive for an additional premium, negative for a return premium."""

    @model_validator(mode="after")
    def _effective_in_period(self) -> Self:
        if not self.inception_date <= self.effective_date <= self.expiry_date:
            raise PydanticCustomError(
                "effective_date", "effective_date must lie between inception_date and expiry_date"
            )
        return self


class PolicyEndorsed(PolicyChangeData):
    """``policy.endorsed``: the policy was changed mid-term."""


class PolicyCancelled(PolicyChangeData):
    """``policy.cancelled``: the policy ends at ``effective_date``."""

    cancellation_reason: Text


# --- billing events -----------------------------------------------------------------------

CARD_TYPES = frozenset({"CREDIT_CARD", "DEBIT_CARD"})


class Address(BaseModel):
    """A postal address (personal data: never shown in ``repr()``)."""

    model_config = _CONFIG

    line1: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(repr=False)
    line2: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, repr=False
    )
    city: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(repr=False)
    state: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        default=None, repr=False
    )
    postal_code: PostalCode = Field(repr=False)
    country: CountryCode = Field(repr=False)


class PaymentMethod(BaseModel):
    """How to charge or refund: the gateway's payment method (seed shape)."""

    model_config = _CONFIG

    type: Literal["CREDIT_CARD", "DEBIT_CARD", "BANK_TRANSFER", "DIRECT_DEBIT"]
    card_token: CardToken | None = Field(default=None, repr=False)
    billing_address: Address | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _token_for_cards(self) -> Self:
        if self.type in CARD_TYPES and self.card_token is None:
            raise PydanticCustomError(
                "card_token_missing", "card_token is required for {type}", {"type": self.type}
            )
        if self.type not in CARD_TYPES and self.card_token is not None:
            raise PydanticCustomError(
                "card_token_unexpected",
                "card_token is only allowed for card payments, not {type}",
                {"type": self.type},
            )
        return self


class PremiumDue(EventData):
    """``premium.due``: an instalment is due; the payments app charges it."""

    aggregate_field = "policy_id"

    policy_id: Identifier
    policy_number: Identifier
    instalment_id: Identifier
    due_date: date
    currency: CurrencyCode
    amount: PositiveMoney
    payment_method: PaymentMethod


class RefundRequested(EventData):
    """``refund.requested``: money goes back to the customer; the payments app refunds it."""

    aggregate_field = "policy_id"

    policy_id: Identifier
    policy_number: Identifier
    refund_id: Identifier
    currency: CurrencyCode
    amount: PositiveMoney
    reason: Text
    payment_method: PaymentMethod
    original_payment_id: Identifier | None = None


# --- customer events ----------------------------------------------------------------------


class CustomerCreated(EventData):
    """``customer.created``: a new customer (personal data: never shown in ``repr()``)."""

    aggregate_field = "customer_id"

    customer_id: Identifier
    full_name: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(repr=False)
    date_of_birth: date = Field(repr=False)
    email: Email = Field(repr=False)
    country: CountryCode

    @model_validator(mode="after")
    def _born_in_the_past(self) -> Self:
        if self.date_of_birth >= datetime.now(UTC).date():
            raise PydanticCustomError("date_of_birth", "date_of_birth must be in the past")
        return self


class KycDocument(BaseModel):
    """An identity document submitted for verification."""

    model_config = _CONFIG

    type: Literal["PASSPORT", "DRIVING_LICENCE", "NATIONAL_ID", "UTILITY_BILL"]
    document_number: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(repr=False)
    issuing_country: CountryCode
    expiry_date: date | None = None
    front_image_url: Url = Field(repr=False)
    back_image_url: Url | None = Field(default=None, repr=False)


class KycConsent(BaseModel):
    """The customer's consent, as captured."""

    model_config = _CONFIG

    terms_accepted: bool
    data_processing_accepted: bool
    timestamp: UtcDatetime


class KycRequested(EventData):
    """``customer.kyc_requested``: verify a customer's identity (seed KYC request)."""

    aggregate_field = "customer_id"

    customer_id: Identifier
    verification_type: Literal["IDENTITY", "ADDRESS", "ENHANCED_DUE_DILIGENCE"]
    documents: Annotated[list[KycDocument], Field(min_length=1, max_length=10)]
    consent: KycConsent


# --- claim events -------------------------------------------------------------------------

ClaimStatus = Literal["OPEN", "SETTLED", "CLOSED"]


class ClaimData(EventData):
    """Fields every claim event carries.

    ``reserve_amount`` is the outstanding reserve after the event, ``paid_amount`` what this
    event paid (0 when none), ``paid_to_date`` the total paid so far including this event.
    """

    aggregate_field = "claim_id"
    allowed_status: ClassVar[frozenset[str]] = frozenset({"OPEN", "SETTLED", "CLOSED"})

    claim_id: Identifier
    policy_id: Identifier
    policy_number: Identifier
    date_of_loss: date
    currency: CurrencyCode
    reserve_amount: NonNegativeMoney
    paid_amount: NonNegativeMoney
    paid_to_date: NonNegativeMoney
    settled_amount: NonNegativeMoney | None = None
    status: ClaimStatus

    @model_validator(mode="after")
    def _amounts(self) -> Self:
        if self.paid_amount > self.paid_to_date:
            raise PydanticCustomError(
                "claim_paid", "paid_amount {paid} exceeds paid_to_date {total}",
                {"paid": str(self.paid_amount), "total": str(self.paid_to_date)},
            )  # fmt: skip
        if self.status not in self.allowed_status:
            raise PydanticCustomError(
                "claim_status",
                "status {status} is not valid for this event (expected one of: {allowed})",
                {"status": self.status, "allowed": ", ".join(sorted(self.allowed_status))},
            )
        return self


class ClaimReported(ClaimData):
    """``claim.reported``: first notification of loss."""

    allowed_status = frozenset({"OPEN"})


class ClaimReserved(ClaimData):
    """``claim.reserved``: the reserve was set or changed."""

    allowed_status = frozenset({"OPEN"})


class ClaimPaid(ClaimData):
    """``claim.paid``: a payment was made on the claim."""

    @model_validator(mode="after")
    def _pays(self) -> Self:
        if self.paid_amount <= 0:
            raise PydanticCustomError("claim_paid_zero", "claim.paid needs a paid_amount greater than 0")
        return self


class ClaimSettled(ClaimData):
    """``claim.settled``: the claim's amount was agreed."""

    allowed_status = frozenset({"SETTLED", "CLOSED"})

    @model_validator(mode="after")
    def _settled(self) -> Self:
        if self.settled_amount is None:
            raise PydanticCustomError("claim_settled_amount", "claim.settled needs a settled_amount")
        return self


class ClaimClosed(ClaimData):
    """``claim.closed``: the claim is closed."""

    allowed_status = frozenset({"CLOSED"})


# --- payment results (produced by the payments app) ----------------------------------------


class PaymentResultData(EventData):
    """Fields of every payment result: what was asked and for which input event."""

    aggregate_field = "policy_id"

    policy_id: Identifier
    operation: Literal["CHARGE", "REFUND"]
    reference_id: Identifier
    """The ``instalment_id`` (CHARGE) or ``refund_id`` (REFUND) of the input event."""
    currency: CurrencyCode
    amount: PositiveMoney
    idempotency_key: Identifier
    source_event_id: UUID


class PaymentCompleted(PaymentResultData):
    """``payment.completed``: the gateway processed the payment synchronously."""

    payment_id: Identifier
    gateway_reference: Identifier
    processed_at: UtcDatetime
    receipt_url: Url | None = None


class PaymentPending(PaymentResultData):
    """``payment.pending``: the gateway will confirm asynchronously (``payment.confirmed``)."""

    payment_id: Identifier


class PaymentFailed(PaymentResultData):
    """``payment.failed``: the gateway declined, or the payment failed permanently."""

    decline_code: Code
    decline_reason: Text
    failed_at: UtcDatetime


class PaymentConfirmed(PaymentResultData):
    """``payment.confirmed``: the gateway's asynchronous confirmation of a pending payment."""

    payment_id: Identifier
    gateway_reference: Identifier
    processed_at: UtcDatetime
    receipt_url: Url | None = None


# --- KYC results (produced by the kyc app) -------------------------------------------------

KycStatus = Literal["APPROVED", "REVIEW", "REJECTED"]
KycRiskLevel = Literal["LOW", "MEDIUM", "HIGH"]
KycCheckType = Literal["DOCUMENT_AUTHENTICITY", "FACE_MATCH", "SANCTIONS_SCREENING", "PEP_CHECK"]
KycCheckStatus = Literal["PASSED", "FAILED", "REVIEW"]
KycRefusalCode = Literal["consent_missing", "document_expired"]


class KycMatch(BaseModel):
    """A hit on a sanctions or PEP list.  ``name`` is the listed person's name (personal data)."""

    model_config = _CONFIG

    name: Text | None = Field(default=None, repr=False)
    list_name: Code
    """The list that matched, e.g. ``OFAC-SDN`` or ``PEP-GLOBAL``."""
    score: Score


class KycCheck(BaseModel):
    """One check of a verification, as the provider reported it."""

    model_config = _CONFIG

    type: KycCheckType
    status: KycCheckStatus
    confidence: Score | None = None
    matches: Annotated[list[KycMatch], Field(max_length=100)] = Field(default_factory=list)


class KycDecision(EventData):
    """Fields of every KYC decision (``kyc.approved``, ``kyc.review``, ``kyc.rejected``).

    ``status`` repeats the event type; each subclass admits only its own status.
    """

    aggregate_field = "customer_id"

    customer_id: Identifier
    verification_id: Identifier
    status: KycStatus
    risk_score: Annotated[int, Field(ge=0, le=100)]
    risk_level: KycRiskLevel
    checks: Annotated[list[KycCheck], Field(max_length=20)]
    verified_at: UtcDatetime
    idempotency_key: Identifier
    """The key sent to the provider; identical across retries and replays."""
    source_event_id: UUID
    """``event_id`` of the ``customer.kyc_requested``."""


class KycApproved(KycDecision):
    """``kyc.approved``: the provider verified the customer."""

    status: Literal["APPROVED"]


class KycReview(KycDecision):
    """``kyc.review``: the provider wants a person to look (a PEP hit, a weak face match)."""

    status: Literal["REVIEW"]


class KycRejected(KycDecision):
    """``kyc.rejected``: the provider refused the customer (sanctions hit, forged document...)."""

    status: Literal["REJECTED"]


class KycPending(EventData):
    """``kyc.pending``: the provider will answer later; a decision event follows."""

    aggregate_field = "customer_id"

    customer_id: Identifier
    verification_id: Identifier
    idempotency_key: Identifier
    source_event_id: UUID


class KycRefused(EventData):
    """``kyc.refused``: the request was refused before any call to the provider.

    ``reason_code`` is ``consent_missing`` or ``document_expired``; ``message`` says which
    consent or document, without personal data.
    """

    aggregate_field = "customer_id"

    customer_id: Identifier
    reason_code: KycRefusalCode
    message: Text
    refused_at: UtcDatetime
    source_event_id: UUID


# --- registry -----------------------------------------------------------------------------

EVENT_TYPES: Mapping[str, type[EventData]] = MappingProxyType(
    {
        "policy.issued": PolicyIssued,
        "policy.renewed": PolicyRenewed,
        "policy.endorsed": PolicyEndorsed,
        "policy.cancelled": PolicyCancelled,
        "premium.due": PremiumDue,
        "refund.requested": RefundRequested,
        "customer.created": CustomerCreated,
        "customer.kyc_requested": KycRequested,
        "claim.reported": ClaimReported,
        "claim.reserved": ClaimReserved,
        "claim.paid": ClaimPaid,
        "claim.settled": ClaimSettled,
        "claim.closed": ClaimClosed,
        "payment.completed": PaymentCompleted,
        "payment.pending": PaymentPending,
        "payment.failed": PaymentFailed,
        "payment.confirmed": PaymentConfirmed,
        "kyc.approved": KycApproved,
        "kyc.review": KycReview,
        "kyc.rejected": KycRejected,
        "kyc.pending": KycPending,
        "kyc.refused": KycRefused,
    }
)
"""Every event type this project knows, with its payload model."""


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in get_args(annotation):
        found.extend(_nested_models(arg))
    return found


def _personal_fields() -> frozenset[str]:
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = list(EVENT_TYPES.values())
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.repr:
                names.add(name)
            pending.extend(_nested_models(field.annotation))
    return frozenset(names)


PII_FIELDS: frozenset[str] = _personal_fields()
"""Names of the payload fields that hold personal data (``repr=False``): kept out of reprs,
logs and error reasons."""


def _printable(event_type: object, limit: int = 80) -> str:
    text = str(event_type)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def payload_model(event_type: str) -> type[EventData]:
    """The payload model of ``event_type``; raises :class:`UnknownEventType` if there is none."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventType(f"unknown event type '{_printable(event_type)}'") from None


# --- envelope -----------------------------------------------------------------------------


def _schema_version(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise PydanticCustomError(
            "schema_version",
            "unsupported schema_version {version} (this build reads {supported})",
            {"version": value, "supported": SCHEMA_VERSION},
        )
    return value


DataT = TypeVar("DataT", bound=EventData)


class _Envelope(BaseModel):
    """The envelope fields, without ``data``."""

    model_config = _CONFIG

    event_id: UUID
    event_type: str
    source: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    occurred_at: UtcDatetime
    subject: Identifier
    correlation_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    schema_version: Annotated[int, AfterValidator(_schema_version)] = SCHEMA_VERSION


class Event(_Envelope):
    """The envelope every message carries (CloudEvents-aligned).

    ``event_id`` is the de-duplication key; ``subject`` is the aggregate id and the Kafka
    key; ``data`` is the payload model registered for ``event_type``.
    """

    data: SerializeAsAny[EventData]

    @model_validator(mode="before")
    @classmethod
    def _payload_from_mapping(cls, values: Any) -> Any:
        """Validate a mapping under ``data`` as the payload model of ``event_type``."""
        if not isinstance(values, Mapping) or "event_type" not in values:
            return values
        event_type = values["event_type"]
        model = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
        if model is None:
            raise PydanticCustomError(
                "unknown_event_type",
                "unknown event type '{event_type}'",
                {"event_type": _printable(event_type)},
            )
        if isinstance(values.get("data"), Mapping):
            # The typed envelope reports payload errors under their full path (data.amount).
            return TYPED_ENVELOPES[event_type].model_validate(values).__dict__
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        model = EVENT_TYPES.get(self.event_type)
        if model is None:  # reached only when validating a non-mapping input
            raise PydanticCustomError(
                "unknown_event_type",
                "unknown event type '{event_type}'",
                {"event_type": _printable(self.event_type)},
            )
        if type(self.data) is not model:
            raise PydanticCustomError(
                "payload_mismatch",
                "data is a {actual} payload but event_type '{event_type}' needs {expected}",
                {
                    "actual": type(self.data).__name__,
                    "event_type": self.event_type,
                    "expected": model.__name__,
                },
            )
        check_subject(self.subject, self.data)
        return self

    @classmethod
    def create(
        cls,
        event_type: str,
        *,
        subject: str,
        data: EventData,
        source: str,
        correlation_id: str | None = None,
    ) -> Event:
        """A new event with a fresh ``event_id`` (uuid4) and ``occurred_at`` = now (UTC)."""
        payload_model(event_type)  # UnknownEventType for a type nobody knows
        return cls(
            event_id=uuid4(),
            event_type=event_type,
            source=source,
            occurred_at=datetime.now(UTC),
            subject=subject,
            correlation_id=correlation_id,
            schema_version=SCHEMA_VERSION,
            data=data,
        )

    @property
    def key(self) -> bytes:
        """The Kafka key: the subject, UTF-8 encoded."""
        return self.subject.encode()

    def data_as(self, model: type[DataT]) -> DataT:
        """``data`` typed as ``model``; raises ``TypeError`` if it is another payload."""
        if not isinstance(self.data, model):
            raise TypeError(f"{self.event_type} carries {type(self.data).__name__}, not {model.__name__}")
        return self.data


def check_subject(subject: str, data: EventData) -> None:
    """Refuse an envelope whose subject is not the payload's aggregate id."""
    if subject != data.aggregate_id:
        raise PydanticCustomError(
            "subject_mismatch",
            "subject must equal data.{field} (the aggregate id and Kafka key)",
            {"field": data.aggregate_field},
        )


# --- typed envelopes (the decoders' fast path) ------------------------------------------------


class TypedEnvelope(_Envelope):
    """Base of the per-type envelope models that the codec validates wire data with.

    Each pins ``event_type`` to a literal and types ``data`` as that type's payload, so a
    whole message is validated in one pass (in strict mode, straight from JSON bytes or an
    Avro record) without choosing the payload model in Python first.
    """

    @model_validator(mode="after")
    def _subject(self) -> Self:
        check_subject(self.subject, self.__dict__["data"])
        return self


def _typed_envelope(event_type: str, model: type[EventData]) -> type[TypedEnvelope]:
    return create_model(
        f"{model.__name__}Event",
        __base__=TypedEnvelope,
        __module__=__name__,
        event_type=(cast(Any, Literal[event_type]), ...),
        data=(model, ...),
    )


TYPED_ENVELOPES: Mapping[str, type[TypedEnvelope]] = MappingProxyType(
    {event_type: _typed_envelope(event_type, model) for event_type, model in EVENT_TYPES.items()}
)
"""Per event type, the envelope model with ``data`` typed as the payload (codec internals)."""


def as_event(envelope: TypedEnvelope) -> Event:
    """The :class:`Event` holding the same, already validated, values as a typed envelope.

    What ``Event.model_construct`` does, minus its per-field loop: the typed envelope is
    discarded, so its field dict is taken over rather than copied (this is the hot path).
    """
    event = Event.__new__(Event)
    object.__setattr__(event, "__dict__", envelope.__dict__)
    object.__setattr__(event, "__pydantic_fields_set__", envelope.__pydantic_fields_set__)
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event
