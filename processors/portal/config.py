"""The portal store's settings (``PROCESSORS_PORTAL__*``); imports no database library."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["DEFAULT_DATABASE_URL", "PortalSettings"]

DEFAULT_DATABASE_URL = "sqlite:///var/portal.db"
"""SQLite in ``var/portal.db`` under the working directory (created on first start)."""


class PortalSettings(BaseModel):
    """The partner portal's query store (``docs/portal.md``).

    ``database_url`` chooses the backend: ``sqlite:///path`` (embedded, the default) or
    ``postgresql://user:password@host:5432/db`` (production; ``postgresql+psycopg://`` is the
    same).  It is a secret because a PostgreSQL URL carries a password.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    batch_size: int = Field(default=2_000, ge=1, le=100_000)
    """Records applied per database transaction at most (a transaction also ends as soon as a
    fetch brings fewer)."""
    busy_timeout_s: float = Field(default=30.0, gt=0, le=3_600)
    """How long a write waits for a lock held by another process (SQLite's busy timeout,
    PostgreSQL's connect timeout)."""
