"""The portal's query store on SQLite (a temporary file) and on a real PostgreSQL server.

Every store test runs on both backends (``store`` is parametrised); the PostgreSQL server is
started once for the session by :mod:`tests.postgres`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import insert, inspect, select

from processors.errors import ConfigError
from processors.portal import migrations
from processors.portal.records import Change, Coordinates, Ignored, Skipped, Source, Upsert, decode
from processors.portal.schema import BORDEREAUX, DELIVERIES, METADATA, SCHEMA_VERSION, Money
from processors.portal.store import PortalStore, parse_database_url
from tests import portal_samples as samples
from tests.portal_stores import new_database_url as new_database_url
from tests.portal_stores import store as store
from tests.postgres import pg as pg

PARTNERS_T = "t.integrations.partners"
SUBS_T = "t.integrations.webhook.subscriptions"
LOG_T = "t.integrations.webhook.deliveries"
REPORTS_T = "t.reinsurance.bordereaux"
RESULTS_T = "t.integrations.reinsurance.deliveries"


@pytest.fixture
def store_url(new_database_url: Callable[[str], str]) -> str:
    """A new database of the parametrised backend; on SQLite in a directory the store has to make."""
    return new_database_url("store/portal")


class Log:
    """Records of several topics with increasing offsets per topic (partition 0)."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def __call__(self, source: Source, topic: str, key: bytes | str | None, value: bytes | None) -> Change:
        offset = self.next.get(topic, 0)
        self.next[topic] = offset + 1
        raw_key = key.encode() if isinstance(key, str) else key
        return decode(source, Coordinates(topic, 0, offset), raw_key, value)


def world(log: Log) -> tuple[list[Change], dict[str, Any]]:
    """Two partners, a subscription of each (one deleted again), their deliveries, a bordereau
    and two delivery results, an API key, and one unreadable record per topic."""
    reinsurer, broker = samples.partner(), samples.partner("Acme Brokers", "broker", distributor_code="D-1")
    sub_r, sub_b = samples.subscription(reinsurer.id), samples.subscription(broker.id)
    report = samples.premium_bordereau()
    changes = [
        log(Source.PARTNERS, PARTNERS_T, reinsurer.id, reinsurer.to_record()),
        log(Source.PARTNERS, PARTNERS_T, broker.id, broker.to_record()),
        log(Source.PARTNERS, PARTNERS_T, "pk_live_k3x9q2ma", samples.api_key(reinsurer.id).to_record()),
        log(Source.PARTNERS, PARTNERS_T, broker.id, b"{not json"),
        log(
            Source.DELIVERIES, LOG_T, sub_r.id, samples.delivery_line(sub_r.id, 1)
        ),  # before its subscription
        log(Source.SUBSCRIPTIONS, SUBS_T, sub_r.id, sub_r.to_record()),
        log(Source.SUBSCRIPTIONS, SUBS_T, sub_b.id, sub_b.to_record()),
        log(
            Source.DELIVERIES, LOG_T, sub_r.id, samples.delivery_line(sub_r.id, 2, status="failed", attempt=2)
        ),
        log(Source.DELIVERIES, LOG_T, sub_b.id, samples.delivery_line(sub_b.id, 3)),
        log(Source.DELIVERIES, LOG_T, sub_b.id, b"\x00\x01 not a delivery line"),
        log(Source.SUBSCRIPTIONS, SUBS_T, sub_b.id, None),  # deleted: its deliveries stay attributed
        log(Source.BORDEREAUX, REPORTS_T, samples.TREATY, report),
        log(Source.BORDEREAU_DELIVERIES, RESULTS_T, samples.TREATY, samples.failed(samples.report_id())),
        log(Source.BORDEREAU_DELIVERIES, RESULTS_T, samples.TREATY, samples.accepted(samples.report_id())),
    ]
    return changes, {
        "reinsurer": reinsurer,
        "broker": broker,
        "sub_r": sub_r,
        "sub_b": sub_b,
        "report": report,
    }


def rows(store: PortalStore, table: str) -> list[dict[str, Any]]:
    return store.snapshot()[table]


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///var/portal.db", "sqlite"),
        ("postgresql://u:p@db:5432/portal", "postgresql+psycopg"),
        ("postgres://u:p@db/portal", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@db/portal", "postgresql+psycopg"),
    ],
)
def test_one_url_chooses_the_backend(given: str, driver: str) -> None:
    assert parse_database_url(SecretStr(given)).drivername == driver


