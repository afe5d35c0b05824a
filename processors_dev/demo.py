"""``processors demo``: the whole path on embedded defaults, with a live view.

A broker (``$KAFKA_BOOTSTRAP_SERVERS`` if set, else the embedded one), the topics of
``topics.yaml``, the sandbox payment gateway, the payments app, a few hundred ``premium.due``
events (some declined, some pending) plus four invalid messages; then every result and dead
letter as it arrives, a summary, and exit 0 only if every event is accounted for and the
gateway charged each idempotency key exactly once.

Alongside, the webhooks app delivers the same events to three sandbox partners (healthy,
slow, and one answering 410 Gone); the summary shows what each received and that the 410
endpoint was disabled at its first request.

And the reinsurance path (``processors_dev.demo_bordereaux``): sample policy and claim events become
premium and claims bordereaux at the sandbox reinsurer and daily regulatory files on the
sandbox SFTP regulator.  The embedded broker commits transactions but does not honour aborts;
exactly-once across crashes needs Apache Kafka (``docs/bordereaux.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import confluent_kafka

from processors.contract import (
    Codec,
    ContentType,
    Event,
    LocalSchemaIds,
    PaymentCompleted,
    PaymentResultData,
)
from processors.runtime.failures import H
from processors.runtime.message import header_value
from processors_dev.samples import premium_due_stream

__all__ = ["POISON", "poison_records", "publish_events", "publish_samples", "run_demo"]

BILLING = "insurance.billing.events"
POLICY = "insurance.policy.events"
CLAIMS = "insurance.claim.events"
RESULTS = "integrations.payment.results"
DLQ = "integrations.payments.dlq"

_GREEN, _RED, _YELLOW, _DIM, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def _c(color: str, text: str) -> str:
    return f"{color}{text}{_RESET}" if sys.stdout.isatty() else text


def poison_records() -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """(key, value, headers) of four invalid inputs, one of each kind the contract refuses."""
    valid = next(premium_due_stream(1, 1, seed=99))
    good = json.loads(Codec(LocalSchemaIds()).encode(valid, ContentType.JSON)[0])
    missing = dict(good)
    missing["data"] = {k: v for k, v in good["data"].items() if k != "instalment_id"}
    five_decimals = dict(good)
    five_decimals["data"] = {**good["data"], "amount": "1185.12345"}
    unknown = {**good, "event_type": "policy.teleported"}
    json_h = [("content-type", b"application/json")]
    key = valid.subject.encode()
    return [
        (b"POISON-GARBAGE", b"\x00\x00\xff\xfe not an event at all", []),
        (key, json.dumps(unknown).encode(), json_h),
        (key, json.dumps(missing).encode(), json_h),
        (key, json.dumps(five_decimals).encode(), json_h),
    ]


POISON = 4


def publish_events(
    bootstrap: str,
    events: Iterable[Event],
    *,
    fmt: str = "avro",
    extra: Iterable[tuple[bytes, bytes, Any]] = (),
    topic: str = BILLING,
) -> int:
    codec = Codec(LocalSchemaIds())
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    content_type = ContentType.AVRO if fmt == "avro" else ContentType.JSON
    count = 0
    for event in events:
        value, headers = codec.encode(event, content_type)
        producer.produce(topic, key=event.subject.encode(), value=value, headers=list(headers))
        producer.poll(0)
        count += 1
    for key, value, headers in extra:
        producer.produce(topic, key=key, value=value, headers=headers or None)
        count += 1
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} events not acknowledged by the broker")
    return count


def publish_samples(bootstrap: str, *, count: int, policies: int, fmt: str = "avro") -> int:
    return publish_events(bootstrap, premium_due_stream(count, policies), fmt=fmt)


async def run_demo(
    *, events: int = 300, policies: int = 60, broker: str = "auto", serve: bool = False
) -> int:
    from processors.bordereaux.treaties import load_treaty_book
    from processors.runner import Runner
    from processors.settings import load_settings
    from processors.topics.admin import apply
    from processors.topics.catalogue import load_catalogue
    from processors_dev import demo_bordereaux, demo_portal
    from processors_dev.devbroker import BrokerKind, provide_broker
    from processors_dev.sandbox.gateway import GatewayConfig
    from processors_dev.sandbox.partners import PartnerSandbox
    from processors_dev.sandbox.reinsurer import ReinsurerConfig
    from processors_dev.sandbox.server import SandboxServer
    from processors_dev.sandbox.sftp import SftpRegulator

    t0 = time.monotonic()
    if broker == "auto":
        prefer = BrokerKind.EXTERNAL if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else BrokerKind.EMBEDDED
    else:
        prefer = BrokerKind(broker)
    print(_c(_DIM, f"starting the {prefer.value} Kafka broker…"))
    loop = asyncio.get_running_loop()
    dev = provide_broker(prefer=prefer)
    info = await loop.run_in_executor(None, dev.start)
    stack = contextlib.ExitStack()
    try:
        bootstrap = info.bootstrap_servers
        print(f"broker      {info.kind.value} at {bootstrap}")
        catalogue = load_catalogue()
        changes = await loop.run_in_executor(
            None, lambda: apply({"bootstrap.servers": bootstrap}, catalogue, replication_factor=1)
        )
        print(f"topics      {len(catalogue.topics)} in topics.yaml, {len(changes)} changes applied")
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="processors-demo-"))
        treaties = demo_bordereaux.treaties_file()
        book = load_treaty_book(treaties)
        ceded = demo_bordereaux.sample()
        expected_reinsurance = await loop.run_in_executor(None, demo_bordereaux.expected, ceded, book)
        async with (
            SandboxServer(
                gateway=GatewayConfig(latency_ms=10, seed=1), reinsurer=ReinsurerConfig(seed=1)
            ) as sandbox,
            PartnerSandbox() as partners,
            SftpRegulator(Path(workdir) / "regulator") as regulator,
        ):
            print(f"sandbox     payment gateway and reinsurer at {sandbox.url}")
            print(f"sandbox     regulator SFTP at {regulator.host}:{regulator.port}")
            overrides = {f"consumer.{k}": v for k, v in info.client_overrides().items()}
            api, portal, token = demo_portal.api_settings(Path(workdir))
            settings = load_settings(
                api=api,
                portal=portal,
                bootstrap_servers=bootstrap,
                client_overrides=overrides,
                payments={"gateway": {"base_url": sandbox.url}},
                # The demo's slow partner may have every event waiting at once: no deferral.
                webhooks={"allow": ["127.0.0.1/32"], "ephemeral_key": True, "max_waiting_per_endpoint": 1000},
                bordereaux={"treaties_file": str(treaties), "instance_id": f"demo-{os.getpid()}"},
                reinsurance={"reinsurer": {"base_url": sandbox.url}},
                regulatory={
                    "outbox_dir": str(Path(workdir) / "outbox"),
                    "sftp": {
                        "host": regulator.host,
                        "port": regulator.port,
                        "known_host_key": regulator.host_key_line,
                    },
                },
            )
            stop = asyncio.Event()
            runner = Runner(
                settings,
                ["payments", "webhooks", "bordereaux", "bordereaux-delivery", "regulatory"],
                catalogue=catalogue,
            )
            ready = asyncio.Event()
            run_task = asyncio.create_task(runner.run(stop, on_ready=ready.set))
            await _until_ready(ready, run_task)
            assert runner.api is not None  # the settings enable it
            behaviours = {name: (behaviour, events) for name, behaviour, events in DEMO_PARTNERS}
            portal_demo = await demo_portal.register_partners(runner.api.url, token, partners, behaviours)
            print(f"portal      {runner.api.url}/portal")
            for name, key in portal_demo.keys.items():
                print(f"key         {name:<17} {key}  (shown once)")
            mix = {"ok": 0.85, "declined": 0.07, "expired": 0.03, "pending": 0.05}
            sample = list(premium_due_stream(events, policies, seed=2024, token_mix=mix))
            sent = await loop.run_in_executor(
                None, lambda: publish_events(bootstrap, sample, extra=poison_records())
            )
            print(f"published   {sent} records to {BILLING} ({events} premium.due + {POISON} invalid)")
            policy = [e for e in ceded if e.event_type.startswith("policy.")]
            claims = [e for e in ceded if e.event_type.startswith("claim.")]
            await loop.run_in_executor(None, lambda: publish_events(bootstrap, policy, topic=POLICY))
            await loop.run_in_executor(None, lambda: publish_events(bootstrap, claims, topic=CLAIMS))
            # The slow partner takes every event type ("*"): the policy and claim events too.
            expected_deliveries = {"acme-brokers": events, "slow-reinsurer": events + len(ceded)}
            print(
                f"published   {len(policy)} policy and {len(claims)} claim events over "
                f"{demo_bordereaux.DEMO_MONTHS} months ({len(book.treaties)} treaties in {treaties})\n"
            )
            seen = await loop.run_in_executor(
                None, _watch, bootstrap, events, POISON, info.client_overrides()
            )
            partners_ok = await _await_partners(partners, expected_deliveries, runner)
            reinsurance_ok = await demo_bordereaux.wait_for(
                expected_reinsurance, lambda: sandbox.reinsurer.reports, regulator.received
            )
            portal_ok = await demo_portal.show_portal(portal_demo)

            def summaries() -> bool:
                charges = sandbox.gateway.charges_by_key
                reports, files = dict(sandbox.reinsurer.reports), regulator.received()
                ok = _summary(seen, sample, charges, time.monotonic() - t0)
                ok = _partners_summary(partners, expected_deliveries) and partners_ok and ok
                ok = demo_bordereaux.summary(expected_reinsurance, reports, files) and reinsurance_ok and ok
                return portal_ok and ok

            if serve:  # the summary first, then the portal stays up until Ctrl-C
                ok = summaries()
                await demo_portal.serve_until_interrupted(portal_demo)
            stop.set()
            await run_task
            if not serve:  # counted once every app has stopped: a late charge would show
                ok = summaries()
        return 0 if ok else 1
    finally:
        stack.close()
        await loop.run_in_executor(None, dev.stop)


def _watch(
    bootstrap: str, expected_results: int, expected_dlq: int, overrides: dict[str, str]
) -> dict[str, Any]:
    """Print results and dead letters as they arrive, until all are in or 180 s pass."""
    codec = Codec(LocalSchemaIds())
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"demo-view-{os.getpid()}-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **overrides,
    }
    consumer = confluent_kafka.Consumer(conf)
    consumer.subscribe([RESULTS, DLQ])
    results: Counter[str] = Counter()
    dead: list[tuple[str, str]] = []
    events: list[Event] = []
    deadline = time.monotonic() + 180
    try:
        while (
            sum(results.values()) < expected_results or len(dead) < expected_dlq
        ) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            headers: Any = msg.headers()
            if msg.topic() == DLQ:
                reason = header_value(headers, H.ERROR_MESSAGE) or "?"
                cls = header_value(headers, H.ERROR_CLASS) or "?"
                dead.append((cls, reason))
                print(_c(_RED, f"  ✖ dead letter  {cls:<18} {reason}"))
                continue
            event = codec.decode(msg.value(), headers)
            events.append(event)
            results[event.event_type] += 1
            data: Any = event.data
            amount = f"{data.amount:>10} {data.currency}"
            if event.event_type == "payment.completed":
                print(_c(_GREEN, f"  ✔ {event.subject}  {data.reference_id:<22} {amount}  {data.payment_id}"))
            elif event.event_type == "payment.pending":
                print(
                    _c(
                        _YELLOW,
                        f"  … {event.subject}  {data.reference_id:<22} {amount}  pending confirmation",
                    )
                )
            else:
                print(
                    _c(
                        _RED,
                        f"  ✖ {event.subject}  {data.reference_id:<22} {amount}  "
                        f"declined: {data.decline_code}",
                    )
                )
    finally:
        consumer.close()
    return {"results": results, "dead": dead, "events": events}


def _summary(seen: dict[str, Any], sample: list[Event], charges: dict[str, int], elapsed_s: float) -> bool:
    results: Counter[str] = seen["results"]
    dead: list[tuple[str, str]] = seen["dead"]
    events: list[Event] = seen["events"]
    payments = [e.data for e in events if isinstance(e.data, PaymentResultData)]
    by_source = {d.source_event_id for d in payments}
    missing = [e for e in sample if e.event_id not in by_source]
    over_charged = {k: n for k, n in charges.items() if n != 1}
    charged = sum((d.amount for d in payments if isinstance(d, PaymentCompleted)), Decimal("0"))
    print("\nsummary")
    print(f"  premium.due published      {len(sample)}")
    for kind in ("payment.completed", "payment.failed", "payment.pending"):
        print(f"  {kind:<26} {results.get(kind, 0)}")
    print(f"  dead letters               {len(dead)}")
    print(f"  collected (completed)      {charged} USD")
    print(f"  gateway charges            {sum(charges.values())} over {len(charges)} idempotency keys")
    print(f"  events without a result    {len(missing)}")
    print(f"  keys charged more than once {len(over_charged)}")
    print(f"  elapsed                    {elapsed_s:.1f} s")
    ok = not missing and not over_charged and len(dead) == POISON
    print(_c(_GREEN, "\nall events accounted for") if ok else _c(_RED, "\nsomething is missing: see above"))
    return ok


DEMO_PARTNERS = (
    # name, behaviour, event filters
    ("acme-brokers", {"mode": "healthy", "delay_ms": 5}, ("premium.*",)),
    ("slow-reinsurer", {"mode": "slow", "delay_ms": 50}, ("*",)),
    ("moved-partner", {"mode": "gone"}, ("premium.due",)),
)


async def _until_ready(ready: asyncio.Event, run_task: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait({waiter, run_task}, return_when=asyncio.FIRST_COMPLETED)
    if run_task.done():
        run_task.result()  # start-up failed: raise its error
    waiter.cancel()


async def _await_partners(partners: Any, expected: dict[str, int], runner: Any) -> bool:
    """Wait (at most 60 s) until the healthy and slow partners have every event they subscribed to."""
    try:
        async with asyncio.timeout(60):
            for name, count in expected.items():
                await partners.partner(name).wait_until(lambda p, n=count: len(p.accepted_ids()) >= n)
    except TimeoutError:
        return False
    return True


def _partners_summary(partners: Any, expected: dict[str, int]) -> bool:
    print("\npartner webhooks (signed; partners de-duplicate on webhook-id)")
    ok = True
    for name, behaviour, _ in DEMO_PARTNERS:
        partner = partners.partner(name)
        accepted = len(partner.accepted_ids())
        note = ""
        if behaviour["mode"] == "gone":
            note = "answered 410 Gone: endpoint disabled after its first request"
            ok = ok and partner.received_count == 1
        else:
            note = "every signature verified" if partner.invalid_signatures == 0 else "BAD SIGNATURES"
            ok = ok and accepted == expected[name] and partner.invalid_signatures == 0
        print(f"  {name:<18} {accepted:>4} delivered  {partner.received_count:>4} requests  {note}")
    return ok
