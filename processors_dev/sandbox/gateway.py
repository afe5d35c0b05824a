"""Simulated payment gateway: ``POST /api/v1/payments`` with idempotency, declines and fault injection.

The request and response follow the seed's shape, plus ``transaction_type`` (``CHARGE`` or
``REFUND``, default ``CHARGE``) and an optional ``reference_id``.  Amounts are JSON numbers on
this wire; they are read with ``parse_float=Decimal`` and written back digit for digit.

Order of checks for one payment request (the first that applies answers):

=====================================  ====  ======================================================
``outage``                             503   ``Retry-After: 1``
``rate_limit_per_s`` exceeded          429   ``Retry-After`` in whole seconds
missing or wrong ``Bearer`` token      401   ``{"error": "unauthorized"}``
bad JSON, fields or idempotency key    400   ``{"error": "validation_error", "message": ...}``
key known, other parameters            422   ``{"error": "idempotency_key_reused", ...}``
key known, first request still busy    409   ``{"error": "request_in_progress"}``, ``Retry-After: 1``
key known, same parameters             the stored status and body, header ``Idempotent-Replayed: true``
=====================================  ====  ======================================================

A new key is claimed, then the injected latency (``latency_ms`` plus up to
``latency_jitter_ms``) passes, then ``error_rate`` may answer 503 without charging.  Otherwise
the card token decides: ``tok_decline_<code>`` → 402 ``DECLINED``, ``tok_pending_<any>`` → 202
``PENDING``, ``tok_unavailable_<n>`` → 503 for the first *n* requests of a key and then as usual
(a deterministic transient failure), ``tok_invalid…`` → 400 every time (a permanent one),
anything else (or no card) → 200 ``COMPLETED``.  That answer is stored and counts as
one charge in ``charges_by_key``; ``error_after_charge_rate`` may then answer 500 instead (the
ambiguous failure a retry with the same key resolves).  Early refusals take no injected latency.

The parameters that must match for a replay (the fingerprint) are ``policy_id``, the amount's
value (``1185.5`` equals ``1185.50``), ``currency``, ``transaction_type`` and ``payment_method``.

**Asynchronous confirmations.**  With ``confirm_url`` set, every new ``tok_pending_…`` charge is
confirmed ``confirm_delay_ms`` later by a signed ``POST`` to ``confirm_url`` (twice with
``confirm_twice``, as providers that retry do).  The body is JSON::

    {"event_id": "evt_…", "event_type": "payment.confirmed", "created_at": "…Z",
     "data": {"payment_id", "status": "COMPLETED", "gateway_reference", "amount", "currency",
              "transaction_type", "policy_id", "reference_id", "idempotency_key", "processed_at",
              "receipt_url"}}

with the headers ``X-Provider-Event-Id`` (the ``event_id``), ``X-Signature-Timestamp`` (unix
seconds) and ``X-Signature: sha256=<hex HMAC-SHA256 of f"{timestamp}.{body}" with
webhook_secret>``.  ``confirmations_by_status`` counts the answers (0: no answer).

**Memory is bounded.**  The gateway remembers at most ``max_keys`` idempotency keys
(1,000,000 by default), and as many entries of ``charges_by_key``: when full, the least
recently used key is forgotten (a replay counts as a use) and the eviction is counted.  A
forgotten key is unknown from then on: its next request is charged as a new one, so a test
that must prove "charged once" keeps its keys below the bound.  ``total_charges`` counts
every charge, forgotten keys included.

The control API under ``/_sandbox/gateway/`` (no auth; sandbox only): ``GET charges``
(``?key=`` for one key), ``GET config``, ``PUT config`` (partial), ``POST reset``,
``GET requests`` (answers of the payment endpoint by status code), ``GET bounds`` (size,
bound and evictions of each per-key structure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, Literal, Self

import aiohttp
from aiohttp import web
from pydantic import ConfigDict, Field, SecretStr, ValidationError

from processors.adapters import jsonwire
from processors.errors import ConfigError, ContractError, DecodeError, ValidationFailed
from processors_dev.sandbox.common import (
    DEFAULT_MAX_KEYS,
    BoundedDict,
    ControlApi,
    InjectedLatency,
    SandboxConfig,
    error_response,
    refusal,
    wake,
)

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_TOKEN",
    "DEFAULT_WEBHOOK_SECRET",
    "GATEWAY_APP_KEY",
    "PAYMENTS_PATH",
    "TOKEN_ENV",
    "ChargeRequest",
    "GatewayConfig",
    "PaymentGatewaySim",
    "parse_payment_request",
]

log = logging.getLogger(__name__)

PAYMENTS_PATH: Final = "/api/v1/payments"
CONTROL_PREFIX: Final = "/_sandbox/gateway"
DEFAULT_TOKEN: Final = "sandbox-token"  # noqa: S105 - the sandbox's documented default
TOKEN_ENV: Final = "SANDBOX_GATEWAY_TOKEN"  # noqa: S105 - the name of the variable holding the token
DEFAULT_WEBHOOK_SECRET: Final = "sandbox-webhook-secret"  # noqa: S105 - the sandbox's documented default

_MAX_TEXT_LEN: Final = 255
_MAX_DECIMAL_PLACES: Final = 6
_MAX_AMOUNT_DIGITS: Final = 15  # integer digits
_SMALLEST_UNIT: Final = Decimal(1).scaleb(-_MAX_DECIMAL_PLACES)
_CARD_TYPES: Final = frozenset({"CARD", "CREDIT_CARD", "DEBIT_CARD"})
_DECLINE_PREFIX: Final = "tok_decline_"
_PENDING_PREFIX: Final = "tok_pending_"
_UNAVAILABLE_PREFIX: Final = "tok_unavailable_"
_INVALID_PREFIX: Final = "tok_invalid"
_RECEIPT_BASE_URL: Final = "https://receipts.sandbox.invalid/"
_DECLINE_REASONS: Final = {
    "insufficient_funds": "The card has insufficient funds to complete the payment.",
    "card_expired": "The card has expired.",
    "do_not_honor": "The card issuer declined the payment without giving a reason.",
    "incorrect_cvc": "The card's security code is incorrect.",
    "lost_card": "The card has been reported lost.",
    "stolen_card": "The card has been reported stolen.",
    "fraudulent": "The payment was declined as suspected fraud.",
    "card_velocity_exceeded": "The card has exceeded its spending limit.",
    "generic_decline": "The card was declined.",
}

_JSON: Final = "application/json"
_UNAUTHORIZED_BODY: Final = b'{"error":"unauthorized","message":"a valid Bearer token is required"}'
_OUTAGE_BODY: Final = b'{"error":"service_unavailable","message":"the gateway is down (outage)"}'
_UNAVAILABLE_BODY: Final = (
    b'{"error":"service_unavailable","message":"temporary failure, nothing was charged"}'
)
_RATE_LIMITED_BODY: Final = b'{"error":"rate_limited","message":"too many requests"}'
_IN_PROGRESS_BODY: Final = (
    b'{"error":"request_in_progress","message":"the first request with this key is still being processed"}'
)
_REUSED_BODY: Final = (
    b'{"error":"idempotency_key_reused",'
    b'"message":"this idempotency key was used with different request parameters"}'
)
_AFTER_CHARGE_BODY: Final = (
    b'{"error":"internal_error","message":"the gateway failed while answering; the outcome is unknown"}'
)


class GatewayConfig(SandboxConfig):
    """Knobs of the simulated gateway.  Frozen; change it with :meth:`PaymentGatewaySim.update_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, le=600_000, allow_inf_nan=False)
    latency_jitter_ms: float = Field(default=0.0, ge=0, le=600_000, allow_inf_nan=False)
    error_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """Probability of answering 503 before charging."""
    error_after_charge_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """Probability of charging and then answering 500."""
    outage: bool = False
    rate_limit_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    token: SecretStr = SecretStr(DEFAULT_TOKEN)
    seed: int | None = None
    confirm_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    """Where pending charges are confirmed (a signed POST); None: never confirmed."""
    webhook_secret: SecretStr = SecretStr(DEFAULT_WEBHOOK_SECRET)
    """The HMAC secret that signs confirmations."""
    confirm_delay_ms: float = Field(default=100.0, ge=0, le=600_000, allow_inf_nan=False)
    confirm_twice: bool = False
    """Send every confirmation twice (the receiver must publish it once)."""

    config_name: ClassVar[str] = "payment gateway config"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Validate ``values``; a bad value raises :class:`ConfigError` naming the field (never its value)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigError(f"invalid {cls.config_name}: {problems}") from exc


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """A validated payment request.  The card token stays out of the repr."""

    idempotency_key: str
    policy_id: str
    amount: Decimal
    currency: str
    transaction_type: Literal["CHARGE", "REFUND"]
    reference_id: str | None
    card_token: str | None = field(repr=False)
    fingerprint: bytes = field(repr=False)


def parse_payment_request(body: bytes, idempotency_header: str | None) -> ChargeRequest:
    """Decode and validate one payment request.

    Raises :class:`DecodeError` or :class:`ValidationFailed`; their ``reason`` names the field and
    the rule, never the value (the body holds card tokens and addresses).
    """
    try:
        payload = jsonwire.loads(body)
    except jsonwire.JsonRejected as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValidationFailed("body must be a JSON object")

    key = payload.get("idempotency_key")
    if idempotency_header is None:
        raise ValidationFailed("the Idempotency-Key header is required")
    if key is None:
        raise ValidationFailed("idempotency_key is required")
    if not isinstance(key, str):
        raise ValidationFailed("idempotency_key must be a string")
    if key != idempotency_header:
        raise ValidationFailed("the Idempotency-Key header and idempotency_key differ")
    _check_text(key, "idempotency_key")

    policy_id = payload.get("policy_id")
    if policy_id is None:
        raise ValidationFailed("policy_id is required")
    if not isinstance(policy_id, str):
        raise ValidationFailed("policy_id must be a string")
    _check_text(policy_id, "policy_id")

    amount = _amount(payload.get("amount"))

    currency = payload.get("currency")
    if currency is None:
        raise ValidationFailed("currency is required")
    if not (
        isinstance(currency, str)
        and len(currency) == 3
        and currency.isascii()
        and currency.isalpha()
        and currency.isupper()
    ):
        raise ValidationFailed("currency must be a three-letter ISO 4217 code in upper case")

    transaction_type: Literal["CHARGE", "REFUND"]
    match payload.get("transaction_type"):
        case None | "CHARGE":
            transaction_type = "CHARGE"
        case "REFUND":
            transaction_type = "REFUND"
        case _:
            raise ValidationFailed("transaction_type must be CHARGE or REFUND")

    reference_id = payload.get("reference_id")
    if reference_id is not None:
        if not isinstance(reference_id, str):
            raise ValidationFailed("reference_id must be a string")
        _check_text(reference_id, "reference_id")

    method = payload.get("payment_method")
    if method is None:
        raise ValidationFailed("payment_method is required")
    if not isinstance(method, dict):
        raise ValidationFailed("payment_method must be an object")
    method_type = method.get("type")
    if not isinstance(method_type, str) or not method_type:
        raise ValidationFailed("payment_method.type must be a non-empty string")
    card_token = method.get("card_token")
    if card_token is not None:
        if not isinstance(card_token, str):
            raise ValidationFailed("payment_method.card_token must be a string")
        _check_text(card_token, "payment_method.card_token")
    elif method_type in _CARD_TYPES:
        raise ValidationFailed(f"payment_method.card_token is required for {method_type}")
    address = method.get("billing_address")
    if address is not None and not isinstance(address, dict):
        raise ValidationFailed("payment_method.billing_address must be an object")

    canonical = "\x1f".join(
        (
            policy_id,
            str(amount.normalize()),
            currency,
            transaction_type,
            json.dumps(method, sort_keys=True, separators=(",", ":"), default=str),
        )
    )
    return ChargeRequest(
        idempotency_key=key,
        policy_id=policy_id,
        amount=amount,
        currency=currency,
        transaction_type=transaction_type,
        reference_id=reference_id,
        card_token=card_token,
        fingerprint=hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest(),
    )


def _check_text(value: str, name: str) -> None:
    if not value or len(value) > _MAX_TEXT_LEN or not value.isprintable():
        raise ValidationFailed(f"{name} must be 1 to {_MAX_TEXT_LEN} printable characters")


def _amount(value: object) -> Decimal:
    if value is None:
        raise ValidationFailed("amount is required")
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValidationFailed("amount must be a JSON number")
    amount = Decimal(value)
    if amount <= 0:
        raise ValidationFailed("amount must be positive")
    if amount.adjusted() >= _MAX_AMOUNT_DIGITS:
        raise ValidationFailed(f"amount must be below 10^{_MAX_AMOUNT_DIGITS}")
    if amount.quantize(_SMALLEST_UNIT) != amount:
        raise ValidationFailed(f"amount must have at most {_MAX_DECIMAL_PLACES} decimal places")
    return amount


@dataclass(slots=True)
class _Entry:
    """What the gateway remembers about one idempotency key."""

    fingerprint: bytes
    status: int = 0  # 0 while the first request with the key is being processed
    body: bytes = b""


class _TokenBucket:
    """``rate_per_s`` requests a second on average, bursts up to one second's worth."""

    __slots__ = ("_capacity", "_clock", "_rate", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._clock = clock
        self._tokens = self._capacity
        self._updated_s = clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now_s = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now_s - self._updated_s) * self._rate)
        self._updated_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


def _validation_error(reason: str) -> web.Response:
    return refusal(400, "validation_error", reason)


class PaymentGatewaySim(ControlApi[GatewayConfig], InjectedLatency):
    """State and HTTP routes of the simulated payment gateway.

    All state lives on one event loop; the idempotency claim is taken before the handler's first
    ``await`` after validation, so concurrent requests with one key cannot both charge.
    ``charges_by_key`` counts charges per idempotency key (a correct gateway shows 1 everywhere)
    and ``requests_by_status`` counts the payment endpoint's answers by HTTP status;
    ``confirmations_by_status`` counts the answers to confirmations (0: no answer).
    Per-key state holds at most ``max_keys`` keys each (see the module doc).
    """

    control_name: ClassVar[str] = "payment gateway"
    control_log: ClassVar[logging.Logger] = log

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.charges_by_key: BoundedDict[str, int] = BoundedDict(max_keys)
        self.requests_by_status: dict[int, int] = {}
        self.confirmations_by_status: dict[int, int] = {}
        self.traceparents: deque[str | None] = deque(maxlen=1_000)
        """The ``traceparent`` header of each payment request, newest last (None: none sent)."""
        self._charges_total = 0
        self._confirmations: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._entries: BoundedDict[str, _Entry] = BoundedDict(max_keys)
        self._unavailable_seen: BoundedDict[str, int] = BoundedDict(max_keys)
        self._sleepers: set[asyncio.Future[None]] = set()
        self._claim_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._config = config or GatewayConfig()
        self._rng = random.Random(self._config.seed)
        self._auth = self._expected_auth(self._config)
        self._bucket = self._new_bucket(self._config)

    # -- configuration and state -------------------------------------------------------------

    def configure(self, config: GatewayConfig) -> None:
        """Replace the configuration.  Requests already waiting keep the latency they drew."""
        previous = self._config
        self._config = config
        self._auth = self._expected_auth(config)
        if config.seed != previous.seed:
            self._rng = random.Random(config.seed)
        if config.rate_limit_per_s != previous.rate_limit_per_s:
            self._bucket = self._new_bucket(config)

    def reset(self) -> None:
        """Forget every key, charge and counter; restart the random sequence and the rate limiter."""
        self._entries.forget()
        self._unavailable_seen.forget()
        self.charges_by_key.forget()
        self._charges_total = 0
        self.requests_by_status.clear()
        self.traceparents.clear()
        self._rng = random.Random(self._config.seed)
        self._bucket = self._new_bucket(self._config)

    @property
    def confirmations_pending(self) -> int:
        """Confirmations scheduled (for pending charges) and not yet answered."""
        return len(self._confirmations)

    @property
    def total_charges(self) -> int:
        """Charges since the last reset, those of forgotten keys included."""
        return self._charges_total

    def bounds(self) -> dict[str, dict[str, int]]:
        return {
            "idempotency_keys": self._entries.stats(),
            "charges_by_key": self.charges_by_key.stats(),
            "unavailable_by_key": self._unavailable_seen.stats(),
        }

    def in_progress(self, idempotency_key: str) -> bool:
        """True while the first request with this key is being processed."""
        entry = self._entries.get(idempotency_key)
        return entry is not None and entry.status == 0

    async def wait_until_in_progress(self, idempotency_key: str) -> None:
        """Return once a request with this key has been claimed and is being processed."""
        if self.in_progress(idempotency_key):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claim_waiters.setdefault(idempotency_key, []).append(waiter)
        try:
            await waiter
        finally:
            waiters = self._claim_waiters.get(idempotency_key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._claim_waiters[idempotency_key]

    # -- HTTP --------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PAYMENTS_PATH, self._handle_payment),
            web.get(f"{CONTROL_PREFIX}/charges", self._handle_charges),
            web.get(f"{CONTROL_PREFIX}/config", self._handle_get_config),
            web.put(f"{CONTROL_PREFIX}/config", self._handle_put_config),
            web.post(f"{CONTROL_PREFIX}/reset", self._handle_reset),
            web.get(f"{CONTROL_PREFIX}/requests", self._handle_requests),
            web.get(f"{CONTROL_PREFIX}/bounds", self._handle_bounds),
        ]

    def add_to(self, app: web.Application) -> None:
        """Mount the routes on ``app`` and make the sim reachable as ``app[GATEWAY_APP_KEY]``."""
        app.add_routes(self.routes())
        app[GATEWAY_APP_KEY] = self
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Waiting requests answer now instead of holding the shutdown for their latency.
        self.release_waiting()
        confirmations = list(self._confirmations)
        for task in confirmations:
            task.cancel()
        await asyncio.gather(*confirmations, return_exceptions=True)

    async def _handle_payment(self, request: web.Request) -> web.Response:
        self.traceparents.append(request.headers.get("traceparent"))
        response = await self._answer_payment(request)
        status = response.status
        self.requests_by_status[status] = self.requests_by_status.get(status, 0) + 1
        return response

    async def _answer_payment(self, request: web.Request) -> web.Response:
        config = self._config
        if config.outage:
            return error_response(503, _OUTAGE_BODY, "1")
        if self._bucket is not None:
            wait_s = self._bucket.take()
            if wait_s > 0.0:
                return error_response(429, _RATE_LIMITED_BODY, str(max(1, math.ceil(wait_s))))
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
            charge = parse_payment_request(await request.read(), request.headers.get("Idempotency-Key"))
        except ContractError as exc:
            return _validation_error(exc.reason)

        key = charge.idempotency_key
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != charge.fingerprint:
                return error_response(422, _REUSED_BODY)
            if entry.status == 0:
                return error_response(409, _IN_PROGRESS_BODY, "1")
            self._entries.touch(key)
            self.charges_by_key.touch(key)
            return web.Response(
                status=entry.status,
                body=entry.body,
                content_type=_JSON,
                headers={"Idempotent-Replayed": "true"},
            )

        claim = _Entry(charge.fingerprint)
        self._entries[key] = claim
        if self._claim_waiters:
            for waiter in self._claim_waiters.pop(key, ()):
                wake(waiter)
        try:
            await self._inject_latency(config)
            if config.error_rate and self._rng.random() < config.error_rate:
                return error_response(503, _UNAVAILABLE_BODY)
            token = charge.card_token or ""
            if token.startswith(_UNAVAILABLE_PREFIX):
                # Deterministic transient failure: the first <n> requests of this key get 503.
                suffix = token[len(_UNAVAILABLE_PREFIX) :]
                failures = int(suffix) if suffix.isdigit() else 1
                seen = self._unavailable_seen.get(key, 0)
                if seen < failures:
                    self._unavailable_seen[key] = seen + 1
                    return error_response(503, _UNAVAILABLE_BODY)
            if token.startswith(_INVALID_PREFIX):
                return _validation_error("payment_method.card_token was rejected by the card network")
            claim.status, payload = self._charge(charge)
            claim.body = jsonwire.dumps(payload)
            if claim.status == 202 and config.confirm_url is not None:
                self._confirm_later(config, charge, payload)
            self.charges_by_key[key] = self.charges_by_key.get(key, 0) + 1
            self._charges_total += 1
        finally:
            if claim.status == 0 and self._entries.get(key) is claim:
                del self._entries[key]
        if config.error_after_charge_rate and self._rng.random() < config.error_after_charge_rate:
            return error_response(500, _AFTER_CHARGE_BODY)
        return web.Response(status=claim.status, body=claim.body, content_type=_JSON)

    def _charge(self, charge: ChargeRequest) -> tuple[int, dict[str, Any]]:
        now = datetime.now(UTC)
        payment_id = f"PMT-{now.year}-{self._rng.getrandbits(48):012X}"
        processed_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        token = charge.card_token or ""
        payload: dict[str, Any]
        if token.startswith(_DECLINE_PREFIX):
            code = token[len(_DECLINE_PREFIX) :] or "generic_decline"
            status = 402
            payload = {
                "payment_id": payment_id,
                "status": "DECLINED",
                "decline_code": code,
                "decline_reason": _DECLINE_REASONS.get(code, _DECLINE_REASONS["generic_decline"]),
            }
        else:
            reference = f"ch_{self._rng.getrandbits(96):024x}"
            if token.startswith(_PENDING_PREFIX):
                status = 202
                payload = {"payment_id": payment_id, "status": "PENDING", "gateway_reference": reference}
            else:
                status = 200
                payload = {"payment_id": payment_id, "status": "COMPLETED", "gateway_reference": reference}
        payload["amount"] = charge.amount
        payload["currency"] = charge.currency
        payload["processed_at"] = processed_at
        if status == 200:
            payload["receipt_url"] = _RECEIPT_BASE_URL + payload["gateway_reference"]
        payload["transaction_type"] = charge.transaction_type
        if charge.reference_id is not None:
            payload["reference_id"] = charge.reference_id
        return status, payload

    # -- asynchronous confirmations ----------------------------------------------------------

    def _confirm_later(
        self, config: GatewayConfig, charge: ChargeRequest, payload: Mapping[str, Any]
    ) -> None:
        data: dict[str, Any] = {
            "payment_id": payload["payment_id"],
            "status": "COMPLETED",
            "gateway_reference": payload["gateway_reference"],
            "amount": charge.amount,
            "currency": charge.currency,
            "transaction_type": charge.transaction_type,
            "policy_id": charge.policy_id,
            "idempotency_key": charge.idempotency_key,
        }
        if charge.reference_id is not None:
            data["reference_id"] = charge.reference_id
        task = asyncio.create_task(self._send_confirmation(config, data))
        self._confirmations.add(task)
        task.add_done_callback(self._confirmations.discard)

    async def _send_confirmation(self, config: GatewayConfig, data: dict[str, Any]) -> None:
        assert config.confirm_url is not None
        await asyncio.sleep(config.confirm_delay_ms / 1000.0)  # the provider confirms later
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event_id = "evt_" + hashlib.sha256(str(data["payment_id"]).encode()).hexdigest()[:24]
        body = jsonwire.dumps(
            {
                "event_id": event_id,
                "event_type": "payment.confirmed",
                "created_at": now,
                "data": {
                    **data,
                    "processed_at": now,
                    "receipt_url": _RECEIPT_BASE_URL + str(data["gateway_reference"]),
                },
            }
        )
        secret = config.webhook_secret.get_secret_value().encode()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(2 if config.confirm_twice else 1):
                timestamp = str(int(time.time()))
                digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                headers = {
                    "Content-Type": _JSON,
                    "X-Provider-Event-Id": event_id,
                    "X-Signature-Timestamp": timestamp,
                    "X-Signature": f"sha256={digest}",
                }
                status = 0
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(config.confirm_url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                self.confirmations_by_status[status] = self.confirmations_by_status.get(status, 0) + 1
                log.info("payment gateway: confirmation %s answered %s", event_id, status or "nothing")

    # -- control API -------------------------------------------------------------------------

    async def _handle_charges(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if key is not None:
            return web.json_response({"key": key, "charges": self.charges_by_key.get(key, 0)})
        return web.json_response(
            {
                "total": self.total_charges,
                "keys": len(self.charges_by_key),
                "by_key": self.charges_by_key,
            }
        )

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _expected_auth(config: GatewayConfig) -> bytes:
        return b"Bearer " + config.token.get_secret_value().encode("ascii")

    def _new_bucket(self, config: GatewayConfig) -> _TokenBucket | None:
        if config.rate_limit_per_s is None:
            return None
        return _TokenBucket(config.rate_limit_per_s, self._clock)


GATEWAY_APP_KEY: Final = web.AppKey("payment_gateway_sim", PaymentGatewaySim)
