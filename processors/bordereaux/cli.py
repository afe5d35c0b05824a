"""``processors bordereaux ...`` and ``processors regulatory ...``.

::

    processors bordereaux treaties [--treaties-file F]         validate and list the treaty book
    processors bordereaux close --treaty T --period 2024-03     close a period now (every ledger partition)
    processors regulatory close --date 2024-03-31               close a regulatory day now
    processors regulatory rerun --date 2024-03-31               send a closed day's file job again
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from processors.errors import ConfigError

__all__ = ["register_cli"]


def _settings(args: argparse.Namespace) -> Any:
    from processors.settings import load_settings

    overrides: dict[str, object] = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "topics_file", None):
        overrides["topics_file"] = args.topics_file
    return load_settings(**overrides)


def _book(args: argparse.Namespace, settings: Any) -> Any:
    from processors.bordereaux.treaties import load_treaty_book

    path = (
        Path(args.treaties_file)
        if getattr(args, "treaties_file", None)
        else settings.bordereaux.treaties_file
    )
    return load_treaty_book(path)


def _topics(settings: Any) -> Any:
    from processors.bordereaux.topology import BordereauxTopics
    from processors.topics.catalogue import load_catalogue

    return BordereauxTopics.from_catalogue(load_catalogue(settings.topics_file))


def _kafka(settings: Any) -> Any:
    from processors.kafka import KafkaClients

    return KafkaClients(settings.bootstrap_servers, settings.client_overrides)


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cmd_treaties(args: argparse.Namespace) -> int:
    settings = _settings(args)
    book = _book(args, settings)
    print(f"cedant {book.cedant_code} ({book.cedant_name}); {len(book.treaties)} treaties")
    for treaty in book.treaties:
        print(
            f"  {treaty.treaty_number:<16} {treaty.type:<12} reinsurer {treaty.reinsurer_code:<8} "
            f"{treaty.inception}..{treaty.expiry} {treaty.period_kind} grace {_duration(treaty.grace)} "
            f"settles in {treaty.settlement_currency}"
        )
    return 0


def _cmd_close(args: argparse.Namespace) -> int:
    from processors.bordereaux.topology import send_close

    settings = _settings(args)
    book = _book(args, settings)
    treaty = book.treaty(args.treaty)  # unknown treaty: ConfigError naming the known ones
    period = treaty.period_by_id(args.period)  # malformed or foreign period id: ConfigError
    told = send_close(
        _kafka(settings),
        _topics(settings),
        treaty=treaty.treaty_number,
        period=period.id,
    )
    print(
        f"close of {treaty.treaty_number} {period.id} sent to {told} ledger partition(s); "
        f"the reports appear on {_topics(settings).bordereaux} once every partition has closed it"
    )
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"a day is written YYYY-MM-DD, not {text!r}") from exc


def _cmd_regulatory_close(args: argparse.Namespace) -> int:
    from processors.bordereaux.topology import send_close

    settings = _settings(args)
    day = _day(args.date)
    told = send_close(
        _kafka(settings),
        _topics(settings),
        treaty=None,
        period=day.isoformat(),
    )
    print(f"close of regulatory day {day} sent to {told} ledger partition(s)")
    return 0


def _cmd_regulatory_rerun(args: argparse.Namespace) -> int:
    from processors.bordereaux.rerun import rerun_day

    settings = _settings(args)
    day = _day(args.date)
    found = rerun_day(
        _kafka(settings),
        _topics(settings).regulatory_files,
        day,
    )
    if not found:
        print(f"no file job for {day}: the day is not closed yet (see `processors regulatory close`)")
        return 1
    print(
        f"file job for {day} sent again; the regulatory app rewrites identical files "
        "and skips an identical upload"
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topics-file", help="default: ./topics.yaml")


_BOOK_HELP = "default: $PROCESSORS_BORDEREAUX__TREATIES_FILE or ./treaties.yaml"


def register_cli(sub: Any) -> None:
    bordereaux = sub.add_parser("bordereaux", help="reinsurance bordereaux: treaties, period close")
    bsub = bordereaux.add_subparsers(dest="bordereaux_command", required=True)
    treaties = bsub.add_parser("treaties", help="validate and list the treaty book")
    treaties.add_argument(
        "--treaties-file", help="default: $PROCESSORS_BORDEREAUX__TREATIES_FILE or ./treaties.yaml"
    )
    treaties.set_defaults(func=_cmd_treaties)
    close = bsub.add_parser("close", help="close a treaty's period now (its reports are then built)")
    close.add_argument("--treaty", required=True, help="treaty number, e.g. TRY-2024-001")
    close.add_argument("--period", required=True, help="period id: 2024-03 (monthly) or 2024-Q1 (quarterly)")
    close.add_argument(
        "--treaties-file", help="default: $PROCESSORS_BORDEREAUX__TREATIES_FILE or ./treaties.yaml"
    )
    _common(close)
    close.set_defaults(func=_cmd_close)

    regulatory = sub.add_parser("regulatory", help="regulatory day files: close a day, send a day again")
    rsub = regulatory.add_subparsers(dest="regulatory_command", required=True)
    rclose = rsub.add_parser("close", help="close a regulatory day now")
    rclose.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    _common(rclose)
    rclose.set_defaults(func=_cmd_regulatory_close)
    rerun = rsub.add_parser(
        "rerun", help="send a closed day's file job again (identical files, no double upload)"
    )
    rerun.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    _common(rerun)
    rerun.set_defaults(func=_cmd_regulatory_rerun)
