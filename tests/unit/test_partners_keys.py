"""Partner API keys: their shape, entropy, digest and constant-time verification."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from processors.partners.keys import (
    KEY_PREFIX,
    SECRET_BYTES,
    generate_key,
    key_digest,
    key_id_of,
    looks_like_partner_key,
    verify_key,
)


def test_a_key_has_the_prefix_an_id_and_256_random_bits() -> None:
    issued = generate_key()
    key = issued.key.get_secret_value()

    assert re.fullmatch(r"pk_live_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", key), key
    assert issued.prefix == KEY_PREFIX + issued.key_id
    assert key.startswith(issued.prefix + "_")
    secret = key[len(issued.prefix) + 1 :]
    assert len(base64.urlsafe_b64decode(secret + "=")) == SECRET_BYTES == 32
    assert key_id_of(key) == issued.key_id


def test_keys_and_ids_differ() -> None:
    issued = [generate_key() for _ in range(300)]

    assert len({i.key.get_secret_value() for i in issued}) == 300
    assert len({i.key_id for i in issued}) == 300
    assert len({i.digest for i in issued}) == 300


def test_the_key_is_never_in_its_repr_or_digest() -> None:
    issued = generate_key()
    key = issued.key.get_secret_value()

    assert key not in repr(issued)
    assert key not in str(issued)
    assert key not in issued.digest


def test_the_digest_is_the_sha256_of_the_whole_key() -> None:
    issued = generate_key()
    key = issued.key.get_secret_value()

    assert issued.digest == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert key_digest(key) == issued.digest


def test_verify_accepts_the_key_and_nothing_else() -> None:
    issued = generate_key()
    key = issued.key.get_secret_value()
    other = generate_key()

    assert verify_key(key, issued.digest)
    assert not verify_key(other.key.get_secret_value(), issued.digest)
    assert not verify_key(key[:-1] + ("A" if key[-1] != "A" else "B"), issued.digest)
    assert not verify_key(key, None)
    assert not verify_key("", issued.digest)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    import hmac

    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("processors.partners.keys.hmac.compare_digest", spy)
    issued = generate_key()

    assert verify_key(issued.key.get_secret_value(), issued.digest)
    assert not verify_key(issued.key.get_secret_value(), None)

    assert len(compared) == 2  # the unknown-id path compares too, against a digest nothing has
    assert compared[0][1] == issued.digest.encode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pk_live_",
        "pk_live_abcd1234",
        "pk_live_ABCD1234_" + "a" * 43,  # the id is lowercase
        "pk_live_abcd123_" + "a" * 44,  # the id is 8 characters
        "pk_live_abcd1234_" + "a" * 42,
        "pk_live_abcd1234_" + "a" * 44,
        "pk_live_abcd1234-" + "a" * 43,
        "pk_test_abcd1234_" + "a" * 43,
        "pk_live_abcd1234_" + "a" * 42 + "=",
        "Bearer pk_live_abcd1234_" + "a" * 43,
    ],
)
def test_malformed_keys_have_no_id(text: str) -> None:
    assert key_id_of(text) is None


def test_partner_keys_are_told_from_other_tokens() -> None:
    assert looks_like_partner_key(generate_key().key.get_secret_value())
    assert looks_like_partner_key("pk_anything")
    assert not looks_like_partner_key("operator-token-0123456789")
    assert not looks_like_partner_key("")
