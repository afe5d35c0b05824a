"""Partner webhook delivery throughput against its ceiling, and the latency a partner sees.

Stages, run interleaved after a warm-up (medians of ``--rounds`` runs each; one unit is one
delivery):

* ``ceiling``: the raw HTTP client (aiohttp) posting signed deliveries to the same 100 sandbox
  partner receivers, with the pipeline's connection budget (``--concurrency`` in all, the
  webhooks app's ``max_connections_per_host`` per host: every receiver is on one host:port) and
  the pipeline's bodies (the same sample events fanned out to the same endpoints and serialised
  by the same function, so each body is what the pipeline sends), signed the same way;
* ``webhooks``: the webhooks app fanning events out from Kafka to the 100 endpoints (each event
  matches 11 or 12 of them), signing, delivering through the SSRF-pinned transport under each
  endpoint's breaker and limits, and writing the delivery log;
* ``webhooks-floor``: the same work by its floor, the stripped prototype in
  ``bench/floor_webhooks.py`` that keeps the app's guarantees (the product's client
  configurations, codec, dispatch records through the dispatch topic, signing, SSRF-pinned
  transport, per-endpoint breaker and limits, one delivery-log line and one audit record per
  attempt, offsets committed only past finished work) and does nothing else, on fresh topics
  and timed the same way;
* ``webhooks-dead10``: the same with 10 of the 100 endpoints dead (connection refused):
  deliveries to the 90 healthy endpoints;
* ``webhooks-bare``: the pipeline without the resilience layer (no breaker, retry, deadline or
  audit record per attempt): what the Kafka path alone (fan-out, dispatch records, delivery
  log) costs on top of the raw client.

Ratios: webhooks/ceiling (throughput and CPU per delivery, target ≥ 0.70), webhooks/floor
(webhooks against webhooks-floor, throughput and CPU per delivery, target ≥ 0.90: how far the
product is from the cheapest code with its guarantees), isolation (webhooks-dead10 against
webhooks, throughput, target ≥ 0.90) and bare/ceiling (no target).

Then the latency a partner feels, of the product (``webhooks``) and of its floor
(``webhooks-floor``, the same prototype), in phases on fresh topics and subscriptions in the
same run: one discarded round of both, then ``--latency-rounds`` (default 3) interleaved, and
the median of each figure over the rounds (a single phase on this shared machine now and then
stalls for seconds, in either subject, and one such phase made a whole run's figures
meaningless).  In a phase, events are produced at a paced rate, so that the 100 endpoints (same
layout, all healthy, answering at once) receive ``--latency-rate`` deliveries/s (default 500)
for ``--latency-seconds`` (default 10) after a short warm-up; each delivery's latency is the
partner's receive time (recorded by the sandbox receiver per delivery, ``time.time()``) minus
its event's produce time (``time.time()`` in this process, just before ``Producer.produce``,
``linger.ms`` 0), matched through the delivery's ``webhook-id`` (a hash of the subscription and
event ids).  p50 and p99 are reported for both (``e2e_p50_ms``, ``e2e_p99_ms`` and
``e2e_floor_p50_ms``, ``e2e_floor_p99_ms``), with the floor's over the product's
(``e2e_p50_floor/product``, ``e2e_p99_floor/product``: ≥ 0.90 means the product's latency is
within 10 % of its floor's).

The receivers answer after ``--latency-ms`` (default 20 ms) in the throughput stages and at once
in the latency phase, and run in their own process.  Usage::

    python bench/bench_webhooks.py [--events 2000] [--concurrency 1000] [--rounds 3] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import confluent_kafka

from bench.common import broker, isolated_catalogue, production_logging
from bench.floor_webhooks import SPOILED_RUNS_ALLOWED, RunSpoiled, floor_running, webhooks_floor_run
from bench.harness import Comparison, Report, Run, Stopwatch, interleaved, json_argument
from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.partners.projection import NO_GRANTS
from processors.runner import Runner
from processors.runtime.engine import Engine
from processors.settings import Settings, load_settings
from processors.topics.catalogue import Catalogue
from processors.webhooks.app import USER_AGENT
from processors.webhooks.config import WebhooksSettings
from processors.webhooks.delivery import delivery_body, event_data_json
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.signing import signature_headers, webhook_id_for
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import Subscription
from processors_dev.demo import publish_events
from processors_dev.devbroker import BrokerInfo
from processors_dev.samples import MIXED_TYPES, mixed_events

ENDPOINTS = 100
DEAD = 10
ENTITIES = 500
SECRET = "whsec_" + base64.b64encode(b"bench-partner-secret-32-bytes!!!").decode()
KEY = base64.b64encode(b"k" * 32).decode()
TYPES = MIXED_TYPES
SAMPLED = range(ENDPOINTS - len(TYPES), ENDPOINTS)
"""Receivers that keep bodies (one per event type, all healthy in every stage): body sizes."""

_DEFAULTS = WebhooksSettings()
PER_HOST = _DEFAULTS.max_connections_per_host
"""The webhooks app's per-host connection limit; every receiver is on one host:port."""


