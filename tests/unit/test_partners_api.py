"""The partner routes and partner-key authorisation over real HTTP, with in-memory stores.

The API server runs on an ephemeral port with the partner routes (operator only) and the
webhook subscription routes (operator token or partner key), both over fakes of their stores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from processors.api.partners import PartnerRoutes
from processors.api.server import ApiServer
from processors.api.webhooks import WebhookRoutes
from processors.errors import BrokerError
from processors.partners.auth import PartnerKeys, caller_of
from processors.partners.registry import PartnerRegistry
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, new_subscription_id
from tests.unit.api_fakes import NOW, Clock, FakePartnerStore, FakeSubscriptionStore, JsonClient, api_server
from tests.unit.api_fakes import client as client
from tests.unit.api_fakes import clock as clock
from tests.unit.api_fakes import server as server

TOKEN = "operator-token-for-partner-tests"
URL = "https://partner.example.com/hooks"
NO_SUCH_SUB = "ep_000000000000000000000000"


async def allow_every_url(_url: str) -> None:
    return None


class OperatorOnly:
    """A route provider that does not take partner keys (like the operator view of attempts)."""

    def routes(self) -> list[web.RouteDef]:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"operator": caller_of(request).is_operator})

        return [web.get("/api/v1/operator-only", hello, allow_head=False)]


@pytest.fixture
def partner_store() -> FakePartnerStore:
    return FakePartnerStore()


@pytest.fixture
def subs() -> FakeSubscriptionStore:
    return FakeSubscriptionStore()


@pytest.fixture
def make_server(
    partner_store: FakePartnerStore, subs: FakeSubscriptionStore, clock: Clock
) -> Callable[..., ApiServer]:
    def make(*, with_partners: bool = True, **webhook_options: Any) -> ApiServer:
        registry = PartnerRegistry(partner_store, clock=clock)
        partner_routes = PartnerRoutes(registry, partner_keys=PartnerKeys(partner_store, clock=clock))
        webhooks = WebhookRoutes(
            subs,
            SecretBox.ephemeral(),
            allow_every_url,
            clock=clock,
            partners=partner_store.table if with_partners else None,
            **webhook_options,
        )
        providers: list[Any] = [partner_routes] if with_partners else []
        providers += [webhooks, OperatorOnly()]
        return api_server(TOKEN, providers)

    return make


class Api(JsonClient):
    """Calls with a chosen Bearer token (the operator's by default)."""

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        status, document, _ = await self.request(method, path, body, token=token, raw=raw)
        return status, document

    async def partner(self, **body: Any) -> dict[str, Any]:
        status, document = await self.call(
            "POST", "/api/v1/partners", {"name": "Acme", "kind": "broker", **body}
        )
        assert status == 201, document
        return cast(dict[str, Any], document)

    async def key(self, partner_id: str, **body: Any) -> dict[str, Any]:
        status, document = await self.call("POST", f"/api/v1/partners/{partner_id}/keys", body)
        assert status == 201, document
        return cast(dict[str, Any], document)

    async def subscription(self, token: str = TOKEN, **body: Any) -> dict[str, Any]:
        status, document = await self.call(
            "POST", "/api/v1/webhooks", {"url": URL, "events": ["policy.issued"], **body}, token=token
        )
        assert status == 201, document
        return cast(dict[str, Any], document)


@pytest.fixture
def api(client: aiohttp.ClientSession, server: ApiServer) -> Api:
    return Api(client, server)


# -- the operator routes ------------------------------------------------------------------------


async def test_create_list_get_and_patch_partners(api: Api, clock: Clock) -> None:
    broker = await api.partner(name="Acme Brokers", kind="broker", distributor_code="D-1001")
    re = await api.partner(name="Reinsurance Corp", kind="reinsurer", reinsurer_code="RE001")

    assert api.last_headers["Location"] == f"/api/v1/partners/{re['id']}"
    assert broker == {
        "id": broker["id"],
        "name": "Acme Brokers",
        "kind": "broker",
        "status": "active",
        "reinsurer_code": None,
        "distributor_code": "D-1001",
        "grants": [],
        "created_at": "2025-03-01T12:00:00Z",
        "updated_at": "2025-03-01T12:00:00Z",
        "version": 1,
    }
    status, listed = await api.call("GET", "/api/v1/partners")
    assert status == 200
    assert listed["count"] == 2
    assert {p["id"] for p in listed["partners"]} == {broker["id"], re["id"]}
    status, only = await api.call("GET", "/api/v1/partners?kind=reinsurer")
    assert [p["id"] for p in only["partners"]] == [re["id"]]

    clock.now = NOW + timedelta(hours=1)
    status, changed = await api.call(
        "PATCH", f"/api/v1/partners/{broker['id']}", {"name": "Acme Brokers Ltd", "status": "suspended"}
    )
    assert status == 200, changed
    assert (changed["name"], changed["status"], changed["version"]) == ("Acme Brokers Ltd", "suspended", 2)
    assert changed["updated_at"] == "2025-03-01T13:00:00Z"
    status, cleared = await api.call("PATCH", f"/api/v1/partners/{broker['id']}", {"distributor_code": None})
    assert (status, cleared["distributor_code"]) == (200, None)
    status, shown = await api.call("GET", f"/api/v1/partners/{broker['id']}")
    assert (status, shown) == (200, cleared)
    status, suspended = await api.call("GET", "/api/v1/partners?status=suspended")
    assert [p["id"] for p in suspended["partners"]] == [broker["id"]]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "Acme"}, "kind: Field required"),
        ({"name": "Acme", "kind": "insurer"}, "kind: must be one of broker, reinsurer"),
        ({"name": "", "kind": "broker"}, "name: must not be empty"),
        ({"name": "Acme", "kind": "broker", "reinsurer_code": "RE001"}, "reinsurer_code is for partners"),
        ({"name": "Acme", "kind": "broker", "status": "paused"}, "status: must be one of active, suspended"),
        (
            {"name": "Acme", "kind": "broker", "email": "x@example.com"},
            "email: Extra inputs are not permitted",
        ),
        ({"name": 7, "kind": "broker"}, "name: Input should be a valid string"),
    ],
)
async def test_invalid_partners_are_400_with_reasons(
    api: Api, partner_store: FakePartnerStore, body: dict[str, Any], reason: str
) -> None:
    status, document = await api.call("POST", "/api/v1/partners", body)

    assert status == 400
    assert document["error"] == "invalid_request"
    assert any(reason in r for r in document["reasons"]), document
    assert "x@example.com" not in json.dumps(document)
    assert partner_store.records == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"kind": "reinsurer"}, "kind: cannot be changed"),
        ({"name": None}, "name: must not be null"),
        ({"status": None}, "status: must not be null"),
        ({"status": "gone"}, "status: must be one of active, suspended"),
        ({"id": "prt_000000000000000000000000"}, "id: Extra inputs are not permitted"),
    ],
)
async def test_invalid_patches_are_400(api: Api, body: dict[str, Any], reason: str) -> None:
    partner = await api.partner()

    status, document = await api.call("PATCH", f"/api/v1/partners/{partner['id']}", body)

    assert status == 400
    assert any(reason in r for r in document["reasons"]), document


