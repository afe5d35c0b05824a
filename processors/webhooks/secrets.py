"""Partner webhook secrets: generation, validation of partner-given ones, encryption at rest.

Secrets travel as :class:`~pydantic.SecretStr` so they never reach a log line or a repr.  In the
subscriptions topic each secret is a :class:`StoredSecret` whose ciphertext is AES-256-GCM
under the key of ``PROCESSORS_WEBHOOK_ENCRYPTION_KEY`` with the subscription id as associated
data: a ciphertext copied onto another subscription does not decrypt.

Token format: ``"v1:" + urlsafe-base64(nonce (12 bytes) + ciphertext + tag (16 bytes))``.

Rotating the encryption key: start with ``SecretBox(new_key, previous_keys=(old_key,))`` (or set
``PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS`` to the old key's base64, comma-separated for
several).  Tokens made under any of the keys decrypt; new tokens use the new key.  Keep the old
key until every stored secret has been written again.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from secrets import token_bytes
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from processors.errors import ConfigError, DecodeError, ProcessorsError, Retriable
from processors.utc import to_utc
from processors.webhooks.signing import SECRET_PREFIX

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "InvalidSecret",
    "SecretBox",
    "SecretDecryptFailed",
    "StoredSecret",
    "active_secrets",
    "generate_secret",
    "validate_secret",
]

ENCRYPTION_KEY_ENV: Final = "PROCESSORS_WEBHOOK_ENCRYPTION_KEY"
MIN_SECRET_CHARS: Final = 24
MAX_SECRET_CHARS: Final = 256
MIN_KEY_BYTES: Final = 24
"""A ``whsec_`` secret's base64 part must decode to at least this many bytes."""
GENERATED_KEY_BYTES: Final = 32

_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_CIPHERTEXT_VERSION: Final = "v1:"
_MAKE_KEY: Final = 'python -c "import base64,os;print(base64.b64encode(os.urandom(32)).decode())"'


class InvalidSecret(ProcessorsError):
    """A partner-given secret is not acceptable; ``reason`` is safe to show (never the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecretDecryptFailed(Retriable):
    """A stored secret cannot be decrypted: wrong key, wrong subscription or an altered token.

    Retriable: the usual cause is the encryption-key configuration (a rotated key whose old
    value is not among the previous keys), which an operator fixes; the delivery waits in the
    retry tiers meanwhile, and is never sent unsigned."""


def generate_secret() -> SecretStr:
    """A new secret: ``whsec_`` + standard base64 of 32 random bytes."""
    return SecretStr(SECRET_PREFIX + base64.b64encode(token_bytes(GENERATED_KEY_BYTES)).decode("ascii"))


def validate_secret(value: str) -> None:
    """Accept a partner-given secret or raise :class:`InvalidSecret` saying why.

    24..256 printable ASCII characters, no whitespace.  A ``whsec_`` secret is Standard
    Webhooks key material: the rest must be strict standard base64 (what the Standard Webhooks
    libraries decode) of at least 24 bytes.  Anything else after ``whsec_`` would be signed with
    as raw text, which no partner's Standard Webhooks library could verify.
    """
    if len(value) < MIN_SECRET_CHARS:
        raise InvalidSecret(f"a secret must be at least {MIN_SECRET_CHARS} characters")
    if len(value) > MAX_SECRET_CHARS:
        raise InvalidSecret(f"a secret must be at most {MAX_SECRET_CHARS} characters")
    if not all("!" <= ch <= "~" for ch in value):
        raise InvalidSecret("a secret must be printable ASCII without spaces or other whitespace")
    if value.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecret(
                "a 'whsec_' secret must be standard base64 after the prefix (A-Z, a-z, 0-9, '+', '/', "
                "'=' padding), as Standard Webhooks libraries decode it; or choose a secret without "
                "the prefix"
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise InvalidSecret(
                f"a 'whsec_' secret must carry the base64 of at least {MIN_KEY_BYTES} bytes after the prefix"
            )


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    try:
        return to_utc(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


class SecretBox:
    """AES-256-GCM encryption of secrets at rest; the key never appears in a repr.

    ``key`` encrypts and decrypts; ``previous_keys`` only decrypt (encryption-key rotation).
    """

    __slots__ = ("_ciphers",)

    def __init__(self, key: bytes, *, previous_keys: Sequence[bytes] = ()) -> None:
        for candidate in (key, *previous_keys):
            if not isinstance(candidate, bytes) or len(candidate) != _KEY_BYTES:
                raise ConfigError(f"a webhook encryption key must be exactly {_KEY_BYTES} bytes")
        self._ciphers: tuple[AESGCM, ...] = tuple(AESGCM(k) for k in (key, *previous_keys))

    def __repr__(self) -> str:
        return f"SecretBox(keys={len(self._ciphers)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, var: str = ENCRYPTION_KEY_ENV) -> SecretBox:
        """The box keyed by ``var`` (standard base64 of exactly 32 bytes) in ``env`` (default: os.environ).

        ``{var}_PREVIOUS`` may list older keys (comma-separated) that still decrypt.  Raises
        :class:`ConfigError` naming the variable and how to make a key; the value is never shown.
        """
        source = os.environ if env is None else env
        raw = source.get(var, "").strip()
        if not raw:
            raise ConfigError(f"{var} is not set; make a key with: {_MAKE_KEY}")
        key = _decode_key(raw, var)
        previous_var = f"{var}_PREVIOUS"
        previous = [
            _decode_key(part.strip(), previous_var)
            for part in source.get(previous_var, "").split(",")
            if part.strip()
        ]
        return cls(key, previous_keys=previous)

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A box with a random key, for the demo and tests.

        The key lives only in this process: secrets stored under it cannot be read after a restart.
        """
        return cls(token_bytes(_KEY_BYTES))

    def encrypt(self, plaintext: SecretStr | str, *, associated: str) -> str:
        """``"v1:" + urlsafe-base64(nonce + ciphertext)`` bound to ``associated`` (the subscription id)."""
        text = plaintext.get_secret_value() if isinstance(plaintext, SecretStr) else plaintext
        nonce = token_bytes(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, text.encode(), associated.encode())
        return _CIPHERTEXT_VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str, *, associated: str) -> SecretStr:
        """The secret sealed in ``token``; :class:`SecretDecryptFailed` when it cannot be opened."""
        failed = SecretDecryptFailed(
            "a stored webhook secret cannot be decrypted (wrong encryption key, wrong subscription "
            "or altered token)"
        )
        if not token.startswith(_CIPHERTEXT_VERSION):
            raise failed
        try:
            blob = base64.b64decode(token[len(_CIPHERTEXT_VERSION) :], altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise failed from None
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise failed
        nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        data = associated.encode()
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, data)
            except InvalidTag:
                continue
            try:
                return SecretStr(plain.decode())
            except UnicodeDecodeError:
                raise failed from None
        raise failed


