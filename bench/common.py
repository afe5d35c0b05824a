"""Shared pieces of the benchmarks: a broker, the sandbox in its own process, isolated topics."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp

from bench.harness import Run, Stopwatch
from processors.adapters import jsonwire
from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.admin import apply
from processors.topics.catalogue import Catalogue, load_catalogue
from processors_dev.devbroker import BrokerInfo, BrokerKind, provide_broker
from processors_dev.samples import premium_due_stream

ROOT = Path(__file__).resolve().parents[1]


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


async def payments_rate(
    info: BrokerInfo,
    url: str,
    *,
    events: int,
    policies: int,
    concurrency: int,
    resilience: bool = True,
) -> Run:
    """The payments app over ``events`` pre-published premium.due (key order on), timed from
    its first assignment to its last result (start-up and publishing are not counted)."""
    from processors_dev.demo import publish_events

    with tempfile.TemporaryDirectory() as tmp:
        catalogue, path, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
        billing = f"{prefix}insurance.billing.events"
        loop = asyncio.get_running_loop()
        sample = list(premium_due_stream(events, policies, seed=int(time.time())))
        await loop.run_in_executor(
            None, lambda: publish_events(info.bootstrap_servers, sample, topic=billing)
        )
        settings = load_settings(
            bootstrap_servers=info.bootstrap_servers,
            topics_file=path,
            group_prefix=prefix,
            resilience_enabled=resilience,
            client_overrides={f"consumer.{k}": v for k, v in info.client_overrides().items()},
            payments={"gateway": {"base_url": url}, "results_topic": f"{prefix}integrations.payment.results"},
            engine={"max_concurrency": concurrency},
        )
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
        while engine.stats.outputs < events:
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
        run = watch.stop(engine.stats.outputs)
        stop.set()
        await task
        return run
