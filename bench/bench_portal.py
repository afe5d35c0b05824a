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
  real API server (``processors run webhooks --api``) reading the same SQLite file.

Request ``i`` of both stages is the same: partner ``i mod 5``, and in turn no filter, one of
the partner's endpoints, status ``FAILED``, event type ``policy.issued``, or the last day
(``since``).  Before measuring, every combination is asked of both sides and must return the
same lines in the same order.

**Why the API server runs in its own process.**  That is how it runs in production: its clients
are elsewhere.  In one process the 20 clients' own work (building requests, reading answers)
would share the server's event loop and interpreter lock and be charged to GraphQL; in its
own process the server has what the store stage has — one interpreter, the same query threads,
the same file — and the clients run beside it (the machine has 2 cores: on a bigger one
they would get in the server's way even less).  The ``graphql`` stage's CPU per request is the
server process's (read from ``/proc``); what the clients cost is reported as a figure.  The
store stage's CPU is this process's, which does nothing else.

**The store.**  Partners and their keys are made through the operator REST API, endpoints
with each partner's key (the server's projector puts them in the store); the 100,000 lines are
the webhooks app's own delivery-log records (:func:`processors.webhooks.delivery.log_record`)
read by the projector's own decoder (:func:`processors.portal.records.decode`) and inserted in
bulk, with their owner, before the server answers its first query.  Their topic stays empty
(no Kafka needed to fill the store; the server's projector has nothing of them to add).

Latency is each request's, from sending to the last byte read (``graphql``) or from the call to
its return (``store``): p50 and p99 of every measured run of a stage (the warm-up not counted)
are figures of the report.  Target: graphql/store throughput ≥ 0.5.  Usage::

    python bench/bench_portal.py [--deliveries 100000] [--requests 3000] [--concurrency 20] [--json F]
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
from sqlalchemy import insert

from bench.common import broker, cpu_seconds, isolated_catalogue, wait_http
from bench.harness import PROFILED_PROCESS, Comparison, Report, Run, Stopwatch, interleaved, json_argument
from processors.portal.queries import DeliveryFilters, PortalQueries
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


class Api:
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
        }
        overrides = info.client_overrides()
        if overrides:
            env["PROCESSORS_CLIENT_OVERRIDES"] = json.dumps(
                {f"consumer.{k}": v for k, v in overrides.items()}
            )
        self.proc = start_processor(
            env, "run", "webhooks", "--api", "--api-port", str(self.port), log_path=logs / "api.log"
        )
        self.logs = logs

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        found = cpu_seconds(self.pid)
        if found is None:
            raise RuntimeError(f"the API server stopped; its log: {self.logs / 'api.log'}")
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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


@dataclass
class GraphqlClients:
    api: Api
    session: aiohttp.ClientSession
    bodies: list[tuple[bytes, dict[str, str]]]
    """Per ask, the request body and headers (made before any clock starts)."""
    client_cpu_us: list[float]

    async def run(self, *, requests: int, concurrency: int, latencies: Latencies) -> Run:
        url = self.api.url + "/graphql"
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
                    raise RuntimeError(f"graphql: {response.status} {answer[:300]!r}")

        server_cpu = self.api.cpu_s()
        watch = Stopwatch()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        mine = watch.stop(requests)
        server = self.api.cpu_s() - server_cpu
        latencies.record("graphql", taken)
        self.client_cpu_us.append(mine.cpu_us)
        return Run(requests, mine.wall_s, server)


async def same_answers(clients: GraphqlClients, queries: PortalQueries, asks: Sequence[Ask]) -> None:
    """Every ask answers the same lines, in the same order, on both sides."""
    for ask, (body, headers) in zip(asks, clients.bodies, strict=True):
        async with clients.session.post(clients.api.url + "/graphql", data=body, headers=headers) as r:
            document = await r.json()
        if r.status != 200 or document.get("errors"):
            raise RuntimeError(f"graphql refused {ask.variables}: {r.status} {document}")
        through_graphql = [edge["node"]["id"] for edge in document["data"]["deliveries"]["edges"]]
        page = await queries.deliveries(ask.member.id, first=PAGE, filters=ask.filters)
        direct = [f"{row['log_partition']}:{row['log_offset']}" for row in page.rows]
        if through_graphql != direct or len(direct) != PAGE:
            raise RuntimeError(f"the two sides differ for {ask.variables}: {through_graphql} / {direct}")


