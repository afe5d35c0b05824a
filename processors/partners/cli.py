"""``processors partners ...``: the partner registry from an operator's shell.

Talks to Kafka directly, like ``processors dlq``: it reads the registry topic
(``integrations.partners`` of the topic catalogue) in full, makes the change, and returns once
the change is written and read back; running API instances see it within a second.

::

    processors partners create --name "Acme Brokers" --kind broker [--distributor-code D-1001]
                               [--grant CLASS]...
    processors partners list [--kind K] [--status S]
    processors partners show PARTNER_ID
    processors partners suspend|activate PARTNER_ID
    processors partners grants PARTNER_ID (--grant CLASS [--grant CLASS]... | --none)
    processors partners keys create PARTNER_ID [--name N] [--expires-in-days D | --expires-at ISO]
    processors partners keys list PARTNER_ID
    processors partners keys revoke PARTNER_ID KEY_ID

Exit codes: 0 done; 1 refused (no such partner or key, a code another partner has, a limit);
2 bad arguments, invalid fields or configuration; 3 the cluster failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

from processors.dlq.cli import _positive_float
from processors.errors import BrokerError, ConfigError
from processors.partners.model import (
    ACTIVE,
    KINDS,
    STATUSES,
    SUSPENDED,
    ApiKey,
    InvalidPartner,
    Partner,
    PartnerError,
    iso,
)
from processors.partners.projection import DATA_CLASSES
from processors.partners.registry import CreatedKey, PartnerRegistry
from processors.partners.store import PARTNERS_TOPIC, PartnerStore
from processors.topics.catalogue import CatalogueError
from processors.utc import to_utc

__all__ = ["EXIT_BROKER", "EXIT_CONFIG", "EXIT_OK", "EXIT_REFUSED", "register_cli"]

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3

_T = TypeVar("_T")


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``partners create|list|show|suspend|activate|grants|keys`` to a ``processors`` sub-command set."""
    partners = sub.add_parser(
        "partners",
        help="register partners and manage their API keys",
        description="The partner registry: partners, their status and their API keys (docs/partners.md).",
    )
    commands = partners.add_subparsers(
        dest="partners_command", required=True, metavar="{create,list,show,suspend,activate,grants,keys}"
    )

    create = commands.add_parser("create", help="register a partner")
    _common(create)
    create.add_argument("--name", required=True, help="the partner's name")
    create.add_argument("--kind", required=True, choices=KINDS, help="what the partner is")
    create.add_argument(
        "--reinsurer-code", help="a reinsurer's code in treaties.yaml (RE001); reinsurers only"
    )
    create.add_argument("--distributor-code", help="a broker's distributor code; brokers only")
    create.add_argument("--suspended", action="store_true", help="register it suspended (its keys refused)")
    _grant_option(
        create, "a class of personal data its webhook deliveries may carry (repeat for more; default none)"
    )
    create.set_defaults(func=_guarded(_cmd_create))

    listing = commands.add_parser("list", help="one line per partner")
    _common(listing)
    listing.add_argument("--kind", choices=KINDS, help="only partners of this kind")
    listing.add_argument("--status", choices=STATUSES, help="only partners with this status")
    listing.set_defaults(func=_guarded(_cmd_list))

    show = commands.add_parser("show", help="one partner and its keys (never a key itself)")
    _common(show)
    show.add_argument("partner_id", metavar="PARTNER_ID")
    show.set_defaults(func=_guarded(_cmd_show))

    for name, status, text in (
        ("suspend", SUSPENDED, "refuse every key of the partner, at once"),
        ("activate", ACTIVE, "accept the partner's keys again"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        command.add_argument("partner_id", metavar="PARTNER_ID")
        command.set_defaults(func=_guarded(_cmd_status), status=status)

    grants = commands.add_parser(
        "grants",
        help="set the classes of personal data a partner's webhook deliveries carry",
        description="Replace the partner's grants: its deliveries carry exactly these classes of "
        "personal data from the next event on (docs/partners.md).",
    )
    _common(grants)
    grants.add_argument("partner_id", metavar="PARTNER_ID")
    which = grants.add_mutually_exclusive_group(required=True)
    _grant_option(which, "a class of personal data to grant (repeat for more)")
    which.add_argument("--none", action="store_true", help="grant nothing: deliveries carry no personal data")
    grants.set_defaults(func=_guarded(_cmd_grants))

    keys = commands.add_parser("keys", help="create, list and revoke a partner's API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")

    key_create = keys_commands.add_parser("create", help="make a key; it is printed once, store it then")
    _common(key_create)
    key_create.add_argument("partner_id", metavar="PARTNER_ID")
    key_create.add_argument("--name", help="what the key is for (shown in listings)")
    expiry = key_create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=_days, help="the key stops working after this many days")
    expiry.add_argument(
        "--expires-at", type=_utc_time, help="the key stops working at this ISO-8601 UTC time"
    )
    key_create.set_defaults(func=_guarded(_cmd_key_create))

    key_list = keys_commands.add_parser("list", help="a partner's keys: prefix, state, times (never the key)")
    _common(key_list)
    key_list.add_argument("partner_id", metavar="PARTNER_ID")
    key_list.set_defaults(func=_guarded(_cmd_key_list))

    key_revoke = keys_commands.add_parser("revoke", help="refuse a key from now on, on every instance")
    _common(key_revoke)
    key_revoke.add_argument("partner_id", metavar="PARTNER_ID")
    key_revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id or its pk_live_ prefix")
    key_revoke.set_defaults(func=_guarded(_cmd_key_revoke))


# --------------------------------------------------------------------------- arguments


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(ENV_BOOTSTRAP),
        help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP})",
    )
    parser.add_argument(
        "--topics-file", help="topic catalogue (default: $PROCESSORS_TOPICS_FILE, else ./topics.yaml)"
    )
    parser.add_argument("--topic", help=f"the registry topic (default: the catalogue's {PARTNERS_TOPIC})")
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


