"""The ``broker`` command: run a development broker in the foreground, or pre-fetch the Kafka jars.

::

    processors broker start [--kind external|docker|apache|embedded]
    processors broker fetch [--version 4.1.1]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from processors.errors import ProcessorsError
from processors_dev.devbroker._jars import ensure_kafka_jars
from processors_dev.devbroker._model import BrokerKind
from processors_dev.devbroker._select import provide_broker

__all__ = ["main", "register_cli"]

#: How often the foreground command checks that the broker is still alive.
_WATCH_INTERVAL_S = 1.0


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``broker`` subcommand (with ``start`` and ``fetch``) to a ``processors`` CLI."""
    broker = sub.add_parser("broker", help="run a development Kafka broker, or pre-fetch its jars")
    actions = broker.add_subparsers(dest="broker_action", required=True, metavar="{start,fetch}")

    start = actions.add_parser(
        "start",
        help="start a broker, print its address, run until SIGINT/SIGTERM",
        description=(
            "Start a development broker (external, docker, apache or embedded: the first available "
            "unless --kind or PROCESSORS_BROKER says), print KAFKA_BOOTSTRAP_SERVERS=<address>, and "
            "keep it running until interrupted."
        ),
    )
    kinds = [kind.value for kind in BrokerKind]
    start.add_argument("--kind", choices=kinds, help="force this kind of broker")
    start.set_defaults(func=_run_start)

    fetch = actions.add_parser("fetch", help="fetch the Apache Kafka jars into the cache")
    fetch.add_argument("--version", help="Kafka version (default: $PROCESSORS_KAFKA_VERSION, else the pin)")
    fetch.set_defaults(func=_run_fetch)


def _run_fetch(args: argparse.Namespace) -> int:
    try:
        libs = ensure_kafka_jars(args.version)
    except ProcessorsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(libs)
    return 0


class _Interrupted(Exception):
    """A stop signal arrived while the broker was starting."""


def _run_start(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()
    starting = threading.Event()
    starting.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if starting.is_set():
            # Unwind the start: the broker classes stop whatever they launched on the way out.
            raise _Interrupted
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(BrokerKind(args.kind) if args.kind else None, starting, stop_requested)
    except _Interrupted:
        print("interrupted while starting the broker", file=sys.stderr)
        return 130
    except ProcessorsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(kind: BrokerKind | None, starting: threading.Event, stop_requested: threading.Event) -> int:
    broker = provide_broker(prefer=kind)
    info = broker.start()
    try:
        starting.clear()
        print(f"KAFKA_BOOTSTRAP_SERVERS={info.bootstrap_servers}")
        print(f"PROCESSORS_BROKER={info.kind}")
        overrides = info.client_overrides()
        if overrides:
            settings = " ".join(f"{key}={value}" for key, value in overrides.items())
            print(f"# clients of this broker need: {settings}")
        if not info.supports_transactions:
            print("# this broker does not honour transaction aborts")
        sys.stdout.flush()
        while not stop_requested.wait(_WATCH_INTERVAL_S):
            if not broker.running:
                print(f"error: the {info.kind} broker stopped unexpectedly", file=sys.stderr)
                return 1
        return 0
    finally:
        starting.clear()
        broker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``broker`` command on its own: ``python -m processors_dev.devbroker.cli broker start``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m processors_dev.devbroker.cli")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
