"""Signing of partner deliveries and the partner-side verifier: pure functions, no server.

Expected values are computed here with hmac/hashlib/base64 from the documented schemes, not by
calling the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from processors.webhooks import verify as verify_module
from processors.webhooks.signing import (
    seed_signature,
    signature_headers,
    standard_key,
    standard_signature,
    webhook_id_for,
)
from processors.webhooks.verify import (
    WebhookVerificationError,
    verify_seed_signature,
    verify_standard,
    verify_webhook,
)

RAW_KEY_NEW = bytes(range(32))
RAW_KEY_OLD = bytes(range(100, 132))
NEW = "whsec_" + base64.b64encode(RAW_KEY_NEW).decode()
OLD = "whsec_" + base64.b64encode(RAW_KEY_OLD).decode()
OTHER = "whsec_" + base64.b64encode(b"\xee" * 32).decode()
MSG_ID = "msg_0123456789abcdef0123456789"
NOW = 1_718_000_000
BODY = (
    b'{"webhook_id":"msg_0123456789abcdef0123456789","event_type":"claim.settled",'
    b'"timestamp":"2024-06-10T06:13:20.000Z","data":{"claim_id":"CLM-1","amount":"1185.50","note":"\xc3\xa9"}}'
)


# --------------------------------------------------------------------------- independent reference


def ref_seed(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def ref_standard(msg_id: str, ts: int, body: bytes, key: bytes) -> str:
    mac = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers_for(
    secrets: list[str], *, body: bytes = BODY, ts: int = NOW, msg_id: str = MSG_ID
) -> dict[str, str]:
    return signature_headers(
        webhook_id=msg_id, event_type="claim.settled", timestamp_s=ts, body=body, secrets=secrets
    )


def seed_only(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith("webhook-")}


def reason_of(body: bytes, headers: dict[str, str], secrets: str | list[str], **kwargs: object) -> str:
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(body, headers, secrets, now=NOW, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


# --------------------------------------------------------------------------- sender side


def test_webhook_id_is_msg_and_26_hex_of_sha256() -> None:
    expected = "msg_" + hashlib.sha256(b"sub_42:5f0c7a8e-0000-4000-8000-000000000001").hexdigest()[:26]
    got = webhook_id_for("sub_42", "5f0c7a8e-0000-4000-8000-000000000001")
    assert got == expected
    assert re.fullmatch(r"msg_[0-9a-f]{26}", got)
    assert webhook_id_for("sub_42", "5f0c7a8e-0000-4000-8000-000000000001") == got
    assert webhook_id_for("sub_43", "5f0c7a8e-0000-4000-8000-000000000001") != got


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        (NEW, RAW_KEY_NEW),
        ("plain-partner-secret-0123456789", b"plain-partner-secret-0123456789"),
        ("whsec_not*base64*at*all!!", b"whsec_not*base64*at*all!!"),
        ("whsec_", b"whsec_"),
        ("sécret-with-unicode", "sécret-with-unicode".encode()),
    ],
)
def test_standard_key(secret: str, key: bytes) -> None:
    assert standard_key(secret) == key


def test_seed_signature_known_answer() -> None:
    assert seed_signature(BODY, NEW) == ref_seed(BODY, NEW)
    # The seed keys with the whole string, the standard scheme with the decoded part.
    assert seed_signature(BODY, NEW) != "sha256=" + hmac.new(RAW_KEY_NEW, BODY, hashlib.sha256).hexdigest()


def test_standard_signature_known_answer() -> None:
    assert standard_signature(MSG_ID, NOW, BODY, NEW) == ref_standard(MSG_ID, NOW, BODY, RAW_KEY_NEW)
    plain = "plain-partner-secret-0123456789"
    assert standard_signature(MSG_ID, NOW, BODY, plain) == ref_standard(MSG_ID, NOW, BODY, plain.encode())


def test_standard_signature_matches_the_published_standard_webhooks_vector() -> None:
    signature = standard_signature(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_with_one_secret() -> None:
    headers = headers_for([NEW])
    assert headers == {
        "X-Webhook-Signature": ref_seed(BODY, NEW),
        "X-Webhook-Id": MSG_ID,
        "X-Webhook-Event-Type": "claim.settled",
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": ref_standard(MSG_ID, NOW, BODY, RAW_KEY_NEW),
    }


def test_headers_during_a_rotation_sign_with_both_newest_first() -> None:
    headers = headers_for([NEW, OLD])
    assert headers["X-Webhook-Signature"] == ref_seed(BODY, NEW)
    assert headers["X-Webhook-Signature-Previous"] == ref_seed(BODY, OLD)
    assert headers["webhook-signature"] == (
        ref_standard(MSG_ID, NOW, BODY, RAW_KEY_NEW) + " " + ref_standard(MSG_ID, NOW, BODY, RAW_KEY_OLD)
    )


def test_headers_with_three_secrets_name_the_next_newest_as_previous() -> None:
    headers = headers_for([NEW, OLD, OTHER])
    assert headers["X-Webhook-Signature-Previous"] == ref_seed(BODY, OLD)
    assert len(headers["webhook-signature"].split(" ")) == 3
    assert headers["webhook-signature"].split(" ")[2] == ref_standard(
        MSG_ID, NOW, BODY, base64.b64decode(OTHER[6:])
    )


def test_headers_change_with_the_attempt_timestamp_only_where_they_should() -> None:
    first, second = headers_for([NEW], ts=NOW), headers_for([NEW], ts=NOW + 5)
    assert first["webhook-id"] == second["webhook-id"]
    assert first["X-Webhook-Signature"] == second["X-Webhook-Signature"]
    assert first["webhook-signature"] != second["webhook-signature"]


def test_no_secret_means_no_delivery() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        headers_for([])


# --------------------------------------------------------------------------- partner side: round trips


@pytest.mark.parametrize("case", [str.lower, str.upper, str.title, lambda s: s])
def test_standard_round_trip_with_any_header_case(case: object) -> None:
    headers = {case(k): v for k, v in headers_for([NEW]).items()}  # type: ignore[operator]
    verify_webhook(BODY, headers, NEW, now=NOW)


def test_seed_round_trip() -> None:
    verify_webhook(BODY, seed_only(headers_for([NEW])), [NEW], now=NOW, allow_seed=True)


@pytest.mark.parametrize("held", [[NEW], [OLD], [NEW, OLD], [OLD, NEW], [OTHER, OLD]])
@pytest.mark.parametrize("scheme", ["standard", "seed"])
def test_rotation_a_verifier_holding_either_secret_passes(held: list[str], scheme: str) -> None:
    headers = headers_for([NEW, OLD])
    verify_webhook(
        BODY, headers if scheme == "standard" else seed_only(headers), held, now=NOW, allow_seed=True
    )


@pytest.mark.parametrize("scheme", ["standard", "seed"])
def test_unknown_secret_fails(scheme: str) -> None:
    headers = headers_for([NEW, OLD])
    reason = reason_of(
        BODY, headers if scheme == "standard" else seed_only(headers), [OTHER], allow_seed=True
    )
    assert "matches" in reason
    assert OTHER not in reason


@pytest.mark.parametrize("scheme", ["standard", "seed"])
def test_tampered_body_fails(scheme: str) -> None:
    headers = headers_for([NEW])
    tampered = BODY.replace(b"1185.50", b"9185.50")
    assert "matches" in reason_of(
        tampered, headers if scheme == "standard" else seed_only(headers), NEW, allow_seed=True
    )


def test_tampered_timestamp_within_tolerance_fails() -> None:
    headers = headers_for([NEW]) | {"webhook-timestamp": str(NOW - 1)}
    assert "matches" in reason_of(BODY, headers, NEW)


def test_tampered_id_fails() -> None:
    headers = headers_for([NEW]) | {"webhook-id": "msg_ffffffffffffffffffffffffff"}
    assert "matches" in reason_of(BODY, headers, NEW)


@pytest.mark.parametrize(("offset_s", "word"), [(-301, "stale"), (-3600, "stale"), (301, "future")])
def test_stale_and_future_timestamps_fail(offset_s: int, word: str) -> None:
    headers = headers_for([NEW], ts=NOW + offset_s)
    assert word in reason_of(BODY, headers, NEW)


@pytest.mark.parametrize("offset_s", [-300, 0, 300])
def test_timestamps_at_the_edge_of_the_tolerance_pass(offset_s: int) -> None:
    verify_webhook(BODY, headers_for([NEW], ts=NOW + offset_s), NEW, now=NOW)


def test_tolerance_and_now_forms() -> None:
    headers = headers_for([NEW], ts=NOW - 60)
    verify_webhook(BODY, headers, NEW, now=datetime.fromtimestamp(NOW, UTC))
    verify_webhook(BODY, headers, NEW, now=datetime.fromtimestamp(NOW, timezone(timedelta(hours=5))))
    verify_webhook(BODY, headers, NEW, now=float(NOW))
    with pytest.raises(WebhookVerificationError, match="stale"):
        verify_webhook(BODY, headers, NEW, now=NOW, tolerance_s=30)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_webhook(BODY, headers, NEW, now=datetime(2024, 6, 10, 6, 13, 20))


def test_default_now_is_the_current_clock() -> None:
    with pytest.raises(WebhookVerificationError, match="stale"):
        verify_webhook(BODY, headers_for([NEW], ts=NOW), NEW)


# --------------------------------------------------------------------------- partner side: refusals


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_partial_standard_headers_name_the_missing_one(missing: str) -> None:
    headers = headers_for([NEW])
    del headers[missing]
    # The seed signature is still there but a partial standard set is not silently downgraded.
    assert reason_of(BODY, headers, NEW) == f"missing header {missing}"


def test_no_signature_header_at_all() -> None:
    reason = reason_of(BODY, {"Content-Type": "application/json"}, NEW)
    assert reason.startswith("missing header")


def test_seed_refused_when_standard_required() -> None:
    assert (
        reason_of(BODY, seed_only(headers_for([NEW])), NEW, allow_seed=False) == "missing header webhook-id"
    )


def test_a_delivery_stripped_of_its_timestamped_headers_is_refused_by_default() -> None:
    """Downgrade: an 11-day-old delivery replayed with only its seed signature."""
    eleven_days_ago = NOW - 11 * 24 * 3600
    old_delivery = seed_only(headers_for([NEW], ts=eleven_days_ago))
    assert reason_of(BODY, old_delivery, NEW) == "missing header webhook-id"
    # and with the timestamped headers kept, the age is what refuses it
    assert "stale" in reason_of(BODY, headers_for([NEW], ts=eleven_days_ago), NEW)


def test_the_seed_scheme_only_when_asked_and_then_replayable() -> None:
    eleven_days_ago = NOW - 11 * 24 * 3600
    verify_webhook(BODY, seed_only(headers_for([NEW], ts=eleven_days_ago)), NEW, now=NOW, allow_seed=True)


@pytest.mark.parametrize("value", ["abc", "1718000000.5", "-1718000000", "+1718000000", "１７１８０００００"])
def test_malformed_timestamp(value: str) -> None:
    headers = headers_for([NEW]) | {"webhook-timestamp": value}
    assert "malformed webhook-timestamp" in reason_of(BODY, headers, NEW)


@pytest.mark.parametrize("value", ["garbage", "sha256=abc", "v1" + "A" * 44])
def test_malformed_standard_signature_header(value: str) -> None:
    headers = headers_for([NEW]) | {"webhook-signature": value}
    assert "malformed webhook-signature" in reason_of(BODY, headers, NEW)


def test_undecodable_or_foreign_version_entries_are_skipped() -> None:
    good = headers_for([NEW])["webhook-signature"]
    verify_webhook(BODY, headers_for([NEW]) | {"webhook-signature": f"v1a,abc v1,%%% {good}"}, NEW, now=NOW)
    only_bad = headers_for([NEW]) | {"webhook-signature": "v1a,abc v1,%%%"}
    assert "matches" in reason_of(BODY, only_bad, NEW)


def test_malformed_seed_header() -> None:
    headers = seed_only(headers_for([NEW])) | {"X-Webhook-Signature": "md5=0123"}
    assert "malformed X-Webhook-Signature" in reason_of(BODY, headers, NEW, allow_seed=True)


def test_secrets_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="secret"):
        verify_webhook(BODY, headers_for([NEW]), [], now=NOW)
    with pytest.raises(ValueError, match="secret"):
        verify_webhook(BODY, headers_for([NEW]), "", now=NOW)


def test_verify_standard_directly() -> None:
    header = headers_for([NEW, OLD])["webhook-signature"]
    verify_standard(BODY, msg_id=MSG_ID, timestamp=NOW, signature_header=header, secrets=OLD, now=NOW)
    verify_standard(BODY, msg_id=MSG_ID, timestamp=str(NOW), signature_header=header, secrets=[NEW], now=NOW)
    with pytest.raises(WebhookVerificationError, match="matches"):
        verify_standard(BODY, msg_id=MSG_ID, timestamp=NOW, signature_header=header, secrets=OTHER, now=NOW)


# --------------------------------------------------------------------------- the seed function


def test_verify_seed_signature_bytes_and_str() -> None:
    text = '{"note":"é"}'
    signature = ref_seed(text.encode(), NEW)
    assert verify_seed_signature(text.encode(), signature, NEW)
    assert verify_seed_signature(text, signature, NEW)
    assert not verify_seed_signature(text, signature, OLD)
    assert not verify_seed_signature(text + " ", signature, NEW)
    assert not verify_seed_signature(text, signature.replace("sha256=", "sha1="), NEW)


def test_verify_seed_signature_with_non_ascii_signature_returns_false() -> None:
    assert not verify_seed_signature(BODY, "sha256=é" + "0" * 63, NEW)


# --------------------------------------------------------------------------- constant time, imports


@pytest.mark.parametrize("scheme", ["standard", "seed"])
def test_the_decision_comes_from_hmac_compare_digest(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = headers_for([NEW])
    headers = headers if scheme == "standard" else seed_only(headers)
    calls: list[tuple[object, object]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr(hmac, "compare_digest", spy)
    # A valid delivery fails when compare_digest says no: no other comparison decides.
    assert "matches" in reason_of(BODY, headers, NEW, allow_seed=True)
    assert calls


def test_verifier_source_compares_signatures_only_with_compare_digest() -> None:
    source = Path(verify_module.__file__).read_text(encoding="utf-8")
    assert "hmac.compare_digest(" in source
    assert not re.search(r"(expected|candidate|signature)\s*[!=]=", source)


def test_verifier_imports_no_kafka_and_no_project_config() -> None:
    code = (
        "import sys\n"
        "import processors.webhooks.verify\n"
        "heavy = {'confluent_kafka', 'pydantic', 'pydantic_settings', 'aiohttp', 'httpx', 'fastavro',\n"
        "         'cryptography'}\n"
        "config = {'processors.settings', 'processors.runner'}\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy or m in config]\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the partner guide's example

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partner-guide.md"


def guide_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_partner_guide_worked_example_verifies() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    body = guide_blocks("json")[0].rstrip("\n").encode()
    headers = dict(line.split(": ", 1) for line in guide_blocks("http")[0].splitlines())
    secret = re.findall(r"`(whsec_[A-Za-z0-9+/=]+)`", text)[0]
    ts = int(headers["webhook-timestamp"])
    assert headers["X-Webhook-Signature"] == ref_seed(body, secret)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    assert headers["webhook-signature"] == ref_standard(headers["webhook-id"], ts, body, key)
    assert headers["webhook-id"] == headers["X-Webhook-Id"] == json.loads(body)["webhook_id"]
    verify_webhook(body, headers, secret, now=ts)
    verify_webhook(body, seed_only(headers), secret, now=ts, allow_seed=True)


def test_partner_guide_seed_function_works() -> None:
    namespace: dict[str, Any] = {}
    exec(next(b for b in guide_blocks("python") if "def verify_webhook_signature" in b), namespace)
    check = namespace["verify_webhook_signature"]
    assert check(BODY, ref_seed(BODY, NEW), NEW) is True
    assert check(BODY, ref_seed(BODY, OLD), NEW) is False
