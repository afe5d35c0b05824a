"""The portal's mutations over HTTP, on a real broker, the real webhooks app and a real receiver.

A partner creates an endpoint through ``/graphql`` (its secret is shown once and never again),
sends a test event that the webhooks app signs and delivers like any other, sees a failed
delivery in its log and redelivers it (same webhook id), recovers failed messages since a time,
rotates its secret (the next delivery verifies with the new one only), disables and enables the
endpoint; every mutation is on ``integrations.audit``, none with a secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as StandardVerificationError

from processors.webhooks.signing import webhook_id_for
from processors.webhooks.verify import WebhookVerificationError, verify_webhook
from processors_dev.sandbox.partners import Delivery, Partner, PartnerBehaviour, PartnerSandbox
from tests.integration.helpers import read_topics
from tests.integration.portal_world import Portal, eventually, running_portal

pytestmark = pytest.mark.timeout(300)

CREATE = """
mutation($input: CreateEndpointInput!) {
  createEndpoint(input: $input) { secret endpoint { id url events active } }
}"""
TEST_EVENT = "mutation($id: ID!) { sendTestEvent(endpointId: $id) { webhookId eventId endpointId } }"
REDELIVER = """
mutation($id: ID!, $webhookId: ID!) {
  redeliver(endpointId: $id, webhookId: $webhookId) { queued webhookIds caughtUp }
}"""
RECOVER = """
mutation($id: ID!, $since: DateTime!) { recover(endpointId: $id, since: $since) { queued webhookIds } }
"""
ROTATE = """
mutation($id: ID!, $grace: Int) {
  rotateSecret(id: $id, graceSeconds: $grace) { secret previousExpiresAt endpoint { id } }
}"""
ATTEMPTS = """
query($webhookId: ID!) {
  message(webhookId: $webhookId) { eventType attempts { status eventType httpStatus } }
}"""
ENDPOINT = "query($id: ID!) { endpoint(id: $id) { id url events active disabledReason } }"


def data_of(answer: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in answer, answer["errors"]
    data: dict[str, Any] = answer["data"]
    return data


def accepted(partner: Partner, webhook_id: str) -> list[Delivery]:
    return [d for d in partner.accepted() if d.webhook_id == webhook_id]


def verified_with(delivery: Delivery, secret: str) -> bool:
    """Whether the delivery as received verifies with ``secret``, by both verifiers."""
    assert delivery.body is not None
    assert delivery.headers is not None
    ours = theirs = True
    try:
        verify_webhook(delivery.body, delivery.headers, [secret])
    except WebhookVerificationError:
        ours = False
    try:
        Webhook(secret).verify(delivery.body, delivery.headers)
    except StandardVerificationError:
        theirs = False
    assert ours == theirs, "the project's verifier and the reference library disagree"
    return ours


async def logged_statuses(portal: Portal, key: str, webhook_id: str, wanted: str) -> list[str] | None:
    """The message's attempt statuses in the portal's log, once one of them is ``wanted``."""
    message = data_of(await portal.graphql(key, ATTEMPTS, webhookId=webhook_id))["message"]
    if message is None:
        return None
    statuses = [a["status"] for a in message["attempts"]]
    return statuses if wanted in statuses else None


async def test_a_partner_manages_its_endpoint_through_graphql(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    async with (
        PartnerSandbox() as sandbox,
        running_portal(kafka_bootstrap, isolated_topics, tmp_path) as portal,
    ):
        me = await portal.partner("Broker with an endpoint")

        # -- create: the secret is shown once -----------------------------------------------------
        url = sandbox.url("receiver")
        created = data_of(
            await portal.graphql(
                me.key, CREATE, input={"url": url, "events": ["policy.issued"], "description": "claims desk"}
            )
        )["createEndpoint"]
        endpoint_id = created["endpoint"]["id"]
        secret = created["secret"]
        assert created["endpoint"] == {
            "id": endpoint_id,
            "url": url,
            "events": ["policy.issued"],
            "active": True,
        }
        assert secret.startswith("whsec_")
        receiver = sandbox.add("receiver", PartnerBehaviour(), [secret], record_bodies=True)

        shown = await portal.graphql(me.key, ENDPOINT, id=endpoint_id)
        assert data_of(shown)["endpoint"]["url"] == url
        status, over_rest = await portal.rest("GET", f"/api/v1/webhooks/{endpoint_id}", token=me.key)
        assert status == 200
        assert secret not in str(shown)
        assert secret not in str(over_rest)

        # -- a test event, through the real delivery path -----------------------------------------
        sent = data_of(await portal.graphql(me.key, TEST_EVENT, id=endpoint_id))["sendTestEvent"]
        assert sent["endpointId"] == endpoint_id
        assert sent["webhookId"] == webhook_id_for(endpoint_id, sent["eventId"])
        async with asyncio.timeout(60):
            await receiver.wait_until(lambda p: bool(accepted(p, sent["webhookId"])))
        [test_delivery] = accepted(receiver, sent["webhookId"])
        assert test_delivery.event_type == "webhook.test"
        assert test_delivery.signature_valid
        assert verified_with(test_delivery, secret)
        assert await eventually(
            lambda: logged_statuses(portal, me.key, sent["webhookId"], "DELIVERED"),
            what="the test event in the portal's delivery log",
        ) == ["DELIVERED"]
        listed = data_of(
            await portal.graphql(
                me.key,
                'query { deliveries(filter: {eventType: "webhook.test"}) { edges { node { webhookId } } } }',
            )
        )["deliveries"]["edges"]
        assert [edge["node"]["webhookId"] for edge in listed] == [sent["webhookId"]]

        # -- a failing receiver, the failure in the log, a redelivery with the same id -----------
        sandbox.update("receiver", PartnerBehaviour(mode="error"))
        [event] = portal.publish_policy_issued()
        failed_id = webhook_id_for(endpoint_id, str(event.event_id))
        await eventually(
            lambda: logged_statuses(portal, me.key, failed_id, "FAILED"),
            what="the failed delivery in the log",
        )
        assert accepted(receiver, failed_id) == []
        sandbox.update("receiver", PartnerBehaviour())
        again = data_of(await portal.graphql(me.key, REDELIVER, id=endpoint_id, webhookId=failed_id))[
            "redeliver"
        ]
        assert again == {"queued": 1, "webhookIds": [failed_id], "caughtUp": True}
        async with asyncio.timeout(60):
            await receiver.wait_until(lambda p: bool(accepted(p, failed_id)))
        [redelivered] = accepted(receiver, failed_id)
        assert verified_with(redelivered, secret)
        assert [d.status for d in receiver.received() if d.webhook_id == failed_id] == [500, 200]

        # -- recover: every message whose latest attempt failed since a time ----------------------
        sandbox.update("receiver", PartnerBehaviour(mode="error"))
        since = datetime.now(UTC)
        events = portal.publish_policy_issued(2)
        lost = sorted(webhook_id_for(endpoint_id, str(e.event_id)) for e in events)
        for webhook_id in lost:
            await eventually(
                lambda w=webhook_id: logged_statuses(portal, me.key, w, "FAILED"),  # type: ignore[misc]
                what="each failed delivery in the log",
            )
        sandbox.update("receiver", PartnerBehaviour())
        recovered = data_of(await portal.graphql(me.key, RECOVER, id=endpoint_id, since=since.isoformat()))
        assert recovered["recover"]["queued"] == 2
        assert sorted(recovered["recover"]["webhookIds"]) == lost
        async with asyncio.timeout(60):
            await receiver.wait_until(lambda p: all(accepted(p, w) for w in lost))

        # -- rotate: the next delivery verifies with the new secret only --------------------------
        rotated = data_of(await portal.graphql(me.key, ROTATE, id=endpoint_id, grace=0))["rotateSecret"]
        new_secret = rotated["secret"]
        assert new_secret != secret
        sandbox.update("receiver", secrets=[new_secret])
        after = data_of(await portal.graphql(me.key, TEST_EVENT, id=endpoint_id))["sendTestEvent"]
        async with asyncio.timeout(60):
            await receiver.wait_until(lambda p: bool(accepted(p, after["webhookId"])))
        [signed_anew] = accepted(receiver, after["webhookId"])
        assert verified_with(signed_anew, new_secret)
        assert not verified_with(signed_anew, secret)

        # -- update, disable (no test event then), enable -----------------------------------------
        changed = await portal.graphql(
            me.key,
            'mutation($id: ID!) { updateEndpoint(id: $id, input: {events: ["policy.*"]}) { events } }',
            id=endpoint_id,
        )
        assert data_of(changed)["updateEndpoint"]["events"] == ["policy.*"]
        disabled = await portal.graphql(
            me.key,
            'mutation($id: ID!) { disableEndpoint(id: $id, reason: "holiday") { active } }',
            id=endpoint_id,
        )
        assert data_of(disabled)["disableEndpoint"] == {"active": False}
        refused = await portal.graphql(me.key, TEST_EVENT, id=endpoint_id)
        assert refused["data"] is None
        assert refused["errors"][0]["extensions"] == {"code": "FORBIDDEN", "reason": "endpoint_disabled"}
        enabled = await portal.graphql(
            me.key, "mutation($id: ID!) { enableEndpoint(id: $id) { active disabledReason } }", id=endpoint_id
        )
        assert data_of(enabled)["enableEndpoint"] == {"active": True, "disabledReason": None}

        # -- the audit trail: every mutation, no secret --------------------------------------------
        expected = [
            "portal.createEndpoint",
            "portal.sendTestEvent",
            "portal.redeliver",
            "portal.recover",
            "portal.rotateSecret",
            "portal.sendTestEvent",
            "portal.updateEndpoint",
            "portal.disableEndpoint",
            "portal.sendTestEvent",
            "portal.enableEndpoint",
        ]

        async def audited() -> list[dict[str, Any]] | None:
            records = [r for r in portal.audit_records() if str(r.get("operation", "")).startswith("portal.")]
            return records if len(records) >= len(expected) else None

        records = await eventually(audited, what="every mutation on integrations.audit")
        assert [r["operation"] for r in records] == expected
        for record in records:
            assert record["endpoint"] == f"webhook:{endpoint_id}"
            assert record["actor"] == {"kind": "partner", "partner_id": me.partner_id, "key_id": me.key_id}
        assert [r["status"] for r in records][-2:] == ["endpoint_disabled", "ok"]
        text = str(portal.audit_records())
        for leaked in (secret, new_secret, me.key, "whsec_"):
            assert leaked not in text
        stored = b"".join(
            (m.value() or b"")
            for m in read_topics(
                portal.bootstrap,
                [
                    f"{portal.prefix}integrations.webhook.subscriptions",
                    f"{portal.prefix}integrations.webhook.deliveries",
                    f"{portal.prefix}integrations.webhooks.dispatch",
                ],
            )
        )
        assert stored  # the topics were read
        for leaked in (secret, new_secret):
            assert leaked.encode() not in stored  # never in clear on a topic
