"""``processors topics apply|check|list``.

Exit codes: 0 done / in sync; 1 drift (``check``), or drift ``apply`` cannot fix;
2 invalid catalogue or arguments (the message is ``file:line: reason``); 3 the cluster
failed (unreachable, an operation refused).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TextIO

from processors.errors import BrokerError, ConfigError
from processors.kafka import KafkaClients
from processors.topics import admin
from processors.topics.catalogue import Catalogue, CatalogueError, load_catalogue
from processors.topics.durations import format_duration

__all__ = ["EXIT_BROKER", "EXIT_CONFIG", "EXIT_DRIFT", "EXIT_OK", "register_cli"]

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``topics apply|check|list`` to a ``processors`` sub-command set."""
    topics = sub.add_parser(
        "topics",
        help="make a Kafka cluster match topics.yaml",
        description="Create and check the topics listed in the catalogue (topics.yaml).",
    )
    commands = topics.add_subparsers(dest="topics_command", required=True, metavar="{apply,check,list}")

    def common(parser: argparse.ArgumentParser, *, broker: bool) -> None:
        parser.add_argument(
            "--file",
            help="topic catalogue (default: $PROCESSORS_TOPICS_FILE, else ./topics.yaml)",
        )
        if broker:
            parser.add_argument(
                "--bootstrap-servers",
                default=os.environ.get(ENV_BOOTSTRAP),
                help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP})",
            )
            parser.add_argument(
                "--replication-factor",
                type=_positive_int,
                help="replication factor for every topic, overriding the catalogue "
                "(1 for a single-broker development cluster)",
            )
            parser.add_argument(
                "--timeout",
                type=float,
                default=30.0,
                dest="timeout_s",
                help="seconds to wait for the cluster (default: 30)",
            )

    apply = commands.add_parser("apply", help="create missing topics, add partitions, fix configs")
    common(apply, broker=True)
    apply.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    apply.set_defaults(func=_guarded(_cmd_apply))

    check = commands.add_parser("check", help="report drift between the cluster and the catalogue")
    common(check, broker=True)
    check.set_defaults(func=_guarded(_cmd_check))

    listing = commands.add_parser("list", help="print every topic of the catalogue")
    common(listing, broker=False)
    listing.set_defaults(func=_guarded(_cmd_list))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1 (got {value})")
    return value


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CatalogueError as exc:
            _err(str(exc))  # one ``file:line: reason`` per line, as editors expect
            return EXIT_CONFIG
        except ConfigError as exc:
            _err(f"error: {exc}")
            return EXIT_CONFIG
        except BrokerError as exc:
            _err(f"error: {exc}")
            return EXIT_BROKER

    return run


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _admin_conf(args: argparse.Namespace) -> KafkaClients:
    return KafkaClients((args.bootstrap_servers or "").strip())


def _cmd_apply(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.file)
    conf = _admin_conf(args)
    changes = admin.apply(
        conf,
        catalogue,
        replication_factor=args.replication_factor,
        dry_run=args.dry_run,
        timeout_s=args.timeout_s,
    )
    prefix = "would " if args.dry_run else ""
    for change in changes:
        print(f"{prefix}{change.action:<15} {change.topic}  {change.detail}")
    if not changes:
        print("no changes")
    report = admin.survey(
        conf, catalogue, replication_factor=args.replication_factor, timeout_s=args.timeout_s
    )
    stuck = [d for d in report.drift if not d.fixable]
    for drift in stuck:
        _err(f"cannot apply: {drift}")
    return EXIT_DRIFT if stuck else EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.file)
    report = admin.survey(
        _admin_conf(args), catalogue, replication_factor=args.replication_factor, timeout_s=args.timeout_s
    )
    for drift in report.drift:
        print(f"drift: {drift}")
    for name in report.unmanaged:
        print(f"info: {name} is not in the catalogue")
    if report.drift:
        _err(f"{len(report.drift)} difference(s) from {catalogue.path or 'the catalogue'}")
        return EXIT_DRIFT
    print(f"in sync: {len(catalogue.topics)} topics")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    print_catalogue(load_catalogue(args.file), sys.stdout)
    return EXIT_OK


def print_catalogue(catalogue: Catalogue, out: TextIO) -> None:
    """A table of every topic: name, kind, app, partitions, replication, retention, policy."""
    rows = [("TOPIC", "KIND", "APP", "PARTITIONS", "RF", "RETENTION", "CLEANUP")]
    for spec in catalogue.topics:
        retention = spec.retention_ms
        rows.append(
            (
                spec.name,
                spec.kind,
                spec.app or "-",
                str(spec.partitions),
                str(spec.replication_factor),
                format_duration(retention) if retention is not None else "-",
                spec.config.get("cleanup.policy", "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
