"""The bordereaux ledger: counting, lateness, closing, waiting claims, duplicates, rejects."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from processors.bordereaux.assembler import Assembler, ReportOut
from processors.bordereaux.ledger import NO_TERM_REASON, Ledger, PartialOut, RejectOut
from processors.bordereaux.treaties import TreatyBook, parse_treaty_book
from processors.contract.events import Event
from tests.bordereaux_oracle import generate

POL = "insurance.policy.events:0"
CLM = "insurance.claim.events:0"
SOURCES = (POL, CLM)


class MemStore:
    """The runtime's transactional store, minus the transactions."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return list(self.data.items())

    def keys_like(self, prefix: str) -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix))


BOOK: dict[str, Any] = {
    "cedant": {"code": "INS001", "name": "Insurance Company Ltd"},
    "exchange_rates": [{"from": "EUR", "to": "USD", "effective": "2024-01-01", "rate": "1.0850"}],
    "treaties": [
        {
            "treaty_number": "QS-1",
            "reinsurer": {"code": "RE001", "name": "Reinsurance Corp"},
            "type": "quota_share",
            "cession_percentage": "70",
            "lines_of_business": ["PROPERTY"],
            "territories": ["US"],
            "currencies": ["USD"],
            "settlement_currency": "USD",
            "inception": "2024-01-01",
            "expiry": "2024-12-31",
        },
        {
            "treaty_number": "SP-1",
            "reinsurer": {"code": "RE002", "name": "Surplus Re"},
            "type": "surplus",
            "retention": {"amount": "250000", "currency": "USD"},
            "lines": 4,
            "lines_of_business": ["MARINE"],
            "currencies": ["USD", "EUR"],
            "settlement_currency": "USD",
            "inception": "2024-01-01",
            "expiry": "2024-12-31",
            "period": "quarterly",
        },
    ],
}


@pytest.fixture(scope="module")
def book() -> TreatyBook:
    return parse_treaty_book(BOOK, source="test")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Route:
    """Builds LedgerInput records as the route stage does: ``w`` is the source's watermark before."""

    def __init__(self) -> None:
        self.marks: dict[str, datetime] = {}

    def record(self, event_id: str, event_type: str, when: str, source: str, data: dict[str, Any]) -> bytes:
        occurred = at(when)
        before = self.marks.get(source)
        self.marks[source] = occurred if before is None else max(before, occurred)
        value = {
            "id": event_id,
            "type": event_type,
            "at": occurred.isoformat(),
            "src": source,
            "w": None if before is None else before.isoformat(),
            "d": data,
        }
        return json.dumps(value).encode()


def policy(
    policy_id: str = "P1",
    *,
    lob: str = "PROPERTY",
    territory: str | None = "US",
    currency: str = "USD",
    gross: str = "1200.00",
    sum_insured: str = "500000.00",
    inception: str = "2024-01-01",
    expiry: str = "2024-12-31",
    **extra: str,
) -> dict[str, Any]:
    return {
        "policy_id": policy_id,
        "policy_number": f"PN-{policy_id}",
        "line_of_business": lob,
        "territory": territory,
        "inception_date": inception,
        "expiry_date": expiry,
        "currency": currency,
        "gross_premium": gross,
        "sum_insured": sum_insured,
        **extra,
    }


def claim(
    claim_id: str = "C1",
    policy_id: str = "P1",
    *,
    loss: str = "2024-01-10",
    currency: str = "USD",
    reserve: str = "1000.00",
    paid: str = "0.00",
    to_date: str = "0.00",
    status: str = "OPEN",
) -> dict[str, Any]:
    return {
        "claim_id": claim_id,
        "policy_id": policy_id,
        "policy_number": f"PN-{policy_id}",
        "date_of_loss": loss,
        "currency": currency,
        "reserve_amount": reserve,
        "paid_amount": paid,
        "paid_to_date": to_date,
        "status": status,
    }


def ledger(book: TreatyBook, store: MemStore | None = None, sources: Iterable[str] = SOURCES) -> Ledger:
    return Ledger(book, store or MemStore(), partition=0, partitions=1, sources=list(sources))


def advance(led: Ledger, when: str) -> list[PartialOut | RejectOut]:
    out: list[PartialOut | RejectOut] = []
    for source in SOURCES:
        out += led.on_watermark(source, at(when))
    return out


def partials(outs: Iterable[PartialOut | RejectOut]) -> dict[str, dict[str, Any]]:
    return {o.key: json.loads(o.value) for o in outs if isinstance(o, PartialOut)}


def rejects(outs: Iterable[PartialOut | RejectOut]) -> list[RejectOut]:
    return [o for o in outs if isinstance(o, RejectOut)]


