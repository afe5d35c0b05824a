"""A partner reads its own things through ``/graphql``: the real runner, broker and receiver.

A broker registers two endpoints (one answering 200, one 500) with its own key through the
REST API; events are published and really delivered by the webhooks app; the delivery log
reaches the query store through the projector; a reinsurer's bordereau and its delivery result
are written to their topics.  Each partner then reads, through GraphQL: itself, its event
catalogue, its endpoints with their health, its delivery log (filters, pages), one message
with the request as sent (compared with what the receiver got), and its bordereaux with their
downloads.  The store runs on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.bordereaux.rows import PREMIUM_ROW_FIELDS
from tests import portal_samples as samples
from tests.integration.portal_read_env import PortalEnv, eventually, portal_env
from tests.portal_stores import store_url as store_url
from tests.postgres import pg as pg

pytestmark = pytest.mark.timeout(420)

ENDPOINTS = """{ endpoints { id url events active createdAt health {
    successRate attempts failures windowHours breakerState lastAttemptAt lastSuccessAt disabledReason } } }"""
PAGE = """query($after: String, $filter: DeliveryFilter) {
    deliveries(first: 2, after: $after, filter: $filter) {
        edges { cursor node { id status endpointId attemptedAt } } pageInfo { hasNextPage endCursor } } }"""
MESSAGE = """query($id: ID!) { message(webhookId: $id) { webhookId endpointId eventType eventId
    request { headers { name value } body } attempts { id attempt status httpStatus responseBody } } }"""
BORDEREAUX = """{ bordereaux { edges { cursor node {
    reportId reportType treatyNumber treatyType periodId periodFrom periodTo cedantCode settlementCurrency
    rowCount adjustmentCount cededTotal rows adjustments totals
    deliveries { status acknowledgedAt duplicate error }
    csv: download(format: CSV) json: download(format: JSON) } } pageInfo { hasNextPage } } }"""


async def _pages(env: PortalEnv, key: str, filter: dict[str, Any] | None = None) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(20):
        page = (await env.data(key, PAGE, {"after": after, "filter": filter}))["deliveries"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
    raise AssertionError("the pages did not end")


async def test_a_partner_reads_its_own_things(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], store_url: str
) -> None:
    async with portal_env(kafka_bootstrap, isolated_topics, store_url) as env:
        broker = await env.partner("Acme Brokers", "broker", distributor_code="D-1")
        reinsurer = await env.partner("Reinsurance Corp", "reinsurer", reinsurer_code="RE001")
        ok = await env.endpoint(broker, "/acme/ok", ["policy.issued"])
        failing = await env.endpoint(broker, "/fail/acme", ["policy.issued"])
        events = env.publish_policy_issued(3)

        lines = await env.deliveries_of(broker, 6, "six delivery lines of the broker")
        assert len(lines) == 6
        assert {(line["endpointId"], line["status"]) for line in lines} == {
            (ok, "DELIVERED"),
            (failing, "FAILED"),
        }
        assert {line["eventId"] for line in lines} == {str(e.event_id) for e in events}
        assert all(line["eventType"] == "policy.issued" for line in lines)
        assert {line["urlHost"] for line in lines} == {env.receiver.url("/").split("/")[2]}
        failed = [line for line in lines if line["status"] == "FAILED"]
        assert all(line["httpStatus"] == 500 and line["nextStep"] == "retry" for line in failed)
        assert all(line["responseBody"] == "receiver down for maintenance" for line in failed)
        times = [datetime.fromisoformat(line["attemptedAt"]) for line in lines]
        assert times == sorted(times, reverse=True)
        assert all(t.utcoffset() == timedelta(0) for t in times)

        # the projector's figures are in the server's /metrics
        status, metrics = await env.rest("GET", "/metrics")
        assert status == 200
        assert "processors_portal_caught_up" in metrics
        assert "processors_portal_records_total" in metrics

        # me and the catalogue
        me = (
            await env.data(broker.key, "{ me { id name kind status distributorCode reinsurerCode grants } }")
        )["me"]
        assert me == {
            "id": broker.id,
            "name": "Acme Brokers",
            "kind": "BROKER",
            "status": "active",
            "distributorCode": "D-1",
            "reinsurerCode": None,
            "grants": [],
        }
        catalogue = (await env.data(broker.key, "{ eventTypes { eventType withheld schema example } }"))[
            "eventTypes"
        ]
        issued = next(entry for entry in catalogue if entry["eventType"] == "policy.issued")
        assert issued["schema"]["properties"]["event_type"] == {"const": "policy.issued"}
        assert issued["example"]["event_type"] == "policy.issued"

        # endpoints and their health
        endpoints = (await env.data(broker.key, ENDPOINTS))["endpoints"]
        assert [e["id"] for e in endpoints] == [failing, ok]  # newest first
        health = {e["id"]: e["health"] for e in endpoints}
        assert (health[ok]["attempts"], health[ok]["failures"], health[ok]["successRate"]) == (3, 0, 1.0)
        assert (health[failing]["attempts"], health[failing]["failures"], health[failing]["successRate"]) == (
            3,
            3,
            0.0,
        )
        assert health[failing]["lastSuccessAt"] is None
        assert health[ok]["lastSuccessAt"] is not None
        assert {h["breakerState"] for h in health.values()} <= {"closed", "open", "half_open"}
        assert all(h["windowHours"] == 24 for h in health.values())
        one = await env.data(broker.key, "query($id: ID!) { endpoint(id: $id) { id url } }", {"id": ok})
        assert one["endpoint"] == {"id": ok, "url": env.receiver.url("/acme/ok")}

        # pages and filters
        everything = [line["id"] for line in lines]
        assert await _pages(env, broker.key) == everything
        assert await _pages(env, broker.key, {"status": "FAILED"}) == [line["id"] for line in failed]
        assert await _pages(env, broker.key, {"endpointId": ok}) == [
            line["id"] for line in lines if line["endpointId"] == ok
        ]
        assert await _pages(env, broker.key, {"eventType": "policy.cancelled"}) == []
        after_all = (max(times) + timedelta(seconds=1)).isoformat()
        assert await _pages(env, broker.key, {"since": after_all}) == []
        assert await _pages(env, broker.key, {"until": after_all}) == everything

        # one message: the request as the receiver got it
        delivered = next(line for line in lines if line["status"] == "DELIVERED")
        message = (await env.data(broker.key, MESSAGE, {"id": delivered["webhookId"]}))["message"]
        assert (message["webhookId"], message["endpointId"], message["eventId"]) == (
            delivered["webhookId"],
            ok,
            delivered["eventId"],
        )
        assert [a["status"] for a in message["attempts"]] == ["DELIVERED"]
        got = next(
            r for r in env.receiver.received if r.headers.get("X-Webhook-Id") == delivered["webhookId"]
        )
        assert message["request"]["body"].encode("utf-8") == got.body
        for header in message["request"]["headers"]:
            assert got.headers[header["name"]] == header["value"], header["name"]
        assert {h["name"] for h in message["request"]["headers"]} >= {
            "X-Webhook-Id",
            "webhook-id",
            "Content-Type",
        }

        # a broker has no bordereaux
        nothing = await env.data(
            broker.key, '{ bordereaux { edges { cursor } } bordereau(reportId: "x") { reportId } }'
        )
        assert nothing == {"bordereaux": {"edges": []}, "bordereau": None}

        # the reinsurer's bordereau, its delivery result and downloads
        report = samples.premium_bordereau()
        env.write_bordereau(samples.TREATY, report)
        env.write_bordereau_result(samples.TREATY, samples.accepted(samples.report_id()))

        async def reported() -> list[dict[str, Any]] | None:
            edges = (await env.data(reinsurer.key, BORDEREAUX))["bordereaux"]["edges"]
            return edges if edges and edges[0]["node"]["deliveries"] else None

        edges = await eventually(reported, what="the reinsurer's bordereau and its delivery result")
        node = edges[0]["node"]
        original = json.loads(report)
        assert (node["reportId"], node["reportType"], node["treatyNumber"], node["periodId"]) == (
            samples.report_id(),
            "PREMIUM",
            samples.TREATY,
            samples.PERIOD,
        )
        assert (node["rowCount"], node["adjustmentCount"]) == (3, 1)
        assert node["cededTotal"] == samples.settled_ceded_premium(report)  # exact, a string
        assert node["totals"] == original["summary"]
        assert node["deliveries"] == [
            {
                "status": "ACCEPTED",
                "acknowledgedAt": "2024-04-06T00:00:01.234000+00:00",
                "duplicate": False,
                "error": None,
            }
        ]
        rows = list(csv.reader(io.StringIO(node["csv"], newline="")))
        assert rows[0] == list(PREMIUM_ROW_FIELDS)
        assert len(rows) == 4
        assert node["csv"].endswith("\r\n")
        download = json.loads(node["json"])
        assert download["report_id"] == samples.report_id()
        assert download["policies"] == original["policies"]
        assert download["summary"] == original["summary"]
        single = await env.data(
            reinsurer.key,
            "query($id: ID!) { bordereau(reportId: $id) { reportId } }",
            {"id": samples.report_id()},
        )
        assert single == {"bordereau": {"reportId": samples.report_id()}}
