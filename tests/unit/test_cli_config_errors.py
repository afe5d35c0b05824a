"""Invalid configuration stops the process at start-up with the setting's name and the reason."""

from __future__ import annotations

import pytest

from processors.cli import main
from processors.errors import ConfigError
from processors.settings import load_settings


def test_invalid_engine_setting_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_ENGINE__MAX_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match=r"engine\.max_concurrency: .*greater than or equal to 1"):
        load_settings()


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="ordering"):
        load_settings(engine={"ordering": "random"})


def test_secrets_do_not_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_PAYMENTS__GATEWAY__TOKEN", "sk_live_very_secret")
    settings = load_settings()
    assert settings.payments.gateway.token.get_secret_value() == "sk_live_very_secret"
    assert "sk_live_very_secret" not in repr(settings)
    assert "sk_live_very_secret" not in str(settings.model_dump())


def test_cli_exits_2_with_the_reason_for_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROCESSORS_ENGINE__ORDERING", "sideways")
    assert main(["run", "payments"]) == 2
    err = capsys.readouterr().err
    assert "engine.ordering" in err


def test_cli_exits_2_for_an_unknown_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "telepathy"]) == 2
    assert "unknown app(s) telepathy" in capsys.readouterr().err
