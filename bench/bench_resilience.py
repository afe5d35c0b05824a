"""The cost of the resilience layer on the happy path, measured in the same run.

The payments pipeline runs twice over fresh topics against the same sandbox: once with its
endpoint guard (circuit breaker, in-place retry, per-message deadline, retry-topic routing
and the key-order gate) and once calling the gateway bare.  Prints both rates and the ratio;
then the dead-letter replay rate against a plain consume-and-produce copy of the same records
(the ceiling for moving records between topics), in the same run.

Usage::

    python bench/bench_resilience.py [--events 10000] [--replay 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import broker, payments_rate, sandbox_process, wait_http


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--replay", type=int, default=5_000, help="dead letters to replay (0: skip)")
    args = parser.parse_args()

    with broker() as info, sandbox_process(args.latency_ms) as url:
        await wait_http(url + "/_sandbox/health")
        common = {"events": args.events, "policies": args.policies, "concurrency": args.concurrency}
        bare = await payments_rate(info, url, resilience=False, **common)
        guarded = await payments_rate(info, url, resilience=True, **common)
        replay = None
        if args.replay:
            from bench.replay import replay_rates

            replay = await asyncio.get_running_loop().run_in_executor(
                None, replay_rates, info.bootstrap_servers, args.replay
            )
    print(f"with resilience    : {guarded:8.0f} events/s")
    print(f"without resilience : {bare:8.0f} events/s   (same run, same sandbox)")
    print(f"ratio              : {guarded / bare:8.2f}              (1.00 = no cost)")
    if replay is not None:
        rate, ceiling = replay
        print(f"dlq replay         : {rate:8.0f} records/s  ({args.replay} dead letters, no rate limit)")
        print(f"ceiling (copy)     : {ceiling:8.0f} records/s  (plain consume + produce of the same records)")
        print(f"ratio              : {rate / ceiling:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
