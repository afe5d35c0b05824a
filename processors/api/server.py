"""The HTTP API: inbound provider webhooks, liveness, readiness, status and metrics.

=====================================  =====================  ==========================================
route                                  auth                   answers
=====================================  =====================  ==========================================
``POST /api/v1/inbound/{provider}``    HMAC signature         200 accepted / duplicate / ignored,
                                                              400, 401, 404, 413, 501, 503
``GET /healthz``                       none                   200 while the process serves requests
``GET /readyz``                        none                   200 ready, 503 with general reasons
``GET /api/v1/status``                 Bearer token           per-app and per-endpoint status (JSON)
``GET /metrics``                       Bearer token [#]_      Prometheus text
=====================================  =====================  ==========================================

.. [#] unless ``api.metrics_require_auth`` is false.

In the caller's event loop (tests, the runner)::

    async with ApiServer(settings, engines=runner.engines, breakers=runner.breakers) as api:
        api.url          # http://127.0.0.1:<bound port>

An inbound request is answered 200 only once the broker acknowledged its record, so a crash
never loses a confirmation the provider was told we have; nothing else (no external call)
happens while the provider waits.  The provider event ids published are shared with the other
API instances through the topic of seen ids (:class:`~processors.api.dedupe.SeenIdsTopic`):
with ``api.dedupe_topic``, or when the API runs with the apps (``api.enabled``) the catalogue's
``integrations.inbound.dedupe``.  See ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Protocol, Self

from aiohttp import web

from processors.adapters import jsonwire
from processors.api.dedupe import SEEN_IDS_TOPIC, Deduplicator, Outcome, SeenIdsTopic
from processors.api.health import BrokerProbe, EngineView, HealthMonitor, Readiness
from processors.api.inbound import (
    EVENT_ID_HEADER,
    KYC_PROVIDER,
    PAYMENT_GATEWAY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HandlerRegistry,
    InboundHandler,
    InboundMessage,
    SignatureError,
    provider_event_id,
    verify_signature,
)
from processors.api.metrics import CONTENT_TYPE, ApiMetrics, InboundOutcome
from processors.apps.registry import catalogue_topic, inbound_handlers
from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.errors import BrokerError, ConfigError, ContractError, DecodeError
from processors.httpserve import listen
from processors.kafka import KafkaClients
from processors.observability import tracing
from processors.observability.audit import audit_logger
from processors.partners.auth import CALLER, OPERATOR, Caller, KeyRefused, PartnerAuthenticator
from processors.partners.keys import key_id_of, looks_like_partner_key
from processors.resilience.breaker import BreakerRegistry
from processors.runtime.message import OutRecord
from processors.runtime.producer import AsyncProducer
from processors.settings import ApiSettings, Settings
from processors.topics.catalogue import load_catalogue

__all__ = [
    "INBOUND_PATH",
    "PROVIDERS",
    "ApiServer",
    "RejectHook",
    "RejectedRequest",
    "RouteProvider",
    "build_api_app",
]

log = logging.getLogger(__name__)

_TRACEPARENT: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
"""A W3C traceparent a caller may hand on (version 00; anything else is not passed on)."""

INBOUND_PATH: Final = "/api/v1/inbound/{provider}"
STATUS_PATH: Final = "/api/v1/status"
PROVIDERS: Final = (PAYMENT_GATEWAY, KYC_PROVIDER)
_RETRY_AFTER_S: Final = "5"
_LOADING_SEEN_IDS: Final = "inbound de-duplication is still reading the ids published by other instances"
_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class RejectedRequest:
    """An inbound request that was refused, for the audit trail.

    Holds no body and no secret: ``body_sha256`` identifies the body, ``provider_event_id`` is
    the *unverified* header, ``reason`` a short code (``signature_mismatch``,
    ``stale_timestamp``, ``malformed``, ``too_large``...).
    """

    provider: str
    status: int
    reason: str
    message: str
    provider_event_id: str | None
    remote: str | None
    received_at: datetime
    body_sha256: str | None


RejectHook = Callable[[RejectedRequest], Awaitable[None] | None]
"""Called for every refused inbound request (401, 400, 413).  May be sync or async; an error in
it is logged and does not change the answer."""


class RouteProvider(Protocol):
    """Extra routes mounted on the API behind the same Bearer token as ``/api/v1/status``.

    Partner keys: a provider with ``partner_access = True`` also takes a partner's key
    (``Bearer pk_live_...``), checked by the ``partner_keys`` attribute
    (:class:`~processors.partners.auth.PartnerAuthenticator`) of a provider that has one; the
    routes of the others refuse partner keys (403 ``operator_only``).  Every route finds who
    called under :data:`~processors.partners.auth.CALLER` in the request.

    Public routes: a provider with ``public = True`` is mounted without the guard; its
    handlers answer anyone (a static page), or check who calls themselves (``/graphql``, whose
    WebSocket key comes in the first message, as a browser's handshake cannot carry an
    ``Authorization`` header).

    Metrics: a provider with a ``collectors()`` method has each collector it returns registered
    in the server's ``/metrics`` registry when the server is built.

    ``routes()`` is called once, when the server is built (no I/O).  A provider may also
    define ``async start()`` and ``async stop()``: the server calls them (in order, and in
    reverse order) around serving requests.
    """

    def routes(self) -> list[web.RouteDef]: ...


class _Refused(Exception):
    def __init__(
        self, status: int, error: str, message: str, outcome: str, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.outcome = outcome
        self.reason = reason or error


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=jsonwire.dumps(dict(body)), content_type="application/json", headers=headers
    )


def _error(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(status, {"error": error, "message": message}, headers)


class ApiServer:
    """The API on ``host:port`` (``port=0``: any free port; see :attr:`url`).

    One-shot: ``start()`` once, ``stop()`` once (or ``async with``); no I/O before ``start()``.
    ``engines`` (read live) and ``breakers`` feed readiness and status; ``app_endpoints`` names
    the endpoints each app calls.  Without ``producer`` the server starts (and stops) its own.
    ``handlers`` replaces the provider handlers (default: payment confirmations, and KYC
    results once the KYC app provides its mapping).  ``on_rejected`` is the audit hook.
    ``clock`` (unix seconds) is what signature timestamps are compared with.
    ``extra_routes`` are mounted behind the Bearer token (see :class:`RouteProvider`).
    ``seen_ids`` is set by ``start()`` when the published ids are shared with other instances.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        engines: Sequence[EngineView] = (),
        breakers: BreakerRegistry | None = None,
        app_endpoints: Mapping[str, Sequence[str]] | None = None,
        codec: Codec | None = None,
        producer: AsyncProducer | None = None,
        handlers: HandlerRegistry | None = None,
        on_rejected: RejectHook | None = None,
        clock: Callable[[], float] = time.time,
        access_log: bool = False,
        shutdown_timeout_s: float = 5.0,
        extra_routes: Sequence[RouteProvider] = (),
    ) -> None:
        self.settings = settings
        self.api: ApiSettings = settings.api
        self.host = host if host is not None else self.api.host
        self.port = port if port is not None else self.api.port
        self.codec = codec if codec is not None else Codec(LocalSchemaIds())
        self.content_type = ContentType.AVRO if settings.output_format == "avro" else ContentType.JSON
        self.handlers: HandlerRegistry = handlers if handlers is not None else inbound_handlers(settings)
        self.on_rejected = on_rejected
        self.dedupe = Deduplicator(self.api.dedupe_ttl_s, self.api.dedupe_max_entries)
        self.kafka = KafkaClients(settings.bootstrap_servers, settings.client_overrides)
        self.health = HealthMonitor(
            engines=engines,
            breakers=breakers,
            broker=BrokerProbe(
                self.kafka,
                timeout_s=self.api.broker_check_timeout_s,
                cache_s=self.api.broker_check_cache_s,
            ),
            app_endpoints=app_endpoints,
            window_s=self.api.status_window_s,
        )
        self.seen_ids: SeenIdsTopic | None = None
        self.metrics = ApiMetrics(
            self.health, dedupe_size=lambda: len(self.dedupe), dedupe_markers=self._dedupe_markers
        )
        self._clock = clock
        self._producer = producer
        self._owns_producer = producer is None
        self._access_log = access_log
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._used = False
        self.extra_routes = tuple(extra_routes)
        for provider in self.extra_routes:
            collectors = getattr(provider, "collectors", None)
            for collector in collectors() if collectors is not None else ():
                self.metrics.registry.register(collector)
        self._started_providers: list[RouteProvider] = []
        self.app = build_api_app(self)

    @property
    def url(self) -> str:
        """Base URL with the bound port, e.g. ``http://127.0.0.1:40123``."""
        if self._url is None:
            raise RuntimeError("the API server is not running")
        return self._url

    @property
    def producer(self) -> AsyncProducer:
        if self._producer is None:
            raise RuntimeError("the API server is not started")
        return self._producer

    async def start(self) -> None:
        if self._used:
            raise RuntimeError("an ApiServer starts once; create a new one")
        self._used = True
        loop = asyncio.get_running_loop()
        # Look up (or register) the schema ids now, not on the first confirmation.
        await loop.run_in_executor(None, self.codec.prepare, ["payment.confirmed"])
        if self._producer is None:
            self._producer = AsyncProducer(self.kafka.producer())
            await self._producer.start()
        await self.health.start()
        try:
            await self._share_seen_ids()
            for provider in self.extra_routes:
                start = getattr(provider, "start", None)
                if start is not None:
                    await start()
                self._started_providers.append(provider)
        except BaseException:
            await self._release()
            raise
        try:
            self._runner, self._url = await listen(
                self.app,
                self.host,
                self.port,
                what="the API",
                access_log=self._access_log,
                shutdown_timeout_s=self._shutdown_timeout_s,
            )
        except ConfigError:
            await self._release()
            raise
        log.info("API listening on %s", self._url)

    def seen_ids_topic(self) -> str | None:
        """The topic of seen ids: ``api.dedupe_topic``; else, when the API runs with the apps
        (``api.enabled``), the catalogue's ``integrations.inbound.dedupe``; else None (the ids
        stay in this process)."""
        if self.api.dedupe_topic is not None:
            return self.api.dedupe_topic
        if not self.api.enabled:
            return None
        return catalogue_topic(load_catalogue(self.settings.topics_file), SEEN_IDS_TOPIC)

    async def _share_seen_ids(self) -> None:
        topic = self.seen_ids_topic()
        if topic is None:
            log.info("API: inbound de-duplication keeps its ids in this process only")
            return
        seen = SeenIdsTopic(
            self.kafka,
            topic,
            self.dedupe,
            self.producer,
            marker_timeout_s=self.api.publish_timeout_s,
        )
        await seen.start()
        self.seen_ids = seen

    def _dedupe_markers(self) -> dict[str, int]:
        seen = self.seen_ids
        return seen.counts() if seen is not None else {}

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._url = None
        await runner.cleanup()
        await self._release()
        log.info("API stopped")

    async def _release(self) -> None:
        while self._started_providers:
            stop = getattr(self._started_providers.pop(), "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("API: an extra route provider failed to stop")
        if self.seen_ids is not None:
            await self.seen_ids.stop()  # before the producer: the last markers are written
        if self._owns_producer and self._producer is not None:
            await self._producer.stop(timeout_s=self.api.publish_timeout_s)
        await self.dedupe.aclose()
        await self.health.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- routes ------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readiness(self) -> Readiness:
        """The health monitor's readiness, and not ready while the seen ids are being read."""
        return self._with_seen_ids(await self.health.readiness())

    def _with_seen_ids(self, readiness: Readiness) -> Readiness:
        seen = self.seen_ids
        if seen is None or seen.caught_up:
            return readiness
        readiness = Readiness(ready=False, reasons=(*readiness.reasons, _LOADING_SEEN_IDS))
        self.health.last_readiness = readiness  # what processors_ready shows
        return readiness

    async def readyz(self, _request: web.Request) -> web.Response:
        readiness = await self.readiness()
        if readiness.ready:
            return _json(200, {"ready": True})
        return _json(503, {"ready": False, "reasons": list(readiness.reasons)})

    async def status(self, request: web.Request) -> web.Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        document = await self.health.status()
        if self.health.last_readiness is not None:
            readiness = self._with_seen_ids(self.health.last_readiness)
            document["ready"], document["reasons"] = readiness.ready, list(readiness.reasons)
        seen = self.seen_ids
        document["inbound"] = {
            "requests": self.metrics.inbound_counts(),
            "dedupe_entries": len(self.dedupe),
            "dedupe_ttl_s": self.dedupe.ttl_s,
            "publications_in_flight": self.dedupe.in_flight,
            "dedupe_shared": seen.status() if seen is not None else None,
        }
        return web.json_response(document)

    async def metrics_text(self, request: web.Request) -> web.Response:
        if self.api.metrics_require_auth:
            refused = self._check_token(request)
            if refused is not None:
                return refused
        await self.readiness()  # refreshes processors_ready and the broker check (cached)
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    def _check_token(self, request: web.Request) -> web.Response | None:
        token = self.api.auth_token
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            return _error(401, "unauthorized", "no API token is configured on this server", challenge)
        offered = request.headers.get("Authorization", "").encode("utf-8", "replace")
        expected = b"Bearer " + token.get_secret_value().encode("ascii")
        if not hmac.compare_digest(offered, expected):
            return _error(401, "unauthorized", "a valid Bearer token is required", challenge)
        return None

    def _authenticated(
        self,
        route: web.RouteDef,
        *,
        partner_access: bool = False,
        partner_keys: PartnerAuthenticator | None = None,
    ) -> web.RouteDef:
        """``route`` answering 401 (like :meth:`status`) unless the Bearer token is offered;
        with ``partner_access``, a partner key that ``partner_keys`` accepts too."""
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = route.handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = self._check_token(request)
            if refused is None:
                request[CALLER] = OPERATOR
                return await handler(request)
            offered = request.headers.get("Authorization", "")
            if not offered.startswith("Bearer ") or not looks_like_partner_key(offered[7:]):
                return refused
            if not partner_access:
                return _error(403, "operator_only", "this route takes the operator token, not a partner key")
            found = await partner_keys.authenticate(offered[7:]) if partner_keys is not None else None
            if not isinstance(found, Caller):
                return _partner_key_refused(found, offered[7:])
            request[CALLER] = found
            return await handler(request)

        return web.RouteDef(route.method, route.path, guarded, route.kwargs)

    async def inbound(self, request: web.Request) -> web.Response:
        tracer = tracing.tracer()
        if tracer is None:
            return await self._inbound(request)
        provider = request.match_info["provider"]
        attributes = {"http.request.method": request.method, "processors.provider": provider[:64]}
        with tracing.server_span(tracer, f"inbound {provider[:64]}", request.headers, attributes) as span:
            response = await self._inbound(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    async def _inbound(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        received_at = datetime.now(UTC)
        body: bytes | None = None
        try:
            if provider not in self.handlers:
                return _error(404, "unknown_provider", "no such provider")
            handler = self.handlers[provider]()
            if handler is None:
                self.metrics.inbound(provider, InboundOutcome.NOT_IMPLEMENTED)
                return _error(501, "not_implemented", f"{provider} callbacks are not handled by this build")
            secrets = self.api.webhook_secrets(provider)
            accepted = secrets.accepted() if secrets is not None else []
            if not accepted:
                self.metrics.inbound(provider, InboundOutcome.NOT_CONFIGURED)
                log.error("inbound %s: no webhook secret is configured; refusing the callback", provider)
                return _error(
                    503, "not_configured", "this provider is not configured", {"Retry-After": _RETRY_AFTER_S}
                )
            body = await _read_capped(request, self.api.max_body_bytes)
            if body is None:
                raise _Refused(
                    413,
                    "too_large",
                    f"the body exceeds {self.api.max_body_bytes} bytes",
                    InboundOutcome.TOO_LARGE,
                )
            try:
                verify_signature(
                    accepted,
                    request.headers.get(TIMESTAMP_HEADER),
                    body,
                    request.headers.get(SIGNATURE_HEADER),
                    now=self._clock(),
                    tolerance_s=self.api.signature_tolerance_s,
                )
            except SignatureError as exc:
                raise _Refused(
                    401, "invalid_signature", str(exc), InboundOutcome.BAD_SIGNATURE, exc.problem.value
                ) from exc
            try:
                record, event_id = self._convert(handler, request.headers.get(EVENT_ID_HEADER), body)
                if record is not None:
                    record = _traced(record, request.headers.get("traceparent"))
            except ContractError as exc:
                raise _Refused(400, "malformed", exc.reason, InboundOutcome.MALFORMED) from exc
        except _Refused as refused:
            self.metrics.inbound(provider, refused.outcome)
            await self._audit(request, provider, refused, body, received_at)
            return _error(refused.status, refused.error, refused.message)
        if record is None:
            self.metrics.inbound(provider, InboundOutcome.IGNORED)
            return _json(200, {"accepted": True, "ignored": True})
        return await self._publish(provider, event_id, record)

    def _convert(
        self, handler: InboundHandler, header_id: str | None, body: bytes
    ) -> tuple[OutRecord | None, str]:
        """The record to publish (None: ignore) and the provider event id; ContractError if malformed."""
        try:
            payload = jsonwire.loads(body)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("the body is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise DecodeError("the body must be a JSON object")
        event_id = provider_event_id(header_id, payload, body)
        message: InboundMessage | None = handler(payload, provider_event_id=event_id)
        if message is None:
            return None, event_id
        if isinstance(message.value, Event):
            value, headers = self.codec.encode(message.value, self.content_type)
        else:
            value, headers = message.value, []
        headers.extend(message.headers)
        headers.append(("x-provider-event-id", event_id.encode()))
        return OutRecord(topic=message.topic, key=message.key, value=value, headers=headers), event_id

    async def _publish(self, provider: str, event_id: str, record: OutRecord) -> web.Response:
        started = time.monotonic()
        producer = self.producer
        seen = self.seen_ids
        if seen is not None and not seen.caught_up:
            # Until the ids other instances published are read, a retry of one would pass.
            self.metrics.inbound(provider, InboundOutcome.UNAVAILABLE)
            log.warning(
                "inbound %s %s: not ready (seen ids still loading); the provider will retry",
                provider,
                event_id,
            )
            return _error(
                503, "unavailable", "the service is starting; retry later", {"Retry-After": _RETRY_AFTER_S}
            )

        async def send() -> None:
            await producer.send(record)

        try:
            outcome = await self.dedupe.once((provider, event_id), send, wait_s=self.api.publish_timeout_s)
        except (TimeoutError, BrokerError) as exc:
            self.metrics.inbound(provider, InboundOutcome.UNAVAILABLE)
            log.warning(
                "inbound %s %s: not acknowledged by the broker (%s); the provider will retry",
                provider,
                event_id,
                type(exc).__name__,
            )
            return _error(
                503,
                "unavailable",
                "the event could not be stored yet; retry later",
                {"Retry-After": _RETRY_AFTER_S},
            )
        duplicate = outcome is Outcome.DUPLICATE
        _INBOUND_AUDIT.record_interaction(
            direction="inbound",
            endpoint=provider,
            operation="webhook",
            status="duplicate" if duplicate else "accepted",
            outcome="success",
            latency_ms=(time.monotonic() - started) * 1000,
            idempotency_key=event_id,
            request_summary={"provider_event_id": event_id, "published_to": record.topic},
        )
        if duplicate:
            self.metrics.inbound(provider, InboundOutcome.DUPLICATE)
            log.info("inbound %s %s: duplicate, not published again", provider, event_id)
            return _json(200, {"accepted": True, "duplicate": True})
        self.metrics.inbound(provider, InboundOutcome.ACCEPTED)
        self.metrics.publish_seconds(provider, time.monotonic() - started)
        log.info("inbound %s %s: published to %s", provider, event_id, record.topic)
        return _json(200, {"accepted": True, "duplicate": False})

    async def _audit(
        self,
        request: web.Request,
        provider: str,
        refused: _Refused,
        body: bytes | None,
        received_at: datetime,
    ) -> None:
        log.warning("inbound %s refused with %d: %s", provider, refused.status, refused.reason)
        header_id = request.headers.get(EVENT_ID_HEADER)
        _INBOUND_AUDIT.record_interaction(
            direction="inbound",
            endpoint=provider,
            operation="webhook",
            status=refused.reason,
            outcome="rejected",
            latency_ms=0.0,
            request_summary={
                "http_status": refused.status,
                "provider_event_id": header_id[:128] if header_id else None,
                "body_sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
            },
        )
        hook = self.on_rejected
        if hook is None:
            return
        rejected = RejectedRequest(
            provider=provider,
            status=refused.status,
            reason=refused.reason,
            message=refused.message,
            provider_event_id=header_id[:128] if header_id else None,
            remote=request.remote,
            received_at=received_at,
            body_sha256=hashlib.sha256(body).hexdigest() if body is not None else None,
        )
        try:
            result = hook(rejected)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.api.publish_timeout_s):
                    await result
        except Exception:
            log.exception("inbound %s: the rejection hook failed", provider)


def _partner_key_refused(refusal: KeyRefused | None, key: str) -> web.Response:
    """401 with the reason (503 when keys cannot be checked now); the key is never logged."""
    if refusal is None:
        return _error(
            401,
            "unauthorized",
            "partner keys are not accepted by this server",
            {"WWW-Authenticate": "Bearer"},
        )
    log.info("API: partner key %s refused: %s", key_id_of(key) or "(malformed)", refusal.reason)
    if refusal.reason == "unavailable":
        return _json(
            503,
            {"error": "unavailable", "reason": refusal.reason, "message": refusal.message},
            {"Retry-After": _RETRY_AFTER_S},
        )
    return _json(
        401,
        {"error": "unauthorized", "reason": refusal.reason, "message": refusal.message},
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


_INBOUND_AUDIT = audit_logger("api")
"""Every inbound request (accepted, duplicate or refused) is audited like an outbound call."""


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The raw body, or None when it is longer than ``cap`` bytes."""
    if request.content_length is not None and request.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_api_app(server: ApiServer) -> web.Application:
    """The aiohttp application of ``server`` (its routes; no I/O)."""
    app = web.Application(client_max_size=server.api.max_body_bytes)
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/readyz", server.readyz)
    app.router.add_get(STATUS_PATH, server.status)
    app.router.add_get("/metrics", server.metrics_text)
    app.router.add_post(INBOUND_PATH, server.inbound)
    keys = [k for p in server.extra_routes if (k := getattr(p, "partner_keys", None)) is not None]
    partner_keys: PartnerAuthenticator | None = keys[0] if keys else None
    for provider in server.extra_routes:
        if getattr(provider, "public", False) is True:
            for route in provider.routes():
                route.register(app.router)
            continue
        partner_access = bool(getattr(provider, "partner_access", False))
        for route in provider.routes():
            guarded = server._authenticated(route, partner_access=partner_access, partner_keys=partner_keys)
            guarded.register(app.router)
    return app


def _traced(record: OutRecord, traceparent: str | None) -> OutRecord:
    """``record`` with a producer span under the request's span (tracing on), or with the
    caller's ``traceparent`` passed on (tracing off)."""
    tracer = tracing.tracer()
    if tracer is not None:
        return tracing.stamp(tracer, [record])[0]
    if traceparent is None or not _TRACEPARENT.fullmatch(traceparent):
        return record
    return dataclasses.replace(
        record, headers=[*record.headers, ("traceparent", traceparent.encode("ascii"))]
    )
