"""The partner portal's delivery-log query through GraphQL against the same query on the store.

100,000 delivery-log lines in the portal's SQLite query store, over ``--partners`` partners
(default 5) with 4 endpoints each; 20 concurrent clients (``--concurrency``) in both stages.
Stages, run interleaved after a warm-up (medians of ``--rounds`` runs each; one unit is one
request for one page):

* ``store``: 20 asyncio tasks in this process calling
  :meth:`processors.portal.queries.PortalQueries.deliveries` — the call the GraphQL resolver
  makes, on the portal's own thread offload (``query_threads`` threads, 8 by default) — for the
  first page of 20 lines;
* ``graphql``: 20 aiohttp clients POSTing the portal page's own delivery-log query
  (``processors/portal/static/queries.js``: ``deliveries(first: 20, filter: $filter)`` with
  every field of a line, its cursor and ``pageInfo``) with a partner key to ``/graphql`` of a
  real API server (``processors run webhooks --api``) reading the same SQLite file;
* ``graphql-floor``: the same clients and requests to the stripped prototype of that path
  (:func:`floor_app`, in its own process like the API server): a bare aiohttp route that
  looks the key's partner up in a dict and executes the same document with plain
  graphql-core on the published contract (``docs/portal-schema.graphql`` through
  ``graphql.build_schema``; parsed and validated once), ``deliveries`` answered by the same
  :meth:`~processors.portal.queries.PortalQueries.deliveries` call on the same threads with
  cursors signed by the same codec, the answer written by the portal's JSON encoder.  It keeps
  the guarantees of the path (the partner's own lines, signed cursors, UTC times, exact JSON)
  and does nothing else: no key check against the registry, rate limit, limits, error coding
  or extensions, and none of the API server's other work (the webhooks app, the projector).
  It is what GraphQL costs here when graphql-core completes every field the general way;
  ``graphql/graphql-floor`` is the product against it (target ≥ 0.9).  The product completes
  plain values by plan (:mod:`processors.portal.graphql.plans`), which the floor does not: a
  ratio above 1 is what the plans save, net of everything the floor leaves out.

Request ``i`` of every stage is the same: partner ``i mod 5``, and in turn no filter, one of
the partner's endpoints, status ``FAILED``, event type ``policy.issued``, or the last day
(``since``).  Before measuring, every combination is asked of every side and must return the
same lines in the same order; the floor's answer must be the API server's, byte for byte (both
sign cursors with the same key).

**Why the API server runs in its own process.**  That is how it runs in production: its clients
are elsewhere.  In one process the 20 clients' own work (building requests, reading answers)
would share the server's event loop and interpreter lock and be charged to GraphQL; in its
own process the server has what the store stage has — one interpreter, the same query threads,
the same file — and the clients run beside it (the machine has 2 cores: on a bigger one
they would get in the server's way even less).  The ``graphql`` and ``graphql-floor`` stages'
CPU per request is their server process's (read from ``/proc``); what the clients cost is
reported as a figure.  The store stage's CPU is this process's, which does nothing else.

**The store.**  Partners and their keys are made through the operator REST API, endpoints
with each partner's key (the server's projector puts them in the store); the 100,000 lines are
the webhooks app's own delivery-log records (:func:`processors.webhooks.delivery.log_record`)
read by the projector's own decoder (:func:`processors.portal.records.decode`) and inserted in
bulk, with their owner, before the server answers its first query.  Their topic stays empty
(no Kafka needed to fill the store; the server's projector has nothing of them to add).

Latency is each request's, from sending to the last byte read (``graphql``) or from the call to
its return (``store``): p50 and p99 of every measured run of a stage (the warm-up not counted)
are figures of the report.  Targets: graphql/store throughput ≥ 0.5; graphql/graphql-floor
≥ 0.9 (the product within 10% of the floor).  Usage::

    python bench/bench_portal.py [--deliveries 100000] [--requests 3000] [--concurrency 20] [--json F]
        [--profile store|graphql|graphql-floor]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import graphql
from aiohttp import web
from sqlalchemy import insert

from bench.common import broker, cpu_seconds, isolated_catalogue, wait_http
from bench.harness import PROFILED_PROCESS, Comparison, Report, Run, Stopwatch, interleaved, json_argument
from processors.portal.graphql.scalars import parse_datetime, serialize_datetime
from processors.portal.graphql.view import encode_json
from processors.portal.queries import (
    MAX_RESPONSE_BODY_CHARS,
    CursorCodec,
    DeliveryFilters,
    DeliveryPosition,
    PortalQueries,
)
from processors.portal.records import Coordinates, Source, Upsert, decode
from processors.portal.schema import DELIVERIES
from processors.portal.store import PortalStore
from processors.topics.catalogue import Catalogue
from processors.webhooks.delivery import DispatchJob, log_record
from processors_dev.devbroker import BrokerInfo
from processors_dev.samples import MIXED_TYPES
from tests.integration.helpers import start_processor

TOKEN = "bench-portal-operator-t0ken"
ENDPOINTS_PER_PARTNER = 4
PAGE = 20
WINDOW = timedelta(days=7)
"""The lines' attempt times spread over the week before the bench starts."""

