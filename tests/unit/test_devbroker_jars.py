"""Fetching the Kafka jars: once, completely, under a lock, with a matching SLF4J binding.

A fake ``mvn`` on PATH stands in for Maven: it reads the generated pom and writes empty jars.
"""

from __future__ import annotations

import fcntl
import json
import logging
import stat
import sys
import threading
from pathlib import Path

import pytest

from processors.errors import ConfigError
from processors_dev.devbroker import BrokerUnavailableError, JarFetchError, ensure_kafka_jars
from processors_dev.devbroker._jars import cached_kafka_jars, render_pom
from processors_dev.devbroker.cli import main as cli_main

FAKE_MVN = """#!@PYTHON@
import os, re, sys
from pathlib import Path

args = sys.argv[1:]
pom = Path(args[args.index("-f") + 1]).read_text()
out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("-DoutputDirectory=")))
version = re.search(r"<artifactId>kafka_2.13</artifactId>\\s*<version>([^<]+)</version>", pom).group(1)
binding = re.search(r"<artifactId>(log4j-slf4j2?-impl)</artifactId>", pom).group(1)
with open(os.environ["FAKE_MVN_CALLS"], "a") as calls:
    calls.write(binding + "\\n")
out.mkdir(parents=True, exist_ok=True)
slf4j = os.environ.get("FAKE_MVN_SLF4J", "1.7.36")
for jar in (f"kafka_2.13-{version}.jar", f"kafka-clients-{version}.jar", f"slf4j-api-{slf4j}.jar",
            "log4j-api-2.24.3.jar", "log4j-core-2.24.3.jar", f"{binding}-2.24.3.jar"):
    (out / jar).write_bytes(b"")
if os.environ.get("FAKE_MVN_FAIL"):
    print("[ERROR] Failed to execute goal: could not transfer artifact (boom)")
    sys.exit(1)
"""


class FakeMaven:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        bin_dir = root / "bin"
        bin_dir.mkdir()
        mvn = bin_dir / "mvn"
        mvn.write_text(FAKE_MVN.replace("@PYTHON@", sys.executable))
        mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
        self.calls_file = root / "mvn-calls.txt"
        self.calls_file.touch()
        self.cache = root / "cache"
        monkeypatch.setenv("PATH", str(bin_dir))
        monkeypatch.setenv("PROCESSORS_CACHE_DIR", str(self.cache))
        monkeypatch.setenv("FAKE_MVN_CALLS", str(self.calls_file))
        monkeypatch.delenv("PROCESSORS_KAFKA_VERSION", raising=False)
        monkeypatch.delenv("FAKE_MVN_FAIL", raising=False)
        monkeypatch.delenv("FAKE_MVN_SLF4J", raising=False)

    @property
    def calls(self) -> list[str]:
        return self.calls_file.read_text().split()


@pytest.fixture
def maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMaven:
    return FakeMaven(tmp_path, monkeypatch)


def test_jars_are_fetched_once_into_the_versioned_cache(maven: FakeMaven) -> None:
    libs = ensure_kafka_jars()
    assert libs == maven.cache / "kafka" / "4.1.1" / "libs"
    assert (libs / "kafka_2.13-4.1.1.jar").is_file()
    assert ensure_kafka_jars() == libs
    assert maven.calls == ["log4j-slf4j-impl"]
    marker = json.loads((libs.parent / "libs.complete").read_text())
    assert marker["kafka_version"] == "4.1.1"
    assert "kafka_2.13-4.1.1.jar" in marker["jars"]
    assert cached_kafka_jars() == libs


def test_an_interrupted_fetch_leaves_no_marker_and_is_redone(
    maven: FakeMaven, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    with pytest.raises(JarFetchError, match=r"could not transfer artifact \(boom\)"):
        ensure_kafka_jars()
    home = maven.cache / "kafka" / "4.1.1"
    assert not (home / "libs.complete").exists()
    assert cached_kafka_jars() is None

    monkeypatch.delenv("FAKE_MVN_FAIL")
    libs = ensure_kafka_jars()
    assert (home / "libs.complete").is_file()
    assert len(maven.calls) == 2
    assert (libs / "kafka-clients-4.1.1.jar").is_file()


def test_a_slf4j_2_api_gets_the_slf4j2_binding(maven: FakeMaven, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MVN_SLF4J", "2.0.16")
    libs = ensure_kafka_jars()
    assert maven.calls == ["log4j-slf4j-impl", "log4j-slf4j2-impl"]
    assert (libs / "log4j-slf4j2-impl-2.24.3.jar").is_file()
    assert not (libs / "log4j-slf4j-impl-2.24.3.jar").exists()
    assert json.loads((libs.parent / "libs.complete").read_text())["slf4j_binding"] == "log4j-slf4j2-impl"


def test_the_version_comes_from_the_environment(maven: FakeMaven, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_KAFKA_VERSION", "4.0.0")
    libs = ensure_kafka_jars()
    assert libs == maven.cache / "kafka" / "4.0.0" / "libs"
    assert (libs / "kafka_2.13-4.0.0.jar").is_file()


def test_a_malformed_version_is_a_config_error(maven: FakeMaven) -> None:
    with pytest.raises(ConfigError):
        ensure_kafka_jars("../../etc")
    assert maven.calls == []


def test_without_maven_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PROCESSORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PROCESSORS_KAFKA_VERSION", raising=False)
    with pytest.raises(BrokerUnavailableError, match=r"Apache Maven \(mvn\)"):
        ensure_kafka_jars()


def test_a_fetch_waits_for_the_lock_holder_and_uses_its_result(
    maven: FakeMaven, caplog: pytest.LogCaptureFixture
) -> None:
    home = maven.cache / "kafka" / "4.1.1"
    home.mkdir(parents=True)
    waiting = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for another process" in record.getMessage():
                waiting.set()

    handler = Signal()
    logging.getLogger("processors_dev.devbroker").addHandler(handler)
    caplog.set_level(logging.INFO, logger="processors_dev.devbroker")
    results: list[Path] = []
    try:
        with (home / ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            worker = threading.Thread(target=lambda: results.append(ensure_kafka_jars()))
            worker.start()
            assert waiting.wait(timeout=30)
            # Play the other process: complete the fetch, then release the lock.
            (home / "libs").mkdir()
            (home / "libs.complete").write_text("{}")
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        worker.join(timeout=30)
    finally:
        logging.getLogger("processors_dev.devbroker").removeHandler(handler)
    assert results == [home / "libs"]
    assert maven.calls == []


def test_the_pom_pins_kafka_and_the_binding() -> None:
    pom = render_pom("4.1.1", slf4j_binding="log4j-slf4j-impl", log4j_version="2.24.3")
    assert "<artifactId>kafka_2.13</artifactId>\n      <version>4.1.1</version>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>\n      <version>2.24.3</version>" in pom
    assert "maven-dependency-plugin" in pom
    assert "$" not in pom


def test_the_fetch_command_prints_the_libs_directory(
    maven: FakeMaven, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["broker", "fetch"]) == 0
    assert capsys.readouterr().out.strip() == str(maven.cache / "kafka" / "4.1.1" / "libs")
    assert len(maven.calls) == 1


def test_the_fetch_command_fails_cleanly(
    maven: FakeMaven, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    assert cli_main(["broker", "fetch"]) == 1
    assert "boom" in capsys.readouterr().err
