"""What ``PROCESSORS_ENV=production`` refuses at start-up.

The defaults let a developer start everything against the sandbox services with no
configuration: sandbox credentials, an ephemeral webhook key, an SSRF allow-list the tests open
to loopback.  In production each of these is a mistake that would otherwise surface only as an
outage or a leak, so a process started with ``PROCESSORS_ENV=production`` refuses to start with
any of them, naming the setting.  Only the settings of the apps being run are checked (a KYC
deployment needs no gateway token).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from pydantic import SecretStr

from processors.errors import ConfigError

if TYPE_CHECKING:
    from processors.settings import Settings

__all__ = [
    "MIN_API_TOKEN_CHARS",
    "SANDBOX_SECRETS",
    "check_production",
    "production_problems",
    "sandbox_secret",
]

SANDBOX_SECRETS: Final = frozenset({"sandbox-token", "sandbox-sftp-password"})
"""The credentials the sandbox services accept, which are the settings' defaults."""

MIN_API_TOKEN_CHARS: Final = 32

_PRIVATE: Final = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "::/128",
    )
)


def sandbox_secret(value: SecretStr | None) -> bool:
    return value is not None and value.get_secret_value() in SANDBOX_SECRETS


def _opens_private(entry: str) -> bool:
    """Whether an SSRF allow-list entry (CIDR or host name) reaches private or local addresses."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        name = entry.strip().lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost") or name.endswith(".internal")
    return any(network.version == private.version and network.overlaps(private) for private in _PRIVATE)


def production_problems(settings: Settings, app_names: Sequence[str], *, api: bool) -> list[str]:
    """Every reason ``settings`` are not fit for production when running ``app_names`` (and
    the HTTP API when ``api``); empty when they are."""
    from processors.apps.registry import app_spec

    problems: list[str] = []
    if not settings.resilience_enabled:
        problems.append(
            "resilience_enabled (PROCESSORS_RESILIENCE_ENABLED) is false: endpoints would be called "
            "with no breaker, retry or deadline (for benchmarks only)"
        )
    for name in app_names:
        problems.extend(app_spec(name).production_problems(settings))
    if api:
        token = settings.api.auth_token
        if token is None:
            problems.append(
                "api.auth_token (PROCESSORS_API__AUTH_TOKEN) is not set: the status and metrics are closed"
            )
        elif len(token.get_secret_value()) < MIN_API_TOKEN_CHARS:
            problems.append(
                f"api.auth_token (PROCESSORS_API__AUTH_TOKEN) is shorter than {MIN_API_TOKEN_CHARS} "
                "characters"
            )
        for provider in ("payment_gateway", "kyc_provider"):
            secrets = getattr(settings.api, provider)
            if any(sandbox_secret(s) for s in (secrets.secret, secrets.previous_secret)):
                problems.append(
                    f"api.{provider}.secret (PROCESSORS_API__{provider.upper()}__SECRET) is a sandbox value"
                )
    return problems


def check_production(settings: Settings, app_names: Sequence[str], *, api: bool) -> None:
    """Raise :class:`ConfigError` listing every problem, when ``settings.env`` is production."""
    if settings.env != "production":
        return
    problems = production_problems(settings, app_names, api=api)
    if problems:
        raise ConfigError("PROCESSORS_ENV=production refuses to start: " + "; ".join(problems))


def webhook_problems(settings: Settings) -> list[str]:
    hooks = settings.webhooks
    problems = [
        "webhooks.allow (PROCESSORS_WEBHOOKS__ALLOW) opens the SSRF guard to private or local "
        f"addresses: {entry}"
        for entry in hooks.allow
        if _opens_private(entry)
    ]
    if hooks.ephemeral_key:
        problems.append(
            "webhooks.ephemeral_key (PROCESSORS_WEBHOOKS__EPHEMERAL_KEY) is on: stored partner secrets "
            "could not be read after a restart"
        )
    return problems