# --- premium rows -----------------------------------------------------------------------------


def test_new_business_is_ceded_and_its_rows_leave_the_store_with_the_partial(book: TreatyBook) -> None:
    store = MemStore()
    led = ledger(book, store)
    route = Route()
    assert led.on_event(route.record("e1", "policy.issued", "2024-01-05T10:00:00", POL, policy())) == []
    assert store.keys_like("row|t|QS-1|2024-01|")
    got = partials(advance(led, "2024-02-06T00:00:00"))
    jan = got["QS-1|2024-01"]
    assert jan["kind"] == "bordereau"
    assert (jan["source_partition"], jan["partitions"]) == (0, 1)
    assert jan["claims"] == []
    [row] = jan["premium"]
    assert row["transaction_type"] == "NEW_BUSINESS"
    assert row["effective_date"] == "2024-01-01"
    assert row["transaction_date"] == "2024-01-05"
    assert (row["gross_premium"], row["ceded_premium"]) == ("1200.00", "840.00")
    assert (row["sum_insured"], row["ceded_sum_insured"]) == ("500000.00", "350000.00")
    assert (row["additional_premium"], row["return_premium"]) == ("0.00", "0.00")
    assert row["cession_percentage"] == "70.00000000"
    assert row["adjustment_of"] is None
    assert store.keys_like("row|t|QS-1|2024-01|") == []
    assert led.open_period("QS-1").id == "2024-02"


def test_closing_emits_a_partial_for_every_treaty_and_day_even_empty(book: TreatyBook) -> None:
    led = ledger(book)
    got = partials(advance(led, "2024-02-06T00:00:00"))
    assert "QS-1|2024-01" in got
    assert not any(key.startswith("SP-1|") for key in got)  # 2024-Q1 closes on 2024-04-06
    days = sorted(key for key in got if key.startswith("REG|"))
    assert days == [f"REG|{date(2024, 1, 1) + timedelta(days=n)}" for n in range(35)]  # up to Feb 4
    assert got["REG|2024-01-01"] == {
        "kind": "regulatory",
        "date": "2024-01-01",
        "source_partition": 0,
        "partitions": 1,
        "rows": [],
    }
    later = partials(advance(led, "2024-04-06T00:00:00"))
    assert [k for k in later if not k.startswith("REG|")] == [
        "QS-1|2024-02",
        "QS-1|2024-03",
        "SP-1|2024-Q1",
    ]


def test_event_time_waits_for_every_source(book: TreatyBook) -> None:
    led = ledger(book)
    assert led.on_watermark(POL, at("2024-03-01T00:00:00")) == []
    assert led.event_time is None
    assert partials(led.on_watermark(CLM, at("2024-02-06T00:00:00")))
    assert led.event_time == at("2024-02-06T00:00:00")
    assert led.on_watermark(CLM, at("2024-02-01T00:00:00")) == []  # watermarks never go back
    assert led.event_time == at("2024-02-06T00:00:00")


def test_an_idle_source_stops_holding_event_time_back_until_it_sends_again(book: TreatyBook) -> None:
    store = MemStore()
    led = ledger(book, store)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy("P1")))
    assert led.on_watermark(POL, at("2024-02-10T00:00:00")) == []
    assert led.event_time is None  # the claims partition never sent anything

    out = partials(led.on_idle(CLM))
    assert led.idle_sources == {CLM}
    assert led.event_time == at("2024-02-10T00:00:00")
    assert [r["event_id"] for r in out["QS-1|2024-01"]["premium"]] == ["e1"]
    assert "REG|2024-02-04" in out
    assert led.on_idle(CLM) == []  # already idle
    assert led.on_idle("insurance.claim.events:9") == []  # not a source of this ledger
    rebuilt = ledger(book, store)
    assert (rebuilt.idle_sources, rebuilt.event_time) == ({CLM}, at("2024-02-10T00:00:00"))

    # The claims partition sends again: a January loss read now goes to the first open period.
    led.on_event(route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim("C1", "P1")))
    assert led.idle_sources == frozenset()
    assert led.event_time == at("2024-02-10T00:00:00")  # event time never goes back
    assert ledger(book, store).idle_sources == frozenset()
    feb = partials(advance(led, "2024-03-06T00:00:00"))["QS-1|2024-02"]
    assert [(m["claim_id"], m["adjustment_of"]) for m in feb["claims"]] == [("C1", "2024-01")]