@pytest.mark.parametrize(
    "given",
    [
        "mysql://u:s3cretpw@db/portal",
        "postgresql+psycopg2://u:s3cretpw@db/x",
        "sqlite://",
        "sqlite:///:memory:",
        "s3cretpw",
    ],
)
def test_other_urls_are_refused_without_showing_them(given: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_database_url(given)
    assert "s3cretpw" not in str(caught.value)


def test_the_store_shows_its_url_without_the_password() -> None:
    store = PortalStore("postgresql://portal:s3cretpw@db.example:5432/portal")
    assert "s3cretpw" not in store.display_url
    assert "s3cretpw" not in repr(store)
    assert "db.example" in store.display_url


# --- migrations ------------------------------------------------------------------------------


def test_migrating_an_empty_database_creates_exactly_the_defined_schema(store_url: str) -> None:
    store = PortalStore(store_url)
    try:
        assert store.migrate() == (0, migrations.LATEST_VERSION)
        schema = inspect(store.engine)
        assert set(schema.get_table_names()) == set(METADATA.tables)
        for table in METADATA.sorted_tables:
            assert [c["name"] for c in schema.get_columns(table.name)] == [c.name for c in table.columns]
            indexes = {
                i["name"] for i in schema.get_indexes(table.name) if not i.get("duplicates_constraint")
            }
            assert indexes == {i.name for i in table.indexes}
            assert list(schema.get_pk_constraint(table.name)["constrained_columns"]) == [
                c.name for c in table.primary_key.columns
            ]
        assert {u["name"] for u in schema.get_unique_constraints("bordereaux")} == {
            "uq_bordereaux_treaty_period_type"
        }
        # a second start finds nothing to do
        assert store.migrate() == (migrations.LATEST_VERSION, migrations.LATEST_VERSION)
        with store.engine.connect() as conn:
            assert conn.execute(select(SCHEMA_VERSION.c.version)).scalars().all() == list(
                range(1, migrations.LATEST_VERSION + 1)
            )
    finally:
        store.close()


def test_a_database_newer_than_the_build_is_refused(store: PortalStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            insert(SCHEMA_VERSION).values(version=99, description="future", applied_at=datetime.now(UTC))
        )
    with pytest.raises(ConfigError, match="schema version 99"):
        store.migrate()


def test_reset_drops_everything_and_migrate_starts_again(store: PortalStore) -> None:
    changes, _ = world(Log())
    store.apply(changes)
    store.reset()
    assert store.schema_version() == 0
    store.migrate()
    assert set(store.counts().values()) == {0}


# --- applying batches ------------------------------------------------------------------------


def test_a_batch_becomes_rows(store: PortalStore) -> None:
    changes, made = world(Log())
    result = store.apply(changes)

    assert result.applied == {PARTNERS_T: 2, LOG_T: 3, SUBS_T: 3, REPORTS_T: 1, RESULTS_T: 2}
    assert result.ignored == {PARTNERS_T: 1}
    assert [(c.at.topic, c.at.offset) for c in result.skipped] == [(PARTNERS_T, 3), (LOG_T, 3)]
    snap = store.snapshot()
    reinsurer, broker = made["reinsurer"], made["broker"]
    assert [p["id"] for p in snap["partners"]] == sorted([reinsurer.id, broker.id])
    by_id = {p["id"]: p for p in snap["partners"]}
    assert by_id[reinsurer.id]["reinsurer_key"] == "RE001"  # codes ignore case
    assert by_id[broker.id]["name"] == "Acme Brokers"  # the unreadable later record left it as it was
    # the deleted subscription is gone, its owner and deliveries stay
    assert [s["id"] for s in snap["subscriptions"]] == [made["sub_r"].id]
    assert snap["subscriptions"][0]["url"] == "https://user:****@partner.example.com/hooks"
    assert snap["subscriptions"][0]["events"] == ["policy.*"]
    owners = {d["subscription_id"]: d["partner_id"] for d in snap["deliveries"]}
    assert owners == {made["sub_r"].id: reinsurer.id, made["sub_b"].id: broker.id}
    failed = next(d for d in snap["deliveries"] if d["status"] == "failed")
    assert (failed["attempt"], failed["http_status"], failed["next_step"]) == (2, 503, "retry")
    assert failed["latency_ms"] == pytest.approx(12.346)
    assert [r["status"] for r in snap["bordereau_deliveries"]] == ["FAILED", "ACCEPTED"]
    assert snap["bordereau_deliveries"][0]["error_class"] == "ReportConflict"
    assert snap["bordereau_deliveries"][1]["acknowledged_at"] == datetime(
        2024, 4, 6, 0, 0, 1, 234000, tzinfo=UTC
    )
    (report,) = snap["bordereaux"]
    assert (report["report_id"], report["reinsurer_key"], report["period_id"]) == (
        samples.report_id(),
        "RE001",
        samples.PERIOD,
    )
    assert (report["row_count"], report["adjustment_count"]) == (3, 1)
    assert [r["policy_number"] for r in report["rows"]] == ["PN-1", "PN-2"]
    assert report["adjustments"][0]["adjustment_of"] == "2024-02"
    assert store.offsets() == {
        (PARTNERS_T, 0): 4,
        (SUBS_T, 0): 3,
        (LOG_T, 0): 4,
        (REPORTS_T, 0): 1,
        (RESULTS_T, 0): 2,
    }
    assert store.counts()["skipped"] == 2


def test_the_same_batch_twice_gives_the_same_rows(store: PortalStore) -> None:
    changes, _ = world(Log())
    store.apply(changes)
    before = store.snapshot()

    again = store.apply(changes)

    assert again.stale == len(changes)
    assert not again.applied
    assert not again.skipped
    assert store.snapshot() == before
    assert store.counts()["skipped"] == 2  # not counted twice


def test_a_record_sent_again_at_a_later_offset_replaces_its_row(store: PortalStore) -> None:
    """Upserts by natural key: a producer's duplicate (a new offset) adds no row."""
    log = Log()
    partner = samples.partner()
    report = samples.premium_bordereau()
    store.apply([log(Source.PARTNERS, PARTNERS_T, partner.id, partner.to_record())])
    store.apply([log(Source.BORDEREAUX, REPORTS_T, samples.TREATY, report)])
    before = store.snapshot()
    store.apply(
        [
            log(Source.PARTNERS, PARTNERS_T, partner.id, partner.to_record()),
            log(Source.BORDEREAUX, REPORTS_T, samples.TREATY, report),
        ]
    )
    after = store.snapshot()
    assert after["partners"] == before["partners"]
    assert len(after["bordereaux"]) == 1
    assert {k: v for k, v in after["bordereaux"][0].items() if k != "log_offset"} == {
        k: v for k, v in before["bordereaux"][0].items() if k != "log_offset"
    }


def test_records_below_the_stored_offset_are_not_applied_again(store: PortalStore) -> None:
    """A second projector (or a re-read) cannot move a row back to an older version."""
    partner = samples.partner()
    v2 = partner.updated(name="Reinsurance Corp (renamed)", now=samples.NOW + timedelta(days=1))
    first = decode(Source.PARTNERS, Coordinates(PARTNERS_T, 0, 0), partner.id.encode(), partner.to_record())
    second = decode(Source.PARTNERS, Coordinates(PARTNERS_T, 0, 1), partner.id.encode(), v2.to_record())
    store.apply([first, second])

    result = store.apply([first])

    assert result.stale == 1
    assert rows(store, "partners")[0]["name"] == "Reinsurance Corp (renamed)"
    assert store.offsets()[(PARTNERS_T, 0)] == 2


def test_tombstones_delete_rows(store: PortalStore) -> None:
    log = Log()
    partner = samples.partner()
    sub = samples.subscription(partner.id)
    store.apply(
        [
            log(Source.PARTNERS, PARTNERS_T, partner.id, partner.to_record()),
            log(Source.SUBSCRIPTIONS, SUBS_T, sub.id, sub.to_record()),
            log(Source.DELIVERIES, LOG_T, sub.id, samples.delivery_line(sub.id, 1)),
        ]
    )
    assert store.counts()["partners"] == store.counts()["subscriptions"] == 1

    store.apply(
        [
            log(Source.PARTNERS, PARTNERS_T, partner.id, None),
            log(Source.SUBSCRIPTIONS, SUBS_T, sub.id, None),
            log(Source.PARTNERS, PARTNERS_T, "pk_live_k3x9q2ma", None),  # a key's tombstone: ignored
        ]
    )

    counts = store.counts()
    assert (counts["partners"], counts["subscriptions"], counts["deliveries"]) == (0, 0, 1)
    assert rows(store, "deliveries")[0]["partner_id"] == partner.id


def test_an_upsert_and_a_tombstone_of_one_key_in_one_batch_keep_the_last(store: PortalStore) -> None:
    log = Log()
    a, b = samples.partner("A"), samples.partner("B", "broker")
    store.apply(
        [
            log(Source.PARTNERS, PARTNERS_T, a.id, a.to_record()),
            log(Source.PARTNERS, PARTNERS_T, a.id, None),
            log(Source.PARTNERS, PARTNERS_T, b.id, None),
            log(Source.PARTNERS, PARTNERS_T, b.id, b.to_record()),
        ]
    )
    assert [p["id"] for p in rows(store, "partners")] == [b.id]


class FailingBeforeCommit(PortalStore):
    def _write_offsets(self, *args: Any, **kwargs: Any) -> Any:
        super()._write_offsets(*args, **kwargs)
        raise RuntimeError("injected: the process dies before the commit")


def test_rows_and_offsets_are_written_together_or_not_at_all(store: PortalStore, store_url: str) -> None:
    changes, _ = world(Log())
    failing = FailingBeforeCommit(store_url)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            failing.apply(changes)
    finally:
        failing.close()

    assert set(store.counts().values()) == {0}
    assert store.offsets() == {}
    store.apply(changes)  # the same batch goes through afterwards
    assert store.counts()["deliveries"] == 3


def test_deliveries_find_their_partner_whatever_the_order(store: PortalStore) -> None:
    """A rebuild reads the topics in another interleaving than the live projector did."""
    partner = samples.partner()
    sub = samples.subscription(partner.id)
    delivery = (Source.DELIVERIES, LOG_T, sub.id, samples.delivery_line(sub.id, 1))
    subscription = (Source.SUBSCRIPTIONS, SUBS_T, sub.id, sub.to_record())
    snapshots = []
    for order in ([delivery, subscription], [subscription, delivery]):
        store.reset()
        store.migrate()
        log = Log()
        for record in order:  # one batch each
            store.apply([log(*record)])
        snapshots.append(store.snapshot())
    assert snapshots[0] == snapshots[1]
    assert snapshots[0]["deliveries"][0]["partner_id"] == partner.id


# --- exact values -----------------------------------------------------------------------------


def test_money_and_times_round_trip_exactly(store: PortalStore) -> None:
    report = samples.premium_bordereau()
    store.apply([decode(Source.BORDEREAUX, Coordinates(REPORTS_T, 0, 0), samples.TREATY.encode(), report)])
    (row,) = rows(store, "bordereaux")
    assert row["ceded_total"] == Decimal(samples.settled_ceded_premium(report))
    assert isinstance(row["ceded_total"], Decimal)
    assert row["rows"][0]["gross_premium"] == "1000.10"  # amounts stay decimal strings
    assert row["totals"]["settlement"]["total_ceded_premium"] == samples.settled_ceded_premium(report)

    amounts = [Decimal("0.10"), Decimal("-1234567890123456789.123456789"), Decimal("0E-8"), Decimal("1E+3")]
    local = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2025, 3, 1, 17, 30, 0, 123000, tzinfo=local)  # the log has milliseconds
    with store.engine.begin() as conn:
        for n, amount in enumerate(amounts):
            values = dict(
                decode(
                    Source.BORDEREAUX,
                    Coordinates(REPORTS_T, 0, n + 1),
                    samples.TREATY.encode(),
                    samples.premium_bordereau(f"2024-0{n + 4}"),
                ).action.row  # type: ignore[union-attr]
            )
            conn.execute(insert(BORDEREAUX).values({**values, "ceded_total": amount}))
    with store.engine.connect() as conn:
        back = (
            conn.execute(
                select(BORDEREAUX.c.ceded_total)
                .where(BORDEREAUX.c.log_offset > 0)
                .order_by(BORDEREAUX.c.log_offset)
            )
            .scalars()
            .all()
        )
    assert back == amounts
    assert [str(a) for a in back[:2]] == ["0.10", "-1234567890123456789.123456789"]  # the scale is kept

    line = samples.delivery_line("ep_" + "a" * 24, 1, attempted_at=moment)
    store.apply([decode(Source.DELIVERIES, Coordinates(LOG_T, 0, 0), None, line)])
    (delivery,) = rows(store, "deliveries")
    assert delivery["attempted_at"] == moment
    assert delivery["attempted_at"].tzinfo == UTC
    assert delivery["attempted_at"].hour == 12
    assert delivery["attempted_at"].microsecond == 123000  # milliseconds on the wire


