"""Data minimisation through the real webhooks app, on a real broker, to real partner receivers.

Two partners subscribe to ``*``: one granted nothing (through its own key), one granted
``contact`` (a subscription the operator made for it).  Every event type the webhooks app
consumes is published once with a distinctive marker in each of its personal-data fields
(``tests/pii_markers.py``).  The partner without grants must receive no marker at all, the
``contact`` partner the contact markers only; every signature must still verify.  Then the
operator grants the first partner ``identity`` and the next event it receives carries the
identity markers.  The webhooks app runs in a ``Runner`` with the API, like
``processors run webhooks --api``; waits are bounded by deadlines, never slept on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.contract import EVENT_TYPES
from processors.partners.projection import DataClass
from processors.runner import Runner
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.verify import verify_webhook
from processors_dev.sandbox.partners import Partner, PartnerBehaviour, PartnerSandbox
from tests.integration.helpers import publish
from tests.integration.test_webhooks_fanout import (
    TOKEN,
    seed_signature_ok,
    standard_signature_ok,
    started,
    webhook_settings,
)
from tests.pii_markers import MarkedEvent, marked_event

pytestmark = pytest.mark.timeout(240)

FAMILIES = {
    "policy": "policy",
    "premium": "billing",
    "refund": "billing",
    "customer": "customer",
    "claim": "claim",
}
"""The input topic of each event family the webhooks app consumes."""


class Api:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None, *, token: str = TOKEN) -> Any:
        status, document = await self.call(method, path, body, token=token)
        assert status in (200, 201), (method, path, status, document)
        return document


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def received_all(partner: Partner, ids: set[str], timeout_s: float = 120) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await partner.wait_until(lambda p: p.has_accepted(ids))
    except TimeoutError:
        missing = len(ids - partner.accepted_ids())
        raise AssertionError(f"{missing} deliveries still missing after {timeout_s} s") from None


def bodies_by_id(partner: Partner) -> dict[str, bytes]:
    found = {}
    for delivery in partner.received():
        assert delivery.body is not None
        found[json.loads(delivery.body)["webhook_id"]] = delivery.body
    return found


def check_signatures(partner: Partner, secret: str) -> int:
    checked = 0
    for delivery in partner.received():
        assert delivery.body is not None
        assert delivery.headers is not None
        assert seed_signature_ok(delivery.body, delivery.headers["x-webhook-signature"], secret)
        assert standard_signature_ok(delivery.body, delivery.headers, secret)
        verify_webhook(delivery.body, delivery.headers, [secret])
        checked += 1
    return checked


async def test_partners_receive_only_the_personal_data_they_are_granted(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    session: aiohttp.ClientSession,
) -> None:
    topics_file, prefix = isolated_topics()
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    consumed = [t for t in sorted(EVENT_TYPES) if t.partition(".")[0] in FAMILIES]
    marked = {t: marked_event(t) for t in consumed}
    assert {c for m in marked.values() for c in m.markers} == set(DataClass)  # every class is at stake

    async with PartnerSandbox() as sandbox:
        secrets = {name: generate_secret().get_secret_value() for name in ("plain", "contact")}
        for name, secret in secrets.items():
            sandbox.add(name, PartnerBehaviour(), [secret])
        stop, task = await started(runner)
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            plain = await api.ok("POST", "/api/v1/partners", {"name": "Plain Brokers", "kind": "broker"})
            contact = await api.ok(
                "POST", "/api/v1/partners", {"name": "Contact Corp", "kind": "broker", "grants": ["contact"]}
            )
            key = (await api.ok("POST", f"/api/v1/partners/{plain['id']}/keys", {}))["key"]
            # the partner subscribes with its own key; it cannot grant itself anything
            status, refused = await api.call(
                "POST",
                "/api/v1/webhooks",
                {"url": sandbox.url("plain"), "events": ["*"], "grants": ["contact"]},
                token=key,
            )
            assert (status, refused["error"]) == (403, "operator_only")
            sub_plain = await api.ok(
                "POST",
                "/api/v1/webhooks",
                {"url": sandbox.url("plain"), "events": ["*"], "secret": secrets["plain"]},
                token=key,
            )
            sub_contact = await api.ok(
                "POST",
                "/api/v1/webhooks",
                {
                    "partner_id": contact["id"],
                    "url": sandbox.url("contact"),
                    "events": ["*"],
                    "secret": secrets["contact"],
                },
            )

            for family in sorted(set(FAMILIES.values())):
                batch = [m.event for t, m in marked.items() if FAMILIES[t.partition(".")[0]] == family]
                publish(kafka_bootstrap, f"{prefix}insurance.{family}.events", batch)

            def ids(sub: dict[str, Any], events: list[MarkedEvent]) -> set[str]:
                return {webhook_id_for(sub["id"], str(m.event.event_id)) for m in events}

            await received_all(sandbox.partner("plain"), ids(sub_plain, list(marked.values())))
            await received_all(sandbox.partner("contact"), ids(sub_contact, list(marked.values())))
            first_plain = bodies_by_id(sandbox.partner("plain"))
            first_contact = bodies_by_id(sandbox.partner("contact"))

            # The operator grants the first partner identity; the next event carries it.
            changed = await api.ok("PATCH", f"/api/v1/partners/{plain['id']}", {"grants": ["identity"]})
            assert changed["grants"] == ["identity"]
            customer = marked["customer.created"]
            again = MarkedEvent(
                customer.event.model_copy(update={"event_id": uuid.uuid4()}),
                customer.markers,
                customer.fields,
            )
            publish(kafka_bootstrap, f"{prefix}insurance.customer.events", [again.event])
            (later_id,) = ids(sub_plain, [again])
            await received_all(sandbox.partner("plain"), {later_id})
            await received_all(sandbox.partner("contact"), ids(sub_contact, [again]))  # both subscribe to *
            later = bodies_by_id(sandbox.partner("plain"))[later_id]
        finally:
            stop.set()
            await task

    # One delivery per event type to each partner.
    assert set(first_plain) == ids(sub_plain, list(marked.values()))
    assert set(first_contact) == ids(sub_contact, list(marked.values()))

    # No grant: not one marker, across every event type published.
    every_marker = set().union(*(m.all_markers() for m in marked.values()))
    plain_text = b"\n".join(first_plain.values()).decode()
    assert sorted(m for m in every_marker if m in plain_text) == []

    # contact: every contact marker (e-mail, postal addresses), nothing of the other classes.
    contact_text = b"\n".join(first_contact.values()).decode()
    for event_type, m in marked.items():
        for data_class, markers in m.markers.items():
            body = first_contact[webhook_id_for(sub_contact["id"], str(m.event.event_id))].decode()
            for marker in markers:
                assert (marker in body) == (data_class == DataClass.CONTACT), (event_type, marker)
    assert '"zqx10.contact@example.org"' in contact_text
    assert '"ZQX11DOC"' not in contact_text  # a passport number

    # After the grant: identity markers, still no contact ones.
    for data_class, markers in again.markers.items():
        for marker in markers:
            assert (marker.encode() in later) == (data_class == DataClass.IDENTITY), marker

    # Every body verifies, with both schemes.
    assert check_signatures(sandbox.partner("plain"), secrets["plain"]) == len(marked) + 1
    assert check_signatures(sandbox.partner("contact"), secrets["contact"]) == len(marked) + 1
