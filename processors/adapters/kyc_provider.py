"""KYC/AML provider adapter: ``POST /api/v1/customers/{id}/kyc`` with a Bearer token and an idempotency key.

The request is the seed's (``verification_type``, ``documents``, ``consent``) plus
``client_reference``, our id of the request (the ``event_id`` of the ``customer.kyc_requested``),
which the provider echoes in its answers and callbacks.  The ``Idempotency-Key`` header makes a
retry of the same request safe: the provider answers it with the same verification.

One call = one attempt.  Classification of the answer:

====================================  =======================================================
200/201 ``APPROVED|REVIEW|REJECTED``   ``KycOutcome`` with the decision — a business result, even
                                       ``REJECTED``, never an error
202, or 2xx ``PENDING``                ``KycOutcome`` pending: the decision comes later by callback
unreadable or incomplete 2xx body      ``Retriable``: the same key makes a retry safe
other statuses                         :func:`~processors.resilience.classify.classify_status`:
                                       409, 429, 5xx ``Retriable`` (``Retry-After`` honoured);
                                       400, 401, 403, 404, 422 ``Permanent``
====================================  =======================================================

:func:`parse_decision` reads a decision object (the seed's response shape) and is shared by the
synchronous answer and the asynchronous callback (:mod:`processors.apps.kyc.mapping`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from processors.adapters import jsonwire
from processors.adapters.http import HttpRequest, HttpResponse, HttpTransport, TimeoutSettings
from processors.errors import Retriable
from processors.resilience.classify import classify_status
from processors.utc import to_utc

__all__ = [
    "CHECK_STATUSES",
    "CHECK_TYPES",
    "DECISION_STATUSES",
    "ENDPOINT",
    "KYC_PATH",
    "KycOutcome",
    "KycProvider",
    "KycProviderSettings",
    "KycRequest",
    "ProviderCheck",
    "ProviderDecision",
    "ProviderMatch",
    "parse_decision",
    "parse_response",
    "risk_level_for",
]

KYC_PATH: Final = "/api/v1/customers/{id}/kyc"
ENDPOINT: Final = "kyc-provider"

DECISION_STATUSES: Final = frozenset({"APPROVED", "REVIEW", "REJECTED"})
CHECK_TYPES: Final = frozenset({"DOCUMENT_AUTHENTICITY", "FACE_MATCH", "SANCTIONS_SCREENING", "PEP_CHECK"})
CHECK_STATUSES: Final = frozenset({"PASSED", "FAILED", "REVIEW"})
_RISK_LEVELS: Final = frozenset({"LOW", "MEDIUM", "HIGH"})

DecisionStatus = Literal["APPROVED", "REVIEW", "REJECTED"]


class KycProviderSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8600"
    token: SecretStr = SecretStr("sandbox-token")
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)


@dataclass(frozen=True, slots=True)
class KycRequest:
    """The body of one verification request (seed shape plus ``client_reference``).

    ``documents`` and ``consent`` are JSON-ready mappings; documents hold numbers and image
    URLs (personal data), so the repr shows only the shape.
    """

    verification_type: str
    documents: tuple[Mapping[str, Any], ...] = field(repr=False)
    consent: Mapping[str, Any] = field(repr=False)
    client_reference: str

    def body(self) -> dict[str, Any]:
        return {
            "verification_type": self.verification_type,
            "documents": [dict(document) for document in self.documents],
            "consent": dict(self.consent),
            "client_reference": self.client_reference,
        }

    def __repr__(self) -> str:
        return (
            f"KycRequest(verification_type={self.verification_type!r}, "
            f"documents={len(self.documents)}, client_reference={self.client_reference!r})"
        )


@dataclass(frozen=True, slots=True)
class ProviderMatch:
    list_name: str
    score: Decimal
    name: str | None = field(default=None, repr=False)  # a listed person's name: personal data


@dataclass(frozen=True, slots=True)
class ProviderCheck:
    type: str
    status: str
    confidence: Decimal | None = None
    matches: tuple[ProviderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderDecision:
    """A decision as the provider reported it (seed response shape)."""

    verification_id: str
    status: DecisionStatus
    risk_score: int
    risk_level: str
    checks: tuple[ProviderCheck, ...]
    verified_at: datetime


@dataclass(frozen=True, slots=True)
class KycOutcome:
    """What one call produced: a decision now, or a pending verification decided later."""

    status: Literal["DECIDED", "PENDING"]
    verification_id: str
    decision: ProviderDecision | None = None

    @classmethod
    def decided(cls, decision: ProviderDecision) -> KycOutcome:
        return cls("DECIDED", decision.verification_id, decision)

    @classmethod
    def pending(cls, verification_id: str) -> KycOutcome:
        return cls("PENDING", verification_id, None)


def risk_level_for(risk_score: int) -> str:
    """The level a provider that gives only a score means: 0–29 LOW, 30–69 MEDIUM, 70–100 HIGH."""
    if risk_score < 30:
        return "LOW"
    if risk_score < 70:
        return "MEDIUM"
    return "HIGH"


class KycProvider:
    """Client of the KYC provider.  No I/O before :meth:`start` (or the first call)."""

    endpoint: Final = ENDPOINT

    def __init__(self, settings: KycProviderSettings, transport: HttpTransport) -> None:
        self.settings = settings
        self._transport = transport
        self._base = settings.base_url.rstrip("/")

    async def start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        await self._transport.close()

    def url(self, customer_id: str) -> str:
        return self._base + KYC_PATH.format(id=quote(customer_id, safe=""))

    async def verify(self, customer_id: str, request: KycRequest, idempotency_key: str) -> KycOutcome:
        """One verification attempt; see the module docstring for what each answer becomes."""
        http_request = HttpRequest(
            method="POST",
            url=self.url(customer_id),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {self.settings.token.get_secret_value()}",
                "Idempotency-Key": idempotency_key,
            },
            body=jsonwire.dumps(request.body()),
        )
        response = await self._transport.send(http_request, timeouts=self.settings.timeouts)
        return parse_response(response)


def parse_response(response: HttpResponse) -> KycOutcome:
    status = response.status
    if 200 <= status <= 299:
        try:
            payload = jsonwire.loads(response.body)
            if not isinstance(payload, dict):
                raise ValueError("the body is not a JSON object")
            return _outcome(payload, status)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise Retriable(f"{ENDPOINT} answered {status} with an unreadable body: {exc}") from exc
    error = classify_status(
        status,
        response.retry_after_s(),
        context=f"{ENDPOINT} POST {KYC_PATH} ({response.error_reason()})",
    )
    assert error is not None  # not 2xx
    raise error


def _outcome(payload: Mapping[str, Any], http_status: int) -> KycOutcome:
    provider_status = str(payload.get("status", "")).upper()
    if http_status == 202 or provider_status == "PENDING":
        return KycOutcome.pending(_text(payload, "verification_id"))
    return KycOutcome.decided(parse_decision(payload))


def parse_decision(payload: Mapping[str, Any]) -> ProviderDecision:
    """A decision object (seed response shape) → :class:`ProviderDecision`.

    Raises ``ValueError`` (or ``KeyError``/``TypeError``) naming the field, never its value.
    Numbers may be JSON numbers (read as ``Decimal`` by :mod:`jsonwire`) or decimal strings;
    floats are never involved.  A missing ``risk_level`` is derived from the score.
    """
    status = str(payload["status"]).upper()
    if status not in DECISION_STATUSES:
        raise ValueError(f"status must be one of {sorted(DECISION_STATUSES)}")
    risk_score = _whole(payload.get("risk_score"), "risk_score")
    if not 0 <= risk_score <= 100:
        raise ValueError("risk_score must lie between 0 and 100")
    raw_level = payload.get("risk_level")
    risk_level = str(raw_level).upper() if raw_level is not None else risk_level_for(risk_score)
    if risk_level not in _RISK_LEVELS:
        raise ValueError(f"risk_level must be one of {sorted(_RISK_LEVELS)}")
    checks = payload.get("checks", [])
    if not isinstance(checks, list):
        raise TypeError("checks must be a list")
    verified_at = _time(payload.get("verified_at"))
    if verified_at is None:
        raise ValueError("verified_at is required")
    return ProviderDecision(
        verification_id=_text(payload, "verification_id"),
        status=status,  # type: ignore[arg-type]  # checked against DECISION_STATUSES above
        risk_score=risk_score,
        risk_level=risk_level,
        checks=tuple(_check(check, i) for i, check in enumerate(checks)),
        verified_at=verified_at,
    )


def _check(raw: object, index: int) -> ProviderCheck:
    if not isinstance(raw, Mapping):
        raise TypeError(f"checks[{index}] must be an object")
    kind = str(raw.get("type", "")).upper()
    if kind not in CHECK_TYPES:
        raise ValueError(f"checks[{index}].type must be one of {sorted(CHECK_TYPES)}")
    status = str(raw.get("status", "")).upper()
    if status not in CHECK_STATUSES:
        raise ValueError(f"checks[{index}].status must be one of {sorted(CHECK_STATUSES)}")
    confidence = raw.get("confidence")
    matches = raw.get("matches") or []
    if not isinstance(matches, list):
        raise TypeError(f"checks[{index}].matches must be a list")
    return ProviderCheck(
        type=kind,
        status=status,
        confidence=None if confidence is None else _decimal(confidence, f"checks[{index}].confidence"),
        matches=tuple(_match(match, f"checks[{index}].matches[{j}]") for j, match in enumerate(matches)),
    )


def _match(raw: object, where: str) -> ProviderMatch:
    if not isinstance(raw, Mapping):
        raise TypeError(f"{where} must be an object")
    list_name = raw.get("list_name")
    if not isinstance(list_name, str) or not list_name:
        raise ValueError(f"{where}.list_name must be a non-empty string")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{where}.name must be a string")
    return ProviderMatch(list_name=list_name, score=_decimal(raw.get("score"), f"{where}.score"), name=name)


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"{name} must be a number")
    try:
        number = Decimal(value)
    except ArithmeticError as exc:
        raise ValueError(f"{name} must be a number") from exc
    if not number.is_finite():
        raise ValueError(f"{name} must be finite")
    return number


def _whole(value: object, name: str) -> int:
    number = _decimal(value, name)
    if number != number.to_integral_value():
        raise ValueError(f"{name} must be a whole number")
    return int(number)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise TypeError("verified_at must be a string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("verified_at must be an ISO 8601 timestamp") from None
    return to_utc(parsed, naive_is_utc=True)