def test_event_time_does_not_go_back_when_the_ledger_is_rebuilt_after_a_source_woke_up_behind_it(
    book: TreatyBook,
) -> None:
    store = MemStore()
    led = ledger(book, store)
    route = Route()
    led.on_watermark(POL, at("2024-03-10T00:00:00"))
    led.on_idle(CLM)
    led.on_event(route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim("C1", "P9")))
    assert led.event_time == at("2024-03-10T00:00:00")
    rebuilt = ledger(book, store)
    assert rebuilt.event_time == at("2024-03-10T00:00:00")
    # Both decide alike: a claim whose policy is unknown, older than event time − timeout.
    late = route.record("c2", "claim.reported", "2024-01-13T00:00:00", CLM, claim("C2", "P8"))
    assert [r.event_id for r in rejects(led.on_event(late))] == [
        r.event_id for r in rejects(rebuilt.on_event(late))
    ]


def test_while_every_source_is_idle_event_time_is_the_latest_watermark(book: TreatyBook) -> None:
    led = ledger(book)
    led.on_watermark(POL, at("2024-02-10T00:00:00"))
    led.on_watermark(CLM, at("2024-01-20T00:00:00"))
    assert led.event_time == at("2024-01-20T00:00:00")
    assert "QS-1|2024-01" in partials(led.on_idle(CLM))  # the policy partition's time now counts
    assert led.event_time == at("2024-02-10T00:00:00")
    led.on_idle(POL)
    assert led.event_time == at("2024-02-10T00:00:00")
    assert led.on_watermark(CLM, at("2024-01-25T00:00:00")) == []  # awake again, but behind
    assert led.event_time == at("2024-02-10T00:00:00")


def test_cancellation_is_a_return_premium_at_the_original_percentage(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    # Marine surplus: USD 750,000 over a 250,000 retention: s = 500,000 / 750,000.
    issued = policy("M1", lob="MARINE", territory=None, gross="9000.00", sum_insured="750000.00")
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, issued))
    cancelled = policy(
        "M1",
        lob="MARINE",
        territory=None,
        gross="6000.00",
        sum_insured="750000.00",
        effective_date="2024-05-01",
        premium_change="-3000.01",
    )
    led.on_event(route.record("e2", "policy.cancelled", "2024-02-10T00:00:00", POL, cancelled))
    q1 = partials(advance(led, "2024-04-06T00:00:00"))["SP-1|2024-Q1"]
    new, cancel = q1["premium"]
    assert new["cession_percentage"] == cancel["cession_percentage"] == "66.66666667"
    assert (new["ceded_premium"], new["ceded_sum_insured"]) == ("6000.00", "500000.00")
    assert cancel["transaction_type"] == "CANCELLATION"
    assert cancel["effective_date"] == "2024-05-01"
    assert (cancel["gross_premium"], cancel["return_premium"], cancel["additional_premium"]) == (
        "-3000.01",
        "-3000.01",
        "0.00",
    )
    assert cancel["ceded_premium"] == "-2000.01"  # -3000.01 × 0.6666666667 = -2000.0066... half up
    assert (cancel["sum_insured"], cancel["ceded_sum_insured"]) == ("0.00", "0.00")


def test_an_endorsement_adds_premium_on_the_latest_covering_term(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy()))
    endorsed = policy(
        gross="1500.00", sum_insured="600000.00", effective_date="2024-01-20", premium_change="300.00"
    )
    led.on_event(route.record("e2", "policy.endorsed", "2024-01-21T00:00:00", POL, endorsed))
    [_, row] = partials(advance(led, "2024-02-06T00:00:00"))["QS-1|2024-01"]["premium"]
    assert (row["transaction_type"], row["additional_premium"], row["return_premium"]) == (
        "ENDORSEMENT",
        "300.00",
        "0.00",
    )
    assert (row["ceded_premium"], row["ceded_sum_insured"]) == ("210.00", "420000.00")


def test_a_term_within_the_surplus_retention_is_ceded_at_zero(book: TreatyBook) -> None:
    led = ledger(book)
    small = policy("M2", lob="MARINE", territory=None, sum_insured="200000.00")
    led.on_event(Route().record("e1", "policy.issued", "2024-01-05T00:00:00", POL, small))
    [row] = partials(advance(led, "2024-04-06T00:00:00"))["SP-1|2024-Q1"]["premium"]
    assert (row["cession_percentage"], row["ceded_premium"], row["ceded_sum_insured"]) == (
        "0.00000000",
        "0.00",
        "0.00",
    )


