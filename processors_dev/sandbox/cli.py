"""``processors sandbox``: serve the simulated external services until SIGINT/SIGTERM.

The gateway token comes from ``--token``, else ``$SANDBOX_GATEWAY_TOKEN``, else ``sandbox-token``
(prefer the environment: command lines are visible to other users of the machine).  The KYC
provider's token comes from ``$SANDBOX_KYC_TOKEN``, else ``sandbox-token``; the secret that signs
its callbacks from ``--kyc-webhook-secret``, else ``$SANDBOX_KYC_WEBHOOK_SECRET``, else
``sandbox-kyc-webhook-secret``.  Every knob can be changed later through
``PUT /_sandbox/gateway/config`` and ``PUT /_sandbox/kyc/config``.

Simulated partner webhook receivers answer at ``/partners/{name}``; none exist by default.
``--partner NAME[:MODE]`` (repeatable) creates demo partners that verify signatures with the
secret from ``--partner-secret``, else ``$SANDBOX_PARTNER_SECRET``, else the documented default;
more are created, changed and inspected through ``/_control/partners``.

``--sftp`` also runs the simulated regulator: an SFTP server (port ``--sftp-port``, files
stored under ``--sftp-root``) for user ``--sftp-username`` with the password from
``$SANDBOX_SFTP_PASSWORD``, else ``sandbox-sftp-password``.  Its host key is new every run
unless ``--sftp-host-key FILE`` names a key file to keep (created when missing); the public
key printed at start is what ``PROCESSORS_REGULATORY__SFTP__KNOWN_HOST_KEY`` pins.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from processors.errors import ConfigError
from processors_dev.sandbox.gateway import DEFAULT_TOKEN, TOKEN_ENV, GatewayConfig
from processors_dev.sandbox.kyc import DEFAULT_TOKEN as KYC_DEFAULT_TOKEN
from processors_dev.sandbox.kyc import DEFAULT_WEBHOOK_SECRET as KYC_DEFAULT_WEBHOOK_SECRET
from processors_dev.sandbox.kyc import TOKEN_ENV as KYC_TOKEN_ENV
from processors_dev.sandbox.kyc import WEBHOOK_SECRET_ENV as KYC_WEBHOOK_SECRET_ENV
from processors_dev.sandbox.kyc import KycConfig
from processors_dev.sandbox.partners import (
    DEFAULT_PARTNER_SECRET,
    PARTNER_SECRET_ENV,
    PartnerBehaviour,
    PartnersConfig,
    PartnerSpec,
)
from processors_dev.sandbox.server import SandboxServer, run_sandbox_forever
from processors_dev.sandbox.sftp import (
    DEFAULT_SFTP_PASSWORD,
    DEFAULT_SFTP_USERNAME,
    SFTP_PASSWORD_ENV,
    SftpRegulator,
    load_or_create_host_key,
)

__all__ = [
    "DEMO_PARTNER_MODES",
    "READY_PREFIX",
    "TOKEN_ENV",
    "config_to_argv",
    "gateway_config_from_args",
    "kyc_config_from_args",
    "kyc_config_to_argv",
    "partners_config_from_args",
    "register_cli",
    "regulator_from_args",
    "run_sandbox_command",
]

READY_PREFIX = "sandbox listening on "
"""The first line printed, followed by the base URL, once the socket listens."""

DEMO_PARTNER_MODES = ("healthy", "slow", "flaky", "gone", "timeout", "error")
"""Modes ``--partner`` accepts (a redirecting partner needs a target: use the control API)."""
_DEMO_SLOW_DELAY_MS = 2000


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sandbox",
        help="run the simulated external services (payment gateway, KYC provider) with fault injection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8600, help="TCP port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency added to each new payment")
    parser.add_argument(
        "--latency-jitter-ms", type=float, default=0.0, help="extra random latency, 0 to this"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of 503 before charging")
    parser.add_argument(
        "--error-after-charge-rate",
        type=float,
        default=0.0,
        help="probability of charging, then answering 500",
    )
    parser.add_argument("--outage", action="store_true", help="answer every payment with 503")
    parser.add_argument("--rate-limit-per-s", type=float, default=None, help="answer 429 above this rate")
    parser.add_argument(
        "--token", default=None, help=f"Bearer token to accept (default: ${TOKEN_ENV} or {DEFAULT_TOKEN})"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible random choices")
    parser.add_argument("--access-log", action="store_true", help="log one line per request (never bodies)")
    kyc = parser.add_argument_group("KYC provider")
    kyc.add_argument(
        "--kyc-mode",
        choices=("sync", "async"),
        default="sync",
        help="sync: the decision in the answer; async: 202 pending, the decision by signed callback",
    )
    kyc.add_argument("--kyc-callback-url", default=None, help="where async decisions are POSTed")
    kyc.add_argument(
        "--kyc-webhook-secret",
        default=None,
        help=(
            f"secret that signs callbacks (default: ${KYC_WEBHOOK_SECRET_ENV} "
            f"or {KYC_DEFAULT_WEBHOOK_SECRET})"
        ),
    )
    kyc.add_argument("--kyc-callback-delay-ms", type=float, default=100.0, help="delay before a callback")
    kyc.add_argument("--kyc-callback-attempts", type=int, default=3, help="deliveries tried per callback")
    kyc.add_argument("--kyc-duplicate-callbacks", action="store_true", help="deliver every callback twice")
    kyc.add_argument(
        "--kyc-latency-ms", type=float, default=0.0, help="latency added to each new verification"
    )
    kyc.add_argument("--kyc-error-rate", type=float, default=0.0, help="probability of 503 before verifying")
    kyc.add_argument("--kyc-outage", action="store_true", help="answer every verification with 503")
    partners = parser.add_argument_group("partner webhook receivers")
    partners.add_argument(
        "--partner",
        action="append",
        default=[],
        metavar="NAME[:MODE]",
        help=f"create a demo partner; MODE one of {', '.join(DEMO_PARTNER_MODES)} (default healthy)",
    )
    partners.add_argument(
        "--partner-delay-ms",
        type=int,
        default=None,
        help=f"delay before the demo partners answer (slow ones: default {_DEMO_SLOW_DELAY_MS})",
    )
    partners.add_argument(
        "--partner-secret",
        default=None,
        help=f"secret the demo partners verify with (default: ${PARTNER_SECRET_ENV} or the documented one)",
    )
    partners.add_argument(
        "--partner-no-bodies",
        action="store_true",
        help="do not keep request bodies and headers (counts only)",
    )
    sftp = parser.add_argument_group("regulator SFTP server")
    sftp.add_argument("--sftp", action="store_true", help="also run the simulated regulator's SFTP server")
    sftp.add_argument(
        "--sftp-port", type=int, default=2222, help="SFTP port, 0 for any free one (default: %(default)s)"
    )
    sftp.add_argument(
        "--sftp-root",
        type=Path,
        default=Path("var/regulatory/sftp"),
        help="directory the received files are stored in, the server's root (default: %(default)s)",
    )
    sftp.add_argument(
        "--sftp-username", default=DEFAULT_SFTP_USERNAME, help="the one user (default: %(default)s)"
    )
    sftp.add_argument(
        "--sftp-host-key",
        type=Path,
        default=None,
        help="private host key file to keep across runs, created when missing (default: a new key per run)",
    )
    parser.set_defaults(func=run_sandbox_command)


def gateway_config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The gateway knobs from parsed arguments; :class:`ConfigError` when a value is out of range."""
    values: dict[str, Any] = {
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.latency_jitter_ms,
        "error_rate": args.error_rate,
        "error_after_charge_rate": args.error_after_charge_rate,
        "outage": args.outage,
        "rate_limit_per_s": args.rate_limit_per_s,
        "token": args.token or os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN,
        "seed": args.seed,
    }
    return GatewayConfig.from_mapping(values)


