"""The API server over real HTTP on an ephemeral port, with an in-memory producer and broker check."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

import aiohttp
import pytest

from processors.adapters import jsonwire
from processors.api.health import BrokerProbe
from processors.api.inbound import InboundMessage
from processors.api.server import ApiServer, RejectedRequest
from processors.contract import Codec, LocalSchemaIds, PaymentConfirmed
from processors.errors import BrokerError
from processors.runtime.message import OutRecord
from processors.runtime.producer import AsyncProducer
from processors.settings import load_settings
from tests.unit.api_fakes import client as client
from tests.unit.api_fakes import server as server

SECRET = "whsec_unit_test_secret"
PREVIOUS = "whsec_unit_test_previous"
TOKEN = "api-token-for-tests"
RESULTS = "t.integrations.payment.results"
CODEC = Codec(LocalSchemaIds())


class FakeProducer:
    """Acknowledges at once, or when ``release`` is set (``hold``); may fail."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.hold = False
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def send(self, record: OutRecord) -> None:
        if self.hold:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(record)


class Broker:
    def __init__(self) -> None:
        self.down = False

    def __call__(self) -> None:
        if self.down:
            raise BrokerError("all brokers down")


def callback_body(event_id: str = "evt_1", **data_changes: Any) -> bytes:
    data: dict[str, Any] = {
        "payment_id": "PMT-2024-0000000000AB",
        "status": "COMPLETED",
        "gateway_reference": "ch_0123456789abcdef01234567",
        "amount": Decimal("1185.50"),
        "currency": "USD",
        "transaction_type": "CHARGE",
        "policy_id": "POL-2024-000001",
        "reference_id": "POL-2024-000001-I001",
        "idempotency_key": "idem_0123456789",
        "processed_at": "2024-06-10T06:13:20Z",
    }
    data.update(data_changes)
    return jsonwire.dumps({"event_id": event_id, "event_type": "payment.confirmed", "data": data})


