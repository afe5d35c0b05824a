"""Pieces of the sandbox KYC provider that need no server: outcomes, parsing, config, signatures, CLI."""

from __future__ import annotations

import argparse
import time
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from processors.adapters import jsonwire
from processors.errors import ConfigError, DecodeError, ValidationFailed
from processors_dev.sandbox.cli import kyc_config_from_args, kyc_config_to_argv, register_cli
from processors_dev.sandbox.kyc import (
    KYC_APP_KEY,
    WEBHOOK_SECRET_ENV,
    KycConfig,
    KycProviderSim,
    decide,
    outcome_of,
    parse_verification_request,
    sign_callback,
)
from processors_dev.sandbox.server import build_sandbox_app


def body(**changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "verification_type": "IDENTITY",
        "documents": [
            {
                "type": "PASSPORT",
                "document_number": "AB123456",
                "issuing_country": "US",
                "expiry_date": "2030-06-15",
                "front_image_url": "https://storage.example.com/docs/front.jpg",
            }
        ],
        "consent": {
            "terms_accepted": True,
            "data_processing_accepted": True,
            "timestamp": "2024-01-15T10:30:00Z",
        },
        "client_reference": "ref-1",
    }
    payload.update(changes)
    return jsonwire.dumps(payload)


# -- outcomes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "outcome"),
    [
        ("SANC0001", "sanctions_hit"),
        ("sanc0001", "sanctions_hit"),
        ("FORGE77", "forged_document"),
        ("FACEX12", "face_mismatch"),
        ("FACE12", "weak_face_match"),
        ("PEP555", "pep_match"),
        ("AB123456", "clear"),
        ("XSANC", "clear"),  # a prefix, not a substring
    ],
)
def test_the_document_number_chooses_the_outcome(number: str, outcome: str) -> None:
    assert outcome_of(number) == outcome


def _checks(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["type"]: check for check in decision["checks"]}


@pytest.mark.parametrize(
    ("number", "status", "level", "failing", "status_of_failing"),
    [
        ("AB123456", "APPROVED", "LOW", None, None),
        ("SANC0001", "REJECTED", "HIGH", "SANCTIONS_SCREENING", "FAILED"),
        ("FORGE001", "REJECTED", "HIGH", "DOCUMENT_AUTHENTICITY", "FAILED"),
        ("FACEX001", "REJECTED", "HIGH", "FACE_MATCH", "FAILED"),
        ("FACE0001", "REVIEW", "MEDIUM", "FACE_MATCH", "REVIEW"),
        ("PEP00001", "REVIEW", "MEDIUM", "PEP_CHECK", "REVIEW"),
    ],
)
def test_decisions_follow_the_outcome(
    number: str, status: str, level: str, failing: str | None, status_of_failing: str | None
) -> None:
    decision = decide([number])
    assert decision == decide([number])  # deterministic
    assert decision["status"] == status
    assert decision["risk_level"] == level
    low, high = {"LOW": (0, 29), "MEDIUM": (40, 69), "HIGH": (75, 100)}[level]
    assert low <= decision["risk_score"] <= high
    checks = _checks(decision)
    assert set(checks) == {"DOCUMENT_AUTHENTICITY", "FACE_MATCH", "SANCTIONS_SCREENING", "PEP_CHECK"}
    for kind, check in checks.items():
        expected = status_of_failing if kind == failing else "PASSED"
        assert check["status"] == expected, kind
        if "confidence" in check:
            assert isinstance(check["confidence"], Decimal)
            assert 0 <= check["confidence"] <= 1
    listed = {"SANCTIONS_SCREENING": "OFAC-SDN", "PEP_CHECK": "PEP-GLOBAL"}
    for kind, list_name in listed.items():
        matches = checks[kind]["matches"]
        if kind == failing:
            (match,) = matches
            assert match["list_name"] == list_name
            assert Decimal("0.85") <= match["score"] <= Decimal("0.99")
            assert match["name"]
        else:
            assert matches == []


def test_risk_scores_spread_over_their_band() -> None:
    approved = {decide([f"AB{i:06d}"])["risk_score"] for i in range(200)}
    assert approved <= set(range(30))
    assert len(approved) > 10


def test_with_several_documents_the_worst_result_decides() -> None:
    assert decide(["AB1", "PEP2"])["status"] == "REVIEW"
    both = decide(["PEP2", "SANC3", "AB4"])
    assert both["status"] == "REJECTED"
    checks = _checks(both)
    assert checks["PEP_CHECK"]["status"] == "REVIEW"
    assert checks["SANCTIONS_SCREENING"]["status"] == "FAILED"
    assert decide(["FACE1", "FACEX2"])["status"] == "REJECTED"


# -- request parsing -------------------------------------------------------------------------------


