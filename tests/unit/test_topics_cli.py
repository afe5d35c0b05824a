"""``processors topics ...`` without a broker: listing, argument and catalogue errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from processors.topics.cli import EXIT_BROKER, EXIT_CONFIG, EXIT_OK, register_cli

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="processors")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_list_prints_every_topic_of_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["topics", "list", "--file", str(ROOT / "topics.yaml")]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TOPIC", "KIND", "APP", "PARTITIONS", "RF", "RETENTION", "CLEANUP"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["insurance.policy.events"] == [
        "insurance.policy.events",
        "input",
        "-",
        "6",
        "3",
        "14d",
        "delete",
    ]
    assert rows["integrations.webhooks.retry.6-10h"][1:3] == ["retry", "webhooks"]
    assert rows["integrations.webhook.subscriptions"][5:] == ["-", "compact"]
    assert rows["integrations.partners"] == ["integrations.partners", "state", "-", "1", "3", "-", "compact"]
    assert rows["integrations.webhooks.dispatch"][1] == "output"
    assert rows["integrations.payments.dedupe"][1:3] == ["dedupe", "payments"]
    assert rows["integrations.payments.dedupe"][5:] == ["1d", "compact,delete"]
    assert len(rows) == 59


def test_a_malformed_file_prints_file_line_reason_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("inputs:\n  - name: a.events\n    description: x\n    partitions: 0\n")
    broker = ["--bootstrap-servers", "127.0.0.1:1"]
    for argv in (["list"], ["check", *broker], ["apply", *broker]):
        code = run(["topics", *argv, "--file", str(path)])
        assert code == EXIT_CONFIG
        err = capsys.readouterr().err
        assert err.strip() == f"{path}:4: topic 'a.events': partitions must be ≥ 1 (got 0)"


def test_apply_without_bootstrap_servers_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert run(["topics", "apply", "--file", str(ROOT / "topics.yaml")]) == EXIT_CONFIG
    assert "pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err


def test_bootstrap_servers_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9092")
    parser = argparse.ArgumentParser(prog="processors")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topics", "check"])
    assert args.bootstrap_servers == "broker.example:9092"
    assert args.replication_factor is None


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_replication_factor_must_be_a_positive_whole_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run(["topics", "apply", "--replication-factor", value])
    assert info.value.code == 2
    assert "--replication-factor" in capsys.readouterr().err


def test_an_unreachable_cluster_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        [
            "topics",
            "check",
            "--file",
            str(ROOT / "topics.yaml"),
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "1",
        ]
    )
    assert code == EXIT_BROKER
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read cluster metadata from 127.0.0.1:1")
