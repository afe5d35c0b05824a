"""Readiness, status and metrics of a running payments app, against real brokers and the sandbox.

The payments app runs in-process through the ``Runner`` with the API enabled, so what the API
reports is what the runner's engines and breakers hold.  The last test runs payments, webhooks
and bordereaux together and checks that every metric the shipped dashboard and alert rules
name is on the process's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.admin import apply
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors_dev.devbroker import BrokerKind, provide_broker
from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from processors_dev.sandbox.server import SandboxServer
from tests.bordereaux_oracle import generate
from tests.conftest import ROOT
from tests.integration.bordereaux_helpers import BOOK, publish_in_order
from tests.integration.helpers import publish
from tests.unit.test_deploy_monitoring import _referenced

pytestmark = pytest.mark.timeout(300)

TOKEN = "status-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BREAKER_OPEN = 'processors_endpoint_breaker_state{endpoint="payment-gateway",state="open"} 1.0'
BREAKER_CLOSED = 'processors_endpoint_breaker_state{endpoint="payment-gateway",state="closed"} 1.0'


def resilience_file(tmp_path: Path, *, open_s: float) -> Path:
    path = tmp_path / "resilience.yaml"
    path.write_text(
        "defaults:\n"
        "  circuit_breaker: {failure_threshold: 5, success_threshold: 3,"
        f" timeout_duration_seconds: {open_s}, half_open_requests: 3}}\n"
        "  retry: {max_attempts: 3, initial_delay_ms: 50, max_delay_ms: 500, multiplier: 2}\n"
        "  timeout: {connection_timeout_ms: 1000, read_timeout_ms: 5000, deadline_ms: 20000}\n"
    )
    return path


@contextlib.asynccontextmanager
async def running_payments_with_api(
    bootstrap: str,
    topics_file: Path,
    prefix: str,
    gateway_url: str,
    resilience: Path,
    *,
    topic_prefix: str | None = None,
    **api: Any,
) -> AsyncIterator[Runner]:
    """The payments app with the API; ``prefix`` names the group (and the topics, by default)."""
    settings = load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        payments={
            "gateway": {"base_url": gateway_url},
            "results_topic": f"{topic_prefix if topic_prefix is not None else prefix}"
            "integrations.payment.results",
        },
        api={"enabled": True, "port": 0, "auth_token": TOKEN, **api},
    )
    runner = Runner(settings, ["payments"], catalogue=load_catalogue(topics_file))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(60):
            while runner.api is None:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield runner
    finally:
        stop.set()
        await task


async def until(condition: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def test_readyz_follows_the_broker_down_and_back_up(
    client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A broker of this test's own: the session broker is shared and must keep running.
    broker = provide_broker(prefer=BrokerKind.APACHE)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, broker.start)
    try:
        bootstrap = broker.info.bootstrap_servers
        topics_file = ROOT / "topics.yaml"
        await loop.run_in_executor(
            None,
            lambda: apply(
                {"bootstrap.servers": bootstrap}, load_catalogue(topics_file), replication_factor=1
            ),
        )
        answers: list[tuple[int, Any]] = []

        async def readyz() -> tuple[int, Any]:
            assert runner.api is not None
            try:
                async with client.get(f"{runner.api.url}/readyz") as response:
                    answer = (response.status, await response.json())
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = (0, type(exc).__name__)
            answers.append(answer)
            return answer

        async def ready() -> bool:
            return (await readyz())[0] == 200

        async def unready() -> bool:
            return (await readyz())[0] == 503

        async with (
            SandboxServer() as sandbox,
            running_payments_with_api(
                bootstrap,
                topics_file,
                "readyz.",
                sandbox.url,
                resilience_file(tmp_path, open_s=30),
                topic_prefix="",
                broker_check_timeout_s=1.0,
                broker_check_cache_s=0.5,
            ) as runner,
        ):
            await until(ready, timeout_s=90, what="ready once the payments app has its partitions")

            await loop.run_in_executor(None, broker.pause_broker)
            await until(unready, timeout_s=60, what="unready while the broker is stopped")
            assert answers[-1] == (503, {"ready": False, "reasons": ["the Kafka broker is unreachable"]})

            await loop.run_in_executor(None, broker.resume_broker)
            await until(ready, timeout_s=120, what="ready again once the broker is back")
            assert answers[-1] == (200, {"ready": True})
    finally:
        await loop.run_in_executor(None, broker.stop)


async def test_the_breaker_shows_open_during_a_sandbox_outage_and_closed_after(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    client: aiohttp.ClientSession,
) -> None:
    topics_file, prefix = isolated_topics("[1s, 2s, 3s, 5s]")
    events = list(premium_due_stream(30, 10, seed=5))
    publish(kafka_bootstrap, f"{prefix}insurance.billing.events", events)
    async with (
        SandboxServer(gateway=GatewayConfig(outage=True)) as sandbox,
        running_payments_with_api(
            kafka_bootstrap, topics_file, prefix, sandbox.url, resilience_file(tmp_path, open_s=3)
        ) as runner,
    ):
        assert runner.api is not None
        base = runner.api.url
        seen: dict[str, Any] = {}

        async def status() -> dict[str, Any]:
            async with client.get(f"{base}/api/v1/status", headers=AUTH) as response:
                assert response.status == 200
                document: dict[str, Any] = await response.json()
                return document

        async def metrics() -> str:
            async with client.get(f"{base}/metrics", headers=AUTH) as response:
                assert response.status == 200
                return await response.text()

        async def breaker_is(state: str) -> bool:
            document = await status()
            endpoint = document["endpoints"].get("payment-gateway")
            if endpoint is not None and endpoint["state"] == state:
                seen[state] = document
                return True
            return False

        async def metrics_show(sample: str) -> bool:
            text = await metrics()
            if sample in text:
                seen[sample] = text
                return True
            return False

        await until(lambda: breaker_is("open"), timeout_s=90, what="breaker open in /api/v1/status")
        await until(lambda: metrics_show(BREAKER_OPEN), timeout_s=60, what="breaker open in /metrics")

        async def app_lag() -> dict[str, float]:
            """The payments group's lag per topic and partition (sources and retry tiers), from /metrics."""
            found = {}
            for line in (await metrics()).splitlines():
                if line.startswith('processors_consumer_lag{app="payments"'):
                    labels, _, value = line.rpartition(" ")
                    found[labels] = float(value)
            return found

        async def lag_held() -> bool:  # events wait behind the open breaker: not committed
            return any(value >= 1 for value in (await app_lag()).values())

        await until(lag_held, timeout_s=60, what="consumer lag of the payments group in /metrics")

        sandbox.gateway.update_config(outage=False)
        await until(lambda: breaker_is("closed"), timeout_s=90, what="breaker closed after the outage")

        async def all_processed() -> bool:
            return bool((await status())["apps"]["payments"]["processed"] >= len(events))

        await until(all_processed, timeout_s=120, what="every event processed after the outage")
        await until(lambda: metrics_show(BREAKER_CLOSED), timeout_s=30, what="breaker closed in /metrics")

        async def lag_cleared() -> bool:
            lag = await app_lag()
            return bool(lag) and all(value == 0 for value in lag.values())

        await until(lag_cleared, timeout_s=60, what="no consumer lag once every event is processed")

    during = seen["open"]
    endpoint = during["endpoints"]["payment-gateway"]
    assert endpoint["opened_count"] >= 1
    assert endpoint["total_failures"] >= 5
    assert endpoint["last_failure_at"] is not None
    assert endpoint["error_rate"] is not None
    assert endpoint["error_rate"] > 0
    app = during["apps"]["payments"]
    assert app["endpoints"] == ["payment-gateway"]
    assert app["assigned_partitions"], "the payments app had no partitions"
    assert app["group"] == f"{prefix}payments"
    assert during["ready"] is True
    text = seen[BREAKER_OPEN]
    assert 'processors_endpoint_breaker_state{endpoint="payment-gateway",state="closed"} 0.0' in text
    assert 'processors_endpoint_calls_total{endpoint="payment-gateway",outcome="failure"}' in text
    assert 'processors_app_assigned_partitions{app="payments"}' in text
    closed = seen["closed"]["endpoints"]["payment-gateway"]
    assert closed["last_success_at"] is not None


Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_scrape(text: str) -> Scrape:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value_of(found: Scrape, name: str, **labels: str) -> float:
    """The sample's value; 0 when the sample is absent (not yet there)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def tier_depths(found: Scrape, app: str) -> dict[str, float]:
    """``processors_retry_tier_depth`` of ``app`` by tier index."""
    return {
        dict(labels)["tier"]: value
        for (name, labels), value in found.items()
        if name == "processors_retry_tier_depth" and dict(labels)["app"] == app
    }


async def test_every_metric_the_dashboard_and_the_alerts_name_is_on_a_running_process(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    client: aiohttp.ClientSession,
) -> None:
    """Payments, webhooks (one healthy partner, one answering 503) and the exactly-once
    bordereaux loop in one process with the API, fed real events: the process exposes every
    metric the dashboard and the alert rules name, with the values the events imply."""
    topics_file, prefix = isolated_topics()
    wanted = set().union(*_referenced().values())
    secret = generate_secret().get_secret_value()
    async with SandboxServer() as gateway, PartnerSandbox() as partners:
        partners.add("ok", PartnerBehaviour(), [secret])
        partners.add("down", PartnerBehaviour(mode="error", status=503), [secret])
        settings = load_settings(
            bootstrap_servers=kafka_bootstrap,
            topics_file=topics_file,
            resilience_file=resilience_file(tmp_path, open_s=30),
            group_prefix=prefix,
            payments={
                "gateway": {"base_url": gateway.url},
                "results_topic": f"{prefix}integrations.payment.results",
            },
            webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
            bordereaux={"treaties_file": str(BOOK), "instance_id": f"metrics-{uuid.uuid4().hex[:6]}"},
            api={"enabled": True, "port": 0, "auth_token": TOKEN},
        )
        apps = ["payments", "webhooks", "bordereaux"]
        runner = Runner(settings, apps, catalogue=load_catalogue(topics_file))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(runner.run(stop, on_ready=ready.set))
        try:
            async with asyncio.timeout(120):
                while not ready.is_set():
                    if task.done():
                        task.result()  # start-up failed: raise its error
                    await asyncio.sleep(0.05)
            assert runner.api is not None
            base = runner.api.url
            subscriptions = {}
            for name in ("ok", "down"):
                body = {"url": partners.url(name), "events": ["premium.*"], "secret": secret}
                async with client.post(f"{base}/api/v1/webhooks", json=body, headers=AUTH) as answer:
                    assert answer.status == 201, await answer.text()
                    subscriptions[name] = (await answer.json())["id"]

            events = list(premium_due_stream(20, 5, seed=3))
            billing = f"{prefix}insurance.billing.events"
            publish(kafka_bootstrap, billing, events, raw=[(b"poison", b"not an event", [])])
            await asyncio.to_thread(publish_in_order, kafka_bootstrap, prefix, generate(11, 200))
            async with client.post(f"{base}/api/v1/inbound/payment-gateway", data=b"{}") as answer:
                assert answer.status in (400, 401, 503), await answer.text()

            latest: dict[str, Scrape] = {}

            async def scraped() -> Scrape:
                async with client.get(f"{base}/readyz") as answer:
                    await answer.read()  # readiness and the broker probe feed their gauges
                async with client.get(f"{base}/metrics", headers=AUTH) as answer:
                    assert answer.status == 200
                    latest["found"] = parse_scrape(await answer.text())
                return latest["found"]

            down = f"webhook:{subscriptions['down']}"

            def dead_lettered(found: Scrape, app: str) -> float:
                return sum(
                    value
                    for (name, labels), value in found.items()
                    if name == "processors_app_failures_total"
                    and dict(labels)["app"] == app
                    and dict(labels)["destination"] == "dead_letter"
                )

            def progress(found: Scrape) -> dict[str, float]:
                return {
                    "delivered to ok": value_of(found, "processors_webhook_deliveries_total",
                                                subscription=subscriptions["ok"], outcome="delivered"),
                    "breaker of down opened": value_of(found, "processors_endpoint_breaker_transitions_total",
                                                       endpoint=down, **{"from": "closed", "to": "open"}),
                    "bordereaux transactions": value_of(found, "processors_app_transactions_total",
                                                        app="bordereaux", outcome="committed"),
                    # the deliveries to the partner answering 503 wait in the tiers after the
                    # first (a tier partition paused for a record not due yet shows the records
                    # it had fetched: a lower bound)
                    "webhooks tier depth": sum(
                        depth for tier, depth in tier_depths(found, "webhooks").items() if tier != "0"
                    ),
                    # the poison record, read by both apps of the billing topic
                    "payments dead letters": dead_lettered(found, "payments"),
                    "webhooks dead letters": dead_lettered(found, "webhooks"),
                }  # fmt: skip

            async def complete() -> bool:
                found = await scraped()
                names = {name for name, _ in found}
                now = progress(found)
                return wanted <= names and (
                    now["delivered to ok"] >= len(events)
                    and now["breaker of down opened"] >= 1
                    and now["bordereaux transactions"] >= 1
                    and now["webhooks tier depth"] >= 1
                    and now["payments dead letters"] >= 1
                    and now["webhooks dead letters"] >= 1
                )

            try:
                await until(complete, timeout_s=180, what="every referenced metric on /metrics")
            except AssertionError:
                found = latest.get("found", {})
                names = {name for name, _ in found}
                lag = sorted(
                    (dict(labels)["app"], dict(labels)["topic"], dict(labels)["partition"], value)
                    for (name, labels), value in found.items()
                    if name == "processors_consumer_lag"
                )
                raise AssertionError(
                    f"missing from /metrics: {sorted(wanted - names)}; {progress(found)}; consumer lag: {lag}"
                ) from None
        finally:
            stop.set()
            await task

    found = latest["found"]
    # the partner answering 503 failed and none of its deliveries succeeded
    assert value_of(found, "processors_webhook_deliveries_total",
                    subscription=subscriptions["down"], outcome="failed") >= 5  # fmt: skip
    assert value_of(found, "processors_webhook_deliveries_total",
                    subscription=subscriptions["down"], outcome="delivered") == 0  # fmt: skip
    assert value_of(found, "processors_webhook_deliveries_overflow_total") == 0
    assert value_of(found, "processors_webhook_subscriptions_labelled") == 2
    # every tier of the webhooks app has a depth (never-committed partitions included)
    assert set(tier_depths(found, "webhooks")) == {str(index) for index in range(7)}
    # the poison record was dead-lettered by both apps that read the billing topic
    for app in ("payments", "webhooks"):
        assert dead_lettered(found, app) == 1, app
    # 2024 reporting periods are read in the present: the open regulatory day is long overdue
    assert value_of(found, "processors_bordereaux_period_close_lag_seconds",
                    app="bordereaux", calendar="regulatory") > 86_400  # fmt: skip
    assert value_of(found, "processors_app_transactions_total", app="bordereaux", outcome="aborted") == 0