# -- the subscription layout ------------------------------------------------------------------


def sub_id(i: int) -> str:
    return f"ep_{i:024x}"


def partner_name(i: int) -> str:
    return f"bench{i:03d}"


_MATCHING = {t: [i for i in range(ENDPOINTS) if TYPES[i % len(TYPES)] == t] for t in TYPES}
"""Endpoint i subscribes to ``TYPES[i % 9]``: each event matches 11 or 12 endpoints."""


def matching(event_type: str) -> list[int]:
    return _MATCHING[event_type]


def sample(events: int) -> list[Event]:
    return list(mixed_events(events, ENTITIES, seed=time.time_ns()))


def _family(event_type: str) -> str:
    return {"policy": "policy", "premium": "billing", "claim": "claim"}[event_type.partition(".")[0]]


def _now() -> datetime:
    return datetime.now(UTC)


def _publish(bootstrap: str, prefix: str, events: Sequence[Event]) -> None:
    for family in ("policy", "billing", "claim"):
        batch = [e for e in events if _family(e.event_type) == family]
        publish_events(bootstrap, batch, topic=f"{prefix}insurance.{family}.events")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the partner receivers (their own process) ------------------------------------------------


@dataclass
class Partners:
    """The sandbox partner receivers and a control session to them."""

    base: str
    session: aiohttp.ClientSession
    bodies: dict[str, list[float]] = field(default_factory=dict)
    """Per stage, the mean body size received at the sampled receivers, per run."""

    async def reset(self) -> None:
        for i in range(ENDPOINTS):
            async with self.session.delete(
                f"{self.base}/_control/partners/{partner_name(i)}/deliveries"
            ) as r:
                assert r.status in (200, 204), await r.text()

    async def set_delay(self, delay_ms: int) -> None:
        for i in range(ENDPOINTS):
            body = {"behaviour": {"delay_ms": delay_ms}}
            async with self.session.patch(f"{self.base}/_control/partners/{partner_name(i)}", json=body) as r:
                assert r.status == 200, await r.text()

    async def accepted(self, names: set[str]) -> int:
        async with self.session.get(self.base + "/_control/partners") as r:
            listing = await r.json()
        return sum(int(row["accepted"]) for row in listing["partners"] if row["name"] in names)

    async def wait_accepted(self, expected: int, names: set[str], task: asyncio.Task[None] | None) -> int:
        """Until the receivers accepted ``expected``: polled often only near the end (each poll
        costs CPU on both sides)."""
        t0 = time.perf_counter()
        while (done := await self.accepted(names)) < expected:
            rate = done / max(time.perf_counter() - t0, 1e-3)
            left = (expected - done) / rate if rate > 0 else 0.25
            await asyncio.sleep(min(0.25, max(0.01, left / 2)))
            if task is not None and task.done():
                task.result()
                raise RuntimeError("the pipeline stopped before delivering everything")
        return done

    async def deliveries(self, i: int) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/_control/partners/{partner_name(i)}/deliveries") as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["deliveries"])

    async def note_bodies(self, stage: str) -> float:
        sizes = [
            len(d["body"].encode())
            for i in SAMPLED
            for d in await self.deliveries(i)
            if d["body"] is not None
        ]
        mean = statistics.fmean(sizes) if sizes else 0.0
        self.bodies.setdefault(stage, []).append(mean)
        return mean


