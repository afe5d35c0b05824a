"""Inbound provider webhooks: signature verification and the payload → Kafka record handlers.

No HTTP library and no Kafka here: :mod:`processors.api.server` reads the request, calls
:func:`verify_signature`, parses the JSON, asks the provider's :class:`InboundHandler` what to
publish, de-duplicates and publishes.

**The signature scheme** (every provider; the sandbox gateway signs this way)::

    X-Provider-Event-Id:   evt_3f2a...              the provider's id of this event
    X-Signature-Timestamp: 1718000000               unix seconds when the provider signed
    X-Signature:           sha256=<hex>             HMAC-SHA256(secret, f"{timestamp}.{raw body}")

The timestamp is inside the signed text, so a captured request cannot be replayed with a fresh
timestamp; a request signed more than ``tolerance_s`` (300 s) before or after the receiver's
clock is refused.  Secrets rotate: the current and the previous secret of a provider are both
accepted while the provider switches over.  Comparisons are constant-time.

The event id header is *not* covered by the signature, so a signed body that carries its own
``event_id`` must agree with the header (see :func:`provider_event_id`).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Protocol

from pydantic import SecretStr, ValidationError

from processors.contract import SCHEMA_VERSION, Event, PaymentConfirmed
from processors.errors import ConfigError, ContractError, ProcessorsError, ValidationFailed

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "EVENT_ID_HEADER",
    "INBOUND_NAMESPACE",
    "KYC_PROVIDER",
    "PAYMENT_GATEWAY",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HandlerRegistry",
    "InboundHandler",
    "InboundMessage",
    "KycCallbackHandler",
    "PaymentConfirmationHandler",
    "SignatureError",
    "SignatureProblem",
    "derived_uuid",
    "provider_event_id",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

PAYMENT_GATEWAY: Final = "payment-gateway"
KYC_PROVIDER: Final = "kyc-provider"

EVENT_ID_HEADER: Final = "X-Provider-Event-Id"
TIMESTAMP_HEADER: Final = "X-Signature-Timestamp"
SIGNATURE_HEADER: Final = "X-Signature"

DEFAULT_TOLERANCE_S: Final = 300
_SCHEME: Final = "sha256="
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_MAX_TIMESTAMP_DIGITS: Final = 12
_MAX_EVENT_ID_LEN: Final = 128

INBOUND_NAMESPACE: Final = uuid.UUID("6f0c1f0e-4b9e-5a53-9a57-5b0c2d7d8e11")
"""The uuid5 namespace of ids derived from provider event ids (stable forever: never change it)."""


# -- signatures ----------------------------------------------------------------------------------


class SignatureProblem(StrEnum):
    """Why a request's signature was refused (safe to log and to answer)."""

    MISSING = "missing_signature"
    MALFORMED_TIMESTAMP = "malformed_timestamp"
    MALFORMED_SIGNATURE = "malformed_signature"
    MISMATCH = "signature_mismatch"
    STALE = "stale_timestamp"
    FUTURE = "future_timestamp"


_PUBLIC_MESSAGES: Final = {
    SignatureProblem.MISSING: "the signature headers are missing",
    SignatureProblem.MALFORMED_TIMESTAMP: "the signature timestamp is not unix seconds",
    SignatureProblem.MALFORMED_SIGNATURE: "the signature is not of the form sha256=<hex>",
    SignatureProblem.MISMATCH: "the signature does not match the body",
    SignatureProblem.STALE: "the signature timestamp is too old",
    SignatureProblem.FUTURE: "the signature timestamp is in the future",
}


class SignatureError(ProcessorsError):
    """A webhook request whose signature or timestamp is refused.

    ``problem`` says why; the message is in general terms and never quotes a secret, the
    expected signature or the body.
    """

    def __init__(self, problem: SignatureProblem) -> None:
        super().__init__(_PUBLIC_MESSAGES[problem])
        self.problem = problem


def sign(secret: SecretStr, timestamp: str, body: bytes) -> str:
    """The ``X-Signature`` value for ``body`` signed at ``timestamp`` (``sha256=<hex>``)."""
    return _SCHEME + _digest(secret, timestamp, body)


