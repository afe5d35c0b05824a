"""The shipped dashboard and alert rules name only metrics the processors expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from processors.api.health import HealthMonitor
from processors.api.metrics import ApiMetrics
from processors.observability.webhook_metrics import WebhookDeliveryMetrics
from processors.resilience.breaker import BreakerRegistry
from processors.runtime.engine import EngineStats
from processors.topics.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
RULE_TESTS = ROOT / "tests" / "fixtures" / "alerts_test.yml"
METRIC = re.compile(r"\bprocessors_[a-z0-9_]+")


class _Named:
    name = "payments"
    topics = load_catalogue(None).app("payments")


class _Engine:
    """An engine as health reads it, with one of every kind of figure."""

    processor = _Named()
    group = "integrations.payments"
    assigned = [("insurance.billing.events", 0), ("integrations.payments.retry.0-5s", 0)]
    stats = EngineStats(
        processed=3,
        failed=1,
        outputs=4,
        lag={("insurance.billing.events", 0): 2, ("integrations.payments.retry.0-5s", 0): 1},
        failures={("ValidationFailed", "dead_letter"): 1},
        last_success_at=1.0,
    )

    async def wait_assigned(self) -> None:
        return None


class _Webhooks:
    name = "webhooks"

    def __init__(self) -> None:
        self.deliveries = WebhookDeliveryMetrics()
        self.deliveries.count("ep_1", "delivered")


class _WebhooksEngine(_Engine):
    processor = _Webhooks()  # type: ignore[assignment]
    group = "integrations.webhooks"


class _Bordereaux:
    name = "bordereaux"


class _Loop(_Engine):
    """The exactly-once loop as health sees it (``LoopView``): transactions and close lag."""

    processor = _Bordereaux()  # type: ignore[assignment]
    group = "integrations.bordereaux"
    transactions = (5, 1)

    def period_close_lag(self) -> dict[str, float]:
        return {"regulatory": 0.0, "treaty:TRY-1": 3600.0}


async def _exposed() -> set[str]:
    """Every sample name one scrape of a running process can carry."""
    breakers = BreakerRegistry()
    breaker = breakers.get("payment-gateway")
    breaker.latency.observe("success", 0.02)
    health = HealthMonitor(engines=[_Engine(), _WebhooksEngine(), _Loop()], breakers=breakers)
    health.last_readiness = None
    metrics = ApiMetrics(health, dedupe_size=lambda: 0)
    metrics.inbound("payment-gateway", "accepted")
    metrics.publish_seconds("payment-gateway", 0.01)
    names = {
        sample.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    # the readiness and broker gauges appear once a readiness check and a broker probe ran
    return names | {"processors_ready", "processors_broker_reachable"}


def _referenced() -> dict[str, set[str]]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return {
        "alert rules": {m for e in exprs for m in METRIC.findall(e)},
        "dashboard": {m for e in targets for m in METRIC.findall(e)},
    }


async def test_every_metric_the_rules_and_the_dashboard_name_is_exposed() -> None:
    exposed = await _exposed()
    referenced = _referenced()
    assert referenced["alert rules"], "the rules name no metric"
    assert len(referenced["dashboard"]) >= 10
    for where, names in referenced.items():
        missing = sorted(names - exposed)
        assert not missing, f"{where} name metrics no process exposes: {missing}"


def test_the_rules_cover_what_on_call_needs() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "ProcessorsConsumerLagGrowing",
        "ProcessorsBreakerOpen",
        "ProcessorsDeadLetters",
        "ProcessorsNoProgress",
        "ProcessorsRetryTierGrowing",
        "ProcessorsWebhookEndpointFailing",
        "ProcessorsBordereauxPeriodCloseLate",
        "ProcessorsNoTransactions",
    } <= set(alerts)
    for rule in alerts.values():
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_promtool_accepts_the_rules_when_it_is_installed() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # promtool is not on the machine: the structure was checked above
        assert yaml.safe_load(RULES.read_text())["groups"]
        return
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_fire_for_the_series_they_are_meant_for_when_promtool_is_installed() -> None:
    """``promtool test rules`` on tests/fixtures/alerts_test.yml: each alert fires for its
    series and stays quiet for the look-alikes (a slow tier, a quiet subscription, an app with
    nothing waiting)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        # promtool is not on the machine: at least every alert the rule tests name exists
        rules = yaml.safe_load(RULES.read_text())
        alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
        cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
        named = {case["alertname"] for test in cases for case in test["alert_rule_test"]}
        assert named, "the rule tests name no alert"
        assert named <= alerts, sorted(named - alerts)
        return
    done = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