def test_a_term_no_treaty_accepts_has_regulatory_rows_only(book: TreatyBook) -> None:
    led = ledger(book)
    motor = policy("V1", lob="MOTOR", territory="FR", currency="EUR")
    led.on_event(Route().record("e1", "policy.issued", "2024-01-05T00:00:00", POL, motor))
    got = partials(advance(led, "2024-04-06T00:00:00"))
    assert all(not p.get("premium") for p in got.values())
    [row] = got["REG|2024-01-05"]["rows"]
    assert (row["record_type"], row["line_of_business"], row["territory"], row["currency"]) == (
        "POLICY",
        "MOTOR",
        "FR",
        "EUR",
    )
    assert (row["gross_premium"], row["sum_insured"], row["paid_amount"]) == ("1200.00", "500000.00", None)


def test_an_event_before_the_first_period_belongs_to_it(book: TreatyBook) -> None:
    led = ledger(book)
    early = policy(inception="2024-01-01")
    led.on_event(Route().record("e1", "policy.issued", "2023-12-20T00:00:00", POL, early))
    got = partials(advance(led, "2024-02-06T00:00:00"))
    [row] = got["QS-1|2024-01"]["premium"]
    assert (row["transaction_date"], row["adjustment_of"]) == ("2023-12-20", None)
    [reg] = got["REG|2024-01-01"]["rows"]
    assert (reg["event_date"], reg["original_date"]) == ("2023-12-20", None)


# --- late events and the close command -----------------------------------------------------------


def test_a_late_event_is_an_adjustment_row_in_the_period_of_its_watermark(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e0", "policy.issued", "2024-02-10T00:00:00", POL, policy("P0")))
    # Read after an event of Feb 10 on the same source partition: W = Feb 10 ≥ Feb 1 + 5d.
    led.on_event(route.record("e1", "policy.issued", "2024-01-20T00:00:00", POL, policy("P1")))
    got = partials(advance(led, "2024-03-06T00:00:00"))
    assert got["QS-1|2024-01"]["premium"] == []
    feb = {row["event_id"]: row for row in got["QS-1|2024-02"]["premium"]}
    assert feb["e1"]["adjustment_of"] == "2024-01"
    assert feb["e1"]["transaction_date"] == "2024-01-20"
    assert feb["e0"]["adjustment_of"] is None
    assert got["REG|2024-01-20"]["rows"] == []
    reg = {row["event_id"]: row for row in got["REG|2024-02-10"]["rows"]}
    assert (reg["e1"]["event_date"], reg["e1"]["original_date"]) == ("2024-01-20", "2024-01-20")
    assert reg["e0"]["original_date"] is None


def test_an_event_within_the_grace_is_counted_in_its_own_period(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e0", "policy.issued", "2024-02-05T23:59:59", POL, policy("P0")))
    led.on_event(route.record("e1", "policy.issued", "2024-01-31T00:00:00", POL, policy("P1")))
    jan = partials(advance(led, "2024-02-06T00:00:00"))["QS-1|2024-01"]
    assert [(r["event_id"], r["adjustment_of"]) for r in jan["premium"]] == [("e1", None)]


def test_close_command_closes_earlier_periods_and_later_events_adjust_into_the_first_open(
    book: TreatyBook,
) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-02-03T00:00:00", POL, policy("P1")))
    out = led.on_close("QS-1", "2024-03")
    assert [o.key for o in out if isinstance(o, PartialOut)] == [
        "QS-1|2024-01",
        "QS-1|2024-02",
        "QS-1|2024-03",
    ]
    assert [r["event_id"] for r in partials(out)["QS-1|2024-02"]["premium"]] == ["e1"]
    assert led.open_period("QS-1").id == "2024-04"
    assert led.open_period("SP-1").id == "2024-Q1"  # other treaties stay open
    assert led.on_close("QS-1", "2024-02") == []  # already closed
    led.on_event(route.record("e2", "policy.issued", "2024-02-04T00:00:00", POL, policy("P2")))
    april = partials(led.on_close("QS-1", "2024-04"))["QS-1|2024-04"]
    assert [(r["event_id"], r["adjustment_of"]) for r in april["premium"]] == [("e2", "2024-02")]
    # The regulatory day of e2 is still open: no adjustment there.
    day = partials(led.on_close(None, "2024-02-04"))["REG|2024-02-04"]
    assert [(r["event_id"], r["original_date"]) for r in day["rows"]] == [("e2", None)]


@pytest.mark.parametrize(
    ("treaty", "period", "reason"),
    [
        ("NOPE", "2024-01", "no treaty 'NOPE'"),
        ("SP-1", "2024-01", "bad period"),
        (None, "2024-1-1", "bad day"),
    ],
)
def test_a_bad_close_command_is_rejected(
    book: TreatyBook, treaty: str | None, period: str, reason: str
) -> None:
    [out] = ledger(book).on_close(treaty, period)
    assert isinstance(out, RejectOut)
    assert reason in out.reason


# --- duplicates and rejects -------------------------------------------------------------------------


def test_duplicates_are_counted_once(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    issued = route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy())
    reported = route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim())
    for raw in (issued, reported, issued, reported):
        assert rejects(led.on_event(raw)) == []
    got = partials(advance(led, "2024-02-06T00:00:00"))
    assert [r["event_id"] for r in got["QS-1|2024-01"]["premium"]] == ["e1"]
    assert [m["event_id"] for m in got["QS-1|2024-01"]["claims"]] == ["c1"]
    assert len(got["REG|2024-01-05"]["rows"]) == len(got["REG|2024-01-12"]["rows"]) == 1


def test_a_waiting_claim_sent_twice_waits_once(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    reported = route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim())
    led.on_event(reported)
    led.on_event(reported)
    led.on_event(route.record("e1", "policy.issued", "2024-01-13T00:00:00", POL, policy()))
    jan = partials(advance(led, "2024-02-06T00:00:00"))["QS-1|2024-01"]
    assert [m["event_id"] for m in jan["claims"]] == ["c1"]


def test_an_endorsement_of_an_unknown_policy_is_rejected_with_ids_only(book: TreatyBook) -> None:
    led = ledger(book)
    data = policy(effective_date="2024-02-01", premium_change="10.00", customer_id="CUST-SECRET")
    [out] = rejects(led.on_event(Route().record("e1", "policy.endorsed", "2024-02-01T00:00:00", POL, data)))
    assert out == RejectOut("e1", "policy.endorsed for unknown policy P1")


def test_an_endorsement_no_term_covers_is_rejected(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy(expiry="2024-06-30")))
    data = policy(expiry="2024-12-31", effective_date="2024-08-01", premium_change="10.00")
    [out] = rejects(led.on_event(route.record("e2", "policy.endorsed", "2024-08-01T00:00:00", POL, data)))
    assert isinstance(out, RejectOut)
    assert out.event_id == "e2"
    assert "no term of policy P1 covers the effective date 2024-08-01" in out.reason


