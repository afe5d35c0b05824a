"""Partner API keys: generation, hashing, verification.

A key looks like ``pk_live_k3x9q2ma_<43 characters>``:

* ``pk_live_`` marks a partner key (the API tells it from the operator token by this);
* ``k3x9q2ma`` is the key id (8 lowercase letters or digits): the visible part, shown in
  listings, logs and the CLI, and the lookup key in the registry.  It is not secret;
* the rest is ``secrets.token_urlsafe(32)``: 256 random bits, the secret part.

Only a digest is stored: ``sha256:`` and the hex SHA-256 of the whole key.  A plain,
unsalted hash is the right tool here, and a slow password hash (bcrypt, scrypt, Argon2) would
add nothing: those exist to make guessing a *low-entropy* human password expensive, whereas a
key with 256 random bits cannot be found by guessing whatever the hash costs, and a
pre-computed table for a 2^256 space cannot exist.  A fast hash also keeps each request's check
at microseconds instead of the tens of milliseconds a password hash would cost every call.

A key is shown once, when it is made; it cannot be read back from the digest.  Comparisons of
digests are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

__all__ = [
    "DIGEST_PATTERN",
    "KEY_ID_PATTERN",
    "KEY_PREFIX",
    "IssuedKey",
    "generate_key",
    "key_digest",
    "key_id_of",
    "looks_like_partner_key",
    "verify_key",
]

KEY_PREFIX: Final = "pk_live_"
KEY_ID_CHARS: Final = 8
KEY_ID_PATTERN: Final = r"^[a-z0-9]{8}$"
SECRET_BYTES: Final = 32
"""Random bytes of the secret part: 256 bits."""
DIGEST_PATTERN: Final = r"^sha256:[0-9a-f]{64}$"

_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_CHARS: Final = 43
"""Length of ``token_urlsafe(32)``: 32 bytes in unpadded base64url."""
_KEY = re.compile(rf"{KEY_PREFIX}([a-z0-9]{{{KEY_ID_CHARS}}})_[A-Za-z0-9_-]{{{_SECRET_CHARS}}}")
_UNKNOWN_DIGEST: Final = "sha256:" + "0" * 64
"""Compared against when no key has the offered id, so both paths do the same work."""


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: the key itself (shown once), its id and its digest (stored)."""

    key_id: str
    key: SecretStr
    digest: str

    @property
    def prefix(self) -> str:
        """``pk_live_<id>``: what identifies the key wherever it is shown."""
        return KEY_PREFIX + self.key_id


def generate_key() -> IssuedKey:
    """A new key: a random id and 256 random bits."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(KEY_ID_CHARS))
    token = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    assert _KEY.fullmatch(token) is not None
    return IssuedKey(key_id=key_id, key=SecretStr(token), digest=key_digest(token))


def key_digest(key: str) -> str:
    """``sha256:<hex>`` of the whole key (see the module docstring for why SHA-256)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_partner_key(token: str) -> bool:
    """Whether ``token`` is meant as a partner key (starts with ``pk_``), valid or not."""
    return token.startswith("pk_")


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key; None when ``key`` is not one."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match is not None else None


def verify_key(key: str, digest: str | None) -> bool:
    """Whether ``key`` hashes to ``digest``, compared in constant time.

    ``digest`` None (no key has the offered id) compares against a digest nothing hashes to,
    so an unknown id costs what a known one does.
    """
    expected = (digest if digest is not None else _UNKNOWN_DIGEST).encode("ascii")
    matched = hmac.compare_digest(key_digest(key).encode("ascii"), expected)
    return matched and digest is not None
