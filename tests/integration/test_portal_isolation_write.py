"""Isolation of the write side: partner A's key changes nothing of partner B's.

With A's key, every way this test knows to change B's endpoints is tried against B's real ids
(an endpoint with a delivered message and a failed one): each GraphQL mutation alone, all of
them as aliases of one document, the same with an id that does not exist (the answers must be
the same), A's own endpoint with B's message id, and the REST routes (PATCH, DELETE,
rotate-secret, redeliver, recover).  Every attempt is counted; none may succeed, B's endpoint
must be unchanged, its receiver must get nothing more, and B's key still works on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.webhooks.signing import webhook_id_for
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from tests.integration.portal_world import TOKEN, Portal, eventually, running_portal

pytestmark = pytest.mark.timeout(300)

NO_SUCH = "ep_" + "0" * 24
CREATE = "mutation($input: CreateEndpointInput!) { createEndpoint(input: $input) { secret endpoint { id } } }"
MUTATIONS = {
    "updateEndpoint": 'updateEndpoint(id: $id, input: {url: "http://127.0.0.1:9/stolen"}) { id url }',
    "updateEvents": 'updateEndpoint(id: $id, input: {events: ["*"], description: "mine"}) { id }',
    "disableEndpoint": 'disableEndpoint(id: $id, reason: "taken over") { id active }',
    "enableEndpoint": "enableEndpoint(id: $id) { id active }",
    "rotateSecret": "rotateSecret(id: $id, graceSeconds: 0) { secret }",
    "sendTestEvent": "sendTestEvent(endpointId: $id) { webhookId }",
    "redeliver": "redeliver(endpointId: $id, webhookId: $webhookId) { queued webhookIds }",
    "recover": "recover(endpointId: $id, since: $since) { queued webhookIds }",
}


def document(selections: dict[str, str]) -> str:
    text = " ".join(f"{alias}: {selection}" for alias, selection in selections.items())
    variables = ["$id: ID!"]
    if "$webhookId" in text:
        variables.append("$webhookId: ID!")
    if "$since" in text:
        variables.append("$since: DateTime!")
    return f"mutation({', '.join(variables)}) {{ {text} }}"


def succeeded(answer: dict[str, Any]) -> bool:
    """A GraphQL answer with any mutation's data in it."""
    data = answer.get("data")
    return isinstance(data, dict) and any(value is not None for value in data.values())


def variables_for(text: str, endpoint_id: str, webhook_id: str, since: str) -> dict[str, Any]:
    found: dict[str, Any] = {"id": endpoint_id}
    if "$webhookId" in text:
        found["webhookId"] = webhook_id
    if "$since" in text:
        found["since"] = since
    return found