def test_a_claim_in_another_currency_than_its_term_is_rejected(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy()))
    [out] = rejects(
        led.on_event(route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim(currency="EUR")))
    )
    assert isinstance(out, RejectOut)
    assert (out.event_id, out.raw) == ("c1", None)
    assert "claim C1 is in EUR" in out.reason
    got = partials(advance(led, "2024-02-06T00:00:00"))
    assert got["QS-1|2024-01"]["claims"] == []
    assert got["REG|2024-01-12"]["rows"] == []


@pytest.mark.parametrize(
    ("raw", "event_id", "reason"),
    [
        (b"\xff not json", "", "undecodable LedgerInput"),
        (b'{"id": "e9", "type": "policy.issued"}', "e9", "undecodable LedgerInput: at: Field required"),
        (
            json.dumps(
                {
                    "id": "e9",
                    "type": "policy.issued",
                    "at": "2024-01-05T00:00:00Z",
                    "src": POL,
                    "w": None,
                    "d": {**policy(), "gross_premium": "12.345", "customer_id": "CUST-SECRET"},
                }
            ).encode(),
            "e9",
            "undecodable LedgerInput e9 (policy.issued): gross_premium:",
        ),
        (
            json.dumps(
                {
                    "id": "e9",
                    "type": "premium.due",
                    "at": "2024-01-05T00:00:00Z",
                    "src": POL,
                    "w": None,
                    "d": {},
                }
            ).encode(),
            "e9",
            "event type premium.due is not counted",
        ),
        (
            json.dumps(
                {
                    "id": "e9",
                    "type": "claim.paid",
                    "at": "2024-01-05T00:00:00",
                    "src": CLM,
                    "w": None,
                    "d": claim(),
                }
            ).encode(),
            "e9",
            "at: must be timezone-aware",
        ),
    ],
)
def test_undecodable_input_is_rejected(book: TreatyBook, raw: bytes, event_id: str, reason: str) -> None:
    [out] = ledger(book).on_event(raw)
    assert isinstance(out, RejectOut)
    assert out.event_id == event_id
    assert reason in out.reason
    assert "SECRET" not in out.reason


# --- claims -----------------------------------------------------------------------------------------


def test_claim_movements_keep_their_order_and_share(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    led.on_event(route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy()))
    led.on_event(route.record("c1", "claim.reported", "2024-01-12T00:00:00", CLM, claim(reserve="1000.00")))
    led.on_event(
        route.record(
            "c2",
            "claim.paid",
            "2024-01-15T00:00:00",
            CLM,
            claim(paid="400.00", to_date="400.00", reserve="600.00"),
        )
    )
    moves = partials(advance(led, "2024-02-06T00:00:00"))["QS-1|2024-01"]["claims"]
    assert [(m["event_id"], m["seq"], m["share"], m["adjustment_of"]) for m in moves] == [
        ("c1", 0, "0.7", None),
        ("c2", 1, "0.7", None),
    ]


