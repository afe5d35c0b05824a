"""Bordereaux delivery: closed reports on ``reinsurance.bordereaux`` → the reinsurer → delivery results."""

from processors.apps.reinsurance.app import (
    APP,
    DELIVERIES_TOPIC,
    MAX_MESSAGE_BYTES,
    MAX_REPORT_BYTES,
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
    "DELIVERIES_TOPIC",
    "MAX_MESSAGE_BYTES",
    "MAX_REPORT_BYTES",
    "ReinsuranceApp",
    "ReinsuranceSettings",
    "ReportRef",
    "UnknownReinsurer",
    "build_reinsurance_app",
    "delivery_result",
    "endpoint_of",
    "read_report",
]
