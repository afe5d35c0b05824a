"""``/graphql`` in process: authentication, limits, error codes and masking, JSON, scalars.

A real aiohttp server runs :class:`~processors.portal.graphql.view.GraphqlRoutes` over a real
SQLite query store and the real :class:`~processors.partners.auth.PartnerKeys` (its registry
table filled directly: the seam the API's key checks read).  The endpoint service is a small
stand-in with the real service's read interface (ownership included); the integration tests
run the real one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from graphql import parse, validate
from pydantic import SecretStr

from processors.partners.auth import Caller, PartnerKeys
from processors.partners.keys import generate_key
from processors.partners.model import ApiKey, Partner, RegistryEntry
from processors.partners.table import PartnerTable
from processors.portal.config import GraphqlSettings
from processors.portal.graphql.context import PortalServices
from processors.portal.graphql.errors import INTERNAL_MESSAGE
from processors.portal.graphql.limits import KeyRateLimiter, cost_of, cost_rule
from processors.portal.graphql.scalars import parse_datetime, parse_decimal, serialize_decimal
from processors.portal.graphql.schema import build_schema
from processors.portal.graphql.view import GRAPHQL_PATH, GraphqlRoutes, encode_json
from processors.portal.queries import PortalQueries
from processors.portal.records import Coordinates, Source, decode
from processors.portal.store import PortalStore
from processors.webhooks.service import EndpointNotFound
from processors.webhooks.subscriptions import Subscription
from tests import portal_samples as samples
from tests.integration.graphql_ws import Closed, GraphqlWs

OPERATOR = "operator-token-of-the-unit-tests"
LOG_T = "t.integrations.webhook.deliveries"


class Registry:
    """What :class:`PartnerKeys` reads: the registry table, running."""

    def __init__(self) -> None:
        self.table = PartnerTable()
        self.running = True

    async def put(self, entry: RegistryEntry) -> None:
        self.table.put(entry)

    async def wait_caught_up(self, timeout_s: float = 30) -> None:
        return None

    def partner_with_key(self, partner: Partner) -> str:
        self.table.put(partner)
        issued = generate_key()
        self.table.put(ApiKey.create(id=issued.key_id, partner_id=partner.id, digest=issued.digest))
        return issued.key.get_secret_value()


@dataclass
class Endpoints:
    """The read side of the endpoint service: owner-checked, from a table in memory."""

    subs: list[Subscription] = field(default_factory=list)
    fail_with: Exception | None = None

    async def list_endpoints(self, caller: Caller) -> list[Subscription]:
        if self.fail_with is not None:
            raise self.fail_with
        return [s for s in self.subs if caller.sees(s.partner_id)]

    async def get(self, caller: Caller, endpoint_id: str) -> Subscription:
        for sub in self.subs:
            if sub.id == endpoint_id and caller.sees(sub.partner_id):
                return sub
        raise EndpointNotFound()


@dataclass
class Portal:
    url: str
    key_a: str
    key_b: str
    registry: Registry
    endpoints: Endpoints
    routes: GraphqlRoutes
    session: aiohttp.ClientSession
    a: Partner
    b: Partner
    subs: dict[str, Subscription]

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = None, raw: Any = None
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = {"Authorization": f"Bearer {key or self.key_a}"}
        body = raw if raw is not None else {"query": query, "variables": variables or {}}
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        headers["Content-Type"] = "application/json"
        async with self.session.post(self.url, data=data, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text), response.headers


def codes(document: Any) -> list[str]:
    return [e["extensions"]["code"] for e in document.get("errors") or []]


PortalFactory = Callable[..., Any]


@pytest.fixture
async def portal_factory(tmp_path: Path) -> AsyncIterator[PortalFactory]:
    made: list[tuple[TestServer, aiohttp.ClientSession, PortalStore, PortalQueries]] = []

    async def make(**limits: Any) -> Portal:
        store = PortalStore(f"sqlite:///{tmp_path / f'portal{len(made)}.db'}")
        store.migrate()
        registry = Registry()
        a = samples.partner("Reinsurer A", "reinsurer", reinsurer_code="re001")
        b = samples.partner("Broker B", "broker")
        key_a, key_b = registry.partner_with_key(a), registry.partner_with_key(b)
        sub_a, sub_b = samples.subscription(a.id), samples.subscription(b.id)
        changes = [
            decode(Source.PARTNERS, Coordinates("t.p", 0, i), p.id.encode(), p.to_record())
            for i, p in enumerate((a, b))
        ]
        changes += [
            decode(Source.SUBSCRIPTIONS, Coordinates("t.s", 0, i), s.id.encode(), s.to_record())
            for i, s in enumerate((sub_a, sub_b))
        ]
        for n in range(30):
            sub = (sub_a, sub_b)[n % 2]
            line = samples.delivery_line(sub.id, n, topic=LOG_T, status="failed" if n % 3 else "delivered")
            changes.append(decode(Source.DELIVERIES, Coordinates(LOG_T, 0, n), sub.id.encode(), line))
        changes.append(
            decode(
                Source.BORDEREAUX,
                Coordinates("t.b", 0, 0),
                samples.TREATY.encode(),
                samples.premium_bordereau(),
            )
        )
        store.apply(changes)
        queries = PortalQueries(store, threads=2)
        endpoints = Endpoints([sub_a, sub_b])
        settings = GraphqlSettings(**limits)
        services = PortalServices(
            queries=queries,
            partners=registry.table,
            keys=PartnerKeys(registry),
            endpoints=endpoints,
            max_page_size=settings.max_page_size,
        )
        routes = GraphqlRoutes(services, settings, operator_token=SecretStr(OPERATOR))
        app = web.Application()
        app.add_routes(routes.routes())
        server = TestServer(app)
        await server.start_server()
        session = aiohttp.ClientSession()
        made.append((server, session, store, queries))
        return Portal(
            str(server.make_url(GRAPHQL_PATH)),
            key_a,
            key_b,
            registry,
            endpoints,
            routes,
            session,
            a,
            b,
            {"a": sub_a, "b": sub_b},
        )

    yield make
    for server, session, store, queries in made:
        await session.close()
        await server.close()
        queries.close()
        store.close()


# ------------------------------------------------------------------------------------ auth


async def test_only_a_partner_key_opens_the_door(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    query = {"query": "{ me { id name kind grants } }"}
    async with portal.session.post(portal.url, json=query) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert codes(await response.json()) == ["UNAUTHENTICATED"]
    for offered, status, code in (
        (f"Bearer {OPERATOR}", 403, "FORBIDDEN"),
        ("Bearer pk_live_abcdefgh_" + "x" * 43, 401, "UNAUTHENTICATED"),
        ("Bearer nonsense", 401, "UNAUTHENTICATED"),
        ("Basic dXNlcjpwYXNz", 401, "UNAUTHENTICATED"),
    ):
        async with portal.session.post(
            portal.url, json=query, headers={"Authorization": offered}
        ) as response:
            document = await response.json()
            assert (response.status, codes(document)) == (status, [code]), offered
            assert OPERATOR not in json.dumps(document)
    status, document, _ = await portal.post(query["query"])
    assert status == 200
    assert document["data"]["me"] == {
        "id": portal.a.id,
        "name": "Reinsurer A",
        "kind": "REINSURER",
        "grants": [],
    }


async def test_a_revoked_key_is_refused_on_the_next_request(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    assert (await portal.post("{ me { id } }"))[0] == 200
    key_id = portal.key_a.split("_")[2]
    record = portal.registry.table.key(key_id)
    assert record is not None
    portal.registry.table.put(record.revoked(datetime.now(UTC)))
    status, document, _ = await portal.post("{ me { id } }")
    assert (status, codes(document)) == (401, ["UNAUTHENTICATED"])
    assert document["errors"][0]["extensions"]["reason"] == "key_revoked"


async def test_keys_that_cannot_be_checked_answer_503(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    portal.registry.running = False
    status, document, headers = await portal.post("{ me { id } }")
    assert (status, codes(document)) == (503, ["UNAVAILABLE"])
    assert headers["Retry-After"] == "5"


async def test_websocket_takes_the_key_in_connection_init_and_refuses_others_with_4403(
    portal_factory: PortalFactory,
) -> None:
    portal: Portal = await portal_factory()
    for payload in ({}, {"authorization": f"Bearer {OPERATOR}"}, {"authorization": "Bearer pk_live_bad"}):
        with pytest.raises(Closed) as closed:
            async with GraphqlWs.connect(portal.session, portal.url, None, payload=payload):
                pass
        assert closed.value.code == 4403, payload
    async with GraphqlWs.connect(portal.session, portal.url, portal.key_b) as ws:
        operation = await ws.subscribe("{ me { id } }")
        payloads, errors = await operation.end(timeout_s=10)
        assert errors == []
        assert payloads == [{"data": {"me": {"id": portal.b.id}}}]


async def test_only_graphql_transport_ws_is_spoken(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    async with portal.session.ws_connect(portal.url, protocols=("graphql-ws",)) as socket:
        message = await socket.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert socket.close_code == 4406


# ---------------------------------------------------------------------------------- limits


async def test_depth_tokens_aliases_and_cost_are_limited(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory(max_depth=2, max_tokens=60, max_aliases=2, max_cost=150)
    status, document, _ = await portal.post("{ deliveries(first: 1) { edges { node { id } } } }")
    assert (status, codes(document)) == (200, ["GRAPHQL_VALIDATION_FAILED"])
    assert "depth" in document["errors"][0]["message"]
    assert (await portal.post("{ me { id } }"))[1]["data"]["me"]["id"] == portal.a.id

    long_query = "{ me { " + " ".join(["id"] * 80) + " } }"
    status, document, _ = await portal.post(long_query)
    assert (status, codes(document)) == (200, ["GRAPHQL_PARSE_FAILED"])

    status, document, _ = await portal.post("{ a: me { id } b: me { id } c: me { id } }")
    assert (status, codes(document)) == (200, ["GRAPHQL_VALIDATION_FAILED"])

    status, document, _ = await portal.post("{ endpoints { id events url } }")  # 1 + 10 x 3 = 31
    assert codes(document) == []
    status, document, _ = await portal.post("{ deliveries(first: 50) { pageInfo { hasNextPage } } }")
    assert codes(document) == []  # 1 + 1 + 1
    status, document, _ = await portal.post("{ deliveries(first: 50) { edges { cursor } } }")  # 1 + 50 x 2
    assert codes(document) == []
    status, document, _ = await portal.post("{ deliveries(first: 80) { edges { cursor } } }")  # 161
    assert (status, codes(document)) == (200, ["GRAPHQL_VALIDATION_FAILED"])
    assert document["errors"][0]["extensions"]["cost"] == 161


def test_the_cost_estimate_follows_pages_and_lists() -> None:
    schema = build_schema()._schema

    def cost(query: str) -> int:
        found: list[int] = []
        rule = cost_rule(max_cost=10**9, max_page_size=100, list_size=10)

        class Spy(rule):  # type: ignore[misc, valid-type]
            def enter_operation_definition(self, node: Any, *_args: Any) -> None:
                found.append(cost_of(self.context, node, max_page_size=100, list_size=10))

        assert validate(schema, parse(query), [Spy]) == []
        return found[0]

    assert cost("{ deliveries(first: 100) { edges { node { id status } } } }") == 401
    assert cost("query($n: Int) { deliveries(first: $n) { edges { cursor } } }") == 1 + 100 * 2
    assert cost("{ deliveries { edges { cursor } } }") == 1 + 20 * 2  # the argument's default
    assert cost("{ endpoints { id health { attempts } } }") == 1 + 10 * 3
    # bordereaux 1, then per report: edges, node, deliveries 1 each and 10 x status
    assert cost("{ bordereaux(first: 5) { edges { node { deliveries { status } } } } }") == 1 + 5 * (
        1 + 1 + 1 + 10 * 1
    )
    fragment = 'query { ...F } fragment F on Query { message(webhookId: "x") { attempts { id } } }'
    assert cost(fragment) == 1 + 1 + 10


async def test_page_size_is_at_most_100_and_negative_sizes_are_refused(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    status, document, _ = await portal.post("{ deliveries(first: 101) { edges { cursor } } }")
    assert (status, codes(document)) == (200, ["BAD_USER_INPUT"])
    assert document["errors"][0]["extensions"]["max"] == 100
    by_variable = "query($n: Int) { deliveries(first: $n) { edges { cursor } } }"
    status, document, _ = await portal.post(by_variable, {"n": 101})
    assert (status, codes(document)) == (200, ["BAD_USER_INPUT"])
    assert "at most 100" in document["errors"][0]["message"]
    status, document, _ = await portal.post(by_variable, {"n": -1})
    assert codes(document) == ["BAD_USER_INPUT"]
    status, document, _ = await portal.post(by_variable, {"n": 100})
    assert codes(document) == []
    assert len(document["data"]["deliveries"]["edges"]) == 15


async def test_a_key_over_its_budget_gets_429_with_retry_after(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory(rate_per_s=0.01, rate_burst=2)
    assert (await portal.post("{ me { id } }"))[0] == 200
    assert (await portal.post("{ me { id } }"))[0] == 200
    status, document, headers = await portal.post("{ me { id } }")
    assert (status, codes(document)) == (429, ["RATE_LIMITED"])
    assert int(headers["Retry-After"]) >= 1
    assert document["errors"][0]["extensions"]["retryAfterS"] == int(headers["Retry-After"])
    # another key has a budget of its own; over WebSocket each operation takes from it too
    assert (await portal.post("{ me { id } }", key=portal.key_b))[0] == 200
    async with GraphqlWs.connect(portal.session, portal.url, portal.key_b) as ws:
        refused = await ws.subscribe("{ me { id } }")
        message = await refused.receive(timeout_s=10)
        assert message["type"] == "error"
        assert [e["extensions"]["code"] for e in message["payload"]] == ["RATE_LIMITED"]


def test_the_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = KeyRateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take("k").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("k")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("k").allowed
    assert not limiter.take("k").allowed
    assert limiter.take("other").allowed


async def test_introspection_is_off_unless_switched_on(portal_factory: PortalFactory) -> None:
    closed: Portal = await portal_factory()
    status, document, _ = await closed.post("{ __schema { queryType { name } } }")
    assert status == 200
    assert set(codes(document)) == {"GRAPHQL_VALIDATION_FAILED"}
    status, document, _ = await closed.post('{ __type(name: "Query") { name } }')
    assert status == 200
    assert set(codes(document)) == {"GRAPHQL_VALIDATION_FAILED"}
    opened: Portal = await portal_factory(introspection=True)
    status, document, _ = await opened.post("{ __schema { queryType { name } } }")
    assert document == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


async def test_batches_subscriptions_over_http_and_mutations_over_get_are_400(
    portal_factory: PortalFactory,
) -> None:
    portal: Portal = await portal_factory()
    status, document, _ = await portal.post("", raw=[{"query": "{ me { id } }"}, {"query": "{ me { id } }"}])
    assert status == 400
    assert codes(document)
    status, document, _ = await portal.post("subscription { feed { __typename } }")
    assert status == 400
    assert codes(document)
    headers = {"Authorization": f"Bearer {portal.key_a}"}
    mutation = 'mutation { enableEndpoint(id: "ep_x") { id } }'
    async with portal.session.get(portal.url, params={"query": mutation}, headers=headers) as response:
        assert response.status == 400
        assert codes(await response.json())
    async with portal.session.get(portal.url, params={"query": "{ me { id } }"}, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["data"]["me"]["id"] == portal.a.id


# ---------------------------------------------------------------------------------- errors


async def test_unparsable_requests_are_400_with_a_code_never_500(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    for raw in ("{not json", "[" * 100_000 + "]" * 100_000, json.dumps({"query": 12}), json.dumps({"x": 1})):
        status, document, _ = await portal.post("", raw=raw)
        assert status == 400, raw[:20]
        assert codes(document), raw[:20]
    deep = "{ me " + "{ id " * 5_000 + "}" * 5_001
    status, document, _ = await portal.post(deep)
    assert status in (200, 400)
    assert codes(document)
    assert codes(document)[0].startswith("GRAPHQL_")
    status, document, _ = await portal.post("{ me { id ")
    assert (status, codes(document)) == (200, ["GRAPHQL_PARSE_FAILED"])
    status, document, _ = await portal.post("{ nothing }")
    assert (status, codes(document)) == (200, ["GRAPHQL_VALIDATION_FAILED"])
    assert "Did you mean" not in json.dumps(document)  # no field names offered without introspection
    for body in (
        {"query": "{ me { id } }", "variables": [1]},
        {"query": None},
        {"query": "{ me { id } }", "operationName": 5},
    ):
        status, document, _ = await portal.post("", raw=json.dumps(body))
        assert (status, codes(document)) == (400, ["GRAPHQL_PARSE_FAILED"]), body
    by_status = "query($f: DeliveryFilter) { deliveries(filter: $f) { edges { cursor } } }"
    status, document, _ = await portal.post(by_status, {"f": {"status": "NOPE"}})
    assert (status, codes(document)) == (200, ["BAD_USER_INPUT"])
    headers = {"Authorization": f"Bearer {portal.key_a}", "Accept": "text/html"}
    async with portal.session.get(portal.url, headers=headers) as response:
        assert response.status == 400
        assert codes(await response.json()) == ["GRAPHQL_PARSE_FAILED"]


async def test_an_unexpected_error_is_logged_and_answered_internal_without_internals(
    portal_factory: PortalFactory, caplog: pytest.LogCaptureFixture
) -> None:
    portal: Portal = await portal_factory()
    portal.endpoints.fail_with = RuntimeError("SELECT secret FROM keys WHERE id = 'whsec_leak'")
    with caplog.at_level(logging.ERROR, logger="processors.portal.graphql.errors"):
        status, document, _ = await portal.post("{ endpoints { id } me { id } }")
    assert status == 200
    assert document["data"] is None or document["data"].get("endpoints") is None
    assert codes(document) == ["INTERNAL"]
    assert document["errors"][0]["message"] == INTERNAL_MESSAGE
    text = json.dumps(document)
    for leak in ("SELECT", "whsec_leak", "RuntimeError", "Traceback", "processors."):
        assert leak not in text
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert logged
    assert "endpoints" in logged[0].getMessage()
    assert "RuntimeError" in logged[0].getMessage()
    for record in logged:  # where it happened, never what the message said
        assert "whsec_leak" not in record.getMessage()
        assert record.exc_info is None


def _replace_with_a_directory(path: Path) -> None:
    """A directory where the database file was: every connection fails."""
    for sibling in path.parent.glob(path.name + "*"):
        sibling.unlink()
    path.mkdir()


async def test_a_store_that_does_not_answer_is_unavailable(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    portal.routes.services.queries.store.engine.dispose()
    path = portal.routes.services.queries.store.url.database
    assert path is not None
    await asyncio.to_thread(_replace_with_a_directory, Path(path))
    status, document, _ = await portal.post("{ deliveries { edges { cursor } } }")
    assert (status, codes(document)) == (200, ["UNAVAILABLE"])
    assert "sqlite" not in json.dumps(document).lower()


async def test_a_garbled_or_foreign_cursor_is_bad_user_input(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    query = "query($after: String) { deliveries(first: 2, after: $after) { edges { cursor } } }"
    _, document, _ = await portal.post(query, key=portal.key_b)
    cursor_of_b = document["data"]["deliveries"]["edges"][-1]["cursor"]
    for after in ("garbage", cursor_of_b, cursor_of_b[:-2] + "AA", "A" * 2_000):
        status, document, _ = await portal.post(query, {"after": after})
        assert (status, codes(document)) == (200, ["BAD_USER_INPUT"]), after[:20]
        assert document["data"] is None


async def test_times_without_a_zone_are_refused(portal_factory: PortalFactory) -> None:
    portal: Portal = await portal_factory()
    query = "query($s: DateTime) { deliveries(filter: {since: $s}) { edges { cursor } } }"
    status, document, _ = await portal.post(query, {"s": "2025-03-01T12:00:00"})
    assert (status, codes(document)) == (200, ["BAD_USER_INPUT"])
    assert "offset" in document["errors"][0]["message"]
    status, document, _ = await portal.post(query, {"s": "2025-03-01T12:00:10+01:00"})
    assert codes(document) == []
    literal = '{ deliveries(filter: {since: "2025-03-01"}) { edges { cursor } } }'
    assert codes((await portal.post(literal))[1]) in (["GRAPHQL_VALIDATION_FAILED"], ["BAD_USER_INPUT"])


# ---------------------------------------------------------------------------------- scalars


def test_decimals_are_exact_and_times_are_utc() -> None:
    assert encode_json({"a": Decimal("1234.50"), "b": [Decimal("1E-7")], "c": 1.5}) == (
        '{"a":1234.50,"b":[0.0000001],"c":1.5}'
    )
    assert encode_json({"x": "é"}) == '{"x":"é"}'
    # beyond 64 bits (orjson's limit), as an error may quote a caller's number; a Decimal beside it
    assert encode_json({"got": 2**64, "a": Decimal("0.10")}) == f'{{"got":{2**64},"a":0.10}}'
    with pytest.raises((TypeError, ValueError)):
        encode_json({"a": Decimal("NaN")})
    with pytest.raises(TypeError):
        encode_json({"at": datetime(2026, 1, 1, tzinfo=UTC)})  # times are written by their scalar
    assert serialize_decimal(Decimal("700.10")) == "700.10"
    assert parse_decimal("1234.50") == Decimal("1234.50")
    for bad in (1.5, True, "abc", "NaN", None):
        with pytest.raises(ValueError, match="Decimal"):
            parse_decimal(bad)
    assert parse_datetime("2025-03-01T13:00:00+01:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_datetime("2025-03-01T12:00:00Z").utcoffset() == timedelta(0)
    for bad in ("2025-03-01T12:00:00", "yesterday", 12):
        with pytest.raises(ValueError, match="DateTime"):
            parse_datetime(bad)
