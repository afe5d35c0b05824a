"""Partners and keys: validation, versions, records, and the registry table."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.errors import DecodeError
from processors.partners.keys import generate_key
from processors.partners.model import (
    ApiKey,
    InvalidPartner,
    KeyUsage,
    Partner,
    decode_record,
    key_record_key,
    new_partner_id,
    usage_record_key,
)
from processors.partners.table import PartnerTable

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def partner(**fields: Any) -> Partner:
    defaults: dict[str, Any] = {
        "name": "Acme Brokers",
        "kind": "broker",
        "created_at": NOW,
        "updated_at": NOW,
    }
    defaults.update(fields)
    return Partner.create(**defaults)


def api_key(partner_id: str, **fields: Any) -> ApiKey:
    issued = generate_key()
    defaults: dict[str, Any] = {
        "id": issued.key_id,
        "partner_id": partner_id,
        "digest": issued.digest,
        "created_at": NOW,
    }
    defaults.update(fields)
    return ApiKey.create(**defaults)


# -- partners -----------------------------------------------------------------------------------


def test_a_new_partner_gets_an_id_and_is_active() -> None:
    made = partner()

    assert made.id.startswith("prt_")
    assert len(made.id) == 28
    assert made.status == "active"
    assert made.active
    assert made.version == 1
    assert len({new_partner_id() for _ in range(200)}) == 200


def test_names_are_trimmed() -> None:
    assert partner(name="  Acme Brokers  ").name == "Acme Brokers"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"id": "prt_123"}, "id"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "Acme\nBrokers"}, "name"),
        ({"kind": "insurer"}, "kind"),
        ({"kind": ""}, "kind"),
        ({"status": "deleted"}, "status"),
        ({"created_at": datetime(2025, 1, 1)}, "created_at"),  # naive on purpose
        ({"distributor_code": "has space"}, "distributor_code"),
        ({"distributor_code": "x" * 65}, "distributor_code"),
        ({"kind": "reinsurer", "reinsurer_code": "-RE1"}, "reinsurer_code"),
    ],
)
def test_invalid_partners_are_refused_with_the_field_named(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidPartner) as caught:
        partner(**fields)

    assert any(reason.startswith(f"{where}:") for reason in caught.value.reasons), caught.value.reasons


def test_codes_belong_to_their_kind() -> None:
    assert partner(kind="reinsurer", reinsurer_code="RE001").reinsurer_code == "RE001"
    assert partner(kind="broker", distributor_code="D-1001").distributor_code == "D-1001"

    with pytest.raises(InvalidPartner, match="reinsurer_code is for partners of kind reinsurer"):
        partner(kind="broker", reinsurer_code="RE001")
    with pytest.raises(InvalidPartner, match="distributor_code is for partners of kind broker"):
        partner(kind="reinsurer", distributor_code="D-1001")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(InvalidPartner, match="email"):
        partner(email="ops@acme.example")


def test_updates_make_a_new_version() -> None:
    made = partner()
    later = NOW + timedelta(hours=1)

    suspended = made.updated(now=later, status="suspended", name="Acme Brokers Ltd")

    assert (suspended.status, suspended.name, suspended.version) == ("suspended", "Acme Brokers Ltd", 2)
    assert not suspended.active
    assert suspended.updated_at == later
    assert suspended.created_at == made.created_at
    assert made.active  # unchanged
    with pytest.raises(InvalidPartner, match="status: must be one of active, suspended"):
        made.updated(status="gone")
    with pytest.raises(TypeError, match="kind"):
        made.updated(kind="reinsurer")


def test_a_partner_record_round_trips() -> None:
    made = partner(kind="reinsurer", reinsurer_code="RE002")

    document = json.loads(made.to_record())
    back = decode_record(made.to_record())

    assert document["type"] == "partner"
    assert back == made


def test_a_record_from_a_newer_build_still_loads() -> None:
    document = json.loads(partner().to_record())
    document.update(kind="managing_agent", status="under_review", contact="ignored")

    back = decode_record(json.dumps(document).encode())

    assert isinstance(back, Partner)
    assert back.kind == "managing_agent"
    assert not back.active  # a status this build does not know refuses the keys


# -- keys ---------------------------------------------------------------------------------------


def test_key_state_follows_expiry_and_revocation() -> None:
    key = api_key(new_partner_id(), expires_at=NOW + timedelta(days=1))

    assert key.state(NOW) == "active"
    assert key.state(NOW + timedelta(days=1) - timedelta(microseconds=1)) == "active"
    assert key.state(NOW + timedelta(days=1)) == "expired"
    revoked = key.revoked(NOW + timedelta(minutes=5))
    assert revoked.state(NOW + timedelta(minutes=5)) == "revoked"
    assert revoked.version == 2
    assert revoked.revoked(NOW + timedelta(hours=1)) is revoked  # revoking again changes nothing
    assert key.revoked_at is None


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"id": "ABCD1234"}, "id"),
        ({"partner_id": "prt_x"}, "partner_id"),
        ({"digest": "md5:abc"}, "digest"),
        ({"expires_at": NOW}, "expires_at must be after created_at"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_invalid_keys_are_refused(fields: dict[str, Any], where: str) -> None:
    owner = fields.pop("partner_id", new_partner_id())
    with pytest.raises(InvalidPartner, match=where):
        api_key(owner, **fields)


def test_a_key_view_never_shows_the_key_or_its_digest() -> None:
    issued = generate_key()
    key = ApiKey.create(
        id=issued.key_id, partner_id=new_partner_id(), digest=issued.digest, created_at=NOW, name="portal"
    )

    view = key.public_view(NOW, NOW + timedelta(minutes=1))
    text = json.dumps(view)

    assert issued.digest not in text
    assert issued.digest.removeprefix("sha256:") not in text
    assert issued.key.get_secret_value() not in text
    assert issued.digest not in repr(key)
    assert view == {
        "id": issued.key_id,
        "prefix": f"pk_live_{issued.key_id}",
        "partner_id": key.partner_id,
        "name": "portal",
        "state": "active",
        "created_at": "2025-03-01T12:00:00Z",
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": "2025-03-01T12:01:00Z",
    }


def test_key_and_usage_records_round_trip() -> None:
    key = api_key(new_partner_id(), expires_at=NOW + timedelta(days=30)).revoked(NOW)
    usage = KeyUsage(id=key.id, last_used_at=NOW)

    assert decode_record(key.to_record()) == key
    assert decode_record(usage.to_record()) == usage
    assert key.record_key == key_record_key(key.id) == f"pk_live_{key.id}"
    assert usage.record_key == usage_record_key(key.id) == f"pk_live_{key.id}.last_used"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not an object"),
        (b'{"type": "webhook"}', "no known type"),
        (b'{"type": "partner", "name": "x"}', "invalid fields"),
    ],
)
def test_undecodable_records_say_why_without_content(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_record(value)


# -- the table ----------------------------------------------------------------------------------


def test_the_table_applies_partners_keys_usage_and_tombstones() -> None:
    table = PartnerTable()
    owner = partner()
    first, second = api_key(owner.id), api_key(owner.id, created_at=NOW + timedelta(seconds=1))
    usage = KeyUsage(id=first.id, last_used_at=NOW + timedelta(minutes=3))

    for entry in (owner, first, second, usage):
        assert table.apply(entry.record_key.encode(), entry.to_record())

    assert table.partner(owner.id) == owner
    assert table.partners() == [owner]
    assert table.key(first.id) == first
    assert table.keys_of(owner.id) == [first, second]
    assert table.last_used(first.id) == usage.last_used_at
    assert table.last_used(second.id) is None
    assert table.get(owner.id) == owner
    assert table.get(first.record_key) == first
    assert table.get(usage.record_key) == usage
    assert len(table) == 1

    assert table.apply(usage.record_key.encode(), None)
    assert table.apply(second.record_key.encode(), None)
    assert table.last_used(first.id) is None
    assert table.keys_of(owner.id) == [first]
    assert table.key(second.id) is None


def test_the_table_skips_bad_records_and_keeps_the_previous_entry(caplog: pytest.LogCaptureFixture) -> None:
    table = PartnerTable()
    owner = partner()
    key = api_key(owner.id)
    table.apply(owner.id.encode(), owner.to_record())
    table.apply(key.record_key.encode(), key.to_record())

    with caplog.at_level(logging.WARNING):
        assert not table.apply(b"garbage", owner.to_record())
        assert not table.apply(None, owner.to_record())
        assert not table.apply(b"\xff\xfe", owner.to_record())
        assert not table.apply(owner.id.encode(), b"{not json")
        assert not table.apply(key.record_key.encode(), owner.to_record())  # id differs from key
        assert not table.apply(new_partner_id().encode(), owner.to_record())

    assert table.skipped == 6
    assert table.partner(owner.id) == owner
    assert table.key(key.id) == key
    assert key.digest not in caplog.text