@contextlib.asynccontextmanager
async def partner_receivers(latency_ms: int) -> AsyncIterator[Partners]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processors.cli", "sandbox", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "SANDBOX_PARTNER_SECRET": SECRET, "PROCESSORS_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(base + "/_control/partners") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the partner sandbox did not start")
                await asyncio.sleep(0.1)
            for i in range(ENDPOINTS):
                body = {
                    "name": partner_name(i),
                    "behaviour": {"mode": "healthy", "delay_ms": latency_ms},
                    "secrets": [SECRET],
                    "record_bodies": i in SAMPLED,
                }
                async with session.post(base + "/_control/partners", json=body) as r:
                    assert r.status == 201, await r.text()
            yield Partners(base, session)
    finally:
        proc.terminate()
        await proc.wait()


# -- the ceiling ------------------------------------------------------------------------------


async def ceiling_run(partners: Partners, *, events: int, concurrency: int, per_host: int) -> Run:
    """The pipeline's deliveries of ``events`` sample events, posted and signed by raw aiohttp.

    Same bodies (``delivery_body`` of the same sample events, fanned out to the same
    endpoints), same headers and signatures, same connection limits; bodies are built before
    the clock starts (the pipeline builds its own inside: that is pipeline work).
    """
    jobs: list[tuple[str, str, str, bytes]] = []
    for event in sample(events):
        data_json = event_data_json(event, NO_GRANTS)  # the operator's subscriptions, granted nothing
        for i in matching(event.event_type):
            webhook_id = webhook_id_for(sub_id(i), str(event.event_id))
            url = f"{partners.base}/partners/{partner_name(i)}"
            jobs.append((url, webhook_id, event.event_type, delivery_body(webhook_id, event, data_json)))
    await partners.reset()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=per_host)
    async with aiohttp.ClientSession(connector=connector) as session:
        todo = iter(jobs)

        async def worker() -> None:
            for url, webhook_id, event_type, body in todo:
                headers = signature_headers(
                    webhook_id=webhook_id, event_type=event_type, timestamp_s=int(time.time()),
                    body=body, secrets=[SECRET],
                )  # fmt: skip
                headers["Content-Type"] = "application/json"
                headers["User-Agent"] = USER_AGENT
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status

        watch = Stopwatch()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run = watch.stop(len(jobs))
    mean = await partners.note_bodies("ceiling")
    print(
        f"    ceiling: mean body {mean:.0f} B at the receivers ({statistics.fmean(len(j[3]) for j in jobs):.0f} B sent)"
    )
    return run


# -- the pipeline -----------------------------------------------------------------------------


def pipeline_settings(
    info: BrokerInfo, path: Path, prefix: str, *, concurrency: int, per_host: int, resilience: bool
) -> Settings:
    return load_settings(
        bootstrap_servers=info.bootstrap_servers,
        topics_file=path,
        group_prefix=prefix,
        client_overrides={f"consumer.{k}": v for k, v in info.client_overrides().items()},
        resilience_enabled=resilience,
        webhooks={
            "allow": ["127.0.0.0/8"],
            "encryption_key": KEY,
            "max_connections_per_host": per_host,
            # A waiting room as large as the worker budget: no delivery to a healthy receiver is
            # ever deferred to a retry tier as "busy", so product and floor measure the same
            # healthy path (a deferral would measure the tier's delay, not the record path).
            "max_waiting_per_endpoint": concurrency,
            "engine": {"max_concurrency": concurrency, "max_buffered_per_partition": 5000,
                       "max_buffered": 30000},
        },
    )  # fmt: skip


