"""Simulated KYC/AML provider: ``POST /api/v1/customers/{id}/kyc`` with outcomes chosen by the input.

The request is the seed's (``verification_type``, ``documents``, ``consent``) plus an optional
``client_reference`` that is echoed back; ``Authorization: Bearer <token>`` and an
``Idempotency-Key`` header are required.

**Outcomes are deterministic**: the document numbers choose them (case-insensitive prefixes).

===========  ======================================================  ==========
prefix       what the provider finds                                 decision
===========  ======================================================  ==========
``SANC``     a sanctions-list hit (``SANCTIONS_SCREENING`` FAILED)    REJECTED
``FORGE``    a forged document (``DOCUMENT_AUTHENTICITY`` FAILED)    REJECTED
``FACEX``    a face mismatch (``FACE_MATCH`` FAILED)                 REJECTED
``FACE``     a weak face match (``FACE_MATCH`` REVIEW)               REVIEW
``PEP``      a politically exposed person (``PEP_CHECK`` REVIEW)     REVIEW
other        nothing                                                 APPROVED
===========  ======================================================  ==========

With several documents, each check takes its worst result over the documents; any FAILED check
rejects, else any REVIEW check asks for review.  The risk score is derived from the document
numbers: 0–29 (LOW) when approved, 40–69 (MEDIUM) for review, 75–100 (HIGH) when rejected.
Confidences and match scores are derived the same way, so one input always gets one answer.

Order of checks for one request (the first that applies answers):

======================================  ====  =====================================================
``outage``                              503   ``Retry-After: 1``
missing or wrong ``Bearer`` token       401
bad JSON or fields, no Idempotency-Key  400   ``{"error": "validation_error", "message": ...}``
consent not given                       422   ``{"error": "consent_required", ...}``
a document expired (provider's today)   422   ``{"error": "document_expired", ...}``
key known, other request                422   ``{"error": "idempotency_key_reused", ...}``
key known, first request still busy     409   ``Retry-After: 1``
key known, same request                 the stored answer, header ``Idempotent-Replayed: true``
======================================  ====  =====================================================

A new key is claimed, the injected latency passes, ``error_rate`` may answer 503 without
verifying; otherwise the customer is verified (``verifications_by_key`` counts it) and:

* **sync mode** answers 200 with the decision (the seed's response shape plus ``customer_id``,
  ``idempotency_key`` and ``client_reference``);
* **async mode** answers 202 ``{"verification_id", "status": "PENDING", ...}`` and,
  ``callback_delay_ms`` later, POSTs the decision to ``callback_url``::

      {"event_id": "evt_kyc_…", "event_type": "verification.completed", "created_at": "…Z",
       "data": {<the decision, as in sync mode>}}

  signed with the headers ``X-Provider-Event-Id`` (the ``event_id``, unique per decision),
  ``X-Signature-Timestamp`` (unix seconds) and ``X-Signature: sha256=<hex HMAC-SHA256 of
  f"{timestamp}.{body}" with webhook_secret>``.  An answer other than 2xx (or none) is retried
  up to ``callback_attempts`` times, the delay doubling from ``callback_retry_delay_ms``.
  With ``duplicate_callbacks`` every callback is delivered twice (same ``event_id`` and body,
  fresh signature), as providers do.

**Memory is bounded.**  The provider remembers at most ``max_keys`` idempotency keys (1,000,000
by default), and as many entries of ``verifications_by_key``: when full, the least recently
used key is forgotten (a replay counts as a use) and the eviction is counted.  A forgotten key
is unknown from then on, so its next request is verified again.  ``total_verifications``
counts every verification, forgotten keys included.

The control API under ``/_sandbox/kyc/`` (no auth; sandbox only): ``GET verifications``
(``?key=`` for one key), ``GET config``, ``PUT config`` (partial), ``POST reset``,
``GET requests`` (answers by status code), ``GET callbacks`` (deliveries by answer status,
0: no answer), ``GET bounds`` (size, bound and evictions of each per-key structure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, Literal, Self

import aiohttp
from aiohttp import web
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from processors.adapters import jsonwire
from processors.errors import ContractError, DecodeError, ValidationFailed
from processors_dev.sandbox.common import (
    DEFAULT_MAX_KEYS,
    BoundedDict,
    ControlApi,
    SandboxConfig,
    error_response,
    refusal,
)

__all__ = [
    "CALLBACK_EVENT_TYPE",
    "CONTROL_PREFIX",
    "DEFAULT_TOKEN",
    "DEFAULT_WEBHOOK_SECRET",
    "KYC_APP_KEY",
    "KYC_PATH",
    "OUTCOME_PREFIXES",
    "TOKEN_ENV",
    "WEBHOOK_SECRET_ENV",
    "KycConfig",
    "KycProviderSim",
    "VerificationRequest",
    "decide",
    "outcome_of",
    "parse_verification_request",
    "sign_callback",
]

log = logging.getLogger(__name__)

KYC_PATH: Final = "/api/v1/customers/{customer_id}/kyc"
CONTROL_PREFIX: Final = "/_sandbox/kyc"
DEFAULT_TOKEN: Final = "sandbox-token"  # noqa: S105 - the sandbox's documented default
TOKEN_ENV: Final = "SANDBOX_KYC_TOKEN"  # noqa: S105 - the name of the variable holding the token
DEFAULT_WEBHOOK_SECRET: Final = "sandbox-kyc-webhook-secret"  # noqa: S105 - documented default
WEBHOOK_SECRET_ENV: Final = "SANDBOX_KYC_WEBHOOK_SECRET"  # noqa: S105 - a variable name
CALLBACK_EVENT_TYPE: Final = "verification.completed"

Outcome = Literal[
    "sanctions_hit", "forged_document", "face_mismatch", "weak_face_match", "pep_match", "clear"
]

OUTCOME_PREFIXES: Final[tuple[tuple[str, Outcome], ...]] = (
    ("SANC", "sanctions_hit"),
    ("FORGE", "forged_document"),
    ("FACEX", "face_mismatch"),
    ("FACE", "weak_face_match"),
    ("PEP", "pep_match"),
)
"""Document-number prefixes (upper case, longest first where they overlap) and what they choose."""

_VERIFICATION_TYPES: Final = frozenset({"IDENTITY", "ADDRESS", "ENHANCED_DUE_DILIGENCE"})
_DOCUMENT_TYPES: Final = frozenset({"PASSPORT", "DRIVING_LICENCE", "NATIONAL_ID", "UTILITY_BILL"})
_MAX_DOCUMENTS: Final = 10
_MAX_TEXT_LEN: Final = 255
_LISTED_NAMES: Final = (
    "Viktor Example",
    "Mara Sample",
    "Oleg Placeholder",
    "Dana Fictional",
    "Ivo Testperson",
)

_JSON: Final = "application/json"
_UNAUTHORIZED_BODY: Final = b'{"error":"unauthorized","message":"a valid Bearer token is required"}'
_OUTAGE_BODY: Final = b'{"error":"service_unavailable","message":"the KYC provider is down (outage)"}'
_UNAVAILABLE_BODY: Final = (
    b'{"error":"service_unavailable","message":"temporary failure, nothing was verified"}'
)
_IN_PROGRESS_BODY: Final = (
    b'{"error":"request_in_progress","message":"the first request with this key is still being processed"}'
)
_REUSED_BODY: Final = (
    b'{"error":"idempotency_key_reused","message":"this idempotency key was used with a different request"}'
)


class KycConfig(SandboxConfig):
    """Knobs of the simulated KYC provider.  Frozen; change it with :meth:`KycProviderSim.update_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["sync", "async"] = "sync"
    """``sync``: the decision in the answer; ``async``: 202 pending, the decision by callback."""
    callback_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    """Where decisions are POSTed in async mode (required then)."""
    webhook_secret: SecretStr = SecretStr(DEFAULT_WEBHOOK_SECRET)
    """The HMAC secret that signs callbacks."""
    callback_delay_ms: float = Field(default=100.0, ge=0, le=600_000, allow_inf_nan=False)
    duplicate_callbacks: bool = False
    """Deliver every callback twice (the receiver must publish it once)."""
    callback_attempts: int = Field(default=3, ge=1, le=20)
    """Deliveries tried per callback while the receiver does not answer 2xx."""
    callback_retry_delay_ms: float = Field(default=200.0, ge=0, le=600_000, allow_inf_nan=False)
    latency_ms: float = Field(default=0.0, ge=0, le=600_000, allow_inf_nan=False)
    error_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """Probability of answering 503 before verifying."""
    outage: bool = False
    token: SecretStr = SecretStr(DEFAULT_TOKEN)
    seed: int | None = None

    config_name: ClassVar[str] = "KYC provider config"

    @model_validator(mode="after")
    def _async_needs_a_callback_url(self) -> Self:
        if self.mode == "async" and self.callback_url is None:
            raise ValueError("async mode needs a callback_url")
        return self


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """A validated verification request.  Document numbers stay out of the repr."""

    customer_id: str
    idempotency_key: str
    verification_type: str
    document_numbers: tuple[str, ...] = field(repr=False)
    expiry_dates: tuple[date | None, ...] = field(repr=False)
    terms_accepted: bool
    data_processing_accepted: bool
    client_reference: str | None
    fingerprint: bytes = field(repr=False)


def parse_verification_request(
    customer_id: str, body: bytes, idempotency_header: str | None
) -> VerificationRequest:
    """Decode and validate one request.

    Raises :class:`DecodeError` or :class:`ValidationFailed`; the ``reason`` names the field and
    the rule, never the value (the body holds document numbers and image URLs).
    """
    if idempotency_header is None or not idempotency_header:
        raise ValidationFailed("the Idempotency-Key header is required")
    _check_text(idempotency_header, "Idempotency-Key")
    _check_text(customer_id, "customer id")
    try:
        payload = jsonwire.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ValidationFailed("body must be a JSON object")
    verification_type = payload.get("verification_type")
    if verification_type not in _VERIFICATION_TYPES:
        raise ValidationFailed(f"verification_type must be one of {', '.join(sorted(_VERIFICATION_TYPES))}")
    documents = payload.get("documents")
    if not isinstance(documents, list) or not 1 <= len(documents) <= _MAX_DOCUMENTS:
        raise ValidationFailed(f"documents must be a list of 1 to {_MAX_DOCUMENTS} objects")
    numbers: list[str] = []
    expiries: list[date | None] = []
    for index, document in enumerate(documents):
        number, expiry = _document(document, f"documents[{index}]")
        numbers.append(number)
        expiries.append(expiry)
    consent = payload.get("consent")
    if not isinstance(consent, dict):
        raise ValidationFailed("consent must be an object")
    accepted = []
    for name in ("terms_accepted", "data_processing_accepted"):
        value = consent.get(name)
        if not isinstance(value, bool):
            raise ValidationFailed(f"consent.{name} must be true or false")
        accepted.append(value)
    if not isinstance(consent.get("timestamp"), str):
        raise ValidationFailed("consent.timestamp must be a timestamp string")
    reference = payload.get("client_reference")
    if reference is not None:
        if not isinstance(reference, str):
            raise ValidationFailed("client_reference must be a string")
        _check_text(reference, "client_reference")
    canonical = customer_id + "\x1f" + json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return VerificationRequest(
        customer_id=customer_id,
        idempotency_key=idempotency_header,
        verification_type=verification_type,
        document_numbers=tuple(numbers),
        expiry_dates=tuple(expiries),
        terms_accepted=accepted[0],
        data_processing_accepted=accepted[1],
        client_reference=reference,
        fingerprint=hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest(),
    )


def _document(raw: object, where: str) -> tuple[str, date | None]:
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where} must be an object")
    if raw.get("type") not in _DOCUMENT_TYPES:
        raise ValidationFailed(f"{where}.type must be one of {', '.join(sorted(_DOCUMENT_TYPES))}")
    number = raw.get("document_number")
    if not isinstance(number, str):
        raise ValidationFailed(f"{where}.document_number must be a string")
    _check_text(number, f"{where}.document_number")
    country = raw.get("issuing_country")
    if not (isinstance(country, str) and len(country) == 2 and country.isascii() and country.isupper()):
        raise ValidationFailed(f"{where}.issuing_country must be an ISO 3166-1 alpha-2 code")
    if not isinstance(raw.get("front_image_url"), str):
        raise ValidationFailed(f"{where}.front_image_url must be a URL")
    expiry = raw.get("expiry_date")
    if expiry is None:
        return number, None
    problem = f"{where}.expiry_date must be a date (YYYY-MM-DD)"
    if not isinstance(expiry, str):
        raise ValidationFailed(problem)
    try:
        return number, date.fromisoformat(expiry)
    except ValueError:
        raise ValidationFailed(problem) from None


def _check_text(value: str, name: str) -> None:
    if not value or len(value) > _MAX_TEXT_LEN or not value.isprintable():
        raise ValidationFailed(f"{name} must be 1 to {_MAX_TEXT_LEN} printable characters")


# -- the decision (pure) -------------------------------------------------------------------------


def outcome_of(document_number: str) -> Outcome:
    """What one document number chooses (see :data:`OUTCOME_PREFIXES`)."""
    upper = document_number.upper()
    for prefix, outcome in OUTCOME_PREFIXES:
        if upper.startswith(prefix):
            return outcome
    return "clear"


def decide(document_numbers: Sequence[str]) -> dict[str, Any]:
    """The decision fields for these documents: ``status``, ``risk_score``, ``risk_level``, ``checks``.

    Deterministic: numbers with ``Decimal`` values derived from a hash of the document numbers.
    """
    outcomes = [outcome_of(number) for number in document_numbers]
    seed = _hash("\x1f".join(document_numbers))

    def confidence(high: bool, salt: str) -> Decimal:
        value = _hash(f"{seed}|{salt}") % 10
        return Decimal(90 + value).scaleb(-2) if high else Decimal(10 + 3 * value).scaleb(-2)

    def matches(kind: Outcome, list_name: str) -> list[dict[str, Any]]:
        hits = []
        for number, outcome in zip(document_numbers, outcomes, strict=True):
            if outcome == kind:
                h = _hash(number)
                hits.append(
                    {
                        "name": _LISTED_NAMES[h % len(_LISTED_NAMES)],
                        "list_name": list_name,
                        "score": Decimal(85 + h % 15).scaleb(-2),
                    }
                )
        return hits

    forged = "forged_document" in outcomes
    if "face_mismatch" in outcomes:
        face: dict[str, Any] = {"status": "FAILED", "confidence": confidence(False, "face")}
    elif "weak_face_match" in outcomes:
        face = {"status": "REVIEW", "confidence": Decimal(60 + _hash(f"{seed}|weak") % 15).scaleb(-2)}
    else:
        face = {"status": "PASSED", "confidence": confidence(True, "face")}
    sanctions = matches("sanctions_hit", "OFAC-SDN")
    peps = matches("pep_match", "PEP-GLOBAL")
    checks: list[dict[str, Any]] = [
        {
            "type": "DOCUMENT_AUTHENTICITY",
            "status": "FAILED" if forged else "PASSED",
            "confidence": confidence(not forged, "document"),
        },
        {"type": "FACE_MATCH", **face},
        {"type": "SANCTIONS_SCREENING", "status": "FAILED" if sanctions else "PASSED", "matches": sanctions},
        {"type": "PEP_CHECK", "status": "REVIEW" if peps else "PASSED", "matches": peps},
    ]
    statuses = {check["status"] for check in checks}
    if "FAILED" in statuses:
        status, risk_score, risk_level = "REJECTED", 75 + seed % 26, "HIGH"
    elif "REVIEW" in statuses:
        status, risk_score, risk_level = "REVIEW", 40 + seed % 30, "MEDIUM"
    else:
        status, risk_score, risk_level = "APPROVED", seed % 30, "LOW"
    return {"status": status, "risk_score": risk_score, "risk_level": risk_level, "checks": checks}


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def sign_callback(secret: SecretStr, timestamp: str, body: bytes) -> str:
    """``X-Signature`` for a callback: ``sha256=<hex HMAC-SHA256 of f"{timestamp}.{body}">``."""
    message = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


# -- the simulator -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """What the provider remembers about one idempotency key."""

    fingerprint: bytes
    status: int = 0  # 0 while the first request with the key is being processed
    body: bytes = b""


def _utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KycProviderSim(ControlApi[KycConfig]):
    """State and HTTP routes of the simulated KYC provider.

    All state lives on one event loop; a key is claimed before the handler's first ``await``
    after validation, so concurrent requests with one key cannot both verify.
    ``verifications_by_key`` counts verifications per idempotency key (a correct client shows 1
    everywhere), ``requests_by_status`` the endpoint's answers by status and
    ``callbacks_by_status`` the callback deliveries by the receiver's answer (0: none).
    Per-key state holds at most ``max_keys`` keys each (see the module doc).
    """

    control_name: ClassVar[str] = "KYC provider"
    control_log: ClassVar[logging.Logger] = log

    def __init__(self, config: KycConfig | None = None, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.verifications_by_key: BoundedDict[str, int] = BoundedDict(max_keys)
        self.requests_by_status: dict[int, int] = {}
        self.callbacks_by_status: dict[int, int] = {}
        self._verifications_total = 0
        self._config = config or KycConfig()
        self._rng = random.Random(self._config.seed)
        self._auth = self._expected_auth(self._config)
        self._entries: BoundedDict[str, _Entry] = BoundedDict(max_keys)
        self._callbacks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- configuration and state -------------------------------------------------------------

    def configure(self, config: KycConfig) -> None:
        previous = self._config
        self._config = config
        self._auth = self._expected_auth(config)
        if config.seed != previous.seed:
            self._rng = random.Random(config.seed)

    def reset(self) -> None:
        """Forget every key and counter, drop the callbacks not yet delivered, restart the random sequence."""
        for task in self._callbacks:
            task.cancel()
        self._entries.forget()
        self.verifications_by_key.forget()
        self._verifications_total = 0
        self.requests_by_status.clear()
        self.callbacks_by_status.clear()
        self._rng = random.Random(self._config.seed)

    @property
    def total_verifications(self) -> int:
        """Verifications since the last reset, those of forgotten keys included."""
        return self._verifications_total

    def bounds(self) -> dict[str, dict[str, int]]:
        return {
            "idempotency_keys": self._entries.stats(),
            "verifications_by_key": self.verifications_by_key.stats(),
        }

    @property
    def callbacks_outstanding(self) -> int:
        """Callbacks scheduled and not yet finished (delivered or given up)."""
        return len(self._callbacks)

    async def wait_callbacks(self) -> None:
        """Return once every callback scheduled so far has been delivered or given up."""
        while self._callbacks:
            await asyncio.gather(*list(self._callbacks), return_exceptions=True)

    # -- HTTP --------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(KYC_PATH, self._handle_verification),
            web.get(f"{CONTROL_PREFIX}/verifications", self._handle_verifications),
            web.get(f"{CONTROL_PREFIX}/config", self._handle_get_config),
            web.put(f"{CONTROL_PREFIX}/config", self._handle_put_config),
            web.post(f"{CONTROL_PREFIX}/reset", self._handle_reset),
            web.get(f"{CONTROL_PREFIX}/requests", self._handle_requests),
            web.get(f"{CONTROL_PREFIX}/callbacks", self._handle_callbacks),
            web.get(f"{CONTROL_PREFIX}/bounds", self._handle_bounds),
        ]

    def add_to(self, app: web.Application) -> None:
        """Mount the routes on ``app`` and make the sim reachable as ``app[KYC_APP_KEY]``."""
        app.add_routes(self.routes())
        app[KYC_APP_KEY] = self
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_shutdown(self, _app: web.Application) -> None:
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*list(self._callbacks), return_exceptions=True)

    async def _on_cleanup(self, _app: web.Application) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _handle_verification(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        self.requests_by_status[response.status] = self.requests_by_status.get(response.status, 0) + 1
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        config = self._config
        if config.outage:
            return error_response(503, _OUTAGE_BODY, "1")
        authorization = request.headers.get("Authorization")
        if authorization is None or not hmac.compare_digest(
            authorization.encode("utf-8", "replace"), self._auth
        ):
            return web.Response(
                status=401,
                body=_UNAUTHORIZED_BODY,
                content_type=_JSON,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            verification = parse_verification_request(
                request.match_info["customer_id"],
                await request.read(),
                request.headers.get("Idempotency-Key"),
            )
        except ContractError as exc:
            return refusal(400, "validation_error", exc.reason)
        refused = self._refuse(verification)
        if refused is not None:
            return refused

        key = verification.idempotency_key
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != verification.fingerprint:
                return error_response(422, _REUSED_BODY)
            if entry.status == 0:
                return error_response(409, _IN_PROGRESS_BODY, "1")
            self._entries.touch(key)
            self.verifications_by_key.touch(key)
            return web.Response(
                status=entry.status,
                body=entry.body,
                content_type=_JSON,
                headers={"Idempotent-Replayed": "true"},
            )

        claim = _Entry(verification.fingerprint)
        self._entries[key] = claim
        try:
            if config.latency_ms > 0:
                await asyncio.sleep(config.latency_ms / 1000.0)
            if config.error_rate and self._rng.random() < config.error_rate:
                return error_response(503, _UNAVAILABLE_BODY)
            decision = self._decision(verification)
            if config.mode == "sync":
                claim.status, claim.body = 200, jsonwire.dumps(decision)
            else:
                pending = {name: decision[name] for name in _ECHOED if name in decision}
                claim.status, claim.body = 202, jsonwire.dumps({**pending, "status": "PENDING"})
                self._call_back_later(config, decision)
            self.verifications_by_key[key] = self.verifications_by_key.get(key, 0) + 1
            self._verifications_total += 1
        finally:
            if claim.status == 0 and self._entries.get(key) is claim:
                del self._entries[key]
        return web.Response(status=claim.status, body=claim.body, content_type=_JSON)

    @staticmethod
    def _refuse(verification: VerificationRequest) -> web.Response | None:
        if not (verification.terms_accepted and verification.data_processing_accepted):
            return refusal(422, "consent_required", "terms and data processing must both be accepted")
        today = datetime.now(UTC).date()
        for index, expiry in enumerate(verification.expiry_dates):
            if expiry is not None and expiry < today:
                return refusal(422, "document_expired", f"documents[{index}] has expired")
        return None

    def _decision(self, verification: VerificationRequest) -> dict[str, Any]:
        digest = hashlib.sha256(
            f"{verification.customer_id}|{verification.idempotency_key}".encode("utf-8", "surrogatepass")
        ).hexdigest()
        decision: dict[str, Any] = {
            "verification_id": f"VRF-{datetime.now(UTC).year}-{digest[:12].upper()}",
            "customer_id": verification.customer_id,
            **decide(verification.document_numbers),
            "verified_at": _utc_now_text(),
            "idempotency_key": verification.idempotency_key,
        }
        if verification.client_reference is not None:
            decision["client_reference"] = verification.client_reference
        return decision

    # -- asynchronous callbacks --------------------------------------------------------------

    def _call_back_later(self, config: KycConfig, decision: dict[str, Any]) -> None:
        task = asyncio.create_task(self._call_back(config, decision))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _call_back(self, config: KycConfig, decision: dict[str, Any]) -> None:
        await asyncio.sleep(config.callback_delay_ms / 1000.0)  # the provider decides later
        assert config.callback_url is not None  # KycConfig refuses async mode without one
        now = _utc_now_text()
        event_id = "evt_kyc_" + hashlib.sha256(str(decision["verification_id"]).encode()).hexdigest()[:24]
        body = jsonwire.dumps(
            {
                "event_id": event_id,
                "event_type": CALLBACK_EVENT_TYPE,
                "created_at": now,
                "data": {**decision, "verified_at": now},
            }
        )
        for _ in range(2 if config.duplicate_callbacks else 1):
            await self._deliver(config, config.callback_url, event_id, body)

    async def _deliver(self, config: KycConfig, url: str, event_id: str, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        delay_s = config.callback_retry_delay_ms / 1000.0
        for attempt in range(1, config.callback_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": _JSON,
                "X-Provider-Event-Id": event_id,
                "X-Signature-Timestamp": timestamp,
                "X-Signature": sign_callback(config.webhook_secret, timestamp, body),
            }
            status = 0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            self.callbacks_by_status[status] = self.callbacks_by_status.get(status, 0) + 1
            if 200 <= status <= 299:
                return
            log.info(
                "KYC provider: callback %s answered %s (attempt %d)", event_id, status or "nothing", attempt
            )
            if attempt < config.callback_attempts:
                await asyncio.sleep(delay_s)
                delay_s *= 2

    # -- control API -------------------------------------------------------------------------

    async def _handle_verifications(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if key is not None:
            return web.json_response({"key": key, "verifications": self.verifications_by_key.get(key, 0)})
        return web.json_response(
            {
                "total": self.total_verifications,
                "keys": len(self.verifications_by_key),
                "by_key": self.verifications_by_key,
            }
        )

    async def _handle_callbacks(self, _request: web.Request) -> web.Response:
        by_status = {str(status): count for status, count in sorted(self.callbacks_by_status.items())}
        return web.json_response(
            {
                "delivered": sum(n for status, n in self.callbacks_by_status.items() if 200 <= status <= 299),
                "outstanding": self.callbacks_outstanding,
                "by_status": by_status,
            }
        )

    @staticmethod
    def _expected_auth(config: KycConfig) -> bytes:
        return b"Bearer " + config.token.get_secret_value().encode("ascii")


_ECHOED: Final = ("verification_id", "customer_id", "idempotency_key", "client_reference")
"""Fields of the decision a pending answer carries too."""

KYC_APP_KEY: Final = web.AppKey("kyc_provider_sim", KycProviderSim)
