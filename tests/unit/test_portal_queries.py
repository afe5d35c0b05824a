"""The portal's owner-scoped reads of the query store, on SQLite and on a real PostgreSQL server.

The store is filled through its own write path (records decoded as the projector decodes them,
applied with :meth:`PortalStore.apply`); the expected answers are computed here from the rows
put in, independently of the SQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, inspect, text

from processors.portal import migrations
from processors.portal.queries import (
    BordereauFilters,
    BordereauPosition,
    CursorCodec,
    DeliveryFilters,
    DeliveryPosition,
    InvalidCursor,
    PortalQueries,
    StoreReads,
)
from processors.portal.records import Change, Coordinates, Source, decode
from processors.portal.schema import METADATA
from processors.portal.store import PortalStore
from processors.webhooks.subscriptions import Subscription
from tests import portal_samples as samples
from tests.portal_stores import store as store
from tests.portal_stores import store_url as store_url
from tests.postgres import pg as pg

PARTNERS_T = "t.integrations.partners"
SUBS_T = "t.integrations.webhook.subscriptions"
LOG_T = "t.integrations.webhook.deliveries"
REPORTS_T = "t.reinsurance.bordereaux"
RESULTS_T = "t.integrations.reinsurance.deliveries"
T0 = samples.NOW


class World:
    """Two partners (a reinsurer A with two endpoints, a broker B with one), their delivery-log
    lines spread over three partitions with ties in time, bordereaux of two reinsurers."""

    def __init__(self, store: PortalStore) -> None:
        self.store = store
        self.offsets: dict[tuple[str, int], int] = {}
        self.a = samples.partner("Reinsurer A", "reinsurer", reinsurer_code="re001")
        self.b = samples.partner("Broker B", "broker")
        self.a1 = samples.subscription(self.a.id)
        self.a2 = samples.subscription(self.a.id)
        self.b1 = samples.subscription(self.b.id)
        self.lines: list[dict[str, Any]] = []
        changes = [
            self._at(Source.PARTNERS, PARTNERS_T, 0, self.a.id, self.a.to_record()),
            self._at(Source.PARTNERS, PARTNERS_T, 0, self.b.id, self.b.to_record()),
            *(self._sub(sub) for sub in (self.a1, self.a2, self.b1)),
        ]
        rng = random.Random(15)
        statuses = ["delivered", "delivered", "failed", "refused", "skipped"]
        for n in range(90):
            sub = (self.a1, self.a2, self.b1)[n % 3]
            # every third time is shared by three lines: the order needs partition and offset
            moment = T0 + timedelta(seconds=n // 3, milliseconds=7)
            status = statuses[rng.randrange(len(statuses))]
            partition = rng.randrange(3)
            value = samples.delivery_line(
                sub.id,
                n,
                topic=LOG_T,
                status=status,
                attempt=0 if status == "skipped" else 1,
                attempted_at=moment,
            )
            change = self._at(Source.DELIVERIES, LOG_T, partition, sub.id, value)
            changes.append(change)
            self.lines.append(
                {
                    "partner_id": sub.partner_id,
                    "sub": sub.id,
                    "status": status,
                    "event_type": "policy.issued" if n % 2 == 0 else "policy.cancelled",
                    "at": moment,
                    "key": (moment, partition, change.at.offset),
                    "webhook_id": f"msg_{sub.id[3:11]}{n:010d}",
                }
            )
        for period in ("2024-01", "2024-02", "2024-03"):
            report = samples.premium_bordereau(period)
            changes.append(self._at(Source.BORDEREAUX, REPORTS_T, 0, samples.TREATY, report))
        changes.append(
            self._at(
                Source.BORDEREAU_DELIVERIES,
                RESULTS_T,
                0,
                samples.TREATY,
                samples.accepted(samples.report_id()),
            )
        )
        store.apply(changes)

    def _at(self, source: Source, topic: str, partition: int, key: str, value: bytes | None) -> Change:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        return decode(source, Coordinates(topic, partition, offset), key.encode(), value)

    def _sub(self, sub: Subscription) -> Change:
        return self._at(Source.SUBSCRIPTIONS, SUBS_T, 0, sub.id, sub.to_record())

    def expected(self, partner_id: str, **only: Any) -> list[tuple[datetime, int, int]]:
        keys = [
            line["key"]
            for line in self.lines
            if line["partner_id"] == partner_id and all(line[name] == value for name, value in only.items())
        ]
        return sorted(keys, reverse=True)


def _keys(rows: list[dict[str, Any]]) -> list[tuple[datetime, int, int]]:
    return [(row["attempted_at"], row["log_partition"], row["log_offset"]) for row in rows]


def _all_pages(reads: StoreReads, partner_id: str, first: int, filters: DeliveryFilters) -> list[Any]:
    seen: list[tuple[datetime, int, int]] = []
    after = None
    for _ in range(1_000):
        page = reads.deliveries(partner_id, first=first, after=after, filters=filters)
        seen += _keys(page.rows)
        if not page.has_next:
            assert len(page.rows) <= first
            return seen
        assert len(page.rows) == first
        after = DeliveryPosition.of(page.rows[-1])
    raise AssertionError("the pages did not end")


# ------------------------------------------------------------------------------ delivery log


@pytest.mark.parametrize("first", [1, 7, 30, 100])
def test_every_line_of_the_partner_comes_once_newest_first_across_pages(
    store: PortalStore, first: int
) -> None:
    world = World(store)
    reads = StoreReads(store)
    for partner in (world.a, world.b):
        seen = _all_pages(reads, partner.id, first, DeliveryFilters())
        assert seen == world.expected(partner.id)
        assert len(seen) == len(set(seen)) > 0


def test_filters_narrow_the_partner_lines_and_never_widen_them(store: PortalStore) -> None:
    world = World(store)
    reads = StoreReads(store)
    a = world.a.id
    assert _all_pages(reads, a, 10, DeliveryFilters(endpoint_id=world.a2.id)) == world.expected(
        a, sub=world.a2.id
    )
    assert _all_pages(reads, a, 10, DeliveryFilters(status="failed")) == world.expected(a, status="failed")
    assert _all_pages(reads, a, 10, DeliveryFilters(event_type="policy.issued")) == world.expected(
        a, event_type="policy.issued"
    )
    since, until = T0 + timedelta(seconds=5), T0 + timedelta(seconds=20)
    windowed = [k for k in world.expected(a) if since <= k[0] < until]
    assert _all_pages(reads, a, 4, DeliveryFilters(since=since, until=until)) == windowed
    # another partner's endpoint as a filter: nothing, not B's lines
    assert _all_pages(reads, a, 10, DeliveryFilters(endpoint_id=world.b1.id)) == []
    combined = DeliveryFilters(endpoint_id=world.a1.id, status="delivered", event_type="policy.cancelled")
    assert _all_pages(reads, a, 3, combined) == world.expected(
        a, sub=world.a1.id, status="delivered", event_type="policy.cancelled"
    )


def test_a_line_written_between_two_pages_does_not_shift_them(store: PortalStore) -> None:
    world = World(store)
    reads = StoreReads(store)
    first = reads.deliveries(world.a.id, first=5)
    newer = samples.delivery_line(world.a1.id, 500, topic=LOG_T, attempted_at=T0 + timedelta(days=1))
    store.apply([world._at(Source.DELIVERIES, LOG_T, 0, world.a1.id, newer)])
    second = reads.deliveries(world.a.id, first=5, after=DeliveryPosition.of(first.rows[-1]))
    assert _keys(first.rows) + _keys(second.rows) == world.expected(world.a.id)[:10]


def test_a_message_lists_its_own_lines_oldest_first_and_nothing_of_another_partner(
    store: PortalStore,
) -> None:
    world = World(store)
    reads = StoreReads(store)
    line = next(line for line in world.lines if line["partner_id"] == world.b.id)
    again = samples.delivery_line(world.b1.id, int(line["webhook_id"][-10:]), topic=LOG_T, attempt=2)
    store.apply([world._at(Source.DELIVERIES, LOG_T, 1, world.b1.id, again)])
    rows = reads.message(world.b.id, line["webhook_id"])
    assert [row["webhook_id"] for row in rows] == [line["webhook_id"]] * 2
    assert _keys(rows) == sorted(_keys(rows))
    assert reads.message(world.a.id, line["webhook_id"]) == []
    assert reads.message(world.b.id, "msg_nothing") == []


def test_page_sizes_are_bounded(store: PortalStore) -> None:
    reads = StoreReads(store)
    with pytest.raises(ValueError, match="between 0 and 100"):
        reads.deliveries("prt_" + "0" * 24, first=101)
    with pytest.raises(ValueError, match="between 0 and 100"):
        reads.bordereaux("RE001", first=-1)


# ------------------------------------------------------------------------------------ health


def test_endpoint_health_counts_the_window_and_only_the_partner_s_endpoints(store: PortalStore) -> None:
    world = World(store)
    reads = StoreReads(store)
    since = T0 + timedelta(seconds=10)
    health = reads.endpoint_health(world.a.id, [world.a1.id, world.a2.id, world.b1.id], since=since)
    for sub in (world.a1, world.a2):
        mine = [line for line in world.lines if line["sub"] == sub.id and line["status"] != "skipped"]
        window = [line for line in mine if line["at"] >= since]
        row = health[sub.id]
        assert row.attempts == len(window)
        assert row.succeeded == sum(1 for line in window if line["status"] == "delivered")
        assert row.last_attempt_at == max(line["at"] for line in mine)
        delivered = [line["at"] for line in mine if line["status"] == "delivered"]
        assert row.last_success_at == (max(delivered) if delivered else None)
    assert health[world.b1.id].attempts == 0
    assert health[world.b1.id].last_attempt_at is None


# -------------------------------------------------------------------------------- bordereaux


def test_bordereaux_are_the_reinsurer_s_only_newest_period_first(store: PortalStore) -> None:
    World(store)
    reads = StoreReads(store)
    seen: list[str] = []
    after = None
    while True:
        page = reads.bordereaux("re001", first=2, after=after)  # codes ignore case
        seen += [row["period_id"] for row in page.rows]
        if not page.has_next:
            break
        after = BordereauPosition.of(page.rows[-1])
    assert seen == ["2024-03", "2024-02", "2024-01"]
    assert reads.bordereaux("RE999", first=10).rows == []
    only = reads.bordereaux("RE001", first=10, filters=BordereauFilters(period_id="2024-02"))
    assert [row["report_id"] for row in only.rows] == [samples.report_id("2024-02")]
    assert (
        reads.bordereaux("RE001", first=10, filters=BordereauFilters(report_type="CLAIMS_BORDEREAUX")).rows
        == []
    )
    assert reads.bordereau("RE001", samples.report_id())["row_count"] == 3  # type: ignore[index]
    assert reads.bordereau("RE999", samples.report_id()) is None
    deliveries = reads.bordereau_deliveries("RE001", [samples.report_id(), samples.report_id("2024-01")])
    assert [row["status"] for row in deliveries[samples.report_id()]] == ["ACCEPTED"]
    assert deliveries[samples.report_id("2024-01")] == []
    assert reads.bordereau_deliveries("RE999", [samples.report_id()]) == {samples.report_id(): []}


# ----------------------------------------------------------------------------------- cursors


def test_cursors_round_trip_and_anything_else_is_refused() -> None:
    codec = CursorCodec(b"k" * 32)
    position = DeliveryPosition(T0 + timedelta(microseconds=123_456), 2, 40_000_000_000)
    cursor = codec.delivery("prt_a", position)
    assert codec.read_delivery("prt_a", cursor) == position
    report = BordereauPosition("2024-03", "BRD-TRY-2024-001-2024-03-P")
    assert codec.read_bordereau("prt_a", codec.bordereau("prt_a", report)) == report

    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    forged_payload = json.dumps([0, 0, 0]).encode()
    forged = base64.urlsafe_b64encode(raw[:16] + forged_payload).rstrip(b"=").decode()
    refused = [
        "",
        "x" * 600,
        "not base64 !!",
        cursor[:-3],
        cursor + "AA",
        forged,  # the position changed, the tag kept
        base64.urlsafe_b64encode(forged_payload).decode(),  # no tag at all
        CursorCodec(b"o" * 32).delivery("prt_a", position),  # another key (another instance)
    ]
    for garbled in refused:
        with pytest.raises(InvalidCursor):
            codec.read_delivery("prt_a", garbled)
    with pytest.raises(InvalidCursor):
        codec.read_delivery("prt_b", cursor)  # made for another partner
    with pytest.raises(InvalidCursor):
        codec.read_bordereau("prt_a", cursor)  # made for another list
    long_secret = CursorCodec(b"s" * 100)  # a secret longer than BLAKE2b's key still works
    assert long_secret.read_delivery("prt_a", long_secret.delivery("prt_a", position)) == position


async def test_the_async_reads_run_off_the_event_loop(store: PortalStore) -> None:
    world = World(store)
    queries = PortalQueries(store, threads=2)
    try:
        loop_thread = asyncio.get_running_loop()
        pages = await asyncio.gather(*(queries.deliveries(world.a.id, first=5) for _ in range(4)))
        assert all(_keys(p.rows) == world.expected(world.a.id)[:5] for p in pages)
        assert loop_thread.is_running()
        assert (await queries.partner(world.a.id))["name"] == "Reinsurer A"  # type: ignore[index]
        assert await queries.partner("prt_" + "f" * 24) is None
    finally:
        queries.close()


# ------------------------------------------------------------------------------- migrations


def test_a_version_1_store_is_migrated_to_the_keyset_indexes(store_url: str) -> None:
    store = PortalStore(store_url)
    try:
        with store.engine.connect() as conn, conn.begin():
            migrations.SCHEMA_VERSION.create(conn)
            migrations.MIGRATIONS[0].apply(conn)
            conn.execute(insert(migrations.SCHEMA_VERSION).values(version=1, description="v1", applied_at=T0))
        v1 = {i["name"] for i in inspect(store.engine).get_indexes("deliveries")}
        assert "ix_deliveries_partner_time" in v1
        assert "ix_deliveries_partner_keyset" not in v1
        assert store.migrate() == (1, migrations.LATEST_VERSION)
        schema = inspect(store.engine)
        for table in METADATA.sorted_tables:
            found = {i["name"] for i in schema.get_indexes(table.name) if not i.get("duplicates_constraint")}
            assert found == {i.name for i in table.indexes}, table.name
    finally:
        store.close()


def test_the_delivery_log_query_reads_its_index_in_order_on_sqlite(tmp_path: Path) -> None:
    store = PortalStore(f"sqlite:///{tmp_path / 'plan.db'}")
    store.migrate()
    try:
        World(store)
        reads = StoreReads(store)
        for filters in (
            DeliveryFilters(),
            DeliveryFilters(status="failed"),
            DeliveryFilters(endpoint_id="ep_x"),
        ):
            for after in (None, DeliveryPosition(T0, 1, 2)):
                statement = reads.deliveries_statement("prt_x", first=20, after=after, filters=filters)
                compiled = statement.compile(store.engine, compile_kwargs={"literal_binds": True})
                with store.engine.connect() as conn:
                    plan = " | ".join(
                        str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
                    )
                assert "ix_deliveries_partner" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
    finally:
        store.close()
