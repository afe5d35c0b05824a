"""The webhooks floor (``bench/floor_webhooks.py``) writes and sends what the product does.

The prototype keeps only the app's guarantees; these tests hold its pieces to the product, side
by side on the same input: the dispatch records of fan-out (key, value bytes, headers), the
request a partner receives (signature headers, body, URL), the delivery-log line (byte for
byte), the retry-tier record, the audit record of each attempt, the breaker and the busy
endpoint's deferral, and the offset bookkeeping.  No Kafka, no HTTP server: the product's
``WebhooksApp`` and the floor run against the same subscription table and fake transports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import pytest

import bench.floor_webhooks as floor_module
import processors.webhooks.app as app_module
from bench.bench_webhooks import first_receipts, matching, measure_latency, sub_id
from bench.floor_webhooks import (
    _DELIVERED,
    FloorWebhooks,
    _Job,
    _Part,
    audit_value,
    request_headers,
)
from bench.harness import Run
from processors import context as record_context
from processors.adapters.http import ConnectFailed, HttpRequest, HttpResponse, TimeoutSettings
from processors.apps.registry import secret_box
from processors.contract import Codec, ContentType, Event, LocalSchemaIds
from processors.errors import ValidationFailed
from processors.observability import tracing
from processors.observability.audit import KafkaAuditSink, configure_audit_sink
from processors.observability.logs import log_extras
from processors.partners.model import Partner
from processors.partners.projection import NO_GRANTS
from processors.resilience.config import load_resilience
from processors.runtime.message import OutRecord, StaticMessage, header_value
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from processors.webhooks.app import WebhooksApp
from processors.webhooks.delivery import DispatchJob, delivery_body, event_data_json
from processors.webhooks.secrets import StoredSecret
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.subscriptions import Subscription, SubscriptionTable
from processors.webhooks.verify import verify_webhook
from processors_dev.samples import mixed_events

CODEC = Codec(LocalSchemaIds())
KEY = base64.b64encode(b"f" * 32).decode()
SECRET = "whsec_" + base64.b64encode(b"floor-test-partner-secret-32byte").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"floor-test-previous-secret-32byt").decode()
DISPATCH = "integrations.webhooks.dispatch"
LOG = "integrations.webhook.deliveries"
NOTICES = "integrations.webhook.endpoint-events"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOW_S = 1_760_000_000.25
PARTNER = Partner(id="prt_" + "a" * 24, name="Acme Brokers", kind="broker", grants=("contact",))


class FakeStore:
    def __init__(self, table: SubscriptionTable) -> None:
        self.table = table
        self.writes: list[Subscription] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...

    async def put(self, sub: Subscription) -> None:
        """Kept, never applied: each side disables an endpoint in its own process first."""
        self.writes.append(sub)

    def add_listener(self, callback: Callable[[str, Subscription | None], None]) -> None: ...


class Directory:
    def partner(self, partner_id: str) -> Partner | None:
        return PARTNER if partner_id == PARTNER.id else None


class FakePartners:
    table = Directory()

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...


class FakeTransport:
    """Answers by URL; records what goes on the wire (the request's headers, and the record
    context's ``traceparent`` on top, as ``PinnedTransport`` sends them)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str], bytes | None]] = []
        self.answers: dict[str, Callable[[], HttpResponse]] = {}
        self.gate: asyncio.Event | None = None

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        headers = dict(request.headers)
        traceparent = tracing.outbound_traceparent()
        if traceparent is not None:
            headers["traceparent"] = traceparent
        self.sent.append((request.url, headers, request.body))
        if self.gate is not None:
            await self.gate.wait()
        return self.answers.get(request.url, lambda: HttpResponse(200, {}, b"ok"))()


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same wall clock for both sides' signatures (``webhook-timestamp``)."""
    for module in (app_module, floor_module):
        clock = SimpleNamespace(time=lambda: NOW_S, perf_counter=time.perf_counter, monotonic=time.monotonic)
        monkeypatch.setattr(module, "time", clock)


@pytest.fixture
def audited() -> Any:
    """The product's audit records, as its Kafka sink hands them to the producer."""
    records: list[bytes] = []
    configure_audit_sink(KafkaAuditSink(lambda _topic, _key, value: records.append(value), "audit"))
    yield records
    configure_audit_sink(None)


class World:
    """The product's app and the floor on one subscription table, each with its own transport."""

    def __init__(self, **hooks: Any) -> None:
        settings = load_settings(bootstrap_servers="127.0.0.1:9", webhooks={"encryption_key": KEY, **hooks})
        catalogue = load_catalogue(None)
        resilience = load_resilience(settings.resilience_file)
        self.box = secret_box(settings)
        self.table = SubscriptionTable()
        self.product_http = FakeTransport()
        self.floor_http = FakeTransport()
        self.app = WebhooksApp(
            codec=CODEC,
            topics=catalogue.app("webhooks"),
            store=FakeStore(self.table),
            box=self.box,
            transport=self.product_http,
            policy=resilience.for_endpoint("partner-webhooks"),
            breakers=resilience.breakers(),
            settings=settings.webhooks,
            dispatch_topic=DISPATCH,
            deliveries_topic=LOG,
            endpoint_events_topic=NOTICES,
            group=settings.group_prefix + "webhooks",
            partners=FakePartners(),
        )
        self.floor = FloorWebhooks(
            settings,
            catalogue,
            concurrency=1,
            store=cast(Any, FakeStore(self.table)),
            partners=cast(Any, FakePartners()),
            transport=cast(Any, self.floor_http),
        )
        self.offset = 100

    def subscribe(self, n: int, events: Sequence[str] = ("*",), **fields: Any) -> Subscription:
        sub_id = f"ep_{n:024x}"
        secrets = [
            StoredSecret(
                self.box.encrypt(s, associated=sub_id), created_at=datetime(2025, 1, day, tzinfo=UTC)
            )
            for day, s in ((2, SECRET), (1, OLD_SECRET))
        ]
        sub = Subscription.create(
            id=sub_id,
            url=f"https://partner{n}.example/hook?t=1",
            events=list(events),
            secrets=secrets,
            **fields,
        )
        self.table.put(sub.id, sub)
        return sub

    def event_message(
        self, event: Event, *, traceparent: str | None = None, key: bytes | None = None
    ) -> StaticMessage:
        value, headers = CODEC.encode(event, ContentType.AVRO)
        extra = [("traceparent", traceparent.encode())] if traceparent else []
        self.offset += 1
        topic = {"policy": "policy", "premium": "billing", "claim": "claim"}[
            event.event_type.partition(".")[0]
        ]
        return StaticMessage(
            f"insurance.{topic}.events", 3, self.offset, key or event.subject.encode(), value,
            (*headers, *extra),
        )  # fmt: skip

    def as_message(self, record: OutRecord) -> StaticMessage:
        self.offset += 1
        return StaticMessage(
            record.topic, record.partition or 2, self.offset, record.key, record.value, tuple(record.headers)
        )

    async def dispatch(
        self, *, traceparent: str | None = None, event_type: str = "policy.issued"
    ) -> StaticMessage:
        event = next(e for e in mixed_events(50, 5, seed=9) if e.event_type == event_type)
        records = await self.app.process(self.event_message(event, traceparent=traceparent))
        (record,) = records
        return self.as_message(record)

    async def product(self, msg: StaticMessage) -> list[OutRecord]:
        return list(await asyncio.create_task(self.app.process(msg)))  # its own record context

    async def mine(self, msg: StaticMessage) -> list[OutRecord]:
        async def run() -> list[OutRecord]:
            record_context.enter_new()  # as each worker does
            part = _Part((msg.topic(), msg.partition()), events=False)
            return await self.floor._deliver(msg, _Job(self.floor, part, None, deque([msg]), msg.offset()))

        return await asyncio.create_task(run())


def comparable(records: Sequence[OutRecord]) -> list[tuple[Any, ...]]:
    """Records with their clock readings masked (attempt time, latency, failure and due times)."""
    out = []
    for r in records:
        value: Any = r.value
        if r.topic in (LOG, NOTICES):
            value = json.loads(r.value or b"")
            for name in ("attempted_at", "at"):
                if name in value:
                    value[name] = "<time>"
            if value.get("latency_ms") is not None:
                value["latency_ms"] = "<latency>"
        headers = [(k, b"<time>" if k in ("x-failed-at", "x-due-at") else v) for k, v in r.headers]
        out.append((r.topic, r.key, value, headers, r.partition))
    return out


def audit_fields(value: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(value)
    for name in ("audit_id", "occurred_at", "latency_ms"):
        fields.pop(name)
    return fields


# --------------------------------------------------------------------------- fan-out


async def test_fan_out_writes_the_products_dispatch_records() -> None:
    w = World()
    plain = w.subscribe(1, ["policy.*"])
    ordered = w.subscribe(2, ["*"], ordered=True)
    w.subscribe(3, ["claim.paid", "premium.due", "policy.issued"], grants=["contact", "payment_instrument"])
    w.subscribe(4, ["*"], partner_id=PARTNER.id)
    w.subscribe(5, ["*"], active=False)
    w.subscribe(6, ["claim.*"], partner_id="prt_" + "b" * 24)  # not in the registry: no grants
    seen = 0
    for i, event in enumerate(mixed_events(60, 7, seed=4)):
        msg = w.event_message(event, traceparent=TRACEPARENT if i % 2 else None)
        expected = list(await w.app.process(msg))
        mine = w.floor._fan_out(msg)
        assert mine == expected
        seen += len(mine)
        by_sub = {header_value(r.headers, "x-subscription-id"): r for r in mine}
        assert "ep_" + f"{5:024x}" not in by_sub  # inactive: nothing fanned out
        # independently of dispatch_records: the ceiling's body, and the ordered key
        webhook_id = webhook_id_for(ordered.id, str(event.event_id))
        assert by_sub[ordered.id].key == f"{ordered.id}|{event.subject}".encode()
        assert by_sub[ordered.id].value == delivery_body(webhook_id, event, event_data_json(event, NO_GRANTS))
        if event.event_type.startswith("policy."):
            assert (
                by_sub[plain.id].key == f"{plain.id}|{webhook_id_for(plain.id, str(event.event_id))}".encode()
            )
    assert seen > 150


async def test_an_event_whose_key_is_not_its_subject_is_refused_by_both() -> None:
    w = World()
    w.subscribe(1)
    event = next(mixed_events(1, 1, seed=2))
    msg = w.event_message(event, key=b"someone-else")
    with pytest.raises(ValidationFailed):
        await w.app.process(msg)
    with pytest.raises(ValidationFailed):
        w.floor._fan_out(msg)


# --------------------------------------------------------------------------- delivery, side by side


def _raise(exc: Exception) -> Callable[[], HttpResponse]:
    def answer() -> HttpResponse:
        raise exc

    return answer


ANSWERS: dict[str, Callable[[], HttpResponse]] = {
    "delivered": lambda: HttpResponse(200, {}, b"ok"),
    "accepted": lambda: HttpResponse(204, {}, b""),
    "retry-after": lambda: HttpResponse(
        503, {"Retry-After": "7"}, b'{"error":"busy","email":"jane@example.com"}'
    ),
    "server-error": lambda: HttpResponse(500, {}, b"oops"),
    "redirect": lambda: HttpResponse(302, {"Location": "http://169.254.169.254/"}, b""),
    "not-found": lambda: HttpResponse(404, {}, b"no such hook"),
    "connect-failed": _raise(ConnectFailed("POST https://partner1.example:443: ClientConnectorError")),
    "refused": _raise(AddressRefused("the host resolves to a private address")),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
@pytest.mark.parametrize("traceparent", [None, TRACEPARENT])
async def test_a_delivery_sends_and_writes_what_the_product_does(
    answer: str, traceparent: str | None, audited: list[bytes]
) -> None:
    w = World()
    sub = w.subscribe(1)
    w.product_http.answers[sub.url] = w.floor_http.answers[sub.url] = ANSWERS[answer]
    msg = await w.dispatch(traceparent=traceparent)
    expected = await w.product(msg)
    mine = await w.mine(msg)
    assert comparable(mine) == comparable(expected)
    # the same request on the wire: URL, headers in the same order, body
    assert [(u, list(h.items()), b) for u, h, b in w.floor_http.sent] == [
        (u, list(h.items()), b) for u, h, b in w.product_http.sent
    ]
    (_url, headers, body) = w.floor_http.sent[0]
    assert body == msg.value()
    assert headers.get("traceparent") == traceparent
    verify_webhook(body or b"", headers, [SECRET], now=NOW_S)
    verify_webhook(body or b"", headers, [OLD_SECRET], now=NOW_S)
    # one audit record per attempt, with the product's fields
    assert [audit_fields(v) for v in w.floor.audit_records] == [audit_fields(v) for v in audited]
    assert len(audited) == 1


async def test_the_request_headers_are_the_products() -> None:
    w = World()
    sub = w.subscribe(1)
    msg = await w.dispatch(traceparent=TRACEPARENT)
    await w.product(msg)
    (_url, wire, _body) = w.product_http.sent[0]
    job = DispatchJob.from_message(msg)
    mine = request_headers(job, [SECRET, OLD_SECRET], int(NOW_S), TRACEPARENT)
    assert list(mine.items()) == list(wire.items())
    assert list(request_headers(job, [SECRET, OLD_SECRET], int(NOW_S), None).items()) == [
        (k, v) for k, v in wire.items() if k != "traceparent"
    ]
    assert job.subscription_id == sub.id


async def test_a_410_disables_the_endpoint_on_both_sides(audited: list[bytes]) -> None:
    w = World()
    sub = w.subscribe(1)
    w.product_http.answers[sub.url] = w.floor_http.answers[sub.url] = lambda: HttpResponse(410, {}, b"gone")
    first, second = await w.dispatch(), await w.dispatch()
    for msg in (first, second):
        assert comparable(await w.mine(msg)) == comparable(await w.product(msg))
    assert len(w.floor_http.sent) == len(w.product_http.sent) == 1
    assert [audit_fields(v) for v in w.floor.audit_records] == [audit_fields(v) for v in audited]


async def test_an_open_breaker_defers_without_a_request_on_both_sides() -> None:
    w = World()
    sub = w.subscribe(1)
    w.product_http.answers[sub.url] = w.floor_http.answers[sub.url] = lambda: HttpResponse(500, {}, b"")
    outcomes = []
    for _ in range(7):  # the breaker opens after 5 failures
        msg = await w.dispatch()
        mine, expected = await w.mine(msg), await w.product(msg)
        assert comparable(mine) == comparable(expected)
        outcomes.append(json.loads(mine[-1].value or b"")["attempt"])
    assert outcomes == [1, 1, 1, 1, 1, 0, 0]
    assert len(w.floor_http.sent) == len(w.product_http.sent) == 5


async def test_a_deleted_subscription_and_a_too_large_body_are_the_products() -> None:
    w = World(max_payload_bytes=1024)
    sub = w.subscribe(1)
    msg = await w.dispatch()
    big = StaticMessage(msg.topic(), 2, 7, msg.key(), b"{" + b" " * 2000 + b"}", tuple(msg.headers()))
    assert comparable(await w.mine(big)) == comparable(await w.product(big))
    w.table.put(sub.id, None)
    assert comparable(await w.mine(msg)) == comparable(await w.product(msg))
    assert not w.floor_http.sent


async def test_a_busy_endpoint_defers_instead_of_holding_a_slot_on_both_sides() -> None:
    w = World(max_waiting_per_endpoint=1)
    w.subscribe(1, max_concurrency=1)
    jobs = [await w.dispatch() for _ in range(3)]
    results = {}
    for side, http, deliver in (
        ("product", w.product_http, w.product),
        ("floor", w.floor_http, w.mine),
    ):
        http.gate = asyncio.Event()
        running = [asyncio.create_task(deliver(j)) for j in jobs[:2]]  # one sending, one waiting
        for _ in range(5):
            await asyncio.sleep(0)
        third = await deliver(jobs[2])
        http.gate.set()
        results[side] = [*(await asyncio.gather(*running)), third]
    assert [comparable(r) for r in results["floor"]] == [comparable(r) for r in results["product"]]
    assert json.loads(results["floor"][2][-1].value or b"")["error"].startswith(
        "deferred: the endpoint is busy"
    )
    assert [r.topic for r in results["floor"][2]] == ["integrations.webhooks.retry.0-5s", LOG]


# --------------------------------------------------------------------------- the records


JOB = DispatchJob(
    subscription_id="ep_" + "1" * 24,
    webhook_id="msg_" + "2" * 26,
    event_id="5455732c-257b-4d6b-8197-bb665be7f7a0",
    event_type="claim.reported",
    subject="POL-2024-000123",
    ordered=False,
    body=b'{"webhook_id":"msg_x"}',
)
ODD = DispatchJob(
    subscription_id="ep_" + "3" * 24,
    webhook_id="msg_" + "4" * 26,
    event_id="e-1",
    event_type="policy.issued",
    subject='Zürich "Policy"\n\u2028\x00/é',
    ordered=True,
    body=b"{}",
)
WHEN = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)


async def test_the_audit_record_is_the_products_byte_for_byte(audited: list[bytes]) -> None:
    w = World()
    sub = w.subscribe(1)
    w.product_http.answers[sub.url] = lambda: HttpResponse(503, {}, b"")
    failed = [await w.dispatch(traceparent=traceparent) for traceparent in (TRACEPARENT, None)]
    for msg in failed:
        await w.product(msg)
    w.product_http.answers[sub.url] = lambda: HttpResponse(200, {}, b"")
    delivered = await w.dispatch(traceparent=TRACEPARENT)
    await w.product(delivered)
    jobs = [DispatchJob.from_message(m) for m in (*failed, delivered)]
    cases = [
        ("retriable_error", "failure", "closed", TRACEPARENT, None, "_NotDelivered: HTTP 503"),
        ("retriable_error", "failure", "closed", None, None, "_NotDelivered: HTTP 503"),
        ("DELIVERED", "success", "closed", TRACEPARENT, {"http_status": 200}, None),
    ]
    assert len(audited) == len(cases)
    for value, job, (status, outcome, state, traceparent, response, error) in zip(
        audited, jobs, cases, strict=True
    ):
        product = json.loads(value)
        mine = audit_value(
            subscription_id=sub.id,
            url_host="partner1.example",
            job=job,
            attempt=1,
            status=status,
            outcome=outcome,
            latency_ms=product["latency_ms"],
            breaker_state=state,
            traceparent=traceparent,
            response_summary=response,
            error=error,
            audit_id=UUID(product["audit_id"]),
            occurred_at=datetime.fromisoformat(product["occurred_at"].replace("Z", "+00:00")),
        )
        assert mine == value


# --------------------------------------------------------------------------- bookkeeping


def test_offsets_commit_only_past_the_contiguous_finished_run() -> None:
    part = _Part((DISPATCH, 4), events=False)
    for offset in (10, 11, 12, 13):
        assert part.track(offset)
    assert not part.track(12)  # fetched again: already in hand
    part.finish(12)
    assert part.commit_due() is None  # 10 and 11 are not finished
    part.finish(10)
    assert part.commit_due() == 11
    assert part.commit_due() is None  # nothing moved since
    part.finish(11)
    assert part.commit_due() == 13  # 12 finished earlier
    part.finish(13)
    assert part.commit_due() == 14
    assert not part.track(13)
    assert part.tp == (DISPATCH, 4)


async def test_a_record_is_done_only_once_all_its_outputs_are_acknowledged() -> None:
    w = World()
    floor = w.floor
    part = floor._parts[(DISPATCH, 0)] = _Part((DISPATCH, 0), events=False)
    lane: deque[Any] = deque()
    for offset in (5, 6):
        assert part.track(offset)
        lane.append(offset)
    floor._lanes[(part.tp, b"k")] = lane
    floor._buffered = 2
    first = _Job(floor, part, (part.tp, b"k"), lane, 5)
    first.left, first.kind = 2, _DELIVERED  # e.g. a delivery and a notice, both to acknowledge
    part.running = 1
    floor._on_reports([(first, None)])
    assert part.commit_due() is None  # one of two outputs acknowledged
    floor._on_reports([(first, None)])
    assert part.commit_due() == 6
    assert floor.delivered == 1
    assert list(lane) == [6]  # the key's next record may start now
    assert floor._ready.qsize() == 1


# --------------------------------------------------------------------------- the latency phase


def test_a_delivery_counts_from_its_first_receipt() -> None:
    received = first_receipts(
        [
            {"webhook_id": "msg_a", "received_at": "10.5"},
            {"webhook_id": "msg_b", "received_at": 11.0},
            {"webhook_id": "msg_a", "received_at": 10.25},  # the same delivery again, earlier
            {"webhook_id": "msg_a", "received_at": 12.0},
            {"webhook_id": None, "received_at": 9.0},  # not a delivery
        ]
    )
    assert received == {"msg_a": 10.25, "msg_b": 11.0}


def test_the_latency_is_measured_past_the_warm_up_per_delivery() -> None:
    warm, first, second = mixed_events(3, 10, seed=7)
    sent = [(warm, 100.0), (first, 101.0), (second, 102.0)]

    def wid(event: Event, i: int) -> str:
        return webhook_id_for(sub_id(i), str(event.event_id))

    received = {wid(warm, i): 100.2 for i in matching(warm.event_type)}  # warm-up: not measured
    received |= {wid(first, i): 101.004 for i in matching(first.event_type)}
    lost, *rest = matching(second.event_type)
    received |= {wid(second, i): 102.010 for i in rest}  # after the last event was produced
    latency = measure_latency(sent, received, window_start=100.5, cpu=Run(0, wall_s=3.0, cpu_s=1.5))
    measured = len(matching(first.event_type)) + len(rest)
    assert latency.measured == measured
    assert latency.missing == 1  # the delivery to endpoint ``lost`` never arrived
    assert wid(second, lost) not in received
    assert latency.p50_ms == pytest.approx(4.0)  # 11 or 12 at 4 ms, 10 or 11 at 10 ms
    assert latency.p99_ms == pytest.approx(10.0)
    assert latency.events_per_s == pytest.approx(2 / 1.5)  # the measured window: 100.5 to 102
    assert latency.rate_per_s == pytest.approx(len(matching(first.event_type)) / 1.5)
    assert latency.cpu == Run(measured, 3.0, 1.5)


def test_no_delivery_received_gives_no_percentile() -> None:
    (event,) = mixed_events(1, 10, seed=7)
    latency = measure_latency([(event, 5.0)], {}, window_start=5.0, cpu=Run(0, 1.0, 0.5))
    assert math.isnan(latency.p50_ms)
    assert math.isnan(latency.p99_ms)
    assert latency.measured == 0
    assert latency.missing == len(matching(event.event_type))


@pytest.mark.parametrize("answer", ["delivered", "server-error"])
async def test_with_the_audit_log_line_on_both_write_the_same_line(
    answer: str, audited: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """``processors run`` logs at INFO, and the bench logs as it does: the floor writes the
    product's audit log line for each attempt, so both pay for it."""
    caplog.set_level(logging.INFO, logger="processors.audit")
    w = World()
    sub = w.subscribe(1)
    w.product_http.answers[sub.url] = w.floor_http.answers[sub.url] = ANSWERS[answer]
    msg = await w.dispatch()

    def lines() -> list[tuple[int, dict[str, Any]]]:
        found = []
        for record in caplog.records:
            if record.name == "processors.audit":
                fields = {k: v for k, v in log_extras(record).items() if k not in VARYING}
                found.append((record.levelno, fields))
        caplog.clear()
        return found

    await w.product(msg)
    product = lines()
    await w.mine(msg)
    assert lines() == product
    assert [level for level, _ in product] == [logging.INFO if answer == "delivered" else logging.WARNING]


VARYING = ("audit_id", "occurred_at", "latency_ms")
