"""``processors dlq list|show|stats|replay``: see what failed and replay dead letters.

Exit codes: 0 done (also when nothing matched: "0 matched"); 1 replay not confirmed at
the prompt; 2 bad arguments or configuration (unknown app, missing topic, unroutable
records, progress recorded with other filters, ``replay`` without ``--yes`` when stdin is
not a terminal); 3 the cluster failed; 4 another replay of the same DLQ holds the lock (or
the lock was lost mid-run); 130 a replay stopped by Ctrl-C or SIGTERM (progress saved: run
the same command again to continue).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from processors.dlq._kafka import KafkaConfig, clients
from processors.dlq.filters import DlqFilter
from processors.dlq.lock import ReplayLockHeld, ReplayLockLost
from processors.dlq.reader import read_dead_letter, scan, stats
from processors.dlq.records import DeadLetter, format_key, format_time
from processors.dlq.replay import (
    DEFAULT_RATE_PER_S,
    ReplayAborted,
    ReplayPlan,
    ReplayProgress,
    ReplayReport,
    ReplayTarget,
    default_operator,
    replay,
)
from processors.dlq.rewrite import DEFAULT_REPLAY_LIMIT
from processors.dlq.summary import print_breakdown
from processors.errors import BrokerError, ConfigError
from processors.observability import tracing
from processors.topics.catalogue import CatalogueError, load_catalogue

__all__ = [
    "EXIT_ABORTED",
    "EXIT_BROKER",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "register_cli",
]

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
ENV_SCHEMA_REGISTRY = "PROCESSORS_SCHEMA_REGISTRY_URL"

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130

_MESSAGE_CHARS = 60
_KEY_CHARS = 24
_CLASS_CHARS = 22


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq list|show|stats|replay`` to a ``processors`` sub-command set."""
    dlq = sub.add_parser(
        "dlq",
        help="list, show, count and replay dead letters",
        description="See what failed and replay dead letters safely (docs/dlq-runbook.md).",
    )
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{list,show,stats,replay}")

    listing = commands.add_parser("list", help="one line per dead letter (values are never printed)")
    _common(listing)
    _filters(listing)
    listing.set_defaults(func=_guarded(_cmd_list))

    show = commands.add_parser("show", help="one dead letter: headers and value, personal data masked")
    _common(show)
    show.add_argument("--partition", type=_natural, required=True, help="DLQ partition")
    show.add_argument("--offset", type=_natural, required=True, help="offset in that partition")
    show.add_argument(
        "--schema-registry-url",
        default=os.environ.get(ENV_SCHEMA_REGISTRY),
        help=f"decode Avro with this registry's schema ids (default: ${ENV_SCHEMA_REGISTRY}, else ids.json)",
    )
    show.set_defaults(func=_guarded(_cmd_show))

    counting = commands.add_parser("stats", help="counts by error class, UTC day and original topic")
    _common(counting)
    _filters(counting)
    counting.set_defaults(func=_guarded(_cmd_stats))

    rep = commands.add_parser(
        "replay",
        help="send dead letters back for processing (resumable, rate limited, audited)",
        description="Replay the selected dead letters to the app's first retry tier (default) or to "
        "their original topic. Records replayed --replay-limit times already go to the parking topic.",
    )
    _common(rep)
    _filters(rep)
    rep.add_argument("--dry-run", action="store_true", help="show what would move; move nothing")
    rep.add_argument(
        "--to",
        choices=[t.value for t in ReplayTarget],
        default=ReplayTarget.RETRY.value,
        dest="target",
        help="retry: the app's first retry tier (default); original: the topic in x-original-topic",
    )
    rep.add_argument(
        "--rate",
        type=_positive_float,
        default=DEFAULT_RATE_PER_S,
        dest="rate_per_s",
        help=f"records per second at most (default: {DEFAULT_RATE_PER_S:g})",
    )
    rep.add_argument(
        "--replay-limit",
        type=_positive_int,
        default=DEFAULT_REPLAY_LIMIT,
        help=f"park records already replayed this many times (default: {DEFAULT_REPLAY_LIMIT})",
    )
    rep.add_argument("--operator", help="who runs the replay, for the audit trail (default: $USER)")
    rep.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rep.add_argument("--restart", action="store_true", help="ignore the progress of earlier replays")
    rep.add_argument("--audit-topic", help="audit topic (default: integrations.audit from the catalogue)")
    rep.set_defaults(func=_guarded(_cmd_replay))