def _digest(secret: SecretStr, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.get_secret_value().encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: SecretStr | Sequence[SecretStr],
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float | datetime,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Return if ``signature`` signs ``f"{timestamp}.{body}"`` with one of the secrets, in time.

    ``secret`` is one secret or several (current first, then previous ones).  ``now`` is the
    receiver's clock: unix seconds or a timezone-aware datetime.  Raises :class:`SignatureError`
    when a header is missing or malformed, when no secret produces ``signature``, or when
    ``timestamp`` is more than ``tolerance_s`` seconds before or after ``now``.  The HMAC is
    checked before the clock, so ``STALE``/``FUTURE`` are only reported for authentic requests.
    """
    secrets = [secret] if isinstance(secret, SecretStr) else list(secret)
    if not secrets:
        raise ConfigError("verify_signature needs at least one secret")
    if not timestamp or not signature:
        raise SignatureError(SignatureProblem.MISSING)
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureError(SignatureProblem.MALFORMED_TIMESTAMP)
    signature = signature.strip()
    offered = signature[len(_SCHEME) :].lower()
    if not signature.lower().startswith(_SCHEME) or len(offered) != 64 or not set(offered) <= _HEX_DIGITS:
        raise SignatureError(SignatureProblem.MALFORMED_SIGNATURE)
    # Every secret is tried (no early exit), so timing does not tell which one matched.
    matched = False
    for candidate in secrets:
        matched |= hmac.compare_digest(_digest(candidate, timestamp, body).encode(), offered.encode())
    if not matched:
        raise SignatureError(SignatureProblem.MISMATCH)
    now_s = _unix_seconds(now)
    age_s = now_s - int(timestamp)
    if age_s > tolerance_s:
        raise SignatureError(SignatureProblem.STALE)
    if age_s < -tolerance_s:
        raise SignatureError(SignatureProblem.FUTURE)


def _unix_seconds(now: float | datetime) -> float:
    if isinstance(now, datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ConfigError("now must be timezone-aware")
        return now.timestamp()
    if not math.isfinite(now):
        raise ConfigError("now must be a finite number of unix seconds")
    return float(now)


# -- what to publish -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What one verified callback becomes: a record on ``topic`` keyed by ``key``.

    ``value`` is an :class:`Event` (encoded with the server's codec and output format) or bytes
    published as they are (with ``headers``).
    """

    topic: str
    key: bytes
    value: Event | bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())


class InboundHandler(Protocol):
    """Turns one provider's verified callback payload into the record to publish.

    ``payload`` is the parsed JSON body (numbers with a fraction are ``Decimal``).  Return
    ``None`` for a well-formed callback that needs no record (an event type this project does
    not consume); raise a :class:`~processors.errors.ContractError` (its ``reason`` is sent back
    with the 400, so it must not quote values) for a malformed one.  Pure: no I/O.
    """

    def __call__(self, payload: Mapping[str, Any], *, provider_event_id: str) -> InboundMessage | None: ...


HandlerRegistry = Mapping[str, Callable[[], InboundHandler | None]]
"""Provider name → a factory that returns its handler, or ``None`` when it is not available
(the endpoint then answers 501).  Factories run on every request, so availability may change."""


def derived_uuid(provider: str, provider_event_id: str, purpose: str = "") -> uuid.UUID:
    """A deterministic UUID for a provider's event (the same on every retry and every instance)."""
    name = f"{provider}:{provider_event_id}" + (f":{purpose}" if purpose else "")
    return uuid.uuid5(INBOUND_NAMESPACE, name)


def provider_event_id(header: str | None, payload: Mapping[str, Any], body: bytes) -> str:
    """The provider event id, the de-duplication key: always something the signature covers.

    The body's own ``event_id`` when it has one (the ``X-Provider-Event-Id`` header, when sent,
    must equal it); otherwise ``sha256:`` and a digest of the signed body.  The header is not
    covered by the signature, so it never chooses the id: the same signed body sent again with a
    new header value is the same event.  Raises :class:`ValidationFailed` when the header and
    the body's id differ, or when the body's id is not 1 to 128 printable characters without
    spaces.
    """
    in_body = payload.get("event_id")
    if in_body is None:
        return "sha256:" + hashlib.sha256(body).hexdigest()[:40]
    if not isinstance(in_body, str):
        raise ValidationFailed("event_id must be a string")
    header = header.strip() if header is not None else None
    if header and header != in_body:
        raise ValidationFailed(f"the {EVENT_ID_HEADER} header and the signed event_id differ")
    if (
        not in_body
        or len(in_body) > _MAX_EVENT_ID_LEN
        or not in_body.isprintable()
        or any(c.isspace() for c in in_body)
    ):
        raise ValidationFailed(
            f"the provider event id must be 1 to {_MAX_EVENT_ID_LEN} characters, no spaces"
        )
    return in_body


# -- payment gateway -------------------------------------------------------------------------------


