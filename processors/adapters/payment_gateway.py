"""Payment gateway adapter: ``POST /api/v1/payments`` with a Bearer token and an idempotency key.

One call = one attempt.  Classification of the answer:

======================  =====================================================
200 ``COMPLETED``        ``PaymentOutcome`` (completed)
202 ``PENDING``          ``PaymentOutcome`` (pending; confirmed later by webhook)
402 ``DECLINED``         ``PaymentOutcome`` (declined) — a business result, not an error
409                      ``Retriable``: the same key is still being processed
429, 5xx                 ``Retriable`` (``Retry-After`` honoured)
400, 401, 403, 404, 422  ``Permanent``
unreadable 2xx body      ``Retriable``: the charge may have happened; the same key makes a retry safe
======================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from processors.adapters import jsonwire
from processors.adapters.http import HttpRequest, HttpResponse, HttpTransport, TimeoutSettings
from processors.errors import Permanent, Retriable
from processors.resilience.classify import RETRIABLE_STATUSES
from processors.utc import to_utc

__all__ = [
    "GatewayRejected",
    "GatewaySettings",
    "PaymentGateway",
    "PaymentOutcome",
    "PaymentRequest",
]


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8600"
    token: SecretStr = SecretStr("sandbox-token")
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    policy_id: str
    amount: Decimal
    currency: str
    payment_method: dict[str, Any]
    idempotency_key: str
    transaction_type: Literal["CHARGE", "REFUND"]
    reference_id: str

    def __repr__(self) -> str:  # the payment method holds a card token and an address
        return (
            f"PaymentRequest(policy_id={self.policy_id!r}, key={self.idempotency_key!r}, "
            f"{self.amount} {self.currency})"
        )


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    status: Literal["COMPLETED", "PENDING", "DECLINED"]
    payment_id: str | None
    gateway_reference: str | None
    amount: Decimal | None
    currency: str | None
    processed_at: datetime | None
    receipt_url: str | None = None
    decline_code: str | None = None
    decline_reason: str | None = None


class GatewayRejected(Permanent):
    """The gateway refused the request itself (validation, auth, key reused with other data)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class PaymentGateway:
    def __init__(self, settings: GatewaySettings, transport: HttpTransport) -> None:
        self.settings = settings
        self._transport = transport
        self._url = settings.base_url.rstrip("/") + "/api/v1/payments"
        self.endpoint = "payment-gateway"

    async def start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        await self._transport.close()

    async def submit(self, request: PaymentRequest) -> PaymentOutcome:
        body = request_body(request)
        http_request = HttpRequest(
            method="POST",
            url=self._url,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {self.settings.token.get_secret_value()}",
                "Idempotency-Key": request.idempotency_key,
            },
            body=body,
        )
        response = await self._transport.send(http_request, timeouts=self.settings.timeouts)
        return parse_response(response)


def request_body(request: PaymentRequest) -> bytes:
    """The JSON body of ``request``: :func:`jsonwire.dumps` of its fields, byte for byte.

    orjson writes it (the amount as a pre-written JSON number, digit for digit) when every
    value is a plain string (the payment method a mapping of them) and the result is ASCII;
    anything else (non-ASCII text or DEL, which jsonwire escapes; a type jsonwire refuses) takes
    jsonwire's own path, which writes or refuses it exactly as before.
    """
    amount = request.amount
    texts: tuple[object, ...] = (
        request.policy_id,
        request.currency,
        request.idempotency_key,
        request.transaction_type,
        request.reference_id,
    )
    fast = (
        type(amount) is Decimal
        and amount.is_finite()
        and all(type(text) is str for text in texts)
        and _plain_strings(request.payment_method)
    )
    document: dict[str, Any] = {
        "policy_id": request.policy_id,
        "amount": orjson.Fragment(format(amount, "f")) if fast else amount,
        "currency": request.currency,
        "payment_method": request.payment_method,
        "idempotency_key": request.idempotency_key,
        "transaction_type": request.transaction_type,
        "reference_id": request.reference_id,
    }
    if fast:
        body = orjson.dumps(document)
        if body.isascii() and b"\x7f" not in body:  # jsonwire escapes DEL, orjson does not
            return body
        document["amount"] = amount
    return jsonwire.dumps(document)


def _plain_strings(value: Any, depth: int = 0) -> bool:
    """A mapping (nested at most twice) whose keys are strings and whose values are strings or None."""
    if type(value) is not dict or depth > 2:
        return False
    for key, item in value.items():
        if type(key) is not str:
            return False
        if type(item) is dict:
            if not _plain_strings(item, depth + 1):
                return False
        elif item is not None and type(item) is not str:
            return False
    return True


def parse_response(response: HttpResponse) -> PaymentOutcome:
    status = response.status
    if 200 <= status <= 299 or status == 402:
        try:
            payload = jsonwire.loads(response.body)
            return _outcome(payload, status)
        except _Incomplete as exc:
            raise Retriable(f"gateway answered {status} but {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Retriable(f"gateway answered {status} with an unreadable body") from exc
    reason = response.error_reason()
    if status == 409:
        raise Retriable(
            f"gateway: request with this idempotency key still in progress ({reason})",
            retry_after_s=response.retry_after_s(),
        )
    # the shared classification (docs/failure-classification.md): 408, 425, 429, every 5xx,
    # and a status no HTTP server should answer with, are retried
    if status in RETRIABLE_STATUSES or status >= 500 or status < 200:
        raise Retriable(f"gateway answered {status} ({reason})", retry_after_s=response.retry_after_s())
    raise GatewayRejected(f"gateway refused the request: {status} ({reason})", status=status)


class _Incomplete(ValueError):
    """A well-formed answer that lacks a field the result needs."""


def _outcome(payload: dict[str, Any], http_status: int) -> PaymentOutcome:
    gateway_status = str(payload["status"]).upper()
    if http_status == 402 or gateway_status in ("DECLINED", "FAILED"):
        status: Literal["COMPLETED", "PENDING", "DECLINED"] = "DECLINED"
    elif http_status == 202 or gateway_status == "PENDING":
        status = "PENDING"
    elif gateway_status == "COMPLETED":
        status = "COMPLETED"
    else:
        raise ValueError(f"unknown gateway status {gateway_status!r}")
    if status != "DECLINED" and not payload.get("payment_id"):
        raise _Incomplete(f"the {gateway_status} answer has no payment_id")
    if status == "COMPLETED" and not payload.get("gateway_reference"):
        raise _Incomplete("the COMPLETED answer has no gateway_reference")
    amount = payload.get("amount")
    return PaymentOutcome(
        status=status,
        payment_id=payload.get("payment_id"),
        gateway_reference=payload.get("gateway_reference"),
        amount=Decimal(str(amount)) if amount is not None else None,
        currency=payload.get("currency"),
        processed_at=_parse_time(payload.get("processed_at")),
        receipt_url=payload.get("receipt_url"),
        decline_code=payload.get("decline_code"),
        decline_reason=payload.get("decline_reason"),
    )


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return to_utc(parsed, naive_is_utc=True)
