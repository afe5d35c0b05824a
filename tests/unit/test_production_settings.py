"""PROCESSORS_ENV=production refuses every sandbox default with a message naming the setting."""

from __future__ import annotations

import json

import pytest

from processors.cli import main
from processors.errors import ConfigError
from processors.production import check_production, production_problems
from processors.runner import Runner
from processors.settings import Settings

STRONG = "s" * 40


def _fit(**changes: object) -> Settings:
    base: dict[str, object] = {
        "env": "production",
        "payments": {"gateway": {"token": STRONG}},
        "kyc": {"provider": {"token": STRONG}},
        "reinsurance": {"reinsurer": {"token": STRONG}},
        "regulatory": {"sftp": {"password": STRONG}},
        "api": {"auth_token": STRONG},
    }
    base.update(changes)
    return Settings(**base)  # type: ignore[arg-type]


ALL = ["payments", "kyc", "webhooks", "bordereaux", "bordereaux-delivery", "regulatory"]


def test_settings_fit_for_production_pass() -> None:
    assert production_problems(_fit(), ALL, api=True) == []
    check_production(_fit(), ALL, api=True)


@pytest.mark.parametrize(
    ("changes", "app", "named"),
    [
        ({"payments": {}}, "payments", "PROCESSORS_PAYMENTS__GATEWAY__TOKEN"),
        ({"kyc": {}}, "kyc", "PROCESSORS_KYC__PROVIDER__TOKEN"),
        ({"reinsurance": {}}, "bordereaux-delivery", "PROCESSORS_REINSURANCE__REINSURER__TOKEN"),
        (
            {"reinsurance": {"reinsurers": {"RE1": {"token": "sandbox-token"}}}},
            "bordereaux-delivery",
            "reinsurance.reinsurers.RE1.token",
        ),
        ({"regulatory": {}}, "regulatory", "PROCESSORS_REGULATORY__SFTP__PASSWORD"),
        ({"webhooks": {"allow": ["10.1.0.0/16"]}}, "webhooks", "PROCESSORS_WEBHOOKS__ALLOW"),
        ({"webhooks": {"allow": ["127.0.0.1/32"]}}, "webhooks", "PROCESSORS_WEBHOOKS__ALLOW"),
        ({"webhooks": {"allow": ["localhost"]}}, "webhooks", "PROCESSORS_WEBHOOKS__ALLOW"),
        ({"webhooks": {"ephemeral_key": True}}, "webhooks", "PROCESSORS_WEBHOOKS__EPHEMERAL_KEY"),
    ],
)
def test_each_sandbox_default_is_refused_naming_its_setting(
    changes: dict[str, object], app: str, named: str
) -> None:
    settings = _fit(**changes)
    with pytest.raises(ConfigError, match="PROCESSORS_ENV=production refuses to start") as caught:
        check_production(settings, [app], api=False)
    assert named in str(caught.value)
    assert "sandbox-token" not in str(caught.value)  # the value itself is never shown


@pytest.mark.parametrize(("token", "words"), [(None, "is not set"), ("t" * 31, "shorter than 32")])
def test_the_api_needs_a_long_token(token: str | None, words: str) -> None:
    settings = _fit(api={"auth_token": token})
    assert any(words in p for p in production_problems(settings, ["payments"], api=True))
    assert production_problems(settings, ["payments"], api=False) == []


def test_only_the_apps_being_run_are_checked() -> None:
    settings = _fit(payments={})  # the sandbox gateway token
    assert production_problems(settings, ["kyc"], api=False) == []
    assert production_problems(settings, ["payments"], api=False)


def test_a_public_allow_list_entry_is_not_a_problem() -> None:
    assert production_problems(_fit(webhooks={"allow": ["203.0.113.0/24"]}), ["webhooks"], api=False) == []


def test_development_starts_with_the_sandbox_defaults() -> None:
    check_production(Settings(), ALL, api=True)


def test_the_runner_refuses_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="PROCESSORS_PAYMENTS__GATEWAY__TOKEN"):
        Runner(Settings(env="production"), ["payments"])


def test_config_show_masks_every_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROCESSORS_PAYMENTS__GATEWAY__TOKEN", "gateway-secret-value-123")
    monkeypatch.setenv("PROCESSORS_API__AUTH_TOKEN", "api-secret-value-" + "x" * 20)
    monkeypatch.setenv(
        "PROCESSORS_CLIENT_OVERRIDES",
        json.dumps({"client.sasl.password": "kafka-secret-value", "client.security.protocol": "SASL_SSL"}),
    )
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    for secret in ("gateway-secret-value-123", "api-secret-value", "kafka-secret-value", "sandbox"):
        assert secret not in out
    assert shown["client_overrides"]["client.security.protocol"] == "SASL_SSL"
    assert shown["payments"]["gateway"]["token"] == "**********"


def test_config_check_exits_1_and_names_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "payments", "regulatory"]) == 1
    out = capsys.readouterr().out
    assert "PROCESSORS_PAYMENTS__GATEWAY__TOKEN" in out
    assert "PROCESSORS_REGULATORY__SFTP__PASSWORD" in out


def test_calling_endpoints_without_the_resilience_layer_is_refused() -> None:
    problems = production_problems(_fit(resilience_enabled=False), ["payments"], api=False)
    assert len(problems) == 1
    assert "PROCESSORS_RESILIENCE_ENABLED" in problems[0]
    assert production_problems(_fit(resilience_enabled=False, env="development"), ["payments"], api=False)
    with pytest.raises(ConfigError, match="resilience_enabled"):
        check_production(_fit(resilience_enabled=False), ["payments"], api=False)