async def subscribe(info: BrokerInfo, prefix: str, base: str, *, dead: int) -> set[str]:
    """The 100 subscriptions (the first ``dead`` on a closed port); the healthy receivers' names."""
    from processors_dev.sandbox.partners import closed_port_url

    box = SecretBox(base64.b64decode(KEY))
    store = SubscriptionStore(info.bootstrap_servers, f"{prefix}integrations.webhook.subscriptions")
    await store.start()
    try:
        for i in range(ENDPOINTS):
            url = closed_port_url() if i < dead else f"{base}/partners/{partner_name(i)}"
            secret = StoredSecret(
                box.encrypt(SECRET, associated=sub_id(i)), created_at=_now(), expires_at=None
            )
            sub = Subscription.create(id=sub_id(i), url=url, events=[TYPES[i % len(TYPES)]], secrets=[secret])
            await store.put(sub)
    finally:
        await store.stop()
    return {partner_name(i) for i in range(dead, ENDPOINTS)}


@contextlib.asynccontextmanager
async def running(
    settings: Settings, catalogue: Catalogue
) -> AsyncIterator[tuple[Engine, asyncio.Task[None]]]:
    """The webhooks app, from its first assignment until stopped."""
    runner = Runner(settings, ["webhooks"], catalogue=catalogue)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        while not runner.engines:
            await asyncio.sleep(0.01)
            if task.done():
                task.result()
        await runner.engines[0].wait_assigned()
        yield runner.engines[0], task
    finally:
        stop.set()
        await task


async def pipeline_run(
    info: BrokerInfo,
    partners: Partners,
    *,
    stage: str,
    events: int,
    concurrency: int,
    per_host: int,
    dead: int,
    resilience: bool = True,
) -> Run:
    """Deliveries to the healthy endpoints of ``events`` pre-published events, timed from the
    app's first assignment to the last delivery accepted (start-up and publishing not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, path, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
        settings = pipeline_settings(
            info, path, prefix, concurrency=concurrency, per_host=per_host, resilience=resilience
        )
        names = await subscribe(info, prefix, partners.base, dead=dead)
        events_ = sample(events)
        expected = sum(1 for e in events_ for i in matching(e.event_type) if i >= dead)
        await asyncio.to_thread(_publish, info.bootstrap_servers, prefix, events_)
        await partners.reset()
        async with running(settings, catalogue) as (_engine, task):
            watch = Stopwatch()
            done = await partners.wait_accepted(expected, names, task)
            run = watch.stop(done)
    mean = await partners.note_bodies(stage)
    print(f"    {stage}: mean body {mean:.0f} B at the receivers")
    return run


# -- end-to-end latency -----------------------------------------------------------------------


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    rate_per_s: float
    measured: int
    missing: int
    events_per_s: float
    cpu: Run


def _produce_paced(
    bootstrap: str, prefix: str, events: Sequence[Event], *, rate: float, total_s: float
) -> tuple[float, list[tuple[Event, float]]]:
    """Produce ``events`` so that their deliveries come at ``rate``/s, for ``total_s``: the wall
    time it started and each event with its produce time (``time.time()``)."""
    codec = Codec(LocalSchemaIds())
    encoded: list[tuple[str, bytes, bytes, Any, Event]] = []
    for event in events:
        value, headers = codec.encode(event, ContentType.AVRO)
        topic = f"{prefix}insurance.{_family(event.event_type)}.events"
        encoded.append((topic, event.subject.encode(), value, list(headers), event))
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0}
    )
    sent: list[tuple[Event, float]] = []
    start = time.monotonic()
    started_at = time.time()
    due = 0.0
    for topic, key, value, headers, event in encoded:
        if due >= total_s:
            break
        wait = start + due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        produced_at = time.time()
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
        sent.append((event, produced_at))
        due += len(matching(event.event_type)) / rate
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} events not acknowledged by the broker")
    return started_at, sent


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def first_receipts(deliveries: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per ``webhook-id``, when a receiver first got it (a later copy of a delivery does not count)."""
    received: dict[str, float] = {}
    for d in deliveries:
        wid, at = d["webhook_id"], float(d["received_at"])
        if wid is not None and (wid not in received or at < received[wid]):
            received[wid] = at
    return received


