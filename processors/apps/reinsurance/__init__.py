"""Bordereaux delivery: closed reports on ``reinsurance.bordereaux`` → the reinsurer → delivery results."""

from processors.apps.reinsurance.app import (
    APP,
    CONSUMER_OVERRIDES,
    DELIVERIES_TOPIC,
    MAX_REPORT_BYTES,
    PRODUCER_OVERRIDES,
    ReinsuranceApp,
    ReinsuranceSettings,
    ReportRef,
    UnknownReinsurer,
    build_reinsurance_app,
    delivery_result,
    endpoint_of,
    read_report,
)

__all__ = [
    "APP",
    "CONSUMER_OVERRIDES",
    "DELIVERIES_TOPIC",
    "MAX_REPORT_BYTES",
    "PRODUCER_OVERRIDES",
    "ReinsuranceApp",
    "ReinsuranceSettings",
    "ReportRef",
    "UnknownReinsurer",
    "build_reinsurance_app",
    "delivery_result",
    "endpoint_of",
    "read_report",
]
