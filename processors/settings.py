"""Process-wide settings: environment variables (``PROCESSORS_…``, nested with ``__``) and flags.

Examples: ``KAFKA_BOOTSTRAP_SERVERS=broker:9092``,
``PROCESSORS_PAYMENTS__GATEWAY__BASE_URL=https://gateway.example``,
``PROCESSORS_PAYMENTS__GATEWAY__TOKEN=…`` (a secret: never printed),
``PROCESSORS_KYC__PROVIDER__BASE_URL=https://kyc.example``, ``PROCESSORS_KYC__PROVIDER__TOKEN=…``,
``PROCESSORS_ENGINE__MAX_CONCURRENCY=128``,
``PROCESSORS_API__AUTH_TOKEN=…`` and ``PROCESSORS_API__PAYMENT_GATEWAY__SECRET=…`` (secrets),
``PROCESSORS_SCHEMA_REGISTRY_URL=https://registry.example:8081`` with
``PROCESSORS_SCHEMA_REGISTRY__USER=…``, ``PROCESSORS_SCHEMA_REGISTRY__PASSWORD=…`` (a secret) and
``PROCESSORS_SCHEMA_REGISTRY__READ_ONLY=true|false`` (unset: read-only with
``PROCESSORS_ENV=production``, registering on first use in development).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.apps.kyc import KycSettings
from processors.apps.payments import PaymentsSettings
from processors.apps.regulatory import RegulatorySettings
from processors.apps.reinsurance.app import ReinsuranceSettings
from processors.contract.registry import SchemaRegistrySettings
from processors.errors import ConfigError
from processors.portal.config import PortalSettings
from processors.runtime.engine import EngineSettings
from processors.webhooks.config import WebhooksSettings

__all__ = ["ApiSettings", "Settings", "WebhookSecrets", "load_settings"]


class WebhookSecrets(BaseModel):
    """The HMAC secrets of one provider's webhooks: the current one and, while rotating, the previous."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr | None = None
    previous_secret: SecretStr | None = None

    @field_validator("secret", "previous_secret")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    def accepted(self) -> list[SecretStr]:
        """The secrets a signature may be made with, current first; empty when none is set."""
        return [s for s in (self.secret, self.previous_secret) if s is not None]


class ApiSettings(BaseModel):
    """The HTTP API (inbound webhooks, health, status, metrics); see ``docs/api.md``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    auth_token: SecretStr | None = None
    """Bearer token for ``/api/v1/status`` and ``/metrics``; without one they answer 401."""
    metrics_require_auth: bool = True
    """False serves ``/metrics`` without the token (a scrape network that is trusted)."""
    payment_gateway: WebhookSecrets = Field(default_factory=WebhookSecrets)
    kyc_provider: WebhookSecrets = Field(default_factory=WebhookSecrets)
    signature_tolerance_s: int = Field(default=300, ge=1, le=3600)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    dedupe_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    dedupe_max_entries: int = Field(default=500_000, ge=1)
    dedupe_topic: str | None = Field(default=None, min_length=1)
    """The compacted topic through which the API instances share the provider event ids they
    published (``docs/api.md``).  None: the catalogue's ``integrations.inbound.dedupe`` when the
    API runs with the apps (``enabled``), otherwise the ids stay in the process."""
    publish_timeout_s: float = Field(default=10.0, gt=0)
    """How long an inbound request waits for the broker's acknowledgement before answering 503."""
    kyc_results_topic: str | None = None
    """Where inbound KYC decisions go; None: the KYC app's ``kyc.results_topic``."""
    status_window_s: float = Field(default=300.0, gt=0)
    """The window of the per-endpoint error rate."""
    broker_check_timeout_s: float = Field(default=2.0, gt=0)
    broker_check_cache_s: float = Field(default=2.0, ge=0)

    @field_validator("auth_token")
    @classmethod
    def _token_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            token = value.get_secret_value()
            if not token or not token.isascii() or not token.isprintable() or token != token.strip():
                raise ValueError("must be non-empty printable ASCII without surrounding spaces")
        return value

    def webhook_secrets(self, provider: str) -> WebhookSecrets | None:
        """The secrets of ``payment-gateway`` or ``kyc-provider``; None for another name."""
        value = getattr(self, provider.replace("-", "_"), None) if provider in _PROVIDERS else None
        return value if isinstance(value, WebhookSecrets) else None