def test_parses_a_seed_request() -> None:
    request = parse_verification_request("CUST-1", body(), "idem_1")
    assert request.customer_id == "CUST-1"
    assert request.idempotency_key == "idem_1"
    assert request.document_numbers == ("AB123456",)
    assert request.client_reference == "ref-1"
    assert request.terms_accepted
    assert request.data_processing_accepted
    assert "AB123456" not in repr(request)
    assert request.fingerprint == parse_verification_request("CUST-1", body(), "idem_1").fingerprint
    assert request.fingerprint != parse_verification_request("CUST-2", body(), "idem_1").fingerprint


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (body(), None, "the Idempotency-Key header is required"),
        (b"[", "k", "body is not valid JSON"),
        (b"[]", "k", "body must be a JSON object"),
        (body(verification_type="DNA"), "k", "verification_type must be one of"),
        (body(documents=[]), "k", "documents must be a list of 1 to 10 objects"),
        (body(documents=[{"type": "PASSPORT"}]), "k", "documents[0].document_number must be a string"),
        (body(documents=[{"type": "VISA"}]), "k", "documents[0].type must be one of"),
        (body(consent={"terms_accepted": "yes"}), "k", "consent.terms_accepted must be true or false"),
        (body(client_reference=5), "k", "client_reference must be a string"),
    ],
)
def test_invalid_requests_name_the_field_not_the_value(raw: bytes, key: str | None, reason: str) -> None:
    with pytest.raises((DecodeError, ValidationFailed)) as info:
        parse_verification_request("CUST-1", raw, key)
    assert reason in info.value.reason
    assert "AB123456" not in info.value.reason


def test_a_bad_expiry_date_is_refused() -> None:
    document = {
        "type": "PASSPORT",
        "document_number": "AB1",
        "issuing_country": "US",
        "expiry_date": "15/06/2030",
        "front_image_url": "https://x.example/f.jpg",
    }
    with pytest.raises(ValidationFailed, match=r"documents\[0\]\.expiry_date must be a date"):
        parse_verification_request("C", body(documents=[document]), "k")


# -- config ----------------------------------------------------------------------------------------


def test_async_mode_needs_a_callback_url() -> None:
    with pytest.raises(ConfigError, match="async mode needs a callback_url"):
        KycConfig.from_mapping({"mode": "async"})
    config = KycConfig.from_mapping({"mode": "async", "callback_url": "http://127.0.0.1:9/cb"})
    assert config.mode == "async"


def test_secrets_are_masked_and_validated() -> None:
    config = KycConfig(webhook_secret=SecretStr("whsec_123"), token=SecretStr("tok_abc"))
    public = config.public_dict()
    assert "whsec_123" not in str(public)
    assert "tok_abc" not in repr(config)
    with pytest.raises(ConfigError, match="webhook_secret must be non-empty printable ASCII") as info:
        KycConfig.from_mapping({"webhook_secret": " padded "})
    assert "padded" not in str(info.value)


def test_sim_updates_config_partially_and_resets() -> None:
    sim = KycProviderSim(KycConfig(latency_ms=5))
    sim.verifications_by_key["k"] = 1
    sim.requests_by_status[200] = 1
    updated = sim.update_config(error_rate=0.5)
    assert (updated.latency_ms, updated.error_rate) == (5, 0.5)
    with pytest.raises(ConfigError):
        sim.update_config({"error_rate": 2})
    assert sim.config.error_rate == 0.5
    sim.reset()
    assert sim.verifications_by_key == {}
    assert sim.requests_by_status == {}


def test_the_sandbox_app_mounts_the_kyc_provider() -> None:
    app = build_sandbox_app(kyc=KycConfig(latency_ms=7))
    assert app[KYC_APP_KEY].config.latency_ms == 7
    paths = {route.resource.canonical for route in app.router.routes() if route.resource is not None}
    assert "/api/v1/customers/{customer_id}/kyc" in paths
    assert "/_sandbox/kyc/verifications" in paths


# -- signatures ------------------------------------------------------------------------------------


def test_callback_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    secret, timestamp, payload = SecretStr("whsec_test"), "1718000000", b'{"a":1}'
    expected = hmac.new(b"whsec_test", b"1718000000." + payload, hashlib.sha256).hexdigest()
    assert sign_callback(secret, timestamp, payload) == f"sha256={expected}"


def test_callback_signatures_verify_with_the_inbound_endpoint() -> None:
    from processors.api.inbound import verify_signature

    secret, timestamp, payload = SecretStr("whsec_test"), str(int(time.time())), b'{"event_id":"evt_1"}'
    signature = sign_callback(secret, timestamp, payload)
    verify_signature(secret, timestamp, payload, signature, now=time.time())  # raises if refused


# -- CLI -------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sandbox", *argv])


def test_cli_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBHOOK_SECRET_ENV, raising=False)
    monkeypatch.delenv("SANDBOX_KYC_TOKEN", raising=False)
    assert kyc_config_from_args(parse([])) == KycConfig()


def test_cli_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, "from-env")
    args = parse(
        ["--kyc-mode", "async", "--kyc-callback-url", "http://127.0.0.1:9/cb", "--kyc-duplicate-callbacks"]
    )
    config = kyc_config_from_args(args)
    assert (config.mode, config.callback_url, config.duplicate_callbacks) == (
        "async",
        "http://127.0.0.1:9/cb",
        True,
    )
    assert config.webhook_secret.get_secret_value() == "from-env"
    flagged = kyc_config_from_args(parse(["--kyc-webhook-secret", "from-flag"]))
    assert flagged.webhook_secret.get_secret_value() == "from-flag"
    with pytest.raises(ConfigError, match="async mode needs a callback_url"):
        kyc_config_from_args(parse(["--kyc-mode", "async"]))


def test_config_to_argv_round_trips_every_knob_but_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBHOOK_SECRET_ENV, raising=False)
    monkeypatch.delenv("SANDBOX_KYC_TOKEN", raising=False)
    config = KycConfig(
        mode="async",
        callback_url="http://127.0.0.1:9/cb",
        callback_delay_ms=25.0,
        callback_attempts=5,
        duplicate_callbacks=True,
        latency_ms=3.5,
        error_rate=0.25,
        outage=True,
    )
    argv = kyc_config_to_argv(config)
    assert kyc_config_from_args(parse(argv)) == config