QUERY = """query Deliveries($after: String, $filter: DeliveryFilter) {
  deliveries(first: 20, after: $after, filter: $filter) {
    edges {
      cursor
      node {
        id webhookId endpointId eventId eventType attempt status httpStatus latencyMs
        error responseBody attemptedAt urlHost nextStep
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""
"""The portal page's delivery-log query (``processors/portal/static/queries.js``)."""

_STATUSES = (("delivered", 85), ("failed", 10), ("refused", 2), ("skipped", 2), ("disabled", 1))
_FILTERS = 5


@dataclass(frozen=True)
class Member:
    id: str
    key: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class Ask:
    """One request: whose log, with which filter (the store's and GraphQL's forms)."""

    member: Member
    filters: DeliveryFilters
    variables: dict[str, Any]


def workload(members: Sequence[Member], since: datetime) -> list[Ask]:
    """Every combination of partner, filter and endpoint, in the order requests take them."""
    asks: list[Ask] = []
    combinations = len(members) * _FILTERS * ENDPOINTS_PER_PARTNER
    for i in range(combinations):
        member = members[i % len(members)]
        kind = (i // len(members)) % _FILTERS
        endpoint = member.endpoints[(i // (len(members) * _FILTERS)) % ENDPOINTS_PER_PARTNER]
        if kind == 0:
            filters, graphql = DeliveryFilters(), None
        elif kind == 1:
            filters, graphql = DeliveryFilters(endpoint_id=endpoint), {"endpointId": endpoint}
        elif kind == 2:
            filters, graphql = DeliveryFilters(status="failed"), {"status": "FAILED"}
        elif kind == 3:
            filters, graphql = DeliveryFilters(event_type="policy.issued"), {"eventType": "policy.issued"}
        else:
            filters, graphql = DeliveryFilters(since=since), {"since": since.isoformat()}
        asks.append(Ask(member, filters, {"filter": graphql}))
    return asks


# -- the API server (its own process) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerProcess:
    """A bench server in its own process: its pid, CPU time so far, and a bounded stop."""

    proc: subprocess.Popen[bytes]
    log: Path
    name: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        found = cpu_seconds(self.pid)
        if found is None:
            raise RuntimeError(f"the {self.name} stopped; its log: {self.log}")
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Api(_ServerProcess):
    """``processors run webhooks --api`` on the isolated topics, the portal on ``database``."""

    def __init__(
        self,
        info: BrokerInfo,
        topics_file: Path,
        prefix: str,
        database: str,
        logs: Path,
        *,
        query_threads: int,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": info.bootstrap_servers,
            "PROCESSORS_TOPICS_FILE": str(topics_file),
            "PROCESSORS_GROUP_PREFIX": prefix,
            "PROCESSORS_LOG_LEVEL": "WARNING",
            "PROCESSORS_API__AUTH_TOKEN": TOKEN,
            "PROCESSORS_WEBHOOKS__ALLOW": '["127.0.0.0/8"]',
            "PROCESSORS_WEBHOOKS__EPHEMERAL_KEY": "true",
            "PROCESSORS_PORTAL__DATABASE_URL": database,
            "PROCESSORS_PORTAL__GRAPHQL__QUERY_THREADS": str(query_threads),
            # the 20 clients share 5 keys: no per-key budget may be what limits the rate
            "PROCESSORS_PORTAL__GRAPHQL__RATE_PER_S": "100000",
            "PROCESSORS_PORTAL__GRAPHQL__RATE_BURST": "1000000",
            "PROCESSORS_PORTAL__GRAPHQL__CURSOR_SECRET": CURSOR_SECRET,
        }
        overrides = info.client_overrides()
        if overrides:
            env["PROCESSORS_CLIENT_OVERRIDES"] = json.dumps(
                {f"consumer.{k}": v for k, v in overrides.items()}
            )
        self.proc = start_processor(
            env, "run", "webhooks", "--api", "--api-port", str(self.port), log_path=logs / "api.log"
        )
        self.log = logs / "api.log"
        self.name = "API server"


# -- the floor: the same document on plain graphql-core behind a bare route (its own process) ---

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "portal-schema.graphql"
CURSOR_SECRET = "bench-portal-cursor-secret"
"""Both servers sign cursors with this key, so their answers can be compared byte for byte."""


def floor_schema(queries: PortalQueries) -> graphql.GraphQLSchema:
    """The published contract built by graphql-core, ``Query.deliveries`` answered from
    ``queries`` (the context is the caller's partner id); every other field unresolved."""
    schema = graphql.build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    moment = schema.type_map["DateTime"]
    status = schema.type_map["DeliveryStatus"]
    query = schema.query_type
    if not isinstance(moment, graphql.GraphQLScalarType) or not isinstance(status, graphql.GraphQLEnumType):
        raise RuntimeError(f"{SCHEMA_FILE} is not the portal's schema")
    if query is None:
        raise RuntimeError(f"{SCHEMA_FILE} has no Query type")
    moment.coerce_output_value = serialize_datetime
    moment.coerce_input_value = parse_datetime
    for name, value in status.values.items():
        value.value = name.lower()  # the store's spelling
    codec = queries.codec

    async def deliveries(
        _root: None,
        info: graphql.GraphQLResolveInfo[Any],
        first: int,
        after: str | None = None,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        partner_id: str = info.context
        position = codec.read_delivery(partner_id, after) if after is not None else None
        given = filter or {}
        filters = DeliveryFilters(
            endpoint_id=given.get("endpointId"),
            event_type=given.get("eventType"),
            status=given.get("status"),
            since=given.get("since"),
            until=given.get("until"),
        )
        page = await queries.deliveries(partner_id, first=first, after=position, filters=filters)
        edges = [
            {"cursor": codec.delivery(partner_id, DeliveryPosition.of(row)), "node": _floor_node(row)}
            for row in page.rows
        ]
        end = edges[-1]["cursor"] if edges else None
        return {"edges": edges, "pageInfo": {"hasNextPage": page.has_next, "endCursor": end}}

    query.fields["deliveries"].resolve = deliveries
    return schema


def _floor_node(row: dict[str, Any]) -> dict[str, Any]:
    body = row["response_excerpt"]
    if body is not None and len(body) > MAX_RESPONSE_BODY_CHARS:
        body = body[: MAX_RESPONSE_BODY_CHARS - 1] + "…"
    return {
        "id": f"{row['log_partition']}:{row['log_offset']}",
        "webhookId": row["webhook_id"],
        "endpointId": row["subscription_id"],
        "eventId": row["event_id"],
        "eventType": row["event_type"],
        "attempt": row["attempt"],
        "status": row["status"],
        "httpStatus": row["http_status"],
        "latencyMs": row["latency_ms"],
        "error": row["error"],
        "responseBody": body,
        "attemptedAt": row["attempted_at"],
        "urlHost": row["url_host"],
        "nextStep": row["next_step"],
    }


def floor_app(queries: PortalQueries, partners: dict[str, str]) -> web.Application:
    """``POST /graphql``: ``partners`` maps ``Authorization`` to the partner id; a document is
    parsed and validated once, then executed with plain graphql-core; the answer is written
    with the portal's JSON encoder.  No rate limit, no limits, no error coding, no extensions."""
    schema = floor_schema(queries)
    documents: dict[str, graphql.DocumentNode] = {}

    async def handle(request: web.Request) -> web.Response:
        partner_id = partners.get(request.headers.get("Authorization", ""))
        if partner_id is None:
            return web.Response(status=401)
        body = json.loads(await request.read())
        source = body["query"]
        document = documents.get(source)
        if document is None:
            document = graphql.parse(source)
            errors = graphql.validate(schema, document)
            if errors:
                refused = {"data": None, "errors": [e.formatted for e in errors]}
                return web.Response(status=400, text=encode_json(refused), content_type="application/json")
            documents[source] = document
        result = graphql.execute(
            schema,
            document,
            context_value=partner_id,
            variable_values=body.get("variables"),
            operation_name=body.get("operationName"),
        )
        if isinstance(result, Awaitable):
            result = await result
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [e.formatted for e in result.errors]
        return web.Response(text=encode_json(answer), content_type="application/json")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/graphql", handle)
    app.router.add_get("/healthz", healthz)
    return app


async def serve_floor(config: Path) -> None:
    """The floor server's process: ``config`` names the database, port, threads and keys."""
    settings = json.loads(await asyncio.to_thread(config.read_text, encoding="utf-8"))
    store = PortalStore(settings["database"])
    queries = PortalQueries(
        store, threads=settings["query_threads"], codec=CursorCodec(CURSOR_SECRET.encode("utf-8"))
    )
    runner = web.AppRunner(floor_app(queries, settings["partners"]), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings["port"]).start()
    try:
        await asyncio.Event().wait()  # until terminated
    finally:
        await runner.cleanup()
        queries.close()
        store.close()


class Floor(_ServerProcess):
    """:func:`serve_floor` in its own process (``--serve-floor CONFIG``), as the API server is."""

    def __init__(
        self, database: str, members: Sequence[Member], directory: Path, *, query_threads: int
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "floor.json"
        config.write_text(
            json.dumps(
                {
                    "database": database,
                    "port": self.port,
                    "query_threads": query_threads,
                    "partners": {f"Bearer {m.key}": m.id for m in members},
                }
            ),
            encoding="utf-8",
        )
        self.log = directory / "floor.log"
        self.name = "floor server"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # fixed command
                [sys.executable, os.path.abspath(__file__), "--serve-floor", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )


async def rest(session: aiohttp.ClientSession, api: Api, path: str, body: Any, *, token: str) -> Any:
    async with session.post(api.url + path, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        answer = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST {path}: {r.status} {answer}")
        return answer


async def members(session: aiohttp.ClientSession, api: Api, count: int) -> list[Member]:
    made: list[Member] = []
    for p in range(count):
        partner = await rest(
            session, api, "/api/v1/partners", {"name": f"Bench Broker {p}", "kind": "broker"}, token=TOKEN
        )
        key = await rest(
            session, api, f"/api/v1/partners/{partner['id']}/keys", {"name": "bench"}, token=TOKEN
        )
        endpoints = []
        for e in range(ENDPOINTS_PER_PARTNER):
            # port 9 (discard): nothing is ever delivered there, no event is published
            body = {"url": f"http://127.0.0.1:9/p{p}/e{e}", "events": ["*"]}
            created = await rest(session, api, "/api/v1/webhooks", body, token=key["key"])
            endpoints.append(str(created["id"]))
        made.append(Member(partner["id"], key["key"], tuple(endpoints)))
    return made


# -- the store --------------------------------------------------------------------------------


def _lines(
    topic: str, partitions: int, owners: Sequence[Member], count: int, end: datetime
) -> Iterator[dict[str, Any]]:
    """``count`` delivery-log rows as the projector makes them, with their owner."""
    rng = random.Random(20_250_301)
    statuses = [s for s, weight in _STATUSES for _ in range(weight)]
    step = WINDOW / count
    for n in range(count):
        member = owners[n % len(owners)]
        sub_id = member.endpoints[rng.randrange(ENDPOINTS_PER_PARTNER)]
        status = rng.choice(statuses)
        failed = status == "failed"
        job = DispatchJob(
            subscription_id=sub_id,
            webhook_id=f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex}",
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event_type=rng.choice(MIXED_TYPES),
            subject=f"POL-{rng.randrange(100_000):06d}",
            ordered=False,
            body=b"{}",
        )
        record = log_record(
            topic,
            job,
            status=status,  # type: ignore[arg-type]
            attempt=0 if status in ("skipped", "disabled") else 1 + rng.randrange(3),
            url_host="127.0.0.1:9",
            job_coordinates=("integrations.webhooks.dispatch", n % partitions, n // partitions),
            http_status=(503 if failed else 200) if status in ("delivered", "failed") else None,
            latency_ms=rng.uniform(5, 400),
            error="HTTP 503 from the endpoint" if failed else None,
            response_excerpt=("upstream unavailable; retry later " * 8)[:256] if failed else "ok",
            next_step="retry" if failed else None,
            attempted_at=end - WINDOW + step * n + timedelta(microseconds=rng.randrange(1000)),
        )
        change = decode(
            Source.DELIVERIES, Coordinates(topic, n % partitions, n // partitions), record.key, record.value
        )
        if not isinstance(change.action, Upsert):
            raise RuntimeError(f"line {n} was not read as a delivery: {change.action}")
        yield {**change.action.row, "partner_id": member.id}


def fill(
    store: PortalStore, catalogue: Catalogue, prefix: str, owners: Sequence[Member], count: int
) -> datetime:
    """The store with ``count`` lines (bulk inserts of 5,000); the end of their window."""
    topic = f"{prefix}integrations.webhook.deliveries"
    partitions = catalogue.topic(topic).partitions
    end = datetime.now(UTC).replace(microsecond=0)
    batch: list[dict[str, Any]] = []
    store.migrate()  # done by the server already; a no-op then
    with store.engine.connect() as conn:
        for row in _lines(topic, partitions, owners, count, end):
            batch.append(row)
            if len(batch) == 5_000:
                with conn.begin():
                    conn.execute(insert(DELIVERIES), batch)
                batch = []
        if batch:
            with conn.begin():
                conn.execute(insert(DELIVERIES), batch)
    return end


# -- the stages -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Latencies:
    """Per stage, the request latencies (ms) of each run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[list[float]]] = {}

    def record(self, stage: str, values: list[float]) -> None:
        self.runs.setdefault(stage, []).append(values)

    def measured(self, stage: str, *, warmup: bool) -> list[float]:
        runs = self.runs.get(stage, [])[1 if warmup else 0 :]
        return sorted(v for run in runs for v in run)


async def store_run(
    queries: PortalQueries, asks: Sequence[Ask], *, requests: int, concurrency: int, latencies: Latencies
) -> Run:
    taken: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            ask = asks[i % len(asks)]
            t0 = time.perf_counter()
            page = await queries.deliveries(ask.member.id, first=PAGE, filters=ask.filters)
            taken.append((time.perf_counter() - t0) * 1000)
            if len(page.rows) != PAGE:
                raise RuntimeError(f"store: {len(page.rows)} lines for {ask.filters}")

    watch = Stopwatch()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run = watch.stop(requests)
    latencies.record("store", taken)
    return run


class Server(Protocol):
    """A server in its own process: where it answers, and its CPU time so far."""

    url: str

    def cpu_s(self) -> float: ...


@dataclass
class GraphqlClients:
    stage: str
    server: Server
    session: aiohttp.ClientSession
    bodies: list[tuple[bytes, dict[str, str]]]
    """Per ask, the request body and headers (made before any clock starts)."""
    client_cpu_us: list[float] = field(default_factory=list)

    async def answer(self, index: int) -> bytes:
        body, headers = self.bodies[index]
        async with self.session.post(self.server.url + "/graphql", data=body, headers=headers) as r:
            answer = await r.read()
        if r.status != 200 or b'"errors":' in answer:
            raise RuntimeError(f"{self.stage}: {r.status} {answer[:300]!r}")
        return answer

    async def run(self, *, requests: int, concurrency: int, latencies: Latencies) -> Run:
        url = self.server.url + "/graphql"
        taken: list[float] = []
        counter = iter(range(requests))

        async def client() -> None:
            for i in counter:
                body, headers = self.bodies[i % len(self.bodies)]
                t0 = time.perf_counter()
                async with self.session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                taken.append((time.perf_counter() - t0) * 1000)
                if response.status != 200 or b'"errors":' in answer:
                    raise RuntimeError(f"{self.stage}: {response.status} {answer[:300]!r}")

        server_cpu = self.server.cpu_s()
        watch = Stopwatch()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        mine = watch.stop(requests)
        server = self.server.cpu_s() - server_cpu
        latencies.record(self.stage, taken)
        self.client_cpu_us.append(mine.cpu_us)
        return Run(requests, mine.wall_s, server)


async def same_answers(
    product: GraphqlClients, floor: GraphqlClients, queries: PortalQueries, asks: Sequence[Ask]
) -> None:
    """Every ask answers the same lines, in the same order, on every side; the floor's answer
    is the product's, byte for byte."""
    for index, ask in enumerate(asks):
        answer = await product.answer(index)
        through_graphql = [edge["node"]["id"] for edge in json.loads(answer)["data"]["deliveries"]["edges"]]
        page = await queries.deliveries(ask.member.id, first=PAGE, filters=ask.filters)
        direct = [f"{row['log_partition']}:{row['log_offset']}" for row in page.rows]
        if through_graphql != direct or len(direct) != PAGE:
            raise RuntimeError(f"the two sides differ for {ask.variables}: {through_graphql} / {direct}")
        bare = await floor.answer(index)
        if bare != answer:
            raise RuntimeError(
                f"the floor answers {ask.variables} otherwise: {bare[:300]!r} / {answer[:300]!r}"
            )


async def settled(server: Server, *, idle_cores: float = 0.05, timeout_s: float = 120) -> None:
    """Until the server's CPU use falls below ``idle_cores`` over half a second (its start-up,
    and its feeds reading what the set-up wrote, are over)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before, t0 = server.cpu_s(), time.perf_counter()
        await asyncio.sleep(0.5)  # a window to measure the server's CPU over
        if (server.cpu_s() - before) / (time.perf_counter() - t0) < idle_cores:
            return
    raise RuntimeError(f"{server.url} did not settle within {timeout_s:g} s")


# -- main -------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=100_000, help="delivery-log lines in the store")
    parser.add_argument("--partners", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3_000, help="requests per run of each stage")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent clients in both stages")
    parser.add_argument(
        "--query-threads", type=int, default=8, help="the portal's query_threads (every side)"
    )
    parser.add_argument("--serve-floor", type=Path, metavar="CONFIG", help=argparse.SUPPRESS)
    json_argument(parser)
    args = parser.parse_args()
    if args.serve_floor is not None:
        await serve_floor(args.serve_floor)
        return

    latencies = Latencies()
    with broker() as info, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        catalogue, topics_file, prefix = isolated_catalogue(info.bootstrap_servers, directory)
        database = f"sqlite:///{directory / 'portal.db'}"
        api = Api(info, topics_file, prefix, database, directory, query_threads=args.query_threads)
        PROFILED_PROCESS["graphql"] = api.pid  # --profile graphql records the server, not the clients
        floor: Floor | None = None
        store = PortalStore(database)
        queries = PortalQueries(store, threads=args.query_threads)
        try:
            await wait_http(api.url + "/healthz", timeout_s=120)
            connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                owners = await members(session, api, args.partners)
                t0 = time.perf_counter()
                end = await asyncio.to_thread(fill, store, catalogue, prefix, owners, args.deliveries)
                fill_s = time.perf_counter() - t0
                print(f"  {args.deliveries:,} delivery-log lines in the store in {fill_s:.1f} s")
                floor = Floor(database, owners, directory, query_threads=args.query_threads)
                PROFILED_PROCESS["graphql-floor"] = floor.pid
                await wait_http(floor.url + "/healthz", timeout_s=60)
                asks = workload(owners, since=end - timedelta(days=1))
                bodies = [
                    (
                        json.dumps({"query": QUERY, "variables": ask.variables}).encode(),
                        {"Authorization": f"Bearer {ask.member.key}", "Content-Type": "application/json"},
                    )
                    for ask in asks
                ]
                product = GraphqlClients("graphql", api, session, bodies)
                bare = GraphqlClients("graphql-floor", floor, session, bodies)
                await same_answers(product, bare, queries, asks)
                await settled(api)
                await settled(floor)
                size = {"requests": args.requests, "concurrency": args.concurrency}
                stages: dict[str, Callable[[], Awaitable[Run]]] = {
                    "store": lambda: store_run(queries, asks, latencies=latencies, **size),
                    "graphql": lambda: product.run(latencies=latencies, **size),
                    "graphql-floor": lambda: bare.run(latencies=latencies, **size),
                }
                runs = await interleaved(stages, rounds=args.rounds)
        finally:
            await asyncio.to_thread(queries.close)
            store.close()
            if floor is not None:
                floor.stop()
            api.stop()

    figures: dict[str, float] = {}
    for stage in ("store", "graphql", "graphql-floor"):
        measured = latencies.measured(stage, warmup=True)
        figures[f"{stage}_p50_ms"] = round(percentile(measured, 0.50), 2)
        figures[f"{stage}_p99_ms"] = round(percentile(measured, 0.99), 2)
    for clients in (product, bare):
        spent = sorted(clients.client_cpu_us[1:])
        figures[f"{clients.stage}_client_cpu_us"] = round(spent[len(spent) // 2], 1)
    figures["deliveries"] = args.deliveries
    Report(
        bench="portal",
        units={"store": "request", "graphql": "request", "graphql-floor": "request"},
        runs=runs,
        comparisons=[
            # CPU is read in two processes (a server's, this one's): compared per stage, not as a ratio
            Comparison("graphql/store", "graphql", "store", target=0.5, cpu=False),
            Comparison("graphql-floor/store", "graphql-floor", "store", cpu=False),
            # both are a server process's CPU per request: comparable
            Comparison("graphql/graphql-floor", "graphql", "graphql-floor", target=0.9),
        ],
        figures=figures,
        notes=[
            f"{args.deliveries:,} delivery-log lines over {args.partners} partners × {ENDPOINTS_PER_PARTNER} "
            f"endpoints in one SQLite file; {args.concurrency} concurrent clients, first page of {PAGE} "
            f"lines, the filters in turn: none, endpoint, status, event type, the last day",
            "graphql: the portal page's query to `processors run webhooks --api` in its own process; "
            "its CPU/request is that process's (graphql_client_cpu_us: the clients', in this process); "
            f"store: PortalQueries.deliveries on {args.query_threads} threads in this process",
            "graphql-floor: the same request to a bare aiohttp route in its own process running the "
            "document on plain graphql-core (schema built from docs/portal-schema.graphql, the same "
            "PortalQueries call on the same threads, cursors signed, the key's partner looked up in a "
            "dict); no rate limit, limits, error coding or extensions; its answers are the product's, "
            "byte for byte",
            "latency: per request, p50/p99 of every measured run (warm-up not counted)",
        ],
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
