"""Choosing a development broker: external, then Docker, then local Apache Kafka, then embedded."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from processors.errors import ConfigError
from processors_dev.devbroker._apache import ApacheKafkaBroker
from processors_dev.devbroker._docker import DockerKafkaBroker, docker_engine_problem
from processors_dev.devbroker._embedded import EmbeddedBroker, resolve_tansu
from processors_dev.devbroker._external import ENV_BOOTSTRAP_SERVERS, ExternalBroker
from processors_dev.devbroker._jars import cached_kafka_jars
from processors_dev.devbroker._java import find_java
from processors_dev.devbroker._model import BrokerKind, BrokerUnavailableError, DevBroker

__all__ = ["ALL_KINDS", "ENV_FORCE_KIND", "Availability", "BrokerOption", "default_options", "provide_broker"]

logger = logging.getLogger("processors_dev.devbroker")

ALL_KINDS: tuple[BrokerKind, ...] = (
    BrokerKind.EXTERNAL,
    BrokerKind.DOCKER,
    BrokerKind.APACHE,
    BrokerKind.EMBEDDED,
)
#: Setting this to a broker kind forces that kind, like ``provide_broker(prefer=...)``.
ENV_FORCE_KIND = "PROCESSORS_BROKER"


@dataclass(frozen=True)
class Availability:
    """Whether a kind of broker can be used here, and why (or why not)."""

    available: bool
    reason: str


@dataclass(frozen=True)
class BrokerOption:
    """How to check for one kind of broker and how to make one.  ``check`` must be quick."""

    kind: BrokerKind
    check: Callable[[], Availability]
    create: Callable[[], DevBroker]


def _check_external() -> Availability:
    address = os.environ.get(ENV_BOOTSTRAP_SERVERS, "").strip()
    if address:
        return Availability(True, f"{ENV_BOOTSTRAP_SERVERS}={address}")
    return Availability(False, f"{ENV_BOOTSTRAP_SERVERS} is not set")


def _create_external() -> DevBroker:
    address = os.environ.get(ENV_BOOTSTRAP_SERVERS, "").strip()
    if not address:
        raise BrokerUnavailableError(f"{ENV_BOOTSTRAP_SERVERS} is not set")
    return ExternalBroker(address)


def _check_docker() -> Availability:
    problem = docker_engine_problem(timeout_s=2.0)
    if problem is not None:
        return Availability(False, problem)
    return Availability(True, "a Docker engine answers")


def _check_apache() -> Availability:
    try:
        java = find_java()
    except BrokerUnavailableError as exc:
        return Availability(False, str(exc))
    if cached_kafka_jars() is not None:
        return Availability(True, f"Java {java.major} at {java.executable}; Kafka jars cached")
    if shutil.which("mvn") is None:
        return Availability(
            False, "the Kafka jars are not cached and Maven (mvn) is not on PATH to fetch them"
        )
    return Availability(
        True, f"Java {java.major} at {java.executable}; Kafka jars will be fetched with Maven"
    )


def _check_embedded() -> Availability:
    try:
        executable = resolve_tansu()
    except BrokerUnavailableError as exc:
        return Availability(False, str(exc))
    return Availability(True, f"Tansu at {executable}")


def default_options() -> dict[BrokerKind, BrokerOption]:
    """The real checks and constructors for the four kinds."""
    return {
        BrokerKind.EXTERNAL: BrokerOption(BrokerKind.EXTERNAL, _check_external, _create_external),
        BrokerKind.DOCKER: BrokerOption(BrokerKind.DOCKER, _check_docker, DockerKafkaBroker),
        BrokerKind.APACHE: BrokerOption(BrokerKind.APACHE, _check_apache, ApacheKafkaBroker),
        BrokerKind.EMBEDDED: BrokerOption(BrokerKind.EMBEDDED, _check_embedded, EmbeddedBroker),
    }


_KIND_NAMES = ", ".join(kind.value for kind in BrokerKind)


def _forced_kind(prefer: BrokerKind | str | None) -> tuple[BrokerKind | None, str]:
    """The kind forced by ``prefer`` or the environment, and where the order came from."""
    if prefer is not None:
        try:
            return BrokerKind(prefer), "prefer="
        except ValueError:
            raise ConfigError(f"unknown broker kind {prefer!r}; expected one of {_KIND_NAMES}") from None
    from_env = os.environ.get(ENV_FORCE_KIND, "").strip().lower()
    if not from_env:
        return None, ""
    try:
        return BrokerKind(from_env), f"{ENV_FORCE_KIND}="
    except ValueError:
        raise ConfigError(f"{ENV_FORCE_KIND}={from_env!r} is not one of {_KIND_NAMES}") from None


def provide_broker(
    *,
    allow: Sequence[BrokerKind] = ALL_KINDS,
    prefer: BrokerKind | None = None,
    options: Mapping[BrokerKind, BrokerOption] | None = None,
) -> DevBroker:
    """Pick a development broker (not started yet: call ``start()`` or use ``with``).

    Tries, in order and restricted to ``allow``: an external cluster (``KAFKA_BOOTSTRAP_SERVERS``),
    Docker, a local Apache Kafka, the embedded broker.  ``prefer`` (else ``$PROCESSORS_BROKER``)
    forces one kind and fails if it is unavailable.  ``options`` replaces the availability checks
    and constructors (tests use it).
    """
    table = dict(options) if options is not None else default_options()
    allowed = [kind for kind in ALL_KINDS if kind in set(allow)]
    forced, source = _forced_kind(prefer)
    if forced is not None:
        if forced not in allowed:
            allowed_names = ", ".join(allowed)
            raise ConfigError(f"broker kind {source}{forced} is forced but only {allowed_names} are allowed")
        option = table[forced]
        availability = option.check()
        if not availability.available:
            raise BrokerUnavailableError(
                f"broker kind {source}{forced} is forced but unavailable: {availability.reason}"
            )
        logger.info("using the %s broker (forced by %s%s): %s", forced, source, forced, availability.reason)
        return option.create()

    skipped: list[str] = []
    for kind in ALL_KINDS:
        if kind not in allowed:
            logger.info("skipping the %s broker: not allowed here", kind)
            skipped.append(f"{kind}: not allowed")
            continue
        availability = table[kind].check()
        if not availability.available:
            logger.info("skipping the %s broker: %s", kind, availability.reason)
            skipped.append(f"{kind}: {availability.reason}")
            continue
        logger.info("using the %s broker: %s", kind, availability.reason)
        return table[kind].create()
    raise BrokerUnavailableError("no development broker is available (" + "; ".join(skipped) + ")")
