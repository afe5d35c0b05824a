"""Partner webhook fan-out against a real broker and real local partner receivers.

40 partners with overlapping subscriptions (one slow, one dead, one flaky, one answering 410)
receive 5,000 events.  Subscriptions are made through the HTTP API, events are published to
the input topics, and the webhooks app runs in a ``Runner`` with the API, like
``processors run webhooks --api``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.contract import Event
from processors.runner import Runner
from processors.settings import Settings, load_settings
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.subscriptions import filter_matches
from processors_dev.samples import mixed_events
from processors_dev.sandbox.partners import Partner, PartnerBehaviour, PartnerSandbox, closed_port_url
from tests.integration.helpers import Collector, header, publish, read_topics

# deliveries wait up to 1200 s, plus the lock's wait (one heavy test at a time)
pytestmark = pytest.mark.timeout(1800)

TOKEN = "fan-out-t0ken"
TIERS = "[1s, 2s, 3s, 5s, 10s, 20s, 10h]"
"""Deliveries that failed, or met an open breaker (30 s), come back within a minute; the dead
endpoint's end up waiting in the 10 h tier."""

FILTER_SETS: tuple[tuple[str, ...], ...] = (
    ("*",),
    ("policy.*",),
    ("claim.*",),
    ("policy.issued", "policy.cancelled", "claim.settled"),
    ("premium.due",),
    ("policy.*", "claim.paid"),
    ("claim.reported", "claim.reserved"),
    ("policy.endorsed", "premium.due", "claim.closed"),
)


def topic_of(event_type: str, prefix: str) -> str:
    family = {"policy": "policy", "premium": "billing", "claim": "claim", "customer": "customer"}
    return f"{prefix}insurance.{family[event_type.partition('.')[0]]}.events"


def seed_signature_ok(body: bytes, header: str, secret: str) -> bool:
    """The seed's verify_webhook_signature, written out again here."""
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", header)


def standard_signature_ok(body: bytes, headers: dict[str, str], secret: str) -> bool:
    """Standard Webhooks: HMAC-SHA256 over ``id.timestamp.body`` with the base64 key after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [part.partition(",")[2] for part in headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, sig) for sig in offered)


@dataclass
class Registered:
    name: str
    id: str
    secret: str
    events: tuple[str, ...]


class Api:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body, headers=self.headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def subscribe(self, name: str, url: str, events: Sequence[str], **extra: Any) -> Registered:
        status, body = await self.call(
            "POST", "/api/v1/webhooks", {"url": url, "events": list(events), **extra}
        )
        assert status == 201, body
        return Registered(name, body["id"], body["secret"], tuple(events))


RESILIENCE = """
endpoints:
  partner-webhooks:
    # A partner failing 30-40 % of the time must not open its breaker by chance in a test
    # (five failures in a row happen a few times in thousands of calls); a dead one still does.
    circuit_breaker: {failure_threshold: 25}
    retry: {max_attempts: 1}
    timeout: {read_timeout_ms: 15000, deadline_ms: 20000}
