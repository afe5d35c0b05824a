"""Reinsurer adapter: ``POST /api/v1/bordereaux`` with a Bearer token and ``Idempotency-Key: <report_id>``.

The body is the report exactly as it was published on ``reinsurance.bordereaux``: the bytes
are sent unchanged, never decoded and re-encoded, so what the reinsurer receives is what the
bordereaux app closed.  The report id is the idempotency key: a retry, a restart or a replay
of the same report is acknowledged again (``duplicate: true``) instead of being booked twice.

One call = one attempt.  Classification of the answer:

=====================================  =========================================================
2xx with an acknowledgement            :class:`SubmitResult` (``duplicate`` as the reinsurer says)
2xx with an unreadable body            ``Retriable``: the same key makes a retry safe
409 ``request_in_progress``            ``Retriable``: the first request with this key is still busy
409 otherwise                          :class:`ReportConflict` (``Permanent``): the reinsurer holds
                                       another body under this report id.  A closed report must
                                       never change, so this needs a person, not a retry
408, 425, 429, 5xx                     ``Retriable`` (``Retry-After`` honoured)
400, 401, 403, 404, 422, other 4xx     ``Permanent`` (422: the reinsurer refused the report)
timeouts, connection errors            ``Retriable`` (raised by the HTTP seam)
=====================================  =========================================================

Reports hold policy numbers and amounts: nothing here logs or repeats a body.  Error
messages carry the report id, the status and the reinsurer's ``error: message``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from processors.adapters import jsonwire
from processors.adapters.http import HttpRequest, HttpResponse, HttpTransport, TimeoutSettings
from processors.errors import Permanent, Retriable, ValidationFailed
from processors.resilience.classify import RetriableHttpStatus, classify_status
from processors.utc import to_utc

__all__ = [
    "BORDEREAUX_PATH",
    "ENDPOINT",
    "MAX_REPORT_ID_LEN",
    "AcknowledgementMismatch",
    "ReinsurerClient",
    "ReinsurerSettings",
    "ReportConflict",
    "SubmitResult",
    "check_report_id",
    "parse_response",
]

BORDEREAUX_PATH: Final = "/api/v1/bordereaux"
ENDPOINT: Final = "reinsurer"
MAX_REPORT_ID_LEN: Final = 255
_IN_PROGRESS: Final = "request_in_progress"


class ReinsurerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8600"
    token: SecretStr = SecretStr("sandbox-token")
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The reinsurer's acknowledgement of one report.

    ``acknowledged_at`` is when the reinsurer first received the report (UTC); a duplicate
    submission gets the original time back.  ``http_status`` is the answer's status.
    """

    report_id: str
    status: str
    acknowledged_at: datetime
    duplicate: bool
    http_status: int


class ReportConflict(Permanent):
    """409: the reinsurer already holds a different body under this report id.

    A report never changes once closed, so either the report was rebuilt differently (a bug
    or a changed treaty file) or the reinsurer's copy is not ours.  Someone must look.
    """

    def __init__(self, message: str, *, report_id: str) -> None:
        super().__init__(message)
        self.report_id = report_id
        self.status = 409


class AcknowledgementMismatch(Permanent):
    """A 2xx acknowledgement that names another report: the answer cannot be trusted as ours."""


def check_report_id(report_id: str) -> str:
    """``report_id`` if it can travel as an ``Idempotency-Key``; ``ValidationFailed`` otherwise.

    Allowed: 1 to :data:`MAX_REPORT_ID_LEN` visible ASCII characters (no spaces or controls).
    """
    if not report_id or len(report_id) > MAX_REPORT_ID_LEN or not all("!" <= ch <= "~" for ch in report_id):
        raise ValidationFailed(
            f"report_id must be 1 to {MAX_REPORT_ID_LEN} visible ASCII characters (it is the Idempotency-Key)"
        )
    return report_id


class ReinsurerClient:
    """Client of the reinsurer's bordereaux API.  No I/O before :meth:`start` (or the first call)."""

    endpoint: Final = ENDPOINT

    def __init__(self, settings: ReinsurerSettings, transport: HttpTransport) -> None:
        self.settings = settings
        self._transport = transport
        self._url = settings.base_url.rstrip("/") + BORDEREAUX_PATH

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        await self._transport.close()

    async def submit(self, report_id: str, body: bytes) -> SubmitResult:
        """Deliver one report (one attempt); see the module docstring for what each answer becomes."""
        check_report_id(report_id)
        request = HttpRequest(
            method="POST",
            url=self._url,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {self.settings.token.get_secret_value()}",
                "Idempotency-Key": report_id,
            },
            body=body,
        )
        response = await self._transport.send(request, timeouts=self.settings.timeouts)
        return parse_response(report_id, response)


def parse_response(report_id: str, response: HttpResponse) -> SubmitResult:
    status = response.status
    context = f"{ENDPOINT} POST {BORDEREAUX_PATH} report {report_id}"
    if 200 <= status <= 299:
        try:
            payload = jsonwire.loads(response.body)
            if not isinstance(payload, dict):
                raise ValueError("the body is not a JSON object")
            result = _acknowledgement(payload, status)
        except (ValueError, TypeError, RecursionError) as exc:
            raise Retriable(
                f"{context}: answered {status} with an unreadable acknowledgement: {exc}"
            ) from exc
        if result.report_id != report_id:
            raise AcknowledgementMismatch(f"{context}: answered {status} acknowledging another report")
        return result
    reason = response.error_reason()
    if status == 409:
        if _error_code(response) == _IN_PROGRESS:
            raise RetriableHttpStatus(
                f"{context}: HTTP 409: the first request with this report id is still in progress",
                status=409,
                retry_after_s=_finite(response.retry_after_s()),
            )
        raise ReportConflict(
            f"{context}: HTTP 409: the reinsurer holds a different body under this report id ({reason}); "
            "a closed report must never change: compare both versions before replaying",
            report_id=report_id,
        )
    error = classify_status(status, response.retry_after_s(), context=f"{context} ({reason})")
    assert error is not None  # not 2xx
    raise error


def _acknowledgement(payload: dict[str, Any], http_status: int) -> SubmitResult:
    acknowledged_id = payload.get("report_id")
    if not isinstance(acknowledged_id, str) or not acknowledged_id:
        raise ValueError("report_id must be a non-empty string")
    status = payload.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError("status must be a non-empty string")
    duplicate = payload.get("duplicate", False)
    if not isinstance(duplicate, bool):
        raise TypeError("duplicate must be true or false")
    return SubmitResult(
        report_id=acknowledged_id,
        status=status.upper(),
        acknowledged_at=_time(payload.get("received_at")),
        duplicate=duplicate,
        http_status=http_status,
    )


def _time(value: object) -> datetime:
    if not isinstance(value, str) or not value:
        raise ValueError("received_at must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("received_at must be an ISO 8601 timestamp") from None
    return to_utc(parsed, naive_is_utc=True)


def _error_code(response: HttpResponse) -> str | None:
    try:
        payload = jsonwire.loads(response.body)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, dict):
        code = payload.get("error")
        return code if isinstance(code, str) else None
    return None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
