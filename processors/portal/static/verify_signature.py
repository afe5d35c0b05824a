"""Check that a webhook delivery is ours (Standard Webhooks, v1): standard library only.

Call it with the raw request body (the exact bytes received, before any JSON parsing), the
request headers and your current secret (during a rotation, try the previous one too)::

    if not verify_signature(raw_body, request.headers, secret):
        return 401  # not from us, or too old: do not process it
"""

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_S = 5 * 60  # refuse a timestamp further than this from your clock (replays)


def signing_key(secret: str) -> bytes:
    """The HMAC key: the base64 after ``whsec_``; a secret in another form, as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode("utf-8")


def verify_signature(
    body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None
) -> bool:
    """True when one ``v1,`` entry of ``webhook-signature`` signs ``{id}.{timestamp}.{body}``."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "")
    offered = lowered.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and offered):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode("ascii")
    for entry in offered.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            return True
    return False