"""


def webhook_settings(kafka_bootstrap: str, topics_file: Path, prefix: str, **webhooks: Any) -> Settings:
    resilience = topics_file.with_name(f"{prefix}resilience.yaml")
    resilience.write_text(RESILIENCE)
    return load_settings(
        bootstrap_servers=kafka_bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True, **webhooks},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
    )


async def started(runner: Runner) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(runner.run(stop, on_ready=ready.set))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([task, waiter], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # start-up failed: raise its error
    assert waiter in done, "the runner did not get ready"
    return stop, task


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def all_received(partners: dict[str, tuple[Partner, set[str]]], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            for partner, expected in partners.values():
                await partner.wait_until(lambda p, want=expected: p.has_accepted(want))  # type: ignore[misc]
    except TimeoutError:
        missing = {
            name: len(expected - partner.accepted_ids())
            for name, (partner, expected) in partners.items()
            if not expected <= partner.accepted_ids()
        }
        raise AssertionError(f"deliveries still missing after {timeout_s} s: {missing}") from None


@pytest.mark.usefixtures("one_heavy_at_a_time")
async def test_forty_partners_five_thousand_events(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=TIERS)
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    events = list(mixed_events(5_000, 300, seed=5))
    dead_url = closed_port_url()

    async with PartnerSandbox() as sandbox:
        stop, task = await started(runner)
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            registered: list[Registered] = []
            specials = {
                "slow": (PartnerBehaviour(mode="slow", delay_ms=200), ("claim.settled",), {}),
                "flaky": (
                    PartnerBehaviour(mode="flaky", failure_rate=0.3, max_consecutive_failures=2, seed=3),
                    ("policy.*",),
                    {},
                ),
                "gone": (PartnerBehaviour(mode="gone"), ("*",), {"max_concurrency": 1}),
            }
            for i in range(40):
                name = f"p{i:02d}"
                if i < 36:
                    behaviour, events_filter, extra = (
                        PartnerBehaviour(),
                        FILTER_SETS[i % len(FILTER_SETS)],
                        {},
                    )
                elif i == 36:
                    registered.append(await api.subscribe("dead", dead_url, ("*",)))
                    continue
                else:
                    name = ("slow", "flaky", "gone")[i - 37]
                    behaviour, events_filter, extra = specials[name]
                secret = generate_secret().get_secret_value()
                sandbox.add(name, behaviour, [secret])
                sub = await api.subscribe(name, sandbox.url(name), events_filter, secret=secret, **extra)
                assert sub.secret == secret
                registered.append(sub)

            by_name = {r.name: r for r in registered}
            collector = Collector(kafka_bootstrap, [f"{prefix}integrations.webhook.endpoint-events"])
            for family in ("policy", "billing", "claim"):
                batch = [e for e in events if topic_of(e.event_type, prefix).endswith(f"{family}.events")]
                publish(kafka_bootstrap, f"{prefix}insurance.{family}.events", batch)

            def expected_for(sub: Registered, pool: Sequence[Event]) -> set[str]:
                return {
                    webhook_id_for(sub.id, str(e.event_id))
                    for e in pool
                    if any(filter_matches(f, e.event_type) for f in sub.events)
                }

            healthy = {
                r.name: (sandbox.partner(r.name), expected_for(r, events))
                for r in registered
                if r.name not in ("dead", "gone")
            }
            await all_received(healthy, timeout_s=1200)
            dead_id, gone_id = by_name["dead"].id, by_name["gone"].id
            await collector.wait_for(
                lambda _: any(json.loads(m.value())["subscription_id"] == gone_id for m in collector.on(
                    f"{prefix}integrations.webhook.endpoint-events")),
                timeout_s=60,
            )  # fmt: skip
            _, gone_view = await api.call("GET", f"/api/v1/webhooks/{gone_id}")
            _, listed = await api.call("GET", "/api/v1/webhooks")
        finally:
            stop.set()
            await task
        collector.close()

        # Every healthy partner got every matching event, and nothing else.
        total = 0
        for name, (partner, expected) in healthy.items():
            assert partner.accepted_ids() == expected, name
            total += len(expected)
        assert total > 40_000  # overlapping subscriptions: many deliveries per event
        # Each signature verifies with both independent verifiers.
        secrets = {r.name: r.secret for r in registered}
        checked = 0
        for name in healthy:
            for delivery in sandbox.partner(name).received():
                assert delivery.body is not None
                assert delivery.headers is not None
                assert seed_signature_ok(
                    delivery.body, delivery.headers["x-webhook-signature"], secrets[name]
                )
                assert standard_signature_ok(delivery.body, delivery.headers, secrets[name])
                assert delivery.headers["webhook-id"] == json.loads(delivery.body)["webhook_id"]
                checked += 1
        assert checked >= total
        # The flaky partner was retried through the tiers, with the same webhook-id each time.
        flaky = sandbox.partner("flaky")
        assert flaky.duplicates_count > 0 or flaky.received_count > len(flaky.accepted_ids())
        # The 410 endpoint got one request and was disabled, with a notice.
        gone = sandbox.partner("gone")
        assert gone.received_count == 1
        assert gone_view["active"] is False
        assert "410" in (gone_view["disabled_reason"] or "")
        # The dead endpoint's deliveries wait in its retry tiers; nobody else's do.
        deliveries = f"{prefix}integrations.webhook.deliveries"
        log_lines = [json.loads(m.value()) for m in read_topics(kafka_bootstrap, [deliveries])]
        dead_lines = [line for line in log_lines if line["subscription_id"] == dead_id]
        assert dead_lines
        assert all(line["status"] == "failed" for line in dead_lines)
        assert {line["next"] for line in dead_lines} == {"retry"}
        tiers = [t.topic for t in runner.catalogue.app("webhooks").retry_tiers]
        in_tiers = {
            header(m, "x-webhook-id") for m in read_topics(kafka_bootstrap, tiers)
            if header(m, "x-subscription-id") == dead_id
        }  # fmt: skip
        assert in_tiers == expected_for(by_name["dead"], events)
        dlq = read_topics(kafka_bootstrap, [runner.catalogue.app("webhooks").dlq])
        assert not [m for m in dlq if header(m, "x-subscription-id") == dead_id]
        # Secrets never appear in logs, the delivery log, the listing, or the subscriptions topic.
        raw_subscriptions = [
            m.value() or b""
            for m in read_topics(kafka_bootstrap, [f"{prefix}integrations.webhook.subscriptions"])
        ]
        everything = (
            caplog.text
            + json.dumps(listed)
            + json.dumps(gone_view)
            + "\n".join(json.dumps(line) for line in log_lines)
            + b"\n".join(raw_subscriptions).decode("utf-8", "replace")
        )
        for secret in secrets.values():
            assert secret not in everything
            assert secret.removeprefix("whsec_") not in everything