async def test_bad_queries_bodies_and_ids(api: Api) -> None:
    assert (await api.call("GET", "/api/v1/partners?kind=insurer"))[0] == 400
    assert (await api.call("GET", "/api/v1/partners?status=x"))[0] == 400
    status, document = await api.call("POST", "/api/v1/partners", raw=b"x" * (64 * 1024 + 1))
    assert status == 400
    assert document["reasons"] == ["body: exceeds 65536 bytes"]
    assert (await api.call("POST", "/api/v1/partners", raw=b"{nope"))[0] == 400
    assert (await api.call("POST", "/api/v1/partners", raw=b"[]"))[0] == 400
    for method, path in (
        ("GET", "/api/v1/partners/prt_000000000000000000000000"),
        ("PATCH", "/api/v1/partners/prt_000000000000000000000000"),
        ("GET", "/api/v1/partners/nonsense/keys"),
        ("POST", "/api/v1/partners/prt_000000000000000000000000/keys"),
        ("DELETE", "/api/v1/partners/prt_000000000000000000000000/keys/abcd1234"),
    ):
        status, document = await api.call(method, path, {"name": "x"} if method == "PATCH" else None)
        assert (status, document["error"]) == (404, "not_found"), (method, path)


async def test_a_code_another_partner_has_is_409(api: Api) -> None:
    first = await api.partner(kind="reinsurer", reinsurer_code="RE001")

    status, document = await api.call(
        "POST", "/api/v1/partners", {"name": "Copy", "kind": "reinsurer", "reinsurer_code": "RE001"}
    )

    assert status == 409
    assert document == {
        "error": "conflict",
        "message": f"reinsurer_code: partner {first['id']} has this code already",
    }


