"""Verification of a delivery on the partner's side.

Imports only the standard library and the project's exception tree: no Kafka, no settings.
A partner's endpoint calls :func:`verify_webhook` with the raw request body (the exact bytes
received, before any JSON parsing), the request headers and its secret(s)::

    from processors.webhooks.verify import WebhookVerificationError, verify_webhook

    try:
        verify_webhook(raw_body, request.headers, [current_secret, previous_secret])
    except WebhookVerificationError as exc:
        return 400, exc.reason

By default the Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) are required and checked, timestamp window included: a request stripped
of them is refused, so nobody can downgrade a delivery to the older scheme.  The seed scheme
(``X-Webhook-Signature`` / ``X-Webhook-Signature-Previous``) signs the body only and cannot
refuse a replayed request; it is checked only when asked (``allow_seed=True``), for a receiver
that cannot read the timestamped headers and accepts that replays go through.  Every
comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from processors.errors import ProcessorsError
from processors.webhooks.signing import standard_key

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "WebhookVerificationError",
    "verify_seed_signature",
    "verify_standard",
    "verify_webhook",
]

DEFAULT_TOLERANCE_S: Final = 300
"""How far (either way) ``webhook-timestamp`` may be from the receiver's clock."""

_ID: Final = "webhook-id"
_TIMESTAMP: Final = "webhook-timestamp"
_SIGNATURE: Final = "webhook-signature"
_SEED: Final = "x-webhook-signature"
_SEED_PREVIOUS: Final = "x-webhook-signature-previous"
_SEED_PREFIX: Final = "sha256="
_MAX_TIMESTAMP_DIGITS: Final = 12


class WebhookVerificationError(ProcessorsError):
    """The delivery is not authentic or not fresh; ``reason`` says why (never a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _secret_list(secrets: str | Sequence[str]) -> list[str]:
    listed = [secrets] if isinstance(secrets, str) else list(secrets)
    if not listed or any(not s for s in listed):
        raise ValueError("verification needs at least one non-empty secret")
    return listed


def _now_s(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.timestamp()
    return float(now)


def _seed_digest(body: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def verify_seed_signature(payload: bytes | str, signature: str, secret: str) -> bool:
    """Whether ``signature`` (``sha256=<hex>``) is the HMAC-SHA256 of ``payload`` under ``secret``.

    ``payload`` is the raw body; a ``str`` is taken as its UTF-8 encoding.  Constant-time.
    """
    body = payload.encode() if isinstance(payload, str) else payload
    expected = (_SEED_PREFIX + _seed_digest(body, secret).hex()).encode()
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


def _check_timestamp(timestamp: str | int, *, tolerance_s: int, now: datetime | float | None) -> int:
    if isinstance(timestamp, int):
        value = timestamp
    else:
        text = timestamp.strip()
        if not text.isascii() or not text.isdigit() or len(text) > _MAX_TIMESTAMP_DIGITS:
            raise WebhookVerificationError("malformed webhook-timestamp: expected unix seconds")
        value = int(text)
    current = _now_s(now)
    if value < current - tolerance_s:
        raise WebhookVerificationError(f"stale webhook-timestamp: more than {tolerance_s} s old")
    if value > current + tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp more than {tolerance_s} s in the future")
    return value


def _standard_candidates(signature_header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` header; other versions are ignored."""
    entries = signature_header.split()
    if not entries:
        raise WebhookVerificationError("empty webhook-signature header")
    candidates: list[bytes] = []
    versioned = 0
    for entry in entries:
        version, sep, value = entry.partition(",")
        if not sep:
            continue
        versioned += 1
        if version != "v1":
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not versioned:
        raise WebhookVerificationError("malformed webhook-signature header: expected 'v1,<base64>' entries")
    return candidates


def verify_standard(
    body: bytes,
    *,
    msg_id: str,
    timestamp: str | int,
    signature_header: str,
    secrets: str | Sequence[str],
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: datetime | float | None = None,
) -> None:
    """Check a Standard Webhooks signature; raise :class:`WebhookVerificationError` when it fails.

    ``timestamp`` must be within ``tolerance_s`` of ``now`` (default: the current time) and one
    ``v1,`` entry of ``signature_header`` must match any of ``secrets``.
    """
    keys = _secret_list(secrets)
    if not msg_id:
        raise WebhookVerificationError("missing header webhook-id")
    ts = _check_timestamp(timestamp, tolerance_s=tolerance_s, now=now)
    candidates = _standard_candidates(signature_header)
    signed = f"{msg_id}.{ts}.".encode() + body
    matched = False
    for secret in keys:
        expected = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
        for candidate in candidates:
            # No early exit: the work done does not depend on which pair matches.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no webhook-signature entry matches a known secret")


def _verify_seed_headers(body: bytes, signatures: list[str], keys: list[str]) -> None:
    for signature in signatures:
        if not signature.strip().startswith(_SEED_PREFIX):
            raise WebhookVerificationError("malformed X-Webhook-Signature: expected 'sha256=<hex>'")
    matched = False
    for secret in keys:
        for signature in signatures:
            matched |= verify_seed_signature(body, signature, secret)
    if not matched:
        raise WebhookVerificationError("no X-Webhook-Signature matches a known secret")


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise WebhookVerificationError(f"missing header {name}")
    return value


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: datetime | float | None = None,
    allow_seed: bool = False,
) -> None:
    """Check a delivery; raise :class:`WebhookVerificationError` with the reason when it fails.

    ``body`` is the raw request body; header names are matched case-insensitively; ``secrets``
    is one secret or several (during a rotation, hold both the new and the old one).  With any
    Standard Webhooks header present, all three are required and checked with
    :func:`verify_standard`; without any, they are required unless ``allow_seed`` is true, when
    ``X-Webhook-Signature`` and ``X-Webhook-Signature-Previous`` are checked with the seed scheme
    (no timestamp: a replayed request passes).
    """
    keys = _secret_list(secrets)
    lowered = {name.lower(): value for name, value in headers.items()}
    if not allow_seed or any(name in lowered for name in (_ID, _TIMESTAMP, _SIGNATURE)):
        verify_standard(
            body,
            msg_id=_required(lowered, _ID),
            timestamp=_required(lowered, _TIMESTAMP),
            signature_header=_required(lowered, _SIGNATURE),
            secrets=keys,
            tolerance_s=tolerance_s,
            now=now,
        )
        return
    seed = [lowered[name] for name in (_SEED, _SEED_PREVIOUS) if lowered.get(name, "").strip()]
    if not seed:
        raise WebhookVerificationError("missing header webhook-signature or X-Webhook-Signature")
    _verify_seed_headers(body, seed, keys)
