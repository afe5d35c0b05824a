"""The KYC provider adapter: request on the wire, classification of answers, decision parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.adapters.http import HttpRequest, HttpResponse, TimeoutSettings
from processors.adapters.kyc_provider import (
    KycProvider,
    KycProviderSettings,
    KycRequest,
    parse_decision,
    parse_response,
    risk_level_for,
)
from processors.errors import Permanent, Retriable
from processors.resilience.classify import PermanentHttpStatus, RetriableHttpStatus

DECISION = (
    b'{"verification_id":"VRF-2024-001234","status":"APPROVED","risk_score":15,"risk_level":"LOW",'
    b'"checks":[{"type":"DOCUMENT_AUTHENTICITY","status":"PASSED","confidence":0.98},'
    b'{"type":"FACE_MATCH","status":"PASSED","confidence":0.95},'
    b'{"type":"SANCTIONS_SCREENING","status":"PASSED","matches":[]},'
    b'{"type":"PEP_CHECK","status":"PASSED","matches":[]}],"verified_at":"2024-01-15T10:35:00Z"}'
)


def _resp(status: int, body: bytes, **headers: str) -> HttpResponse:
    return HttpResponse(status=status, headers=headers, body=body)


def test_the_seed_response_is_a_decision_with_exact_confidences() -> None:
    outcome = parse_response(_resp(200, DECISION))
    assert outcome.status == "DECIDED"
    assert outcome.verification_id == "VRF-2024-001234"
    decision = outcome.decision
    assert decision is not None
    assert (decision.status, decision.risk_score, decision.risk_level) == ("APPROVED", 15, "LOW")
    assert [c.type for c in decision.checks] == [
        "DOCUMENT_AUTHENTICITY",
        "FACE_MATCH",
        "SANCTIONS_SCREENING",
        "PEP_CHECK",
    ]
    assert decision.checks[0].confidence == Decimal("0.98")
    assert str(decision.checks[0].confidence) == "0.98"
    assert decision.checks[2].confidence is None
    assert decision.verified_at == datetime(2024, 1, 15, 10, 35, tzinfo=UTC)


@pytest.mark.parametrize("status", ["REVIEW", "REJECTED", "rejected"])
def test_review_and_rejection_are_results_not_errors(status: str) -> None:
    body = DECISION.replace(b'"status":"APPROVED"', f'"status":"{status}"'.encode())
    outcome = parse_response(_resp(200, body))
    assert outcome.decision is not None
    assert outcome.decision.status == status.upper()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (202, b'{"verification_id":"VRF-9","status":"PENDING"}'),
        (200, b'{"verification_id":"VRF-9","status":"PENDING"}'),
        (202, b'{"verification_id":"VRF-9"}'),
    ],
)
def test_pending_answers(status: int, body: bytes) -> None:
    outcome = parse_response(_resp(status, body))
    assert outcome.status == "PENDING"
    assert outcome.verification_id == "VRF-9"
    assert outcome.decision is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"status":"PENDING"}',  # no verification id
        b'{"verification_id":"V","status":"APPROVED","risk_score":15,"checks":[]}',  # no verified_at
        b'{"verification_id":"V","status":"GREAT","risk_score":15,"verified_at":"2024-01-15T10:35:00Z"}',
    ],
)
def test_an_unreadable_success_is_retriable(body: bytes) -> None:
    with pytest.raises(Retriable, match="unreadable body"):
        parse_response(_resp(200, body))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retriable_and_honour_retry_after(status: int) -> None:
    with pytest.raises(RetriableHttpStatus) as info:
        parse_response(_resp(status, b'{"error":"busy"}', **{"Retry-After": "2"}))
    assert info.value.retry_after_s == 2.0
    assert info.value.status == status


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 422])
def test_refusals_are_permanent_with_the_providers_reason(status: int) -> None:
    body = b'{"error":"document_expired","message":"documents[0] has expired"}'
    with pytest.raises(PermanentHttpStatus) as info:
        parse_response(_resp(status, body))
    assert isinstance(info.value, Permanent)
    assert info.value.status == status
    if status >= 400:
        assert "document_expired: documents[0] has expired" in str(info.value)
    assert "kyc-provider POST /api/v1/customers/{id}/kyc" in str(info.value)


def test_risk_level_is_derived_from_the_score_when_missing() -> None:
    payload: dict[str, Any] = jsonwire.loads(DECISION)
    del payload["risk_level"]
    for score, level in [
        (0, "LOW"),
        (29, "LOW"),
        (30, "MEDIUM"),
        (69, "MEDIUM"),
        (70, "HIGH"),
        (100, "HIGH"),
    ]:
        assert parse_decision({**payload, "risk_score": score}).risk_level == level
        assert risk_level_for(score) == level


def test_matches_and_decimal_strings_are_read_exactly() -> None:
    payload: dict[str, Any] = jsonwire.loads(DECISION)
    payload["checks"][2] = {
        "type": "SANCTIONS_SCREENING",
        "status": "FAILED",
        "matches": [{"name": "Listed Person", "list_name": "OFAC-SDN", "score": "0.97"}],
    }
    payload["risk_score"] = "96"
    decision = parse_decision(payload)
    (match,) = decision.checks[2].matches
    assert (match.list_name, match.score, match.name) == ("OFAC-SDN", Decimal("0.97"), "Listed Person")
    assert "Listed Person" not in repr(match)
    assert decision.risk_score == 96


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"risk_score": Decimal("15.5")}, "risk_score must be a whole number"),
        ({"risk_score": True}, "risk_score must be a number"),
        ({"risk_level": "EXTREME"}, "risk_level must be one of"),
        ({"checks": {"type": "PEP_CHECK"}}, "checks must be a list"),
        ({"checks": [{"type": "PEP_CHECK", "status": "MAYBE"}]}, "checks[0].status must be one of"),
        ({"checks": [{"type": "PEP_CHECK", "status": "PASSED", "matches": [{"score": 1}]}]}, "list_name"),
    ],
)
def test_invalid_decisions_name_the_field(change: dict[str, Any], message: str) -> None:
    payload: dict[str, Any] = {**jsonwire.loads(DECISION), **change}
    with pytest.raises((ValueError, TypeError)) as info:
        parse_decision(payload)
    assert message in str(info.value)


class RecordingTransport:
    def __init__(self, response: HttpResponse) -> None:
        self.response = response
        self.requests: list[HttpRequest] = []
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        self.requests.append(request)
        return self.response


async def test_verify_posts_the_request_with_token_and_idempotency_key() -> None:
    transport = RecordingTransport(_resp(200, DECISION))
    provider = KycProvider(
        KycProviderSettings(base_url="https://kyc.example/", token=SecretStr("s3cret")), transport
    )
    request = KycRequest(
        verification_type="IDENTITY",
        documents=({"type": "PASSPORT", "document_number": "AB123456"},),
        consent={
            "terms_accepted": True,
            "data_processing_accepted": True,
            "timestamp": "2024-01-15T10:30:00Z",
        },
        client_reference="ref-1",
    )
    await provider.start()
    outcome = await provider.verify("CUST/001", request, "idem_123")
    assert transport.started
    assert outcome.decision is not None
    (sent,) = transport.requests
    assert sent.method == "POST"
    assert sent.url == "https://kyc.example/api/v1/customers/CUST%2F001/kyc"
    assert sent.headers["Authorization"] == "Bearer s3cret"
    assert sent.headers["Idempotency-Key"] == "idem_123"
    assert sent.body is not None
    assert jsonwire.loads(sent.body) == {**request.body(), "documents": [dict(request.documents[0])]}
    assert "s3cret" not in repr(provider.settings)
    assert "AB123456" not in repr(request)
    await provider.close()
    assert not transport.started