def _grant_option(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, text: str) -> None:
    parser.add_argument(
        "--grant",
        action="append",
        choices=DATA_CLASSES,
        default=None,
        dest="grants",
        metavar="CLASS",
        help=f"{text}: {', '.join(DATA_CLASSES)}",
    )


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 3650:
        raise argparse.ArgumentTypeError(f"must be between 1 and 3650 (got {value})")
    return value


def _utc_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (2026-01-31T00:00Z): {text!r}")
    try:
        return to_utc(moment)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except InvalidPartner as exc:
            _err(f"error: {exc}")
            return EXIT_CONFIG
        except PartnerError as exc:
            _err(f"error: {exc}")
            return EXIT_REFUSED
        except CatalogueError as exc:
            _err(str(exc))
            return EXIT_CONFIG
        except ConfigError as exc:
            _err(f"error: {exc}")
            return EXIT_CONFIG
        except BrokerError as exc:
            _err(f"error: {exc}")
            return EXIT_BROKER

    return run


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _store(args: argparse.Namespace) -> PartnerStore:
    from processors.apps.registry import catalogue_topic
    from processors.dlq._kafka import clients
    from processors.dlq.cli import read_client_config
    from processors.topics.catalogue import load_catalogue

    properties = read_client_config(args.client_config) if args.client_config is not None else {}
    kafka = clients(properties, bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or catalogue_topic(load_catalogue(args.topics_file), PARTNERS_TOPIC)
    return PartnerStore(kafka, topic, write_timeout_s=args.timeout_s, start_timeout_s=args.timeout_s)


def _with_registry(args: argparse.Namespace, work: Callable[[PartnerRegistry], Awaitable[_T]]) -> _T:
    store = _store(args)

    async def main() -> _T:
        async with store:
            return await work(PartnerRegistry(store, catch_up_timeout_s=args.timeout_s))

    return asyncio.run(main())


# --------------------------------------------------------------------------- commands


def _cmd_create(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> Partner:
        return await registry.create_partner(
            name=args.name,
            kind=args.kind,
            status=SUSPENDED if args.suspended else ACTIVE,
            reinsurer_code=args.reinsurer_code,
            distributor_code=args.distributor_code,
            grants=args.grants or (),
        )

    partner = _with_registry(args, work)
    if args.json:
        _json_line(partner.public_view(), sys.stdout)
    else:
        sys.stdout.write(f"created partner {partner.id} ({partner.kind}, {partner.status}): {partner.name}\n")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> list[Partner]:
        return registry.partners(kind=args.kind, status=args.status)

    partners = _with_registry(args, work)
    out = sys.stdout
    if args.json:
        for partner in partners:
            _json_line(partner.public_view(), out)
        return EXIT_OK
    if partners:
        out.write(f"{'ID':<28} {'KIND':<17} {'STATUS':<10} {'CODE':<12} {'GRANTS':<36} NAME\n")
    for partner in partners:
        code = partner.reinsurer_code or partner.distributor_code or "-"
        granted = ",".join(partner.grants) or "-"
        row = f"{partner.id:<28} {partner.kind:<17} {partner.status:<10} {code:<12} {granted:<36}"
        out.write(f"{row} {partner.name}\n")
    out.write(f"{len(partners)} partner{'' if len(partners) == 1 else 's'}\n")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> tuple[Partner, list[ApiKey], dict[str, datetime | None]]:
        keys = registry.keys(args.partner_id)
        return registry.partner(args.partner_id), keys, {k.id: registry.table.last_used(k.id) for k in keys}

    partner, keys, used = _with_registry(args, work)
    now = datetime.now(UTC)
    views = [k.public_view(now, used[k.id]) for k in keys]
    if args.json:
        _json_line({**partner.public_view(), "keys": views}, sys.stdout)
        return EXIT_OK
    out = sys.stdout
    document = partner.public_view()
    width = max(len(name) for name in document)
    for name, value in document.items():
        if isinstance(value, list):
            value = ", ".join(value) or None
        out.write(f"{name.ljust(width)}  {'-' if value is None else value}\n")
    out.write(f"keys ({sum(1 for v in views if v['state'] == 'active')} active of {len(views)}):\n")
    _write_keys(views, out, indent="  ")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> Partner:
        return await registry.update_partner(args.partner_id, status=args.status)

    partner = _with_registry(args, work)
    if args.json:
        _json_line(partner.public_view(), sys.stdout)
    else:
        sys.stdout.write(f"partner {partner.id} is {partner.status}\n")
    return EXIT_OK


def _cmd_grants(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> Partner:
        return await registry.update_partner(args.partner_id, grants=[] if args.none else args.grants)

    partner = _with_registry(args, work)
    if args.json:
        _json_line(partner.public_view(), sys.stdout)
    else:
        shown = ", ".join(partner.grants) or "none (no personal data)"
        sys.stdout.write(f"partner {partner.id} grants: {shown}\n")
    return EXIT_OK


def _cmd_key_create(args: argparse.Namespace) -> int:
    expires_at: datetime | None = args.expires_at
    if args.expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days)

    async def work(registry: PartnerRegistry) -> CreatedKey:
        return await registry.create_key(args.partner_id, name=args.name, expires_at=expires_at)

    created = _with_registry(args, work)
    document = created.document(datetime.now(UTC))
    if args.json:
        _json_line(document, sys.stdout)
    else:
        out = sys.stdout
        out.write(f"key {document['prefix']} created for partner {args.partner_id}")
        out.write(f" (expires {document['expires_at']})\n" if document["expires_at"] else " (no expiry)\n")
        out.write(f"{document['key']}\n")
    _err("this key is shown once and cannot be read back: give it to the partner over a secure channel now")
    return EXIT_OK


def _cmd_key_list(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        return [k.public_view(now, registry.table.last_used(k.id)) for k in registry.keys(args.partner_id)]

    views = _with_registry(args, work)
    if args.json:
        for view in views:
            _json_line(view, sys.stdout)
        return EXIT_OK
    _write_keys(views, sys.stdout, indent="")
    sys.stdout.write(f"{len(views)} key{'' if len(views) == 1 else 's'}\n")
    return EXIT_OK


def _cmd_key_revoke(args: argparse.Namespace) -> int:
    async def work(registry: PartnerRegistry) -> ApiKey:
        return await registry.revoke_key(args.partner_id, args.key_id)

    key = _with_registry(args, work)
    if args.json:
        _json_line(key.public_view(datetime.now(UTC)), sys.stdout)
    else:
        sys.stdout.write(f"key {key.prefix} of partner {key.partner_id} revoked at {iso(key.revoked_at)}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- output


def _json_line(document: object, out: TextIO) -> None:
    out.write(json.dumps(document, ensure_ascii=False) + "\n")


def _write_keys(views: list[dict[str, Any]], out: TextIO, *, indent: str) -> None:
    if not views:
        return
    out.write(
        f"{indent}{'PREFIX':<17} {'STATE':<8} {'CREATED (UTC)':<21} {'EXPIRES (UTC)':<21} "
        f"{'LAST USED (UTC)':<21} NAME\n"
    )
    for view in views:
        out.write(
            f"{indent}{view['prefix']:<17} {view['state']:<8} {_short(view['created_at']):<21} "
            f"{_short(view['expires_at']):<21} {_short(view['last_used_at']):<21} {view['name'] or '-'}\n"
        )


def _short(moment: str | None) -> str:
    """``2025-03-01T12:00:00Z`` without fractions of a second; ``-`` for none."""
    if moment is None:
        return "-"
    return moment.split(".", 1)[0].removesuffix("Z") + "Z"