def measure_latency(
    sent: Sequence[tuple[Event, float]], received: Mapping[str, float], *, window_start: float, cpu: Run
) -> Latency:
    """The latency of each delivery of the events produced from ``window_start`` on (``sent``:
    each event with its produce time, in produce order): its first receipt (``received``, per
    ``webhook-id``) minus its event's produce time; ``cpu``: the wall and CPU time of the phase."""
    ended_at = sent[-1][1]
    produced: dict[str, float] = {
        webhook_id_for(sub_id(i), str(event.event_id)): at
        for event, at in sent
        if at >= window_start
        for i in matching(event.event_type)
    }
    latencies = sorted((received[w] - at) * 1000 for w, at in produced.items() if w in received)
    in_window = sum(1 for at in received.values() if window_start <= at <= ended_at)
    measured_events = sum(1 for _, at in sent if at >= window_start)
    span = max(ended_at - window_start, 1e-3)
    return Latency(
        p50_ms=_percentile(latencies, 0.50) if latencies else math.nan,
        p99_ms=_percentile(latencies, 0.99) if latencies else math.nan,
        rate_per_s=in_window / span,
        measured=len(latencies),
        missing=len(produced) - len(latencies),
        events_per_s=measured_events / span,
        cpu=Run(len(latencies), cpu.wall_s, cpu.cpu_s),
    )


Subject = Callable[[Settings, Catalogue], AbstractAsyncContextManager[tuple[object, asyncio.Task[None]]]]
"""What a latency phase runs on its settings and catalogue: ``running`` (the product) or
``floor_running`` (its floor), each yielding, once it has its partitions, itself and a task
that ends only if it fails (``Partners.wait_accepted`` watches it)."""


async def e2e_latency(
    info: BrokerInfo,
    partners: Partners,
    subject: Subject,
    *,
    rate: float,
    seconds: float,
    warmup_s: float,
    concurrency: int,
    per_host: int,
) -> Latency:
    """Event produced → partner received, at a steady ``rate`` deliveries/s, receivers answering
    at once, through ``subject`` on fresh topics and subscriptions."""
    await partners.set_delay(0)
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, path, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
        settings = pipeline_settings(
            info, path, prefix, concurrency=concurrency, per_host=per_host, resilience=True
        )
        names = await subscribe(info, prefix, partners.base, dead=0)
        total_s = warmup_s + seconds
        min_fanout = min(len(v) for v in _MATCHING.values())
        events = sample(math.ceil(total_s * rate / min_fanout) + 1)
        await partners.reset()
        loop = asyncio.get_running_loop()
        async with subject(settings, catalogue) as (_running, task):
            producing = loop.run_in_executor(
                None,
                lambda: _produce_paced(info.bootstrap_servers, prefix, events, rate=rate, total_s=total_s),
            )
            await asyncio.sleep(warmup_s)
            watch = Stopwatch()
            started_at, sent = await producing
            expected = sum(len(matching(e.event_type)) for e, _ in sent)
            await asyncio.wait_for(partners.wait_accepted(expected, names, task), timeout=60 + seconds)
            cpu = watch.stop(0)
    received = first_receipts([d for i in range(ENDPOINTS) for d in await partners.deliveries(i)])
    return measure_latency(sent, received, window_start=started_at + warmup_s, cpu=cpu)


