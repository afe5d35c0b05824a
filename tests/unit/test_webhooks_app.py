"""The webhooks app's decisions, with a fake store and a fake HTTP transport behind its seams."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from processors.adapters.http import ConnectFailed, HttpRequest, HttpResponse, TimeoutSettings
from processors.apps.registry import secret_box
from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.examples import example_event
from processors.errors import ConfigError, ValidationFailed
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import load_resilience
from processors.runtime.message import OutRecord, StaticMessage, header_value
from processors.settings import Settings
from processors.topics.catalogue import load_catalogue
from processors.webhooks.app import WebhooksApp
from processors.webhooks.config import WebhooksSettings
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, SubscriptionTable
from processors.webhooks.verify import verify_webhook

CODEC = Codec(LocalSchemaIds())
SECRET = "whsec_dW5pdC10ZXN0LXNlY3JldC0zMi1ieXRlcy1sb25nISE="
DISPATCH = "integrations.webhooks.dispatch"
LOG = "integrations.webhook.deliveries"
NOTICES = "integrations.webhook.endpoint-events"


class FakeStore:
    def __init__(self) -> None:
        self.table = SubscriptionTable()
        self.writes: list[Subscription] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...

    async def put(self, sub: Subscription) -> None:
        self.writes.append(sub)
        self.table.put(sub.id, sub)

    def add_listener(self, callback: Callable[[str, Subscription | None], None]) -> None: ...


class FakeTransport:
    """Answers by URL; records every request."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.answers: dict[str, Callable[[], HttpResponse]] = {}
        self.gate: asyncio.Event | None = None

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        return self.answers.get(request.url, lambda: HttpResponse(200, {}, b"ok"))()


class Harness:
    def __init__(self, **settings: object) -> None:
        self.box = SecretBox.ephemeral()
        self.store = FakeStore()
        self.transport = FakeTransport()
        catalogue = load_catalogue(None)
        self.app = WebhooksApp(
            codec=CODEC,
            topics=catalogue.app("webhooks"),
            store=self.store,
            box=self.box,
            transport=self.transport,
            policy=load_resilience(None).for_endpoint("partner-webhooks"),
            breakers=BreakerRegistry(),
            settings=WebhooksSettings(**settings),  # type: ignore[arg-type]
            dispatch_topic=DISPATCH,
            deliveries_topic=LOG,
            endpoint_events_topic=NOTICES,
            group="integrations.webhooks",
        )
        self.offset = 0

    def subscribe(self, n: int, events: Sequence[str] = ("*",), **fields: object) -> Subscription:
        sub_id = f"ep_{n:024x}"
        secret = StoredSecret(self.box.encrypt(SECRET, associated=sub_id), created_at=datetime.now(UTC))
        sub = Subscription.create(
            id=sub_id, url=f"https://partner{n}.example/hook", events=list(events), secrets=[secret], **fields
        )
        self.store.table.put(sub.id, sub)
        return sub

    def event_message(self, event_type: str = "policy.issued") -> StaticMessage:
        event = example_event(event_type)
        value, headers = CODEC.encode(event, ContentType.AVRO)
        self.offset += 1
        topic = (
            "insurance."
            + {"policy": "policy", "claim": "claim", "premium": "billing"}[event_type.split(".")[0]]
        )
        return StaticMessage(f"{topic}.events", 0, self.offset, event.subject.encode(), value, tuple(headers))

    def as_message(self, record: OutRecord, topic: str | None = None) -> StaticMessage:
        self.offset += 1
        return StaticMessage(
            topic or record.topic,
            record.partition or 0,
            self.offset,
            record.key,
            record.value,
            tuple(record.headers),
        )

    async def dispatch(self, *subs: Subscription, event_type: str = "policy.issued") -> list[StaticMessage]:
        records = await self.app.process(self.event_message(event_type))
        return [self.as_message(r) for r in records]


def logs(records: Sequence[OutRecord]) -> list[dict[str, object]]:
    return [json.loads(r.value or b"") for r in records if r.topic == LOG]


async def test_fan_out_writes_one_signed_body_per_matching_subscription() -> None:
    h = Harness()
    a = h.subscribe(1, ["policy.*"])
    h.subscribe(2, ["claim.*"])
    c = h.subscribe(3, ["policy.issued"], ordered=True)
    jobs = await h.dispatch()
    assert sorted(header_value(j.headers(), "x-subscription-id") or "" for j in jobs) == sorted([a.id, c.id])
    out = await h.app.process(jobs[0])
    assert [line["status"] for line in logs(out)] == ["delivered"]
    request = h.transport.requests[0]
    assert request.body == jobs[0].value()
    verify_webhook(request.body or b"", dict(request.headers), [SECRET])


