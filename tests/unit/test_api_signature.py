"""Webhook signature verification and the provider event id: pure functions, no server."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from processors.api.inbound import (
    SignatureError,
    SignatureProblem,
    provider_event_id,
    sign,
    verify_signature,
)
from processors.errors import ConfigError, ValidationFailed

SECRET = SecretStr("whsec_current_0123456789")
PREVIOUS = SecretStr("whsec_previous_9876543210")
NOW = 1_718_000_000
TS = str(NOW)
BODY = b'{"event_id":"evt_1","event_type":"payment.confirmed","data":{"amount":1185.50}}'


def signature_of(body: bytes, timestamp: str = TS, secret: str = SECRET.get_secret_value()) -> str:
    """An independent implementation of the documented scheme."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def refused(
    *,
    secret: SecretStr | list[SecretStr] = SECRET,
    timestamp: str | None = TS,
    body: bytes = BODY,
    signature: str | None = None,
    now: float | datetime = NOW,
) -> SignatureProblem:
    with pytest.raises(SignatureError) as info:
        verify_signature(
            secret,
            timestamp,
            body,
            signature if signature is not None else signature_of(BODY),
            now=now,
        )
    return info.value.problem


def test_a_valid_signature_passes() -> None:
    verify_signature(SECRET, TS, BODY, signature_of(BODY), now=NOW)


def test_sign_matches_the_documented_scheme() -> None:
    assert sign(SECRET, TS, BODY) == signature_of(BODY)


def test_upper_case_hex_and_surrounding_spaces_are_accepted() -> None:
    offered = signature_of(BODY)
    verify_signature(SECRET, TS, BODY, " sha256=" + offered[7:].upper() + " ", now=NOW)


def test_a_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"1185.50", b"1.00")
    assert refused(body=tampered) is SignatureProblem.MISMATCH


def test_a_wrong_secret_is_refused() -> None:
    assert refused(secret=SecretStr("whsec_someone_else")) is SignatureProblem.MISMATCH


def test_a_changed_timestamp_breaks_the_signature() -> None:
    assert refused(timestamp=str(NOW + 1)) is SignatureProblem.MISMATCH


def test_the_previous_secret_is_accepted_while_rotating() -> None:
    signed_with_previous = signature_of(BODY, secret=PREVIOUS.get_secret_value())

    verify_signature([SECRET, PREVIOUS], TS, BODY, signed_with_previous, now=NOW)
    assert refused(secret=[SECRET], signature=signed_with_previous) is SignatureProblem.MISMATCH


@pytest.mark.parametrize("age_s", [0, 299, 300, -300, -1])
def test_timestamps_within_the_tolerance_pass(age_s: int) -> None:
    verify_signature(SECRET, TS, BODY, signature_of(BODY), now=NOW + age_s)


def test_a_stale_timestamp_is_refused_even_with_a_valid_signature() -> None:
    assert refused(now=NOW + 301) is SignatureProblem.STALE


def test_a_timestamp_from_the_future_is_refused() -> None:
    assert refused(now=NOW - 301) is SignatureProblem.FUTURE


def test_the_tolerance_is_configurable() -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, TS, BODY, signature_of(BODY), now=NOW + 61, tolerance_s=60)
    assert info.value.problem is SignatureProblem.STALE


def test_now_may_be_an_aware_datetime_in_any_zone() -> None:
    moment = datetime.fromtimestamp(NOW, UTC).astimezone(timezone(timedelta(hours=5)))
    verify_signature(SECRET, TS, BODY, signature_of(BODY), now=moment)
    assert refused(now=moment + timedelta(minutes=6)) is SignatureProblem.STALE


def test_a_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ConfigError):
        verify_signature(SECRET, TS, BODY, signature_of(BODY), now=datetime(2024, 6, 10))


@pytest.mark.parametrize(
    ("timestamp", "signature", "problem"),
    [
        (None, None, SignatureProblem.MISSING),
        ("", "sha256=00", SignatureProblem.MISSING),
        (TS, "", SignatureProblem.MISSING),
        ("1718000000.5", None, SignatureProblem.MALFORMED_TIMESTAMP),
        ("-1718000000", None, SignatureProblem.MALFORMED_TIMESTAMP),
        ("2024-06-10T06:13:20Z", None, SignatureProblem.MALFORMED_TIMESTAMP),
        ("9" * 13, None, SignatureProblem.MALFORMED_TIMESTAMP),
        (TS, "md5=" + "0" * 64, SignatureProblem.MALFORMED_SIGNATURE),
        (TS, "sha256=" + "0" * 63, SignatureProblem.MALFORMED_SIGNATURE),
        (TS, "sha256=" + "g" * 64, SignatureProblem.MALFORMED_SIGNATURE),
        (TS, "0" * 64, SignatureProblem.MALFORMED_SIGNATURE),
    ],
)
def test_missing_or_malformed_headers_are_refused(
    timestamp: str | None, signature: str | None, problem: SignatureProblem
) -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(
            SECRET, timestamp, BODY, signature_of(BODY) if signature is None else signature, now=NOW
        )
    assert info.value.problem is problem


def test_missing_headers_are_refused_before_anything_else() -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, None, BODY, None, now=NOW)
    assert info.value.problem is SignatureProblem.MISSING


def test_the_error_never_quotes_the_secret_or_the_expected_signature() -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, TS, b"{}", signature_of(BODY), now=NOW)

    text = f"{info.value} {info.value!r}"
    assert SECRET.get_secret_value() not in text
    assert signature_of(b"{}")[7:] not in text
    assert str(info.value) == "the signature does not match the body"


def test_no_secret_at_all_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        verify_signature([], TS, BODY, signature_of(BODY), now=NOW)


class TestProviderEventId:
    def test_the_signed_body_alone(self) -> None:
        assert provider_event_id(None, {"event_id": "evt_1"}, b"{}") == "evt_1"

    def test_header_and_body_agree(self) -> None:
        assert provider_event_id(" evt_1 ", {"event_id": "evt_1"}, b"{}") == "evt_1"

    def test_a_header_that_differs_from_the_signed_id_is_refused(self) -> None:
        with pytest.raises(ValidationFailed, match="differ"):
            provider_event_id("evt_other", {"event_id": "evt_1"}, b"{}")

    def test_an_unsigned_header_never_chooses_the_id(self) -> None:
        """Replay: the same signed body with a new header value is the same event."""
        body = b'{"data": {"payment_id": "PMT-1"}}'
        first = provider_event_id("evt_1", {}, body)
        replayed = provider_event_id("evt_new_unsigned", {}, body)
        assert first == replayed == provider_event_id(None, {}, body)
        assert first.startswith("sha256:")
        assert provider_event_id("evt_1", {}, body + b" ") != first  # other signed content

    @pytest.mark.parametrize(
        "payload",
        [{"event_id": 7}, {"event_id": ""}, {"event_id": "evt with space"}, {"event_id": "e" * 129}],
    )
    def test_unusable_signed_ids_are_refused(self, payload: dict[str, object]) -> None:
        with pytest.raises(ValidationFailed):
            provider_event_id(None, payload, b"{}")
