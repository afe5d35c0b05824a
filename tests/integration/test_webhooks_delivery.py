"""Partner webhook delivery, one behaviour at a time, against a real broker and real receivers.

Per-entity order through failures, the SSRF guard at registration and at delivery (including a
redirect towards an internal address), secret rotation, and an operator's recovery after a
410 disabled an endpoint.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from processors.runner import Runner
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import StoredSecret, generate_secret
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.subscriptions import Subscription
from processors.webhooks.verify import verify_webhook
from processors_dev.samples import mixed_events
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from tests.integration.helpers import Collector, header, publish, read_topics
from tests.integration.test_webhooks_fanout import TIERS, Api, started, webhook_settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Internal:
    """An 'internal' HTTP service on 127.0.0.2 that must never be reached."""

    def __init__(self) -> None:
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Internal:
        async def handle(_request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="secret internal data")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.2", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.2:{port}/latest/meta-data"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_ordered_subscription_keeps_entity_order_while_the_partner_fails(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], session: aiohttp.ClientSession
) -> None:
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=TIERS)
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    events = [e for e in mixed_events(1_000, 20, seed=9) if e.event_type.startswith("policy.")][:200]
    secret = generate_secret().get_secret_value()
    flaky = PartnerBehaviour(mode="flaky", failure_rate=0.3, max_consecutive_failures=2, seed=21)
    async with PartnerSandbox() as sandbox:
        partner = sandbox.add("ordered", flaky, [secret])
        stop, task = await started(runner)
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            sub = await api.subscribe(
                "ordered", sandbox.url("ordered"), ["policy.*"], secret=secret, ordered=True
            )
            publish(kafka_bootstrap, f"{prefix}insurance.policy.events", events)
            expected = {webhook_id_for(sub.id, str(e.event_id)) for e in events}
            async with asyncio.timeout(240):
                await partner.wait_until(lambda p: p.has_accepted(expected))
        finally:
            stop.set()
            await task

    assert partner.by_status.get(503, 0) > 20  # the partner really failed, often
    position = {webhook_id_for(sub.id, str(e.event_id)): i for i, e in enumerate(events)}
    arrived: dict[str, list[int]] = {}
    for delivery in sorted(partner.accepted(), key=lambda d: d.seq):
        assert delivery.webhook_id is not None
        assert delivery.body is not None
        entity = json.loads(delivery.body)["data"]["policy_id"]
        arrived.setdefault(entity, []).append(position[delivery.webhook_id])
    assert len(arrived) > 10
    for entity, order in arrived.items():
        # Accepted once each, in publication order (a duplicate would show as a repeat).
        assert order == sorted(order), entity
        assert len(order) == len(set(order)), entity


def _private_hostname() -> str | None:
    name = socket.gethostname()
    try:
        address = ipaddress.ip_address(socket.gethostbyname(name))
    except OSError:
        return None
    return name if (address.is_private or address.is_loopback) else None


async def test_registration_refuses_internal_addresses_with_an_empty_allow_list(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], session: aiohttp.ClientSession
) -> None:
    topics_file, prefix = isolated_topics()
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix, allow=[])
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    refused = [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "http://localhost/hook",
    ]
    hostname = _private_hostname()
    if hostname is not None:
        refused.append(f"http://{hostname}:8080/hook")  # resolves to a private or loopback address
    stop, task = await started(runner)
    try:
        assert runner.api is not None
        api = Api(runner.api.url, session)
        for url in refused:
            status, body = await api.call("POST", "/api/v1/webhooks", {"url": url, "events": ["policy.*"]})
            assert status == 422, (url, body)
            assert body["message"], url
        status, listing = await api.call("GET", "/api/v1/webhooks")
    finally:
        stop.set()
        await task
    assert status == 200
    assert listing["count"] == 0


async def test_delivery_refuses_internal_addresses_and_does_not_follow_redirects(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]]
) -> None:
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=TIERS)
    # Only the partner sandbox's address is allowed; 127.0.0.2 (the internal service) is not.
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix, allow=["127.0.0.1/32"])
    catalogue = load_catalogue(topics_file)
    runner = Runner(settings, ["webhooks"], catalogue=catalogue)
    secret = generate_secret().get_secret_value()
    deliveries = f"{prefix}integrations.webhook.deliveries"
    async with Internal() as internal, PartnerSandbox() as sandbox:
        sandbox.add("mover", PartnerBehaviour(mode="redirect", redirect_to=internal.url), [secret])
        stop, task = await started(runner)
        try:
            app = runner.engines[0].processor
            store = app.store  # type: ignore[attr-defined]
            box = app.box  # type: ignore[attr-defined]

            def stored(sub_id: str) -> StoredSecret:
                return StoredSecret(box.encrypt(secret, associated=sub_id), created_at=datetime.now(UTC))

            # Written straight to the table, as if the address had changed after registration.
            direct = Subscription.create(
                id="ep_" + "1" * 24,
                url=internal.url,
                events=["policy.issued"],
                secrets=[stored("ep_" + "1" * 24)],
            )
            redirected = Subscription.create(
                id="ep_" + "2" * 24, url=sandbox.url("mover"), events=["policy.issued"],
                secrets=[stored("ep_" + "2" * 24)],
            )  # fmt: skip
            await store.put(direct)
            await store.put(redirected)
            event = next(e for e in mixed_events(200, 5, seed=1) if e.event_type == "policy.issued")
            publish(kafka_bootstrap, f"{prefix}insurance.policy.events", [event])
            collector = Collector(kafka_bootstrap, [deliveries])
            try:
                await collector.wait_for(
                    lambda _: (
                        {json.loads(m.value())["subscription_id"] for m in collector.on(deliveries)}
                        >= {direct.id, redirected.id}
                    ),
                    timeout_s=60,
                )
            finally:
                collector.close()
        finally:
            stop.set()
            await task
        assert sandbox.partner("mover").received_count >= 1
    lines = {
        json.loads(m.value())["subscription_id"]: json.loads(m.value()) for m in collector.on(deliveries)
    }
    assert lines[direct.id]["status"] == "refused"
    assert lines[direct.id]["next"] == "dlq"
    assert lines[redirected.id]["status"] == "failed"
    assert "redirect" in lines[redirected.id]["error"]
    assert lines[redirected.id]["http_status"] == 307
    assert internal.hits == 0
    dlq = read_topics(kafka_bootstrap, [catalogue.app("webhooks").dlq])
    assert [header(m, "x-subscription-id") for m in dlq] == [direct.id]


async def test_a_rotated_secret_signs_beside_the_old_one(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], session: aiohttp.ClientSession
) -> None:
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=TIERS)
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    old = generate_secret().get_secret_value()
    events = [e for e in mixed_events(300, 10, seed=4) if e.event_type == "claim.paid"][:5]
    async with PartnerSandbox() as sandbox:
        partner = sandbox.add("rotating", PartnerBehaviour(), [old])
        stop, task = await started(runner)
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            sub = await api.subscribe("rotating", sandbox.url("rotating"), ["claim.*"], secret=old)
            status, rotated = await api.call("POST", f"/api/v1/webhooks/{sub.id}/rotate-secret", {})
            assert status == 200, rotated
            new = rotated["secret"]
            assert new != old
            _, view = await api.call("GET", f"/api/v1/webhooks/{sub.id}")
            assert "secret" not in view
            publish(kafka_bootstrap, f"{prefix}insurance.claim.events", events)
            async with asyncio.timeout(60):
                await partner.wait_for_accepted_ids(len(events))
        finally:
            stop.set()
            await task
    for delivery in partner.received():
        assert delivery.body is not None
        assert delivery.headers is not None
        assert len(delivery.headers["webhook-signature"].split(" ")) == 2
        assert "x-webhook-signature-previous" in delivery.headers
        verify_webhook(delivery.body, delivery.headers, [old])  # a partner that has not switched yet
        verify_webhook(delivery.body, delivery.headers, [new])  # a partner that has
    assert old not in json.dumps(view)
    assert new not in json.dumps(view)


async def test_after_a_410_an_operator_re_enables_and_recovers_what_was_skipped(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], session: aiohttp.ClientSession
) -> None:
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=TIERS)
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    secret = generate_secret().get_secret_value()
    events = [e for e in mixed_events(400, 10, seed=6) if e.event_type.startswith("claim.")][:30]
    notices = f"{prefix}integrations.webhook.endpoint-events"
    async with PartnerSandbox() as sandbox:
        partner = sandbox.add("moved", PartnerBehaviour(mode="gone"), [secret])
        stop, task = await started(runner)
        collector = Collector(kafka_bootstrap, [notices, f"{prefix}integrations.webhook.deliveries"])
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            since = datetime.now(UTC).isoformat()
            sub = await api.subscribe(
                "moved", sandbox.url("moved"), ["claim.*"], secret=secret, max_concurrency=1
            )
            publish(kafka_bootstrap, f"{prefix}insurance.claim.events", events)
            await collector.wait_for(lambda _: bool(collector.on(notices)), timeout_s=60)
            # Events fanned out before the endpoint was disabled were queued for it (and are
            # logged as skipped); events published after it are not queued for it at all.
            queued = {
                header(m, "x-webhook-id")
                for m in read_topics(kafka_bootstrap, [f"{prefix}integrations.webhooks.dispatch"])
                if header(m, "x-subscription-id") == sub.id
            }
            deliveries = f"{prefix}integrations.webhook.deliveries"
            await collector.wait_for(
                lambda _: {json.loads(m.value())["webhook_id"] for m in collector.on(deliveries)} >= queued,
                timeout_s=60,
            )
            assert len(queued) > 1
            assert partner.received_count == 1  # disabled at the first 410
            assert [json.loads(m.value())["type"] for m in collector.on(notices)] == [
                "webhook.endpoint_disabled"
            ]
            _, view = await api.call("GET", f"/api/v1/webhooks/{sub.id}")
            assert view["active"] is False
            # The partner is back; the operator re-enables the endpoint and recovers.
            sandbox.update("moved", PartnerBehaviour())
            status, body = await api.call("PATCH", f"/api/v1/webhooks/{sub.id}", {"active": True})
            assert status == 200, body
            status, report = await api.call("POST", f"/api/v1/webhooks/{sub.id}/recover", {"since": since})
            assert status == 202, report
            expected = {i for i in queued if i is not None}
            assert expected <= {webhook_id_for(sub.id, str(e.event_id)) for e in events}
            async with asyncio.timeout(60):
                await partner.wait_until(lambda p: p.has_accepted(expected))
            status, attempts = await api.call("GET", f"/api/v1/webhooks/{sub.id}/attempts?limit=500")
        finally:
            stop.set()
            await task
            collector.close()
    assert partner.accepted_ids() == expected
    assert status == 200
    statuses = {a["status"] for a in (attempts["attempts"] if isinstance(attempts, dict) else attempts)}
    assert {"disabled", "skipped"} <= statuses