async def _e2e_phase(
    info: BrokerInfo,
    partners: Partners,
    stage: str,
    subject: Subject,
    **kwargs: Any,
) -> Latency:
    """One e2e latency phase; a floor phase that left the healthy path is measured again."""
    for spoiled in range(SPOILED_RUNS_ALLOWED + 1):
        try:
            return await e2e_latency(info, partners, subject, **kwargs)
        except RunSpoiled as exc:  # only the floor's runs are ever discarded
            if spoiled == SPOILED_RUNS_ALLOWED:
                raise
            print(f"    {stage}: phase discarded ({exc}); measuring again on fresh topics")
    raise AssertionError("unreachable")


def median_latency(runs: Sequence[Latency]) -> Latency:
    """The median of each figure over ``runs`` (p50 and p99 each their own median); counts summed,
    CPU from the run whose p50 is the median one."""
    by_p50 = sorted(runs, key=lambda r: r.p50_ms)
    middle = by_p50[(len(by_p50) - 1) // 2]
    return Latency(
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        rate_per_s=statistics.median(r.rate_per_s for r in runs),
        measured=sum(r.measured for r in runs),
        missing=sum(r.missing for r in runs),
        events_per_s=statistics.median(r.events_per_s for r in runs),
        cpu=middle.cpu,
    )


def _latency_ratio(floor: float, product: float) -> float:
    """Floor latency / product latency (≤ 1 when the product is slower; NaN without figures)."""
    return round(floor / product, 3) if product > 0 else math.nan


def _latency_line(stage: str, latency: Latency) -> str:
    return f"    {stage}: {_latency_figures(latency)}"


def _latency_figures(latency: Latency) -> str:
    return (
        f"p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms over {latency.measured} "
        f"deliveries ({latency.rate_per_s:.0f}/s received), {latency.missing} never received, "
        f"{latency.cpu.cpu_share:.2f} cores in this process"
    )


# -- main -------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--events", type=int, default=2_000, help="events per pipeline run (×11.1 deliveries)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=_DEFAULTS.engine.max_concurrency,
        help="the app's max_concurrency and connection limit; the raw client's workers and connection limit",
    )
    parser.add_argument("--latency-ms", type=int, default=20, help="receivers' answer delay (throughput)")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="measured e2e latency per phase (0: skip)"
    )
    parser.add_argument(
        "--latency-rounds", type=int, default=3, help="interleaved e2e rounds after a discarded one"
    )
    parser.add_argument("--latency-warmup", type=float, default=3.0, help="seconds before it is measured")
    parser.add_argument("--latency-rate", type=float, default=500.0, help="deliveries/s in the latency phase")
    json_argument(parser)
    args = parser.parse_args()
    logging_note = production_logging()
    per_host = PER_HOST
    print(
        f"connections: {args.concurrency} in all, {per_host} per host, on both sides "
        f"(every receiver is on one host:port, so at most {min(args.concurrency, per_host)} at once)"
    )

    latencies: dict[str, Latency] = {}
    with broker() as info:
        async with partner_receivers(args.latency_ms) as partners:
            limits = {"concurrency": args.concurrency, "per_host": per_host}

            def pipeline(stage: str, dead: int, resilience: bool = True) -> Callable[[], Awaitable[Run]]:
                return lambda: pipeline_run(
                    info,
                    partners,
                    stage=stage,
                    events=args.events,
                    dead=dead,
                    resilience=resilience,
                    **limits,
                )

            runs = await interleaved(
                {
                    "ceiling": lambda: ceiling_run(partners, events=args.events, **limits),
                    "webhooks": pipeline("webhooks", 0),
                    "webhooks-floor": lambda: webhooks_floor_run(
                        info, partners, events=args.events, **limits
                    ),
                    "webhooks-dead10": pipeline("webhooks-dead10", DEAD),
                    "webhooks-bare": pipeline("webhooks-bare", 0, resilience=False),
                },
                rounds=args.rounds,
            )
            if args.latency_seconds > 0:
                subjects: dict[str, Subject] = {
                    "webhooks": running,
                    "webhooks-floor": lambda settings, catalogue: floor_running(
                        settings, catalogue, concurrency=args.concurrency
                    ),
                }
                print(
                    f"  e2e latency: {args.latency_rate:.0f} deliveries/s, receivers answering at once, "
                    f"{args.latency_warmup:.0f} s warm-up + {args.latency_seconds:.0f} s measured per phase; "
                    f"one discarded round, then {args.latency_rounds} interleaved, medians"
                )
                per_round = await interleaved(
                    {
                        stage: functools.partial(
                            _e2e_phase,
                            info,
                            partners,
                            stage,
                            subject,
                            rate=args.latency_rate,
                            seconds=args.latency_seconds,
                            warmup_s=args.latency_warmup,
                            **limits,
                        )
                        for stage, subject in subjects.items()
                    },
                    rounds=args.latency_rounds,
                    describe=_latency_figures,
                )
                latencies = {stage: median_latency(runs_) for stage, runs_ in per_round.items()}
                for stage, latency in latencies.items():
                    print(_latency_line(f"median {stage}", latency))
            bodies = partners.bodies

    figures: dict[str, float] = {}
    targets: dict[str, str] = {}
    sizes = ", ".join(f"{stage} {statistics.fmean(v):.0f} B" for stage, v in bodies.items())
    notes = [
        logging_note,
        f"{args.events} events per run over 100 endpoints (11 or 12 per event), receivers answer after "
        f"{args.latency_ms} ms; connections {args.concurrency} in all and {per_host} per host on both sides",
        f"mean delivery body at the receivers: {sizes}",
    ]
    if latencies:
        latency, floor = latencies["webhooks"], latencies["webhooks-floor"]
        figures = {
            "e2e_p50_ms": round(latency.p50_ms, 2),
            "e2e_p99_ms": round(latency.p99_ms, 2),
            "e2e_rate_per_s": round(latency.rate_per_s, 1),
            "e2e_floor_p50_ms": round(floor.p50_ms, 2),
            "e2e_floor_p99_ms": round(floor.p99_ms, 2),
            "e2e_p50_floor/product": _latency_ratio(floor.p50_ms, latency.p50_ms),
            "e2e_p99_floor/product": _latency_ratio(floor.p99_ms, latency.p99_ms),
        }
        targets = {"e2e_p50_ms": "<= 10", "e2e_p99_ms": "<= 50"}
        notes.append(
            f"e2e latency: event produced (time.time() before Producer.produce, linger.ms 0) → partner received "
            f"(sandbox receiver's time.time()), same machine; {latency.events_per_s:.1f} events/s fanned out "
            f"to 11-12 endpoints each, {latency.measured} deliveries measured in {args.latency_rounds} "
            f"interleaved rounds of {args.latency_seconds:.0f} s after a discarded one; p50 and p99 are "
            "the medians of the rounds'"
            + (f", {latency.missing} never received" if latency.missing else "")
            + f"; this process kept {latency.cpu.cpu_share:.2f} cores busy"
        )
        notes.append(
            f"e2e latency of the floor (bench/floor_webhooks.py), in rounds interleaved with the product's, "
            f"the same way on fresh topics: {floor.events_per_s:.1f} events/s, {floor.measured} deliveries measured"
            + (f", {floor.missing} never received" if floor.missing else "")
            + f"; this process kept {floor.cpu.cpu_share:.2f} cores busy; e2e_*_floor/product is the "
            "floor's latency over the product's (≥ 0.90: the product within 10 % of its floor)"
        )
    Report(
        bench="webhooks",
        units=dict.fromkeys(runs, "delivery"),
        runs=runs,
        comparisons=[
            Comparison("webhooks/ceiling", "webhooks", "ceiling", target=0.70),
            Comparison("webhooks/floor", "webhooks", "webhooks-floor", target=0.90),
            Comparison("isolation", "webhooks-dead10", "webhooks", target=0.90, cpu=False),
            Comparison("bare/ceiling", "webhooks-bare", "ceiling"),
        ],
        figures=figures,
        targets=targets,
        notes=notes,
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
