"""Quick availability probes (Docker engine, external cluster), free ports and the CLI surface."""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.errors import BrokerError
from processors_dev.devbroker import BrokerKind, BrokerStartError, ExternalBroker
from processors_dev.devbroker._docker import docker_engine_problem
from processors_dev.devbroker._ports import pick_free_ports
from processors_dev.devbroker._process import log_tail
from processors_dev.devbroker.cli import register_cli


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~100 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="dbk", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_once(path: Path, respond: Callable[[socket.socket], None]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                respond(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_no_socket_means_no_docker(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{short_dir}/docker.sock")
    problem = docker_engine_problem(timeout_s=2.0)
    assert problem is not None
    assert "no Docker engine socket" in problem


def test_an_engine_that_answers_ping_is_available(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = short_dir / "docker.sock"

    def answer(connection: socket.socket) -> None:
        request = connection.recv(1024)
        assert request.startswith(b"GET /_ping ")
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    thread = serve_once(sock_path, answer)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    assert docker_engine_problem(timeout_s=2.0) is None
    thread.join(timeout=5)


def test_an_engine_that_fails_ping_is_unavailable(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = short_dir / "docker.sock"

    def answer(connection: socket.socket) -> None:
        connection.recv(1024)
        connection.sendall(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")

    thread = serve_once(sock_path, answer)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    problem = docker_engine_problem(timeout_s=2.0)
    assert problem is not None
    assert "500" in problem
    thread.join(timeout=5)


def test_an_engine_that_never_answers_does_not_hang_the_probe(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = short_dir / "docker.sock"
    release = threading.Event()

    def hold(connection: socket.socket) -> None:
        release.wait(timeout=10)

    thread = serve_once(sock_path, hold)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    try:
        problem = docker_engine_problem(timeout_s=0.3)
    finally:
        release.set()
    assert problem is not None
    assert "did not answer" in problem
    thread.join(timeout=5)


def test_an_external_cluster_that_does_not_answer_is_named_in_the_error() -> None:
    (port,) = pick_free_ports(1)
    broker = ExternalBroker(f"127.0.0.1:{port}", verify_timeout_s=1.0)
    with pytest.raises(BrokerStartError, match=rf"127\.0\.0\.1:{port}.*KAFKA_BOOTSTRAP_SERVERS"):
        broker.start()
    assert not broker.running


def test_an_external_cluster_cannot_be_restarted_from_here() -> None:
    with pytest.raises(BrokerError, match="cannot be restarted"):
        ExternalBroker("127.0.0.1:1").restart()


def test_free_ports_are_distinct_bindable_and_never_handed_out_twice() -> None:
    first = pick_free_ports(4)
    second = pick_free_ports(4)
    assert len(set(first + second)) == 8
    assert not {19092, 19093} & set(first + second)
    for port in first:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="processors")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_the_cli_offers_broker_start_with_a_kind() -> None:
    args = parse("broker", "start", "--kind", "apache")
    assert args.broker_action == "start"
    assert BrokerKind(args.kind) is BrokerKind.APACHE
    assert callable(args.func)
    assert parse("broker", "start").kind is None


def test_the_cli_offers_broker_fetch() -> None:
    args = parse("broker", "fetch", "--version", "4.1.1")
    assert args.broker_action == "fetch"
    assert args.version == "4.1.1"
    assert args.func is not parse("broker", "start").func


def test_the_cli_rejects_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("broker", "start", "--kind", "zookeeper")
    assert "invalid choice" in capsys.readouterr().err


def test_log_tail_keeps_only_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "broker.log"
    path.write_text("".join(f"line {n}\n" for n in range(1, 201)))
    lines = log_tail(path, lines=60).splitlines()
    assert lines[0] == "line 141"
    assert lines[-1] == "line 200"
    assert len(lines) == 60
    assert log_tail(tmp_path / "missing.log") == ""


def test_a_loading_coordinator_is_tried_again_even_where_warnings_are_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted broker answers ``COORDINATOR_LOAD_IN_PROGRESS`` for a while; closing the
    probe's producer then warns that its abort conflicts with the init.  The probe tries again
    (the tests run with warnings as errors, where that warning used to end the wait)."""
    import warnings
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    from processors_dev.devbroker import _probe

    attempts: list[str] = []

    class LoadingThenReady:
        def __init__(self, _conf: object) -> None:
            pass

        def init_transactions(self, _timeout: float) -> None:
            attempts.append("init")
            if len(attempts) < 3:
                raise KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))

        def close(self) -> None:
            if len(attempts) < 3:
                warnings.warn(
                    "Producer abort_transaction failed during close: Conflicting init_transactions "
                    "API call is already in progress",
                    RuntimeWarning,
                    stacklevel=1,
                )

    class OneBroker:
        def __init__(self, _conf: object) -> None:
            pass

        def list_topics(self, timeout: float) -> object:
            return SimpleNamespace(brokers={1: object()})

    monkeypatch.setattr(_probe, "Producer", LoadingThenReady)
    monkeypatch.setattr(_probe, "AdminClient", OneBroker)
    monkeypatch.setattr(_probe, "_RETRY_PAUSE_S", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _probe.wait_until_ready("127.0.0.1:9", timeout_s=30, transactions=True)
    assert attempts == ["init", "init", "init"]
    # Any other warning from close() still surfaces.
    attempts.clear()
    monkeypatch.setattr(
        LoadingThenReady, "close", lambda _self: warnings.warn("other", RuntimeWarning, stacklevel=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="other"):
            _probe.wait_until_ready("127.0.0.1:9", timeout_s=30, transactions=True)