def signed_headers(
    body: bytes, *, event_id: str | None = "evt_1", secret: str = SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {
        "X-Signature-Timestamp": ts,
        "X-Signature": f"sha256={digest}",
        "Content-Type": "application/json",
    }
    if event_id is not None:
        headers["X-Provider-Event-Id"] = event_id
    return headers


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def rejected() -> list[RejectedRequest]:
    return []


@pytest.fixture
def make_server(
    producer: FakeProducer, broker: Broker, rejected: list[RejectedRequest]
) -> Callable[..., ApiServer]:
    def make(**api: Any) -> ApiServer:
        settings = load_settings(
            bootstrap_servers="unused:9092",
            output_format="json",
            payments={"results_topic": RESULTS},
            api={
                "port": 0,
                "auth_token": TOKEN,
                "payment_gateway": {"secret": SECRET, "previous_secret": PREVIOUS},
                "publish_timeout_s": 0.5,
                **api,
            },
        )
        server = ApiServer(
            settings, producer=cast(AsyncProducer, producer), codec=CODEC, on_rejected=rejected.append
        )
        server.health.broker = BrokerProbe("unused:9092", check=broker, cache_s=0.0)
        return server

    return make


async def post(
    client: aiohttp.ClientSession,
    server: ApiServer,
    body: bytes,
    headers: dict[str, str],
    provider: str = "payment-gateway",
) -> tuple[int, dict[str, Any]]:
    async with client.post(f"{server.url}/api/v1/inbound/{provider}", data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


# -- inbound -----------------------------------------------------------------------------------------


async def test_a_signed_confirmation_is_published_and_a_replay_is_a_duplicate(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    body = callback_body()

    first = await post(client, server, body, signed_headers(body))
    again = await post(client, server, body, signed_headers(body))

    assert first == (200, {"accepted": True, "duplicate": False})
    assert again == (200, {"accepted": True, "duplicate": True})
    assert len(producer.sent) == 1
    record = producer.sent[0]
    assert record.topic == RESULTS
    assert record.key == b"POL-2024-000001"
    event = CODEC.decode(record.value, record.headers)
    assert event.event_type == "payment.confirmed"
    assert event.data_as(PaymentConfirmed).amount == Decimal("1185.50")
    assert ("x-provider-event-id", b"evt_1") in record.headers


async def test_a_signed_body_replayed_with_a_new_unsigned_id_is_a_duplicate(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    """The event id header is not signed: it must not make a replayed body a new event."""
    payload = jsonwire.loads(callback_body())
    del payload["event_id"]
    body = jsonwire.dumps(payload)

    first = await post(client, server, body, signed_headers(body, event_id="evt_1"))
    replayed = await post(client, server, body, signed_headers(body, event_id="evt_attacker_2"))
    unlabelled = await post(client, server, body, signed_headers(body, event_id=None))

    assert first == (200, {"accepted": True, "duplicate": False})
    assert replayed == unlabelled == (200, {"accepted": True, "duplicate": True})
    assert len(producer.sent) == 1


async def test_the_previous_secret_is_still_accepted(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    body = callback_body()

    status, _ = await post(client, server, body, signed_headers(body, secret=PREVIOUS))

    assert status == 200
    assert len(producer.sent) == 1


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("body", "signature_mismatch"),
        ("secret", "signature_mismatch"),
        ("stale", "stale_timestamp"),
        ("future", "future_timestamp"),
        ("unsigned", "missing_signature"),
    ],
)
async def test_refused_signatures_are_401_audited_and_publish_nothing(
    server: ApiServer,
    client: aiohttp.ClientSession,
    producer: FakeProducer,
    rejected: list[RejectedRequest],
    tamper: str,
    reason: str,
) -> None:
    body = callback_body()
    headers = signed_headers(body)
    if tamper == "body":
        body = body.replace(b"1185.50", b"1.00")
    elif tamper == "secret":
        headers = signed_headers(body, secret="whsec_wrong")
    elif tamper == "stale":
        headers = signed_headers(body, timestamp=int(time.time()) - 301)
    elif tamper == "future":
        headers = signed_headers(body, timestamp=int(time.time()) + 301)
    else:
        del headers["X-Signature"]

    status, answer = await post(client, server, body, headers)

    assert status == 401
    assert answer["error"] == "invalid_signature"
    assert SECRET not in json.dumps(answer)
    assert producer.sent == []
    assert len(rejected) == 1
    audit = rejected[0]
    assert (audit.provider, audit.status, audit.reason) == ("payment-gateway", 401, reason)
    assert audit.provider_event_id == "evt_1"
    assert audit.body_sha256 == hashlib.sha256(body).hexdigest()
    assert "1185" not in repr(audit)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (callback_body(amount=Decimal("-1.00")), "data.amount"),
        (callback_body(policy_id=None), "data.policy_id"),
        (callback_body(event_id="evt_other"), "differ"),
    ],
)
async def test_malformed_bodies_are_400_with_a_reason_and_publish_nothing(
    server: ApiServer,
    client: aiohttp.ClientSession,
    producer: FakeProducer,
    rejected: list[RejectedRequest],
    body: bytes,
    reason: str,
) -> None:
    status, answer = await post(client, server, body, signed_headers(body))

    assert status == 400
    assert answer["error"] == "malformed"
    assert reason in answer["message"]
    assert producer.sent == []
    assert [r.status for r in rejected] == [400]


async def test_a_body_over_the_cap_is_413(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    async with make_server(max_body_bytes=1024) as server:
        body = callback_body(padding="x" * 2000)
        status, answer = await post(client, server, body, signed_headers(body))

    assert status == 413
    assert answer["error"] == "too_large"
    assert producer.sent == []


async def test_another_event_type_is_acknowledged_and_ignored(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    body = jsonwire.dumps({"event_id": "evt_9", "event_type": "payment.disputed", "data": {}})

    status, answer = await post(client, server, body, signed_headers(body, event_id="evt_9"))

    assert (status, answer) == (200, {"accepted": True, "ignored": True})
    assert producer.sent == []


async def test_unknown_providers_are_404(server: ApiServer, client: aiohttp.ClientSession) -> None:
    body = callback_body()
    assert (await post(client, server, body, signed_headers(body), provider="acme"))[0] == 404


async def test_a_provider_whose_handler_factory_gives_none_answers_501(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    async with make_server(kyc_provider={"secret": SECRET}) as server:
        server.handlers = {**server.handlers, "kyc-provider": lambda: None}
        body = jsonwire.dumps({"event_id": "kyc_1"})
        status, answer = await post(client, server, body, signed_headers(body), provider="kyc-provider")

    assert status == 501
    assert answer["error"] == "not_implemented"
    assert producer.sent == []


async def test_a_kyc_handler_publishes_what_it_returns(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    def kyc(payload: Any, *, provider_event_id: str) -> InboundMessage:
        return InboundMessage(
            topic="t.kyc", key=payload["customer_id"].encode(), value=b'{"decision":"APPROVED"}'
        )

    async with make_server(kyc_provider={"secret": SECRET}) as server:
        server.handlers = {**server.handlers, "kyc-provider": lambda: kyc}
        body = jsonwire.dumps({"event_id": "kyc_1", "customer_id": "CUST-1"})
        headers = signed_headers(body, event_id="kyc_1")
        first = await post(client, server, body, headers, provider="kyc-provider")
        again = await post(client, server, body, headers, provider="kyc-provider")

    assert first[0] == again[0] == 200
    assert again[1]["duplicate"] is True
    assert [(r.topic, r.key, r.value) for r in producer.sent] == [
        ("t.kyc", b"CUST-1", b'{"decision":"APPROVED"}')
    ]


async def test_a_provider_without_a_secret_is_refused_with_503(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    async with make_server(payment_gateway={}) as server:
        body = callback_body()
        status, answer = await post(client, server, body, signed_headers(body))

    assert status == 503
    assert answer["error"] == "not_configured"
    assert producer.sent == []


async def test_no_acknowledgement_in_time_is_503_and_the_retry_does_not_publish_twice(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    producer.hold = True
    body = callback_body()

    status, answer = await post(client, server, body, signed_headers(body))
    assert status == 503
    assert answer["error"] == "unavailable"

    producer.release.set()  # the broker acknowledges the first publication after all
    status, answer = await post(client, server, body, signed_headers(body))

    assert (status, answer["duplicate"]) == (200, True)
    assert len(producer.sent) == 1


async def test_a_failed_publication_is_503_and_the_retry_publishes(
    server: ApiServer, client: aiohttp.ClientSession, producer: FakeProducer
) -> None:
    producer.fail = BrokerError("delivery failed")
    body = callback_body()
    assert (await post(client, server, body, signed_headers(body)))[0] == 503

    producer.fail = None
    status, answer = await post(client, server, body, signed_headers(body))

    assert (status, answer["duplicate"]) == (200, False)
    assert len(producer.sent) == 1


async def test_an_audit_hook_that_fails_does_not_change_the_answer(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()

    async def broken(_rejected: RejectedRequest) -> None:
        raise RuntimeError("audit topic unavailable")

    server.on_rejected = broken
    async with server:
        body = callback_body()
        status, _ = await post(client, server, body, signed_headers(body, secret="whsec_wrong"))

    assert status == 401
    assert "rejection hook failed" in caplog.text


async def test_logs_hold_no_secret_and_no_body(
    server: ApiServer, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = callback_body()
    await post(client, server, body, signed_headers(body))
    await post(client, server, body, signed_headers(body, secret="whsec_wrong"))

    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text
    assert "1185.50" not in caplog.text
    assert "refused with 401" in caplog.text


# -- health, status, metrics ---------------------------------------------------------------------------


async def test_healthz_needs_no_token(server: ApiServer, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{server.url}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz_follows_the_broker(
    server: ApiServer, client: aiohttp.ClientSession, broker: Broker
) -> None:
    async with client.get(f"{server.url}/readyz") as response:
        assert (response.status, await response.json()) == (200, {"ready": True})

    broker.down = True
    async with client.get(f"{server.url}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"ready": False, "reasons": ["the Kafka broker is unreachable"]}


@pytest.mark.parametrize("path", ["/api/v1/status", "/metrics"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_status_and_metrics_require_the_token(
    server: ApiServer, client: aiohttp.ClientSession, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with client.get(f"{server.url}{path}", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_without_a_configured_token_status_is_closed(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession
) -> None:
    async with make_server(auth_token=None) as server, client.get(f"{server.url}/api/v1/status") as response:
        assert response.status == 401


async def test_metrics_can_be_opened_to_a_trusted_scraper(
    make_server: Callable[..., ApiServer], client: aiohttp.ClientSession
) -> None:
    async with make_server(metrics_require_auth=False) as server:
        async with client.get(f"{server.url}/metrics") as response:
            assert response.status == 200
        async with client.get(f"{server.url}/api/v1/status") as response:
            assert response.status == 401


async def test_status_and_metrics_count_inbound_outcomes(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    body = callback_body()
    await post(client, server, body, signed_headers(body))
    await post(client, server, body, signed_headers(body))
    await post(client, server, body, signed_headers(body, secret="whsec_wrong"))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with client.get(f"{server.url}/api/v1/status", headers=auth) as response:
        assert response.status == 200
        status = await response.json()
    async with client.get(f"{server.url}/metrics", headers=auth) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        metrics = await response.text()

    assert status["ready"] is True
    assert status["inbound"]["requests"] == {
        "payment-gateway": {"accepted": 1, "bad_signature": 1, "duplicate": 1}
    }
    assert status["inbound"]["dedupe_entries"] == 1
    assert 'processors_inbound_requests_total{outcome="accepted",provider="payment-gateway"} 1.0' in metrics
    assert 'processors_inbound_requests_total{outcome="duplicate",provider="payment-gateway"} 1.0' in metrics
    assert "processors_inbound_dedupe_entries 1.0" in metrics
    assert "processors_ready 1.0" in metrics
    assert "processors_broker_reachable 1.0" in metrics


async def test_each_server_has_its_own_registry(make_server: Callable[..., ApiServer]) -> None:
    first, second = make_server(), make_server()

    first.metrics.inbound("payment-gateway", "accepted")

    assert b'outcome="accepted"' in first.metrics.render()
    assert b'outcome="accepted"' not in second.metrics.render()


def test_kyc_decisions_go_to_the_kyc_apps_results_topic_unless_the_api_names_one() -> None:
    from processors.api.inbound import KycCallbackHandler

    def handler(**settings: object) -> KycCallbackHandler:
        server = ApiServer(load_settings(kyc={"results_topic": "t.kyc.results"}, **settings))  # type: ignore[arg-type]
        found = server.handlers["kyc-provider"]()
        assert isinstance(found, KycCallbackHandler)
        return found

    default, named = handler(), handler(api={"kyc_results_topic": "t.api.kyc"})
    assert default.results_topic == "t.kyc.results"
    assert named.results_topic == "t.api.kyc"


async def test_inbound_requests_are_audited_accepted_duplicate_and_refused(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    from processors.observability.audit import MemoryAuditSink, configure_audit_sink

    sink = MemoryAuditSink()
    configure_audit_sink(sink)
    try:
        body = callback_body()
        await post(client, server, body, signed_headers(body))
        await post(client, server, body, signed_headers(body))
        await post(client, server, body, signed_headers(body, secret="whsec_wrong"))
    finally:
        configure_audit_sink(None)
    assert [(e.direction, e.endpoint, e.status, e.outcome) for e in sink.events] == [
        ("inbound", "payment-gateway", "accepted", "success"),
        ("inbound", "payment-gateway", "duplicate", "success"),
        ("inbound", "payment-gateway", "signature_mismatch", "rejected"),
    ]
    assert all(SECRET not in e.to_json().decode() for e in sink.events)
    assert all("1185" not in e.to_json().decode() for e in sink.events)