async def test_a_broker_failure_is_503(api: Api, partner_store: FakePartnerStore) -> None:
    partner = await api.partner()
    partner_store.fail = BrokerError("not acknowledged")

    for method, path in (
        ("POST", "/api/v1/partners"),
        ("PATCH", f"/api/v1/partners/{partner['id']}"),
        ("POST", f"/api/v1/partners/{partner['id']}/keys"),
    ):
        body = {"name": "Other", "kind": "broker"} if method == "POST" and path.endswith("partners") else {}
        if method == "PATCH":
            body = {"name": "Renamed"}
        status, document = await api.call(method, path, body)
        assert (status, document["error"]) == (503, "unavailable"), (method, path, document)


async def test_a_key_is_shown_once_and_listed_without_secrets(
    api: Api, partner_store: FakePartnerStore, clock: Clock
) -> None:
    partner = await api.partner()

    created = await api.key(partner["id"], name="portal", expires_in_days=90)

    assert api.last_headers["Cache-Control"] == "no-store"
    assert api.last_headers["Location"] == f"/api/v1/partners/{partner['id']}/keys/{created['id']}"
    key = created["key"]
    assert key.startswith(created["prefix"] + "_")
    assert created["state"] == "active"
    assert created["expires_at"] == "2025-05-30T12:00:00Z"
    status, listed = await api.call("GET", f"/api/v1/partners/{partner['id']}/keys")
    assert status == 200
    assert listed == {"keys": [{k: v for k, v in created.items() if k != "key"}], "count": 1}
    digest = partner_store.table.key(created["id"]).digest  # type: ignore[union-attr]
    for text in (
        json.dumps(listed),
        json.dumps((await api.call("GET", f"/api/v1/partners/{partner['id']}"))[1]),
    ):
        assert key not in text
        assert digest not in text


