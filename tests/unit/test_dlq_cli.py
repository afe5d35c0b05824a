"""``processors dlq ...`` without a broker: argument and configuration errors, exit codes."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import processors.dlq
from processors.cli import main
from processors.dlq import audit_topic_for, default_operator, lock_group, progress_group
from processors.dlq.cli import EXIT_CONFIG, read_client_config
from processors.errors import ConfigError
from processors.topics.catalogue import load_catalogue, parse_catalogue

ROOT = Path(__file__).resolve().parents[2]
TOPICS = str(ROOT / "topics.yaml")
NOWHERE = "127.0.0.1:1"  # nothing listens: a command that reached the network would time out


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_replay_without_yes_is_refused_when_stdin_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", NotATerminal(""))
    code = main(
        ["dlq", "replay", "--app", "payments", "--topics-file", TOPICS, "--bootstrap-servers", NOWHERE]
    )
    assert code == EXIT_CONFIG
    assert "refusing to replay without --yes" in capsys.readouterr().err


def test_an_unknown_app_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dlq", "list", "--app", "paymnets", "--topics-file", TOPICS, "--bootstrap-servers", NOWHERE])
    assert code == EXIT_CONFIG
    assert "did you mean 'payments'" in capsys.readouterr().err


def test_a_cluster_must_be_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert main(["dlq", "stats", "--app", "payments", "--topics-file", TOPICS]) == EXIT_CONFIG
    assert "--bootstrap-servers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--since", "yesterday"], "bad time 'yesterday'"),
        (["--from-offset", "9", "--to-offset", "3"], "from-offset 9 is after to-offset 3"),
        (["--since", "1h", "--until", "2h"], "must be before until"),
    ],
)
def test_bad_filters_exit_2_with_the_reason(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "dlq",
        "list",
        "--app",
        "payments",
        "--topics-file",
        TOPICS,
        "--bootstrap-servers",
        NOWHERE,
        *extra,
    ]
    assert main(argv) == EXIT_CONFIG
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [["--rate", "0"], ["--rate", "fast"], ["--replay-limit", "0"], ["--to", "elsewhere"], ["--limit", "-1"]],
)
def test_bad_replay_arguments_are_usage_errors(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "--app", "payments", "--dry-run", *extra])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_show_needs_coordinates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "show", "--app", "payments", "--partition", "1"])
    assert exited.value.code == 2
    assert "--offset" in capsys.readouterr().err


def test_client_config_files_are_key_value_lines(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text("# cluster\nsecurity.protocol=SASL_SSL\n\nsasl.mechanism = PLAIN\n! other comment\n")
    assert read_client_config(path) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    path.write_text("security.protocol\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:1: expected key=value")):
        read_client_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_client_config(tmp_path / "missing")


def test_group_names_derive_from_the_dlq() -> None:
    assert progress_group("integrations.payments.dlq") == "processors-dlq-replay.integrations.payments.dlq"
    assert lock_group("integrations.payments.dlq") == "processors-dlq-replay-lock.integrations.payments.dlq"


def test_the_audit_topic_is_found_in_the_catalogue_under_the_dlq_prefix() -> None:
    catalogue = load_catalogue(ROOT / "topics.yaml")
    assert audit_topic_for(catalogue, catalogue.app("kyc")) == "integrations.audit"
    prefixed_text = re.sub(
        r"(?<![\w.])(insurance|integrations|reinsurance|regulatory)\.",
        r"t1.\1.",
        (ROOT / "topics.yaml").read_text(),
    )
    prefixed = parse_catalogue(prefixed_text)
    assert audit_topic_for(prefixed, prefixed.app("payments")) == "t1.integrations.audit"


def test_a_catalogue_without_an_audit_topic_asks_for_one() -> None:
    catalogue = parse_catalogue(
        "inputs:\n  - {name: a.events, description: a}\napps:\n  payments:\n    sources: [a.events]\n"
    )
    with pytest.raises(ConfigError, match="--audit-topic"):
        audit_topic_for(catalogue, catalogue.app("payments"))


def test_the_package_exports_exist() -> None:
    for name in processors.dlq.__all__:
        assert hasattr(processors.dlq, name), name
    assert sorted(processors.dlq.__all__) == processors.dlq.__all__


def test_the_operator_defaults_to_user_then_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    assert default_operator() == "alice"
    monkeypatch.delenv("USER")
    monkeypatch.setattr("getpass.getuser", lambda: "login-bob")
    assert default_operator() == "login-bob"

    def nobody() -> str:
        raise OSError("no login name")

    monkeypatch.setattr("getpass.getuser", nobody)
    with pytest.raises(ConfigError, match="--operator"):
        default_operator()