# --------------------------------------------------------------------------- arguments


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, help="the app whose DLQ to read (payments, kyc, ...)")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(ENV_BOOTSTRAP),
        help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP})",
    )
    parser.add_argument(
        "--topics-file", help="topic catalogue (default: $PROCESSORS_TOPICS_FILE, else ./topics.yaml)"
    )
    parser.add_argument(
        "--client-config",
        type=Path,
        help="file of extra librdkafka settings, one key=value a line (security.protocol, sasl.*, ...)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        dest="timeout_s",
        help="seconds to wait for the cluster",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all must match)")
    group.add_argument(
        "--error-class",
        action="append",
        default=[],
        dest="error_classes",
        metavar="CLASS",
        help="x-error-class is CLASS (repeat for several)",
    )
    group.add_argument("--since", help="failed at or after: 2h, 3d, 30m or ISO-8601 UTC (2024-05-01T08:00Z)")
    group.add_argument("--until", help="failed before: same forms as --since")
    group.add_argument("--key", help="record key equals KEY")
    group.add_argument("--partition", type=_natural, help="DLQ partition")
    group.add_argument("--from-offset", type=_natural, help="first offset (inclusive)")
    group.add_argument("--to-offset", type=_natural, help="last offset (inclusive)")
    group.add_argument("--limit", type=_positive_int, help="at most this many dead letters")


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0 (got {value})")
    return value


def _positive_int(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1 (got {value})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text})")
    return value


def _filter(args: argparse.Namespace) -> DlqFilter:
    return DlqFilter.build(
        error_classes=args.error_classes,
        since=args.since,
        until=args.until,
        key=args.key,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        limit=args.limit,
    )


def _kafka(args: argparse.Namespace) -> KafkaConfig:
    properties = read_client_config(args.client_config) if args.client_config is not None else {}
    return clients(properties, bootstrap_servers=args.bootstrap_servers)


