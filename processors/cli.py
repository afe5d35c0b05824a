"""``processors`` command line.

::

    processors run payments              run apps (each its own consumer group) until SIGTERM
                  [--api [--api-port N]]  ... with the HTTP API (webhooks, health, metrics)
    processors topics apply|check|list   make a cluster match topics.yaml
    processors dlq list|show|stats|replay  inspect and replay dead letters
    processors partners create|list|show|suspend|activate|keys  the partner registry, API keys
    processors bordereaux treaties|close reinsurance treaties, close a period on command
    processors regulatory close|rerun    close a regulatory day, send a day's files again
    processors portal rebuild|project    the partner portal's query store, rebuilt from the topics

With the development tooling installed (``processors_dev``, entry-point group
``processors.commands``)::

    processors demo                      broker + sandbox + apps + sample events, live
    processors sandbox                   simulated external services
    processors broker start|fetch        a Kafka broker for development
    processors samples publish           publish sample events
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from processors.errors import EXIT_RESTART, ConfigError, ProcessorsError, RestartNeeded

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
    if args.workers > 1:
        return _run_workers(args, settings)

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

    from processors.observability import tracing

    tracing.configure(
        otlp_endpoint=settings.tracing.otlp_endpoint,
        service_name=settings.tracing.service_name or "insurance-processors-" + "-".join(args.apps),
    )
    try:
        asyncio.run(main())
    finally:
        tracing.shutdown()  # the last spans leave before the process does
    return 0


def _run_workers(args: argparse.Namespace, settings: Settings) -> int:
    import socket

    from processors.production import check_production
    from processors.workers import WorkerSpec, run_workers

    check_production(settings, args.apps, api=settings.api.enabled)  # refused before any worker starts
    passthrough: list[str] = []
    if args.bootstrap_servers:
        passthrough += ["--bootstrap-servers", args.bootstrap_servers]
    if args.topics_file:
        passthrough += ["--topics-file", args.topics_file]
    token = settings.api.auth_token
    spec = WorkerSpec(
        apps=tuple(args.apps),
        workers=args.workers,
        api=settings.api.enabled,
        api_host=settings.api.host,
        api_port=settings.api.port,
        auth_token=token.get_secret_value() if token is not None else None,
        instance_id=settings.bordereaux.instance_id or socket.gethostname(),
        passthrough=tuple(passthrough),
    )
    return asyncio.run(run_workers(spec))


def _cmd_schemas_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from processors.contract.published import PUBLISHED_DIR, export
    from processors.topics.catalogue import load_catalogue

    catalogue = load_catalogue(args.topics_file)
    written = export(Path(args.directory) if args.directory else PUBLISHED_DIR, catalogue)
    print(f"wrote {len(written)} schema files under {written[0].parent.parent if written else '-'}")
    return 0


def _cmd_schemas_register(args: argparse.Namespace) -> int:
    """Register every event type's writer schema with the configured Schema Registry.

    The deliberate act a read-only deployment needs before its first start: it works whatever
    ``schema_registry.read_only`` says.  Prints one line per subject with its id.
    """
    from processors.contract.registry import SchemaRegistryClient
    from processors.errors import ConfigError
    from processors.settings import load_settings

    settings = load_settings()
    url = args.url or settings.schema_registry_url
    if not url:
        raise ConfigError("no Schema Registry: give --url or set PROCESSORS_SCHEMA_REGISTRY_URL")
    with SchemaRegistryClient.from_settings(url, settings.schema_registry, env=settings.env) as registry:
        ids = registry.register_all()
    for subject, schema_id in sorted(ids.items()):
        print(f"{subject}\t{schema_id}")
    print(f"registered {len(ids)} writer schemas", file=sys.stderr)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    """The effective settings (environment, defaults) as JSON; every secret masked."""
    import json

    from processors.settings import load_settings

    settings = load_settings()
    # SecretStr serialises as "**********"; librdkafka settings are plain strings, so the ones
    # that name a credential are masked here
    shown = settings.model_dump(mode="json")
    shown["client_overrides"] = {
        key: "**********" if _CREDENTIAL.search(key) else value
        for key, value in settings.client_overrides.items()
    }
    print(json.dumps(shown, indent=2, sort_keys=True, default=str))
    return 0


_CREDENTIAL = re.compile(r"password|secret|token|credential|\.key$|jaas", re.IGNORECASE)


def _cmd_config_check(args: argparse.Namespace) -> int:
    """What PROCESSORS_ENV=production would refuse for these apps; exit 1 when anything."""
    from processors.production import production_problems
    from processors.settings import load_settings

    settings = load_settings()
    problems = production_problems(settings, args.apps, api=args.api or settings.api.enabled)
    for problem in problems:
        print(f"not for production: {problem}")
    if not problems:
        print(f"ready for production: {', '.join(args.apps)}" + (" with the API" if args.api else ""))
    return 1 if problems else 0


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

    from processors.apps.registry import app_names, app_spec

    listing = "\n".join(f"  {name:<20} {app_spec(name).summary}" for name in app_names())
    run = sub.add_parser(
        "run",
        help="run integration apps until SIGTERM/SIGINT",
        description="Run integration apps, each its own consumer group, until SIGTERM/SIGINT.",
        epilog=f"apps:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("apps", nargs="+", metavar="APP", help=f"one or more of: {', '.join(app_names())}")
    run.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N member processes of the apps' groups under one supervisor (one exit code, "
        "graceful drain of all; with --api the unit's health and merged metrics on the API port)",
    )
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

    schemas = sub.add_parser("schemas", help="the event schemas for publishers in any language")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser(
        "export",
        help="write the Avro writer schema and the JSON Schema of every event type, and the AsyncAPI "
        "document of the event topics",
    )
    export.add_argument("directory", nargs="?", help="default: schemas/published in the package")
    export.add_argument("--topics-file", help="the topic catalogue (default: ./topics.yaml)")
    export.set_defaults(func=_cmd_schemas_export)
    register = schemas_sub.add_parser(
        "register",
        help="register every event type's writer schema with the Schema Registry (also in read-only "
        "mode: this is the deliberate step a read-only deployment takes before it starts)",
    )
    register.add_argument("--url", help="default: $PROCESSORS_SCHEMA_REGISTRY_URL")
    register.set_defaults(func=_cmd_schemas_register)

    config = sub.add_parser("config", help="the effective settings, and whether they are fit for production")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective settings as JSON, secrets masked")
    show.set_defaults(func=_cmd_config_show)
    check = config_sub.add_parser(
        "check", help="list what PROCESSORS_ENV=production would refuse for these apps (exit 1 if any)"
    )
    check.add_argument("apps", nargs="+", metavar="APP", help=f"one or more of: {', '.join(app_names())}")
    check.add_argument("--api", action="store_true", help="the HTTP API runs too")
    check.set_defaults(func=_cmd_config_check)

    from processors.bordereaux.cli import register_cli as register_bordereaux
    from processors.dlq.cli import register_cli as register_dlq
    from processors.partners.cli import register_cli as register_partners
    from processors.portal.cli import register_cli as register_portal
    from processors.topics.cli import register_cli as register_topics

    register_topics(sub)
    register_dlq(sub)
    register_partners(sub)
    register_bordereaux(sub)
    register_portal(sub)
    for plugin in _command_plugins():
        plugin(sub)
    return parser


COMMANDS_GROUP = "processors.commands"
"""Entry-point group of extra subcommands: the development tooling (``processors_dev``) adds
``demo``, ``samples``, ``sandbox`` and ``broker`` there, so the product never imports it."""


def _command_plugins() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    found = []
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ModuleNotFoundError as exc:  # an image built without the development tooling
            log.debug("subcommands %s not installed: %s", entry.value, exc)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, json_format=args.command == "run")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RestartNeeded as exc:
        print(f"error: {exc} (exit {EXIT_RESTART}: restart this process)", file=sys.stderr)
        return EXIT_RESTART
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
