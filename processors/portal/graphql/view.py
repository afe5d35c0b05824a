"""``/graphql`` on the API server: HTTP (POST; GET for queries) and WebSocket (graphql-transport-ws).

:class:`GraphqlRoutes` is a route provider of :class:`~processors.api.server.ApiServer` that
authenticates its own requests (a ``public`` provider, mounted without the server's guard,
whose handler checks every caller itself): the server's Bearer guard reads the
``Authorization`` header of every request, which a browser's WebSocket handshake cannot carry,
so this route checks the partner key itself — in the header over HTTP, in ``connection_init``'s
payload over WebSocket.

**Who may call.**  Partner keys only, checked on every HTTP request with ``services.keys`` (the
registry table this process tails: a revoked, expired or suspended key is refused as soon as
the table shows it).  The operator token is refused with 403 (the portal is the partners'
door; operators have the REST API).  Over WebSocket the key comes in
``connection_init``'s payload as ``{"authorization": "Bearer pk_live_..."}``; a refused key
closes the socket with 4403, and the key is checked again before every operation the
connection starts (an open feed checks it on its own schedule, :mod:`.subscription`).

**Answers.**

============================================  ===============================================
request                                       answer
============================================  ===============================================
a GraphQL result, errors or not               200, ``errors[].extensions.code`` on each error
no key, a malformed or refused key            401 ``UNAUTHENTICATED`` (``WWW-Authenticate``)
the operator token                            403 ``FORBIDDEN``
the key's request budget spent                429 ``RATE_LIMITED`` with ``Retry-After``
keys cannot be checked now                    503 ``UNAVAILABLE`` with ``Retry-After``
a body that is not a GraphQL request, a       400 ``GRAPHQL_PARSE_FAILED`` /
batch, a mutation over GET, a subscription    ``BAD_USER_INPUT``
over HTTP
============================================  ===============================================

Every answer is a GraphQL response document (``{"data": null, "errors": [...]}`` before
execution).  An error never shows a stack trace, SQL, an internal class name or anything of
another partner; an unexpected one is logged here (ids and class names, never a key, a body or
personal data) and answered ``INTERNAL``.  JSON is written with amounts (``Decimal``) digit for
digit.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final, Protocol

import orjson
import strawberry
from aiohttp import web
from cross_web import HTTPException
from prometheus_client.registry import Collector
from pydantic import SecretStr
from strawberry.aiohttp.views import GraphQLView
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from processors.partners.auth import Caller, KeyRefused
from processors.partners.keys import key_id_of, looks_like_partner_key
from processors.portal.config import GraphqlSettings
from processors.portal.graphql.context import PortalContext, PortalServices
from processors.portal.graphql.direct import DirectQueries
from processors.portal.graphql.errors import INTERNAL_MESSAGE, ErrorCode, coded, error_document, raised_at
from processors.portal.graphql.limits import KeyRateLimiter
from processors.portal.graphql.schema import PortalSchema, build_schema
from processors.portal.queries import PortalQueries
from processors.portal.store import PortalStore

__all__ = [
    "GRAPHQL_PATH",
    "GraphqlRoutes",
    "Lifecycle",
    "PortalView",
    "StoreParts",
    "encode_json",
    "encode_json_bytes",
]

log = logging.getLogger(__name__)

GRAPHQL_PATH: Final = "/graphql"
_RETRY_AFTER_S: Final = "5"
_NOBODY: Final = Caller(partner_id="", key_id="")
"""A WebSocket connection's caller until its key is accepted: owns nothing, sees nothing."""