def kyc_config_from_args(args: argparse.Namespace) -> KycConfig:
    """The KYC provider knobs from parsed arguments; :class:`ConfigError` when a value is invalid."""
    values: dict[str, Any] = {
        "mode": args.kyc_mode,
        "callback_url": args.kyc_callback_url,
        "webhook_secret": args.kyc_webhook_secret
        or os.environ.get(KYC_WEBHOOK_SECRET_ENV)
        or KYC_DEFAULT_WEBHOOK_SECRET,
        "callback_delay_ms": args.kyc_callback_delay_ms,
        "callback_attempts": args.kyc_callback_attempts,
        "duplicate_callbacks": args.kyc_duplicate_callbacks,
        "latency_ms": args.kyc_latency_ms,
        "error_rate": args.kyc_error_rate,
        "outage": args.kyc_outage,
        "token": os.environ.get(KYC_TOKEN_ENV) or KYC_DEFAULT_TOKEN,
        "seed": args.seed,
    }
    return KycConfig.from_mapping(values)


def partners_config_from_args(args: argparse.Namespace) -> PartnersConfig:
    """The demo partners from parsed arguments; :class:`ConfigError` when a value is invalid."""
    secret = args.partner_secret or os.environ.get(PARTNER_SECRET_ENV) or DEFAULT_PARTNER_SECRET
    specs: list[PartnerSpec] = []
    for flag in args.partner:
        name, _, mode = flag.partition(":")
        mode = mode or "healthy"
        if mode not in DEMO_PARTNER_MODES:
            raise ConfigError(f"--partner {flag!r}: mode must be one of {', '.join(DEMO_PARTNER_MODES)}")
        values: dict[str, Any] = {"mode": mode}
        if args.partner_delay_ms is not None:
            values["delay_ms"] = args.partner_delay_ms
        elif mode == "slow":
            values["delay_ms"] = _DEMO_SLOW_DELAY_MS
        if mode == "flaky":
            values["failure_rate"] = 0.5
        try:
            specs.append(
                PartnerSpec.model_validate(
                    {"name": name, "behaviour": PartnerBehaviour.from_mapping(values), "secrets": [secret]}
                )
            )
        except ValidationError as exc:
            raise ConfigError(f"--partner {flag!r}: invalid name or secret") from exc
    if len({spec.name for spec in specs}) != len(specs):
        raise ConfigError("--partner names must be unique")
    return PartnersConfig(partners=tuple(specs), record_bodies=not args.partner_no_bodies)


