"""Simulated reinsurer: ``POST /api/v1/bordereaux`` receives bordereaux, idempotent on ``report_id``.

The body is a report as published on ``reinsurance.bordereaux`` (``docs/bordereaux.md``);
``Authorization: Bearer <token>`` and ``Idempotency-Key: <report_id>`` are required.

Order of checks for one submission (the first that applies answers):

======================================  ====  ===================================================
``outage``                              503   ``Retry-After: 1``
missing or wrong ``Bearer`` token       401
body larger than ``max_report_bytes``   413
body is not a JSON object               400   ``{"error": "validation_error", "message": ...}``
a required field missing or invalid,    422   ``{"error": "invalid_report", "message": ...}``
no ``Idempotency-Key``, or one that
differs from ``report_id``
report id known, another body           409   ``{"error": "report_changed", ...}``: a closed
                                              report must never change
report id known, the same body          200   the original acknowledgement with
                                              ``"duplicate": true``, header
                                              ``Idempotent-Replayed: true``
======================================  ====  ===================================================

Required fields: ``report_id`` and ``treaty_number`` (non-empty strings), ``report_type``
(``PREMIUM_BORDEREAUX`` or ``CLAIMS_BORDEREAUX``), ``period`` (an object with ``id``,
``from`` and ``to``; dates ``YYYY-MM-DD``) and ``summary`` (an object).  "The same body"
means the same bytes.

A new report id is claimed, the injected latency (``latency_ms`` plus up to
``latency_jitter_ms``) passes, then ``error_rate`` may answer 503 without storing.  Otherwise
the report is stored and answered ``201`` with the acknowledgement
``{"report_id", "status": "ACCEPTED", "received_at", "duplicate": false}``;
``error_after_accept_rate`` may then answer 500 instead (the ambiguous failure a retry with
the same key resolves: it gets the acknowledgement with ``"duplicate": true``).  A second
request for a report id that is still being processed waits for the first one and is then
answered as any later request would be.

Reading (the same Bearer token; no fault injection): ``GET /api/v1/bordereaux`` lists the
stored reports (``?treaty_number=`` filters), ``GET /api/v1/bordereaux/{report_id}`` answers
the stored body byte for byte, with the acknowledgement in the headers ``X-Report-Status``,
``X-Report-Received-At`` and ``X-Report-Duplicates`` (later identical submissions).

**Memory is bounded.**  The reinsurer keeps at most ``max_reports`` reports (100,000 by
default; each holds its whole body), and as many entries of ``accepted_by_report``: when full,
the least recently received or resubmitted report is forgotten and the eviction is counted.  A
forgotten report id is unknown from then on: a later submission stores it again as new.

The control API under ``/_sandbox/reinsurer/`` (no auth; sandbox only): ``GET config``,
``PUT config`` (partial), ``POST reset``, ``GET requests`` (answers of the submission
endpoint by status code), ``GET bounds`` (size, bound and evictions of the stored reports).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Final

from aiohttp import web
from pydantic import ConfigDict, Field, SecretStr

from processors.adapters import jsonwire
from processors.errors import ContractError, DecodeError, ValidationFailed
from processors_dev.sandbox.common import (
    BoundedDict,
    ControlApi,
    InjectedLatency,
    SandboxConfig,
    error_response,
    refusal,
    wake,
)

__all__ = [
    "BORDEREAUX_PATH",
    "CONTROL_PREFIX",
    "DEFAULT_MAX_REPORTS",
    "DEFAULT_TOKEN",
    "REINSURER_APP_KEY",
    "REPORT_TYPES",
    "TOKEN_ENV",
    "ReinsurerConfig",
    "ReinsurerSim",
    "StoredReport",
    "SubmittedReport",
    "parse_report",
]

log = logging.getLogger(__name__)

BORDEREAUX_PATH: Final = "/api/v1/bordereaux"
CONTROL_PREFIX: Final = "/_sandbox/reinsurer"
DEFAULT_TOKEN: Final = "sandbox-token"  # noqa: S105 - the sandbox's documented default
TOKEN_ENV: Final = "SANDBOX_REINSURER_TOKEN"  # noqa: S105 - the name of the variable holding the token
REPORT_TYPES: Final = frozenset({"PREMIUM_BORDEREAUX", "CLAIMS_BORDEREAUX"})
DEFAULT_MAX_REPORTS: Final = 100_000
"""How many reports the reinsurer keeps by default (each with its body)."""

_MAX_TEXT_LEN: Final = 255
_JSON: Final = "application/json"
_UNAUTHORIZED_BODY: Final = b'{"error":"unauthorized","message":"a valid Bearer token is required"}'
_OUTAGE_BODY: Final = b'{"error":"service_unavailable","message":"the reinsurer is down (outage)"}'
_UNAVAILABLE_BODY: Final = (
    b'{"error":"service_unavailable","message":"temporary failure, the report was not stored"}'
)
_AFTER_ACCEPT_BODY: Final = (
    b'{"error":"internal_error","message":"the reinsurer failed while answering; the outcome is unknown"}'
)
_CHANGED_BODY: Final = (
    b'{"error":"report_changed",'
    b'"message":"another body was already received under this report_id; a closed report must not change"}'
)
_NOT_FOUND_BODY: Final = b'{"error":"not_found","message":"no report with this report_id"}'
_TOO_LARGE_BODY: Final = b'{"error":"payload_too_large","message":"the report exceeds max_report_bytes"}'


class ReinsurerConfig(SandboxConfig):
    """Knobs of the simulated reinsurer.  Frozen; change it with :meth:`ReinsurerSim.update_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, le=600_000, allow_inf_nan=False)
    latency_jitter_ms: float = Field(default=0.0, ge=0, le=600_000, allow_inf_nan=False)
    error_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """Probability of answering 503 before storing."""
    error_after_accept_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    """Probability of storing the report and then answering 500."""
    outage: bool = False
    max_report_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """The largest report accepted (a bordereau is one Kafka record of up to 16 MiB)."""
    token: SecretStr = SecretStr(DEFAULT_TOKEN)
    seed: int | None = None

    config_name: ClassVar[str] = "reinsurer config"


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmittedReport:
    """A validated submission.  The body (policy numbers, amounts) stays out of the repr."""

    report_id: str
    report_type: str
    treaty_number: str
    period_id: str
    body: bytes = field(repr=False)
    fingerprint: bytes = field(repr=False)


def parse_report(body: bytes, idempotency_header: str | None) -> SubmittedReport:
    """Decode and validate one submission.

    Raises :class:`DecodeError` (not a JSON object) or :class:`ValidationFailed` (a required
    field, or the key); the ``reason`` names the field and the rule, never a value.
    """
    try:
        payload = jsonwire.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise DecodeError("body must be a JSON object")
    report_id = _text(payload, "report_id")
    if not idempotency_header:
        raise ValidationFailed("the Idempotency-Key header is required")
    if idempotency_header != report_id:
        raise ValidationFailed("the Idempotency-Key header must equal report_id")
    report_type = payload.get("report_type")
    if report_type not in REPORT_TYPES:
        raise ValidationFailed(f"report_type must be one of {', '.join(sorted(REPORT_TYPES))}")
    treaty_number = _text(payload, "treaty_number")
    period = payload.get("period")
    if not isinstance(period, dict):
        raise ValidationFailed("period must be an object with id, from and to")
    period_id = _text(period, "id", "period.id")
    starts, ends = _date(period, "from"), _date(period, "to")
    if starts > ends:
        raise ValidationFailed("period.from must not be after period.to")
    if not isinstance(payload.get("summary"), dict):
        raise ValidationFailed("summary must be an object")
    return SubmittedReport(
        report_id=report_id,
        report_type=str(report_type),
        treaty_number=treaty_number,
        period_id=period_id,
        body=body,
        fingerprint=hashlib.sha256(body).digest(),
    )


def _text(payload: Mapping[str, Any], name: str, where: str | None = None) -> str:
    label = where or name
    value = payload.get(name)
    if value is None:
        raise ValidationFailed(f"{label} is required")
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT_LEN or not value.isprintable():
        raise ValidationFailed(f"{label} must be 1 to {_MAX_TEXT_LEN} printable characters")
    return value


def _date(period: Mapping[str, Any], name: str) -> date:
    value = period.get(name)
    problem = f"period.{name} must be a date (YYYY-MM-DD)"
    if not isinstance(value, str):
        raise ValidationFailed(problem)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(problem) from None


# -- the simulator -------------------------------------------------------------------------------


@dataclass(slots=True)
class StoredReport:
    """A report the reinsurer received, and its acknowledgement."""

    report_id: str
    report_type: str
    treaty_number: str
    period_id: str
    received_at: str
    body: bytes = field(repr=False)
    fingerprint: bytes = field(repr=False)
    duplicates: int = 0
    """Later submissions of the same bytes (answered with the original acknowledgement)."""

    def acknowledgement(self, *, duplicate: bool) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "status": "ACCEPTED",
            "received_at": self.received_at,
            "duplicate": duplicate,
        }

    def listing(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "report_type": self.report_type,
            "treaty_number": self.treaty_number,
            "period_id": self.period_id,
            "status": "ACCEPTED",
            "received_at": self.received_at,
            "duplicates": self.duplicates,
            "bytes": len(self.body),
        }


async def _read_body(request: web.Request, max_bytes: int) -> bytes | None:
    """The request body, or None when it is larger than ``max_bytes``.

    Read from the stream rather than with ``request.read()``, whose limit is the whole sandbox
    application's ``client_max_size`` (1 MiB), below the size of a large bordereau.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _utc_now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReinsurerSim(ControlApi[ReinsurerConfig], InjectedLatency):
    """State and HTTP routes of the simulated reinsurer.

    All state lives on one event loop.  A report id is claimed before the handler's first
    ``await`` after validation, so concurrent submissions of one report cannot both store it.
    ``reports`` holds what was received (in arrival order), ``accepted_by_report`` counts how
    often each report id was stored (a correct client, and a correct simulator, show 1
    everywhere) and ``requests_by_status`` the submission endpoint's answers by status.
    Both per-report tables hold at most ``max_reports`` reports (see the module doc).
    """

    control_name: ClassVar[str] = "reinsurer"
    control_log: ClassVar[logging.Logger] = log

    def __init__(
        self, config: ReinsurerConfig | None = None, *, max_reports: int = DEFAULT_MAX_REPORTS
    ) -> None:
        self.reports: BoundedDict[str, StoredReport] = BoundedDict(max_reports)
        self.accepted_by_report: BoundedDict[str, int] = BoundedDict(max_reports)
        self.requests_by_status: dict[int, int] = {}
        self._config = config or ReinsurerConfig()
        self._rng = random.Random(self._config.seed)
        self._auth = self._expected_auth(self._config)
        self._busy: dict[str, asyncio.Future[None]] = {}
        self._sleepers: set[asyncio.Future[None]] = set()

    # -- configuration and state -------------------------------------------------------------

    def configure(self, config: ReinsurerConfig) -> None:
        """Replace the configuration.  Requests already waiting keep the latency they drew."""
        previous = self._config
        self._config = config
        self._auth = self._expected_auth(config)
        if config.seed != previous.seed:
            self._rng = random.Random(config.seed)

    def reset(self) -> None:
        """Forget every report and counter; restart the random sequence."""
        self.reports.forget()
        self.accepted_by_report.forget()
        self.requests_by_status.clear()
        self._rng = random.Random(self._config.seed)

    def bounds(self) -> dict[str, dict[str, int]]:
        return {"reports": self.reports.stats(), "accepted_by_report": self.accepted_by_report.stats()}

    # -- HTTP --------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(BORDEREAUX_PATH, self._handle_submit),
            web.get(BORDEREAUX_PATH, self._handle_list),
            web.get(BORDEREAUX_PATH + "/{report_id}", self._handle_get),
            web.get(f"{CONTROL_PREFIX}/config", self._handle_get_config),
            web.put(f"{CONTROL_PREFIX}/config", self._handle_put_config),
            web.post(f"{CONTROL_PREFIX}/reset", self._handle_reset),
            web.get(f"{CONTROL_PREFIX}/requests", self._handle_requests),
            web.get(f"{CONTROL_PREFIX}/bounds", self._handle_bounds),
        ]

    def add_to(self, app: web.Application) -> None:
        """Mount the routes on ``app`` and make the sim reachable as ``app[REINSURER_APP_KEY]``."""
        app.add_routes(self.routes())
        app[REINSURER_APP_KEY] = self
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Waiting requests answer now instead of holding the shutdown for their latency.
        self.release_waiting()

    async def _handle_submit(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        self.requests_by_status[response.status] = self.requests_by_status.get(response.status, 0) + 1
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        config = self._config
        if config.outage:
            return error_response(503, _OUTAGE_BODY, "1")
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        body = await _read_body(request, config.max_report_bytes)
        if body is None:
            return error_response(413, _TOO_LARGE_BODY)
        try:
            report = parse_report(body, request.headers.get("Idempotency-Key"))
        except DecodeError as exc:
            return refusal(400, "validation_error", exc.reason)
        except ContractError as exc:
            return refusal(422, "invalid_report", exc.reason)

        report_id = report.report_id
        while (busy := self._busy.get(report_id)) is not None:
            await asyncio.shield(busy)  # the first request decides; then answer as a later one
        stored = self.reports.get(report_id)
        if stored is not None:
            if not hmac.compare_digest(stored.fingerprint, report.fingerprint):
                log.warning("reinsurer: report %s submitted again with a different body", report_id)
                return error_response(409, _CHANGED_BODY)
            stored.duplicates += 1
            self.reports.touch(report_id)
            self.accepted_by_report.touch(report_id)
            return web.Response(
                status=200,
                body=jsonwire.dumps(stored.acknowledgement(duplicate=True)),
                content_type=_JSON,
                headers={"Idempotent-Replayed": "true"},
            )

        claim: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._busy[report_id] = claim
        try:
            await self._inject_latency(config)
            if config.error_rate and self._rng.random() < config.error_rate:
                return error_response(503, _UNAVAILABLE_BODY)
            stored = StoredReport(
                report_id=report_id,
                report_type=report.report_type,
                treaty_number=report.treaty_number,
                period_id=report.period_id,
                received_at=_utc_now_text(),
                body=report.body,
                fingerprint=report.fingerprint,
            )
            self.reports[report_id] = stored
            self.accepted_by_report[report_id] = self.accepted_by_report.get(report_id, 0) + 1
        finally:
            del self._busy[report_id]
            wake(claim)
        log.info("reinsurer: report %s received", report_id)
        if config.error_after_accept_rate and self._rng.random() < config.error_after_accept_rate:
            return error_response(500, _AFTER_ACCEPT_BODY)
        return web.Response(
            status=201, body=jsonwire.dumps(stored.acknowledgement(duplicate=False)), content_type=_JSON
        )

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        authorization = request.headers.get("Authorization")
        if authorization is not None and hmac.compare_digest(
            authorization.encode("utf-8", "replace"), self._auth
        ):
            return None
        return web.Response(
            status=401, body=_UNAUTHORIZED_BODY, content_type=_JSON, headers={"WWW-Authenticate": "Bearer"}
        )

    async def _handle_list(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        treaty = request.query.get("treaty_number")
        reports = [
            stored.listing()
            for stored in self.reports.values()
            if treaty is None or stored.treaty_number == treaty
        ]
        return web.json_response({"total": len(reports), "reports": reports})

    async def _handle_get(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        stored = self.reports.get(request.match_info["report_id"])
        if stored is None:
            return error_response(404, _NOT_FOUND_BODY)
        return web.Response(
            status=200,
            body=stored.body,
            content_type=_JSON,
            headers={
                "X-Report-Status": "ACCEPTED",
                "X-Report-Received-At": stored.received_at,
                "X-Report-Duplicates": str(stored.duplicates),
            },
        )

    # -- control API -------------------------------------------------------------------------

    @staticmethod
    def _expected_auth(config: ReinsurerConfig) -> bytes:
        return b"Bearer " + config.token.get_secret_value().encode("ascii")


REINSURER_APP_KEY: Final = web.AppKey("reinsurer_sim", ReinsurerSim)
