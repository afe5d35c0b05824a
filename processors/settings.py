"""Process-wide settings: environment variables (``PROCESSORS_…``, nested with ``__``) and flags.

Examples: ``KAFKA_BOOTSTRAP_SERVERS=broker:9092``,
``PROCESSORS_PAYMENTS__GATEWAY__BASE_URL=https://gateway.example``,
``PROCESSORS_PAYMENTS__GATEWAY__TOKEN=…`` (a secret: never printed),
``PROCESSORS_ENGINE__MAX_CONCURRENCY=128``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.apps.payments import PaymentsSettings
from processors.errors import ConfigError
from processors.runtime.engine import EngineSettings

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROCESSORS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "PROCESSORS_BOOTSTRAP_SERVERS"),
    )
    group_prefix: str = "integrations."
    schema_registry_url: str | None = None
    output_format: Literal["avro", "json"] = "avro"
    topics_file: Path | None = None
    resilience_file: Path | None = None
    """Per-endpoint breaker, retry and timeout settings (default: ./resilience.yaml)."""
    resilience_enabled: bool = True
    """False calls endpoints with no breaker, retry or deadline: for benchmarks only."""
    client_overrides: dict[str, str] = Field(default_factory=dict)
    """librdkafka settings: ``consumer.<key>``, ``producer.<key>`` or ``client.<key>`` (both)."""
    engine: EngineSettings = Field(default_factory=EngineSettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
