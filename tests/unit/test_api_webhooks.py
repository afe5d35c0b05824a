"""Webhook subscription routes over real HTTP (ApiServer on an ephemeral port) with an in-memory store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import aiohttp
import pytest

from processors.api.server import ApiServer
from processors.api.webhooks import WebhookRoutes
from processors.errors import BrokerError
from processors.webhooks.secrets import SecretBox, active_secrets
from processors.webhooks.ssrf import AddressRefused
from tests.unit.api_fakes import NOW, Clock, FakeSubscriptionStore, JsonClient, api_server
from tests.unit.api_fakes import box as box
from tests.unit.api_fakes import client as client
from tests.unit.api_fakes import clock as clock
from tests.unit.api_fakes import server as server
from tests.unit.api_fakes import store as store

TOKEN = "api-token-for-webhook-tests"
PARTNER_SECRET = "partner-chosen-secret-0123456789abcdef"
URL = "https://partner.example.com/hooks"


class UrlCheck:
    def __init__(self) -> None:
        self.checked: list[str] = []

    async def __call__(self, url: str) -> None:
        self.checked.append(url)
        if "internal" in url:
            raise AddressRefused("host resolves to a private address")


@pytest.fixture
def url_check() -> UrlCheck:
    return UrlCheck()


@pytest.fixture
def make_server(
    store: FakeSubscriptionStore, box: SecretBox, clock: Clock, url_check: UrlCheck
) -> Callable[..., ApiServer]:
    def make(**options: Any) -> ApiServer:
        return api_server(TOKEN, [WebhookRoutes(store, box, url_check, clock=clock, **options)])

    return make


class Api(JsonClient):
    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, auth: bool = True
    ) -> tuple[int, Any, str]:
        return await self.request(method, path, body, token=TOKEN if auth else None, raw=raw)

    async def create(self, **body: Any) -> dict[str, Any]:
        payload = {"url": URL, "events": ["policy.issued"], **body}
        status, document, _ = await self.call("POST", "/api/v1/webhooks", payload)
        assert status == 201, document
        return cast(dict[str, Any], document)


@pytest.fixture
def api(client: aiohttp.ClientSession, server: ApiServer) -> Api:
    return Api(client, server)


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/ep_000000000000000000000000"),
        ("PATCH", "/api/v1/webhooks/ep_000000000000000000000000"),
        ("DELETE", "/api/v1/webhooks/ep_000000000000000000000000"),
        ("POST", "/api/v1/webhooks/ep_000000000000000000000000/rotate-secret"),
    ],
)
async def test_every_route_needs_the_token(
    api: Api, store: FakeSubscriptionStore, method: str, path: str
) -> None:
    status, document, _ = await api.call(method, path, {"url": URL, "events": ["*"]}, auth=False)

    assert status == 401
    assert document["error"] == "unauthorized"
    assert api.last_headers["WWW-Authenticate"] == "Bearer"
    assert store.records == []


async def test_a_wrong_token_is_refused(api: Api) -> None:
    async with api.client.get(
        api.server.url + "/api/v1/webhooks", headers={"Authorization": "Bearer nope"}
    ) as response:
        assert response.status == 401


async def test_the_routes_start_and_stop_a_store_they_own(
    make_server: Callable[..., ApiServer], store: FakeSubscriptionStore
) -> None:
    async with make_server(owns_store=True):
        assert store.started
        assert not store.stopped

    assert store.stopped


async def test_the_routes_leave_a_shared_store_alone(
    make_server: Callable[..., ApiServer], store: FakeSubscriptionStore
) -> None:
    async with make_server():
        pass

    assert (store.started, store.stopped) == (False, False)


# -- create -------------------------------------------------------------------------------------


async def test_create_returns_the_secret_once(api: Api, store: FakeSubscriptionStore, box: SecretBox) -> None:
    created = await api.create(events=["policy.*", "claim.paid"], description="Broker portal")

    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["id"].startswith("ep_")
    assert created["events"] == ["policy.*", "claim.paid"]
    assert created["created_at"] == "2025-03-01T12:00:00Z"
    assert created["version"] == 1
    assert api.last_headers["Location"] == f"/api/v1/webhooks/{created['id']}"
    assert api.last_headers["Cache-Control"] == "no-store"

    status, one, one_text = await api.call("GET", f"/api/v1/webhooks/{created['id']}")
    _, listed, list_text = await api.call("GET", "/api/v1/webhooks")

    assert status == 200
    assert "secret" not in one
    assert one == {k: v for k, v in created.items() if k != "secret"}
    assert listed == {"webhooks": [one], "count": 1}
    sub = store.table.get(created["id"])
    assert sub is not None
    for text in (one_text, list_text):
        assert secret not in text
        assert sub.secrets[0].ciphertext not in text
    # What was stored is the same secret, encrypted for this subscription only.
    (sub_id, record) = store.records[0]
    assert record is not None
    assert secret.encode() not in record
    clear = active_secrets(sub.secrets, box, associated=sub_id, now=NOW)
    assert [s.get_secret_value() for s in clear] == [secret]


async def test_create_with_a_partner_secret_and_options(
    api: Api, store: FakeSubscriptionStore, box: SecretBox
) -> None:
    created = await api.create(
        secret=PARTNER_SECRET, active=False, ordered=True, max_concurrency=3, rate_limit_per_s=2.5
    )

    assert created["secret"] == PARTNER_SECRET
    assert (
        created["active"],
        created["ordered"],
        created["max_concurrency"],
        created["rate_limit_per_s"],
    ) == (
        False,
        True,
        3,
        2.5,
    )
    sub = store.table.get(created["id"])
    assert sub is not None
    assert box.decrypt(sub.secrets[0].ciphertext, associated=sub.id).get_secret_value() == PARTNER_SECRET


async def test_create_checks_the_url(api: Api, url_check: UrlCheck, store: FakeSubscriptionStore) -> None:
    status, document, _ = await api.call(
        "POST", "/api/v1/webhooks", {"url": "https://internal.example/h", "events": ["*"]}
    )

    assert status == 422
    assert document == {"error": "url_refused", "message": "host resolves to a private address"}
    assert url_check.checked == ["https://internal.example/h"]
    assert store.records == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"events": ["*"]}, "url: Field required"),
        ({"url": URL}, "events: Field required"),
        ({"url": URL, "events": []}, "events: at least one event filter is required"),
        ({"url": URL, "events": ["policy.isued"]}, "unknown event type 'policy.isued'"),
        ({"url": URL, "events": ["Policy"]}, "is not an event filter"),
        ({"url": URL, "events": "policy.issued"}, "events:"),
        ({"url": URL, "events": ["*"], "active": "yes"}, "active:"),
        ({"url": URL, "events": ["*"], "max_concurrency": 500}, "max_concurrency:"),
        ({"url": URL, "events": ["*"], "max_concurrency": "5"}, "max_concurrency:"),
        ({"url": URL, "events": ["*"], "description": "d" * 201}, "description:"),
        ({"url": URL, "events": ["*"], "metadata": {}}, "metadata: Extra inputs are not permitted"),
        ({"url": "ftp://partner.example.com/", "events": ["*"]}, "url: must be an absolute http"),
    ],
)
async def test_invalid_bodies_are_400_with_reasons(
    api: Api, store: FakeSubscriptionStore, body: dict[str, Any], reason: str
) -> None:
    status, document, _ = await api.call("POST", "/api/v1/webhooks", body)

    assert status == 400
    assert document["error"] == "invalid_request"
    assert any(reason in r for r in document["reasons"]), document
    assert store.records == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "body: not valid JSON"),
        (b"[1, 2]", "body: must be a JSON object"),
        (b"", "body: a JSON object is required"),
    ],
)
async def test_unreadable_bodies_are_400(api: Api, raw: bytes, reason: str) -> None:
    status, document, _ = await api.call("POST", "/api/v1/webhooks", raw=raw)

    assert status == 400
    assert document["reasons"] == [reason]


@pytest.mark.parametrize("bad_secret", ["short-but-secret", "has spaces in it but is long enough!!", 12345])
async def test_a_bad_partner_secret_is_refused_without_echoing_it(api: Api, bad_secret: Any) -> None:
    status, _, text = await api.call(
        "POST", "/api/v1/webhooks", {"url": URL, "events": ["*"], "secret": bad_secret}
    )

    assert status == 400
    assert "secret" in text
    assert str(bad_secret) not in text


async def test_the_subscription_limit(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession
) -> None:
    async with make_server(max_subscriptions=1) as server:
        api = Api(client, server)
        await api.create()

        status, document, _ = await api.call("POST", "/api/v1/webhooks", {"url": URL, "events": ["*"]})

    assert status == 409
    assert document["error"] == "limit_reached"


async def test_a_broker_failure_is_503(api: Api, store: FakeSubscriptionStore) -> None:
    store.fail = BrokerError("all brokers down")

    status, document, text = await api.call("POST", "/api/v1/webhooks", {"url": URL, "events": ["*"]})

    assert status == 503
    assert document["error"] == "unavailable"
    assert "whsec_" not in text
    assert len(store.table) == 0


async def test_changes_wait_for_the_table_to_catch_up(api: Api, store: FakeSubscriptionStore) -> None:
    store.catch_up_fail = BrokerError("not caught up")

    status, document, _ = await api.call("POST", "/api/v1/webhooks", {"url": URL, "events": ["*"]})
    reading, listed, _ = await api.call("GET", "/api/v1/webhooks")

    assert status == 503
    assert document["error"] == "unavailable"
    assert store.records == []
    assert (reading, listed) == (200, {"webhooks": [], "count": 0})  # reads answer from the local table


# -- read ---------------------------------------------------------------------------------------


async def test_get_unknown_is_404(api: Api) -> None:
    for path in ("/api/v1/webhooks/ep_000000000000000000000000", "/api/v1/webhooks/whatever"):
        status, document, _ = await api.call("GET", path)

        assert status == 404
        assert document["error"] == "not_found"


async def test_list_filters_by_event_type(api: Api) -> None:
    policies = await api.create(events=["policy.*"])
    claims = await api.create(events=["claim.paid"])
    everything = await api.create(events=["*"], active=False)

    _, for_policy, _ = await api.call("GET", "/api/v1/webhooks?event_type=policy.issued")
    _, for_claims, _ = await api.call("GET", "/api/v1/webhooks?event_type=claim.paid")
    _, for_all, _ = await api.call("GET", "/api/v1/webhooks")
    status, bad, _ = await api.call("GET", "/api/v1/webhooks?event_type=policy.*")

    assert {w["id"] for w in for_policy["webhooks"]} == {policies["id"], everything["id"]}
    assert {w["id"] for w in for_claims["webhooks"]} == {claims["id"], everything["id"]}
    assert for_all["count"] == 3
    assert status == 400
    assert bad["reasons"] == ["event_type: must be an event type such as policy.issued"]


# -- update -------------------------------------------------------------------------------------


async def test_patch_changes_fields(api: Api, store: FakeSubscriptionStore, clock: Clock) -> None:
    created = await api.create()
    clock.now = NOW + timedelta(minutes=10)

    status, document, text = await api.call(
        "PATCH",
        f"/api/v1/webhooks/{created['id']}",
        {"events": ["claim.*"], "description": "claims only", "max_concurrency": 2, "ordered": True},
    )

    assert status == 200
    assert document["events"] == ["claim.*"]
    assert (document["description"], document["max_concurrency"], document["ordered"]) == (
        "claims only",
        2,
        True,
    )
    assert document["version"] == 2
    assert document["updated_at"] == "2025-03-01T12:10:00Z"
    assert created["secret"] not in text
    sub = store.table.get(created["id"])
    assert sub is not None
    assert sub.version == 2


async def test_patch_clears_nullable_fields_and_refuses_other_nulls(api: Api) -> None:
    created = await api.create(description="d", rate_limit_per_s=5)
    path = f"/api/v1/webhooks/{created['id']}"

    status, document, _ = await api.call("PATCH", path, {"description": None, "rate_limit_per_s": None})
    refused, reasons, _ = await api.call("PATCH", path, {"url": None, "events": None})

    assert status == 200
    assert (document["description"], document["rate_limit_per_s"]) == (None, None)
    assert refused == 400
    assert reasons["reasons"] == ["events: must not be null", "url: must not be null"]


async def test_patch_rechecks_a_new_url(api: Api, url_check: UrlCheck, store: FakeSubscriptionStore) -> None:
    created = await api.create()
    path = f"/api/v1/webhooks/{created['id']}"

    refused, document, _ = await api.call("PATCH", path, {"url": "https://internal.example/x"})
    moved, moved_doc, _ = await api.call("PATCH", path, {"url": "https://new.example.com/h"})

    assert refused == 422
    assert document["message"] == "host resolves to a private address"
    assert moved == 200
    assert moved_doc["url"] == "https://new.example.com/h"
    assert url_check.checked == [URL, "https://internal.example/x", "https://new.example.com/h"]
    assert len(store.records) == 2


async def test_patch_without_changes_writes_nothing(api: Api, store: FakeSubscriptionStore) -> None:
    created = await api.create(events=["policy.issued"])

    status, document, _ = await api.call(
        "PATCH", f"/api/v1/webhooks/{created['id']}", {"events": ["policy.issued"], "active": True}
    )

    assert status == 200
    assert document["version"] == 1
    assert len(store.records) == 1


async def test_the_secret_is_not_patchable(api: Api) -> None:
    created = await api.create()

    status, document, text = await api.call(
        "PATCH", f"/api/v1/webhooks/{created['id']}", {"secret": PARTNER_SECRET}
    )

    assert status == 400
    assert "rotate-secret" in document["message"]
    assert PARTNER_SECRET not in text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"events": ["nope.nothing"]}, "events:"),
        ({"max_concurrency": 0}, "max_concurrency:"),
        ({"id": "ep_111111111111111111111111"}, "id: Extra inputs are not permitted"),
        ({"version": 7}, "version: Extra inputs are not permitted"),
    ],
)
async def test_invalid_patches_are_400(api: Api, body: dict[str, Any], reason: str) -> None:
    created = await api.create()

    status, document, _ = await api.call("PATCH", f"/api/v1/webhooks/{created['id']}", body)

    assert status == 400
    assert any(r.startswith(reason) for r in document["reasons"]), document


async def test_reenabling_a_disabled_endpoint_clears_its_failure_state(
    api: Api, store: FakeSubscriptionStore
) -> None:
    created = await api.create()
    sub = store.table.get(created["id"])
    assert sub is not None
    await store.put(
        sub.with_failing_since(NOW - timedelta(days=5), now=NOW).disabled("failing for 5 days", NOW)
    )
    _, disabled, _ = await api.call("GET", f"/api/v1/webhooks/{created['id']}")
    assert (disabled["active"], disabled["disabled_reason"]) == (False, "failing for 5 days")

    status, document, _ = await api.call("PATCH", f"/api/v1/webhooks/{created['id']}", {"active": True})

    assert status == 200
    assert document["active"] is True
    assert (document["disabled_reason"], document["disabled_at"], document["failing_since"]) == (
        None,
        None,
        None,
    )


async def test_patch_unknown_is_404(api: Api) -> None:
    status, _, _ = await api.call("PATCH", "/api/v1/webhooks/ep_000000000000000000000000", {"active": False})

    assert status == 404


# -- delete -------------------------------------------------------------------------------------


async def test_delete(api: Api, store: FakeSubscriptionStore) -> None:
    created = await api.create()

    status, _, text = await api.call("DELETE", f"/api/v1/webhooks/{created['id']}")
    again, _, _ = await api.call("DELETE", f"/api/v1/webhooks/{created['id']}")
    reading, _, _ = await api.call("GET", f"/api/v1/webhooks/{created['id']}")

    assert (status, text) == (204, "")
    assert again == 404
    assert reading == 404
    assert store.records[-1] == (created["id"], None)


# -- rotate -------------------------------------------------------------------------------------


async def test_rotate_returns_a_new_secret_and_keeps_the_old_for_the_grace(
    api: Api, store: FakeSubscriptionStore, box: SecretBox, clock: Clock
) -> None:
    created = await api.create()
    clock.now = NOW + timedelta(hours=1)

    status, document, _ = await api.call("POST", f"/api/v1/webhooks/{created['id']}/rotate-secret")

    assert status == 200
    assert document["id"] == created["id"]
    assert document["secret"].startswith("whsec_")
    assert document["secret"] != created["secret"]
    assert document["previous_expires_at"] == "2025-03-02T13:00:00Z"
    assert api.last_headers["Cache-Control"] == "no-store"
    sub = store.table.get(created["id"])
    assert sub is not None
    clear = active_secrets(sub.secrets, box, associated=sub.id, now=clock.now)
    assert [s.get_secret_value() for s in clear] == [document["secret"], created["secret"]]
    _, view, text = await api.call("GET", f"/api/v1/webhooks/{created['id']}")
    assert view["secret_rotation_expires_at"] == "2025-03-02T13:00:00Z"
    assert document["secret"] not in text
    assert created["secret"] not in text


async def test_rotate_with_a_partner_secret_and_a_grace(
    api: Api, store: FakeSubscriptionStore, box: SecretBox
) -> None:
    created = await api.create()

    status, document, _ = await api.call(
        "POST",
        f"/api/v1/webhooks/{created['id']}/rotate-secret",
        {"secret": PARTNER_SECRET, "grace_s": 0},
    )

    assert status == 200
    assert document["secret"] == PARTNER_SECRET
    assert document["previous_expires_at"] == "2025-03-01T12:00:00Z"
    sub = store.table.get(created["id"])
    assert sub is not None
    assert [s.get_secret_value() for s in active_secrets(sub.secrets, box, associated=sub.id, now=NOW)] == [
        PARTNER_SECRET
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"grace_s": -1}, "grace_s:"),
        ({"grace_s": 10**9}, "grace_s:"),
        ({"secret": "tiny"}, "secret:"),
        ({"other": 1}, "other:"),
    ],
)
async def test_invalid_rotations_are_400(
    api: Api, store: FakeSubscriptionStore, body: dict[str, Any], reason: str
) -> None:
    created = await api.create()

    status, document, text = await api.call("POST", f"/api/v1/webhooks/{created['id']}/rotate-secret", body)

    assert status == 400
    assert any(r.startswith(reason) for r in document["reasons"]), document
    assert "tiny" not in text
    assert len(store.records) == 1


async def test_rotate_unknown_is_404(api: Api) -> None:
    status, _, _ = await api.call("POST", "/api/v1/webhooks/ep_000000000000000000000000/rotate-secret", {})

    assert status == 404
