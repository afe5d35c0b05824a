"""Soak: steady mixed traffic for half an hour, every app in its own process, its memory sampled.

Not in ``./dev bench``'s default list (it runs for ``--minutes``, 30 by default).  Run it alone::

    python bench/bench_soak.py                  # 30 minutes, report in bench/results/soak.json
    python bench/bench_soak.py --minutes 2      # a short run: checks that everything works
    ./dev bench soak                            # the same through ./dev (exit code of the summary)

A broker (``KAFKA_BOOTSTRAP_SERVERS``, else Docker, else Apache Kafka from its jars), topics
with a prefix of their own, the sandbox in its own process, and four apps, each
``processors run APP`` in its own process with the sandbox's environment: ``payments``,
``kyc``, ``webhooks``, ``bordereaux``.  This process paces the traffic (events per second):

* ``--payments-rate`` premium.due (85 % complete, 10 % declined, 5 % pending) to a flaky
  gateway: 20 ms plus up to 30 ms of latency, ``--gateway-error-rate`` answered 503 before
  charging, ``--gateway-error-after-charge-rate`` charged then answered 500 (the retry with
  the same key gets the stored answer), and an outage of ``--outage-s`` every
  ``--outage-every-s`` (the first half-way through the first interval);
* ``--kyc-rate`` customer.kyc_requested (documents choose approvals, reviews and rejections)
  to the KYC provider (sync, 20 ms, ``--kyc-error-rate`` answered 503);
* ``--policy-rate`` policy and claim events: the sample policies of the shipped
  ``treaties.yaml`` in event-time order, fanned out by ``webhooks`` to five partners (two
  healthy, one answering after 250 ms, two flaky: 20 % and 30 % of attempts answered
  503) and aggregated by ``bordereaux`` into bordereaux and regulatory day files as their
  event time moves on.

Every ``--sample-s`` seconds the resident memory (``VmRSS``) of each app process and of the
sandbox is read.  At the end, per process: RSS at the end of the warm-up (``--warmup-minutes``,
by default a sixth of the run and at least 30 s) and when the traffic stops, the growth in MiB
and in MiB per hour between those two, the least-squares slope of every sample after the
warm-up (MiB per hour), the peak and the CPU seconds; per app, its backlog as the broker
reports it (records its consumer group has not committed) when the traffic stops and again
after at most ``--drain-s`` seconds for it to catch up, split into inputs and retry tiers
(records waiting for their tier's delay: a 503 from a flaky partner waits 5 s, a second one
5 min); the events produced and the results seen on its output topics, and its dead letters.
The sandbox says whether a payment key was charged twice and how many entries its bounded
structures evicted.

Reading the figures: growth in the first minutes is mostly warm-up (imports, caches,
librdkafka buffers, allocator arenas); a short run says that everything works, not whether
something leaks.  Some state grows by design up to a bound: apps that declare a ``dedupe``
window in ``topics.yaml`` keep the event ids they answered for that window (bounded per
partition), ``bordereaux`` keeps the state of every policy it has seen, and the sandbox keeps
every idempotency key (up to 1,000,000) and each partner's newest 10,000 requests.  A leak is a slope
that stays positive over a 30-minute run after the warm-up.

    python bench/bench_soak.py [--minutes 30] [--warmup-minutes M] [--sample-s 10]
        [--payments-rate 15] [--kyc-rate 5] [--policy-rate 20] [--drain-s 60]
        [--json bench/results/soak.json] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import confluent_kafka

from bench.common import (
    ROOT,
    admin_client,
    broker,
    cpu_seconds,
    group_lag,
    group_members,
    isolated_catalogue,
    mib,
    rss_bytes,
    sandbox_with,
    slope_per_hour,
    wait_http,
)
from bench.harness import environment
from processors.contract import (
    Codec,
    ContentType,
    Event,
    KycConsent,
    KycDocument,
    KycRequested,
    LocalSchemaIds,
)
from processors.topics.catalogue import Catalogue
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.subscriptions import Subscription, filter_matches
from processors_dev.bordereaux_samples import bordereaux_stream
from processors_dev.samples import premium_due_stream
from tests.integration.helpers import end_offsets, sandbox_env, start_processor

APPS = ("payments", "kyc", "webhooks", "bordereaux")
EXACTLY_ONCE = frozenset({"bordereaux"})
"""Apps that write their internal topics in Kafka transactions: the commit marker that ends each
partition of those topics is one offset its consumer group never commits past, so a caught-up
group shows one record of lag per internal partition."""
CODEC = Codec(LocalSchemaIds())
KEY = base64.b64encode(b"soak-webhook-encryption-key-32b!").decode()
SECRET = "whsec_" + base64.b64encode(b"soak-partner-signing-secret-32b!").decode()
EVENTS_PER_POLICY = 2.4
"""About how many policy and claim events the sample generator makes per policy."""


@dataclass(frozen=True)
class PartnerPlan:
    name: str
    behaviour: dict[str, Any]
    events: tuple[str, ...]


PARTNERS = (
    PartnerPlan("acme", {"mode": "healthy"}, ("policy.*", "claim.*")),
    PartnerPlan("globex", {"mode": "healthy"}, ("policy.issued", "policy.endorsed", "policy.cancelled")),
    PartnerPlan("initech", {"mode": "slow", "delay_ms": 250}, ("claim.*",)),
    PartnerPlan("umbrella", {"mode": "flaky", "failure_rate": 0.2, "seed": 1}, ("policy.*",)),
    PartnerPlan(
        "hooli",
        {"mode": "flaky", "failure_rate": 0.3, "max_consecutive_failures": 2, "seed": 2},
        ("claim.*",),
    ),
)


# -- traffic ----------------------------------------------------------------------------------


@dataclass
class Stream:
    """One kind of event, produced at ``rate`` per second."""

    name: str
    rate: float
    events: Iterator[tuple[str, Event]]
    """(topic, event) in publishing order."""
    sent: int = 0
    acked: int = 0
    failed: int = 0
    exhausted: bool = False
    expected: Counter[str] = field(default_factory=Counter)
    """Results expected by app (webhooks: one delivery per matching partner)."""

    def delivered(self, err: confluent_kafka.KafkaError | None, _msg: confluent_kafka.Message) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed += 1


_KYC_PREFIXES = ("", "", "", "", "", "", "", "", "PEP", "FACE", "SANC", "FORGE")
"""Document-number prefixes: most clear, some reviews and rejections (the sandbox's rules)."""


def kyc_requests(topic: str, seed: int) -> Iterator[tuple[str, Event]]:
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        customer = f"CUST-S-{rng.randrange(5_000):06d}"
        data = KycRequested(
            customer_id=customer,
            verification_type="IDENTITY",
            documents=[
                KycDocument(
                    type="PASSPORT",
                    document_number=f"{rng.choice(_KYC_PREFIXES)}{n:08d}",
                    issuing_country="US",
                    expiry_date=date(2035, 1, 1),
                    front_image_url="https://storage.example.com/docs/front.jpg",
                )
            ],
            consent=KycConsent(
                terms_accepted=True, data_processing_accepted=True, timestamp=datetime.now(UTC)
            ),
        )
        yield topic, Event.create("customer.kyc_requested", subject=customer, data=data, source="crm")


def premium_dues(topic: str, count: int, seed: int) -> Iterator[tuple[str, Event]]:
    mix = {"ok": 0.85, "declined": 0.10, "pending": 0.05}
    for event in premium_due_stream(count, 2_000, seed=seed, token_mix=mix):
        yield topic, event


def policy_events(prefix: str, count: int, seed: int) -> Iterator[tuple[str, Event]]:
    policies = math.ceil(count / EVENTS_PER_POLICY) + 200
    for event in bordereaux_stream(policies, months=12, seed=seed):
        family = "policy" if event.event_type.startswith("policy.") else "claim"
        yield f"{prefix}insurance.{family}.events", event


def produce(bootstrap: str, streams: Sequence[Stream], seconds: float, stop: threading.Event) -> None:
    """Produce every stream at its rate for ``seconds`` (or until ``stop``); runs on a thread."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    started = time.monotonic()
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        for stream in streams:
            due = int(elapsed * stream.rate)
            while stream.sent < due and not stream.exhausted:
                try:
                    topic, event = next(stream.events)
                except StopIteration:
                    stream.exhausted = True
                    break
                value, headers = CODEC.encode(event, ContentType.AVRO)
                while True:
                    try:
                        producer.produce(
                            topic,
                            key=event.subject.encode(),
                            value=value,
                            headers=list(headers),
                            on_delivery=stream.delivered,
                        )
                        break
                    except BufferError:
                        producer.poll(0.1)
                stream.sent += 1
                for plan in PARTNERS:
                    if any(filter_matches(f, event.event_type) for f in plan.events):
                        stream.expected["webhooks"] += 1
        producer.poll(0)
        stop.wait(0.05)  # the pacing tick
    left = producer.flush(60)
    if left:
        print(f"  warning: {left} events not acknowledged by the broker", file=sys.stderr)


class Watcher:
    """Counts the records of the apps' output and dead-letter topics (read committed), on a thread."""

    def __init__(self, bootstrap: str, topics: Sequence[str], deliveries_topic: str) -> None:
        self.counts: Counter[str] = Counter()
        self.delivered = 0
        self._deliveries = deliveries_topic
        self._stop = threading.Event()
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"soak-watch-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 5_000,
            }
        )
        self._consumer.subscribe(list(topics))
        self._thread = threading.Thread(target=self._run, name="soak-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, 0.5):
                    if msg.error() is not None:
                        continue
                    topic = msg.topic() or ""
                    self.counts[topic] += 1
                    if (
                        topic == self._deliveries
                        and json.loads(msg.value() or b"{}").get("status") == "delivered"
                    ):
                        self.delivered += 1
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# -- the processes ------------------------------------------------------------------------------


def app_env(bootstrap: str, prefix: str, topics_file: Path, url: str) -> dict[str, str]:
    env = {k: str(v) for k, v in sandbox_env(prefix, topics_file, bootstrap, url).items()}
    env.update(
        {
            "PROCESSORS_LOG_LEVEL": "WARNING",
            "PROCESSORS_KYC__PROVIDER__BASE_URL": url,
            "PROCESSORS_KYC__RESULTS_TOPIC": f"{prefix}integrations.kyc.results",
            "PROCESSORS_WEBHOOK_ENCRYPTION_KEY": KEY,
            "PROCESSORS_WEBHOOKS__ALLOW": json.dumps(["127.0.0.0/8"]),
            "PROCESSORS_BORDEREAUX__TREATIES_FILE": str(ROOT / "treaties.yaml"),
            "PROCESSORS_BORDEREAUX__INSTANCE_ID": "soak-1",
        }
    )
    return env


async def add_partners(session: aiohttp.ClientSession, url: str) -> None:
    for plan in PARTNERS:
        body = {"name": plan.name, "behaviour": plan.behaviour, "secrets": [SECRET], "record_bodies": False}
        async with session.post(f"{url}/_control/partners", json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"partner {plan.name}: {response.status} {await response.text()}")


async def subscribe(bootstrap: str, prefix: str, url: str) -> None:
    box = SecretBox(base64.b64decode(KEY))
    topic = f"{prefix}integrations.webhook.subscriptions"
    await asyncio.to_thread(end_offsets, bootstrap, topic)  # asks until every partition's leader answers
    store = SubscriptionStore(bootstrap, topic)
    await store.start()
    try:
        for n, plan in enumerate(PARTNERS):
            sub_id = f"ep_{n:024x}"
            secret = StoredSecret(
                box.encrypt(SECRET, associated=sub_id), created_at=datetime.now(UTC), expires_at=None
            )
            sub = Subscription.create(
                id=sub_id, url=f"{url}/partners/{plan.name}", events=list(plan.events), secrets=[secret]
            )
            await store.put(sub)
    finally:
        await store.stop()


def group_of(prefix: str, app: str) -> str:
    return prefix + app


async def wait_assigned(
    bootstrap: str, prefix: str, procs: dict[str, subprocess.Popen[bytes]], logs: Path
) -> None:
    """Until every app's group has a member holding partitions (each app has started)."""
    waiting = set(procs)
    deadline = time.monotonic() + 180
    while waiting:
        for app in sorted(waiting):
            check_alive({app: procs[app]}, logs)
            if await asyncio.to_thread(group_members, bootstrap, group_of(prefix, app)) > 0:
                waiting.discard(app)
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(sorted(waiting))} did not get partitions within 180 s")
        if waiting:
            await asyncio.sleep(1.0)


