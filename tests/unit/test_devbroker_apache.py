"""The Apache Kafka broker's start-up checks and failure reports, driven by a fake ``java``."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from processors_dev.devbroker import ApacheKafkaBroker, BrokerStartError, BrokerUnavailableError
from processors_dev.devbroker._apache import new_cluster_id
from processors_dev.devbroker._java import find_java, parse_java_major

# A stand-in for the java launcher.  `-version` answers like a JDK; the storage tool and the
# broker do what FAKE_STORAGE / FAKE_BROKER say.
FAKE_JAVA = """#!/bin/sh
if [ "$1" = "-version" ]; then
  echo 'openjdk version "@VERSION@" 2025-01-01' >&2
  exit 0
fi
for arg in "$@"; do last="$arg"; done
case " $* " in
  *" kafka.tools.StorageTool "*)
    echo "storage tool args: $*"
    @STORAGE@
    ;;
  *" kafka.Kafka "*)
    @BROKER@
    ;;
esac
"""

COUNT_TO_100 = 'i=1; while [ $i -le 100 ]; do echo "broker line $i"; i=$((i+1)); done; exit 3'


def fake_java(
    tmp_path: Path, *, version: str = "21.0.1", storage: str = "exit 0", broker: str = "exit 0"
) -> Path:
    script = FAKE_JAVA.replace("@VERSION@", version).replace("@STORAGE@", storage).replace("@BROKER@", broker)
    path = tmp_path / "java"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def broker_with(tmp_path: Path, java: Path, **kwargs: object) -> ApacheKafkaBroker:
    libs = tmp_path / "libs"
    libs.mkdir(exist_ok=True)
    return ApacheKafkaBroker(java=java, libs_dir=libs, stop_grace_s=5.0, **kwargs)  # type: ignore[arg-type]


def test_a_broker_that_dies_reports_the_last_60_log_lines(tmp_path: Path) -> None:
    broker = broker_with(tmp_path, fake_java(tmp_path, broker=COUNT_TO_100))
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "broker line 41\n" in message
    assert message.endswith("broker line 100")
    assert "broker line 40\n" not in message
    assert not broker.running
    assert broker.log_path is None  # the temporary run directory is gone


def test_a_failed_storage_format_reports_its_output(tmp_path: Path) -> None:
    java = fake_java(tmp_path, storage='echo "Invalid cluster.id: nope"; exit 1', broker="exit 0")
    with pytest.raises(BrokerStartError) as caught:
        broker_with(tmp_path, java).start()
    message = str(caught.value)
    assert "formatting the storage failed with exit code 1" in message
    assert "Invalid cluster.id: nope" in message


def test_the_storage_is_formatted_standalone_with_a_fresh_cluster_id(tmp_path: Path) -> None:
    java = fake_java(tmp_path, broker="exit 1")
    with pytest.raises(BrokerStartError) as caught:
        broker_with(tmp_path, java).start()
    args_line = next(line for line in str(caught.value).splitlines() if line.startswith("storage tool args:"))
    args = args_line.split()
    assert "--standalone" in args
    cluster_id = args[args.index("--cluster-id") + 1]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_the_broker_configuration_is_single_node_kraft(tmp_path: Path) -> None:
    # The fake broker prints the configuration file it was given, then fails.
    java = fake_java(tmp_path, broker='cat "$last"; exit 1')
    broker = broker_with(tmp_path, java, extra_config={"num.partitions": "3"})
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    lines = set(str(caught.value).splitlines())
    for expected in (
        "process.roles=broker,controller",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "offsets.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "num.partitions=3",
    ):
        assert expected in lines
    listeners = next(line for line in lines if line.startswith("listeners="))
    assert "PLAINTEXT://127.0.0.1:" in listeners
    assert "CONTROLLER://127.0.0.1:" in listeners
    bootstrap = next(line for line in lines if line.startswith("controller.quorum.bootstrap.servers="))
    assert bootstrap.startswith("controller.quorum.bootstrap.servers=127.0.0.1:")
    assert not any(line.startswith("controller.quorum.voters=") for line in lines)


def test_a_broker_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    java = fake_java(tmp_path, broker='echo "pretending to boot"; exec sleep 60')
    broker = broker_with(tmp_path, java, start_timeout_s=1.0)
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    message = str(caught.value)
    assert "not ready within 1 s" in message
    assert "pretending to boot" in message
    assert not broker.running


def test_java_older_than_17_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    java = fake_java(tmp_path, version="11.0.22")
    with pytest.raises(BrokerUnavailableError, match=r"needs Java 17 or newer.*is Java 11"):
        broker_with(tmp_path, java).start()


def test_a_missing_java_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailableError, match="cannot run"):
        find_java(tmp_path / "no-such-java")


def test_java_home_is_used_before_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    fake_java(home / "bin", version="25")
    monkeypatch.setenv("JAVA_HOME", str(home))
    runtime = find_java()
    assert runtime.executable == home / "bin" / "java"
    assert runtime.major == 25


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_402"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
        ("no version here", None),
    ],
)
def test_java_versions_are_parsed(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_cluster_ids_are_distinct_url_safe_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