async def settled(api: Api, *, idle_cores: float = 0.05, timeout_s: float = 120) -> None:
    """Until the server's CPU use falls below ``idle_cores`` over half a second (its start-up,
    and its feeds reading what the set-up wrote, are over)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before, t0 = api.cpu_s(), time.perf_counter()
        await asyncio.sleep(0.5)  # a window to measure the server's CPU over
        if (api.cpu_s() - before) / (time.perf_counter() - t0) < idle_cores:
            return
    raise RuntimeError(f"the API server did not settle within {timeout_s:g} s")


# -- main -------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=100_000, help="delivery-log lines in the store")
    parser.add_argument("--partners", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3_000, help="requests per run of each stage")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent clients in both stages")
    parser.add_argument(
        "--query-threads", type=int, default=8, help="the portal's query_threads (both sides)"
    )
    json_argument(parser)
    args = parser.parse_args()

    latencies = Latencies()
    client_cpu_us: list[float] = []
    with broker() as info, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        catalogue, topics_file, prefix = isolated_catalogue(info.bootstrap_servers, directory)
        database = f"sqlite:///{directory / 'portal.db'}"
        api = Api(info, topics_file, prefix, database, directory, query_threads=args.query_threads)
        PROFILED_PROCESS["graphql"] = api.pid  # --profile graphql records the server, not the clients
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
                asks = workload(owners, since=end - timedelta(days=1))
                clients = GraphqlClients(
                    api,
                    session,
                    [
                        (
                            json.dumps({"query": QUERY, "variables": ask.variables}).encode(),
                            {"Authorization": f"Bearer {ask.member.key}", "Content-Type": "application/json"},
                        )
                        for ask in asks
                    ],
                    client_cpu_us,
                )
                await same_answers(clients, queries, asks)
                await settled(api)
                size = {"requests": args.requests, "concurrency": args.concurrency}
                stages: dict[str, Callable[[], Awaitable[Run]]] = {
                    "store": lambda: store_run(queries, asks, latencies=latencies, **size),
                    "graphql": lambda: clients.run(latencies=latencies, **size),
                }
                runs = await interleaved(stages, rounds=args.rounds)
        finally:
            await asyncio.to_thread(queries.close)
            store.close()
            api.stop()

    figures: dict[str, float] = {}
    for stage in ("store", "graphql"):
        measured = latencies.measured(stage, warmup=True)
        figures[f"{stage}_p50_ms"] = round(percentile(measured, 0.50), 2)
        figures[f"{stage}_p99_ms"] = round(percentile(measured, 0.99), 2)
    figures["graphql_client_cpu_us"] = round(sorted(client_cpu_us[1:])[len(client_cpu_us[1:]) // 2], 1)
    figures["deliveries"] = args.deliveries
    Report(
        bench="portal",
        units={"store": "request", "graphql": "request"},
        runs=runs,
        # CPU is read in two processes (the server's, this one's): compared per stage, not as a ratio
        comparisons=[Comparison("graphql/store", "graphql", "store", target=0.5, cpu=False)],
        figures=figures,
        notes=[
            f"{args.deliveries:,} delivery-log lines over {args.partners} partners × {ENDPOINTS_PER_PARTNER} "
            f"endpoints in one SQLite file; {args.concurrency} concurrent clients, first page of {PAGE} "
            f"lines, the filters in turn: none, endpoint, status, event type, the last day",
            "graphql: the portal page's query to `processors run webhooks --api` in its own process; "
            "its CPU/request is that process's (graphql_client_cpu_us: the clients', in this process); "
            f"store: PortalQueries.deliveries on {args.query_threads} threads in this process",
            "latency: per request, p50/p99 of every measured run (warm-up not counted)",
        ],
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
