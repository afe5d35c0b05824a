"""Signing of partner deliveries: the seed scheme and Standard Webhooks, side by side.

Standard library only, so :mod:`processors.webhooks.verify` (shipped for partners) can share
the key derivation.  Every delivery attempt carries both schemes::

    X-Webhook-Signature:          sha256=<hex>     HMAC-SHA256(secret as UTF-8, body), newest secret
    X-Webhook-Signature-Previous: sha256=<hex>     the same with the previous secret (rotation grace only)
    webhook-id:                   msg_<26 hex>     stable across attempts
    webhook-timestamp:            <unix seconds of this attempt>
    webhook-signature:            v1,<base64> ...  HMAC-SHA256(standard_key(secret), f"{id}.{ts}." + body),
                                                   one per unexpired secret, newest first

The keyed HMAC states are cached per secret (bounded), so an attempt costs one copy and one
pass over the body per signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

__all__ = [
    "SECRET_PREFIX",
    "seed_signature",
    "signature_headers",
    "standard_key",
    "standard_signature",
    "webhook_id_for",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105  (a format prefix, not a password)
"""Prefix of a Standard Webhooks secret; the rest is the base64 of the key."""

_SEED_PREFIX: Final = "sha256="
_STANDARD_VERSION: Final = "v1,"


def webhook_id_for(subscription_id: str, event_id: str) -> str:
    """The delivery's id: ``msg_`` + the first 26 hex digits of sha256(``"{subscription}:{event}"``).

    The same for every attempt, after a crash and on replay, so partners can de-duplicate on it.
    """
    digest = hashlib.sha256(f"{subscription_id}:{event_id}".encode()).hexdigest()
    return "msg_" + digest[:26]


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key of ``secret``.

    The base64-decoded part after ``whsec_``; the whole string as UTF-8 when the secret has no
    ``whsec_`` prefix or the rest is not valid base64 (or decodes to nothing).
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode()


@lru_cache(maxsize=4096)
def _keyed(secret: str) -> tuple[hmac.HMAC, hmac.HMAC]:
    """HMAC-SHA256 states keyed for the seed and the standard scheme; never updated, only copied."""
    return (
        hmac.new(secret.encode(), digestmod=hashlib.sha256),
        hmac.new(standard_key(secret), digestmod=hashlib.sha256),
    )


def _seed_hex(body: bytes, secret: str) -> str:
    mac = _keyed(secret)[0].copy()
    mac.update(body)
    return mac.hexdigest()


def _standard_b64(prefix: bytes, body: bytes, secret: str) -> str:
    mac = _keyed(secret)[1].copy()
    mac.update(prefix)
    mac.update(body)
    return base64.b64encode(mac.digest()).decode("ascii")


def seed_signature(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over the raw body, keyed with the whole secret as UTF-8."""
    return _SEED_PREFIX + _seed_hex(body, secret)


def standard_signature(msg_id: str, timestamp_s: int, body: bytes, secret: str) -> str:
    """``v1,<base64>``: HMAC-SHA256 over ``f"{msg_id}.{timestamp_s}."`` + body with :func:`standard_key`."""
    return _STANDARD_VERSION + _standard_b64(f"{msg_id}.{timestamp_s}.".encode(), body, secret)


def signature_headers(
    *, webhook_id: str, event_type: str, timestamp_s: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The identity and signature headers of one delivery attempt.

    ``secrets`` are the unexpired secrets, newest first.  ``X-Webhook-Signature`` uses the newest,
    ``X-Webhook-Signature-Previous`` (only with two or more) the next one, and
    ``webhook-signature`` carries one ``v1,`` signature per secret.  ``Content-Type`` and
    ``User-Agent`` are the caller's.  Raises :class:`ValueError` without a secret: a delivery
    is never sent unsigned.
    """
    if not secrets:
        raise ValueError("a delivery needs at least one secret to be signed")
    prefix = f"{webhook_id}.{timestamp_s}.".encode()
    headers = {
        "X-Webhook-Signature": _SEED_PREFIX + _seed_hex(body, secrets[0]),
    }
    if len(secrets) > 1:
        headers["X-Webhook-Signature-Previous"] = _SEED_PREFIX + _seed_hex(body, secrets[1])
    headers["X-Webhook-Id"] = webhook_id
    headers["X-Webhook-Event-Type"] = event_type
    headers["webhook-id"] = webhook_id
    headers["webhook-timestamp"] = str(timestamp_s)
    headers["webhook-signature"] = " ".join(
        _STANDARD_VERSION + _standard_b64(prefix, body, secret) for secret in secrets
    )
    return headers
