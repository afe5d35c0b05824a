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
from processors.resilience.breaker import BreakerRegistry
from processors.runtime.engine import EngineStats

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
METRIC = re.compile(r"\bprocessors_[a-z0-9_]+")


class _Named:
    name = "payments"


class _Engine:
    """An engine as health reads it, with one of every kind of figure."""

    processor = _Named()
    group = "integrations.payments"
    assigned = [("insurance.billing.events", 0)]
    stats = EngineStats(
        processed=3,
        failed=1,
        outputs=4,
        lag={("insurance.billing.events", 0): 2},
        failures={("ValidationFailed", "dead_letter"): 1},
        last_success_at=1.0,
    )

    async def wait_assigned(self) -> None:
        return None


async def _exposed() -> set[str]:
    """Every sample name one scrape of a running process can carry."""
    breakers = BreakerRegistry()
    breaker = breakers.get("payment-gateway")
    breaker.latency.observe("success", 0.02)
    health = HealthMonitor(engines=[_Engine()], breakers=breakers)
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
