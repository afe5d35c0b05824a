"""Payments throughput and CPU against the raw HTTP client, measured in the same run.

Stages, run interleaved after a warm-up (medians of ``--rounds`` runs each):

* ``ceiling``: the raw HTTP client (aiohttp, the transport behind the adapter seam) posting
  payments to the sandbox gateway at the same concurrency;
* ``payments``: the payments app consuming ``premium.due`` from Kafka (key ordering on), calling
  the same sandbox endpoint through the adapter and its resilience layer (breaker, in-place
  retry, deadline, retry-topic routing, key-order gate), producing results, committing offsets;
* ``payments-floor``: the stripped prototype of the app (``bench/floor_payments.py``): the
  cheapest code that keeps the same guarantees and does nothing else (consumer group with
  manual commits past acknowledged work only, key order, the product's codec, one POST per
  event with the adapter's request under deadline, in-place retry and a minimal breaker,
  result, answered-id marker and redacted audit record per attempt), with the product's
  librdkafka settings, on the same input, timed the same way;
* ``payments-bare``: the payments app calling the gateway with no resilience layer (no breaker,
  retry or deadline; its one attempt is audited as every call is, so ``resilience on/off``
  measures the resilience layer and not the audit trail);
* ``payments-eos``: the same app with exactly-once output (results, answered-id markers and
  offsets in Kafka transactions; ``PROCESSORS_ENGINE__EXACTLY_ONCE``);
* ``payments-traced``: the same app with OpenTelemetry tracing on (spans batched to an exporter
  that drops them).  ``payments`` runs with tracing off, the default: its ratio is the one a
  deployment without a collector gets.

Ratios: payments against the ceiling (throughput and CPU per unit, target ≥ 0.70 each); the
product against its floor (``payments/floor``: payments against payments-floor, target ≥ 0.90
each, i.e. the product within 10 % of the prototype's throughput and CPU per event, both paying
for the same guarantees); the resilience layer's cost (payments against payments-bare, target
≥ 0.90); the cost of exactly-once output (payments-eos against payments; no target, reported),
and of tracing (payments-traced against payments; reported).  The ceiling is bound by latency
(``--concurrency`` × ``--latency-ms`` caps it) while the pipeline is bound by CPU, so the
throughput ratio moves with the machine's speed; the CPU ratio does not.

The sandbox answers after ``--latency-ms`` (default 20 ms) and runs in its own process.
Usage::

    python bench/bench_payments.py [--events 20000] [--policies 1000] [--concurrency 64] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import broker, payments_rate, production_logging, raw_http_rate, sandbox_process, wait_http
from bench.floor_payments import payments_floor_rate
from bench.harness import Comparison, Report, interleaved, json_argument


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--ceiling-requests", type=int, default=10_000)
    json_argument(parser)
    args = parser.parse_args()
    logging_note = production_logging()

    with broker() as info, sandbox_process(args.latency_ms) as url:
        await wait_http(url + "/_sandbox/health")
        common = {"events": args.events, "policies": args.policies, "concurrency": args.concurrency}
        runs = await interleaved(
            {
                "ceiling": lambda: raw_http_rate(
                    url, requests=args.ceiling_requests, concurrency=args.concurrency
                ),
                "payments": lambda: payments_rate(info, url, resilience=True, **common),
                "payments-floor": lambda: payments_floor_rate(info, url, **common),
                "payments-bare": lambda: payments_rate(info, url, resilience=False, **common),
                "payments-eos": lambda: payments_rate(info, url, exactly_once=True, **common),
                "payments-traced": lambda: payments_rate(info, url, traced=True, **common),
            },
            rounds=args.rounds,
        )
    Report(
        bench="payments",
        units={
            "ceiling": "request",
            "payments": "event",
            "payments-floor": "event",
            "payments-bare": "event",
            "payments-eos": "event",
            "payments-traced": "event",
        },
        runs=runs,
        comparisons=[
            Comparison("payments/ceiling", "payments", "ceiling", target=0.70),
            Comparison("payments/floor", "payments", "payments-floor", target=0.90),
            Comparison("resilience on/off", "payments", "payments-bare", target=0.90),
            Comparison("exactly-once/at-least-once", "payments-eos", "payments"),
            Comparison("tracing on/off", "payments-traced", "payments"),
        ],
        notes=[
            logging_note,
            f"{args.events} events over {args.policies} policies, key order, {args.concurrency} concurrent, "
            f"sandbox latency {args.latency_ms} ms; ceiling capped at "
            f"{args.concurrency * 1000 // max(1, args.latency_ms):,} req/s by latency",
        ],
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
