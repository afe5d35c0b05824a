"""Redaction: sensitive keys, nested structures, models, free-text patterns and secrets."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from types import MappingProxyType
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from processors.adapters.http import HttpRequest
from processors.contract import PII_FIELDS, CustomerCreated
from processors.contract.examples import example_event
from processors.observability.redact import (
    MASK,
    clear_secrets,
    is_sensitive_key,
    redact,
    redact_headers,
    redact_text,
    register_secret,
)

redact_module = importlib.import_module("processors.observability.redact")

CARD_TOKEN = "tok_visa_4242"
PASSPORT = "X12345678"
PASSPORT_DIGITS = "987654321"
NAME = "Jane Q. Doe"
DOB = "1985-03-12"
EMAIL = "jane.doe@example.com"


@pytest.fixture(autouse=True)
def _no_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


# -- keys -------------------------------------------------------------------------------------

SENSITIVE = [
    "card_token",
    "card_number",
    "pan",
    "cvv",
    "document_number",
    "passport_number",
    "full_name",
    "first_name",
    "last_name",
    "name",
    "date_of_birth",
    "dob",
    "line1",
    "line2",
    "address",
    "street",
    "postal_code",
    "email",
    "phone",
    "front_image_url",
    "back_image_url",
    "image_url",
    "authorization",
    "proxy-authorization",
    "secret",
    "webhook_secret",
    "token",
    "api_key",
    "password",
    "signature",
    "cookie",
    "set-cookie",
    # spellings and derived names
    "Card-Token",
    "cardToken",
    "CARD_TOKEN",
    "Authorization",
    "Proxy-Authorization",
    "X-Api-Key",
    "X-Signature",
    "client_secret",
    "accessToken",
    "customer_full_name",
    "shipping_address",
    "contact_email",
    "input_value",
]


@pytest.mark.parametrize("key", SENSITIVE)
def test_the_value_of_a_sensitive_key_is_masked(key: str) -> None:
    assert is_sensitive_key(key)
    assert redact({key: "sensitive-value-42", "policy_id": "POL-1"}) == {key: MASK, "policy_id": "POL-1"}


@pytest.mark.parametrize("key", sorted(PII_FIELDS))
def test_every_contract_pii_field_is_masked(key: str) -> None:
    assert redact({key: "x-value"}) == {key: MASK}


@pytest.mark.parametrize(
    "key",
    [
        "policy_id",
        "idempotency_key",
        "amount",
        "currency",
        "status",
        "list_name",
        "issuing_country",
        "X-Signature-Timestamp",
        "X-Provider-Event-Id",
        "correlation_id",
        "trace_id",
        "content-type",
        "expiry_date",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)
    assert redact({key: "POL-2024-001234"}) == {key: "POL-2024-001234"}


def test_none_stays_none_and_other_values_of_sensitive_keys_are_masked_whole() -> None:
    value = {
        "line2": None,
        "cvv": 123,
        "billing_address": {"line1": "123 Main St", "city": "Springfield"},
        "email": [EMAIL, "other@example.org"],
    }
    assert redact(value) == {"line2": None, "cvv": MASK, "billing_address": MASK, "email": MASK}


def test_nested_structures_are_walked_and_the_input_is_not_modified() -> None:
    value: dict[str, Any] = {
        "customers": [
            {
                "id": "C-1",
                "full_name": NAME,
                "documents": ({"type": "PASSPORT", "document_number": PASSPORT},),
            },
        ],
        "meta": MappingProxyType({"trace": {"dob": DOB, "ok": True, "n": 3}}),
    }
    original = json.dumps(value["customers"])
    result = redact(value)
    assert result == {
        "customers": [
            {"id": "C-1", "full_name": MASK, "documents": [{"type": "PASSPORT", "document_number": MASK}]}
        ],
        "meta": {"trace": {"dob": MASK, "ok": True, "n": 3}},
    }
    assert json.dumps(value["customers"]) == original


def test_scalars_are_kept_and_unknown_objects_are_named_not_printed() -> None:
    class Colour(Enum):
        RED = "red"

    class Opaque:
        def __str__(self) -> str:
            return NAME

    stamp = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    uid = UUID("6f1c1f7e-8a39-4c55-9d0e-3f1b2f0f6a10")
    result = redact(
        {
            "amount": Decimal("1185.50"),
            "at": stamp,
            "day": date(2024, 1, 15),
            "id": uid,
            "ratio": 0.5,
            "flag": False,
            "colour": Colour.RED,
            "thing": Opaque(),
            "key_material": SecretStr("s3cr3t-value"),
            "body": b'{"full_name": "Jane"}',
            "tags": {"a"},
        }
    )
    assert result == {
        "amount": Decimal("1185.50"),
        "at": stamp,
        "day": date(2024, 1, 15),
        "id": uid,
        "ratio": 0.5,
        "flag": False,
        "colour": "red",
        "thing": "<Opaque>",
        "key_material": MASK,
        "body": "<21 bytes>",
        "tags": ["a"],
    }


def test_exceptions_keep_their_type_and_lose_their_personal_data() -> None:
    result = redact({"error": ValueError(f"passport {PASSPORT} of {EMAIL}")})
    assert result["error"].startswith("ValueError: passport ")
    assert PASSPORT not in result["error"]
    assert EMAIL not in result["error"]


def test_a_cycle_does_not_recurse_forever() -> None:
    loop: dict[str, Any] = {"id": "A"}
    loop["self"] = loop
    text = json.dumps(redact(loop), ensure_ascii=False)
    assert text.endswith('"self": "<…>"' + "}" * 32)


def test_dataclasses_are_walked() -> None:
    @dataclass
    class Person:
        customer_id: str
        full_name: str
        date_of_birth: str

    assert redact(Person("C-1", NAME, DOB)) == {
        "customer_id": "C-1",
        "full_name": MASK,
        "date_of_birth": MASK,
    }


def test_an_http_request_keeps_neither_its_authorization_nor_its_body() -> None:
    request = HttpRequest(
        method="POST",
        url="https://gateway.example/api/v1/payments",
        headers={"Authorization": "Bearer gw_live_abcdef", "Content-Type": "application/json"},
        body=json.dumps({"card_token": CARD_TOKEN}).encode(),
    )
    result = redact(request)
    assert result["headers"] == {"Authorization": MASK, "Content-Type": "application/json"}
    assert result["body"].endswith(" bytes>")
    assert "gw_live_abcdef" not in json.dumps(result)
    assert CARD_TOKEN not in json.dumps(result)


# -- the contract's events --------------------------------------------------------------------


def _pii_values(value: Any) -> list[str]:
    """Every string or date held under a PII key, at any depth."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in PII_FIELDS and item is not None:
                found.extend([item] if isinstance(item, str) else _strings(item))
            else:
                found.extend(_pii_values(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_pii_values(item))
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@pytest.mark.parametrize("event_type", ["premium.due", "customer.kyc_requested", "customer.created"])
def test_a_dumped_example_event_keeps_none_of_its_personal_data(event_type: str) -> None:
    dumped = example_event(event_type).model_dump(mode="json")
    secrets = [value for value in _pii_values(dumped) if len(value) > 2]
    assert secrets, "the example must hold personal data for this test to mean anything"
    text = json.dumps(redact(dumped))
    for value in secrets:
        assert value not in text
    assert example_event(event_type).event_id.hex[:8] in text.replace("-", "")  # the rest is still there


def test_premium_due_masks_the_card_token_and_the_whole_billing_address() -> None:
    result = redact(example_event("premium.due").model_dump(mode="json"))
    method = result["data"]["payment_method"]
    assert method == {"type": "CREDIT_CARD", "card_token": MASK, "billing_address": MASK}
    assert result["data"]["amount"] == "1185.50"
    assert result["data"]["policy_id"] == "POL-2024-001234"


def test_a_pydantic_model_is_dumped_and_redacted() -> None:
    customer = CustomerCreated(
        customer_id="CUST-1", full_name=NAME, date_of_birth=date(1985, 3, 12), email=EMAIL, country="GB"
    )
    result = redact(customer)
    assert result["customer_id"] == "CUST-1"
    text = json.dumps(result)
    for value in (NAME, DOB, EMAIL):
        assert value not in text


# -- strings inside structures ----------------------------------------------------------------


def test_strings_inside_structures_are_scrubbed_by_pattern() -> None:
    result = redact(
        {
            "note": f"charged {CARD_TOKEN} for {EMAIL}",
            "header": "Bearer eyJhbGciOi.abc.def",
            "raw": json.dumps({"full_name": NAME, "policy_id": "POL-1"}),
            "query": "policy=POL-1&api_key=k-123456",
        }
    )
    assert result["note"] == f"charged {MASK} for {MASK}"
    assert result["header"] == f"Bearer {MASK}"
    assert json.loads(result["raw"]) == {"full_name": MASK, "policy_id": "POL-1"}
    assert result["query"] == f"policy=POL-1&api_key={MASK}"


def test_card_numbers_in_structures_are_caught_by_luhn_and_other_numbers_kept() -> None:
    result = redact(
        {
            "a": "4242424242424242",
            "b": "4242 4242 4242 4242",
            "c": "1705314600123",  # epoch milliseconds, not a card number
            "d": "1705314600",  # epoch seconds
            "e": "ch_3abc123def",
        }
    )
    assert result == {"a": MASK, "b": MASK, "c": "1705314600123", "d": "1705314600", "e": "ch_3abc123def"}


# -- free text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"charging {CARD_TOKEN} now", CARD_TOKEN),
        ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ("header bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ("secret is whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        (f"mail to {EMAIL}, please", EMAIL),
        (f"passport {PASSPORT_DIGITS} expired", PASSPORT_DIGITS),
        (f"passport {PASSPORT} expired", "12345678"),
        ("card 4242 4242 4242 4242 declined", "4242 4242 4242 4242"),
        ("card 4242-4242-4242-4242 declined", "4242-4242-4242-4242"),
        ("amex 3782 822463 10005", "822463"),
        ("GET https://user:hunter2pw@partner.example/x", "hunter2pw"),
        ("GET https://partner.example/x?token=t0k3nvalue&page=2", "t0k3nvalue"),
        ('body {"full_name": "Jane Q. Doe", "id": 1}', "Jane Q. Doe"),
        ("repr {'date_of_birth': '1985-03-12'}", "1985-03-12"),
        ("X-Api-Key: k_live_55aa", "k_live_55aa"),
        ("input_value='Jane Q. Doe', input_type=str", "Jane Q. Doe"),
        ("Basic dXNlcjpwYXNzd29yZA== sent", "dXNlcjpwYXNzd29yZA=="),
    ],
)
def test_redact_text_masks_patterns(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert MASK in redacted


@pytest.mark.parametrize(
    "text",
    [
        "event 6f1c1f7e-8a39-4c55-9d0e-3f1b2f0f6a10 done",
        "event 12345678-1234-1234-1234-123456789012 done",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736",
        "due 2024-01-15T10:30:00Z for POL-2024-001234 (1185.50 USD)",
        "consumer assigned 3 partitions; lag 1234567",
        "basic checks passed",
        "status: 200, attempt: 2",
    ],
)
def test_redact_text_keeps_ids_dates_and_ordinary_words(text: str) -> None:
    assert redact_text(text) == text


def test_redact_text_is_idempotent() -> None:
    text = f"Bearer xyz {CARD_TOKEN} {EMAIL} {PASSPORT_DIGITS} token=abc"
    once = redact_text(text)
    assert redact_text(once) == once


def test_known_secrets_are_masked_in_text() -> None:
    assert redact_text("posting with key k3y-material-x", known_secrets=["k3y-material-x"]) == (
        f"posting with key {MASK}"
    )


# -- registered secrets -----------------------------------------------------------------------


def test_a_registered_secret_is_masked_everywhere() -> None:
    register_secret("gw-sandbox-Zq81")
    register_secret(SecretStr("hook-secret-Pw22"))
    assert redact_text("token gw-sandbox-Zq81 and hook-secret-Pw22") == f"token {MASK} and {MASK}"
    assert redact({"detail": "sent gw-sandbox-Zq81", "n": ["hook-secret-Pw22"]}) == {
        "detail": f"sent {MASK}",
        "n": [MASK],
    }


def test_a_secret_containing_another_is_masked_whole() -> None:
    register_secret("abcd")
    register_secret("abcd-efgh-ijkl")
    assert redact_text("x abcd-efgh-ijkl y abcd") == f"x {MASK} y {MASK}"


def test_too_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        register_secret("abc")


def test_clear_secrets_forgets_them() -> None:
    register_secret("forget-me-now")
    clear_secrets()
    assert redact_text("forget-me-now") == "forget-me-now"


# -- headers ----------------------------------------------------------------------------------


def test_redact_headers() -> None:
    headers = {
        "Authorization": "Bearer gw_live_x",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "Cookie": "session=abc",
        "Set-Cookie": "session=abc; HttpOnly",
        "X-Signature": "sha256=" + "ab" * 32,
        "X-Api-Key": "k_1",
        "Content-Type": "application/json",
        "X-Signature-Timestamp": "1705314600",
        "X-Provider-Event-Id": "evt_123",
    }
    assert redact_headers(headers) == {
        "Authorization": MASK,
        "Proxy-Authorization": MASK,
        "Cookie": MASK,
        "Set-Cookie": MASK,
        "X-Signature": MASK,
        "X-Api-Key": MASK,
        "Content-Type": "application/json",
        "X-Signature-Timestamp": "1705314600",
        "X-Provider-Event-Id": "evt_123",
    }
    assert redact_headers([("authorization", "x"), ("accept", "*/*")]) == {
        "authorization": MASK,
        "accept": "*/*",
    }


# -- the cheap tests in front of the patterns never skip a match ----------------------------

_PIECES = [
    "123-45-6789",
    "AB123456C",
    "AB 12 34 56 C",
    "DE89 3704 0044 0532 0130 00",
    "GB29NWBK60161331926819",
    "+44 20 7946 0958",
    "+1 (555) 123-4567",
    "(555) 123-4567",
    "555-123-4567",
    "555.123.4567",
    "12/31/1985",
    "31.12.1985",
    "dob 1985-03-12",
    "D.O.B.: 12 March 1985",
    "born on March 12, 1985",
    "BIRTHDATE 1985-03-12",
    "geboren 1985-03-12",
    "née le 12 mars 1985",
    "bırth date 1985-03-12",
    "Mr John Smith",
    "Dr. Anna-Maria Müller",
    "Mrs. Jane Doe",
    "4242 4242 4242 4242",
    "6f1c1f7e-8a39-4c55-9d0e-3f1b2f0f6a10",
    "pay-3f1c2a4e-1111-4222-8333-123456789abc",
    "POL-000123",
    "INV-2026-000123",
    "123.45",
    "EUR",
    "2024-01-15T10:30:00Z",
    "١٢٣-٤٥-٦٧٨٩",
    "ＡＢ123456C",
]
_ALPHABET = "0123456789 -./+()ABDOQZabdeo:=né"
_GLUE = st.sampled_from([" ", "-", ".", "/", "", ": ", "=", ",", "(", ")", "+", "x", "Z", "\n"])


@given(
    st.lists(
        st.one_of(st.sampled_from(_PIECES), st.text(alphabet=_ALPHABET, max_size=24)),
        max_size=6,
    ),
    _GLUE,
    st.booleans(),
)
@settings(max_examples=1500, deadline=None)
def test_the_cheap_pre_checks_never_change_what_is_masked(
    parts: list[str], glue: str, digit_runs: bool
) -> None:
    text = glue.join(parts)
    quick = redact_module._scrub(text, digit_runs=digit_runs)
    redact_module._forget_clean()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_may_hold_national", "_may_hold_birth_date", "_may_hold_title"):
            patch.setattr(redact_module, name, lambda _text: True)
        thorough = redact_module._scrub(text, digit_runs=digit_runs)
    assert quick == thorough


@pytest.mark.parametrize("piece", _PIECES[:23])
def test_every_sample_of_personal_data_is_seen_by_its_pre_check(piece: str) -> None:
    seen = (
        redact_module._may_hold_national(piece)
        or redact_module._may_hold_birth_date(piece)
        or redact_module._may_hold_title(piece)
        or redact_module._PAN_CANDIDATE.search(piece) is not None
    )
    assert seen
    assert redact_module._scrub(piece, digit_runs=False) != piece


def test_a_text_once_found_clean_is_masked_after_a_secret_in_it_is_registered() -> None:
    text = "key k_live_abcdef123456"
    assert redact_text(text) == text
    assert redact(text) == text  # both kinds of scrubbing now know the text as clean
    register_secret("k_live_abcdef123456")
    assert redact_text(text) == f"key {MASK}"
    assert redact(text) == f"key {MASK}"


def test_texts_found_clean_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact_module, "_CLEAN_MAX", 8)
    for n in range(50):
        assert redact(f"ref-{n}") == f"ref-{n}"
        assert len(redact_module._clean[False]) <= 8
    assert redact(f"mail {EMAIL}") == f"mail {MASK}"
    assert f"mail {EMAIL}" not in redact_module._clean[False]  # only clean texts are kept
