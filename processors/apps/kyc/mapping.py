"""Pure mapping for the KYC app: requests → pre-checks → provider requests → result events.

No Kafka, no HTTP: tested with plain parametrised tests.  Used by the app (synchronous answers
and pending ones) and by the inbound webhook endpoint (:func:`decision_from_callback`).

Result event ids are derived, not random: the same verification gives the same ``event_id``
whether it arrives in the provider's answer, in its callback, or in a duplicate of either, so
consumers de-duplicate on ``event_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, TypeVar
from uuid import UUID, uuid5

from pydantic import ValidationError

from processors.adapters.kyc_provider import (
    KycOutcome,
    KycRequest,
    ProviderCheck,
    ProviderDecision,
    parse_decision,
)
from processors.contract import (
    SCHEMA_VERSION,
    Event,
    EventData,
    KycApproved,
    KycDecision,
    KycPending,
    KycRefused,
    KycRejected,
    KycRequested,
    KycReview,
)
from processors.contract.events import KycRefusalCode
from processors.errors import ValidationFailed

__all__ = [
    "APP",
    "CALLBACK_EVENT_TYPE",
    "DECISION_EVENT_TYPES",
    "OPERATION",
    "Refusal",
    "decision_event",
    "decision_from_callback",
    "idempotency_key",
    "kyc_request",
    "pending_event",
    "precheck",
    "refused_event",
    "requested",
    "result_event",
]

APP: Final = "kyc"
OPERATION: Final = "VERIFY"
SOURCE: Final = "processors/kyc"
CALLBACK_EVENT_TYPE: Final = "verification.completed"
"""The ``event_type`` of a provider callback that carries a decision."""

DECISION_EVENT_TYPES: Final[Mapping[str, tuple[str, type[KycDecision]]]] = {
    "APPROVED": ("kyc.approved", KycApproved),
    "REVIEW": ("kyc.review", KycReview),
    "REJECTED": ("kyc.rejected", KycRejected),
}
"""Decision status → (event type, payload model)."""

_IDS: Final = UUID("3c0f7d9a-5a41-5e8b-9b0e-6d2f1c7a4e52")
"""uuid5 namespace of result event ids (stable forever: never change it)."""
_SCORE_QUANTUM: Final = Decimal("0.0001")
_SCORE_EXPONENT: Final = -4
_CONSENTS: Final = ("terms_accepted", "data_processing_accepted")

M = TypeVar("M", bound=EventData)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused before any call.  ``message`` holds no personal data."""

    code: KycRefusalCode
    message: str


def idempotency_key(event_id: UUID, app: str = APP, operation: str = OPERATION) -> str:
    """Stable across retries, restarts and replays of the same event."""
    digest = hashlib.sha256(f"{event_id}|{app}|{operation}".encode()).hexdigest()
    return f"idem_{digest[:40]}"


# -- before the call -----------------------------------------------------------------------------


def precheck(data: KycRequested, *, today: date) -> Refusal | None:
    """The reason to refuse ``data`` without calling the provider, or ``None`` to go ahead.

    Consent comes first: both ``terms_accepted`` and ``data_processing_accepted`` must be
    true.  Then no document may have expired on ``today`` (the request's date; a document is
    valid through its ``expiry_date``; one without an expiry date never expires).
    """
    missing = [name for name in _CONSENTS if not getattr(data.consent, name)]
    if missing:
        return Refusal("consent_missing", f"consent not given: {', '.join(missing)}")
    expired = [
        f"document {index} of {len(data.documents)} ({document.type})"
        for index, document in enumerate(data.documents, start=1)
        if document.expiry_date is not None and document.expiry_date < today
    ]
    if expired:
        return Refusal(
            "document_expired", f"{'; '.join(expired)} expired before the request date {today.isoformat()}"
        )
    return None


def kyc_request(event: Event) -> KycRequest:
    """The provider request for a ``customer.kyc_requested`` (seed shape plus ``client_reference``)."""
    data = requested(event)
    return KycRequest(
        verification_type=data.verification_type,
        documents=tuple(document.model_dump(mode="json", exclude_none=True) for document in data.documents),
        consent=data.consent.model_dump(mode="json"),
        client_reference=str(event.event_id),
    )


def refused_event(
    event: Event, refusal: Refusal, *, source: str = SOURCE, now: datetime | None = None
) -> Event:
    """``kyc.refused`` for a request :func:`precheck` refused (keyed by the customer)."""
    data = requested(event)
    when = now or datetime.now(UTC)
    payload = KycRefused(
        customer_id=data.customer_id,
        reason_code=refusal.code,
        message=refusal.message,
        refused_at=when,
        source_event_id=event.event_id,
    )
    return _event(
        "kyc.refused",
        payload,
        event_id=uuid5(_IDS, f"{event.event_id}|refused"),
        occurred_at=when,
        source=source,
        correlation_id=event.correlation_id or str(event.event_id),
    )


# -- after the call ------------------------------------------------------------------------------


def result_event(
    event: Event, key: str, outcome: KycOutcome, *, source: str = SOURCE, now: datetime | None = None
) -> Event:
    """The result of one call: a decision event, or ``kyc.pending`` when the provider answers later."""
    data = requested(event)
    correlation_id = event.correlation_id or str(event.event_id)
    if outcome.decision is None:
        return pending_event(
            customer_id=data.customer_id,
            verification_id=outcome.verification_id,
            idempotency_key=key,
            source_event_id=event.event_id,
            source=source,
            correlation_id=correlation_id,
            now=now,
        )
    return decision_event(
        outcome.decision,
        customer_id=data.customer_id,
        idempotency_key=key,
        source_event_id=event.event_id,
        source=source,
        correlation_id=correlation_id,
    )


