"""How failures are classified: by HTTP status for adapters, by exception for the circuit breaker.

The retry decision is the exception's type (:mod:`processors.errors`): ``Retriable`` is tried
again (in place, then through the retry topic tiers, then the DLQ); ``Permanent`` goes to the
DLQ at once.  ``docs/failure-classification.md`` holds the full table.

:func:`classify_status` turns a final HTTP status into that decision:

=============================================  ===========================================
2xx                                            ``None``: not a failure; the adapter reads the body
3xx                                            ``Permanent``: redirects are never followed, so a
                                               3xx means the configured URL is wrong
408, 425, 429, 500, 502, 503, 504, other 5xx   ``Retriable`` (with ``retry_after_s``)
409                                            ``Retriable``: a request with the same idempotency
                                               key is still in progress
400, 401, 403, 404, 405, 410, 413, 415, 422,   ``Permanent``
other 4xx
anything else (1xx as a final answer, < 100,   ``Retriable``: a misbehaving intermediary; the
≥ 600)                                         retry tiers and the DLQ bound the cost
=============================================  ===========================================

Adapters that give a status a business meaning decide that *before* calling
:func:`classify_status` (the payment gateway reads a 402 body as a decline, a result value).

:func:`breaker_outcome` says what an exception raised by a guarded call means for the
endpoint's health; :func:`is_counted_failure` is its yes/no form used by the breaker.
"""

from __future__ import annotations

import math
from enum import StrEnum
from http import HTTPStatus

from processors.errors import ContractError, IntegrationError, Permanent, Retriable

__all__ = [
    "PERMANENT_STATUSES",
    "RETRIABLE_STATUSES",
    "BreakerOutcome",
    "PermanentHttpStatus",
    "RetriableHttpStatus",
    "breaker_outcome",
    "classify_status",
    "is_counted_failure",
]

RETRIABLE_STATUSES: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""Statuses named as retriable; every other 5xx is retriable too."""

PERMANENT_STATUSES: frozenset[int] = frozenset({400, 401, 403, 404, 405, 410, 413, 415, 422})
"""Statuses named as permanent; every other 4xx is permanent too."""

_REASONS: dict[int, str] = {
    408: "the service timed out waiting for the request",
    409: "a request with this idempotency key is in progress",
    425: "the service refused to process a possibly replayed request yet",
    429: "rate limited",
}


class RetriableHttpStatus(Retriable):
    """The service answered with a status worth retrying; ``status`` is that status."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


class PermanentHttpStatus(Permanent):
    """The service refused the request for good; ``status`` is the answer's status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def classify_status(
    status: int, retry_after_s: float | None = None, *, context: str
) -> IntegrationError | None:
    """The error a final HTTP ``status`` stands for, or ``None`` for 2xx.

    ``context`` starts the message (e.g. ``"kyc-provider POST /api/v1/customers/{id}/kyc"``);
    it must not carry secrets or PII.  ``retry_after_s`` (the service's ``Retry-After``) is
    kept on retriable errors only; a negative or non-finite value is ignored.
    """
    if 200 <= status <= 299:
        return None
    delay = _delay(retry_after_s)
    if 300 <= status <= 399:
        return PermanentHttpStatus(
            f"{context}: HTTP {status} {_phrase(status)}: redirects are not followed; check the endpoint URL",
            status=status,
        )
    if 400 <= status <= 499:
        if status in RETRIABLE_STATUSES:
            return RetriableHttpStatus(
                f"{context}: HTTP {status}: {_REASONS[status]}", status=status, retry_after_s=delay
            )
        return PermanentHttpStatus(f"{context}: HTTP {status} {_phrase(status)}", status=status)
    if 500 <= status <= 599:
        return RetriableHttpStatus(
            f"{context}: HTTP {status} {_phrase(status)}", status=status, retry_after_s=delay
        )
    return RetriableHttpStatus(
        f"{context}: unexpected HTTP status {status}", status=status, retry_after_s=delay
    )


class BreakerOutcome(StrEnum):
    """What the end of a guarded call says about the endpoint."""

    FAILURE = "failure"
    """The endpoint is unwell: counts towards opening the breaker, fails a probe."""
    HEALTHY = "healthy"
    """The endpoint answered: resets the failure run, counts as a probe success."""
    NEUTRAL = "neutral"
    """Says nothing about the endpoint (cancellation, bad input, interpreter exit)."""


def breaker_outcome(exc: BaseException) -> BreakerOutcome:
    """Classify an exception raised by a call the circuit breaker guards.

    * ``Retriable`` (timeouts, connection and TLS errors, 5xx, 429, 409 in flight, an unreadable
      2xx body), ``TimeoutError`` (``asyncio.TimeoutError`` is the same class) and any other
      ``Exception`` (an unexpected error is treated as the endpoint's): **failure**.
    * ``Permanent`` (a 4xx): **healthy**.  The endpoint answered; the request was at fault.
      Counting it would let one batch of bad requests cut every caller off.
    * ``ContractError`` (the input breaks the contract, the endpoint was not reached),
      ``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` and other
      ``BaseException`` that is not an ``Exception``: **neutral**.
    """
    if isinstance(exc, Permanent):
        return BreakerOutcome.HEALTHY
    if isinstance(exc, ContractError) or not isinstance(exc, Exception):
        return BreakerOutcome.NEUTRAL
    return BreakerOutcome.FAILURE


def is_counted_failure(exc: BaseException) -> bool:
    """Whether ``exc`` counts as a failure of the endpoint (see :func:`breaker_outcome`)."""
    return breaker_outcome(exc) is BreakerOutcome.FAILURE


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(non-standard status)"


def _delay(retry_after_s: float | None) -> float | None:
    if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s < 0:
        return None
    return float(retry_after_s)
