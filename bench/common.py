"""Shared pieces of the benchmarks: a broker, the sandbox in its own process, isolated topics,
and what a soak reads of other processes (resident memory, CPU time, consumer-group lag)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Run, Stopwatch
from processors.adapters import jsonwire
from processors.contract import Event
from processors.runner import Runner
from processors.settings import Settings, load_settings
from processors.topics.admin import apply
from processors.topics.catalogue import Catalogue, load_catalogue
from processors_dev.devbroker import BrokerInfo, BrokerKind, provide_broker
from processors_dev.samples import premium_due_stream

ROOT = Path(__file__).resolve().parents[1]

PRODUCTION_LOGGING = "logging as processors run sets it up (INFO, JSON lines, one stream), to /dev/null"


def production_logging() -> str:
    """Log as ``processors run`` does (INFO, redacted JSON lines to one stream), to /dev/null:
    the app pays its log lines (the audit line of every outbound call) as in production, and
    the floors, which write the same audit line, pay them too.  Warnings go there as well:
    a second handler would format them twice, which production does not.  Returns the
    bench's note."""
    from processors.observability import configure_logging

    configure_logging("INFO", json_format=True, stream=open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
    return PRODUCTION_LOGGING


@contextmanager
def broker() -> Iterator[BrokerInfo]:
    dev = provide_broker(allow=[BrokerKind.EXTERNAL, BrokerKind.DOCKER, BrokerKind.APACHE])
    info = dev.start()
    try:
        yield info
    finally:
        dev.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sandbox_process(latency_ms: int) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(  # fixed command
        [
            sys.executable,
            "-m",
            "processors.cli",
            "sandbox",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.1)


def isolated_catalogue(bootstrap: str, directory: Path) -> tuple[Catalogue, Path, str]:
    """topics.yaml with a unique prefix on every name, applied to the broker."""
    prefix = f"b{uuid.uuid4().hex[:8]}."
    text = (ROOT / "topics.yaml").read_text()
    text = re.sub(r"(?<![\w.])(insurance|integrations|reinsurance|regulatory)\.", prefix + r"\1.", text)
    path = directory / f"{prefix}topics.yaml"
    path.write_text(text)
    catalogue = load_catalogue(path)
    apply(bootstrap, catalogue, replication_factor=1)
    return catalogue, path, prefix


async def raw_http_rate(url: str, *, requests: int, concurrency: int) -> Run:
    """Raw aiohttp requests against the sandbox payment endpoint: the ceiling."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    run_id = uuid.uuid4().hex[:8]
    headers = {"Authorization": "Bearer sandbox-token", "Content-Type": "application/json"}
    counter = iter(range(requests))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                key = f"bench-{run_id}-{i}"
                body = jsonwire.dumps(
                    {
                        "policy_id": f"POL-{i % 1000}",
                        "amount": Decimal("100.00"),
                        "currency": "USD",
                        "payment_method": {"type": "CREDIT_CARD", "card_token": "tok_visa_4242"},
                        "idempotency_key": key,
                        "transaction_type": "CHARGE",
                        "reference_id": f"R-{i}",
                    }
                )
                async with session.post(
                    url + "/api/v1/payments", data=body, headers={**headers, "Idempotency-Key": key}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        watch = Stopwatch()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return watch.stop(requests)


@asynccontextmanager
async def payments_world(
    info: BrokerInfo,
    url: str,
    *,
    events: int,
    policies: int,
    concurrency: int,
    resilience: bool = True,
    exactly_once: bool = False,
) -> AsyncIterator[tuple[Settings, Catalogue, list[Event]]]:
    """Isolated topics with ``events`` premium.due published over ``policies`` policies, and the
    settings a payments run against the sandbox at ``url`` uses, and the events published: the
    same input and set-up for the product (:func:`payments_rate`) and its floor
    (``bench/floor_payments.py``)."""
    from processors_dev.demo import publish_events

    with tempfile.TemporaryDirectory() as tmp:
        catalogue, path, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
        billing = f"{prefix}insurance.billing.events"
        loop = asyncio.get_running_loop()
        sample = list(premium_due_stream(events, policies, seed=int(time.time())))
        await loop.run_in_executor(
            None, lambda: publish_events(info.bootstrap_servers, sample, topic=billing)
        )
        yield (
            load_settings(
                bootstrap_servers=info.bootstrap_servers,
                topics_file=path,
                group_prefix=prefix,
                resilience_enabled=resilience,
                client_overrides={f"consumer.{k}": v for k, v in info.client_overrides().items()},
                payments={
                    "gateway": {"base_url": url},
                    "results_topic": f"{prefix}integrations.payment.results",
                },
                engine={"max_concurrency": concurrency, "exactly_once": exactly_once},
            ),
            catalogue,
            sample,
        )


async def payments_rate(
    info: BrokerInfo,
    url: str,
    *,
    events: int,
    policies: int,
    concurrency: int,
    resilience: bool = True,
    exactly_once: bool = False,
    traced: bool = False,
) -> Run:
    """The payments app over ``events`` pre-published premium.due (key order on), timed from
    its first assignment to its last result (start-up and publishing are not counted).
    ``exactly_once``: results, answered-id markers and offsets in transactions.  ``traced``:
    tracing on, every span through the SDK's batch processor to an exporter that drops them
    (what tracing costs the process, without a collector's network time)."""
    if traced:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        from processors.observability import tracing

        class _Dropped(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Dropped()))
        tracing.install(provider)
        try:
            return await payments_rate(
                info, url, events=events, policies=policies, concurrency=concurrency,
                resilience=resilience, exactly_once=exactly_once,
            )  # fmt: skip
        finally:
            tracing.uninstall()
            provider.shutdown()
    async with payments_world(
        info, url, events=events, policies=policies, concurrency=concurrency,
        resilience=resilience, exactly_once=exactly_once,
    ) as (settings, catalogue, _sample):  # fmt: skip
        # one result per event, plus its answered-id marker when the app de-duplicates
        per_event = 2 if catalogue.app("payments").dedupe is not None else 1
        runner = Runner(settings, ["payments"], catalogue=catalogue)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        while not runner.engines:
            await asyncio.sleep(0.01)
            if task.done():
                task.result()
        engine = runner.engines[0]
        await engine.wait_assigned()
        watch = Stopwatch()
        while engine.stats.outputs < events * per_event:
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
        run = watch.stop(engine.stats.outputs // per_event)
        stop.set()
        await task
        return run


@contextmanager
def sandbox_with(*flags: str, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """``processors sandbox`` with ``flags`` on a free port, in its own process: (base URL, pid).

    Secrets (tokens, partner secrets) go in ``env``, never in ``flags`` (command lines are
    visible to other users of the machine).  Stopped with SIGTERM on exit.
    """
    from processors_dev.sandbox.cli import READY_PREFIX

    proc = subprocess.Popen(  # fixed command
        [sys.executable, "-m", "processors.cli", "sandbox", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the sandbox did not start (exit code {proc.poll()})")
        url = line[len(READY_PREFIX) :].strip()
        # the rest of its output is read and dropped, so the pipe never fills up
        threading.Thread(target=proc.stdout.read, name="sandbox-output", daemon=True).start()
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), None when gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` so far (``/proc/<pid>/stat``), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@functools.cache
def admin_client(bootstrap: str) -> Any:
    """One quiet admin client per cluster for the whole run (a new client per question would
    log its shutdown every time)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def group_members(bootstrap: str, group: str, *, timeout_s: float = 10) -> int:
    """Members of ``group`` that hold partitions (0 while the group is not formed yet)."""
    try:
        described = (
            admin_client(bootstrap)
            .describe_consumer_groups([group], request_timeout=5)[group]
            .result(timeout_s)
        )
    except Exception:  # not created yet, or its coordinator still loading
        return 0
    return sum(1 for member in described.members or [] if member.assignment.topic_partitions)


def group_lag(
    bootstrap: str, group: str, topics: Iterable[str], *, timeout_s: float = 15
) -> dict[tuple[str, int], int]:
    """Records of ``topics`` (and of every other topic ``group`` committed on) the group has not
    committed, per partition: the read-committed end offset minus the committed offset, or minus
    the first offset where the group committed nothing yet.  Asked of the broker (admin API)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]  # re-exported without __all__

    admin = admin_client(bootstrap)
    answer = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in answer.result(timeout=timeout_s).topic_partitions or []
        if tp.offset >= 0
    }
    wanted = set(topics) | {topic for topic, _ in committed}
    metadata = admin.list_topics(timeout=timeout_s).topics
    tps = [
        TopicPartition(topic, partition)
        for topic in sorted(wanted)
        if topic in metadata
        for partition in sorted(metadata[topic].partitions)
    ]
    if not tps:
        return {}

    def offsets(spec: OffsetSpec) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets(
            dict.fromkeys(tps, spec),
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=timeout_s,
        )
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

    ends = offsets(OffsetSpec.latest())  # type: ignore[no-untyped-call]
    firsts = offsets(OffsetSpec.earliest())  # type: ignore[no-untyped-call]
    return {tp: max(0, end - committed.get(tp, firsts[tp])) for tp, end in ends.items()}


def mib(value: float | None) -> float:
    return (value or 0) / (1024 * 1024)


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour (0.0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600
