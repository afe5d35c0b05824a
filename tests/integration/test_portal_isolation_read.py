"""Isolation on the read side: with partner A's key, nothing of partner B can be read.

Partner B (a reinsurer) has two endpoints, really delivered messages (delivered and failed) and
a bordereau with its delivery result; partner A (a broker) has an endpoint and messages of its
own.  With A's key the test tries to read B's endpoints, deliveries, messages and bordereaux:
by B's real ids (a perfect guess), GraphQL aliases, nested traversal, filters (B's endpoint
id, event types, B's treaty), cursors made from B's pages, and the REST API (the subscription
and the operator attempts routes).  Every attempt is counted; an attempt succeeds when its
answer holds anything of B's (an id, a webhook id, a URL, a report id) or a 2xx REST answer
about B's things.  The count is printed and must be 0 of N.

Each GraphQL read is also made with B's own key and must find B's things there: the attempts
ask for data that exists, so 0 successes means isolation, not an empty store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import portal_samples as samples
from tests.integration.portal_read_env import Member, PortalEnv, eventually, portal_env

pytestmark = pytest.mark.timeout(420)

CURSOR_PAGE = "query($after: String) { deliveries(first: 1, after: $after) { edges { cursor node { id } } } }"
BORDEREAU_PAGE = (
    "query($after: String) { bordereaux(first: 1, after: $after) { edges { cursor node { reportId } } } }"
)


class Attempts:
    """Counts attempts, and those whose answer shows any of B's secrets-of-identity."""

    def __init__(self, markers: set[str]) -> None:
        self.markers = {m for m in markers if m}
        self.count = 0
        self.successes: list[str] = []

    def leaked(self, answer: Any) -> set[str]:
        text = json.dumps(answer)
        return {marker for marker in self.markers if marker in text}

    def check(self, what: str, answer: Any) -> None:
        self.count += 1
        if self.leaked(answer):
            self.successes.append(what)


async def _b_world(env: PortalEnv) -> tuple[Member, Member, dict[str, Any]]:
    a = await env.partner("Acme Brokers", "broker")
    b = await env.partner("Reinsurance Corp", "reinsurer", reinsurer_code="RE001")
    a_ok = await env.endpoint(a, "/acme/ok", ["policy.issued"])
    b_ok = await env.endpoint(b, "/re/ok", ["policy.issued"])
    b_fail = await env.endpoint(b, "/fail/re", ["policy.*"])
    env.publish_policy_issued(3)
    env.write_bordereau(samples.TREATY, samples.premium_bordereau())
    env.write_bordereau_result(samples.TREATY, samples.accepted(samples.report_id()))
    b_lines = await env.deliveries_of(b, 6, "B's six delivery lines")
    a_lines = await env.deliveries_of(a, 3, "A's three delivery lines")

    async def bordereau_there() -> bool | None:
        found = await env.data(b.key, "{ bordereaux { edges { node { reportId deliveries { status } } } } }")
        edges = found["bordereaux"]["edges"]
        return True if edges and edges[0]["node"]["deliveries"] else None

    await eventually(bordereau_there, what="B's bordereau in the store")
    return (
        a,
        b,
        {
            "a_ok": a_ok,
            "b_endpoints": [b_ok, b_fail],
            "b_webhooks": sorted({line["webhookId"] for line in b_lines}),
            "b_lines": [line["id"] for line in b_lines],
            "a_lines": [line["id"] for line in a_lines],
        },
    )