def kyc_config_to_argv(config: KycConfig) -> list[str]:
    """The flags that reproduce ``config``, except the token and the webhook secret (pass them as
    ``$SANDBOX_KYC_TOKEN`` and ``$SANDBOX_KYC_WEBHOOK_SECRET``) and the seed (``--seed`` is shared)."""
    argv = [
        "--kyc-mode",
        config.mode,
        "--kyc-callback-delay-ms",
        repr(config.callback_delay_ms),
        "--kyc-callback-attempts",
        str(config.callback_attempts),
        "--kyc-latency-ms",
        repr(config.latency_ms),
        "--kyc-error-rate",
        repr(config.error_rate),
    ]
    if config.callback_url is not None:
        argv += ["--kyc-callback-url", config.callback_url]
    if config.duplicate_callbacks:
        argv.append("--kyc-duplicate-callbacks")
    if config.outage:
        argv.append("--kyc-outage")
    return argv


def config_to_argv(config: GatewayConfig) -> list[str]:
    """The flags that reproduce ``config``, except the token (pass it as ``$SANDBOX_GATEWAY_TOKEN``)."""
    argv = [
        "--latency-ms",
        repr(config.latency_ms),
        "--latency-jitter-ms",
        repr(config.latency_jitter_ms),
        "--error-rate",
        repr(config.error_rate),
        "--error-after-charge-rate",
        repr(config.error_after_charge_rate),
    ]
    if config.outage:
        argv.append("--outage")
    if config.rate_limit_per_s is not None:
        argv += ["--rate-limit-per-s", repr(config.rate_limit_per_s)]
    if config.seed is not None:
        argv += ["--seed", str(config.seed)]
    return argv