class PaymentConfirmationHandler:
    """The payment gateway's ``payment.confirmed`` callback → ``payment.confirmed`` event.

    The callback body::

        {"event_id": "evt_…", "event_type": "payment.confirmed", "created_at": "…Z",
         "data": {"payment_id": "PMT-…", "status": "COMPLETED", "gateway_reference": "ch_…",
                  "amount": 1185.50, "currency": "USD", "transaction_type": "CHARGE",
                  "policy_id": "POL-…", "reference_id": "INS-…", "idempotency_key": "idem_…",
                  "processed_at": "2024-06-01T10:00:00Z", "receipt_url": "https://…"}}

    The event is keyed by ``policy_id`` and published on ``results_topic``.  Its ``event_id``
    and its ``source_event_id`` are uuid5 values derived from the provider event id, so a
    confirmation delivered twice (even to two instances) carries the same ids.  Other event
    types are ignored (``None``).
    """

    event_type: Final = "payment.confirmed"

    def __init__(self, results_topic: str, *, source: str = "processors/api") -> None:
        self.results_topic = results_topic
        self.source = source

    def __call__(self, payload: Mapping[str, Any], *, provider_event_id: str) -> InboundMessage | None:
        event_type = payload.get("event_type")
        if not isinstance(event_type, str):
            raise ValidationFailed("event_type is required and must be a string")
        if event_type != self.event_type:
            return None
        data = payload.get("data")
        if not isinstance(data, Mapping):
            raise ValidationFailed("data is required and must be an object")
        if data.get("status") != "COMPLETED":
            raise ValidationFailed("data.status must be COMPLETED for payment.confirmed")
        event = payment_confirmed_event(data, provider_event_id=provider_event_id, source=self.source)
        return InboundMessage(
            topic=self.results_topic,
            key=event.key,
            value=event,
            headers=(("x-inbound-provider", PAYMENT_GATEWAY.encode()),),
        )


def payment_confirmed_event(data: Mapping[str, Any], *, provider_event_id: str, source: str) -> Event:
    """The ``payment.confirmed`` event for a callback's ``data`` (pure; ValidationFailed if invalid)."""
    amount = data.get("amount")
    if isinstance(amount, int) and not isinstance(amount, bool):
        amount = Decimal(amount)  # a whole amount arrives as a JSON integer
    fields = {
        "policy_id": data.get("policy_id"),
        "operation": data.get("transaction_type", "CHARGE"),
        "reference_id": data.get("reference_id"),
        "currency": data.get("currency"),
        "amount": amount,
        "idempotency_key": data.get("idempotency_key"),
        "source_event_id": derived_uuid(PAYMENT_GATEWAY, provider_event_id),
        "payment_id": data.get("payment_id"),
        "gateway_reference": data.get("gateway_reference"),
        "processed_at": data.get("processed_at"),
        "receipt_url": data.get("receipt_url"),
    }
    try:
        confirmed = PaymentConfirmed.model_validate(fields)
        return Event(
            event_id=derived_uuid(PAYMENT_GATEWAY, provider_event_id, "payment.confirmed"),
            event_type="payment.confirmed",
            source=source,
            occurred_at=confirmed.processed_at,
            subject=confirmed.policy_id,
            schema_version=SCHEMA_VERSION,
            data=confirmed,
        )
    except ValidationError as exc:
        raise ValidationFailed(_reason(exc, prefix="data.")) from exc


def _reason(exc: ValidationError, *, prefix: str) -> str:
    """Field paths and rules, never values (the models hide inputs in their errors)."""
    names = {"operation": "transaction_type"}
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        path = ".".join(str(part) for part in error["loc"])
        path = names.get(path, path)
        message = str(error["msg"])
        value = error.get("input")
        if isinstance(value, str | Decimal) and len(str(value)) >= 2:
            message = message.replace(str(value), "<value>")
        problems.append(f"{prefix}{path}: {message}" if path else message)
    return "; ".join(problems) or "invalid payload"


# -- KYC provider ----------------------------------------------------------------------------------


class KycCallbackHandler:
    """The KYC provider's result callback, mapped by the KYC app's pure mapping function.

    ``function(payload)`` (or, if it takes one, ``function(payload, provider_event_id=...)``;
    the KYC app registers ``processors.apps.kyc.mapping.decision_from_callback``) returns the KYC decision
    :class:`Event` (subject = customer_id), an :class:`InboundMessage`, or ``None`` to ignore
    the callback, and raises a ``ContractError`` for a malformed one.  An :class:`Event` is
    published on ``results_topic`` keyed by its subject.
    """

    def __init__(self, function: Callable[..., Any], results_topic: str) -> None:
        self._function = function
        self.results_topic = results_topic
        try:
            self._wants_event_id = "provider_event_id" in inspect.signature(function).parameters
        except (TypeError, ValueError):  # no signature to read: call it with the payload only
            self._wants_event_id = False

    def __call__(self, payload: Mapping[str, Any], *, provider_event_id: str) -> InboundMessage | None:
        try:
            if self._wants_event_id:
                result = self._function(payload, provider_event_id=provider_event_id)
            else:
                result = self._function(payload)
        except ContractError:
            raise
        except ValidationError as exc:
            raise ValidationFailed(_reason(exc, prefix="")) from exc
        if result is None or isinstance(result, InboundMessage):
            return result
        if isinstance(result, Event):
            return InboundMessage(
                topic=self.results_topic,
                key=result.key,
                value=result,
                headers=(("x-inbound-provider", KYC_PROVIDER.encode()),),
            )
        raise TypeError(f"the KYC callback mapping returned {type(result).__name__}, not an Event")
