"""Webhook secrets: generation, validation, AES-256-GCM at rest, stored form and the active set."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from processors.errors import ConfigError, DecodeError, ProcessorsError
from processors.webhooks.secrets import (
    InvalidSecret,
    SecretBox,
    SecretDecryptFailed,
    StoredSecret,
    active_secrets,
    generate_secret,
    validate_secret,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
KEY_B64 = base64.b64encode(KEY).decode()
SUB = "sub_0001"
PLAIN = "whsec_" + base64.b64encode(b"\x07" * 32).decode()
T0 = datetime(2024, 6, 10, 6, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- generation and validation


def test_generated_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert isinstance(first, SecretStr)
    value = first.get_secret_value()
    assert value.startswith("whsec_")
    assert len(base64.b64decode(value[6:], validate=True)) == 32
    assert value != second.get_secret_value()
    assert value not in repr(first)
    assert value not in str(first)
    validate_secret(value)


@pytest.mark.parametrize(
    "value",
    [
        "a" * 24,
        "b" * 256,
        "Partner!Secret#With$Symbols~2024",
        "whsec_" + base64.b64encode(b"k" * 24).decode(),
    ],
)
def test_acceptable_secrets(value: str) -> None:
    validate_secret(value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a" * 23, "at least 24"),
        ("b" * 257, "at most 256"),
        ("partner secret with spaces", "whitespace"),
        ("partner-secret\twith-a-tab-inside", "whitespace"),
        ("partner-secret-with-newline\n", "whitespace"),
        ("partner-sécret-non-ascii-0123", "printable ASCII"),
        ("partner-secret-\x01-control-char", "printable ASCII"),
        ("whsec_" + base64.b64encode(b"k" * 20).decode(), "at least 24 bytes"),
        # not strict standard base64: signed as raw text, no Standard Webhooks library could verify
        ("whsec_this-is-not-base64-but-long-enough", "standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("="), "standard base64"),
    ],
)
def test_unacceptable_secrets_say_why_without_the_value(value: str, words: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        validate_secret(value)
    assert words in info.value.reason
    assert value not in str(info.value)
    assert isinstance(info.value, ProcessorsError)


# --------------------------------------------------------------------------- SecretBox


def test_round_trip_and_token_format() -> None:
    box = SecretBox(KEY)
    token = box.encrypt(SecretStr(PLAIN), associated=SUB)
    assert token.startswith("v1:")
    assert re.fullmatch(r"v1:[A-Za-z0-9_\-]+=*", token)
    blob = base64.urlsafe_b64decode(token[3:])
    assert len(blob) == 12 + len(PLAIN) + 16
    assert PLAIN not in token
    opened = box.decrypt(token, associated=SUB)
    assert isinstance(opened, SecretStr)
    assert opened.get_secret_value() == PLAIN
    assert box.decrypt(box.encrypt(PLAIN, associated=SUB), associated=SUB).get_secret_value() == PLAIN


def test_token_is_aes_256_gcm_with_the_subscription_as_associated_data() -> None:
    token = SecretBox(KEY).encrypt(PLAIN, associated=SUB)
    blob = base64.urlsafe_b64decode(token[3:])
    # Opened with the cryptography primitive directly, not through the box.
    assert AESGCM(KEY).decrypt(blob[:12], blob[12:], SUB.encode()) == PLAIN.encode()


def test_each_encryption_uses_a_fresh_nonce() -> None:
    box = SecretBox(KEY)
    assert box.encrypt(PLAIN, associated=SUB) != box.encrypt(PLAIN, associated=SUB)


def tamper(token: str, index: int) -> str:
    blob = bytearray(base64.urlsafe_b64decode(token[3:]))
    blob[index] ^= 0x01
    return "v1:" + base64.urlsafe_b64encode(bytes(blob)).decode()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: tamper(t, 0), id="nonce"),
        pytest.param(lambda t: tamper(t, 20), id="ciphertext"),
        pytest.param(lambda t: tamper(t, -1), id="tag"),
        pytest.param(lambda t: t[:-8], id="truncated"),
        pytest.param(lambda t: "v1:" + base64.urlsafe_b64encode(b"short").decode(), id="too-short"),
        pytest.param(lambda t: "v2:" + t[3:], id="version"),
        pytest.param(lambda t: t[3:], id="no-prefix"),
        pytest.param(lambda t: "v1:***not base64***", id="not-base64"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_tampered_tokens_fail(mutate: object) -> None:
    box = SecretBox(KEY)
    token = mutate(box.encrypt(PLAIN, associated=SUB))  # type: ignore[operator]
    with pytest.raises(SecretDecryptFailed) as info:
        box.decrypt(token, associated=SUB)
    assert PLAIN not in str(info.value)
    assert info.value.__cause__ is None


def test_wrong_associated_data_fails() -> None:
    box = SecretBox(KEY)
    token = box.encrypt(PLAIN, associated=SUB)
    with pytest.raises(SecretDecryptFailed):
        box.decrypt(token, associated="sub_0002")


def test_wrong_key_fails() -> None:
    token = SecretBox(KEY).encrypt(PLAIN, associated=SUB)
    with pytest.raises(SecretDecryptFailed):
        SecretBox(OTHER_KEY).decrypt(token, associated=SUB)


def test_ephemeral_boxes_do_not_share_a_key() -> None:
    first, second = SecretBox.ephemeral(), SecretBox.ephemeral()
    token = first.encrypt(PLAIN, associated=SUB)
    assert first.decrypt(token, associated=SUB).get_secret_value() == PLAIN
    with pytest.raises(SecretDecryptFailed):
        second.decrypt(token, associated=SUB)


def test_encryption_key_rotation() -> None:
    old_token = SecretBox(OTHER_KEY).encrypt(PLAIN, associated=SUB)
    rotated = SecretBox(KEY, previous_keys=(OTHER_KEY,))
    assert rotated.decrypt(old_token, associated=SUB).get_secret_value() == PLAIN
    new_token = rotated.encrypt(PLAIN, associated=SUB)
    assert SecretBox(KEY).decrypt(new_token, associated=SUB).get_secret_value() == PLAIN
    with pytest.raises(SecretDecryptFailed):
        SecretBox(OTHER_KEY).decrypt(new_token, associated=SUB)


@pytest.mark.parametrize("key", [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33])
def test_key_must_be_32_bytes(key: bytes) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretBox(key)
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretBox(KEY, previous_keys=(key,))


def test_repr_hides_the_key() -> None:
    text = repr(SecretBox(KEY, previous_keys=(OTHER_KEY,)))
    assert text == "SecretBox(keys=2)"
    for secret in (KEY, OTHER_KEY):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
        assert repr(secret) not in text


# --------------------------------------------------------------------------- from_env


def test_from_env_reads_the_key() -> None:
    box = SecretBox.from_env({"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": f" {KEY_B64}\n"})
    token = box.encrypt(PLAIN, associated=SUB)
    assert SecretBox(KEY).decrypt(token, associated=SUB).get_secret_value() == PLAIN


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_WEBHOOK_ENCRYPTION_KEY", KEY_B64)
    monkeypatch.delenv("PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS", raising=False)
    token = SecretBox.from_env().encrypt(PLAIN, associated=SUB)
    assert SecretBox(KEY).decrypt(token, associated=SUB).get_secret_value() == PLAIN


def test_from_env_with_another_variable_and_previous_keys() -> None:
    other_b64 = base64.b64encode(OTHER_KEY).decode()
    old_token = SecretBox(OTHER_KEY).encrypt(PLAIN, associated=SUB)
    box = SecretBox.from_env({"MY_KEY": KEY_B64, "MY_KEY_PREVIOUS": f"{other_b64}, "}, var="MY_KEY")
    assert box.decrypt(old_token, associated=SUB).get_secret_value() == PLAIN
    assert repr(box) == "SecretBox(keys=2)"


@pytest.mark.parametrize("env", [{}, {"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": "  "}])
def test_from_env_missing_says_how_to_make_a_key(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        SecretBox.from_env(env)
    message = str(info.value)
    assert "PROCESSORS_WEBHOOK_ENCRYPTION_KEY is not set" in message
    assert "os.urandom(32)" in message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not*base64*at*all-but-secretish", "not valid base64"),
        (base64.b64encode(b"s" * 16).decode(), "exactly 32 bytes"),
        (base64.b64encode(b"s" * 48).decode(), "exactly 32 bytes"),
        (base64.urlsafe_b64encode(b"\xff" * 32).decode(), "not valid base64"),
    ],
)
def test_from_env_bad_value_is_named_but_never_shown(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        SecretBox.from_env({"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": value})
    message = str(info.value)
    assert "PROCESSORS_WEBHOOK_ENCRYPTION_KEY" in message
    assert words in message
    assert value not in message
    assert "python -c" in message
    assert info.value.__cause__ is None


def test_from_env_bad_previous_key_names_its_variable() -> None:
    env = {"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": KEY_B64, "PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS": "abc"}
    with pytest.raises(ConfigError, match="PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS"):
        SecretBox.from_env(env)


# --------------------------------------------------------------------------- StoredSecret, active_secrets


def stored(box: SecretBox, plain: str, created: datetime, expires: datetime | None = None) -> StoredSecret:
    return StoredSecret(box.encrypt(plain, associated=SUB), created, expires)


def test_stored_secret_json_round_trip() -> None:
    secret = StoredSecret("v1:abc", T0, T0 + timedelta(hours=24))
    data = secret.to_json()
    assert data == {
        "ciphertext": "v1:abc",
        "created_at": "2024-06-10T06:00:00.000000Z",
        "expires_at": "2024-06-11T06:00:00.000000Z",
    }
    assert StoredSecret.from_json(data) == secret
    current = StoredSecret("v1:def", T0)
    assert current.to_json()["expires_at"] is None
    assert StoredSecret.from_json(current.to_json()) == current


def test_stored_secret_times_are_utc() -> None:
    secret = StoredSecret("v1:abc", datetime(2024, 6, 10, 8, 0, tzinfo=timezone(timedelta(hours=2))))
    assert secret.created_at == T0
    assert secret.created_at.tzinfo is UTC
    assert StoredSecret.from_json({"ciphertext": "v1:x", "created_at": "2024-06-10T08:00:00+02:00"}) == (
        StoredSecret("v1:x", T0)
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        StoredSecret("v1:abc", datetime(2024, 6, 10, 6, 0))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"created_at": "2024-06-10T06:00:00Z"}, "ciphertext"),
        ({"ciphertext": "", "created_at": "2024-06-10T06:00:00Z"}, "ciphertext"),
        ({"ciphertext": "v1:x"}, "created_at"),
        ({"ciphertext": "v1:x", "created_at": 1718000000}, "created_at"),
        ({"ciphertext": "v1:x", "created_at": "yesterday"}, "created_at"),
        ({"ciphertext": "v1:x", "created_at": "2024-06-10T06:00:00"}, "created_at"),
        ({"ciphertext": "v1:x", "created_at": "2024-06-10T06:00:00Z", "expires_at": "soon"}, "expires_at"),
    ],
)
def test_stored_secret_from_bad_json(data: dict[str, object], field: str) -> None:
    with pytest.raises(DecodeError, match=field):
        StoredSecret.from_json(data)


def test_stored_secret_repr_hides_the_ciphertext() -> None:
    token = SecretBox(KEY).encrypt(PLAIN, associated=SUB)
    text = repr(StoredSecret(token, T0))
    assert token not in text
    assert "created_at" in text


def test_active_secrets_newest_first_without_expired_ones() -> None:
    box = SecretBox(KEY)
    now = T0 + timedelta(days=3)
    secrets = [
        stored(box, "oldest-expired-secret-0000", T0, T0 + timedelta(days=1)),
        stored(box, "current-secret-22222222222", T0 + timedelta(days=2, hours=12)),
        stored(box, "previous-secret-1111111111", T0 + timedelta(days=1), now + timedelta(hours=12)),
        stored(box, "expires-right-now-33333333", T0 + timedelta(hours=1), now),
    ]
    active = active_secrets(secrets, box, associated=SUB, now=now)
    assert [s.get_secret_value() for s in active] == [
        "current-secret-22222222222",
        "previous-secret-1111111111",
    ]
    assert all(isinstance(s, SecretStr) for s in active)
    later = active_secrets(secrets, box, associated=SUB, now=now + timedelta(hours=12))
    assert [s.get_secret_value() for s in later] == ["current-secret-22222222222"]


def test_active_secrets_refuse_what_they_cannot_decrypt() -> None:
    box = SecretBox(KEY)
    secrets = [stored(box, PLAIN, T0)]
    with pytest.raises(SecretDecryptFailed):
        active_secrets(secrets, box, associated="sub_other", now=T0)
    with pytest.raises(SecretDecryptFailed):
        active_secrets(secrets, SecretBox(OTHER_KEY), associated=SUB, now=T0)


def test_active_secrets_need_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        active_secrets([], SecretBox(KEY), associated=SUB, now=datetime(2024, 6, 10))