def _run(book: TreatyBook, records: list[bytes], until: str) -> list[bytes]:
    led = ledger(book)
    out: list[PartialOut | RejectOut] = []
    for raw in records:
        out += led.on_event(raw)
    out += advance(led, until)
    assert rejects(out) == []
    return [o.value for o in out if isinstance(o, PartialOut)]


def test_a_claim_before_its_policy_gives_the_same_bytes_as_after(book: TreatyBook) -> None:
    route = Route()
    issued = route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy())
    other = route.record("e2", "policy.issued", "2024-01-06T00:00:00", POL, policy("P2"))
    c1 = route.record("c1", "claim.reported", "2024-01-10T00:00:00", CLM, claim())
    c2 = route.record("c2", "claim.reported", "2024-01-11T00:00:00", CLM, claim("C2", "P2"))
    c3 = route.record("c3", "claim.paid", "2024-01-12T00:00:00", CLM, claim(paid="5.00", to_date="5.00"))
    policy_first = _run(book, [issued, other, c1, c2, c3], "2024-02-06T00:00:00")
    claims_first = _run(book, [c1, c2, c3, issued, other], "2024-02-06T00:00:00")
    mixed = _run(book, [c1, other, c2, c3, issued], "2024-02-06T00:00:00")
    assert policy_first == claims_first == mixed
    jan = next(json.loads(v) for v in policy_first if json.loads(v).get("period") == "2024-01")
    assert [m["event_id"] for m in jan["claims"]] == ["c1", "c3", "c2"]


def test_a_waiting_claim_takes_the_later_watermark_of_its_term(book: TreatyBook) -> None:
    route = Route()
    c1 = route.record("c1", "claim.reported", "2024-01-10T00:00:00", CLM, claim())
    late_source = route.record("e0", "policy.issued", "2024-02-20T00:00:00", POL, policy("P0"))
    # The term starts late (W = Feb 20 ≥ Feb 1 + 5d): its claim is late with it, in either order.
    issued = route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy())
    for order in ([c1, late_source, issued], [late_source, issued, c1]):
        values = _run(book, order, "2024-03-06T00:00:00")
        got = {
            p["period"]: p
            for p in map(json.loads, values)
            if p["kind"] == "bordereau" and p["treaty"] == "QS-1"
        }
        assert got["2024-01"]["claims"] == []
        [move] = got["2024-02"]["claims"]
        assert (move["event_id"], move["adjustment_of"]) == ("c1", "2024-01")


def test_a_claim_without_a_term_is_rejected_after_the_timeout_with_its_stored_bytes(book: TreatyBook) -> None:
    store = MemStore()
    led = ledger(book, store)
    raw = Route().record("c1", "claim.reported", "2024-01-10T00:00:00", CLM, claim())
    assert led.on_event(raw) == []
    assert store.keys_like("wait|")
    assert rejects(advance(led, "2024-02-09T23:59:59")) == []
    [out] = rejects(advance(led, "2024-02-10T00:00:00"))  # occurred_at + 31 days
    assert out == RejectOut("c1", NO_TERM_REASON, raw)
    assert store.keys_like("wait|") == []
    # The policy arriving now finds nothing to release.
    issued = Route().record("e1", "policy.issued", "2024-02-10T00:00:00", POL, policy())
    assert led.on_event(issued) == []


def test_a_waiting_claim_in_the_wrong_currency_is_rejected_with_its_stored_bytes(book: TreatyBook) -> None:
    led = ledger(book)
    route = Route()
    raw = route.record("c1", "claim.reported", "2024-01-10T00:00:00", CLM, claim(currency="EUR"))
    led.on_event(raw)
    [out] = rejects(led.on_event(route.record("e1", "policy.issued", "2024-01-11T00:00:00", POL, policy())))
    assert isinstance(out, RejectOut)
    assert (out.event_id, out.raw) == ("c1", raw)


# --- restart ---------------------------------------------------------------------------------------


def _scenario() -> Iterator[bytes]:
    route = Route()
    yield route.record("c1", "claim.reported", "2024-01-10T00:00:00", CLM, claim())
    yield route.record("e1", "policy.issued", "2024-01-05T00:00:00", POL, policy())
    yield route.record("c9", "claim.reported", "2024-01-11T00:00:00", CLM, claim("C9", "P9"))
    yield route.record("e2", "policy.issued", "2024-02-10T00:00:00", POL, policy("P2"))
    yield route.record("e3", "policy.issued", "2024-01-25T00:00:00", POL, policy("P3"))
    yield route.record("c2", "claim.paid", "2024-02-11T00:00:00", CLM, claim(paid="9.00", to_date="9.00"))


