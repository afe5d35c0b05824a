"""Grants: on the partner (operators only), effective per subscription, read at fan-out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.partners.model import InvalidPartner, Partner, decode_record
from processors.partners.projection import NO_GRANTS, DataClass
from processors.partners.registry import PartnerRegistry
from processors.runtime.message import StaticMessage, header_value
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, effective_grants
from processors.webhooks.verify import verify_webhook
from tests.pii_markers import marked_event
from tests.unit.test_partners_auth import Clock, FakePartnerStore
from tests.unit.test_webhooks_app import SECRET, Harness

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOX = SecretBox.ephemeral()
CODEC = Codec(LocalSchemaIds())


def partner(**fields: Any) -> Partner:
    return Partner.create(name="Acme", kind="broker", created_at=NOW, updated_at=NOW, **fields)


def subscription(partner_id: str | None = None, **fields: Any) -> Subscription:
    sub_id = "ep_" + "c" * 24
    secret = StoredSecret(BOX.encrypt(SECRET, associated=sub_id), created_at=NOW)
    return Subscription.create(
        id=sub_id, partner_id=partner_id, url="https://p.example/h", events=["*"], secrets=[secret], **fields
    )


# -- the partner record ------------------------------------------------------------------------


def test_a_partner_is_granted_nothing_by_default_and_grants_are_kept_in_order() -> None:
    assert partner().grants == ()
    granted = partner(grants=["payment_instrument", "contact", "contact"])
    assert granted.grants == (DataClass.CONTACT, DataClass.PAYMENT_INSTRUMENT)
    assert granted.public_view()["grants"] == ["contact", "payment_instrument"]
    back = decode_record(granted.to_record())
    assert isinstance(back, Partner)
    assert back.grants == granted.grants


def test_an_unknown_grant_is_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidPartner, match="grants"):
        partner(grants=["biometric"])
    with pytest.raises(InvalidPartner, match="grants: each must be one of contact, identity"):
        partner().updated(grants=["contact", "biometric"])


def test_a_grant_a_newer_build_added_is_left_out_when_read_back() -> None:
    """This build cannot project a class it does not know: leaving it out sends less, never more."""
    record = json.loads(partner(grants=["contact"]).to_record())
    record["grants"] = ["contact", "biometric"]
    back = decode_record(json.dumps(record).encode())
    assert isinstance(back, Partner)
    assert back.grants == (DataClass.CONTACT,)


def test_a_record_from_before_grants_loads_with_none() -> None:
    record = json.loads(partner().to_record())
    del record["grants"]
    back = decode_record(json.dumps(record).encode())
    assert isinstance(back, Partner)
    assert back.grants == ()


async def test_the_registry_replaces_grants_and_an_unchanged_set_is_no_new_version() -> None:
    store = FakePartnerStore()
    registry = PartnerRegistry(store, clock=Clock())
    created = await registry.create_partner(name="Acme", kind="broker", grants=["identity"])
    assert created.grants == (DataClass.IDENTITY,)
    changed = await registry.update_partner(created.id, grants=["contact", "identity"])
    assert (changed.grants, changed.version) == ((DataClass.CONTACT, DataClass.IDENTITY), 2)
    same = await registry.update_partner(created.id, grants=["identity", "contact", "contact"])
    assert same.version == 2
    cleared = await registry.update_partner(created.id, grants=[])
    assert (cleared.grants, cleared.version) == ((), 3)
    with pytest.raises(InvalidPartner, match="grants"):
        await registry.update_partner(created.id, grants=["everything"])
    assert len(store.records) == 3


# -- effective grants ----------------------------------------------------------------------------


class Directory:
    def __init__(self, *partners: Partner) -> None:
        self.partners = {p.id: p for p in partners}

    def partner(self, partner_id: str) -> Partner | None:
        return self.partners.get(partner_id)


def test_a_partners_subscription_receives_the_partners_grants() -> None:
    granted = partner(grants=["contact"])
    sub = subscription(granted.id)
    assert effective_grants(sub, Directory(granted)) == {DataClass.CONTACT}
    # the grants of its partner as they are now, whatever the subscription says
    assert effective_grants(sub.updated(grants=["identity"]), Directory(granted)) == {DataClass.CONTACT}


def test_no_partner_in_the_registry_no_grants() -> None:
    sub = subscription(partner().id)
    assert effective_grants(sub, Directory()) == NO_GRANTS
    assert effective_grants(sub, None) == NO_GRANTS


def test_an_operators_subscription_receives_its_own_grants_none_by_default() -> None:
    assert effective_grants(subscription(), Directory()) == NO_GRANTS
    own = subscription(grants=["payment_instrument"])
    assert effective_grants(own, None) == {DataClass.PAYMENT_INSTRUMENT}
    assert own.public_view()["grants"] == ["payment_instrument"]
    assert Subscription.from_record(own.to_record()).grants == own.grants


# -- fan-out in the app ----------------------------------------------------------------------------


def customer_message(h: Harness) -> StaticMessage:
    event = marked_event("customer.created").event
    value, headers = CODEC.encode(event, ContentType.JSON)
    h.offset += 1
    return StaticMessage(
        "insurance.customer.events", 0, h.offset, event.subject.encode(), value, tuple(headers)
    )


async def test_fan_out_reads_each_partners_grants_and_a_change_applies_to_the_next_event() -> None:
    h = Harness()
    registry = FakePartnerStore()
    h.app.partners = registry
    plain, contact = partner(), partner(grants=["contact"])
    for p in (plain, contact):
        await registry.put(p)
    sub_plain = h.subscribe(1, partner_id=plain.id)
    sub_contact = h.subscribe(2, partner_id=contact.id)
    operator_own = h.subscribe(3, grants=["identity"])

    def bodies(records: Any) -> dict[str, dict[str, Any]]:
        return {
            header_value(r.headers, "x-subscription-id") or "": json.loads(r.value or b"")["data"]
            for r in records
        }

    first = bodies(await h.app.process(customer_message(h)))
    assert first[sub_plain.id] == {"customer_id": "CUST-000123"}
    assert first[sub_contact.id] == {"customer_id": "CUST-000123", "email": "zqx10.contact@example.org"}
    assert set(first[operator_own.id]) == {"customer_id", "full_name", "date_of_birth", "country"}

    await registry.put(plain.updated(grants=["identity", "contact"]))
    await registry.put(contact.updated(grants=[]))
    second = bodies(await h.app.process(customer_message(h)))
    assert set(second[sub_plain.id]) == {"customer_id", "full_name", "date_of_birth", "email", "country"}
    assert second[sub_contact.id] == {"customer_id": "CUST-000123"}


async def test_a_projected_body_is_what_is_signed_and_sent() -> None:
    h = Harness()
    registry = FakePartnerStore()
    h.app.partners = registry
    contact = partner(grants=["contact"])
    await registry.put(contact)
    h.subscribe(1, partner_id=contact.id)
    (job,) = [h.as_message(r) for r in await h.app.process(customer_message(h))]
    await h.app.process(job)
    (request,) = h.transport.requests
    assert request.body == job.value()
    assert b"zqx10.contact@example.org" in request.body
    assert b"Zqx9" not in request.body
    verify_webhook(request.body, request.headers, [SECRET])


async def test_the_app_starts_waits_for_and_stops_the_registry() -> None:
    h = Harness()
    registry = FakePartnerStore()
    h.app.partners = registry
    await h.app.start_store()
    assert registry.started
    before = registry.catch_ups
    await h.app.on_assigned([])
    assert registry.catch_ups == before + 1
    await h.app.stop()
    assert registry.stopped