def check_alive(procs: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    for app, proc in procs.items():
        if proc.poll() is not None:
            tail = (logs / f"{app}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"app {app} exited with {proc.returncode}; the end of its log:\n{tail}")


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int | None]:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for app, proc in procs.items():
        try:
            codes[app] = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            codes[app] = None
    return codes


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Memory:
    """RSS samples of one process: (seconds since the traffic started, bytes)."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    at_warmup: int | None = None
    at_end: int | None = None

    def sample(self, t: float) -> int | None:
        value = rss_bytes(self.pid)
        if value is not None:
            self.samples.append((round(t, 1), value))
        return value


def lag_of(bootstrap: str, catalogue: Catalogue, app: str, group: str) -> dict[str, Any]:
    """The group's backlog: ``input`` (the app's declared sources), ``retry`` (records waiting
    in its retry tiers, most of them for their tier's delay) and ``internal`` (topics the app
    writes and reads itself: the webhooks dispatch records, the bordereaux stages)."""
    topics = catalogue.app(app)
    sources = set(topics.sources)
    tiers = {tier.topic for tier in topics.retry_tiers}
    lag = group_lag(bootstrap, group, [*sources, *tiers])
    by_topic: Counter[str] = Counter()
    partitions: Counter[str] = Counter()
    for (topic, _partition), value in lag.items():
        by_topic[topic] += value
        partitions[topic] += 1
    internal = [t for t in by_topic if t not in sources and t not in tiers]
    return {
        "total": sum(by_topic.values()),
        "input": sum(by_topic[t] for t in sources),
        "retry": sum(by_topic[t] for t in tiers),
        "internal": sum(by_topic[t] for t in internal),
        "internal_markers": sum(partitions[t] for t in internal) if app in EXACTLY_ONCE else 0,
        "by_topic": {t: v for t, v in sorted(by_topic.items()) if v},
    }


def caught_up(lag: dict[str, Any]) -> bool:
    """No input left, and nothing internal beyond the transactions' commit markers."""
    return bool(lag["input"] == 0 and lag["internal"] <= lag["internal_markers"])