async def test_keys_can_expire_at_a_given_time(api: Api) -> None:
    partner = await api.partner()

    created = await api.key(partner["id"], expires_at="2025-04-01T00:00:00+02:00")

    assert created["expires_at"] == "2025-03-31T22:00:00Z"
    for body, reason in (
        ({"expires_at": "2025-04-01T00:00:00"}, "expires_at: must be timezone-aware"),
        # valid times whose conversion to UTC leaves the calendar answered 500 (OverflowError)
        ({"expires_at": "9999-12-31T23:59:59-23:59"}, "expires_at: is outside the representable range"),
        ({"expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at: is outside the representable range"),
        ({"expires_at": "2025-01-01T00:00:00Z"}, "expires_at: must be in the future"),
        ({"expires_at": "2025-04-01T00:00:00Z", "expires_in_days": 3}, "not both"),
        ({"expires_in_days": 0}, "expires_in_days: Input should be greater than or equal to 1"),
    ):
        status, document = await api.call("POST", f"/api/v1/partners/{partner['id']}/keys", body)
        assert status == 400, body
        assert any(reason in r for r in document["reasons"]), document


async def test_revoke_answers_204_and_the_key_is_refused_at_once(api: Api, clock: Clock) -> None:
    partner = await api.partner()
    created = await api.key(partner["id"])
    assert (await api.call("GET", "/api/v1/webhooks", token=created["key"]))[0] == 200

    clock.now = NOW + timedelta(minutes=1)
    status, document = await api.call("DELETE", f"/api/v1/partners/{partner['id']}/keys/{created['id']}")
    assert (status, document) == (204, None)
    status, document = await api.call("GET", "/api/v1/webhooks", token=created["key"])
    assert status == 401
    assert document == {
        "error": "unauthorized",
        "reason": "key_revoked",
        "message": "the API key was revoked",
    }
    status, listed = await api.call("GET", f"/api/v1/partners/{partner['id']}/keys")
    assert listed["keys"][0]["state"] == "revoked"
    assert listed["keys"][0]["revoked_at"] == "2025-03-01T12:01:00Z"
    assert listed["keys"][0]["last_used_at"] == "2025-03-01T12:00:00Z"


async def test_the_operator_routes_refuse_partner_keys(api: Api) -> None:
    partner = await api.partner()
    created = await api.key(partner["id"])

    for method, path in (
        ("GET", "/api/v1/partners"),
        ("POST", f"/api/v1/partners/{partner['id']}/keys"),
        ("DELETE", f"/api/v1/partners/{partner['id']}/keys/{created['id']}"),
        ("GET", "/api/v1/operator-only"),
    ):
        status, document = await api.call(method, path, token=created["key"])
        assert (status, document["error"]) == (403, "operator_only"), (method, path)
    status, _ = await api.call("GET", "/api/v1/status", token=created["key"])
    assert status == 401
    status, document = await api.call("GET", "/api/v1/operator-only")
    assert (status, document) == (200, {"operator": True})
    assert (await api.call("GET", "/api/v1/partners", token=None))[0] == 401


# -- subscriptions and partner keys -------------------------------------------------------------


async def two_partners(api: Api) -> tuple[dict[str, Any], str, dict[str, Any], str]:
    a = await api.partner(name="Partner A")
    b = await api.partner(name="Partner B")
    return a, (await api.key(a["id"]))["key"], b, (await api.key(b["id"]))["key"]


async def test_a_partner_sees_and_changes_only_its_own_subscriptions(
    api: Api, subs: FakeSubscriptionStore
) -> None:
    a, key_a, b, key_b = await two_partners(api)
    mine = await api.subscription(token=key_a, description="A's endpoint")
    assert mine["partner_id"] == a["id"]
    written = len(subs.records)

    attempts = [
        ("GET", "/api/v1/webhooks", None),
        ("GET", f"/api/v1/webhooks/{mine['id']}", None),
        ("PATCH", f"/api/v1/webhooks/{mine['id']}", {"url": "https://evil.example.com/hooks"}),
        ("DELETE", f"/api/v1/webhooks/{mine['id']}", None),
        ("POST", f"/api/v1/webhooks/{mine['id']}/rotate-secret", {}),
    ]
    answers = [await api.call(method, path, body, token=key_b) for method, path, body in attempts]
    _, absent = await api.call("GET", f"/api/v1/webhooks/{NO_SUCH_SUB}", token=key_b)

    assert answers[0] == (200, {"webhooks": [], "count": 0})
    for status, document in answers[1:]:
        assert (status, document) == (404, absent)
    assert absent == {"error": "not_found", "message": "no such webhook subscription"}
    assert len(subs.records) == written  # nothing of A's was changed
    assert subs.table.get(mine["id"]).url == URL  # type: ignore[union-attr]

    status, listed = await api.call("GET", "/api/v1/webhooks", token=key_a)
    assert (status, [w["id"] for w in listed["webhooks"]]) == (200, [mine["id"]])
    status, changed = await api.call(
        "PATCH", f"/api/v1/webhooks/{mine['id']}", {"active": False}, token=key_a
    )
    assert (status, changed["active"]) == (200, False)
    status, rotated = await api.call("POST", f"/api/v1/webhooks/{mine['id']}/rotate-secret", {}, token=key_a)
    assert status == 200
    assert rotated["secret"]
    assert (await api.call("DELETE", f"/api/v1/webhooks/{mine['id']}", token=key_a))[0] == 204
    assert b["id"] != a["id"]


async def test_a_partner_cannot_create_for_another_partner(api: Api) -> None:
    a, key_a, b, _ = await two_partners(api)

    status, document = await api.call(
        "POST", "/api/v1/webhooks", {"url": URL, "events": ["*"], "partner_id": b["id"]}, token=key_a
    )
    own = await api.subscription(token=key_a, partner_id=a["id"])

    assert status == 400
    assert document["reasons"] == ["partner_id: leave it out or give your own; your key names your partner"]
    assert own["partner_id"] == a["id"]


async def test_the_operator_names_an_existing_partner_on_create(api: Api) -> None:
    a, key_a, _, _ = await two_partners(api)

    missing = await api.call("POST", "/api/v1/webhooks", {"url": URL, "events": ["*"]})
    unknown = await api.call(
        "POST",
        "/api/v1/webhooks",
        {"url": URL, "events": ["*"], "partner_id": "prt_000000000000000000000000"},
    )
    malformed = await api.call(
        "POST", "/api/v1/webhooks", {"url": URL, "events": ["*"], "partner_id": "acme"}
    )
    made = await api.subscription(partner_id=a["id"])

    # without partner_id the operator keeps it: no partner key sees it
    assert missing[0] == 201
    assert missing[1]["partner_id"] is None
    assert unknown == (
        400,
        {
            "error": "invalid_request",
            "message": "partner_id: no such partner",
            "reasons": ["partner_id: no such partner"],
        },
    )
    assert malformed[1]["reasons"] == ["partner_id: no such partner"]
    assert made["partner_id"] == a["id"]
    status, listed = await api.call("GET", "/api/v1/webhooks", token=key_a)
    assert status == 200
    assert missing[1]["id"] not in {w["id"] for w in listed["webhooks"]}
    assert [w["id"] for w in listed["webhooks"]] == [made["id"]]


async def test_the_operator_sees_everything_and_legacy_subscriptions_are_its_own(
    api: Api, subs: FakeSubscriptionStore
) -> None:
    a, key_a, b, key_b = await two_partners(api)
    of_a = await api.subscription(token=key_a)
    of_b = await api.subscription(token=key_b)
    legacy_id = new_subscription_id()
    box = SecretBox.ephemeral()
    legacy = Subscription.create(
        id=legacy_id,
        url=URL,
        events=["*"],
        secrets=(StoredSecret(ciphertext=box.encrypt("x" * 32, associated=legacy_id), created_at=NOW),),
    )
    await subs.put(legacy)

    status, everything = await api.call("GET", "/api/v1/webhooks")
    _, only_b = await api.call("GET", f"/api/v1/webhooks?partner_id={b['id']}")
    bad_filter = await api.call("GET", "/api/v1/webhooks?partner_id=acme")
    _, seen_by_a = await api.call("GET", "/api/v1/webhooks", token=key_a)
    legacy_for_a = await api.call("GET", f"/api/v1/webhooks/{legacy_id}", token=key_a)
    legacy_for_operator = await api.call("GET", f"/api/v1/webhooks/{legacy_id}")
    operator_patch = await api.call("PATCH", f"/api/v1/webhooks/{of_a['id']}", {"description": "checked"})

    assert status == 200
    assert {w["id"] for w in everything["webhooks"]} == {of_a["id"], of_b["id"], legacy_id}
    assert [w["id"] for w in only_b["webhooks"]] == [of_b["id"]]
    assert bad_filter[0] == 400
    assert [w["id"] for w in seen_by_a["webhooks"]] == [of_a["id"]]
    assert legacy_for_a[0] == 404
    assert legacy_for_operator[0] == 200
    assert legacy_for_operator[1]["partner_id"] is None
    assert operator_patch[0] == 200
    assert operator_patch[1]["partner_id"] == a["id"]


async def test_a_subscription_stays_with_its_partner(api: Api) -> None:
    _, key_a, b, _ = await two_partners(api)
    mine = await api.subscription(token=key_a)

    for token in (key_a, TOKEN):
        status, document = await api.call(
            "PATCH", f"/api/v1/webhooks/{mine['id']}", {"partner_id": b["id"]}, token=token
        )
        assert status == 400
        assert document["reasons"] == ["partner_id: a subscription stays with its partner"]


async def test_each_partner_has_a_share_of_the_subscriptions(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession
) -> None:
    async with make_server(max_per_partner=2) as server:
        api = Api(client, server)
        _, key_a, b, key_b = await two_partners(api)
        await api.subscription(token=key_a)
        await api.subscription(token=key_a)

        status, document = await api.call(
            "POST", "/api/v1/webhooks", {"url": URL, "events": ["*"]}, token=key_a
        )
        other = await api.subscription(token=key_b)

    assert (status, document["error"]) == (409, "limit_reached")
    assert document["message"] == "at most 2 webhook subscriptions per partner"
    assert other["partner_id"] == b["id"]


async def test_suspended_revoked_expired_and_bogus_keys_are_401_with_a_reason(api: Api, clock: Clock) -> None:
    a, key_a, b, key_b = await two_partners(api)
    expiring = (await api.key(b["id"], expires_in_days=1))["key"]
    await api.call("PATCH", f"/api/v1/partners/{a['id']}", {"status": "suspended"})
    clock.now = NOW + timedelta(days=1)

    answers = {
        "suspended": await api.call("GET", "/api/v1/webhooks", token=key_a),
        "expired": await api.call("GET", "/api/v1/webhooks", token=expiring),
        "bogus": await api.call("GET", "/api/v1/webhooks", token="pk_live_abcd1234_" + "x" * 43),
        "malformed": await api.call("GET", "/api/v1/webhooks", token="pk_nonsense"),
    }
    challenge = api.last_headers["WWW-Authenticate"]

    assert {name: (status, doc["reason"]) for name, (status, doc) in answers.items()} == {
        "suspended": (401, "partner_suspended"),
        "expired": (401, "key_expired"),
        "bogus": (401, "invalid_key"),
        "malformed": (401, "invalid_key"),
    }
    assert challenge == 'Bearer error="invalid_token"'
    assert (await api.call("GET", "/api/v1/webhooks", token=key_b))[0] == 200  # B is unaffected
    await api.call("PATCH", f"/api/v1/partners/{a['id']}", {"status": "active"})
    assert (await api.call("GET", "/api/v1/webhooks", token=key_a))[0] == 200


async def test_without_a_partner_registry_only_the_operator_token_works(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession
) -> None:
    async with make_server(with_partners=False) as server:
        api = Api(client, server)
        status, document = await api.call("GET", "/api/v1/webhooks", token="pk_live_abcd1234_" + "x" * 43)
        made = await api.subscription()

    assert (status, document["error"]) == (401, "unauthorized")
    assert document["message"] == "partner keys are not accepted by this server"
    assert made["partner_id"] is None


async def test_no_key_or_digest_reaches_the_logs(
    api: Api, partner_store: FakePartnerStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        a, key_a, _, key_b = await two_partners(api)
        sub = await api.subscription(token=key_a)
        await api.call("GET", f"/api/v1/webhooks/{sub['id']}", token=key_b)
        await api.call("GET", "/api/v1/webhooks", token=key_a[:-1] + "!")
        await api.call("DELETE", f"/api/v1/partners/{a['id']}/keys/{key_a[8:16]}")
        await api.call("GET", "/api/v1/webhooks", token=key_a)

    assert "key_revoked" in caplog.text
    for key in (key_a, key_b):
        assert key not in caplog.text
        assert key[17:] not in caplog.text
    for _, value in partner_store.records:
        for digest in json.loads(value).get("digest", "sha256:-").split(":")[1:]:
            if digest != "-":
                assert digest not in caplog.text


# -- grants (data minimisation) ------------------------------------------------------------------


async def test_the_operator_sets_a_partners_grants_and_the_partner_cannot(api: Api) -> None:
    created = await api.partner(grants=["identity", "contact"])
    assert created["grants"] == ["contact", "identity"]
    key = (await api.key(created["id"]))["key"]
    path = f"/api/v1/partners/{created['id']}"

    status, changed = await api.call("PATCH", path, {"grants": ["payment_instrument"]})
    assert (status, changed["grants"], changed["version"]) == (200, ["payment_instrument"], 2)
    status, refused = await api.call("PATCH", path, {"grants": ["contact", "identity"]}, token=key)
    assert (status, refused["error"]) == (403, "operator_only")
    status, invalid = await api.call("PATCH", path, {"grants": ["everything"]})
    assert (status, invalid["reasons"]) == (
        400,
        ["grants: each must be one of contact, identity, payment_instrument"],
    )
    status, null = await api.call("PATCH", path, {"grants": None})
    assert (status, null["reasons"]) == (400, ["grants: must not be null"])
    status, cleared = await api.call("PATCH", path, {"grants": []})
    assert (status, cleared["grants"]) == (200, [])
    status, bad_create = await api.call(
        "POST", "/api/v1/partners", {"name": "B", "kind": "broker", "grants": ["x"]}
    )
    assert status == 400
    assert bad_create["reasons"][0].startswith("grants.0:")


async def test_subscription_grants_are_the_operators_for_its_own_subscriptions_only(
    api: Api, subs: FakeSubscriptionStore
) -> None:
    a, key_a, _, _ = await two_partners(api)
    mine = await api.subscription(token=key_a)
    written = len(subs.records)

    status, refused = await api.call(
        "POST", "/api/v1/webhooks", {"url": URL, "events": ["*"], "grants": ["contact"]}, token=key_a
    )
    assert (status, refused["error"]) == (403, "operator_only")
    status, refused = await api.call("PATCH", f"/api/v1/webhooks/{mine['id']}", {"grants": []}, token=key_a)
    assert (status, refused["error"]) == (403, "operator_only")
    status, partners = await api.call("PATCH", f"/api/v1/webhooks/{mine['id']}", {"grants": ["contact"]})
    assert status == 400
    assert partners["reasons"][0].startswith("grants: a partner's subscriptions receive the partner's grants")
    status, _ = await api.call(
        "POST",
        "/api/v1/webhooks",
        {"url": URL, "events": ["*"], "partner_id": a["id"], "grants": ["contact"]},
    )
    assert status == 400
    assert len(subs.records) == written

    own = await api.subscription(grants=["payment_instrument", "contact"])
    assert (own["partner_id"], own["grants"]) == (None, ["contact", "payment_instrument"])
    status, changed = await api.call("PATCH", f"/api/v1/webhooks/{own['id']}", {"grants": ["identity"]})
    assert (status, changed["grants"]) == (200, ["identity"])
    status, invalid = await api.call("PATCH", f"/api/v1/webhooks/{own['id']}", {"grants": ["biometric"]})
    assert status == 400
    assert invalid["reasons"][0].startswith("grants: unknown data class 'biometric'")
    assert mine["grants"] == []


async def test_event_types_show_what_the_caller_receives(api: Api) -> None:
    a, key_a, _, _ = await two_partners(api)

    def customer(document: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any], next(e for e in document["event_types"] if e["event_type"] == "customer.created")
        )

    status, mine = await api.call("GET", "/api/v1/event-types", token=key_a)
    assert (status, mine["grants"]) == (200, [])
    assert customer(mine)["example"]["data"] == {"customer_id": "CUST-000123"}
    assert set(customer(mine)["withheld"]) == {"contact", "identity"}

    await api.call("PATCH", f"/api/v1/partners/{a['id']}", {"grants": ["contact"]})
    status, mine = await api.call("GET", "/api/v1/event-types", token=key_a)
    assert (status, mine["grants"]) == (200, ["contact"])
    assert customer(mine)["example"]["data"] == {"customer_id": "CUST-000123", "email": "jane@example.com"}
    assert "email" in customer(mine)["schema"]["$defs"]["CustomerCreated"]["properties"]
    assert "full_name" not in customer(mine)["schema"]["$defs"]["CustomerCreated"]["properties"]

    status, default = await api.call("GET", "/api/v1/event-types")
    assert (status, default["grants"], default["count"]) == (200, [], len(default["event_types"]))
    status, of_partner = await api.call("GET", f"/api/v1/event-types?partner_id={a['id']}")
    assert (status, of_partner["grants"]) == (200, ["contact"])
    status, asked = await api.call("GET", "/api/v1/event-types?grants=identity,payment_instrument")
    assert (status, asked["grants"]) == (200, ["identity", "payment_instrument"])

    for token, query, expected in (
        (key_a, "?grants=identity", 400),  # a partner sees its own, nothing else
        (key_a, f"?partner_id={a['id']}", 400),
        (TOKEN, "?grants=everything", 400),
        (TOKEN, f"?grants=contact&partner_id={a['id']}", 400),
        (TOKEN, "?partner_id=prt_000000000000000000000000", 404),
        (TOKEN, "?partner_id=acme", 400),
    ):
        status, _ = await api.call("GET", f"/api/v1/event-types{query}", token=token)
        assert status == expected, query