async def test_partner_a_changes_nothing_of_partner_b(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    async with (
        PartnerSandbox() as sandbox,
        running_portal(kafka_bootstrap, isolated_topics, tmp_path) as portal,
    ):
        a = await portal.partner("Broker A")
        b = await portal.partner("Broker B")

        # B's endpoint, with one message delivered and one failed (real webhook ids).
        created = await portal.graphql(
            b.key, CREATE, input={"url": sandbox.url("b"), "events": ["policy.issued"]}
        )
        theirs = created["data"]["createEndpoint"]["endpoint"]["id"]
        b_receiver = sandbox.add(
            "b", PartnerBehaviour(mode="error"), [created["data"]["createEndpoint"]["secret"]]
        )
        [event] = portal.publish_policy_issued()
        failed_id = webhook_id_for(theirs, str(event.event_id))
        async with asyncio.timeout(60):
            await b_receiver.wait_until(lambda p: failed_id in p.unique_ids())
        sandbox.update("b", PartnerBehaviour())
        sent = await portal.graphql(
            b.key, "mutation($id: ID!) { sendTestEvent(endpointId: $id) { webhookId } }", id=theirs
        )
        delivered_id = sent["data"]["sendTestEvent"]["webhookId"]
        async with asyncio.timeout(60):
            await b_receiver.wait_until(lambda p: {failed_id, delivered_id} <= p.unique_ids())
        await eventually(lambda: _logged(portal, b.key, failed_id), what="B's failed message in B's log")
        await eventually(lambda: _logged(portal, b.key, delivered_id), what="B's test event in B's log")

        # A's own endpoint, to ask for B's messages through it.
        mine = await portal.graphql(a.key, CREATE, input={"url": sandbox.url("a"), "events": ["claim.*"]})
        own = mine["data"]["createEndpoint"]["endpoint"]["id"]

        _, before = await portal.rest("GET", f"/api/v1/webhooks/{theirs}")
        received_before = b_receiver.received_count
        since = (datetime.now(UTC) - timedelta(days=1)).isoformat()

        attempts = 0
        successes = 0
        answers: dict[tuple[str, str, str], dict[str, Any]] = {}

        async def gql(target: str, webhook_id: str, selections: dict[str, str]) -> dict[str, Any]:
            nonlocal attempts, successes
            text = document(selections)
            answer = await portal.graphql(a.key, text, **variables_for(text, target, webhook_id, since))
            attempts += 1
            successes += succeeded(answer)
            return answer

        for name, selection in MUTATIONS.items():
            for webhook_id in (failed_id, delivered_id) if "$webhookId" in selection else (failed_id,):
                for target in (theirs, NO_SUCH):
                    answers[(name, target, webhook_id)] = await gql(target, webhook_id, {name: selection})
        # B's message ids through A's own endpoint: no such message there.
        for webhook_id in (failed_id, delivered_id):
            cross = await gql(own, webhook_id, {"redeliver": MUTATIONS["redeliver"]})
            assert [e["extensions"]["code"] for e in cross["errors"]] == ["NOT_FOUND"]
        # Every mutation as an alias of one document (they run in order; the first refusal ends it).
        aliased = await gql(theirs, failed_id, {f"m{n}": s for n, s in enumerate(MUTATIONS.values())})
        assert aliased["data"] is None
        assert [e["extensions"]["code"] for e in aliased["errors"]] == ["NOT_FOUND"]
        # The same aliases in their own documents, in reverse order.
        for n, selection in reversed(list(enumerate(MUTATIONS.values()))):
            await gql(theirs, failed_id, {f"m{n}": selection})

        # Another partner's id is answered exactly as one that does not exist.
        for (name, target, webhook_id), answer in answers.items():
            if target != theirs:
                continue
            assert answer["data"] is None, name
            assert [e["extensions"] for e in answer["errors"]] == [{"code": "NOT_FOUND"}], name
            assert answer == answers[(name, NO_SUCH, webhook_id)], name

        # The REST routes with A's key.
        rest = [
            ("PATCH", f"/api/v1/webhooks/{theirs}", {"url": "http://127.0.0.1:9/stolen"}, 404),
            ("PATCH", f"/api/v1/webhooks/{theirs}", {"active": False}, 404),
            ("DELETE", f"/api/v1/webhooks/{theirs}", None, 404),
            ("POST", f"/api/v1/webhooks/{theirs}/rotate-secret", {}, 404),
            ("POST", f"/api/v1/webhooks/{theirs}/messages/{failed_id}/redeliver", None, 403),
            ("POST", f"/api/v1/webhooks/{theirs}/messages/{delivered_id}/redeliver", None, 403),
            ("POST", f"/api/v1/webhooks/{theirs}/recover", {"since": since}, 403),
            ("GET", f"/api/v1/webhooks/{theirs}", None, 404),
        ]
        for method, path, body, expected in rest:
            status, answer = await portal.rest(method, path, body, token=a.key)
            attempts += 1
            successes += 200 <= status < 300
            assert status == expected, (method, path, answer)
            if expected == 404:
                assert answer == {"error": "not_found", "message": "no such webhook subscription"}

        # The operator token is no key of the portal's.
        async with portal.session.post(
            portal.url + "/graphql",
            json={"query": document({"m": MUTATIONS["disableEndpoint"]}), "variables": {"id": theirs}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            operator = await response.json()
        attempts += 1
        successes += succeeded(operator)
        assert response.status == 403
        assert operator["errors"][0]["extensions"]["code"] == "FORBIDDEN"

        # Nothing of B's changed (the webhooks app's own bookkeeping of its failing clock aside),
        # its receiver got nothing more, and B's next delivery is still signed with B's secret.
        _, after = await portal.rest("GET", f"/api/v1/webhooks/{theirs}")
        assert _settings(after) == _settings(before)
        assert b_receiver.received_count == received_before
        check = await portal.graphql(
            b.key, "mutation($id: ID!) { sendTestEvent(endpointId: $id) { webhookId } }", id=theirs
        )
        checked_id = check["data"]["sendTestEvent"]["webhookId"]
        async with asyncio.timeout(60):
            await b_receiver.wait_until(lambda p: checked_id in p.accepted_ids())
        [signed] = [d for d in b_receiver.received() if d.webhook_id == checked_id]
        assert signed.signature_valid  # the receiver knows B's first secret only

        async def a_refused() -> list[dict[str, Any]] | None:
            found = [
                r
                for r in portal.audit_records()
                if r.get("actor", {})
                and r["actor"].get("partner_id") == a.partner_id
                and r["outcome"] != "success"
            ]
            return found or None  # the audit producer hands records over without waiting

        # refused changes are on the audit trail too
        refusals = await eventually(a_refused, timeout_s=30, what="A's refused changes on the audit trail")
        assert {r["status"] for r in refusals} == {"not_found"}

    # each mutation on B's endpoint and on a missing one (redeliver with both of B's messages),
    # B's messages through A's endpoint, the aliased document and its parts, REST, the operator
    assert attempts == len(answers) + 2 + 1 + len(MUTATIONS) + len(rest) + 1
    assert successes == 0
    print(f"isolation (write): 0 of {attempts} attempts succeeded")


def _settings(view: dict[str, Any]) -> dict[str, Any]:
    """What a partner (or an intruder) could change of an endpoint, as the REST API shows it."""
    return {k: v for k, v in view.items() if k not in ("failing_since", "version", "updated_at")}


async def _logged(portal: Portal, key: str, webhook_id: str) -> bool | None:
    answer = await portal.graphql(
        key, "query($w: ID!) { message(webhookId: $w) { webhookId } }", w=webhook_id
    )
    return True if answer["data"]["message"] is not None else None