def wait_for_leaders(bootstrap: str, prefix: str, timeout_s: float = 60) -> None:
    """Until every partition of the run's topics has a leader (they were just created)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=10).topics
        mine = [t for name, t in topics.items() if name.startswith(prefix)]
        if mine and all(
            t.error is None and p.error is None and p.leader >= 0 for t in mine for p in t.partitions.values()
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the topics of {prefix} have no leaders after {timeout_s:.0f} s")
        time.sleep(0.5)  # polling the cluster's metadata: there is no event to wait for


async def toggle_outages(
    session: aiohttp.ClientSession, url: str, every_s: float, outage_s: float, made: list[float]
) -> None:
    """A gateway outage of ``outage_s`` every ``every_s``, the first half-way through the first interval."""
    started = time.monotonic()
    k = 0
    while True:
        k += 1
        at = started + (k - 0.5) * every_s
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        async with session.put(f"{url}/_sandbox/gateway/config", json={"outage": True}) as response:
            response.raise_for_status()
        made.append(round(time.monotonic() - started, 1))
        try:
            await asyncio.sleep(outage_s)
        finally:
            async with session.put(f"{url}/_sandbox/gateway/config", json={"outage": False}) as response:
                response.raise_for_status()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


# -- the run ----------------------------------------------------------------------------------


def memory_figures(memory: Memory, warmup_s: float, end_s: float) -> dict[str, Any]:
    warm, end = mib(memory.at_warmup), mib(memory.at_end)
    hours = (end_s - warmup_s) / 3600
    after = [(t, mib(v)) for t, v in memory.samples if t >= warmup_s]
    return {
        "rss_warmup_mib": round(warm, 1),
        "rss_end_mib": round(end, 1),
        "growth_mib": round(end - warm, 1),
        "growth_mib_per_hour": round((end - warm) / hours, 1) if hours > 0 else 0.0,
        "slope_mib_per_hour": round(slope_per_hour(after), 1),
        "peak_mib": round(max((mib(v) for _, v in memory.samples), default=0.0), 1),
        "samples": [[t, round(mib(v), 1)] for t, v in memory.samples],
    }


class Soak:
    def __init__(
        self,
        args: argparse.Namespace,
        session: aiohttp.ClientSession,
        bootstrap: str,
        catalogue: Catalogue,
        topics_file: Path,
        prefix: str,
        url: str,
        sandbox_pid: int,
        logs: Path,
        broker_kind: str,
    ) -> None:
        self.args = args
        self.session = session
        self.bootstrap = bootstrap
        self.catalogue = catalogue
        self.topics_file = topics_file
        self.prefix = prefix
        self.url = url
        self.sandbox_pid = sandbox_pid
        self.logs = logs
        self.broker_kind = broker_kind

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(wait_for_leaders, self.bootstrap, self.prefix)
        await add_partners(self.session, self.url)
        await subscribe(self.bootstrap, self.prefix, self.url)
        env = app_env(self.bootstrap, self.prefix, self.topics_file, self.url)
        procs = {app: start_processor(env, "run", app, log_path=self.logs / f"{app}.log") for app in APPS}
        try:
            report = await self._measure(procs)
        finally:
            codes = await asyncio.to_thread(stop_all, procs)
        report["exit_codes"] = codes
        return report

    def _lags(self) -> dict[str, dict[str, Any]]:
        return {app: lag_of(self.bootstrap, self.catalogue, app, group_of(self.prefix, app)) for app in APPS}

    async def _measure(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
        args, prefix, bootstrap = self.args, self.prefix, self.bootstrap
        seconds = args.minutes * 60
        warmup_s = args.warmup_minutes * 60
        seed = int(time.time())
        startup = time.monotonic()
        await wait_assigned(bootstrap, prefix, procs, self.logs)
        startup_s = time.monotonic() - startup

        memory = {app: Memory(proc.pid) for app, proc in procs.items()}
        memory["sandbox"] = Memory(self.sandbox_pid)
        streams = [
            Stream(
                "premium.due",
                args.payments_rate,
                premium_dues(
                    f"{prefix}insurance.billing.events", int(args.payments_rate * seconds) + 10, seed
                ),
            ),
            Stream(
                "customer.kyc_requested",
                args.kyc_rate,
                kyc_requests(f"{prefix}insurance.customer.events", seed),
            ),
            Stream(
                "policy/claim",
                args.policy_rate,
                policy_events(prefix, int(args.policy_rate * seconds) + 10, seed),
            ),
        ]
        outputs = {
            "payments": [f"{prefix}integrations.payment.results"],
            "kyc": [f"{prefix}integrations.kyc.results"],
            "webhooks": [f"{prefix}integrations.webhook.deliveries"],
            "bordereaux": [f"{prefix}reinsurance.bordereaux", f"{prefix}integrations.regulatory.files"],
        }
        dlqs = {app: self.catalogue.app(app).dlq for app in APPS}
        deliveries = outputs["webhooks"][0]
        watcher = Watcher(
            bootstrap, [*(t for ts in outputs.values() for t in ts), *dlqs.values()], deliveries
        )
        watcher.start()

        stop = threading.Event()
        outages: list[float] = []
        started = time.monotonic()
        producing = asyncio.create_task(asyncio.to_thread(produce, bootstrap, streams, seconds, stop))
        toggler = (
            asyncio.create_task(
                toggle_outages(self.session, self.url, args.outage_every_s, args.outage_s, outages)
            )
            if args.outage_every_s > 0
            else None
        )
        cpu_at_warmup: dict[str, float | None] = {}
        try:
            next_sample = 0.0
            warm = warmup_s == 0
            if warm:
                for m in memory.values():
                    m.at_warmup = m.sample(0.0)
                cpu_at_warmup = {name: cpu_seconds(m.pid) for name, m in memory.items()}
            while (now := time.monotonic() - started) < seconds:
                check_alive(procs, self.logs)
                if producing.done():
                    producing.result()
                    break
                if not warm and now >= warmup_s:
                    for m in memory.values():
                        m.at_warmup = m.sample(now)
                    cpu_at_warmup = {name: cpu_seconds(m.pid) for name, m in memory.items()}
                    warm = True
                elif now >= next_sample:
                    for m in memory.values():
                        m.sample(now)
                    next_sample = now + args.sample_s
                await asyncio.sleep(max(0.05, min(1.0, next_sample - now, seconds - now)))
        finally:
            stop.set()
            if toggler is not None:
                toggler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await toggler
            await producing
        end_s = time.monotonic() - started
        for m in memory.values():
            m.at_end = m.sample(end_s)
        cpu_at_end = {name: cpu_seconds(m.pid) for name, m in memory.items()}
        lag_end = await asyncio.to_thread(self._lags)

        drain_started = time.monotonic()
        lag_after = lag_end
        while (
            not all(caught_up(lag) for lag in lag_after.values())
            and time.monotonic() - drain_started < args.drain_s
        ):
            check_alive(procs, self.logs)
            await asyncio.sleep(2.0)
            lag_after = await asyncio.to_thread(self._lags)
        drained_s = time.monotonic() - drain_started
        await asyncio.sleep(1.0)  # the watcher reads what the last commits made visible
        watcher.stop()

        charges = await get_json(self.session, f"{self.url}/_sandbox/gateway/charges")
        bounds = {
            service: await get_json(self.session, f"{self.url}/_sandbox/{service}/bounds")
            for service in ("gateway", "kyc", "reinsurer")
        }
        partners = await get_json(self.session, f"{self.url}/_control/partners")
        # An evicted idempotency key could let a retried call be answered afresh (a second charge):
        # the stores must be big enough for the run.  A partner's log of received requests keeps
        # its newest ones by design; those evictions are a figure.
        key_evictions = sum(b["evictions"] for service in bounds.values() for b in service.values())
        log_evictions = sum(b["evictions"] for p in partners["partners"] for b in p["bounds"].values())

        produced = {
            s.name: {"sent": s.sent, "acked": s.acked, "failed": s.failed, "exhausted": s.exhausted}
            for s in streams
        }
        by_name = {s.name: s for s in streams}
        counts = watcher.counts
        apps: dict[str, Any] = {}
        for app in APPS:
            results = {topic.removeprefix(prefix): counts[topic] for topic in outputs[app]}
            entry: dict[str, Any] = {
                "backlog_end": lag_end[app],
                "backlog_after_drain": lag_after[app],
                "results": results,
                "dead_letters": counts[dlqs[app]],
            }
            if app == "payments":
                entry["events"] = by_name["premium.due"].acked
            elif app == "kyc":
                entry["events"] = by_name["customer.kyc_requested"].acked
            elif app == "webhooks":
                entry["events"] = by_name["policy/claim"].acked
                entry["deliveries_expected"] = by_name["policy/claim"].expected["webhooks"]
                entry["delivered"] = watcher.delivered
            else:
                entry["events"] = by_name["policy/claim"].acked
            apps[app] = entry

        processes: dict[str, Any] = {}
        for name, m in memory.items():
            figures = memory_figures(m, warmup_s, end_s)
            warm_cpu, end_cpu = cpu_at_warmup.get(name), cpu_at_end.get(name)
            figures["cpu_s"] = round(end_cpu, 1) if end_cpu is not None else None
            if warm_cpu is not None and end_cpu is not None and end_s > warmup_s:
                figures["cpu_share_after_warmup"] = round((end_cpu - warm_cpu) / (end_s - warmup_s), 3)
            processes[name] = figures

        figures_flat: dict[str, float] = {}
        for name, p in processes.items():
            figures_flat[f"{name}_growth_mib_per_hour"] = p["growth_mib_per_hour"]
            figures_flat[f"{name}_slope_mib_per_hour"] = p["slope_mib_per_hour"]
        for app, a in apps.items():
            figures_flat[f"{app}_backlog_end"] = a["backlog_end"]["total"]
        figures_flat["charged_more_than_once"] = sum(1 for n in charges["by_key"].values() if n > 1)
        figures_flat["sandbox_key_evictions"] = key_evictions
        figures_flat["partner_log_evictions"] = log_evictions

        return {
            "bench": "soak",
            "stages": {},
            "ratios": {},
            "figures": figures_flat,
            "targets": {"charged_more_than_once": "== 0", "sandbox_key_evictions": "== 0"},
            "config": {
                "minutes": args.minutes,
                "warmup_minutes": args.warmup_minutes,
                "sample_s": args.sample_s,
                "rates_per_s": {s.name: s.rate for s in streams},
                "gateway_error_rate": args.gateway_error_rate,
                "gateway_error_after_charge_rate": args.gateway_error_after_charge_rate,
                "kyc_error_rate": args.kyc_error_rate,
                "outage_every_s": args.outage_every_s,
                "outage_s": args.outage_s,
                "drain_s": args.drain_s,
                "partners": {p.name: {"behaviour": p.behaviour, "events": list(p.events)} for p in PARTNERS},
                "broker": self.broker_kind,
            },
            "startup_s": round(startup_s, 1),
            "traffic_s": round(end_s, 1),
            "drained_s": round(drained_s, 1),
            "outages_at_s": outages,
            "produced": produced,
            "processes": processes,
            "apps": apps,
            "sandbox": {
                "total_charges": charges["total"],
                "keys_charged": charges["keys"],
                "charged_more_than_once": figures_flat["charged_more_than_once"],
                "bounds": bounds,
                "partners": {
                    p["name"]: {
                        "received": p["received"],
                        "accepted": p["accepted"],
                        "duplicates": p["duplicates"],
                        "by_status": p["by_status"],
                        "bounds": p["bounds"],
                    }
                    for p in partners["partners"]
                },
            },
            "environment": environment(),
        }


def _backlog(lag: dict[str, Any]) -> str:
    return f"{lag['total']:,} ({lag['input']:,}/{lag['internal']:,}/{lag['retry']:,})"


def print_report(report: dict[str, Any]) -> None:
    config = report["config"]
    rates = ", ".join(f"{name} {rate:g}/s" for name, rate in config["rates_per_s"].items())
    print(
        f"== soak ({report['traffic_s'] / 60:.1f} min of traffic, warm-up {config['warmup_minutes']:g} min, "
        f"RSS every {config['sample_s']:g} s; broker {config['broker']}; apps started in {report['startup_s']:.0f} s)"
    )
    outages = ", ".join(f"{t:.0f} s" for t in report["outages_at_s"]) or "none"
    print(f"  traffic: {rates}; gateway outages ({config['outage_s']:g} s) at {outages}")
    produced = ", ".join(f"{name} {p['acked']:,}" for name, p in report["produced"].items())
    failed = sum(p["failed"] for p in report["produced"].values())
    exhausted = [name for name, p in report["produced"].items() if p["exhausted"]]
    print(
        f"  produced: {produced} ({failed} failed{'; ran out: ' + ', '.join(exhausted) if exhausted else ''})"
    )
    print(
        f"  {'process':<11} {'RSS warm-up':>12} {'RSS end':>10} {'growth':>10} {'MiB/h':>8} "
        f"{'slope MiB/h':>12} {'peak':>9} {'CPU s':>7}"
    )
    for name, p in report["processes"].items():
        print(
            f"  {name:<11} {p['rss_warmup_mib']:>8.1f} MiB {p['rss_end_mib']:>6.1f} MiB "
            f"{p['growth_mib']:>+6.1f} MiB {p['growth_mib_per_hour']:>+8.1f} {p['slope_mib_per_hour']:>+12.1f} "
            f"{p['peak_mib']:>5.1f} MiB {p['cpu_s'] or 0:>7.1f}"
        )
    print(f"  {'app':<11} {'backlog at end (input/internal/retry)':>38} {'after drain':>18}   results")
    for app, a in report["apps"].items():
        end, after = a["backlog_end"], a["backlog_after_drain"]
        if app == "webhooks":
            seen = f"{a['delivered']:,} delivered of {a['deliveries_expected']:,} deliveries expected"
        elif app == "bordereaux":
            r = a["results"]
            seen = (
                f"{r['reinsurance.bordereaux']:,} bordereaux, {r['integrations.regulatory.files']:,} day files "
                f"from {a['events']:,} events"
            )
        else:
            seen = f"{sum(a['results'].values()):,} results of {a['events']:,} events"
        print(
            f"  {app:<11} {_backlog(end):>38} {_backlog(after):>18}   {seen}, {a['dead_letters']:,} dead letters"
        )
    sandbox = report["sandbox"]
    print(
        f"  gateway: {sandbox['total_charges']:,} charges over {sandbox['keys_charged']:,} keys, "
        f"{sandbox['charged_more_than_once']} charged more than once; "
        f"idempotency keys evicted {report['figures']['sandbox_key_evictions']:,}, partner log "
        f"entries evicted {report['figures']['partner_log_evictions']:,} (newest 10,000 kept)"
    )
    partners = ", ".join(
        f"{name} {p['accepted']:,}/{p['received']:,}" for name, p in sandbox["partners"].items()
    )
    print(f"  partners (accepted/received): {partners}")
    print(
        f"  drained for {report['drained_s']:.0f} s; exit codes "
        + ", ".join(f"{app} {code}" for app, code in report["exit_codes"].items())
    )
    markers = sum(a["backlog_after_drain"]["internal_markers"] for a in report["apps"].values())
    if markers:
        print(
            f"  note: up to {markers} of the internal backlog are transaction commit markers "
            "(one per partition of the exactly-once topics), not records"
        )
    env = report["environment"]
    print(f"  on {env['cpus']} CPUs, load {env['load_1m']:.2f}, Python {env['python']}")


# -- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs")
    parser.add_argument(
        "--warmup-minutes", type=float, default=None, help="default: a sixth of the run, at least 0.5"
    )
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--payments-rate", type=float, default=15.0, help="premium.due per second")
    parser.add_argument("--kyc-rate", type=float, default=5.0, help="customer.kyc_requested per second")
    parser.add_argument("--policy-rate", type=float, default=20.0, help="policy and claim events per second")
    parser.add_argument("--gateway-error-rate", type=float, default=0.05)
    parser.add_argument("--gateway-error-after-charge-rate", type=float, default=0.02)
    parser.add_argument("--kyc-error-rate", type=float, default=0.03)
    parser.add_argument("--outage-every-s", type=float, default=300.0, help="0: no gateway outages")
    parser.add_argument("--outage-s", type=float, default=15.0)
    parser.add_argument(
        "--drain-s", type=float, default=60.0, help="at most this long for the inputs to drain"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--logs", type=Path, default=None, help="keep the apps' logs here")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.warmup_minutes is None:
        args.warmup_minutes = max(0.5, args.minutes / 6)
    if not 0 <= args.warmup_minutes < args.minutes:
        parser.error("--warmup-minutes must be at least 0 and shorter than --minutes")
    return args


async def main() -> None:
    args = parse_args()
    with broker() as info, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        logs = args.logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        bootstrap = info.bootstrap_servers
        catalogue, topics_file, prefix = isolated_catalogue(bootstrap, tmp)
        flags = [
            "--latency-ms", "20", "--latency-jitter-ms", "30",
            "--error-rate", str(args.gateway_error_rate),
            "--error-after-charge-rate", str(args.gateway_error_after_charge_rate),
            "--kyc-latency-ms", "20", "--kyc-error-rate", str(args.kyc_error_rate),
            "--partner-no-bodies",
        ]  # fmt: skip
        with sandbox_with(*flags, env={"PROCESSORS_LOG_LEVEL": "WARNING"}) as (url, sandbox_pid):
            await wait_http(url + "/_sandbox/health")
            async with aiohttp.ClientSession() as session:
                run = Soak(
                    args,
                    session,
                    bootstrap,
                    catalogue,
                    topics_file,
                    prefix,
                    url,
                    sandbox_pid,
                    logs,
                    str(info.kind),
                )
                report = await run.run()
        admin_client.cache_clear()  # its connections end while the broker still answers
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"  report written to {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