async def test_an_event_whose_key_is_not_its_subject_is_refused() -> None:
    h = Harness()
    msg = h.event_message()
    bad = StaticMessage(msg.topic(), 0, 1, b"someone-else", msg.value(), tuple(msg.headers()))
    with pytest.raises(ValidationFailed):
        await h.app.process(bad)


async def test_a_503_goes_to_the_first_tier_and_starts_the_failing_clock() -> None:
    h = Harness()
    sub = h.subscribe(1)
    h.transport.answers[sub.url] = lambda: HttpResponse(503, {"Retry-After": "7"}, b'{"error":"busy"}')
    (job,) = await h.dispatch()
    out = await h.app.process(job)
    assert [r.topic for r in out if r.topic != LOG] == [
        "integrations.webhooks.retry.1-5m"
    ]  # 7 s > the 5 s tier
    (line,) = logs(out)
    assert line["status"] == "failed"
    assert line["http_status"] == 503
    assert line["next"] == "retry"
    assert line["attempt"] == 1
    await asyncio.gather(*h.app._background)
    assert h.store.writes[-1].failing_since is not None


async def test_a_410_disables_the_endpoint_and_later_deliveries_are_skipped_without_a_request() -> None:
    h = Harness()
    sub = h.subscribe(1)
    h.transport.answers[sub.url] = lambda: HttpResponse(410, {}, b"")
    first, second = (await h.dispatch())[0], (await h.dispatch())[0]
    out = await h.app.process(first)
    assert [json.loads(r.value or b"")["type"] for r in out if r.topic == NOTICES] == [
        "webhook.endpoint_disabled"
    ]
    assert [line["status"] for line in logs(out)] == ["disabled"]
    assert not [r for r in out if r.topic.startswith("integrations.webhooks.retry")]
    out = await h.app.process(second)
    assert [line["status"] for line in logs(out)] == ["skipped"]
    assert len(h.transport.requests) == 1
    await asyncio.gather(*h.app._background)
    assert h.store.writes[-1].disabled_reason is not None
    assert h.store.writes[-1].active is False


async def test_an_endpoint_failing_for_longer_than_the_limit_is_disabled() -> None:
    h = Harness(disable_after_failing_s=3600)
    sub = h.subscribe(1)
    h.store.table.put(sub.id, sub.with_failing_since(datetime.now(UTC) - timedelta(hours=2)))
    h.transport.answers[sub.url] = lambda: HttpResponse(500, {}, b"")
    (job,) = await h.dispatch()
    out = await h.app.process(job)
    assert [r.topic for r in out].count(NOTICES) == 1


async def test_a_connection_error_is_a_failed_attempt_for_the_next_tier() -> None:
    h = Harness()
    sub = h.subscribe(1)

    def refuse() -> HttpResponse:
        raise ConnectFailed("connection refused")

    h.transport.answers[sub.url] = refuse
    (job,) = await h.dispatch()
    out = await h.app.process(job)
    assert [line["status"] for line in logs(out)] == ["failed"]
    assert [r.topic for r in out if r.topic != LOG] == ["integrations.webhooks.retry.0-5s"]


async def test_an_open_breaker_defers_without_a_request() -> None:
    h = Harness()
    sub = h.subscribe(1)
    h.transport.answers[sub.url] = lambda: HttpResponse(500, {}, b"")
    for _ in range(5):  # the breaker opens after 5 failures
        (job,) = await h.dispatch()
        await h.app.process(job)
    sent = len(h.transport.requests)
    (job,) = await h.dispatch()
    out = await h.app.process(job)
    assert len(h.transport.requests) == sent
    (line,) = logs(out)
    assert line["attempt"] == 0
    assert "circuit breaker is open" in str(line["error"])
    # The breaker stays open 30 s: the first tier that waits that long, not the 5 s one.
    assert [r.topic for r in out if r.topic != LOG] == ["integrations.webhooks.retry.1-5m"]