def test_a_ledger_rebuilt_from_its_store_continues_exactly(book: TreatyBook) -> None:
    records = list(_scenario())
    whole = ledger(book)
    expected = [o for raw in records for o in whole.on_event(raw)] + advance(whole, "2024-03-15T00:00:00")

    store = MemStore()
    first = ledger(book, store)
    got = [o for raw in records[:3] for o in first.on_event(raw)]
    got += first.on_watermark(POL, at("2024-01-20T00:00:00"))
    got += first.on_watermark(CLM, at("2024-01-12T00:00:00"))
    second = ledger(book, store)  # as after a restart: only the store survives
    assert second.event_time == first.event_time
    got += [o for raw in records[3:] for o in second.on_event(raw)]
    got += advance(second, "2024-03-15T00:00:00")

    # Partials may come at other times (event time moved in other steps), never with other contents.
    def by_key(outs: list[PartialOut | RejectOut]) -> dict[str, bytes]:
        return {o.key: o.value for o in outs if isinstance(o, PartialOut)}

    assert by_key(got) == by_key(expected)
    assert len([o for o in got if isinstance(o, PartialOut)]) == len(by_key(expected))
    assert rejects(got) == rejects(expected) == [RejectOut("c9", NO_TERM_REASON, records[2])]


def test_partials_assemble_into_reports(book: TreatyBook) -> None:
    led = ledger(book)
    asm = Assembler(book, MemStore())
    reports: list[ReportOut] = []
    for out in [o for raw in _scenario() for o in led.on_event(raw)] + advance(led, "2024-03-15T00:00:00"):
        if isinstance(out, PartialOut):
            reports += asm.on_partial(out.value)
    bordereaux = [json.loads(r.value)["report_id"] for r in reports if r.topic == "bordereaux"]
    assert bordereaux == [
        "BRD-QS-1-2024-01-P",
        "BRD-QS-1-2024-01-C",
        "BRD-QS-1-2024-02-P",
        "BRD-QS-1-2024-02-C",
    ]  # SP-1's 2024-Q1 closes on 2024-04-06
    days = [r.key for r in reports if r.topic == "regulatory"]
    # Only days with rows; e3 (Jan 25, read after Feb 10) is late and counted on Feb 10.
    assert days == ["2024-01-05", "2024-01-10", "2024-02-10", "2024-02-11"]


# --- state and partials as canonical JSON ----------------------------------------------------------


ODD = 'Q"\\é\x01✓'  # a quote, a backslash, non-ASCII and a control character


def _odd_records() -> list[bytes]:
    route = Route()
    p1 = policy(f"P1{ODD}")
    p1["policy_number"] = f"PN{ODD}"
    marine = policy(f"M1{ODD}", lob="MARINE", territory=None, currency="EUR", sum_insured="750000.00")
    cancelled = {**marine, "effective_date": "2024-03-01", "premium_change": "-600.00"}
    c1 = claim(f"C1{ODD}", f"P1{ODD}", status=f"OPEN{ODD}")
    c1["policy_number"] = f"PN{ODD}"
    paid = {**c1, "paid_amount": "250.00", "paid_to_date": "250.00", "reserve_amount": "750.00"}
    m1 = claim(f"C2{ODD}", f"M1{ODD}", loss="2024-02-01", currency="EUR")
    return [
        route.record(f"c1{ODD}", "claim.reported", "2024-01-12T00:00:00", CLM, c1),  # waits
        route.record(f"e1{ODD}", "policy.issued", "2024-01-05T00:00:00", POL, p1),
        route.record(f"e2{ODD}", "policy.issued", "2024-01-20T00:00:00", POL, marine),
        route.record(f"c2{ODD}", "claim.paid", "2024-01-25T00:00:00", CLM, paid),
        route.record(f"e3{ODD}", "policy.issued", "2024-02-20T00:00:00", POL, policy("P3")),
        route.record(f"c3{ODD}", "claim.reported", "2024-02-02T00:00:00", CLM, m1),
        route.record(f"e4{ODD}", "policy.cancelled", "2024-01-30T00:00:00", POL, cancelled),  # late
        route.record(f"c4{ODD}", "claim.paid", "2024-01-28T00:00:00", CLM, {**paid, "paid_amount": "1.00"}),
    ]