class Lifecycle(Protocol):
    """A part :class:`GraphqlRoutes` starts with the server and stops after it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


_JSON_OPTIONS: Final = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _exact(value: Any) -> Any:
    """orjson's ``default``: a ``Decimal`` is written as the number it is, digit for digit."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a non-finite decimal cannot be sent")
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_json_bytes(data: object) -> bytes:
    """Compact UTF-8 JSON (orjson); a ``Decimal`` written digit for digit, never through a
    float.  A time must have been written by its scalar before (a ``datetime`` here is an
    error, as a dataclass is).  Not :mod:`processors.adapters.jsonwire`: that writer refuses
    floats on purpose (money wires), and portal answers carry floats (latencies, success rates)
    beside exact amounts.  A non-finite float (which no ``Float`` field lets through, but a
    ``JSON`` value read from an event might hold) is written as ``null``."""
    try:
        return orjson.dumps(data, default=_exact, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        # What orjson cannot write: an integer beyond 64 bits (an error may quote the number
        # the caller sent).  The standard library writes any integer; this path is rare.
        return _encode_slowly(data).encode()


_STDLIB: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode_slowly(data: object) -> str:
    try:
        return _STDLIB.encode(data)
    except TypeError:  # a Decimal somewhere: written digit for digit, the rest as it is
        parts: list[str] = []
        _write(data, parts)
        return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a non-finite decimal cannot be sent")
        out.append(format(value, "f"))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_STDLIB.encode(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        out.append(_STDLIB.encode(value))


def encode_json(data: object) -> str:
    """:func:`encode_json_bytes` as text."""
    return encode_json_bytes(data).decode()


class _TransportWS(BaseGraphQLTransportWSHandler[PortalContext, None]):
    """graphql-transport-ws with the key checked again, and the budget taken, per operation."""

    view: PortalView

    async def handle_subscribe(self, message: Any) -> None:
        if self.connection_acknowledged:
            context = self.context
            found = await context.services.keys.authenticate(context.key.get_secret_value())
            if not isinstance(found, Caller) or found.partner_id != context.caller.partner_id:
                await self.websocket.close(code=4403, reason="Forbidden")
                return
            decision = self.view.limiter.take(found.key_id or "")
            if not decision.allowed:
                seconds = max(1, int(decision.retry_after_s + 0.999))
                await self.send_message(
                    {
                        "id": str(message.get("id", "")),
                        "type": "error",
                        "payload": [
                            {
                                "message": f"too many requests for this key; retry in {seconds} s",
                                "extensions": {"code": str(ErrorCode.RATE_LIMITED), "retryAfterS": seconds},
                            }
                        ],
                    }
                )
                return
        await super().handle_subscribe(message)


class PortalView(GraphQLView[PortalContext, None]):
    """Strawberry's aiohttp view with the portal's rules: partner keys, subscriptions over
    WebSocket only, no batching, no IDE, JSON with exact decimals."""

    graphql_transport_ws_handler_class = _TransportWS

    def __init__(
        self,
        schema: strawberry.Schema,
        services: PortalServices,
        limiter: KeyRateLimiter,
        *,
        connection_init_timeout_s: float,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide=None,
            allow_queries_via_get=True,
            keep_alive=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=connection_init_timeout_s),
            multipart_uploads_enabled=False,
        )
        self.services = services
        self.limiter = limiter

    def encode_json(self, data: object) -> str:
        return encode_json(data)  # text: WebSocket messages go as text frames

    def create_response(self, response_data: Any, sub_response: web.Response) -> web.Response:
        # strawberry's own decodes the bytes to text, which aiohttp encodes again
        sub_response.body = encode_json_bytes(response_data)
        sub_response.content_type = "application/json"
        sub_response.charset = "utf-8"
        return sub_response

    def should_render_graphql_ide(self, request: Any) -> bool:
        return False  # no IDE: a GET without a query is a request without a query (400)

    async def process_result(self, request: web.Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        # The schema's ErrorCodes codes every error of an operation; an error raised around it
        # (strawberry's own steps) is coded here, the same way.
        if result.errors:
            result.errors = [coded(error) for error in result.errors]
        return await super().process_result(request, result)

    def decode_json(self, data: str | bytes) -> object:
        try:
            document = json.loads(data)
        except RecursionError:
            raise HTTPException(400, "the body nests too deeply") from None
        if not isinstance(document, dict | list):  # a batch (list) is refused with its own reason
            raise HTTPException(400, "the body must be a JSON object with a query")
        return document

    async def get_context(self, request: web.Request, response: Any) -> PortalContext:
        # Over HTTP the handler passes the authenticated context in; this is the WebSocket's,
        # whose caller is set once connection_init's key is accepted (on_ws_connect).
        return PortalContext(
            caller=_NOBODY, key=SecretStr(""), services=self.services, request_id=_request_id()
        )

    async def on_ws_connect(self, context: PortalContext) -> UnsetType | dict[str, object] | None:
        params = getattr(context, "connection_params", None)
        offered = params.get("authorization") if isinstance(params, dict) else None
        key = offered[7:] if isinstance(offered, str) and offered.startswith("Bearer ") else None
        if key is None or not looks_like_partner_key(key):
            log.info("portal graphql: a WebSocket connection offered no partner key; closed")
            raise ConnectionRejectionError()
        found = await self.services.keys.authenticate(key)
        if not isinstance(found, Caller):
            log.info(
                "portal graphql: WebSocket key %s refused: %s", key_id_of(key) or "(malformed)", found.reason
            )
            raise ConnectionRejectionError()
        if not self.limiter.take(found.key_id or "").allowed:
            log.info("portal graphql: WebSocket key %s over its request budget; closed", found.key_id)
            raise ConnectionRejectionError()
        context.caller = found
        context.key = SecretStr(key)
        return UnsetType()  # the singleton UNSET: acknowledge without a payload

    async def execute_operation(
        self,
        request: web.Request,
        request_adapter: Any,
        request_data: Any,
        context: PortalContext,
        root_value: None,
        sub_response: web.Response,
    ) -> Any:
        if isinstance(request_data, list):
            raise HTTPException(400, "batching is off: send one operation per request")
        if request_data.protocol != "http":
            raise HTTPException(400, "subscriptions are served over WebSocket (graphql-transport-ws) only")
        allowed = {OperationType.QUERY}
        if request_adapter.method == "POST":
            allowed.add(OperationType.MUTATION)
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from None
        except InvalidOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason(request_adapter.method)) from None
        except MissingQueryError:
            raise HTTPException(400, "no GraphQL query found in the request") from None


class StoreParts:
    """The query store as a part of :class:`GraphqlRoutes`: ``start()`` creates or migrates
    its schema (on a thread), ``stop()`` ends the query threads and closes the store."""

    def __init__(self, store: PortalStore, queries: PortalQueries) -> None:
        self.store = store
        self.queries = queries

    async def start(self) -> None:
        await asyncio.to_thread(self.store.migrate)

    async def stop(self) -> None:
        await asyncio.to_thread(self.queries.close)
        self.store.close()


class GraphqlRoutes:
    """The ``/graphql`` route provider (see the module docstring).

    ``services`` are shared by every request; ``parts`` are started in order when the server
    starts and stopped in reverse order when it stops (the query store, the projector, the
    live feed).  ``operator_token`` is only recognised, to refuse it with 403.
    ``collectors`` go in the server's ``/metrics`` (the projector's).
    """

    public = True
    """Mounted without the API server's Bearer guard (:class:`~processors.api.server.RouteProvider`'s
    public routes): every request is authenticated here."""

    def __init__(
        self,
        services: PortalServices,
        settings: GraphqlSettings | None = None,
        *,
        operator_token: SecretStr | None = None,
        parts: Sequence[Lifecycle] = (),
        schema: strawberry.Schema | None = None,
        collectors: Sequence[Collector] = (),
    ) -> None:
        self.settings = settings if settings is not None else GraphqlSettings()
        self.services = services
        self.limiter = KeyRateLimiter(self.settings.rate_per_s, self.settings.rate_burst)
        self.schema = schema if schema is not None else build_schema(self.settings)
        self.view = PortalView(
            self.schema,
            services,
            self.limiter,
            connection_init_timeout_s=self.settings.connection_init_timeout_s,
        )
        self.direct = (
            DirectQueries(self.schema, self.view._get_stream_transport_from_headers)
            if isinstance(self.schema, PortalSchema) and self.schema.documents is not None
            else None
        )
        """Prepared queries POSTed as JSON, answered on graphql-core directly (:mod:`.direct`)."""
        self.operator_token = operator_token
        self.parts = tuple(parts)
        self._collectors = tuple(collectors)
        self._started: list[Lifecycle] = []

    def collectors(self) -> list[Collector]:
        """Metrics collectors for the server's ``/metrics``."""
        return list(self._collectors)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(GRAPHQL_PATH, self.handle, allow_head=False),
            web.post(GRAPHQL_PATH, self.handle),
        ]

    async def start(self) -> None:
        try:
            for part in self.parts:
                await part.start()
                self._started.append(part)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:
                log.exception("portal graphql: a part failed to stop")

    # ------------------------------------------------------------------------------ requests

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.view.is_websocket_request(request):
                return await self.view.run(request)
            return await self._http(request)
        except HTTPException as exc:
            code = ErrorCode.GRAPHQL_PARSE_FAILED if exc.status_code == 400 else ErrorCode.BAD_USER_INPUT
            return _answer(exc.status_code, error_document(code, _safe_reason(exc.reason)))
        except RecursionError:
            return _answer(
                400, error_document(ErrorCode.GRAPHQL_PARSE_FAILED, "the document nests too deeply")
            )
        except web.HTTPRequestEntityTooLarge:
            message = "the request body is larger than the server accepts (api.max_body_bytes)"
            return _answer(413, error_document(ErrorCode.BAD_USER_INPUT, message))
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception as exc:
            log.error(
                "portal graphql: unexpected error answering a request (%s raised at %s)",
                type(exc).__name__,
                raised_at(exc),
            )
            return _answer(500, error_document(ErrorCode.INTERNAL, INTERNAL_MESSAGE))

    async def _http(self, request: web.Request) -> web.StreamResponse:
        offered = request.headers.get("Authorization", "")
        if not offered:
            return _answer(
                401,
                error_document(
                    ErrorCode.UNAUTHENTICATED, "a partner key is required (Authorization: Bearer pk_live_...)"
                ),
                {"WWW-Authenticate": "Bearer"},
            )
        if self._is_operator_token(offered):
            return _answer(
                403,
                error_document(
                    ErrorCode.FORBIDDEN,
                    "the portal takes partner keys, not the operator token (operators use the REST API)",
                ),
            )
        key = offered[7:] if offered.startswith("Bearer ") else ""
        if not looks_like_partner_key(key):
            return _answer(
                401,
                error_document(ErrorCode.UNAUTHENTICATED, "the API key is not valid"),
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        found = await self.services.keys.authenticate(key)
        if not isinstance(found, Caller):
            return _refused(found, key)
        decision = self.limiter.take(found.key_id or "")
        if not decision.allowed:
            seconds = max(1, int(decision.retry_after_s + 0.999))
            return _answer(
                429,
                error_document(
                    ErrorCode.RATE_LIMITED,
                    f"too many requests for this key; retry in {seconds} s",
                    retryAfterS=seconds,
                ),
                {"Retry-After": str(seconds)},
            )
        context = PortalContext(
            caller=found, key=SecretStr(key), services=self.services, request_id=_request_id()
        )
        if self.direct is not None:
            answer = await self.direct.answer(request, context)
            if answer is not None:
                return web.Response(
                    body=encode_json_bytes(answer), content_type="application/json", charset="utf-8"
                )
        return await self.view.run(request, context=context)

    def _is_operator_token(self, offered: str) -> bool:
        token = self.operator_token
        if token is None:
            return False
        expected = b"Bearer " + token.get_secret_value().encode("utf-8")
        return hmac.compare_digest(offered.encode("utf-8", "replace"), expected)


_REQUEST_PREFIX: Final = secrets.token_hex(8)
"""64 random bits per process: ids of two processes (two instances, a restart) never meet."""
_REQUEST_COUNTER: Final = itertools.count(1)


def _request_id() -> str:
    """A name for one request, unique across processes (audit records and logs correlate by
    it): the process's random prefix and a counter (``next`` on a count is atomic).  It
    says nothing about the caller, and costs a fraction of a random UUID per request."""
    return f"{_REQUEST_PREFIX}-{next(_REQUEST_COUNTER):x}"


def _answer(
    status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=encode_json_bytes(document),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _refused(refusal: KeyRefused, key: str) -> web.Response:
    log.info("portal graphql: key %s refused: %s", key_id_of(key) or "(malformed)", refusal.reason)
    if refusal.reason == "unavailable":
        return _answer(
            503,
            error_document(ErrorCode.UNAVAILABLE, refusal.message, reason=refusal.reason),
            {"Retry-After": _RETRY_AFTER_S},
        )
    return _answer(
        401,
        error_document(ErrorCode.UNAUTHENTICATED, refusal.message, reason=refusal.reason),
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _safe_reason(reason: str) -> str:
    """Strawberry's 400 reasons name the request's own faults; keep them short and plain."""
    text = " ".join(str(reason).split())
    return text[:300] or "not a GraphQL request"
