"""Fetching the Apache Kafka broker jars from Maven Central into a per-version cache.

Layout under the cache root (``$PROCESSORS_CACHE_DIR``, else ``$XDG_CACHE_HOME/insurance-processors``,
else ``~/.cache/insurance-processors``)::

    kafka/<version>/libs/            the broker's classpath
    kafka/<version>/libs.complete    written last: its presence means libs/ is whole
    kafka/<version>/.lock            held while fetching, so concurrent fetches do not collide
    kafka/<version>/build/pom.xml    the generated Maven project

An interrupted fetch leaves no ``libs.complete`` and is redone from scratch by the next call.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template

from processors.errors import ConfigError
from processors_dev.devbroker._model import BrokerUnavailableError, JarFetchError

__all__ = [
    "KAFKA_VERSION",
    "cache_root",
    "cached_kafka_jars",
    "ensure_kafka_jars",
    "kafka_version",
    "render_pom",
]

logger = logging.getLogger("processors_dev.devbroker")

#: The Apache Kafka release the harness runs; ``$PROCESSORS_KAFKA_VERSION`` overrides it.
KAFKA_VERSION = "4.1.1"
#: log4j release used for the SLF4J binding when the fetched jars do not already fix one.
_DEFAULT_LOG4J_VERSION = "2.24.3"
_DEPENDENCY_PLUGIN_VERSION = "3.8.1"
#: Bindings from SLF4J to log4j 2, by the slf4j-api major version they serve.
_SLF4J1_BINDING = "log4j-slf4j-impl"
_SLF4J2_BINDING = "log4j-slf4j2-impl"

_FETCH_TIMEOUT_S = 900.0
_LOCK_WAIT_S = 900.0
_LOCK_POLL_S = 0.5
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-]*$")
_OUTPUT_TAIL_LINES = 40


def kafka_version(version: str | None = None) -> str:
    """The Kafka version to use: ``version``, else ``$PROCESSORS_KAFKA_VERSION``, else the pin."""
    chosen = version or os.environ.get("PROCESSORS_KAFKA_VERSION") or KAFKA_VERSION
    if not _VERSION_RE.fullmatch(chosen):
        raise ConfigError(f"invalid Kafka version {chosen!r}")
    return chosen


def cache_root() -> Path:
    """The project's cache directory."""
    explicit = os.environ.get("PROCESSORS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "insurance-processors"


def _version_home(version: str) -> Path:
    return cache_root() / "kafka" / version


def cached_kafka_jars(version: str | None = None) -> Path | None:
    """The libs directory if a complete fetch of ``version`` is cached, else ``None``."""
    home = _version_home(kafka_version(version))
    libs = home / "libs"
    if (home / "libs.complete").is_file() and libs.is_dir():
        return libs
    return None


def render_pom(version: str, *, slf4j_binding: str, log4j_version: str) -> str:
    """The Maven project whose runtime dependencies are the Kafka broker's classpath."""
    template = resources.files("processors_dev.devbroker").joinpath("resources", "pom.xml.tmpl").read_text()
    return Template(template).substitute(
        kafka_version=version,
        slf4j_binding=slf4j_binding,
        log4j_version=log4j_version,
        dependency_plugin_version=_DEPENDENCY_PLUGIN_VERSION,
    )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + _LOCK_WAIT_S
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JarFetchError(
                        f"another process held {path} for {_LOCK_WAIT_S:g} s; delete it if no fetch runs"
                    ) from None
                if not told:
                    logger.info("waiting for another process to finish fetching Kafka jars (%s)", path)
                    told = True
                time.sleep(_LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _jar_version(libs: Path, artifact: str) -> str | None:
    pattern = re.compile(re.escape(artifact) + r"-(\d[^-]*(?:-[^-]+)*)\.jar")
    for jar in sorted(libs.glob(f"{artifact}-*.jar")):
        match = pattern.fullmatch(jar.name)
        if match is not None:
            return match.group(1)
    return None


def _wanted_binding(libs: Path, current: tuple[str, str]) -> tuple[str, str]:
    """The (binding artifact, log4j version) that matches the slf4j-api and log4j-api in ``libs``."""
    slf4j = _jar_version(libs, "slf4j-api")
    binding = current[0]
    if slf4j is not None:
        binding = _SLF4J2_BINDING if int(slf4j.split(".")[0]) >= 2 else _SLF4J1_BINDING
    log4j = _jar_version(libs, "log4j-api") or current[1]
    return binding, log4j


def _tail(text: str, lines: int = _OUTPUT_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_maven(mvn: str, version: str, home: Path, out_dir: Path, binding: tuple[str, str]) -> None:
    build = home / "build"
    build.mkdir(parents=True, exist_ok=True)
    pom = build / "pom.xml"
    pom.write_text(render_pom(version, slf4j_binding=binding[0], log4j_version=binding[1]))
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out_dir}",
        "-DincludeScope=runtime",
    ]
    try:
        completed = subprocess.run(  # noqa: S603 - fixed Maven command line
            command,
            cwd=build,
            capture_output=True,
            text=True,
            timeout=_FETCH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise JarFetchError(
            f"Maven did not finish fetching Kafka {version} within {_FETCH_TIMEOUT_S:g} s"
        ) from exc
    except OSError as exc:
        raise JarFetchError(f"cannot run {mvn}: {exc}") from exc
    if completed.returncode != 0:
        raise JarFetchError(
            f"Maven failed (exit code {completed.returncode}) fetching Kafka {version} with {pom}:\n"
            + _tail(completed.stdout + "\n" + completed.stderr)
        )


def _fetch(mvn: str, version: str, home: Path) -> None:
    libs = home / "libs"
    partial = home / "libs.partial"
    binding = (_SLF4J1_BINDING, _DEFAULT_LOG4J_VERSION)
    for _ in range(2):
        shutil.rmtree(partial, ignore_errors=True)
        _run_maven(mvn, version, home, partial, binding)
        wanted = _wanted_binding(partial, binding)
        if wanted == binding:
            break
        logger.info(
            "Kafka %s pulls slf4j-api %s and log4j-api %s; fetching again with %s %s",
            version,
            _jar_version(partial, "slf4j-api"),
            _jar_version(partial, "log4j-api"),
            *wanted,
        )
        binding = wanted
    else:
        raise JarFetchError(
            f"the SLF4J binding for Kafka {version} did not settle (last try {binding[0]} {binding[1]})"
        )
    if not any(partial.glob(f"kafka_*-{version}.jar")):
        raise JarFetchError(f"Maven finished but {partial} has no kafka_*-{version}.jar")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker = home / "libs.complete"
    scratch = home / "libs.complete.tmp"
    scratch.write_text(
        json.dumps(
            {
                "kafka_version": version,
                "slf4j_binding": binding[0],
                "log4j_version": binding[1],
                "fetched_at": datetime.now(UTC).isoformat(),
                "jars": sorted(jar.name for jar in libs.glob("*.jar")),
            },
            indent=2,
        )
    )
    os.replace(scratch, marker)


def ensure_kafka_jars(version: str | None = None) -> Path:
    """Fetch the Apache Kafka broker jars once and return the directory that holds them.

    Safe to call from several processes at once: one fetches, the others wait for it.
    Raises :class:`BrokerUnavailableError` without Maven, :class:`JarFetchError` if the fetch fails.
    """
    chosen = kafka_version(version)
    cached = cached_kafka_jars(chosen)
    if cached is not None:
        return cached
    home = _version_home(chosen)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailableError(
            f"Apache Maven (mvn) is needed once to fetch the Kafka {chosen} jars into {home / 'libs'}; "
            "install Maven, or fetch on a machine that has it with `processors broker fetch`"
        )
    with _exclusive_lock(home / ".lock"):
        cached = cached_kafka_jars(chosen)
        if cached is not None:
            return cached
        (home / "libs.complete").unlink(missing_ok=True)
        logger.info("fetching Apache Kafka %s jars with Maven into %s", chosen, home / "libs")
        started = time.monotonic()
        _fetch(mvn, chosen, home)
        logger.info("fetched Apache Kafka %s jars in %.1f s", chosen, time.monotonic() - started)
    return home / "libs"
