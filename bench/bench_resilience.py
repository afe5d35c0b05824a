"""Dead-letter replay against a plain copy of the same records, measured in the same run.

Stages, interleaved after a warm-up (medians of ``--rounds`` runs each), each over fresh topics:

* ``copy``: a plain consume-and-produce copy of the dead letters (the ceiling for moving records
  between topics);
* ``replay``: ``processors dlq replay`` of the same number of dead letters, with no rate limit.

The cost of the resilience layer on the payments happy path is measured by
``bench/bench_payments.py`` (stages ``payments`` and ``payments-bare``).
Usage::

    python bench/bench_resilience.py [--replay 5000] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import broker
from bench.harness import Comparison, Report, Run, interleaved, json_argument
from bench.replay import copy_stage, replay_stage


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replay", type=int, default=5_000, help="dead letters per run")
    json_argument(parser)
    args = parser.parse_args()

    with broker() as info:
        loop = asyncio.get_running_loop()

        async def copy() -> Run:
            return await loop.run_in_executor(None, copy_stage, info.bootstrap_servers, args.replay)

        async def replay() -> Run:
            return await loop.run_in_executor(None, replay_stage, info.bootstrap_servers, args.replay)

        runs = await interleaved({"copy": copy, "replay": replay}, rounds=args.rounds)
    Report(
        bench="dlq-replay",
        units={"copy": "record", "replay": "record"},
        runs=runs,
        comparisons=[Comparison("replay/copy", "replay", "copy")],
        notes=[f"{args.replay} dead letters per run, no rate limit"],
    ).emit(args.json)


if __name__ == "__main__":
    asyncio.run(main())
