"""Partners verify with the Standard Webhooks reference library: what we sign, it accepts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from processors.webhooks.secrets import InvalidSecret, generate_secret, validate_secret
from processors.webhooks.signing import signature_headers
from processors.webhooks.verify import verify_webhook

BODY = b'{"event_id":"3f6c1d52-8a43-4c39-9a53-3b8b2a6a0f11","event_type":"claim.settled"}'


def _signed(secrets: list[str], when: datetime) -> dict[str, str]:
    return signature_headers(
        webhook_id="msg_2b8f3c1d4e5f6a7b8c9d0e1f2a",
        event_type="claim.settled",
        timestamp_s=int(when.timestamp()),
        body=BODY,
        secrets=secrets,
    )


@pytest.mark.parametrize("key_bytes", [24, 32, 64])
def test_the_reference_library_verifies_our_deliveries(key_bytes: int) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(key_bytes))).decode()
    validate_secret(secret)
    now = datetime.now(UTC)
    headers = _signed([secret], now)
    Webhook(secret).verify(BODY, headers, json_parse=False)


def test_the_reference_library_verifies_a_generated_secret_during_rotation() -> None:
    new, old = generate_secret().get_secret_value(), generate_secret().get_secret_value()
    headers = _signed([new, old], datetime.now(UTC))
    Webhook(new).verify(BODY, headers, json_parse=False)
    Webhook(old).verify(BODY, headers, json_parse=False)  # a partner still holding the old one


def test_our_verifier_accepts_what_the_reference_library_signs() -> None:
    secret = generate_secret().get_secret_value()
    now = datetime.now(UTC)
    msg_id = "msg_reference"
    signature = Webhook(secret).sign(msg_id, now, BODY)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    verify_webhook(BODY, headers, secret)


def test_a_loose_whsec_secret_could_not_be_verified_by_partners_so_it_is_refused() -> None:
    """Before, such a secret was accepted and signed with as raw text: the reference library
    decodes it differently and refuses every delivery."""
    loose = "whsec_this-is-not-base64-but-long-enough"
    with pytest.raises(InvalidSecret, match="standard base64"):
        validate_secret(loose)
    headers = _signed([loose], datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        Webhook(loose).verify(BODY, headers, json_parse=False)
