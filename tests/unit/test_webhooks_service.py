"""The endpoint and delivery services: the rules, the owner checks and the audit trail.

In memory, behind the services' own seams: a subscription store that keeps its table, a
producer and a redeliverer that record what they are handed, the real delivery-log view, and
a memory audit sink.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from processors.errors import BrokerError
from processors.observability.audit import Actor, AuditEvent, AuditLogger, MemoryAuditSink
from processors.partners.auth import OPERATOR, Caller
from processors.partners.model import Partner
from processors.runtime.message import OutRecord, StaticMessage
from processors.webhooks.attempts import AttemptsView, JobRef, RedeliveryReport
from processors.webhooks.delivery import TEST_EVENT_TYPE, DispatchJob
from processors.webhooks.secrets import SecretBox, active_secrets
from processors.webhooks.service import (
    DeliveryService,
    EndpointDisabled,
    EndpointForbidden,
    EndpointLimitReached,
    EndpointNotFound,
    EndpointService,
    EndpointsUnavailable,
    EndpointUrlRefused,
    InvalidEndpoint,
    MessageNotFound,
    NewEndpoint,
)
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.ssrf import AddressRefused
from processors.webhooks.subscriptions import Subscription
from tests.unit.api_fakes import NOW, Clock
from tests.unit.api_fakes import FakeSubscriptionStore as Store
from tests.unit.api_fakes import box as box
from tests.unit.api_fakes import clock as clock
from tests.unit.api_fakes import store as store

PARTNER_A = Partner(id="prt_" + "a" * 24, name="Broker A", kind="broker")
PARTNER_B = Partner(id="prt_" + "b" * 24, name="Broker B", kind="broker")
A = Caller(partner_id=PARTNER_A.id, key_id="akey0001")
B = Caller(partner_id=PARTNER_B.id, key_id="bkey0001")
URL = "https://partner.example.com/hooks"
CREDENTIALED_URL = "https://hookuser:hook-password-77@partner.example.com/hooks?token=q"
NO_SUCH = "ep_" + "0" * 24
DISPATCH = "integrations.webhooks.dispatch"


class Partners:
    def partner(self, partner_id: str) -> Partner | None:
        return {p.id: p for p in (PARTNER_A, PARTNER_B)}.get(partner_id)


async def url_check(url: str) -> None:
    if "internal" in url:
        raise AddressRefused("the host resolves to a private address")


class Producer:
    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.fail: BrokerError | None = None

    async def send_all(self, records: list[OutRecord]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.extend(records)


class Feed:
    async def wait_caught_up(self, timeout_s: float) -> bool:
        return True


class Redeliverer:
    def __init__(self) -> None:
        self.asked: list[tuple[list[JobRef], str | None]] = []

    async def redeliver(
        self, jobs: Sequence[JobRef], *, expect_subscription: str | None = None
    ) -> RedeliveryReport:
        self.asked.append((list(jobs), expect_subscription))
        return RedeliveryReport(tuple(f"msg_for_{job.offset}" for job in jobs))


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def service(store: Store, box: SecretBox, sink: MemoryAuditSink, clock: Clock) -> EndpointService:
    return EndpointService(
        store,
        box,
        url_check,
        clock=clock,
        partners=Partners(),
        max_per_partner=3,
        audit=AuditLogger("api", sink),
    )


def audit_text(sink: MemoryAuditSink) -> str:
    return b"".join(sink.payloads()).decode()


async def endpoint_of(service: EndpointService, caller: Caller, **fields: Any) -> Subscription:
    new = NewEndpoint(url=fields.pop("url", URL), events=fields.pop("events", ["policy.*"]), **fields)
    return (await service.create(caller, new, surface="portal")).endpoint


# ------------------------------------------------------------------------------------ endpoints


async def test_a_partner_creates_its_own_endpoint_and_sees_its_secret_once(
    service: EndpointService, store: Store, box: SecretBox, sink: MemoryAuditSink
) -> None:
    created = await service.create(
        A, NewEndpoint(url=CREDENTIALED_URL, events=["policy.issued"]), surface="portal", request_id="req-1"
    )

    sub = created.endpoint
    assert sub.partner_id == PARTNER_A.id
    assert store.table.get(sub.id) == sub  # the answer came once the table showed it
    secret = created.secret.get_secret_value()
    assert [s.get_secret_value() for s in active_secrets(sub.secrets, box, associated=sub.id, now=NOW)] == [
        secret
    ]
    assert secret not in repr(created)
    assert secret.encode() not in store.records[0][1]  # type: ignore[operator]

    [event] = sink.events
    assert (event.operation, event.status, event.outcome) == ("portal.createEndpoint", "ok", "success")
    assert event.endpoint == f"webhook:{sub.id}"
    assert event.actor is not None
    assert (event.actor.kind, event.actor.partner_id, event.actor.key_id) == (
        "partner",
        PARTNER_A.id,
        "akey0001",
    )
    assert event.correlation_id == "req-1"
    assert event.response_summary["url_host"] == "https://partner.example.com"
    text = audit_text(sink)
    for leaked in (secret, "hookuser", "hook-password-77", "token=q", "/hooks"):
        assert leaked not in text


async def test_another_partners_endpoint_is_answered_as_one_that_does_not_exist(
    service: EndpointService, store: Store, sink: MemoryAuditSink
) -> None:
    theirs = await endpoint_of(service, B)
    written = len(store.records)
    attempts: list[Callable[[str], Awaitable[object]]] = [
        lambda id_: service.get(A, id_),
        lambda id_: service.update(A, id_, {"url": "https://evil.example.com/x"}, surface="portal"),
        lambda id_: service.disable(A, id_, "mine now", surface="portal"),
        lambda id_: service.enable(A, id_, surface="portal"),
        lambda id_: service.rotate_secret(A, id_, surface="portal"),
        lambda id_: service.delete(A, id_, surface="rest"),
    ]
    messages = []
    for attempt in attempts:
        for target in (theirs.id, NO_SUCH):
            with pytest.raises(EndpointNotFound) as refused:
                await attempt(target)
            messages.append((type(refused.value), refused.value.message))

    assert set(messages) == {(EndpointNotFound, "no such webhook subscription")}
    assert len(store.records) == written
    assert store.table.get(theirs.id) == theirs
    assert await service.list_endpoints(A) == []
    refusals = [e for e in sink.events if e.actor is not None and e.actor.partner_id == PARTNER_A.id]
    assert len(refusals) == 10  # every change refused is audited (reads are not)
    assert {(e.status, e.outcome) for e in refusals} == {("not_found", "rejected")}


async def test_the_operator_sees_and_changes_every_endpoint(
    service: EndpointService, sink: MemoryAuditSink
) -> None:
    theirs = await endpoint_of(service, B)
    changed = await service.update(OPERATOR, theirs.id, {"description": "checked"}, surface="rest")
    assert changed.description == "checked"
    assert sink.events[-1].operation == "rest.updateEndpoint"
    actor = sink.events[-1].actor
    assert actor is not None
    assert actor.kind == "operator"
    assert [s.id for s in await service.list_endpoints(OPERATOR)] == [theirs.id]


async def test_invalid_input_names_fields_never_values(
    service: EndpointService, store: Store, sink: MemoryAuditSink
) -> None:
    with pytest.raises(InvalidEndpoint) as refused:
        await service.create(
            A, NewEndpoint(url="ftp://zq-secret-host/x", events=["policy.issued"], max_concurrency=0)
        )
    assert {r.split(":")[0] for r in refused.value.reasons} == {"url", "max_concurrency"}
    assert "zq-secret-host" not in refused.value.message
    assert store.records == []
    event = sink.events[-1]
    assert (event.status, event.outcome, event.endpoint) == ("invalid_request", "rejected", "webhooks")
    assert event.request_summary["invalid_fields"] == ["max_concurrency", "url"]
    assert "zq-secret-host" not in audit_text(sink)


async def test_a_refused_url_is_its_own_error(
    service: EndpointService, store: Store, sink: MemoryAuditSink
) -> None:
    with pytest.raises(EndpointUrlRefused, match="private address"):
        await service.create(A, NewEndpoint(url="https://internal.example/x", events=["policy.issued"]))
    mine = await endpoint_of(service, A)
    with pytest.raises(EndpointUrlRefused):
        await service.update(A, mine.id, {"url": "https://internal.example/y"})
    assert store.table.get(mine.id) == mine
    assert [e.status for e in sink.events] == ["url_refused", "ok", "url_refused"]


async def test_each_partner_has_its_own_limit(service: EndpointService) -> None:
    for _ in range(3):
        await endpoint_of(service, A)
    with pytest.raises(EndpointLimitReached, match="per partner"):
        await endpoint_of(service, A)
    await endpoint_of(service, B)  # B's share is its own


async def test_grants_are_the_operators_to_set(service: EndpointService) -> None:
    with pytest.raises(EndpointForbidden):
        await service.create(A, NewEndpoint(url=URL, events=["*"], grants=["contact"]))
    mine = await endpoint_of(service, A)
    with pytest.raises(EndpointForbidden):
        await service.update(A, mine.id, {"grants": ["identity"]})
    with pytest.raises(InvalidEndpoint, match="partner's grants"):
        await service.update(OPERATOR, mine.id, {"grants": ["identity"]})
    own = await service.create(OPERATOR, NewEndpoint(url=URL, events=["*"], grants=["identity", "contact"]))
    assert [str(g) for g in own.endpoint.grants] == ["contact", "identity"]


async def test_a_partner_names_no_other_owner(service: EndpointService) -> None:
    with pytest.raises(InvalidEndpoint, match="partner_id"):
        await service.create(A, NewEndpoint(url=URL, events=["*"], partner_id=PARTNER_B.id))
    with pytest.raises(InvalidEndpoint, match="no such partner"):
        await service.create(OPERATOR, NewEndpoint(url=URL, events=["*"], partner_id="prt_" + "c" * 24))
    theirs = await service.create(OPERATOR, NewEndpoint(url=URL, events=["*"], partner_id=PARTNER_B.id))
    assert theirs.endpoint.partner_id == PARTNER_B.id


async def test_disable_and_enable_write_once_each(
    service: EndpointService, store: Store, clock: Clock, sink: MemoryAuditSink
) -> None:
    mine = await endpoint_of(service, A)
    written = len(store.records)
    disabled = await service.disable(A, mine.id, "  maintenance window  ", surface="portal")
    assert (disabled.active, disabled.disabled_reason, disabled.disabled_at) == (
        False,
        "maintenance window",
        NOW,
    )
    assert not disabled.deliverable
    assert store.table.get(mine.id) == disabled
    assert await service.disable(A, mine.id, "again", surface="portal") == disabled  # nothing changes
    clock.now = NOW + timedelta(minutes=5)
    enabled = await service.enable(A, mine.id, surface="portal")
    assert enabled.deliverable
    assert enabled.disabled_reason is None
    assert await service.enable(A, mine.id, surface="portal") == enabled
    assert len(store.records) == written + 2
    assert [e.operation for e in sink.events[-4:]] == [
        "portal.disableEndpoint",
        "portal.disableEndpoint",
        "portal.enableEndpoint",
        "portal.enableEndpoint",
    ]
    assert "maintenance" not in audit_text(sink)  # a reason's text is the partner's, not the audit's


async def test_a_disable_reason_has_a_default_and_a_bound(service: EndpointService) -> None:
    mine = await endpoint_of(service, A)
    with pytest.raises(InvalidEndpoint) as refused:
        await service.disable(A, mine.id, "x" * 501)
    assert refused.value.reasons == ("reason: at most 500 characters",)
    assert (await service.disable(A, mine.id)).disabled_reason == "disabled by the partner"


async def test_update_refuses_nulls_and_skips_what_did_not_change(
    service: EndpointService, store: Store
) -> None:
    mine = await endpoint_of(service, A, description="first")
    written = len(store.records)
    with pytest.raises(InvalidEndpoint) as refused:
        await service.update(A, mine.id, {"url": None, "events": None, "description": None})
    assert refused.value.reasons == ("events: must not be null", "url: must not be null")
    assert await service.update(A, mine.id, {"url": URL, "events": ["policy.*"]}) == mine
    assert len(store.records) == written
    cleared = await service.update(A, mine.id, {"description": None, "max_concurrency": 3})
    assert (cleared.description, cleared.max_concurrency, cleared.version) == (None, 3, mine.version + 1)


async def test_rotation_shows_the_new_secret_once_and_keeps_the_previous_for_the_grace(
    service: EndpointService, box: SecretBox, clock: Clock, sink: MemoryAuditSink
) -> None:
    created = await service.create(A, NewEndpoint(url=URL, events=["*"]))
    clock.now = NOW + timedelta(hours=1)
    rotated = await service.rotate_secret(A, created.endpoint.id, grace_s=600, surface="portal")
    assert rotated.previous_expires_at == clock.now + timedelta(seconds=600)
    signing = active_secrets(rotated.endpoint.secrets, box, associated=created.endpoint.id, now=clock.now)
    assert [s.get_secret_value() for s in signing] == [
        rotated.secret.get_secret_value(),
        created.secret.get_secret_value(),
    ]
    later = clock.now + timedelta(seconds=601)
    signing = active_secrets(rotated.endpoint.secrets, box, associated=created.endpoint.id, now=later)
    assert [s.get_secret_value() for s in signing] == [rotated.secret.get_secret_value()]
    with pytest.raises(InvalidEndpoint, match="grace_s"):
        await service.rotate_secret(A, created.endpoint.id, grace_s=-1)
    text = audit_text(sink)
    assert rotated.secret.get_secret_value() not in text
    assert created.secret.get_secret_value() not in text
    assert sink.events[-2].request_summary == {"grace_s": 600}


async def test_a_partner_chosen_secret_must_be_strong(service: EndpointService) -> None:
    with pytest.raises(InvalidEndpoint, match="secret"):
        await service.create(A, NewEndpoint(url=URL, events=["*"], secret=SecretStr("short")))


async def test_a_broker_that_does_not_answer_is_unavailable_and_audited_as_a_failure(
    service: EndpointService, store: Store, sink: MemoryAuditSink
) -> None:
    mine = await endpoint_of(service, A)
    store.fail = BrokerError("not acknowledged")
    with pytest.raises(EndpointsUnavailable, match="could not be stored"):
        await service.update(A, mine.id, {"description": "new"})
    store.fail = None
    store.catch_up_fail = BrokerError("not caught up")
    with pytest.raises(EndpointsUnavailable, match="could not be read"):
        await service.enable(A, mine.id)
    assert await service.get(A, mine.id) == mine  # reads answer from the local table
    assert [(e.status, e.outcome) for e in sink.events[-2:]] == [("unavailable", "failure")] * 2


async def test_an_unexpected_failure_is_audited_by_its_class_and_raised(
    service: EndpointService, store: Store, sink: MemoryAuditSink
) -> None:
    mine = await endpoint_of(service, A)

    async def broken(_sub: Subscription) -> None:
        raise RuntimeError("disk says /secret/path")

    store.put = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        await service.update(A, mine.id, {"description": "new"})
    event = sink.events[-1]
    assert (event.status, event.outcome, event.error) == ("error", "failure", "RuntimeError")


async def test_an_id_that_is_no_endpoint_id_is_audited_without_it(
    service: EndpointService, sink: MemoryAuditSink
) -> None:
    with pytest.raises(EndpointNotFound):
        await service.enable(A, "x" * 10_000)
    assert sink.events[-1].endpoint == "webhook:(not an endpoint id)"


# ------------------------------------------------------------------------------------ deliveries


@pytest.fixture
def view() -> AttemptsView:
    return AttemptsView()


@pytest.fixture
def producer() -> Producer:
    return Producer()


@pytest.fixture
def redeliverer() -> Redeliverer:
    return Redeliverer()


@pytest.fixture
def deliveries(
    service: EndpointService, view: AttemptsView, producer: Producer, redeliverer: Redeliverer, clock: Clock
) -> DeliveryService:
    return DeliveryService(service, view, Feed(), redeliverer, DISPATCH, producer=producer, clock=clock)


def logged(sub_id: str, webhook_id: str, offset: int, status: str, at: datetime) -> bytes:
    return json.dumps(
        {
            "subscription_id": sub_id,
            "webhook_id": webhook_id,
            "event_id": f"evt-{webhook_id}",
            "event_type": "policy.issued",
            "subject": "POL-1",
            "attempt": 1,
            "status": status,
            "attempted_at": at.isoformat(),
            "url_host": "partner.example.com",
            "job": {"topic": DISPATCH, "partition": 0, "offset": offset},
        }
    ).encode()


async def test_a_test_event_is_a_dispatch_record_the_webhooks_app_reads(
    deliveries: DeliveryService, service: EndpointService, producer: Producer, sink: MemoryAuditSink
) -> None:
    mine = await endpoint_of(service, A, ordered=True)
    sent = await deliveries.send_test_event(A, mine.id, request_id="req-9")

    [record] = producer.sent
    assert record.topic == DISPATCH
    job = DispatchJob.from_message(
        StaticMessage(DISPATCH, 0, 0, record.key, record.value, tuple(record.headers))
    )
    assert (job.subscription_id, job.event_type, job.webhook_id) == (
        mine.id,
        TEST_EVENT_TYPE,
        sent.webhook_id,
    )
    assert not job.ordered  # never waits behind an entity of an ordered endpoint
    assert sent.webhook_id == webhook_id_for(mine.id, sent.event_id)
    body = json.loads(job.body)
    assert body["event_type"] == TEST_EVENT_TYPE
    assert body["data"]["endpoint_id"] == mine.id
    event = sink.events[-1]
    assert (event.operation, event.status, event.correlation_id) == ("portal.sendTestEvent", "ok", "req-9")
    assert event.response_summary["webhook_id"] == sent.webhook_id


async def test_no_test_event_for_a_disabled_or_anothers_endpoint(
    deliveries: DeliveryService, service: EndpointService, producer: Producer, sink: MemoryAuditSink
) -> None:
    mine = await endpoint_of(service, A)
    theirs = await endpoint_of(service, B)
    await service.disable(A, mine.id)
    with pytest.raises(EndpointDisabled, match="enable it first"):
        await deliveries.send_test_event(A, mine.id)
    with pytest.raises(EndpointNotFound):
        await deliveries.send_test_event(A, theirs.id)
    assert producer.sent == []
    assert [e.status for e in sink.events[-2:]] == ["endpoint_disabled", "not_found"]


async def test_a_test_event_the_broker_does_not_take_is_unavailable(
    deliveries: DeliveryService, service: EndpointService, producer: Producer
) -> None:
    mine = await endpoint_of(service, A)
    producer.fail = BrokerError("no leader")
    with pytest.raises(EndpointsUnavailable):
        await deliveries.send_test_event(A, mine.id)


async def test_redeliver_copies_the_latest_dispatch_record_of_the_owners_message(
    deliveries: DeliveryService,
    service: EndpointService,
    view: AttemptsView,
    redeliverer: Redeliverer,
    sink: MemoryAuditSink,
) -> None:
    mine = await endpoint_of(service, A)
    theirs = await endpoint_of(service, B)
    view.apply(logged(mine.id, "msg_one", 7, "failed", NOW))
    view.apply(logged(mine.id, "msg_one", 9, "failed", NOW + timedelta(seconds=1)))
    view.apply(logged(theirs.id, "msg_theirs", 11, "failed", NOW))

    done = await deliveries.redeliver(A, mine.id, "msg_one")
    assert (done.queued, done.caught_up) == (1, True)
    assert redeliverer.asked == [([JobRef(DISPATCH, 0, 9)], mine.id)]
    with pytest.raises(MessageNotFound):
        await deliveries.redeliver(A, mine.id, "msg_theirs")  # B's message is not on A's endpoint
    with pytest.raises(EndpointNotFound):
        await deliveries.redeliver(A, theirs.id, "msg_theirs")
    assert len(redeliverer.asked) == 1
    assert [e.operation for e in sink.events[-3:]] == ["portal.redeliver"] * 3


async def test_recover_takes_every_failed_message_since_a_time(
    deliveries: DeliveryService, service: EndpointService, view: AttemptsView, redeliverer: Redeliverer
) -> None:
    mine = await endpoint_of(service, A)
    view.apply(logged(mine.id, "msg_old", 1, "failed", NOW - timedelta(hours=2)))
    view.apply(logged(mine.id, "msg_new", 2, "failed", NOW))
    view.apply(logged(mine.id, "msg_ok", 3, "delivered", NOW))

    done = await deliveries.recover(A, mine.id, NOW - timedelta(hours=1))
    assert done.webhook_ids == ("msg_for_2",)
    assert redeliverer.asked == [([JobRef(DISPATCH, 0, 2)], mine.id)]
    with pytest.raises(InvalidEndpoint, match="since"):
        await deliveries.recover(A, mine.id, datetime(2025, 1, 1))  # no zone


def test_the_actor_round_trips_and_defaults_to_none() -> None:
    fields: dict[str, Any] = {
        "app": "api",
        "direction": "inbound",
        "endpoint": "webhooks",
        "operation": "rest.createEndpoint",
        "status": "ok",
        "outcome": "success",
        "latency_ms": 1.5,
    }
    assert AuditEvent(**fields).actor is None
    event = AuditEvent(**fields, actor=Actor(kind="partner", partner_id=PARTNER_A.id, key_id="akey0001"))
    again = AuditEvent.from_json(event.to_json())
    assert again.actor == event.actor
    assert json.loads(event.to_json())["actor"] == {
        "kind": "partner",
        "partner_id": PARTNER_A.id,
        "key_id": "akey0001",
    }
