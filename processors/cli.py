"""``processors`` command line.

::

    processors run payments              run apps (each its own consumer group) until SIGTERM
                  [--api [--api-port N]]  ... with the HTTP API (webhooks, health, metrics)
    processors demo                      broker + sandbox + payments + sample events, live
    processors topics apply|check|list   make a cluster match topics.yaml
    processors sandbox                   simulated external services
    processors broker start|fetch        a Kafka broker for development
    processors bordereaux treaties|close reinsurance treaties, close a period on command
    processors regulatory close|rerun    close a regulatory day, send a day's files again
    processors samples publish           publish sample events
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from processors.errors import ConfigError, ProcessorsError

if TYPE_CHECKING:
    from processors.settings import Settings

__all__ = ["main", "run_settings"]

log = logging.getLogger("processors")


def _setup_logging(verbose: bool, *, json_format: bool) -> None:
    """Redacted logs: JSON lines for the long-running processors, text for the other commands.

    ``PROCESSORS_LOG_FORMAT=json|text`` and ``PROCESSORS_LOG_LEVEL`` override the defaults.
    """
    from processors.observability import configure_logging

    level = "DEBUG" if verbose else os.environ.get("PROCESSORS_LOG_LEVEL", "INFO").upper()
    chosen = os.environ.get("PROCESSORS_LOG_FORMAT")
    configure_logging(level, json_format=json_format if chosen is None else chosen == "json")


def _register_secrets(value: object) -> None:
    """Every SecretStr in the settings is masked wherever it would appear in a log line."""
    from pydantic import BaseModel, SecretStr

    from processors.observability import register_secret

    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if len(secret) >= 4:
            register_secret(secret)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _register_secrets(getattr(value, name))
    elif isinstance(value, dict | list | tuple):
        for item in value.values() if isinstance(value, dict) else value:
            _register_secrets(item)


def run_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``processors run``: the environment, with the flags on top."""
    from processors.settings import load_settings

    overrides: dict[str, object] = {}
    if args.bootstrap_servers:
        overrides["bootstrap_servers"] = args.bootstrap_servers
    if args.topics_file:
        overrides["topics_file"] = args.topics_file
    api: dict[str, object] = {}
    if args.api:
        api["enabled"] = True
    if args.api_host is not None:
        api["host"] = args.api_host
    if args.api_port is not None:
        api["port"] = args.api_port
    if api:
        # The flags replace single API settings; the rest come from PROCESSORS_API__*.
        overrides["api"] = {**load_settings(**overrides).api.model_dump(), **api}
    return load_settings(**overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from processors.runner import Runner

    settings = run_settings(args)
    _register_secrets(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = Runner(settings, args.apps)

        def ready() -> None:
            log.info("running %s", ", ".join(runner.app_names))
            if runner.api is not None:
                log.info("API on %s", runner.api.url)

        await runner.run(stop, on_ready=ready)

    asyncio.run(main())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from processors.demo import run_demo

    if not args.verbose:  # the live view is the output; logs only for errors
        logging.getLogger().setLevel(logging.ERROR)
    return asyncio.run(run_demo(events=args.events, policies=args.policies, broker=args.broker))


def _cmd_samples(args: argparse.Namespace) -> int:
    from processors.demo import publish_samples
    from processors.settings import load_settings

    settings = load_settings(
        **({"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {})
    )
    if args.kind == "bordereaux":
        from processors.bordereaux.samples import bordereaux_stream
        from processors.demo import publish_events

        events = list(bordereaux_stream(args.policies, months=args.months))
        for topic, prefix in (("insurance.policy.events", "policy."), ("insurance.claim.events", "claim.")):
            chosen = [e for e in events if e.event_type.startswith(prefix)]
            sent = publish_events(settings.bootstrap_servers, chosen, fmt=args.format, topic=topic)
            print(f"published {sent} {prefix}* events to {topic}")
        return 0
    sent = publish_samples(
        settings.bootstrap_servers, count=args.count, policies=args.policies, fmt=args.format
    )
    print(f"published {sent} premium.due events to insurance.billing.events")
    return 0


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or a plain marker from a bare tree."""
    try:
        return importlib.metadata.version("insurance-integration-processors")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="processors", description="Insurance integration stream processors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run integration apps until SIGTERM/SIGINT")
    run.add_argument("apps", nargs="+", help="apps to run (payments, kyc, webhooks, bordereaux)")
    run.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    run.add_argument("--topics-file", help="default: ./topics.yaml")
    run.add_argument(
        "--api",
        action="store_true",
        help="serve the HTTP API: inbound webhooks, /healthz, /readyz, /api/v1/status, /metrics, "
        "and with the webhooks app the partner subscription and operator routes "
        "(default: $PROCESSORS_API__ENABLED)",
    )
    run.add_argument("--api-host", help="interface of the API (default: $PROCESSORS_API__HOST or 127.0.0.1)")
    run.add_argument(
        "--api-port", type=int, help="port of the API, 0 for any (default: $PROCESSORS_API__PORT or 8080)"
    )
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="end-to-end demo on embedded defaults")
    demo.add_argument("--events", type=int, default=300)
    demo.add_argument("--policies", type=int, default=60)
    demo.add_argument(
        "--broker",
        choices=["auto", "external", "docker", "apache", "embedded"],
        default="auto",
        help="auto: $KAFKA_BOOTSTRAP_SERVERS if set, else the embedded broker",
    )
    demo.set_defaults(func=_cmd_demo)

    samples = sub.add_parser("samples", help="sample events")
    samples_sub = samples.add_subparsers(dest="samples_command", required=True)
    publish = samples_sub.add_parser(
        "publish", help="publish sample events: premium.due (default) or policy and claim events"
    )
    publish.add_argument(
        "--kind",
        choices=["premium", "bordereaux"],
        default="premium",
        help="bordereaux: policies and claims over --months months for the shipped treaties.yaml",
    )
    publish.add_argument("--months", type=int, default=3, choices=range(1, 12), metavar="1-11")
    publish.add_argument("--count", type=int, default=100)
    publish.add_argument("--policies", type=int, default=20)
    publish.add_argument("--format", choices=["avro", "json"], default="avro")
    publish.add_argument("--bootstrap-servers")
    publish.set_defaults(func=_cmd_samples)

    from processors.bordereaux.cli import register_cli as register_bordereaux
    from processors.devbroker.cli import register_cli as register_broker
    from processors.dlq.cli import register_cli as register_dlq
    from processors.sandbox.cli import register_cli as register_sandbox
    from processors.topics.cli import register_cli as register_topics

    register_topics(sub)
    register_sandbox(sub)
    register_broker(sub)
    register_dlq(sub)
    register_bordereaux(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, json_format=args.command == "run")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ProcessorsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and friends: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
