"""Finding the machine's Java runtime and checking its version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processors_dev.devbroker._model import BrokerUnavailableError

__all__ = ["MIN_JAVA_MAJOR", "JavaRuntime", "find_java", "parse_java_major"]

MIN_JAVA_MAJOR = 17
_VERSION_TIMEOUT_S = 15.0
_VERSION_RE = re.compile(r'version "(?P<first>\d+)(?:\.(?P<second>\d+))?')


@dataclass(frozen=True)
class JavaRuntime:
    executable: Path
    major: int


def parse_java_major(version_output: str) -> int | None:
    """The major version from ``java -version`` output (``1.8.0_x`` is 8, ``17.0.2`` is 17)."""
    match = _VERSION_RE.search(version_output)
    if match is None:
        return None
    first = int(match["first"])
    if first == 1 and match["second"] is not None:
        return int(match["second"])
    return first


def _locate(explicit: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if explicit is not None:
        return Path(explicit), "given explicitly"
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not candidate.is_file():
            raise BrokerUnavailableError(f"JAVA_HOME={java_home} has no bin/java")
        return candidate, "from JAVA_HOME"
    on_path = shutil.which("java")
    if on_path is None:
        raise BrokerUnavailableError(
            f"no Java found: set JAVA_HOME or put java (version {MIN_JAVA_MAJOR} or newer) on PATH"
        )
    return Path(on_path), "on PATH"


def find_java(explicit: str | os.PathLike[str] | None = None) -> JavaRuntime:
    """The Java runtime to run Kafka with: ``explicit``, else ``$JAVA_HOME/bin/java``, else PATH.

    Raises :class:`BrokerUnavailableError` when there is none or it is older than Java 17.
    """
    executable, origin = _locate(explicit)
    try:
        completed = subprocess.run(  # noqa: S603 - a Java executable the user configured
            [str(executable), "-version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerUnavailableError(f"cannot run {executable} ({origin}): {exc}") from exc
    output = completed.stderr + completed.stdout
    major = parse_java_major(output)
    if completed.returncode != 0 or major is None:
        first_line = output.strip().splitlines()[0] if output.strip() else f"exit code {completed.returncode}"
        raise BrokerUnavailableError(f"{executable} ({origin}) did not report a Java version: {first_line}")
    if major < MIN_JAVA_MAJOR:
        raise BrokerUnavailableError(
            f"Apache Kafka needs Java {MIN_JAVA_MAJOR} or newer; {executable} ({origin}) is Java {major}. "
            "Set JAVA_HOME to a newer runtime."
        )
    return JavaRuntime(executable=executable, major=major)
