"""Webhook subscriptions: filters, versions, rotation grace, records, public view, the table."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.contract import EVENT_TYPES
from processors.errors import DecodeError
from processors.webhooks.secrets import SecretBox, StoredSecret, active_secrets
from processors.webhooks.subscriptions import (
    InvalidSubscription,
    Subscription,
    SubscriptionTable,
    filter_matches,
    loggable_url,
    new_subscription_id,
    valid_event_type,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOX = SecretBox.ephemeral()
CLEAR = "whsec_dGhpcyBpcyBhIHRlc3Qgc2VjcmV0IG9mIDMyIGJ5dGVzIQ=="


def make(events: list[str] | None = None, *, sub_id: str | None = None, **fields: Any) -> Subscription:
    sub_id = sub_id or new_subscription_id()
    secret = StoredSecret(ciphertext=BOX.encrypt(CLEAR, associated=sub_id), created_at=NOW)
    defaults: dict[str, Any] = {
        "id": sub_id,
        "url": "https://partner.example.com/hooks",
        "events": events if events is not None else ["policy.issued"],
        "secrets": (secret,),
        "created_at": NOW,
        "updated_at": NOW,
    }
    defaults.update(fields)
    return Subscription.create(**defaults)


# -- ids and fields -----------------------------------------------------------------------------


def test_a_new_subscription_gets_an_id_and_defaults() -> None:
    sub = make()

    assert sub.id.startswith("ep_")
    assert len(sub.id) == 27
    assert all(c in "0123456789abcdef" for c in sub.id[3:])
    assert (sub.active, sub.ordered, sub.max_concurrency, sub.rate_limit_per_s) == (True, False, 10, None)
    assert sub.version == 1
    assert sub.deliverable


def test_generated_ids_differ() -> None:
    assert len({new_subscription_id() for _ in range(200)}) == 200


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("id", "ep_123", "id"),
        ("url", "ftp://partner.example.com/", "url"),
        ("url", "https:///no-host", "url"),
        ("url", "https://partner.example.com/a b", "url"),
        ("url", "https://partner.example.com:99999/", "url"),
        ("max_concurrency", 0, "max_concurrency"),
        ("max_concurrency", 101, "max_concurrency"),
        ("rate_limit_per_s", 0, "rate_limit_per_s"),
        ("description", "x" * 201, "description"),
        ("created_at", datetime(2025, 1, 1), "created_at"),  # naive on purpose
        ("secrets", (), "secrets"),
        ("events", [], "events"),
    ],
)
def test_invalid_fields_are_refused_with_the_field_named(field: str, value: Any, where: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        make(**{field: value})

    assert any(reason.startswith(f"{where}:") for reason in caught.value.reasons), caught.value.reasons


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(InvalidSubscription, match="metadata"):
        make(metadata={"a": 1})


# -- filters ------------------------------------------------------------------------------------


def test_filters_are_deduplicated_in_order() -> None:
    sub = make(["policy.issued", "claim.*", "policy.issued", "*", "claim.*"])

    assert sub.events == ("policy.issued", "claim.*", "*")


@pytest.mark.parametrize(
    "bad",
    ["Policy.issued", "policy", "policy.", ".issued", "policy.**", "policy*", "po licy.issued", "*.*", ""],
)
def test_filters_outside_the_grammar_are_refused(bad: str) -> None:
    with pytest.raises(InvalidSubscription, match="events"):
        make([bad])


def test_an_exact_filter_naming_no_known_type_is_refused_with_the_known_types() -> None:
    with pytest.raises(InvalidSubscription) as caught:
        make(["policy.isued"])

    (reason,) = caught.value.reasons
    assert "unknown event type 'policy.isued'" in reason
    assert "policy.issued" in reason


def test_a_prefix_matching_no_known_type_is_refused() -> None:
    with pytest.raises(InvalidSubscription, match="matches no known event type"):
        make(["polcy.*"])


def test_every_known_type_is_accepted_as_an_exact_filter() -> None:
    sub = make(list(EVENT_TYPES))

    assert set(sub.events) == set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("event_filter", "event_type", "expected"),
    [
        ("policy.issued", "policy.issued", True),
        ("policy.issued", "policy.renewed", False),
        ("policy.*", "policy.issued", True),
        ("policy.*", "policyholder.created", False),
        ("policy.*", "claim.paid", False),
        ("customer.*", "customer.kyc_requested", True),
        ("*", "kyc.approved", True),
        ("a.b.*", "a.b.c", True),
        ("a.b.*", "a.bc.d", False),
    ],
)
def test_filter_matching(event_filter: str, event_type: str, expected: bool) -> None:
    assert filter_matches(event_filter, event_type) is expected


def test_a_subscription_matches_when_any_filter_does() -> None:
    sub = make(["claim.paid", "policy.*"])

    assert sub.matches("policy.cancelled")
    assert sub.matches("claim.paid")
    assert not sub.matches("claim.closed")


def test_valid_event_type() -> None:
    assert valid_event_type("customer.kyc_requested")
    assert not valid_event_type("policy")
    assert not valid_event_type("policy.*")


# -- new versions -------------------------------------------------------------------------------


def test_updated_changes_fields_and_bumps_the_version() -> None:
    sub = make()
    later = NOW + timedelta(minutes=5)

    new = sub.updated(description="Broker portal", max_concurrency=3, events=["claim.*"], now=later)

    assert (new.description, new.max_concurrency, new.events) == ("Broker portal", 3, ("claim.*",))
    assert new.version == sub.version + 1
    assert new.updated_at == later
    assert new.created_at == sub.created_at
    assert new.secrets == sub.secrets
    assert sub.description is None  # the original is untouched


def test_updated_refuses_fields_it_does_not_own() -> None:
    with pytest.raises(TypeError, match="secrets"):
        make().updated(secrets=())


def test_updated_validates_its_changes() -> None:
    sub = make()

    with pytest.raises(InvalidSubscription, match="max_concurrency"):
        sub.updated(max_concurrency=0)
    with pytest.raises(InvalidSubscription, match="unknown event type"):
        sub.updated(events=["policy.nope"])


def test_disabled_and_enabled() -> None:
    failing = make().with_failing_since(NOW - timedelta(days=5), now=NOW)
    off = failing.disabled("endpoint answered 410 Gone", NOW)

    assert not off.active
    assert not off.deliverable
    assert (off.disabled_reason, off.disabled_at) == ("endpoint answered 410 Gone", NOW)
    assert off.version == failing.version + 1

    on = off.enabled(NOW + timedelta(hours=1))

    assert on.active
    assert on.deliverable
    assert (on.disabled_reason, on.disabled_at, on.failing_since) == (None, None, None)
    assert on.version == off.version + 1


def test_setting_active_on_a_disabled_subscription_enables_it() -> None:
    off = make().with_failing_since(NOW, now=NOW).disabled("failing for 5 days", NOW)

    on = off.updated(active=True, now=NOW)

    assert on.deliverable
    assert (on.disabled_reason, on.failing_since) == (None, None)


def test_with_failing_since_sets_and_clears() -> None:
    sub = make()

    failing = sub.with_failing_since(NOW, now=NOW)
    recovered = failing.with_failing_since(None, now=NOW)

    assert failing.failing_since == NOW
    assert recovered.failing_since is None
    assert recovered.version == sub.version + 2


def test_a_disabled_subscription_must_not_be_active() -> None:
    with pytest.raises(InvalidSubscription, match="disabled"):
        make(disabled_reason="gone", disabled_at=NOW, active=True)


# -- rotation -----------------------------------------------------------------------------------


def test_rotation_keeps_the_previous_secret_for_the_grace() -> None:
    sub = make()
    new_token = BOX.encrypt("whsec_second_secret_long_enough_1234", associated=sub.id)

    rotated = sub.rotated(new_token, now=NOW, grace_s=3600)

    assert [s.ciphertext for s in rotated.secrets] == [new_token, sub.secrets[0].ciphertext]
    assert rotated.secrets[0].expires_at is None
    assert rotated.secrets[1].expires_at == NOW + timedelta(hours=1)
    assert rotated.rotation_expires_at(NOW) == NOW + timedelta(hours=1)
    assert rotated.version == sub.version + 1
    clear = active_secrets(rotated.secrets, BOX, associated=sub.id, now=NOW + timedelta(minutes=59))
    assert [s.get_secret_value() for s in clear] == ["whsec_second_secret_long_enough_1234", CLEAR]
    after = active_secrets(rotated.secrets, BOX, associated=sub.id, now=NOW + timedelta(hours=1))
    assert [s.get_secret_value() for s in after] == ["whsec_second_secret_long_enough_1234"]


def test_a_second_rotation_drops_expired_secrets_and_keeps_running_graces() -> None:
    sub = make()
    first = sub.rotated("v1:first", now=NOW, grace_s=3600)
    # Within the first grace: the original keeps its expiry, the first secret gets one.
    second = first.rotated("v1:second", now=NOW + timedelta(minutes=30), grace_s=7200)

    assert [s.ciphertext for s in second.secrets] == ["v1:second", "v1:first", sub.secrets[0].ciphertext]
    assert second.secrets[1].expires_at == NOW + timedelta(minutes=30, hours=2)
    assert second.secrets[2].expires_at == NOW + timedelta(hours=1)
    # After the first grace: the original is gone.
    third = second.rotated("v1:third", now=NOW + timedelta(hours=1, minutes=1), grace_s=60)

    assert [s.ciphertext for s in third.secrets] == ["v1:third", "v1:second", "v1:first"]
    assert third.secrets[1].expires_at == NOW + timedelta(hours=1, minutes=2)


def test_rotation_without_grace_drops_the_previous_secret() -> None:
    rotated = make().rotated("v1:only", now=NOW, grace_s=0)

    assert [s.ciphertext for s in rotated.secrets] == ["v1:only"]
    assert rotated.rotation_expires_at(NOW) is None


def test_rotation_refuses_a_negative_grace() -> None:
    with pytest.raises(InvalidSubscription, match="grace_s"):
        make().rotated("v1:x", now=NOW, grace_s=-1)


# -- records and views --------------------------------------------------------------------------


def test_record_round_trip() -> None:
    sub = (
        make(["policy.*", "claim.paid"], ordered=True, rate_limit_per_s=2.5, description="d")
        .rotated("v1:next", now=NOW, grace_s=60)
        .with_failing_since(NOW, now=NOW)
    )

    back = Subscription.from_record(sub.to_record())

    assert back == sub
    assert back.secrets[1].expires_at == NOW + timedelta(seconds=60)


def test_the_record_holds_only_encrypted_secrets() -> None:
    sub = make()

    record = sub.to_record()

    assert CLEAR.encode() not in record
    document = json.loads(record)
    assert document["secrets"][0]["ciphertext"] == sub.secrets[0].ciphertext
    assert BOX.decrypt(document["secrets"][0]["ciphertext"], associated=sub.id).get_secret_value() == CLEAR


def test_a_stored_record_may_name_a_type_this_build_does_not_know() -> None:
    document = json.loads(make().to_record())
    document["events"] = ["policy.transferred", "underwriting.*"]

    back = Subscription.from_record(json.dumps(document).encode())

    assert back.events == ("policy.transferred", "underwriting.*")
    assert back.matches("policy.transferred")
    # Changing another field keeps them; changing the filters checks them.
    assert back.updated(description="x").events == back.events
    with pytest.raises(InvalidSubscription):
        back.updated(events=["policy.transferred"])


def test_a_stored_record_with_fields_from_a_newer_build_still_loads() -> None:
    sub = make()
    document = json.loads(sub.to_record())
    document["retry_policy"] = {"max_attempts": 3}

    assert Subscription.from_record(json.dumps(document).encode()) == sub


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[]",
        b'{"id": "ep_000000000000000000000000"}',
        b'{"secrets": [{"ciphertext": ""}]}',
        b'{"secrets": ["x"]}',
    ],
)
def test_undecodable_records_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        Subscription.from_record(value)


def test_a_record_with_a_bad_filter_names_the_field_not_the_content() -> None:
    document = json.loads(make().to_record())
    document["events"] = ["NOT VALID secretish"]

    with pytest.raises(DecodeError) as caught:
        Subscription.from_record(json.dumps(document).encode())

    assert "events" in caught.value.reason
    assert "secretish" not in caught.value.reason


def test_public_view_never_shows_a_secret_or_ciphertext() -> None:
    sub = make(url="https://user:hunter2@partner.example.com/h?token=abc").rotated(
        BOX.encrypt("whsec_another_long_enough_secret_99", associated="x"), now=NOW, grace_s=600
    )

    view = sub.public_view(NOW)
    text = json.dumps(view)

    assert "secret" not in {k for k in view if k != "secret_rotation_expires_at"}
    assert "secrets" not in view
    for stored in sub.secrets:
        assert stored.ciphertext not in text
    assert CLEAR not in text
    assert "hunter2" not in text
    assert view["url"] == "https://user:****@partner.example.com/h?token=abc"
    assert view["secret_rotation_expires_at"] == "2025-03-01T12:10:00Z"
    assert view["events"] == ["policy.issued"]
    assert view["created_at"] == "2025-03-01T12:00:00Z"


def test_public_view_has_no_rotation_expiry_after_the_grace() -> None:
    sub = make().rotated("v1:x", now=NOW, grace_s=60)

    assert sub.public_view(NOW + timedelta(seconds=61))["secret_rotation_expires_at"] is None
    assert make().public_view(NOW)["secret_rotation_expires_at"] is None


def test_repr_hides_ciphertext_userinfo_and_query() -> None:
    sub = make(url="https://user:hunter2@partner.example.com/h?token=abc")

    text = repr(sub)

    assert "hunter2" not in text
    assert "token=abc" not in text
    assert sub.secrets[0].ciphertext not in text
    assert sub.id in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@partner.example.com:8443/a/b?token=x#f", "https://partner.example.com:8443"),
        ("http://[::1]/x", "http://[::1]"),
        ("https://h.example/", "https://h.example"),
        ("https://h.example:bad/", "<invalid url>"),
    ],
)
def test_loggable_url(url: str, expected: str) -> None:
    assert loggable_url(url) == expected


# -- the table ----------------------------------------------------------------------------------


def test_the_table_applies_records_and_tombstones() -> None:
    table = SubscriptionTable()
    a, b = make(["policy.*"]), make(["claim.paid"])

    assert table.apply(a.id.encode(), a.to_record())
    assert table.apply(b.id.encode(), b.to_record())
    newer = a.updated(description="new")
    assert table.apply(a.id.encode(), newer.to_record())

    assert len(table) == 2
    assert table.get(a.id) == newer
    assert [s.id for s in table.all()] == sorted([a.id, b.id])

    assert table.apply(a.id.encode(), None)

    assert table.get(a.id) is None
    assert len(table) == 1
    assert table.matching("policy.issued") == []
    assert table.apply(a.id.encode(), None)  # a tombstone for nothing is harmless
    assert len(table) == 1


def test_undecodable_records_are_skipped_counted_and_logged_without_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = SubscriptionTable()
    sub = make()
    table.apply(sub.id.encode(), sub.to_record())
    secretish = b'{"secrets": [], "url": "https://user:topsecret@x.example/"}'

    with caplog.at_level(logging.WARNING):
        applied = table.apply(sub.id.encode(), secretish)
        bad_key = table.apply(b"not-an-id", sub.to_record())
        mismatch = table.apply(new_subscription_id().encode(), sub.to_record())

    assert (applied, bad_key, mismatch) == (False, False, False)
    assert table.skipped == 3
    assert table.get(sub.id) == sub  # the last good version stays
    assert len(table) == 1
    assert "topsecret" not in caplog.text
    assert sub.id in caplog.text
    assert len(caplog.records) == 3


def test_matching_only_returns_deliverable_subscriptions() -> None:
    table = SubscriptionTable()
    on = make(["policy.issued"])
    paused = make(["policy.issued"], active=False)
    off = make(["policy.issued"]).disabled("gone", NOW)
    for sub in (on, paused, off):
        table.apply(sub.id.encode(), sub.to_record())

    assert [s.id for s in table.matching("policy.issued")] == [on.id]

    table.apply(off.id.encode(), off.enabled(NOW).to_record())

    assert {s.id for s in table.matching("policy.issued")} == {on.id, off.id}


def test_the_cache_follows_changes() -> None:
    table = SubscriptionTable()
    sub = make(["policy.issued"])
    table.apply(sub.id.encode(), sub.to_record())
    assert [s.id for s in table.matching("policy.issued")] == [sub.id]

    table.apply(sub.id.encode(), sub.updated(events=["claim.*"]).to_record())

    assert table.matching("policy.issued") == []
    assert [s.id for s in table.matching("claim.paid")] == [sub.id]


def test_matching_agrees_with_a_brute_force_filter_over_random_subscriptions() -> None:
    rng = random.Random(20250301)
    types = [*EVENT_TYPES, "policy.transferred", "claim.reopened.late", "misc.thing"]
    filters = ["*", *EVENT_TYPES, *{t.split(".")[0] + ".*" for t in types}, "claim.reopened.*"]
    table = SubscriptionTable()
    model: dict[str, Subscription] = {}
    ids = [new_subscription_id() for _ in range(60)]

    for step in range(1500):
        sub_id = rng.choice(ids)
        if rng.random() < 0.15:
            table.apply(sub_id.encode(), None)
            model.pop(sub_id, None)
        else:
            events = rng.sample(filters, rng.randint(1, 4))
            document = json.loads(make(["policy.issued"], sub_id=sub_id).to_record())
            document["events"] = events
            document["active"] = rng.random() < 0.8
            document["version"] = step + 1
            table.apply(sub_id.encode(), json.dumps(document).encode())
            model[sub_id] = Subscription.from_record(json.dumps(document).encode())
        if step % 10 == 0:
            for event_type in rng.sample(types, 5):
                expected = sorted(s.id for s in model.values() if s.active and s.matches(event_type))
                assert [s.id for s in table.matching(event_type)] == expected, (step, event_type)

    assert len(table) == len(model)
    for event_type in types:
        expected = sorted(s.id for s in model.values() if s.active and s.matches(event_type))
        assert [s.id for s in table.matching(event_type)] == expected
