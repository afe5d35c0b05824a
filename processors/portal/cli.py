"""``processors portal …``: rebuild the portal's query store, or keep it up to date.

::

    processors portal rebuild [--database-url URL]   drop and recreate the schema, replay every
                                                      source topic from its beginning to its
                                                      current end, print the row counts
    processors portal project [--database-url URL]   follow the topics until SIGTERM/SIGINT

The database is ``--database-url``, else ``PROCESSORS_PORTAL__DATABASE_URL`` (default
``sqlite:///var/portal.db``); the cluster and the catalogue come from the usual settings
(``KAFKA_BOOTSTRAP_SERVERS``, ``PROCESSORS_TOPICS_FILE``, ``PROCESSORS_CLIENT_OVERRIDES``) or the
flags.  Exit codes: 0 done; 1 the cluster or the database failed; 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from processors.errors import ProcessorsError

if TYPE_CHECKING:
    from processors.portal.config import PortalSettings
    from processors.portal.projector import Projector
    from processors.portal.store import PortalStore
    from processors.settings import Settings

__all__ = ["register_cli"]

log = logging.getLogger("processors.portal")

EXIT_OK = 0
EXIT_FAILED = 1


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    portal = sub.add_parser(
        "portal",
        help="the partner portal's query store (SQLite or PostgreSQL), rebuilt from the topics",
        description="The partner portal's query store, a projection of the partner, subscription, "
        "delivery-log and bordereaux topics (docs/portal.md).",
    )
    commands = portal.add_subparsers(dest="portal_command", required=True)

    rebuild = commands.add_parser(
        "rebuild",
        help="drop and recreate the store, replay every topic from its beginning to its current end",
    )
    _common(rebuild)
    rebuild.add_argument(
        "--timeout", type=float, default=3600.0, dest="timeout_s", help="seconds to reach the end (3600)"
    )
    rebuild.add_argument("--json", action="store_true", help="the row counts as one JSON object")
    rebuild.set_defaults(func=_cmd_rebuild)

    project = commands.add_parser("project", help="keep the store up to date until SIGTERM/SIGINT")
    _common(project)
    project.set_defaults(func=_cmd_project)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="default: $PROCESSORS_PORTAL__DATABASE_URL")
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topics-file", help="the topic catalogue (default: ./topics.yaml)")


@dataclass(frozen=True, slots=True)
class _Wiring:
    settings: Settings
    portal: PortalSettings
    store: PortalStore


def _wiring(args: argparse.Namespace) -> _Wiring:
    from pydantic import SecretStr

    from processors.observability import register_secret
    from processors.portal.store import PortalStore
    from processors.settings import load_settings

    overrides: dict[str, object] = {}
    if args.bootstrap_servers:
        overrides["bootstrap_servers"] = args.bootstrap_servers
    if args.topics_file:
        overrides["topics_file"] = args.topics_file
    settings = load_settings(**overrides)
    portal = settings.portal
    if args.database_url:
        portal = portal.model_copy(update={"database_url": SecretStr(args.database_url)})
    store = PortalStore(portal.database_url, busy_timeout_s=portal.busy_timeout_s)
    password = store.url.password
    if password is not None and len(str(password)) >= 4:
        register_secret(str(password))  # the URL itself is logged with its password masked
    return _Wiring(settings, portal, store)


def _projector(wiring: _Wiring) -> Projector:
    from processors.kafka import KafkaClients
    from processors.portal.projector import PortalTopics, Projector
    from processors.topics.catalogue import load_catalogue

    settings = wiring.settings
    topics = PortalTopics.from_catalogue(load_catalogue(settings.topics_file))
    kafka = KafkaClients(settings.bootstrap_servers, settings.client_overrides)
    return Projector(kafka, topics, wiring.store, batch_size=wiring.portal.batch_size)


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from processors.portal.migrations import LATEST_VERSION

    wiring = _wiring(args)
    store = wiring.store
    try:
        projector = _projector(wiring)
        stats = projector.run_to_end(args.timeout_s, from_scratch=True)
        counts = store.counts()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"database": store.display_url, "schema_version": LATEST_VERSION, **counts}))
        return EXIT_OK
    out = sys.stdout
    out.write(
        f"rebuilt {store.display_url} (schema version {LATEST_VERSION}) from "
        f"{', '.join(sorted(projector.topics.sources()))}, each up to its end:\n"
    )
    for name, count in counts.items():
        out.write(f"  {name.replace('_', ' '):<24} {count:>10}\n")
    if stats.stale:
        out.write(f"  {'records read twice':<24} {stats.stale:>10}\n")
    return EXIT_OK


def _cmd_project(args: argparse.Namespace) -> int:
    wiring = _wiring(args)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        projector = _projector(wiring)
        await projector.start()
        try:
            while not stop.is_set() and projector.running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        finally:
            await projector.stop()
        if not stop.is_set():
            raise ProcessorsError(f"the portal projector stopped: {projector.error or 'unknown error'}")
        log.info("portal projector stopped")
        return EXIT_OK

    try:
        return asyncio.run(main())
    finally:
        wiring.store.close()