def regulator_from_args(args: argparse.Namespace) -> SftpRegulator | None:
    """The simulated regulator ``--sftp`` asks for (not started), or None without ``--sftp``."""
    if not getattr(args, "sftp", False):
        return None
    if not 0 <= args.sftp_port <= 65535:
        raise ConfigError(f"--sftp-port must be 0..65535, not {args.sftp_port}")
    if not args.sftp_username:
        raise ConfigError("--sftp-username must not be empty")
    password = os.environ.get(SFTP_PASSWORD_ENV) or DEFAULT_SFTP_PASSWORD
    host_key = None
    if args.sftp_host_key is not None:
        try:
            host_key = load_or_create_host_key(args.sftp_host_key)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--sftp-host-key: {exc}") from exc
    return SftpRegulator(
        args.sftp_root,
        host=args.host,
        port=args.sftp_port,
        username=args.sftp_username,
        password=SecretStr(password),
        host_key=host_key,
    )


def run_sandbox_command(args: argparse.Namespace) -> int:
    config = gateway_config_from_args(args)
    kyc = kyc_config_from_args(args)
    partners = partners_config_from_args(args)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, not {args.port}")
    regulator = regulator_from_args(args)

    def started(url: str) -> None:
        print(f"{READY_PREFIX}{url}", flush=True)
        print(f"  payment gateway  POST {url}/api/v1/payments", flush=True)
        print(f"  control          {url}/_sandbox/gateway/{{charges,config,reset,requests}}", flush=True)
        print(f"  KYC provider     POST {url}/api/v1/customers/{{id}}/kyc ({kyc.mode})", flush=True)
        print(
            f"  control          {url}/_sandbox/kyc/{{verifications,config,reset,requests,callbacks}}",
            flush=True,
        )
        print(f"  partners         POST {url}/partners/{{name}} ({len(partners.partners)} demo)", flush=True)
        print(f"  control          {url}/_control/partners[/{{name}}[/deliveries]]", flush=True)
        print(f"  reinsurer        POST {url}/api/v1/bordereaux (GET lists what it accepted)", flush=True)
        print(f"  control          {url}/_sandbox/reinsurer/{{config,reset,requests}}", flush=True)
        if regulator is not None:
            where = f"sftp://{regulator.username}@{regulator.host}:{regulator.port}"
            print(f"  regulator SFTP   {where} (files in {regulator.root})", flush=True)
            print(f"  host key         {regulator.host_key_line}", flush=True)
            print(f"                   {regulator.host_key_fingerprint}", flush=True)
        print("press Ctrl-C to stop", flush=True)

    if regulator is None:
        run_sandbox_forever(
            args.host,
            args.port,
            config,
            kyc=kyc,
            partners=partners,
            on_started=started,
            access_log=args.access_log,
        )
    else:
        sandbox = SandboxServer(
            args.host, args.port, config, kyc=kyc, partners=partners, access_log=args.access_log
        )
        asyncio.run(_serve_with_regulator(sandbox, regulator, on_started=started))
    print("sandbox stopped", flush=True)
    return 0


async def _serve_with_regulator(
    sandbox: SandboxServer, regulator: SftpRegulator, *, on_started: Callable[[str], None]
) -> None:
    """The HTTP sandbox and the SFTP regulator in one event loop until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sandbox, regulator:
            on_started(sandbox.url)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m processors_dev.sandbox.cli``: the ``sandbox`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m processors_dev.sandbox.cli")
    sub = parser.add_subparsers(dest="command")
    register_cli(sub)
    args = parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