_PROVIDERS = frozenset({"payment-gateway", "kyc-provider"})


class BordereauxSettings(BaseModel):
    """The exactly-once bordereaux app (``PROCESSORS_BORDEREAUX__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    treaties_file: Path = Path("treaties.yaml")
    """The treaty book: treaties, exchange rates, regulatory settings (docs/bordereaux.md)."""
    instance_id: str | None = None
    """Stable per instance (default: the host name): its transactional id is
    ``<group>.<instance_id>``, so a restarted instance fences its crashed predecessor at once.
    Two instances on one host need different ids."""
    batch_size: int = Field(default=10_000, ge=1, le=100_000)
    """Records per transaction at most.  Larger transactions collapse more changelog writes per
    key and spend less time committing: 10,000 against 2,000 cut the app's CPU per event by
    13 % (bench/bench_bordereaux.py); a transaction still commits as soon as a fetch returns
    fewer records."""
    idle_source_after_s: float = Field(default=3_600.0, ge=0)
    """A source partition with nothing to read for this long stops holding event time back
    (periods and days close on the other partitions' time) until it sends again; 0: never."""


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (:mod:`processors.observability.tracing`): off unless an OTLP
    endpoint is set here or in the standard ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://\S+$")
    """The OTLP/HTTP traces URL, e.g. ``http://otel-collector:4318/v1/traces``."""
    service_name: str | None = Field(default=None, min_length=1, max_length=200)
    """``service.name`` of the spans (default ``insurance-processors-<apps>``; ``OTEL_SERVICE_NAME`` wins)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROCESSORS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    env: Literal["development", "production"] = Field(
        default="development", validation_alias=AliasChoices("PROCESSORS_ENV", "env")
    )
    """``production`` refuses to start with sandbox credentials, a short API token, an ephemeral
    webhook key or an SSRF allow-list opened to private addresses (:mod:`processors.production`)."""
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "PROCESSORS_BOOTSTRAP_SERVERS"),
    )
    group_prefix: str = "integrations."
    schema_registry_url: str | None = None
    """A Confluent-compatible Schema Registry for the Avro schema ids (None: ``schemas/ids.json``)."""
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    """Credentials, CA file, timeout and read-only mode of that registry
    (:mod:`processors.contract.registry`).  ``read_only`` unset: read-only in production, where
    producing never registers a schema; auto-register in development."""
    output_format: Literal["avro", "json"] = "avro"
    topics_file: Path | None = None
    resilience_file: Path | None = None
    """Per-endpoint breaker, retry and timeout settings (default: ./resilience.yaml)."""
    resilience_enabled: bool = True
    """False calls endpoints with no breaker, retry or deadline (each call still audited): for
    benchmarks only; ``PROCESSORS_ENV=production`` refuses it."""
    client_overrides: dict[str, str] = Field(default_factory=dict)
    """librdkafka settings: ``consumer.<key>``, ``producer.<key>`` or ``client.<key>`` (both)."""
    engine: EngineSettings = Field(default_factory=EngineSettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)
    kyc: KycSettings = Field(default_factory=KycSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    bordereaux: BordereauxSettings = Field(default_factory=lambda: BordereauxSettings())
    reinsurance: ReinsuranceSettings = Field(default_factory=ReinsuranceSettings)
    regulatory: RegulatorySettings = Field(default_factory=RegulatorySettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    portal: PortalSettings = Field(default_factory=PortalSettings)
    """The partner portal's query store: ``PROCESSORS_PORTAL__DATABASE_URL`` (docs/portal.md)."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