async def test_partner_a_reads_nothing_of_partner_b(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    async with portal_env(kafka_bootstrap, isolated_topics, f"sqlite:///{tmp_path / 'portal.db'}") as env:
        a, b, world = await _b_world(env)
        b_endpoints: list[str] = world["b_endpoints"]
        b_webhooks: list[str] = world["b_webhooks"]
        report = samples.report_id()
        markers = {
            *b_endpoints,
            *b_webhooks,
            report,
            samples.TREATY,
            b.id,
            env.receiver.url("/re/ok"),
            env.receiver.url("/fail/re"),
            "/re/ok",
            "/fail/re",
        }
        attempts = Attempts(markers)

        async def both(what: str, document: str, variables: dict[str, Any] | None = None) -> None:
            """The read with A's key (an attempt) and with B's (which must find B's things)."""
            status, answer = await env.graphql(a.key, document, variables)
            assert status == 200, (what, answer)
            attempts.check(what, answer)
            _, own = await env.graphql(b.key, document, variables)
            assert attempts.leaked(own), f"B's own read found nothing of B's: {what}: {own}"

        # --- ids, as if guessed perfectly
        for endpoint_id in b_endpoints:
            await both(
                "endpoint by id", "query($id: ID!) { endpoint(id: $id) { id url } }", {"id": endpoint_id}
            )
            await both(
                "endpoint health by id",
                "query($id: ID!) { endpoint(id: $id) { health { attempts lastAttemptAt } id } }",
                {"id": endpoint_id},
            )
        for webhook_id in b_webhooks:
            await both(
                "message by webhook id",
                "query($id: ID!) { message(webhookId: $id) { webhookId endpointId request { body } "
                "attempts { id webhookId } } }",
                {"id": webhook_id},
            )
        for report_id in (report, report.lower()):
            status, answer = await env.graphql(
                a.key, "query($id: ID!) { bordereau(reportId: $id) { reportId rows } }", {"id": report_id}
            )
            attempts.check("bordereau by id", answer)
        await both(
            "bordereau by id", "query($id: ID!) { bordereau(reportId: $id) { reportId } }", {"id": report}
        )

        # --- aliases: many of B's ids in one document
        aliased = " ".join(
            [f'e{i}: endpoint(id: "{e}") {{ id }}' for i, e in enumerate(b_endpoints)]
            + [f'm{i}: message(webhookId: "{w}") {{ webhookId }}' for i, w in enumerate(b_webhooks)]
            + [f'r: bordereau(reportId: "{report}") {{ reportId }}']
        )
        status, answer = await env.graphql(a.key, "{ " + aliased + " }")
        assert status == 200, answer
        assert not answer.get("errors"), answer
        for alias, value in answer["data"].items():  # one attempt per alias
            attempts.check(f"alias {alias}", value)
        _, own = await env.graphql(b.key, "{ " + aliased + " }")
        assert all(value is not None for value in own["data"].values()), own

        # --- lists and nested traversal
        await both("endpoints list", "{ endpoints { id url events health { attempts } } }")
        await both(
            "delivery log traversal",
            "{ deliveries(first: 100) { edges { node { id webhookId endpointId eventId } } } }",
        )
        await both("bordereaux list", "{ bordereaux { edges { node { reportId deliveries { status } } } } }")
        await both(
            "bordereau downloads",
            "{ bordereaux { edges { node { csv: download(format: CSV) json: download(format: JSON) } } } }",
        )
        await both("me", "{ me { id reinsurerCode } }")

        # --- filters
        by_type = (
            "query($f: DeliveryFilter) { deliveries(filter: $f) { edges { node { webhookId endpointId } } } }"
        )
        for endpoint_id in b_endpoints:
            await both("deliveries filtered on B's endpoint", by_type, {"f": {"endpointId": endpoint_id}})
        for status in ("DELIVERED", "FAILED"):
            await both(
                "deliveries filtered on event type",
                by_type,
                {"f": {"eventType": "policy.issued", "status": status}},
            )
            # a type B has nothing of: asked with A's key only
            _, answer = await env.graphql(
                a.key, by_type, {"f": {"eventType": "policy.cancelled", "status": status}}
            )
            attempts.check("deliveries filtered on event type", answer)
        await both(
            "bordereaux filtered on B's treaty",
            "query($f: BordereauFilter) { bordereaux(filter: $f) { edges { node { reportId } } } }",
            {"f": {"treatyNumber": samples.TREATY, "periodId": samples.PERIOD}},
        )

        # --- cursors made from B's pages
        b_page = (await env.data(b.key, CURSOR_PAGE))["deliveries"]["edges"]
        b_cursors = [b_page[0]["cursor"]]
        for _ in range(3):
            next_page = (await env.data(b.key, CURSOR_PAGE, {"after": b_cursors[-1]}))["deliveries"]["edges"]
            b_cursors.append(next_page[0]["cursor"])
        for cursor in b_cursors:
            status, answer = await env.graphql(a.key, CURSOR_PAGE, {"after": cursor})
            attempts.check("delivery page after B's cursor", answer)
            assert [e["extensions"]["code"] for e in answer["errors"]] == ["BAD_USER_INPUT"]
        b_report_cursor = (await env.data(b.key, BORDEREAU_PAGE))["bordereaux"]["edges"][0]["cursor"]
        status, answer = await env.graphql(a.key, BORDEREAU_PAGE, {"after": b_report_cursor})
        attempts.check("bordereau page after B's cursor", answer)

        # --- the REST API with A's key
        rest: list[tuple[str, str]] = [("GET", "/api/v1/webhooks")]
        for endpoint_id in b_endpoints:
            rest += [
                ("GET", f"/api/v1/webhooks/{endpoint_id}"),
                ("GET", f"/api/v1/webhooks/{endpoint_id}/attempts"),
            ]
            rest += [("GET", f"/api/v1/webhooks/{endpoint_id}/messages/{w}/attempts") for w in b_webhooks]
        rest += [("GET", f"/api/v1/partners/{b.id}"), ("GET", f"/api/v1/partners/{b.id}/keys")]
        for method, path in rest:
            status, answer = await env.rest(method, path, token=a.key)
            attempts.count += 1
            listed = status == 200 and path == "/api/v1/webhooks"
            if (status < 300 and not listed) or attempts.leaked(answer):
                attempts.successes.append(f"REST {method} {path} → {status}")
            assert status in (200, 403, 404), (path, status, answer)

        # A still reads its own things (the attempts were refused, not the key)
        own = await env.data(a.key, "{ endpoints { id } deliveries { edges { node { id } } } }")
        assert [e["id"] for e in own["endpoints"]] == [world["a_ok"]]
        assert len(own["deliveries"]["edges"]) == 3

        print(f"isolation (read): {len(attempts.successes)} of {attempts.count} attempts succeeded")
        assert attempts.count >= 50
        assert attempts.successes == []