def _decode_key(raw: str, var: str) -> bytes:
    # ``from None``: the decoder's message is not needed and the value must not travel on.
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{var} is not valid base64; make a key of 32 random bytes with: {_MAKE_KEY}"
        ) from None
    if len(key) != _KEY_BYTES:
        raise ConfigError(
            f"{var} must be the base64 of exactly {_KEY_BYTES} bytes; make one with: {_MAKE_KEY}"
        )
    return key


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise DecodeError(f"stored secret: {name} must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError(f"stored secret: {name} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise DecodeError(f"stored secret: {name} has no time zone")
    try:
        return to_utc(parsed)
    except ValueError as exc:
        raise DecodeError(f"stored secret: {name} {exc}") from None


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """One encrypted secret of a subscription; ``expires_at`` None = the current secret."""

    ciphertext: str = field(repr=False)
    created_at: datetime
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "created_at", _aware(self.created_at, "created_at"))
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", _aware(self.expires_at, "expires_at"))

    def active(self, now: datetime) -> bool:
        """Whether this secret still signs at ``now``."""
        return self.expires_at is None or now < self.expires_at

    def to_json(self) -> dict[str, str | None]:
        """JSON-ready form: ``{"ciphertext", "created_at", "expires_at"}``, times ISO-8601 UTC ``Z``."""
        return {
            "ciphertext": self.ciphertext,
            "created_at": _utc_iso(self.created_at),
            "expires_at": None if self.expires_at is None else _utc_iso(self.expires_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> StoredSecret:
        """The inverse of :meth:`to_json`; :class:`DecodeError` names the bad field."""
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext:
            raise DecodeError("stored secret: ciphertext must be a non-empty string")
        expires = data.get("expires_at")
        return cls(
            ciphertext=ciphertext,
            created_at=_parse_time(data.get("created_at"), "created_at"),
            expires_at=None if expires is None else _parse_time(expires, "expires_at"),
        )


def active_secrets(
    stored: Sequence[StoredSecret], box: SecretBox, *, associated: str, now: datetime
) -> list[SecretStr]:
    """The unexpired secrets of a subscription, decrypted, newest first.

    Raises :class:`SecretDecryptFailed` when one cannot be decrypted: signing with only some of
    a partner's secrets would hide the problem.
    """
    moment = _aware(now, "now")
    alive = sorted((s for s in stored if s.active(moment)), key=lambda s: s.created_at, reverse=True)
    return [box.decrypt(s.ciphertext, associated=associated) for s in alive]