async def test_a_busy_endpoint_defers_instead_of_holding_a_slot() -> None:
    h = Harness(max_waiting_per_endpoint=1)
    h.subscribe(1, max_concurrency=1)
    h.transport.gate = asyncio.Event()
    jobs = [(await h.dispatch())[0] for _ in range(3)]
    running = [asyncio.create_task(h.app.process(j)) for j in jobs[:2]]  # one sending, one waiting
    for _ in range(5):
        await asyncio.sleep(0)
    out = await h.app.process(jobs[2])
    assert "busy" in str(logs(out)[0]["error"])
    assert [r.topic for r in out if r.topic != LOG] == ["integrations.webhooks.retry.0-5s"]
    h.transport.gate.set()
    done = await asyncio.gather(*running)
    assert [logs(o)[0]["status"] for o in done] == ["delivered", "delivered"]


async def test_too_large_a_payload_is_dead_lettered_without_a_request() -> None:
    h = Harness(max_payload_bytes=1024)
    h.subscribe(1)
    (job,) = await h.dispatch()
    big = StaticMessage(job.topic(), 0, 99, job.key(), b"{" + b" " * 2000 + b"}", tuple(job.headers()))
    out = await h.app.process(big)
    assert [r.topic for r in out if r.topic != LOG] == ["integrations.webhooks.dlq"]
    assert not h.transport.requests


async def test_a_deleted_subscription_is_skipped() -> None:
    h = Harness()
    sub = h.subscribe(1)
    (job,) = await h.dispatch()
    h.store.table.put(sub.id, None)
    out = await h.app.process(job)
    assert [line["status"] for line in logs(out)] == ["skipped"]
    assert not h.transport.requests


# --------------------------------------------------------------------------- encryption keys


def _sealed_with(h: Harness, n: int, box: SecretBox) -> Subscription:
    """A subscription whose secret another key sealed (as after a key rotation gone wrong)."""
    sub_id = f"ep_{n:024x}"
    secret = StoredSecret(box.encrypt(SECRET, associated=sub_id), created_at=datetime.now(UTC))
    sub = Subscription.create(
        id=sub_id, url=f"https://partner{n}.example/hook", events=["*"], secrets=[secret]
    )
    h.store.table.put(sub.id, sub)
    return sub


async def test_a_secret_that_cannot_be_decrypted_is_a_logged_retriable_failure_never_sent() -> None:
    h = Harness()
    other = _sealed_with(h, 9, SecretBox.ephemeral())
    jobs = await h.dispatch()
    assert [header_value(j.headers(), "x-subscription-id") for j in jobs] == [other.id]

    out = await h.app.process(jobs[0])

    assert h.transport.requests == []  # never sent unsigned, never sent at all
    [line] = logs(out)
    assert line["status"] == "failed"
    assert line["next"] == "retry"
    assert "cannot be decrypted" in str(line["error"])
    assert next(r.topic for r in out if r.topic != LOG).startswith("integrations.webhooks.retry.")


async def test_start_up_refuses_a_key_that_opens_no_stored_secret() -> None:
    h = Harness()
    wrong = SecretBox.ephemeral()
    _sealed_with(h, 1, wrong)
    _sealed_with(h, 2, wrong)
    with pytest.raises(ConfigError, match="opens none of the stored partner secrets") as caught:
        await h.app.start_store()
    assert f"ep_{1:024x}" in str(caught.value)
    assert "PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS" in str(caught.value)


async def test_start_up_names_the_subscriptions_a_key_cannot_open(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.subscribe(1)
    stray = _sealed_with(h, 2, SecretBox.ephemeral())
    with caplog.at_level("ERROR"):
        await h.app.start_store()
    assert h.app.check_secrets() == [stray.id]
    assert any(stray.id in r.getMessage() for r in caplog.records)


def test_previous_keys_decrypt_when_the_key_is_given_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation: the key given as PROCESSORS_WEBHOOKS__ENCRYPTION_KEY, the old one as _PREVIOUS."""
    old, new = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))
    sealed = SecretBox.from_env({"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": old}).encrypt(SECRET, associated="ep_x")
    monkeypatch.setenv("PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS", old)
    box = secret_box(Settings(webhooks={"encryption_key": new}))
    assert box.decrypt(sealed, associated="ep_x").get_secret_value() == SECRET
    monkeypatch.delenv("PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS")
    in_settings = secret_box(Settings(webhooks={"encryption_key": new, "previous_encryption_keys": [old]}))
    assert in_settings.decrypt(sealed, associated="ep_x").get_secret_value() == SECRET
