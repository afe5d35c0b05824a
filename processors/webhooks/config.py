"""Settings of the webhooks app (``PROCESSORS_WEBHOOKS__…``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from processors.runtime.engine import EngineSettings

__all__ = ["WebhooksSettings"]

_DAY_S = 24 * 3600.0


def _webhook_engine() -> EngineSettings:
    # A delivery holds a slot while its partner answers: many slots, so that a slow partner
    # (capped by its own concurrency and waiting limits) leaves plenty for the others.  A
    # dispatch record crosses the broker before its first attempt: a 1 ms linger instead of
    # the default 5 takes about 5 ms off the partner's wait (bench_webhooks' e2e latency).
    return EngineSettings(
        max_concurrency=1_000, max_buffered_per_partition=5_000, max_buffered=30_000, linger_ms=1
    )


class WebhooksSettings(BaseModel):
    """How partner deliveries are made; per-endpoint limits live on each subscription."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encryption_key: SecretStr | None = None
    """Base64 of 32 bytes that encrypts partner secrets at rest.  None: read
    ``PROCESSORS_WEBHOOK_ENCRYPTION_KEY``; start-up fails when neither is set (unless
    ``ephemeral_key``)."""
    previous_encryption_keys: tuple[SecretStr, ...] = ()
    """Older keys that still decrypt (key rotation), newest first.  Empty: read the
    comma-separated ``PROCESSORS_WEBHOOK_ENCRYPTION_KEY_PREVIOUS``."""
    ephemeral_key: bool = False
    """Use a random key for this process only (the demo): stored secrets cannot be read after a restart."""
    allow: tuple[str, ...] = ()
    """Networks (CIDR) or exact host names partners may use although private or loopback."""
    require_https: bool = False
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    """A delivery body above this is not sent: it is dead-lettered with the reason."""
    retry_after_cap_s: float = Field(default=3_600.0, gt=0)
    """A partner's ``Retry-After`` is honoured up to this."""
    disable_after_failing_s: float = Field(default=5 * _DAY_S, gt=0)
    """An endpoint failing without a single success for this long is disabled."""
    max_waiting_per_endpoint: int = Field(default=100, ge=1)
    """Deliveries waiting for a busy endpoint's free connection; beyond it they go to the first
    retry tier, so a slow partner never holds more than its share of the app's slots."""
    jitter_ratio: float = Field(default=0.1, ge=0, le=1)
    """Each retry tier's delay is stretched by a random 0..this fraction."""
    response_excerpt_chars: int = Field(default=256, ge=0, le=4_096)
    max_response_bytes: int = Field(default=64 * 1024, ge=1_024)
    max_connections_per_host: int = Field(default=100, ge=1)
    address_cache_s: float = Field(default=30.0, ge=0)
    """A partner host's checked DNS answer is reused this long (0: resolve for every delivery).
    Only addresses that passed the SSRF guard are ever cached or connected to."""
    engine: EngineSettings = Field(default_factory=_webhook_engine)

    @field_validator("allow")
    @classmethod
    def _entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip() for v in value if v.strip())
