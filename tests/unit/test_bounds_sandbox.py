"""The sandbox simulators keep bounded state: per key, per webhook id, per report, per upload."""

from __future__ import annotations

import copy
import pickle
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.webhooks.signing import signature_headers
from processors_dev.sandbox.common import DEFAULT_MAX_KEYS, BoundedDict
from processors_dev.sandbox.gateway import PaymentGatewaySim
from processors_dev.sandbox.kyc import KycProviderSim
from processors_dev.sandbox.partners import (
    DEFAULT_MAX_DELIVERIES,
    PartnerBehaviour,
    PartnerReceivers,
    PartnersConfig,
)
from processors_dev.sandbox.reinsurer import DEFAULT_MAX_REPORTS, ReinsurerSim

AUTH = {"Authorization": "Bearer sandbox-token"}
SECRET = "whsec_c2FuZGJveC1ib3VuZHMtdGVzdC1zZWNyZXQtMzI="


# -- BoundedDict -----------------------------------------------------------------------------------


def test_a_bounded_dict_never_exceeds_its_bound_and_counts_each_eviction() -> None:
    d: BoundedDict[str, int] = BoundedDict(3)
    for i in range(10):
        d[f"k{i}"] = i
        assert len(d) <= 3
    assert list(d) == ["k7", "k8", "k9"]
    assert d.evictions == 7
    assert d.stats() == {"size": 3, "max_size": 3, "evictions": 7}


def test_storing_or_touching_a_key_makes_it_the_last_to_go() -> None:
    d: BoundedDict[str, int] = BoundedDict(3)
    d["a"], d["b"], d["c"] = 1, 2, 3
    d["a"] = 10  # stored again: newest
    d.touch("b")  # used: newer than a
    d.touch("missing")  # nothing
    d["d"] = 4
    assert list(d) == ["a", "b", "d"]
    assert (d["a"], d.evictions) == (10, 1)


def test_setdefault_and_update_respect_the_bound() -> None:
    d: BoundedDict[int, int] = BoundedDict(2)
    d.setdefault(1, 1)
    d.update({2: 2, 3: 3})
    d.setdefault(4, 4)
    assert (list(d), d.evictions) == ([3, 4], 2)


def test_copy_pickle_and_forget() -> None:
    d: BoundedDict[str, int] = BoundedDict(2)
    d["a"], d["b"], d["c"] = 1, 2, 3
    for clone in (d.copy(), copy.copy(d), pickle.loads(pickle.dumps(d))):
        assert (dict(clone), clone.max_size, clone.evictions) == ({"b": 2, "c": 3}, 2, 1)
    d.forget()
    assert (len(d), d.evictions, d == {}) == (0, 0, True)


def test_a_bounded_dict_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedDict(0)
    assert BoundedDict().max_size == DEFAULT_MAX_KEYS == 1_000_000


# -- the services over HTTP (in-process test server) ----------------------------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(sim: Any) -> TestClient[web.Request, web.Application]:
        app = web.Application()
        sim.add_to(app)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def payment(key: str) -> bytes:
    return jsonwire.dumps(
        {
            "policy_id": "POL-1",
            "amount": Decimal("10.00"),
            "currency": "USD",
            "payment_method": {"type": "CREDIT_CARD", "card_token": "tok_visa_4242"},
            "idempotency_key": key,
        }
    )


async def pay(client: TestClient[web.Request, web.Application], key: str) -> Any:
    return await client.post("/api/v1/payments", data=payment(key), headers={**AUTH, "Idempotency-Key": key})


