"""Bounds on what the webhooks app and its operator view keep per subscription."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.adapters.http import HttpRequest, HttpResponse, TimeoutSettings
from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.examples import example_event
from processors.errors import ConfigError
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import load_resilience
from processors.runtime.message import StaticMessage
from processors.topics.catalogue import load_catalogue
from processors.webhooks.app import WebhooksApp
from processors.webhooks.attempts import DEFAULT_MAX_ATTEMPTS, AttemptsView
from processors.webhooks.config import WebhooksSettings
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, SubscriptionTable

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CODEC = Codec(LocalSchemaIds())
SECRET = "whsec_dW5pdC10ZXN0LXNlY3JldC0zMi1ieXRlcy1sb25nISE="


# -- the operator view: a bound over every endpoint ---------------------------------------------


def attempt(sub: str, n: int) -> bytes:
    return json.dumps(
        {
            "subscription_id": sub,
            "webhook_id": f"msg_{n}",
            "event_id": f"evt-{n}",
            "event_type": "policy.issued",
            "subject": "POL-1",
            "attempt": 1,
            "status": "delivered",
            "http_status": 200,
            "attempted_at": (T0 + timedelta(seconds=n)).isoformat(),
            "url_host": "partner.example",
            "job": {"topic": "integrations.webhooks.dispatch", "partition": 0, "offset": n},
        }
    ).encode()


def test_the_view_keeps_at_most_max_attempts_over_all_endpoints_oldest_first() -> None:
    view = AttemptsView(max_attempts_per_endpoint=100, max_attempts=10)
    for n in range(40):
        view.apply(attempt(f"sub_{n % 4}", n))
        assert view.attempts_kept_total <= 10
        assert sum(view.attempts_kept(s) for s in view.endpoints()) == view.attempts_kept_total

    assert view.evicted == 30
    assert view.applied == 40
    kept = sorted(a.webhook_id for s in view.endpoints() for a in view.for_endpoint(s, limit=100))
    assert kept == sorted(f"msg_{n}" for n in range(30, 40))


def test_an_endpoint_that_stopped_is_forgotten_once_its_attempts_age_out() -> None:
    view = AttemptsView(max_attempts_per_endpoint=100, max_attempts=5)
    for n in range(3):
        view.apply(attempt("sub_deleted", n))
    for n in range(3, 20):
        view.apply(attempt("sub_live", n))

    assert view.endpoints() == ["sub_live"]
    assert view.latest("sub_deleted", "msg_0") is None
    assert view.attempts_kept("sub_live") == 5
    assert view.evicted == 15


def test_both_bounds_together_count_every_eviction_once() -> None:
    view = AttemptsView(max_attempts_per_endpoint=3, max_attempts=7)
    for n in range(60):
        view.apply(attempt(f"sub_{n % 5}", n))
        assert view.attempts_kept_total <= 7
        assert all(view.attempts_kept(s) <= 3 for s in view.endpoints())
    assert view.applied - view.evicted == view.attempts_kept_total == 7
    # the queue of entries in log order holds the kept ones plus a bounded number of evicted ones
    assert len(view._order) <= 2 * view.attempts_kept_total + 1024


def test_the_view_bound_must_be_positive_and_has_a_default() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        AttemptsView(max_attempts=0)
    assert AttemptsView().max_attempts == DEFAULT_MAX_ATTEMPTS


# -- the app: a deleted subscription's breaker goes with it -------------------------------------


class Store:
    """The subscriptions table, with the store's listener calls."""

    def __init__(self) -> None:
        self.table = SubscriptionTable()
        self._listeners: list[Callable[[str, Subscription | None], None]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_caught_up(self, timeout_s: float = 30.0) -> None: ...

    async def put(self, sub: Subscription) -> None:
        self.set(sub.id, sub)

    def set(self, sub_id: str, sub: Subscription | None) -> None:
        self.table.put(sub_id, sub)
        for listener in self._listeners:
            listener(sub_id, sub)

    def add_listener(self, callback: Callable[[str, Subscription | None], None]) -> None:
        self._listeners.append(callback)


class Transport:
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        return HttpResponse(200, {}, b"ok")


def build() -> tuple[WebhooksApp, Store, SecretBox]:
    box = SecretBox.ephemeral()
    store = Store()
    catalogue = load_catalogue(None)
    app = WebhooksApp(
        codec=CODEC,
        topics=catalogue.app("webhooks"),
        store=store,
        box=box,
        transport=Transport(),
        policy=load_resilience(None).for_endpoint("partner-webhooks"),
        breakers=BreakerRegistry(),
        settings=WebhooksSettings(),
        dispatch_topic="integrations.webhooks.dispatch",
        deliveries_topic="integrations.webhook.deliveries",
        endpoint_events_topic="integrations.webhook.endpoint-events",
        group="integrations.webhooks",
    )
    return app, store, box


def subscription(box: SecretBox, n: int) -> Subscription:
    sub_id = f"ep_{n:024x}"
    secret = StoredSecret(box.encrypt(SECRET, associated=sub_id), created_at=datetime.now(UTC))
    return Subscription.create(
        id=sub_id, url=f"https://partner{n}.example/hook", events=["policy.*"], secrets=[secret]
    )


async def deliver_one(app: WebhooksApp, offset: int) -> list[Any]:
    """Fan one event out and deliver every dispatch record it made."""
    event = example_event("policy.issued")
    value, headers = CODEC.encode(event, ContentType.AVRO)
    msg = StaticMessage("insurance.policy.events", 0, offset, event.subject.encode(), value, tuple(headers))
    outputs: list[Any] = []
    for job in await app.process(msg):
        dispatched = StaticMessage(
            job.topic, job.partition or 0, offset, job.key, job.value, tuple(job.headers)
        )
        outputs.extend(await app.process(dispatched))
    return outputs


async def test_breakers_are_bounded_by_the_live_subscriptions() -> None:
    app, store, box = build()
    await app.start_store()
    live: list[Subscription] = []
    for n in range(12):
        sub = subscription(box, n)
        store.set(sub.id, sub)
        live.append(sub)
        assert await deliver_one(app, n)
        assert f"webhook:{sub.id}" in app.breakers
        if n % 3 == 2:  # every third round, the oldest subscription is deleted
            gone = live.pop(0)
            store.set(gone.id, None)
            assert f"webhook:{gone.id}" not in app.breakers
        assert len(app.breakers) <= len(live)
    assert len(app.breakers) == len(live) == 8
    await app.stop()
