"""Payments throughput against its ceiling, measured in the same run.

* ceiling: the raw HTTP client (aiohttp, the transport behind the adapter seam) posting
  payments to the sandbox gateway at the same concurrency;
* pipeline: the payments app consuming ``premium.due`` from Kafka (key ordering on), calling the
  same sandbox endpoint through the adapter, producing results and committing offsets.

The sandbox answers after ``--latency-ms`` (default 20 ms) and runs in its own process.
Prints events/s, the ceiling and the ratio.  Usage::

    python bench/bench_payments.py [--events 20000] [--policies 1000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import aiohttp

from processors.adapters import jsonwire
from processors.devbroker import BrokerKind, provide_broker
from processors.runner import Runner
from processors.samples import premium_due_stream
from processors.settings import load_settings
from processors.topics.admin import apply
from processors.topics.catalogue import load_catalogue

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_http(url: str, timeout_s: float = 30) -> None:
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


async def ceiling(url: str, *, requests: int, concurrency: int) -> float:
    """Raw aiohttp requests/s against the sandbox payment endpoint."""
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

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - t0)


async def pipeline(
    bootstrap: str, url: str, overrides: dict[str, str], *, events: int, policies: int, concurrency: int
) -> float:
    from processors.demo import publish_events

    catalogue = load_catalogue()
    apply({"bootstrap.servers": bootstrap}, catalogue, replication_factor=1)
    loop = asyncio.get_running_loop()
    sample = list(premium_due_stream(events, policies, seed=int(time.time())))
    await loop.run_in_executor(None, lambda: publish_events(bootstrap, sample))
    settings = load_settings(
        bootstrap_servers=bootstrap,
        group_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        client_overrides={f"consumer.{k}": v for k, v in overrides.items()},
        payments={"gateway": {"base_url": url}},
        engine={"max_concurrency": concurrency},
    )
    runner = Runner(settings, ["payments"], catalogue=catalogue)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    while not runner.engines:
        await asyncio.sleep(0.01)
    engine = runner.engines[0]
    await engine.wait_assigned()
    t0 = time.perf_counter()
    # The topic may hold events from earlier runs: this group reads them all, so count ours by total.
    while engine.stats.outputs < events:
        await asyncio.sleep(0.02)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - t0
    done = engine.stats.outputs
    stop.set()
    await task
    return done / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--ceiling-requests", type=int, default=10_000)
    args = parser.parse_args()

    broker = provide_broker(allow=[BrokerKind.EXTERNAL, BrokerKind.DOCKER, BrokerKind.APACHE])
    info = broker.start()
    port = _free_port()
    sandbox = subprocess.Popen(  # fixed command
        [
            sys.executable,
            "-m",
            "processors.cli",
            "sandbox",
            "--port",
            str(port),
            "--latency-ms",
            str(args.latency_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(url + "/_sandbox/health")
        ceiling_rps = await ceiling(url, requests=args.ceiling_requests, concurrency=args.concurrency)
        rate = await pipeline(
            info.bootstrap_servers,
            url,
            info.client_overrides(),
            events=args.events,
            policies=args.policies,
            concurrency=args.concurrency,
        )
    finally:
        sandbox.terminate()
        sandbox.wait(10)
        broker.stop()
    print(
        f"payments pipeline : {rate:8.0f} events/s  ({args.events} events, {args.policies} policies, key order)"
    )
    print(f"ceiling (aiohttp) : {ceiling_rps:8.0f} req/s     (same sandbox, {args.concurrency} concurrent)")
    print(f"ratio             : {rate / ceiling_rps:8.2f}         (target ≥ 0.70)")


if __name__ == "__main__":
    asyncio.run(main())