async def test_the_gateway_remembers_at_most_max_keys_and_counts_what_it_forgets(serve: Any) -> None:
    sim = PaymentGatewaySim(max_keys=4)
    client = await serve(sim)
    for i in range(10):
        response = await pay(client, f"k{i}")
        assert response.status == 200
        assert len(sim.charges_by_key) <= 4

    bounds = await (await client.get("/_sandbox/gateway/bounds")).json()
    assert bounds["idempotency_keys"] == {"size": 4, "max_size": 4, "evictions": 6}
    assert bounds["charges_by_key"] == {"size": 4, "max_size": 4, "evictions": 6}
    assert sim.total_charges == 10  # forgotten keys' charges still count
    charges = await (await client.get("/_sandbox/gateway/charges")).json()
    assert (charges["total"], charges["keys"]) == (10, 4)

    # a remembered key is replayed; a forgotten one is charged again (the documented cost)
    replay = await client.post(
        "/api/v1/payments", data=payment("k9"), headers={**AUTH, "Idempotency-Key": "k9"}
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"
    again = await client.post(
        "/api/v1/payments", data=payment("k0"), headers={**AUTH, "Idempotency-Key": "k0"}
    )
    assert "Idempotent-Replayed" not in again.headers
    assert sim.total_charges == 11

    sim.reset()
    assert sim.bounds()["idempotency_keys"] == {"size": 0, "max_size": 4, "evictions": 0}
    assert sim.total_charges == 0


async def test_a_replayed_gateway_key_is_kept_over_older_unused_ones(serve: Any) -> None:
    sim = PaymentGatewaySim(max_keys=2)
    client = await serve(sim)

    await pay(client, "a")
    await pay(client, "b")
    assert (await pay(client, "a")).headers.get("Idempotent-Replayed") == "true"  # a is used again
    await pay(client, "c")  # evicts b, the least recently used
    assert (await pay(client, "a")).headers.get("Idempotent-Replayed") == "true"
    assert set(sim.charges_by_key) == {"a", "c"}


def verification() -> bytes:
    return jsonwire.dumps(
        {
            "verification_type": "IDENTITY",
            "documents": [
                {
                    "type": "PASSPORT",
                    "document_number": "AB123456",
                    "issuing_country": "US",
                    "front_image_url": "https://docs.example/front.jpg",
                }
            ],
            "consent": {
                "terms_accepted": True,
                "data_processing_accepted": True,
                "timestamp": datetime.now(UTC).isoformat(),
            },
        }
    )


async def test_the_kyc_provider_remembers_at_most_max_keys(serve: Any) -> None:
    sim = KycProviderSim(max_keys=3)
    client = await serve(sim)
    for i in range(8):
        response = await client.post(
            "/api/v1/customers/C1/kyc", data=verification(), headers={**AUTH, "Idempotency-Key": f"k{i}"}
        )
        assert response.status == 200
        assert len(sim.verifications_by_key) <= 3

    bounds = await (await client.get("/_sandbox/kyc/bounds")).json()
    assert bounds == {
        "idempotency_keys": {"size": 3, "max_size": 3, "evictions": 5},
        "verifications_by_key": {"size": 3, "max_size": 3, "evictions": 5},
    }
    assert sim.total_verifications == 8
    assert KycProviderSim().bounds()["idempotency_keys"]["max_size"] == DEFAULT_MAX_KEYS


def report(n: int) -> bytes:
    report_id = f"BRD-{n:04d}"
    return jsonwire.dumps(
        {
            "report_id": report_id,
            "report_type": "PREMIUM_BORDEREAUX",
            "treaty_number": "TRY-1",
            "period": {"id": "2024-01", "from": date(2024, 1, 1).isoformat(), "to": "2024-01-31"},
            "summary": {},
        }
    )


async def test_the_reinsurer_keeps_at_most_max_reports(serve: Any) -> None:
    sim = ReinsurerSim(max_reports=2)
    client = await serve(sim)
    for n in range(5):
        response = await client.post(
            "/api/v1/bordereaux", data=report(n), headers={**AUTH, "Idempotency-Key": f"BRD-{n:04d}"}
        )
        assert response.status == 201
        assert len(sim.reports) <= 2

    assert list(sim.reports) == ["BRD-0003", "BRD-0004"]
    bounds = await (await client.get("/_sandbox/reinsurer/bounds")).json()
    assert bounds["reports"] == {"size": 2, "max_size": 2, "evictions": 3}
    assert bounds["accepted_by_report"] == {"size": 2, "max_size": 2, "evictions": 3}
    assert ReinsurerSim().reports.max_size == DEFAULT_MAX_REPORTS


def signed(webhook_id: str, body: bytes) -> dict[str, str]:
    return signature_headers(
        webhook_id=webhook_id,
        event_type="policy.issued",
        timestamp_s=int(time.time()),
        body=body,
        secrets=[SECRET],
    )


async def test_a_partner_keeps_the_newest_deliveries_and_a_bounded_set_of_ids(serve: Any) -> None:
    receivers = PartnerReceivers(PartnersConfig(max_deliveries=5, max_ids=3))
    client = await serve(receivers)
    partner = receivers.add("acme", PartnerBehaviour(), [SECRET])
    body = b'{"event_type":"policy.issued"}'
    for i in range(12):
        webhook_id = f"msg_{i % 6}"  # six ids, each twice
        response = await client.post("/partners/acme", data=body, headers=signed(webhook_id, body))
        assert response.status == 200, await response.text()
        assert len(partner.received()) <= 5
        assert len(partner.unique_ids()) <= 3

    assert partner.received_count == 12  # counts cover dropped requests
    assert [d.seq for d in partner.received()] == list(range(8, 13))
    bounds = partner.bounds()
    assert bounds["deliveries"] == {"size": 5, "max_size": 5, "evictions": 7}
    assert bounds["webhook_ids"]["size"] == 3
    assert bounds["webhook_ids"]["evictions"] > 0
    assert bounds["accepted_ids"]["size"] == 3
    assert bounds["accepted_ids"]["evictions"] > 0
    summary = await (await client.get("/_control/partners/acme")).json()
    assert summary["received"] == 12
    assert summary["bounds"]["deliveries"]["evictions"] == 7
    listed = await (await client.get("/_control/partners/acme/deliveries")).json()
    assert len(listed["deliveries"]) == 5

    assert partner.clear() == 5
    assert partner.bounds()["deliveries"] == {"size": 0, "max_size": 5, "evictions": 0}
    assert PartnersConfig().max_deliveries == DEFAULT_MAX_DELIVERIES


async def test_the_regulator_keeps_the_newest_upload_records(tmp_path: Path) -> None:
    from processors_dev.sandbox.sftp import DEFAULT_MAX_UPLOADS, SftpRegulator, SftpUpload

    regulator = SftpRegulator(tmp_path, password=SecretStr("pw"), max_uploads=2)
    for n in range(5):  # what the SFTP session records when a file is closed
        regulator._state.record(SftpUpload(f"f{n}.csv", n))
        assert len(regulator.uploads) <= 2
    assert [u.path for u in regulator.uploads] == ["f3.csv", "f4.csv"]
    assert regulator.dropped_uploads == 3
    assert SftpRegulator(tmp_path).uploads == []
    assert DEFAULT_MAX_UPLOADS == 100_000
    with pytest.raises(ValueError, match="max_uploads"):
        SftpRegulator(tmp_path, max_uploads=0)


async def test_has_accepted_asks_for_every_id_and_only_remembered_ones_count(serve: Any) -> None:
    receivers = PartnerReceivers(PartnersConfig(max_ids=3))
    client = await serve(receivers)
    partner = receivers.add("acme", PartnerBehaviour(), [SECRET])
    body = b'{"event_type":"policy.issued"}'
    assert partner.has_accepted(set())
    assert not partner.has_accepted({"msg_0"})
    for i in range(2):
        response = await client.post("/partners/acme", data=body, headers=signed(f"msg_{i}", body))
        assert response.status == 200, await response.text()
    assert partner.has_accepted({"msg_0", "msg_1"})
    assert not partner.has_accepted({"msg_0", "msg_9"})  # as many remembered as asked, one missing
    assert not partner.has_accepted({"msg_0", "msg_1", "msg_2"})
    for i in range(2, 5):
        response = await client.post("/partners/acme", data=body, headers=signed(f"msg_{i}", body))
        assert response.status == 200, await response.text()
    assert partner.has_accepted({"msg_2", "msg_3", "msg_4"})
    assert not partner.has_accepted({"msg_0"})  # forgotten: only 3 ids are remembered
