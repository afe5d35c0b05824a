"""Regulatory: a day's data file and manifest → local outbox → regulator's SFTP → regulatory.reports."""

from processors.apps.regulatory.app import (
    RegulatoryApp,
    RegulatorySettings,
    announcement,
    build_regulatory_app,
)
from processors.apps.regulatory.files import FileJob, ManifestMismatch, Outbox, verify_manifest

__all__ = [
    "FileJob",
    "ManifestMismatch",
    "Outbox",
    "RegulatoryApp",
    "RegulatorySettings",
    "announcement",
    "build_regulatory_app",
    "verify_manifest",
]