def test_a_float_never_becomes_money(store: PortalStore) -> None:
    with pytest.raises(Exception, match="Decimal"), store.engine.begin() as conn:
        conn.execute(select(BORDEREAUX.c.report_id).where(BORDEREAUX.c.ceded_total == 0.1))
    with pytest.raises(TypeError):
        Money().process_bind_param(0.1, store.engine.dialect)  # type: ignore[arg-type]


def test_a_naive_time_is_refused(store: PortalStore) -> None:
    with pytest.raises(Exception, match="timezone-aware"), store.engine.begin() as conn:
        conn.execute(select(DELIVERIES.c.log_offset).where(DELIVERIES.c.attempted_at > datetime(2025, 1, 1)))


# --- records -------------------------------------------------------------------------------


def _action(source: Source, key: bytes | None, value: bytes | None) -> Any:
    return decode(source, Coordinates("t", 0, 0), key, value).action


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        (Source.PARTNERS, b"prt_" + b"0" * 24, b'{"type": "partner", "name": "SECRET-NAME"}'),
        (Source.PARTNERS, b"no-such-key", b"{}"),
        (Source.PARTNERS, b"\xff", None),
        (Source.SUBSCRIPTIONS, b"ep_" + b"1" * 24, b'{"url": "https://SECRET-NAME"}'),
        (Source.SUBSCRIPTIONS, None, None),
        (Source.DELIVERIES, None, b'{"subscription_id": "SECRET-NAME"}'),
        (Source.DELIVERIES, None, None),
        (Source.BORDEREAUX, b"T-1", b'{"report_id": "SECRET-NAME"}'),
        (Source.BORDEREAUX, b"T-1", None),
        (Source.BORDEREAU_DELIVERIES, b"T-1", b'{"report_id": "SECRET-NAME", "status": 5}'),
        (Source.BORDEREAU_DELIVERIES, None, b"{}"),
    ],
)
def test_unreadable_records_are_skipped_with_a_reason_that_shows_no_content(
    source: Source, key: bytes | None, value: bytes | None
) -> None:
    action = _action(source, key, value)
    assert isinstance(action, Skipped)
    assert action.reason
    assert "SECRET" not in action.reason


