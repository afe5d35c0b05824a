"""Payments throughput against its ceiling, measured in the same run.

* ceiling: the raw HTTP client (aiohttp, the transport behind the adapter seam) posting
  payments to the sandbox gateway at the same concurrency;
* pipeline: the payments app consuming ``premium.due`` from Kafka (key ordering on), calling the
  same sandbox endpoint through the adapter and its resilience layer, producing results and
  committing offsets.

The sandbox answers after ``--latency-ms`` (default 20 ms) and runs in its own process.
Usage::

    python bench/bench_payments.py [--events 20000] [--policies 1000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import broker, payments_rate, raw_http_rate, sandbox_process, wait_http


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--ceiling-requests", type=int, default=10_000)
    args = parser.parse_args()

    with broker() as info, sandbox_process(args.latency_ms) as url:
        await wait_http(url + "/_sandbox/health")
        ceiling = await raw_http_rate(url, requests=args.ceiling_requests, concurrency=args.concurrency)
        rate = await payments_rate(
            info, url, events=args.events, policies=args.policies, concurrency=args.concurrency
        )
    print(
        f"payments pipeline : {rate:8.0f} events/s  ({args.events} events, {args.policies} policies, key order)"
    )
    print(f"ceiling (aiohttp) : {ceiling:8.0f} req/s     (same sandbox, {args.concurrency} concurrent)")
    print(f"ratio             : {rate / ceiling:8.2f}         (target ≥ 0.70)")


if __name__ == "__main__":
    asyncio.run(main())
