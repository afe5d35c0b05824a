from decimal import Decimal

import pytest

from processors.adapters import jsonwire
from processors.adapters.http import HttpResponse
from processors.adapters.payment_gateway import GatewayRejected, parse_response
from processors.errors import Permanent, Retriable


def test_decimals_are_written_digit_for_digit() -> None:
    body = jsonwire.dumps({"amount": Decimal("1185.50"), "n": 3, "ok": True, "x": None, "l": ["a"]})
    assert body == b'{"amount":1185.50,"n":3,"ok":true,"x":null,"l":["a"]}'
    assert jsonwire.loads(body)["amount"] == Decimal("1185.50")
    assert str(jsonwire.loads(body)["amount"]) == "1185.50"


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="float"):
        jsonwire.dumps({"amount": 1185.5})


def _resp(status: int, body: bytes, **headers: str) -> HttpResponse:
    return HttpResponse(status=status, headers=headers, body=body)


def test_completed_pending_and_declined_are_outcomes() -> None:
    done = parse_response(
        _resp(
            200,
            b'{"payment_id":"PMT-1","status":"COMPLETED","gateway_reference":"ch_1","amount":10.00,'
            b'"currency":"USD","processed_at":"2024-01-15T10:30:00Z"}',
        )
    )
    assert done.status == "COMPLETED"
    assert done.amount == Decimal("10.00")
    assert done.processed_at is not None
    assert done.processed_at.utcoffset() is not None
    pending = parse_response(_resp(202, b'{"payment_id":"PMT-2","status":"PENDING"}'))
    assert pending.status == "PENDING"
    declined = parse_response(
        _resp(402, b'{"status":"DECLINED","decline_code":"insufficient_funds","decline_reason":"no money"}')
    )
    assert declined.status == "DECLINED"
    assert declined.decline_code == "insufficient_funds"


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 599, 101])
def test_transient_statuses_are_retriable(status: int) -> None:
    with pytest.raises(Retriable) as info:
        parse_response(_resp(status, b'{"error":"busy"}', **{"Retry-After": "2"}))
    assert info.value.retry_after_s == 2.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_permanent(status: int) -> None:
    with pytest.raises(Permanent) as info:
        parse_response(_resp(status, b'{"error":"validation_error","message":"amount must be positive"}'))
    assert isinstance(info.value, GatewayRejected)
    assert "amount must be positive" in str(info.value)


def test_unreadable_success_body_is_retriable() -> None:
    with pytest.raises(Retriable, match="unreadable"):
        parse_response(_resp(200, b"<html>"))


def test_a_success_without_payment_id_is_retriable_and_says_so() -> None:
    with pytest.raises(Retriable, match="has no payment_id"):
        parse_response(_resp(200, b'{"status":"COMPLETED","gateway_reference":"ch_1"}'))
