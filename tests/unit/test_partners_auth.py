"""Partner keys checked against the registry table, and the registry's operations (in memory)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from processors.errors import BrokerError
from processors.partners.auth import Caller, KeyRefused, PartnerKeys
from processors.partners.keys import generate_key, verify_key
from processors.partners.model import (
    ApiKey,
    InvalidPartner,
    KeyUsage,
    Partner,
    PartnerConflict,
    PartnerNotFound,
    RegistryEntry,
)
from processors.partners.registry import CreatedKey, LimitReached, PartnerRegistry
from tests.unit.api_fakes import NOW, Clock, FakePartnerStore
from tests.unit.api_fakes import clock as clock


@pytest.fixture
def store() -> FakePartnerStore:
    return FakePartnerStore()


@pytest.fixture
def registry(store: FakePartnerStore, clock: Clock) -> PartnerRegistry:
    return PartnerRegistry(store, clock=clock)


@pytest.fixture
def keys(store: FakePartnerStore, clock: Clock) -> PartnerKeys:
    return PartnerKeys(store, clock=clock)


async def partner_and_key(registry: PartnerRegistry, **key_options: object) -> tuple[Partner, CreatedKey]:
    partner = await registry.create_partner(name="Acme Brokers", kind="broker")
    created = await registry.create_key(partner.id, **key_options)  # type: ignore[arg-type]
    return partner, created


def usage_records(store: FakePartnerStore) -> list[str]:
    return [key for key, _ in store.records if key.endswith(".last_used")]


# -- authenticate -------------------------------------------------------------------------------


async def test_a_valid_key_names_its_partner(registry: PartnerRegistry, keys: PartnerKeys) -> None:
    partner, created = await partner_and_key(registry)

    caller = await keys.authenticate(created.issued.key.get_secret_value())

    assert caller == Caller(partner_id=partner.id, key_id=created.record.id)
    assert not caller.is_operator
    assert caller.sees(partner.id)
    assert not caller.sees("prt_000000000000000000000000")
    assert not caller.sees(None)  # the operator's legacy subscriptions


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # the right id, a wrong secret
        lambda k: k[:8] + "zzzzzzzz" + k[16:],  # an unknown id
        lambda k: k[:-3],  # malformed
        lambda k: "pk_live_",
    ],
)
async def test_anything_but_the_key_is_invalid(
    registry: PartnerRegistry, keys: PartnerKeys, mangle: object
) -> None:
    _, created = await partner_and_key(registry)
    offered = mangle(created.issued.key.get_secret_value())  # type: ignore[operator]

    assert await keys.authenticate(offered) == KeyRefused("invalid_key", "the API key is not valid")


async def test_a_revoked_key_is_refused_at_once(
    registry: PartnerRegistry, keys: PartnerKeys, clock: Clock
) -> None:
    partner, created = await partner_and_key(registry)
    key = created.issued.key.get_secret_value()
    assert isinstance(await keys.authenticate(key), Caller)

    await registry.revoke_key(partner.id, created.record.id)

    refused = await keys.authenticate(key)
    assert isinstance(refused, KeyRefused)
    assert refused.reason == "key_revoked"


async def test_an_expired_key_is_refused(registry: PartnerRegistry, keys: PartnerKeys, clock: Clock) -> None:
    _, created = await partner_and_key(registry, expires_at=NOW + timedelta(hours=1))
    key = created.issued.key.get_secret_value()
    clock.now = NOW + timedelta(minutes=59)
    assert isinstance(await keys.authenticate(key), Caller)

    clock.now = NOW + timedelta(hours=1)

    refused = await keys.authenticate(key)
    assert isinstance(refused, KeyRefused)
    assert refused.reason == "key_expired"


async def test_a_suspended_partners_keys_are_refused_until_it_is_active(
    registry: PartnerRegistry, keys: PartnerKeys
) -> None:
    partner, created = await partner_and_key(registry)
    key = created.issued.key.get_secret_value()

    await registry.update_partner(partner.id, status="suspended")
    refused = await keys.authenticate(key)
    await registry.update_partner(partner.id, status="active")
    accepted = await keys.authenticate(key)

    assert isinstance(refused, KeyRefused)
    assert (refused.reason, refused.message) == ("partner_suspended", "the partner is suspended")
    assert isinstance(accepted, Caller)


async def test_a_key_made_elsewhere_a_moment_ago_is_found_after_a_catch_up(
    store: FakePartnerStore, keys: PartnerKeys
) -> None:
    partner = Partner.create(name="Re Corp", kind="reinsurer", reinsurer_code="RE001")
    issued = generate_key()
    record = ApiKey.create(id=issued.key_id, partner_id=partner.id, digest=issued.digest)
    store.on_catch_up = [partner, record]

    caller = await keys.authenticate(issued.key.get_secret_value())

    assert caller == Caller(partner_id=partner.id, key_id=issued.key_id)
    assert store.catch_ups == 1


async def test_known_keys_do_not_wait_for_the_broker(
    registry: PartnerRegistry, store: FakePartnerStore, keys: PartnerKeys
) -> None:
    _, created = await partner_and_key(registry)
    before = store.catch_ups

    for _ in range(5):
        assert isinstance(await keys.authenticate(created.issued.key.get_secret_value()), Caller)

    assert store.catch_ups == before


async def test_a_registry_that_is_not_read_decides_nothing(
    registry: PartnerRegistry, store: FakePartnerStore, keys: PartnerKeys
) -> None:
    _, created = await partner_and_key(registry)
    store.running = False

    refused = await keys.authenticate(created.issued.key.get_secret_value())

    assert isinstance(refused, KeyRefused)
    assert refused.reason == "unavailable"


async def test_last_use_is_written_at_most_once_a_minute_per_key(
    registry: PartnerRegistry, store: FakePartnerStore, keys: PartnerKeys, clock: Clock
) -> None:
    partner, first = await partner_and_key(registry)
    second = await registry.create_key(partner.id)

    for seconds in range(0, 60, 5):  # 12 requests in the first minute
        clock.now = NOW + timedelta(seconds=seconds)
        assert isinstance(await keys.authenticate(first.issued.key.get_secret_value()), Caller)
    assert isinstance(await keys.authenticate(second.issued.key.get_secret_value()), Caller)
    await keys.close()
    in_the_first_minute = usage_records(store)
    clock.now = NOW + timedelta(seconds=60)
    assert isinstance(await keys.authenticate(first.issued.key.get_secret_value()), Caller)
    await keys.close()

    assert in_the_first_minute == [
        first.record.record_key + ".last_used",
        second.record.record_key + ".last_used",
    ]
    assert len(usage_records(store)) == 3
    assert store.table.last_used(first.record.id) == NOW + timedelta(seconds=60)
    assert keys.usage_writes == 3


async def test_a_use_another_instance_wrote_counts_toward_the_minute(
    registry: PartnerRegistry, store: FakePartnerStore, keys: PartnerKeys, clock: Clock
) -> None:
    _, created = await partner_and_key(registry)
    await store.put(KeyUsage(id=created.record.id, last_used_at=NOW - timedelta(seconds=30)))
    written = len(usage_records(store))

    assert isinstance(await keys.authenticate(created.issued.key.get_secret_value()), Caller)
    await keys.close()

    assert len(usage_records(store)) == written


async def test_a_failed_usage_write_is_logged_without_the_key_and_tried_again(
    registry: PartnerRegistry,
    store: FakePartnerStore,
    keys: PartnerKeys,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, created = await partner_and_key(registry)
    key = created.issued.key.get_secret_value()
    store.fail = BrokerError("broker down")

    with caplog.at_level(logging.WARNING):
        assert isinstance(await keys.authenticate(key), Caller)  # the request does not fail
        await keys.close()
    store.fail = None
    clock.now = NOW + timedelta(seconds=1)
    assert isinstance(await keys.authenticate(key), Caller)
    await keys.close()

    assert f"last use of key {created.record.id} not stored" in caplog.text
    assert key not in caplog.text
    assert created.issued.digest not in caplog.text
    assert store.table.last_used(created.record.id) == NOW + timedelta(seconds=1)


async def test_usage_writes_in_flight_are_bounded(registry: PartnerRegistry, store: FakePartnerStore) -> None:
    partner = await registry.create_partner(name="Busy", kind="service_provider")
    created = [await registry.create_key(partner.id) for _ in range(3)]
    gate = asyncio.Event()
    real_put = store.put

    async def slow_put(entry: RegistryEntry) -> None:
        await gate.wait()
        await real_put(entry)

    store.put = slow_put  # type: ignore[method-assign]
    keys = PartnerKeys(store, max_pending_writes=2)

    for made in created:
        assert isinstance(await keys.authenticate(made.issued.key.get_secret_value()), Caller)
    gate.set()
    await keys.close()

    assert keys.usage_writes == 2
    assert len(usage_records(store)) == 2


# -- the registry -------------------------------------------------------------------------------


async def test_create_partner_writes_one_record(registry: PartnerRegistry, store: FakePartnerStore) -> None:
    partner = await registry.create_partner(name="Re Corp", kind="reinsurer", reinsurer_code="RE001")

    assert store.records == [(partner.id, partner.to_record())]
    assert registry.partner(partner.id) == partner
    assert (partner.created_at, partner.updated_at) == (NOW, NOW)


async def test_codes_are_unique_across_partners(registry: PartnerRegistry) -> None:
    first = await registry.create_partner(name="Re Corp", kind="reinsurer", reinsurer_code="RE001")
    other = await registry.create_partner(name="Surplus Re", kind="reinsurer", reinsurer_code="RE003")

    with pytest.raises(PartnerConflict, match=f"reinsurer_code: partner {first.id} has this code already"):
        await registry.create_partner(name="Copy", kind="reinsurer", reinsurer_code="re001")
    with pytest.raises(PartnerConflict):
        await registry.update_partner(other.id, reinsurer_code="RE001")
    assert (await registry.update_partner(first.id, reinsurer_code="RE001")).version == 1  # its own code


async def test_update_without_changes_writes_nothing(
    registry: PartnerRegistry, store: FakePartnerStore
) -> None:
    partner = await registry.create_partner(name="Acme", kind="broker")
    written = len(store.records)

    same = await registry.update_partner(partner.id, name="Acme", status="active")

    assert same == partner
    assert len(store.records) == written


async def test_unknown_partners_and_keys_are_not_found(registry: PartnerRegistry) -> None:
    partner, created = await partner_and_key(registry)
    other = await registry.create_partner(name="Other", kind="broker")

    with pytest.raises(PartnerNotFound):
        await registry.update_partner("prt_000000000000000000000000", name="x")
    with pytest.raises(PartnerNotFound):
        await registry.create_key("prt_000000000000000000000000")
    with pytest.raises(PartnerNotFound):
        await registry.revoke_key(other.id, created.record.id)  # another partner's key
    with pytest.raises(PartnerNotFound):
        await registry.revoke_key(partner.id, "zzzzzzzz")


async def test_a_key_is_stored_as_a_digest_only(registry: PartnerRegistry, store: FakePartnerStore) -> None:
    _, created = await partner_and_key(registry, name="portal", expires_at=NOW + timedelta(days=90))
    key = created.issued.key.get_secret_value()

    stored = b"".join(value for _, value in store.records)
    assert key.encode() not in stored
    assert key.split("_", 2)[2][9:].encode() not in stored  # nor the secret part
    assert verify_key(key, created.record.digest)
    document = created.document(NOW)
    assert document["key"] == key
    assert document["prefix"] == created.record.prefix
    assert document["expires_at"] == "2025-05-30T12:00:00Z"


async def test_revocation_by_prefix_and_again_changes_nothing(
    registry: PartnerRegistry, store: FakePartnerStore
) -> None:
    partner, created = await partner_and_key(registry)

    revoked = await registry.revoke_key(partner.id, created.record.prefix)
    written = len(store.records)
    again = await registry.revoke_key(partner.id, created.record.id)

    assert revoked.revoked_at == NOW
    assert again == revoked
    assert len(store.records) == written


async def test_active_keys_are_bounded_and_revoking_frees_a_place(
    store: FakePartnerStore, clock: Clock
) -> None:
    registry = PartnerRegistry(store, clock=clock, max_active_keys=2)
    partner, first = await partner_and_key(registry)
    await registry.create_key(partner.id)

    with pytest.raises(LimitReached, match="at most 2 active keys per partner"):
        await registry.create_key(partner.id)
    await registry.revoke_key(partner.id, first.record.id)
    third = await registry.create_key(partner.id)

    assert third.record.state(NOW) == "active"
    assert len(registry.keys(partner.id)) == 3


async def test_a_key_may_not_expire_in_the_past(registry: PartnerRegistry) -> None:
    partner = await registry.create_partner(name="Acme", kind="broker")

    with pytest.raises(InvalidPartner, match="expires_at: must be in the future"):
        await registry.create_key(partner.id, expires_at=NOW)


async def test_changes_wait_for_the_table_and_fail_when_it_cannot_be_read(
    registry: PartnerRegistry, store: FakePartnerStore
) -> None:
    store.catch_up_fail = BrokerError("not caught up")

    with pytest.raises(BrokerError):
        await registry.create_partner(name="Acme", kind="broker")
    assert store.records == []
    assert store.catch_ups == 1