def test_a_record_whose_id_differs_from_its_key_is_skipped() -> None:
    partner, other = samples.partner(), samples.partner()
    assert isinstance(_action(Source.PARTNERS, other.id.encode(), partner.to_record()), Skipped)
    sub = samples.subscription(partner.id)
    assert isinstance(
        _action(Source.SUBSCRIPTIONS, samples.subscription(None).id.encode(), sub.to_record()), Skipped
    )
    # a key record under a partner's id
    assert isinstance(
        _action(Source.PARTNERS, partner.id.encode(), samples.api_key(partner.id).to_record()), Skipped
    )


def test_api_keys_are_not_projected() -> None:
    key = samples.api_key(samples.partner().id)
    assert isinstance(_action(Source.PARTNERS, key.record_key.encode(), key.to_record()), Ignored)


def test_a_subscription_row_holds_no_secret() -> None:
    sub = samples.subscription(None)
    action = _action(Source.SUBSCRIPTIONS, sub.id.encode(), sub.to_record())
    assert isinstance(action, Upsert)
    text = repr(action.row)
    assert "hunter22" not in text
    assert sub.secrets[0].ciphertext not in text
    assert "secret" not in text


def test_a_long_partner_answer_is_truncated() -> None:
    line = samples.delivery_line("ep_" + "b" * 24, 1, excerpt="x" * 5000)
    action = _action(Source.DELIVERIES, None, line)
    assert isinstance(action, Upsert)
    assert len(action.row["response_excerpt"]) == 1024


def test_skips_are_counted_in_the_offsets_table(store: PortalStore) -> None:
    log = Log()
    store.apply(
        [log(Source.DELIVERIES, LOG_T, None, b"garbage-1"), log(Source.DELIVERIES, LOG_T, None, b"x")]
    )
    store.apply([log(Source.DELIVERIES, LOG_T, None, b"garbage-3")])
    assert store.counts()["skipped"] == 3
    assert store.offsets()[(LOG_T, 0)] == 3
