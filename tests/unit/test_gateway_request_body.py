"""The gateway's request body is jsonwire's, byte for byte, whichever writer makes it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.adapters import jsonwire
from processors.adapters.payment_gateway import PaymentRequest, request_body


def _request(**changes: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "policy_id": "POL-000123",
        "amount": Decimal("1185.50"),
        "currency": "EUR",
        "payment_method": {"type": "CREDIT_CARD", "card_token": "tok_visa_4242"},
        "idempotency_key": "idem_0123456789abcdef",
        "transaction_type": "CHARGE",
        "reference_id": "INV-2026-000123",
    }
    fields.update(changes)
    return PaymentRequest(**fields)


def _jsonwire(request: PaymentRequest) -> bytes:
    return jsonwire.dumps(
        {
            "policy_id": request.policy_id,
            "amount": request.amount,
            "currency": request.currency,
            "payment_method": request.payment_method,
            "idempotency_key": request.idempotency_key,
            "transaction_type": request.transaction_type,
            "reference_id": request.reference_id,
        }
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"amount": Decimal("1E+2")},
        {"amount": Decimal("-0.00")},
        {"amount": Decimal("0.000000001")},
        {"amount": Decimal("123456789012345678901234567890.12")},
        {"policy_id": 'POL-"quoted"\\slash\n\t\x00\x1f\x7f'},
        {"payment_method": {"type": "SEPA", "billing_address": {"name": "Anna Müller", "city": None}}},
        {"payment_method": {"type": "CARD", "card_token": None, "billing_address": {"line1": "1 Main St"}}},
        {"reference_id": "R-€"},
    ],
)
def test_the_body_is_jsonwires(changes: dict[str, Any]) -> None:
    request = _request(**changes)
    assert request_body(request) == _jsonwire(request)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": Decimal("NaN")},
        {"amount": Decimal("Infinity")},
        {"payment_method": {"type": "CARD", "limit": 1.5}},
        {"payment_method": {"type": "CARD", "nested": {"deeper": {"deepest": {"x": 1.5}}}}},
    ],
)
def test_what_jsonwire_refuses_is_refused(changes: dict[str, Any]) -> None:
    request = _request(**changes)
    with pytest.raises((ValueError, TypeError)):
        _jsonwire(request)
    with pytest.raises((ValueError, TypeError)):
        request_body(request)


_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)


@given(
    policy_id=_TEXT,
    reference=_TEXT,
    name=st.one_of(st.none(), _TEXT),
    amount=st.decimals(allow_nan=False, allow_infinity=False, places=None),
)
@settings(max_examples=2000, deadline=None)
def test_any_text_and_amount_give_jsonwires_bytes(
    policy_id: str, reference: str, name: str | None, amount: Decimal
) -> None:
    request = _request(
        policy_id=policy_id,
        reference_id=reference,
        amount=amount,
        payment_method={"type": "CARD", "billing_address": {"name": name}},
    )
    assert request_body(request) == _jsonwire(request)
