"""The reinsurer adapter with a fake transport: the request on the wire and the classification of answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from processors.adapters.http import HttpRequest, HttpResponse, HttpTimeout, TimeoutSettings
from processors.adapters.reinsurer import (
    AcknowledgementMismatch,
    ReinsurerClient,
    ReinsurerSettings,
    ReportConflict,
    SubmitResult,
    check_report_id,
    parse_response,
)
from processors.errors import Permanent, Retriable, ValidationFailed
from processors.resilience.classify import PermanentHttpStatus, RetriableHttpStatus

REPORT_ID = "BRD-TRY-2024-001-2024-01-P"
# Deliberately not canonical (spaces, key order): the adapter must not re-encode it.
BODY = (
    b'{"report_id": "BRD-TRY-2024-001-2024-01-P", "report_type": "PREMIUM_BORDEREAUX",'
    b' "treaty_number": "TRY-2024-001", "policies": [{"policy_number": "INS-2024-001234",'
    b' "gross_premium": "10000.00"}], "summary": {"total_rows": 1}}'
)
ACK = (
    b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"ACCEPTED",'
    b'"received_at":"2024-02-06T00:00:01.250Z","duplicate":false}'
)


class FakeTransport:
    """Records each request and answers with the next scripted response (or raises it)."""

    def __init__(self, *answers: HttpResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[HttpRequest, TimeoutSettings]] = []
        self.started = self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        self.requests.append((request, timeouts))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _resp(status: int, body: bytes = b"", **headers: str) -> HttpResponse:
    return HttpResponse(status=status, headers=headers, body=body)


def _client(transport: FakeTransport) -> ReinsurerClient:
    settings = ReinsurerSettings(
        base_url="https://re.example/",
        token=SecretStr("re-token"),
        timeouts=TimeoutSettings(connect_timeout_s=2, read_timeout_s=7),
    )
    return ReinsurerClient(settings, transport)


async def test_the_report_bytes_travel_unchanged_with_the_report_id_as_idempotency_key() -> None:
    transport = FakeTransport(_resp(201, ACK))
    client = _client(transport)
    result = await client.submit(REPORT_ID, BODY)
    ((request, timeouts),) = transport.requests
    assert request.method == "POST"
    assert request.url == "https://re.example/api/v1/bordereaux"
    assert request.body is BODY
    assert request.headers["Idempotency-Key"] == REPORT_ID
    assert request.headers["Authorization"] == "Bearer re-token"
    assert request.headers["Content-Type"] == "application/json"
    assert timeouts == TimeoutSettings(connect_timeout_s=2, read_timeout_s=7)
    assert result == SubmitResult(
        report_id=REPORT_ID,
        status="ACCEPTED",
        acknowledged_at=datetime(2024, 2, 6, 0, 0, 1, 250_000, tzinfo=UTC),
        duplicate=False,
        http_status=201,
    )


async def test_start_and_close_reach_the_transport_and_the_token_stays_out_of_reprs() -> None:
    transport = FakeTransport()
    client = _client(transport)
    assert transport.started == 0  # no I/O in the constructor
    await client.start()
    await client.close()
    assert (transport.started, transport.closed) == (1, 1)
    assert "re-token" not in repr(client.settings)


def test_a_duplicate_acknowledgement_is_a_result_with_the_original_time() -> None:
    body = ACK.replace(b'"duplicate":false', b'"duplicate":true')
    result = parse_response(REPORT_ID, _resp(200, body))
    assert result.duplicate is True
    assert result.http_status == 200
    assert result.acknowledged_at == datetime(2024, 2, 6, 0, 0, 1, 250_000, tzinfo=UTC)


def test_an_offset_time_is_converted_to_utc_and_a_missing_duplicate_flag_means_false() -> None:
    body = (
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"accepted",'
        b'"received_at":"2024-02-06T02:00:00+02:00"}'
    )
    result = parse_response(REPORT_ID, _resp(202, body))
    assert result.acknowledged_at == datetime(2024, 2, 6, tzinfo=UTC)
    assert result.duplicate is False
    assert result.status == "ACCEPTED"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1]",
        b'{"status":"ACCEPTED","received_at":"2024-02-06T00:00:00Z"}',
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","received_at":"2024-02-06T00:00:00Z"}',
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"ACCEPTED"}',
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"ACCEPTED","received_at":"yesterday"}',
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"ACCEPTED","received_at":"2024-02-06T00:00:00Z",'
        b'"duplicate":"no"}',
    ],
)
def test_an_unreadable_acknowledgement_is_retriable(body: bytes) -> None:
    with pytest.raises(Retriable, match="unreadable acknowledgement"):
        parse_response(REPORT_ID, _resp(201, body))


def test_an_acknowledgement_of_another_report_is_permanent() -> None:
    body = ACK.replace(b"2024-01-P", b"2024-02-P")
    with pytest.raises(AcknowledgementMismatch):
        parse_response(REPORT_ID, _resp(201, body))


def test_409_means_the_report_changed_after_close_and_is_permanent() -> None:
    body = b'{"error":"report_changed","message":"a closed report must not change"}'
    with pytest.raises(ReportConflict) as info:
        parse_response(REPORT_ID, _resp(409, body, **{"Retry-After": "1"}))
    assert isinstance(info.value, Permanent)
    assert not isinstance(info.value, Retriable)
    assert info.value.report_id == REPORT_ID
    assert info.value.status == 409
    assert REPORT_ID in str(info.value)
    assert "report_changed" in str(info.value)


def test_409_for_a_request_still_in_progress_is_retriable() -> None:
    body = b'{"error":"request_in_progress","message":"still busy"}'
    with pytest.raises(RetriableHttpStatus) as info:
        parse_response(REPORT_ID, _resp(409, body, **{"Retry-After": "3"}))
    assert info.value.retry_after_s == 3.0
    assert info.value.status == 409


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retriable_and_honour_retry_after(status: int) -> None:
    with pytest.raises(RetriableHttpStatus) as info:
        parse_response(REPORT_ID, _resp(status, b'{"error":"busy"}', **{"Retry-After": "4"}))
    assert info.value.retry_after_s == 4.0
    assert info.value.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_refusals_are_permanent_with_the_reinsurers_reason(status: int) -> None:
    body = b'{"error":"invalid_report","message":"summary must be an object"}'
    with pytest.raises(PermanentHttpStatus) as info:
        parse_response(REPORT_ID, _resp(status, body))
    assert info.value.status == status
    assert "invalid_report: summary must be an object" in str(info.value)
    assert REPORT_ID in str(info.value)


async def test_a_timeout_of_the_transport_propagates_as_retriable() -> None:
    client = _client(FakeTransport(HttpTimeout("POST https://re.example/api/v1/bordereaux: timed out")))
    with pytest.raises(Retriable):
        await client.submit(REPORT_ID, BODY)


async def test_errors_never_repeat_the_report_body() -> None:
    transport = FakeTransport(_resp(422, b'{"error":"invalid_report","message":"period is required"}'))
    with pytest.raises(Permanent) as info:
        await _client(transport).submit(REPORT_ID, BODY)
    assert "INS-2024-001234" not in str(info.value)
    assert "10000.00" not in str(info.value)


@pytest.mark.parametrize("report_id", ["", "BRD with space", "BRD-\r\nX-Injected: 1", "BRD-é", "x" * 256])
async def test_a_report_id_that_cannot_be_a_header_is_refused_before_any_call(report_id: str) -> None:
    transport = FakeTransport()
    with pytest.raises(ValidationFailed):
        await _client(transport).submit(report_id, BODY)
    assert transport.requests == []


def test_a_normal_report_id_passes_the_check() -> None:
    assert check_report_id(REPORT_ID) == REPORT_ID