def canonical(raw: bytes) -> bytes:
    return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_state_and_partials_are_canonical_json_whatever_the_characters(book: TreatyBook) -> None:
    store = MemStore()
    led = ledger(book, store)
    out: list[PartialOut | RejectOut] = []
    for raw in _odd_records():
        out += led.on_event(raw)
    written = {k: v for k, v in store.data.items() if k.split("|")[0] in ("pol", "row", "wait")}
    assert {k.split("|")[0] for k in written} == {"pol", "row"}
    assert {k: canonical(v) for k, v in written.items()} == written
    out += advance(led, "2024-04-07T00:00:00")
    assert rejects(out) == []
    got = [o for o in out if isinstance(o, PartialOut)]
    assert all(canonical(o.value) == o.value for o in got)
    parts = partials(got)
    jan = parts["QS-1|2024-01"]
    assert [(r["policy_number"], r["event_id"]) for r in jan["premium"]] == [(f"PN{ODD}", f"e1{ODD}")]
    assert [(m["event_id"], m["seq"], m["status"]) for m in jan["claims"]] == [
        (f"c1{ODD}", 0, f"OPEN{ODD}"),
        (f"c2{ODD}", 1, f"OPEN{ODD}"),
        (f"c4{ODD}", 2, f"OPEN{ODD}"),
    ]
    q1 = parts["SP-1|2024-Q1"]
    assert [(r["event_id"], r["transaction_type"]) for r in q1["premium"]] == [
        (f"e2{ODD}", "NEW_BUSINESS"),
        (f"e4{ODD}", "CANCELLATION"),
    ]
    assert [r["event_id"] for r in parts["REG|2024-01-12"]["rows"]] == [f"c1{ODD}"]


def test_a_ledger_rebuilt_from_its_store_after_any_record_gives_the_same_partials(book: TreatyBook) -> None:
    records = _odd_records() + list(_scenario())

    def run(restart_after: int | None) -> dict[str, bytes]:
        store = MemStore()
        led = ledger(book, store)
        out: list[PartialOut | RejectOut] = []
        for index, raw in enumerate(records):
            out += led.on_event(raw)
            if index == 3:
                out += advance(led, "2024-01-11T00:00:00")  # closes early days, keeps the rest open
            if index == restart_after:
                led = ledger(book, store)
        out += advance(led, "2024-04-07T00:00:00")
        return {o.key: o.value for o in out if isinstance(o, PartialOut)}

    whole = run(None)
    assert any(json.loads(v).get("claims") for v in whole.values())
    for restart_after in range(len(records)):
        assert run(restart_after) == whole, restart_after


# --- decoded events ----------------------------------------------------------------------------------


def test_a_decoded_event_counts_exactly_as_its_ledger_input(book: TreatyBook) -> None:
    published = generate(5, 3000)
    sources = sorted({f"{p.topic}:{p.partition}" for p in published})
    marks: dict[str, datetime] = {}
    inputs: list[tuple[Event, str, datetime | None, bytes]] = []
    for item in published:
        event, src = item.event, f"{item.topic}:{item.partition}"
        before = marks.get(src)
        marks[src] = event.occurred_at if before is None else max(before, event.occurred_at)
        value = {
            "id": str(event.event_id),
            "type": event.event_type,
            "at": event.occurred_at.isoformat(),
            "src": src,
            "w": None if before is None else before.isoformat(),
            "d": event.data.model_dump(mode="json"),
        }
        inputs.append((event, src, before, json.dumps(value).encode()))

    by_bytes, by_event = MemStore(), MemStore()
    first = Ledger(book, by_bytes, partition=0, partitions=1, sources=sources)
    second = Ledger(book, by_event, partition=0, partitions=1, sources=sources)
    encoded: list[bytes] = []

    def encoder(raw: bytes) -> Callable[[], bytes]:
        def encode() -> bytes:
            encoded.append(raw)
            return raw

        return encode

    expected = [out for *_, raw in inputs for out in first.on_event(raw)]
    got = [out for event, src, w, raw in inputs for out in second.on_decoded(event, src, w, encoder(raw))]
    for led, out in ((first, expected), (second, got)):
        for src in sources:
            out += led.on_watermark(src, at("2026-01-01T00:00:00"))
    assert got == expected
    assert by_event.data == by_bytes.data
    bordereaux = [p for p in partials(got).values() if p["kind"] == "bordereau"]
    assert any(p["premium"] for p in bordereaux)
    assert any(p["claims"] for p in bordereaux)
    # Claims on policies that never came time out with their LedgerInput bytes.
    assert {o.raw for o in rejects(got)} <= set(encoded)
    assert rejects(got)
    assert 0 < len(encoded) < len(inputs) // 10  # only claims that waited for their term
