"""The development tooling's subcommands of ``processors``: demo, samples, sandbox, broker.

Registered through the ``processors.commands`` entry-point group (``pyproject.toml``), so the
product's command line has them when this package is installed and never imports it itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from processors_dev.devbroker.cli import register_cli as register_broker
from processors_dev.sandbox.cli import register_cli as register_sandbox

__all__ = ["register"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from processors_dev.demo import run_demo

    if not args.verbose:  # the live view is the output; logs only for errors
        logging.getLogger().setLevel(logging.ERROR)
    return asyncio.run(
        run_demo(events=args.events, policies=args.policies, broker=args.broker, serve=args.serve)
    )


def _cmd_samples(args: argparse.Namespace) -> int:
    from processors.settings import load_settings
    from processors_dev.demo import publish_samples

    settings = load_settings(
        **({"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {})
    )
    if args.kind == "bordereaux":
        from processors_dev.bordereaux_samples import bordereaux_stream
        from processors_dev.demo import publish_events

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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="end-to-end demo on embedded defaults")
    demo.add_argument("--events", type=int, default=300)
    demo.add_argument("--policies", type=int, default=60)
    demo.add_argument(
        "--broker",
        choices=["auto", "external", "docker", "apache", "embedded"],
        default="auto",
        help="auto: $KAFKA_BOOTSTRAP_SERVERS if set, else the embedded broker",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the summary, keep the broker, apps, API and partner portal answering until Ctrl-C",
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

    register_sandbox(sub)
    register_broker(sub)