def read_client_config(path: Path) -> dict[str, str]:
    """``key=value`` lines (``#`` comments, blank lines ignored), as Kafka's own tools read them."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the client configuration: {exc.strerror}") from exc
    conf: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected key=value")
        conf[key.strip()] = value.strip()
    return conf


def _dlq_topic(args: argparse.Namespace) -> str:
    return load_catalogue(args.topics_file).app(args.app).dlq


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CatalogueError as exc:
            _err(str(exc))
            return EXIT_CONFIG
        except ConfigError as exc:
            _err(f"error: {exc}")
            return EXIT_CONFIG
        except (ReplayLockHeld, ReplayLockLost) as exc:
            _err(f"error: {exc}")
            return EXIT_LOCKED
        except BrokerError as exc:
            _err(f"error: {exc}")
            return EXIT_BROKER
        except ReplayAborted as exc:
            _err(str(exc))
            return EXIT_ABORTED

    return run


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _json_line(document: object, out: TextIO) -> None:
    out.write(json.dumps(document, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- list / stats / show


def _cmd_list(args: argparse.Namespace) -> int:
    topic = _dlq_topic(args)
    kafka, flt = _kafka(args), _filter(args)
    out = sys.stdout
    records = scan(kafka, topic, flt, timeout_s=args.timeout_s)
    if args.json:
        for record in records:
            _json_line(record.summary(), out)
            out.flush()
        return EXIT_OK
    header = False
    for record in records:
        if not header:
            out.write(_list_header())
            header = True
        out.write(_list_row(record))
    out.write(f"{records.matched} matched ({records.scanned} read from {topic})\n")
    return EXIT_OK


def _list_header() -> str:
    return (
        f"{'PART/OFFSET':<14} {'FAILED AT (UTC)':<29} {'KEY':<{_KEY_CHARS}} {'ERROR CLASS':<{_CLASS_CHARS}} "
        f"{'REPLAYS':>7}  {'ORIGIN':<40} MESSAGE\n"
    )


def _clip(text: str | None, width: int) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _list_row(record: DeadLetter) -> str:
    row = record.summary(message_chars=_MESSAGE_CHARS)
    origin = "-"
    if row["original_topic"]:
        origin = (
            f"{row['original_topic']}[{_dash(row['original_partition'])}]@{_dash(row['original_offset'])}"
        )
    replays = row["replay_count"]
    where = f"{record.partition}/{record.offset}"
    key = _clip(row["key"], _KEY_CHARS)
    error_class = _clip(row["error_class"], _CLASS_CHARS)
    return (
        f"{where:<14} {row['failed_at'] or '-':<29} {key:<{_KEY_CHARS}} {error_class:<{_CLASS_CHARS}} "
        f"{'?' if replays is None else replays:>7}  {origin:<40} {_oneline(row['error_message'])}\n"
    )


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _oneline(text: str | None) -> str:
    return " ".join((text or "-").split())


def _cmd_stats(args: argparse.Namespace) -> int:
    topic = _dlq_topic(args)
    counts = stats(_kafka(args), topic, _filter(args), timeout_s=args.timeout_s)
    if args.json:
        _json_line({"dlq": topic, **counts.as_dict()}, sys.stdout)
    else:
        sys.stdout.write(f"{topic}\n")
        print_breakdown(counts, sys.stdout, indent="  ")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from processors.contract import Codec, LocalSchemaIds, SchemaRegistryClient
    from processors.dlq.inspect import describe_value, show_document

    topic = _dlq_topic(args)
    record = read_dead_letter(_kafka(args), topic, args.partition, args.offset, timeout_s=args.timeout_s)
    if args.schema_registry_url:
        with SchemaRegistryClient(args.schema_registry_url) as registry:
            view = describe_value(record.value, record.headers, Codec(registry))
    else:
        view = describe_value(record.value, record.headers, Codec(LocalSchemaIds()))
    document = show_document(record, view)
    if args.json:
        _json_line(document, sys.stdout)
        return EXIT_OK
    out = sys.stdout
    out.write(f"dead letter {topic} [{record.partition}] offset {record.offset}\n")
    out.write(f"  timestamp  {format_time(record.timestamp) or '-'}\n")
    out.write(f"  key        {format_key(record.key) or '(none)'}\n")
    out.write("  headers:\n")
    shown = [(header["name"], header["value"]) for header in document["headers"]]  # redacted there
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        out.write(f"    {name.ljust(width)}  {value}\n")
    if view.decoded:
        out.write(f"  value: {view.size} bytes, {view.event_type} (personal data masked as ***)\n")
        out.write(f"    event_id  {view.event_id}\n")
        out.write(f"    subject   {view.subject}\n")
        out.write("    data:\n")
        for line in json.dumps(view.data, indent=2, ensure_ascii=False).splitlines():
            out.write(f"      {line}\n")
    else:
        out.write(f"  value: {view.size} bytes, not a contract event ({view.decode_error})\n")
        if view.text_preview is not None:
            out.write(f"    first bytes (text, personal data masked): {view.text_preview}\n")
        else:
            out.write(f"    first bytes (hex): {view.hex_preview or '(empty)'}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- replay


def _operator(args: argparse.Namespace) -> str:
    return str(args.operator) if args.operator else default_operator()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the replay saves its progress and exits); a second one kills."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _err(f"{signal.Signals(signum).name}: stopping after the current record, saving progress…")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _cmd_replay(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    if not args.dry_run and not args.yes and not interactive:
        raise ConfigError("refusing to replay without --yes: stdin is not a terminal to confirm on")
    catalogue = load_catalogue(args.topics_file)
    kafka, flt = _kafka(args), _filter(args)
    operator = _operator(args)
    stop = threading.Event()
    confirm = None if args.yes or args.dry_run else _prompt
    on_progress = None if args.json else _print_progress
    # the standard OTEL_EXPORTER_OTLP_* variables turn tracing on for replays too
    tracing.configure(otlp_endpoint=None, service_name=f"insurance-processors-dlq-{args.app}")
    with _stop_on_signals(stop):
        try:
            report = replay(
                kafka,
                catalogue,
                args.app,
                flt,
                target=args.target,
                dry_run=args.dry_run,
                rate_per_s=args.rate_per_s,
                replay_limit=args.replay_limit,
                operator=operator,
                restart=args.restart,
                audit_topic=args.audit_topic,
                stop=stop,
                confirm=confirm,
                on_progress=on_progress,
                timeout_s=args.timeout_s,
            )
        finally:
            tracing.shutdown()
    if args.json:
        _json_line(report.as_dict(), sys.stdout)
    else:
        _print_report(report, sys.stdout)
    if report.problems:
        return EXIT_CONFIG  # a dry run that found records the real run would refuse
    return EXIT_OK if report.completed else EXIT_INTERRUPTED


def _describe_target(plan: ReplayPlan | ReplayReport) -> str:
    return plan.target_topic or "their original topics"


def _prompt(plan: ReplayPlan) -> bool:
    out = sys.stderr
    out.write(f"{plan.selected} dead letters selected in {plan.dlq}:\n")
    print_breakdown(plan.breakdown, out, indent="  ")
    if plan.resumed_from:
        out.write(f"resuming after earlier progress on partitions {_partitions(plan.resumed_from)}\n")
    out.write(
        f"will replay {plan.to_replay} to {_describe_target(plan)} "
        f"and park {plan.to_park} in {plan.parked_topic}\n"
    )
    out.write("continue? [y/N] ")
    out.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _partitions(positions: dict[int, int]) -> str:
    return ", ".join(f"{p} (from offset {o})" for p, o in sorted(positions.items()))


def _print_progress(progress: ReplayProgress) -> None:
    share = f" ({100 * progress.done // progress.total}%)" if progress.total else ""
    _err(
        f"replay: {progress.done}/{progress.total}{share} moved, {progress.replayed} replayed, "
        f"{progress.parked} parked, {progress.rate_per_s:.1f}/s"
    )


def _print_report(report: ReplayReport, out: TextIO) -> None:
    if report.dry_run:
        out.write(f"dry run (nothing moved): {report.selected} dead letters selected in {report.dlq}\n")
        print_breakdown(report.breakdown, out, indent="  ")
        out.write(
            f"would replay {report.to_replay} to {_describe_target(report)}, "
            f"park {report.to_park} in {report.parked_topic}\n"
        )
        for topic, count in report.destinations.items():
            out.write(f"  {topic}  {count}\n")
        if report.resumed:
            out.write("(continuing after the progress of an earlier replay; --restart to start over)\n")
        if report.problems:
            out.write(f"{len(report.problems)} selected dead letters could not be replayed:\n")
            for problem in report.problems[:10]:
                out.write(f"  {problem}\n")
        return
    if report.selected == 0:
        out.write(f"0 matched in {report.dlq}: nothing replayed\n")
        return
    out.write(
        f"replayed {report.replayed} to {_describe_target(report)}, parked {report.parked} in "
        f"{report.parked_topic} (replay {report.replay_id}, audited on {report.audit_topic})\n"
    )
    if not report.completed:
        remaining = report.to_replay + report.to_park - report.replayed - report.parked
        out.write(
            f"stopped before the end: {remaining} selected dead letters left. Progress is saved: "
            f"run the same command{' without --restart' if report.restart else ''} again to continue\n"
        )
