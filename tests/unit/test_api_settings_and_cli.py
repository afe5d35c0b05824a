"""API settings from the environment and from ``processors run`` flags."""

from __future__ import annotations

import pytest

from processors.cli import build_parser, main, run_settings
from processors.errors import ConfigError
from processors.settings import load_settings


def test_the_api_is_off_by_default_and_its_secrets_are_unset() -> None:
    api = load_settings().api

    assert api.enabled is False
    assert api.auth_token is None
    assert api.webhook_secrets("payment-gateway") is not None
    assert api.webhook_secrets("payment-gateway").accepted() == []  # type: ignore[union-attr]
    assert api.webhook_secrets("acme") is None


def test_secrets_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_API__AUTH_TOKEN", "tok_api_very_secret")
    monkeypatch.setenv("PROCESSORS_API__PAYMENT_GATEWAY__SECRET", "whsec_current_secret")
    monkeypatch.setenv("PROCESSORS_API__PAYMENT_GATEWAY__PREVIOUS_SECRET", "whsec_previous_secret")
    monkeypatch.setenv("PROCESSORS_API__KYC_PROVIDER__SECRET", "whsec_kyc_secret")

    settings = load_settings()

    secrets = settings.api.webhook_secrets("payment-gateway")
    assert secrets is not None
    assert [s.get_secret_value() for s in secrets.accepted()] == [
        "whsec_current_secret",
        "whsec_previous_secret",
    ]
    kyc = settings.api.webhook_secrets("kyc-provider")
    assert kyc is not None
    assert [s.get_secret_value() for s in kyc.accepted()] == ["whsec_kyc_secret"]
    shown = repr(settings) + str(settings.model_dump(mode="json"))
    for secret in (
        "tok_api_very_secret",
        "whsec_current_secret",
        "whsec_previous_secret",
        "whsec_kyc_secret",
    ):
        assert secret not in shown


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"port": 70_000}, "api.port"),
        ({"auth_token": " spaced "}, "api.auth_token"),
        ({"payment_gateway": {"secret": "  "}}, "api.payment_gateway.secret"),
        ({"max_body_bytes": 10}, "api.max_body_bytes"),
        ({"dedupe_ttl_s": 0}, "api.dedupe_ttl_s"),
        ({"surprise": 1}, "api.surprise"),
    ],
)
def test_bad_api_settings_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(api=changes)


def test_run_flags_enable_the_api_on_top_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_API__PORT", "9100")
    monkeypatch.setenv("PROCESSORS_API__AUTH_TOKEN", "tok_env")
    monkeypatch.setenv("PROCESSORS_API__PAYMENT_GATEWAY__SECRET", "whsec_env")

    plain = run_settings(build_parser().parse_args(["run", "payments"]))
    flagged = run_settings(build_parser().parse_args(["run", "payments", "--api", "--api-host", "0.0.0.0"]))
    ported = run_settings(build_parser().parse_args(["run", "payments", "--api-port", "0"]))

    assert (plain.api.enabled, plain.api.port) == (False, 9100)
    assert (flagged.api.enabled, flagged.api.host, flagged.api.port) == (True, "0.0.0.0", 9100)
    assert flagged.api.auth_token is not None
    assert flagged.api.auth_token.get_secret_value() == "tok_env"
    assert flagged.api.payment_gateway.secret is not None
    assert ported.api.port == 0


def test_a_bad_api_port_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "payments", "--api", "--api-port", "-1"]) == 2
    assert "api.port" in capsys.readouterr().err
