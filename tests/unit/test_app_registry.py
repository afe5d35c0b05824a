"""The app registry drives the runner, topic checks, health and inbound routes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from processors.apps.registry import AppSpec, app_names, app_spec, inbound_handlers, register
from processors.errors import ConfigError
from processors.settings import Settings
from processors.topics.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[2]


def test_every_app_of_the_product_is_registered() -> None:
    assert set(app_names()) == {
        "payments",
        "kyc",
        "webhooks",
        "bordereaux",
        "bordereaux-delivery",
        "regulatory",
    }
    assert [name for name in app_names() if app_spec(name).transactional] == ["bordereaux"]


def test_an_unknown_app_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: payments, kyc"):
        app_spec("paymnets")


def test_a_spec_is_either_an_engine_app_or_a_loop() -> None:
    with pytest.raises(ValueError, match="exactly one of build and build_loop"):
        AppSpec("neither", "nothing")
    with pytest.raises(ValueError, match="registered already"):
        register(app_spec("payments"))


def test_every_topic_an_app_declares_is_in_the_shipped_catalogue() -> None:
    catalogue = load_catalogue(ROOT / "topics.yaml")
    settings = Settings()
    names = {topic.name for topic in catalogue.topics}
    for name in app_names():
        spec = app_spec(name)
        for topic in spec.outputs(settings, catalogue):
            assert topic in names, f"{name}: {topic}"
        if not spec.transactional:
            topics = catalogue.app(name)
            assert set(topics.sources) <= names


def test_health_knows_each_apps_endpoints() -> None:
    settings = Settings()
    assert app_spec("payments").endpoints(settings) == ("payment-gateway",)
    assert app_spec("kyc").endpoints(settings) == ("kyc-provider",)
    assert app_spec("regulatory").endpoints(settings) == ("regulator-sftp",)
    assert app_spec("bordereaux-delivery").endpoints(settings) == settings.reinsurance.endpoints()


def test_inbound_providers_come_from_the_apps() -> None:
    assert set(inbound_handlers(Settings())) == {"payment-gateway", "kyc-provider"}


def test_the_runner_names_no_app() -> None:
    """Registration, not if-chains: no app name appears in the runner's code."""
    tree = ast.parse((ROOT / "processors" / "runner.py").read_text())
    constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not constants & set(app_names())


def test_no_module_of_the_product_imports_by_name() -> None:
    """No ``importlib`` app loading: apps are wired through the registry."""
    found = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "processors").rglob("*.py")
        if "import_module(" in path.read_text()
    ]
    assert not found