def pending_event(
    *,
    customer_id: str,
    verification_id: str,
    idempotency_key: str,
    source_event_id: UUID,
    source: str = SOURCE,
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> Event:
    payload = _validated(
        KycPending,
        customer_id=customer_id,
        verification_id=verification_id,
        idempotency_key=idempotency_key,
        source_event_id=source_event_id,
    )
    return _event(
        "kyc.pending",
        payload,
        event_id=uuid5(_IDS, f"{idempotency_key}|{verification_id}|pending"),
        occurred_at=now or datetime.now(UTC),
        source=source,
        correlation_id=correlation_id,
    )


def decision_event(
    decision: ProviderDecision,
    *,
    customer_id: str,
    idempotency_key: str,
    source_event_id: UUID,
    source: str = SOURCE,
    correlation_id: str | None = None,
) -> Event:
    """``kyc.approved``, ``kyc.review`` or ``kyc.rejected`` for a provider decision.

    Scores with more than 4 decimal places are rounded half-even to 4 (the contract's
    precision).  Raises :class:`ValidationFailed` if the decision does not fit the contract.
    """
    event_type, model = DECISION_EVENT_TYPES[decision.status]
    payload = _validated(
        model,
        customer_id=customer_id,
        verification_id=decision.verification_id,
        status=decision.status,
        risk_score=decision.risk_score,
        risk_level=decision.risk_level,
        checks=[_check(check) for check in decision.checks],
        verified_at=decision.verified_at,
        idempotency_key=idempotency_key,
        source_event_id=source_event_id,
    )
    return _event(
        event_type,
        payload,
        event_id=uuid5(_IDS, f"{idempotency_key}|{decision.verification_id}|decision"),
        occurred_at=decision.verified_at,
        source=source,
        correlation_id=correlation_id,
    )


def decision_from_callback(payload: Mapping[str, Any], *, source: str = SOURCE) -> Event | None:
    """The decision event for a provider callback (the asynchronous path), or ``None``.

    ``payload`` is the callback's parsed JSON (numbers with a fraction as ``Decimal``), either
    the provider's envelope ``{"event_id", "event_type", "created_at", "data": {...}}`` or the
    decision object alone.  The decision object is the seed's response shape plus the fields
    the provider echoes from the request: ``customer_id``, ``idempotency_key`` and
    ``client_reference`` (the ``event_id`` of the ``customer.kyc_requested``).

    ``None`` for a callback that carries no decision (another ``event_type``, or a status of
    ``PENDING``).  Raises :class:`ValidationFailed` (naming fields, never values) for a malformed
    one.  A duplicate callback gives an identical event, ``event_id`` included.
    """
    body: Mapping[str, Any] = payload
    if "data" in payload:
        event_type = payload.get("event_type")
        if event_type is not None and event_type != CALLBACK_EVENT_TYPE:
            return None
        data = payload["data"]
        if not isinstance(data, Mapping):
            raise ValidationFailed("data must be an object")
        body = data
    if str(body.get("status", "")).upper() == "PENDING":
        return None
    customer_id = _field(body, "customer_id")
    key = _field(body, "idempotency_key")
    try:
        source_event_id = UUID(_field(body, "client_reference"))
    except ValueError:
        raise ValidationFailed("client_reference must be a UUID (the event_id of the request)") from None
    try:
        decision = parse_decision(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationFailed(f"invalid KYC decision: {_problem(exc)}") from exc
    return decision_event(
        decision,
        customer_id=customer_id,
        idempotency_key=key,
        source_event_id=source_event_id,
        source=source,
        correlation_id=str(source_event_id),
    )


# -- helpers -------------------------------------------------------------------------------------


def requested(event: Event) -> KycRequested:
    """The ``customer.kyc_requested`` payload of ``event`` (:class:`ValidationFailed` for another type)."""
    if not isinstance(event.data, KycRequested):
        raise ValidationFailed(f"the kyc app cannot handle {event.event_type}")
    return event.data


def _check(check: ProviderCheck) -> dict[str, Any]:
    """The contract's ``KycCheck`` fields (validated with the payload that holds them)."""
    return {
        "type": check.type,
        "status": check.status,
        "confidence": None if check.confidence is None else _score(check.confidence),
        "matches": [
            {"name": match.name, "list_name": match.list_name, "score": _score(match.score)}
            for match in check.matches
        ],
    }


def _score(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < _SCORE_EXPONENT:
        return value.quantize(_SCORE_QUANTUM, rounding=ROUND_HALF_EVEN)
    return value


def _validated(model: type[M], **fields: Any) -> M:
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise ValidationFailed(f"the provider's answer does not fit {model.__name__}: {problems}") from exc


def _event(
    event_type: str,
    payload: Any,
    *,
    event_id: UUID,
    occurred_at: datetime,
    source: str,
    correlation_id: str | None,
) -> Event:
    return Event(
        event_id=event_id,
        event_type=event_type,
        source=source,
        occurred_at=occurred_at,
        subject=payload.customer_id,
        correlation_id=correlation_id,
        schema_version=SCHEMA_VERSION,
        data=payload,
    )


def _field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationFailed(f"{name} is required and must be a non-empty string")
    return value


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]} is required" if exc.args else "a field is missing"
    return str(exc)
