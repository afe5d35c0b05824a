"""How long the partitions of a killed payments instance stay idle before another takes them.

Two ``processors run payments`` processes share the group; events flow at a steady rate over
every partition; one process is killed with SIGKILL (no goodbye to the group).  For each source
partition the bench records the last result before the kill and the first after it: the gap of
the killed instance's partitions is the failover time (the survivor's own partitions show none).
Every event must still get its result.  ``--session-timeout-ms`` sets the consumers'
``session.timeout.ms`` (default: the processors' own, 6 s) to compare with, say, 45,000.

Usage::

    python bench/bench_failover.py [--rate 200] [--seconds 40] [--session-timeout-ms N] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import confluent_kafka

from bench.common import broker, isolated_catalogue, sandbox_process, wait_http
from bench.harness import environment
from processors.contract import Codec, ContentType, LocalSchemaIds
from processors_dev.samples import premium_due_stream
from tests.integration.helpers import sandbox_env, start_processor

CODEC = Codec(LocalSchemaIds())


def _publish_paced(bootstrap: str, topic: str, rate: float, seconds: float, sent: list[str]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    events = premium_due_stream(int(rate * seconds), 600, seed=int(time.time()))
    started = time.monotonic()
    for index, event in enumerate(events):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        value, headers = CODEC.encode(event, ContentType.AVRO)
        producer.produce(topic, key=event.subject.encode(), value=value, headers=headers)
        producer.poll(0)
        sent.append(str(event.event_id))
    producer.flush(30)


def _watch(bootstrap: str, topic: str, stop: threading.Event, arrivals: list[tuple[float, int, str]]) -> None:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"failover-watch-{os.getpid()}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        while not stop.is_set():
            for msg in consumer.consume(500, 0.05):
                if msg.error() is None:
                    event = CODEC.decode(msg.value(), msg.headers())
                    source = str(getattr(event.data, "source_event_id", ""))
                    # when the result was written (its timestamp), not when this watcher read it
                    arrivals.append((msg.timestamp()[1] / 1000, msg.partition() or 0, source))
    finally:
        consumer.close()


def _both_assigned(bootstrap: str, group: str, timeout_s: float = 120) -> None:
    """Wait until the group has two members and each holds partitions (a stable group)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
        except Exception:  # not created yet, coordinator loading: ask again
            time.sleep(0.5)
            continue
        members = described.members or []
        if len(members) == 2 and all(m.assignment.topic_partitions for m in members):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{group} did not settle with two members holding partitions")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long events flow")
    parser.add_argument("--kill-after-s", type=float, default=12.0)
    parser.add_argument("--session-timeout-ms", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with broker() as info, sandbox_process(20) as url, tempfile.TemporaryDirectory() as tmp:
        await wait_http(url + "/_sandbox/health")
        _catalogue, topics_file, prefix = isolated_catalogue(info.bootstrap_servers, Path(tmp))
        billing = f"{prefix}insurance.billing.events"
        results = f"{prefix}integrations.payment.results"
        env = sandbox_env(prefix, topics_file, info.bootstrap_servers, url)
        env["PROCESSORS_LOG_LEVEL"] = "WARNING"
        if args.session_timeout_ms is not None:
            overrides = {
                "consumer.session.timeout.ms": str(args.session_timeout_ms),
                "consumer.heartbeat.interval.ms": str(max(1000, args.session_timeout_ms // 3)),
            }
            env["PROCESSORS_CLIENT_OVERRIDES"] = json.dumps(overrides)
        logs = Path(os.environ.get("FAILOVER_LOGS", tmp))
        first = start_processor(env, "run", "payments", log_path=logs / "a.log")
        second = start_processor(env, "run", "payments", log_path=logs / "b.log")
        stop = threading.Event()
        arrivals: list[tuple[float, int, str]] = []
        sent: list[str] = []
        watcher = threading.Thread(target=_watch, args=(info.bootstrap_servers, results, stop, arrivals))
        watcher.start()
        publisher = threading.Thread(
            target=_publish_paced, args=(info.bootstrap_servers, billing, args.rate, args.seconds, sent)
        )
        try:
            await asyncio.to_thread(_both_assigned, info.bootstrap_servers, f"{prefix}payments")
            publisher.start()
            await asyncio.sleep(args.kill_after_s)
            killed_at = time.time()
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            await asyncio.to_thread(publisher.join)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not set(sent) <= {source for _, _, source in arrivals}:
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            second.send_signal(signal.SIGTERM)
            second.wait(60)
            watcher.join(30)

    missing = set(sent) - {source for _, _, source in arrivals}
    gaps: dict[int, float] = {}
    for partition in sorted({p for _, p, _ in arrivals}):
        times = sorted(t for t, p, _ in arrivals if p == partition)
        before = [t for t in times if t <= killed_at]
        after = [t for t in times if t > killed_at]
        if before and after:
            gaps[partition] = after[0] - max(before[-1], killed_at - 0.0)
    failover = max(gaps.values(), default=float("nan"))
    report = {
        "bench": "failover",
        "ratios": {},
        "stages": {},
        "figures": {
            "failover_s": round(failover, 2),
            "events": len(sent),
            "results_missing": len(missing),
            "session_timeout_ms": args.session_timeout_ms or 6000,
        },
        "targets": {"failover_s": "< 10"},
        "gaps_s_by_partition": {str(p): round(g, 2) for p, g in gaps.items()},
        "environment": environment(),
    }
    print(f"== failover (SIGKILL of one of two payments instances, {args.rate:.0f} events/s)")
    for partition, gap in sorted(gaps.items()):
        print(f"  partition {partition}: idle {gap:6.2f} s after the kill")
    print(f"  failover: {failover:.2f} s (target < 10)   events {len(sent)}, results missing {len(missing)}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
