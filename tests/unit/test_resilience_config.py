"""``resilience.yaml``: defaults, per-endpoint overrides, which file is read, file:line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from processors.adapters.http import TimeoutSettings
from processors.errors import ConfigError
from processors.resilience import config as config_module
from processors.resilience.breaker import BreakerSettings, BreakerState
from processors.resilience.config import (
    ENV_RESILIENCE_FILE,
    EndpointPolicy,
    ResilienceConfig,
    ResilienceConfigError,
    TimeoutPolicy,
    load_resilience,
    parse_resilience,
)
from processors.resilience.retry import RetryPolicy

ROOT = Path(__file__).resolve().parents[2]


def parse(text: str) -> ResilienceConfig:
    return parse_resilience(textwrap.dedent(text))


def problems_of(text: str) -> str:
    with pytest.raises(ResilienceConfigError) as info:
        parse(text)
    assert info.value.problems
    return str(info.value)


# --------------------------------------------------------------------------- values


def test_seed_defaults_without_a_file() -> None:
    policy = ResilienceConfig().for_endpoint("anything")
    assert policy.breaker == BreakerSettings(
        failure_threshold=5, success_threshold=3, timeout_duration_s=30, half_open_requests=3
    )
    assert policy.retry == RetryPolicy(max_attempts=3, initial_delay_ms=100, max_delay_ms=5_000, multiplier=2)
    assert policy.timeout == TimeoutPolicy(connect_timeout_s=5, read_timeout_s=30, deadline_s=60)


def test_the_shipped_file_loads_with_the_seed_values() -> None:
    config = load_resilience(ROOT / "resilience.yaml")
    assert config.path == ROOT / "resilience.yaml"
    assert config.warnings == ()
    assert config.defaults == EndpointPolicy()
    assert set(config.endpoints) == {"payment-gateway", "kyc-provider", "partner-webhooks"}
    assert config.for_endpoint("payment-gateway") == EndpointPolicy()
    kyc = config.for_endpoint("kyc-provider")
    assert kyc.timeout.read_timeout_s == 20.0
    assert kyc.timeout.connect_timeout_s == 5.0
    assert kyc.breaker == BreakerSettings()
    # Every partner endpoint shares the template: one attempt (the retry tiers are the schedule).
    partner = config.for_endpoint("webhook:ep_0123")
    assert partner == config.for_endpoint("partner-webhooks")
    assert partner.retry.max_attempts == 1
    assert partner.breaker == BreakerSettings()
    assert config.for_endpoint("some-other-endpoint") == config.defaults


def test_an_endpoint_overrides_single_keys_and_inherits_the_rest() -> None:
    config = parse(
        """
        defaults:
          circuit_breaker: {failure_threshold: 8}
          retry: {max_attempts: 5}
        endpoints:
          kyc-provider:
            circuit_breaker: {timeout_duration_seconds: 2.5}
            timeout: {read_timeout_ms: 20000, deadline_ms: 90000}
          partner-a: {}
        """
    )
    kyc = config.for_endpoint("kyc-provider")
    assert kyc.breaker.failure_threshold == 8  # from defaults
    assert kyc.breaker.timeout_duration_s == 2.5  # own
    assert kyc.breaker.success_threshold == 3  # seed
    assert kyc.retry.max_attempts == 5
    assert kyc.retry.initial_delay_ms == 100
    assert kyc.timeout == TimeoutPolicy(connect_timeout_s=5, read_timeout_s=20, deadline_s=90)
    assert config.for_endpoint("partner-a") == config.defaults
    assert config.for_endpoint("unknown") is config.defaults
    assert config.defaults.breaker.failure_threshold == 8


def test_timeout_policy_gives_the_http_seam_its_settings() -> None:
    policy = TimeoutPolicy(connect_timeout_s=2, read_timeout_s=7.5, deadline_s=20)
    assert policy.http() == TimeoutSettings(connect_timeout_s=2, read_timeout_s=7.5)


def test_timeout_policy_refuses_a_deadline_shorter_than_the_connect_timeout() -> None:
    with pytest.raises(ValueError, match=r"deadline_s \(1\.0\) must not be shorter than connect_timeout_s"):
        TimeoutPolicy(connect_timeout_s=2, deadline_s=1)


def test_a_deadline_shorter_than_connect_plus_read_is_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse(
        """
        endpoints:
          kyc-provider:
            timeout: {deadline_ms: 20000}
        """
    )
    assert config.for_endpoint("kyc-provider").timeout.deadline_s == 20.0
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith("resilience.yaml:4: endpoint 'kyc-provider': timeout.deadline_ms")
    assert "cut slow reads short" in caplog.text


def test_breakers_take_their_settings_from_the_file() -> None:
    config = parse(
        """
        endpoints:
          kyc-provider: {circuit_breaker: {failure_threshold: 1}}
        """
    )
    registry = config.breakers(clock=lambda: 0.0)
    assert registry.get("kyc-provider").settings.failure_threshold == 1
    assert registry.get("payment-gateway").settings == BreakerSettings()
    assert registry.get("kyc-provider").state is BreakerState.CLOSED


# --------------------------------------------------------------------------- which file


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no environment variable."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(ENV_RESILIENCE_FILE, raising=False)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_environment_variable_names_the_file(
    elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(tmp_path / "custom.yaml", "endpoints:\n  partner-a: {retry: {max_attempts: 7}}\n")
    write(elsewhere / "resilience.yaml", "endpoints:\n  partner-a: {retry: {max_attempts: 2}}\n")
    monkeypatch.setenv(ENV_RESILIENCE_FILE, str(file))
    assert load_resilience().for_endpoint("partner-a").retry.max_attempts == 7


def test_a_missing_file_named_by_the_environment_is_an_error(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_RESILIENCE_FILE, str(elsewhere / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml: resilience settings not found"):
        load_resilience()


def test_a_missing_explicit_file_is_an_error(elsewhere: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_resilience(elsewhere / "nope.yaml")


def test_the_working_directory_file_comes_before_the_source_tree(elsewhere: Path) -> None:
    write(elsewhere / "resilience.yaml", "endpoints:\n  partner-a: {retry: {max_attempts: 2}}\n")
    config = load_resilience()
    assert config.path == Path("resilience.yaml")
    assert set(config.endpoints) == {"partner-a"}


def test_the_source_tree_file_is_the_fallback(elsewhere: Path) -> None:
    config = load_resilience()
    assert config.path == ROOT / "resilience.yaml"
    assert "kyc-provider" in config.endpoints


def test_built_in_defaults_when_no_file_exists(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_FILE_NAME", "absent-resilience.yaml")
    config = load_resilience()
    assert config.path is None
    assert config.endpoints == {}
    assert config.defaults == EndpointPolicy()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param(
            """\
            defaults:
              circuit_breaker: {sucess_threshold: 2}
            """,
            2,
            "defaults: unknown key 'sucess_threshold' in circuit_breaker (did you mean 'success_threshold'?)",
            id="unknown-key-did-you-mean",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
                circuit_breaker:
                  timeout_duration_s: 10
            """,
            4,
            "did you mean 'timeout_duration_seconds'?",
            id="model-name-instead-of-seed-name",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
                timeouts: {read_timeout_ms: 1000}
            """,
            3,
            "endpoint 'kyc-provider': unknown key 'timeouts' (did you mean 'timeout'?)",
            id="unknown-section",
        ),
        pytest.param(
            """\
            defaults: {}
            payment-gateway: {}
            """,
            2,
            "unknown key 'payment-gateway'; the top level holds 'defaults' and 'endpoints'",
            id="endpoint-at-top-level",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker:
                success_threshold: 4
            """,
            3,
            "defaults: circuit_breaker.success_threshold (4) must not exceed half_open_requests (3)",
            id="success-above-permits-defaults",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
                circuit_breaker:
                  half_open_requests: 2
            """,
            4,
            "endpoint 'kyc-provider': circuit_breaker.success_threshold (3) must not exceed "
            "half_open_requests (2)",
            id="success-above-permits-endpoint",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
                timeout:
                  connection_timeout_ms: -5
            """,
            4,
            "endpoint 'kyc-provider': timeout.connection_timeout_ms must be > 0 (got -5)",
            id="negative-timeout",
        ),
        pytest.param(
            """\
            defaults:
              retry: {initial_delay_ms: -1}
            """,
            2,
            "defaults: retry.initial_delay_ms must be ≥ 0 (got -1)",
            id="negative-delay",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker: {failure_threshold: 0}
            """,
            2,
            "circuit_breaker.failure_threshold must be ≥ 1 (got 0)",
            id="zero-threshold",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker: {timeout_duration_seconds: -30}
            """,
            2,
            "circuit_breaker.timeout_duration_seconds must be > 0 (got -30)",
            id="negative-open-duration",
        ),
        pytest.param(
            """\
            defaults:
              retry: {multiplier: 0.5}
            """,
            2,
            "retry.multiplier must be ≥ 1 (got 0.5)",
            id="multiplier-below-one",
        ),
        pytest.param(
            """\
            defaults:
              retry: {max_attempts: 1000}
            """,
            2,
            "retry.max_attempts must be ≤ 100 (got 1000)",
            id="too-many-attempts",
        ),
        pytest.param(
            """\
            defaults:
              timeout:
                read_timeout_ms: 1.5
            """,
            3,
            "timeout.read_timeout_ms must be a whole number of milliseconds (got 1.5)",
            id="fractional-ms",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker:
                half_open_requests: "3"
            """,
            3,
            "circuit_breaker.half_open_requests must be a whole number (got '3')",
            id="text-instead-of-number",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker:
                timeout_duration_seconds: yes
            """,
            3,
            "circuit_breaker.timeout_duration_seconds must be a number (got True)",
            id="boolean-instead-of-number",
        ),
        pytest.param(
            """\
            defaults:
              circuit_breaker:
                timeout_duration_seconds: .inf
            """,
            3,
            "circuit_breaker.timeout_duration_seconds must be a finite number",
            id="infinite",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
                timeout:
                  deadline_ms: 4000
            """,
            4,
            "endpoint 'kyc-provider': timeout.deadline_ms (4000) must not be shorter than "
            "connection_timeout_ms (5000)",
            id="deadline-below-connect",
        ),
        pytest.param(
            """\
            defaults:
              retry: 3
            """,
            2,
            "defaults: retry must be a mapping of keys to values (got int)",
            id="section-not-a-mapping",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider: 3
            """,
            2,
            "endpoint 'kyc-provider' must be a mapping of keys to values (got int)",
            id="endpoint-not-a-mapping",
        ),
        pytest.param(
            """\
            endpoints:
              kyc provider!: {}
            """,
            2,
            "endpoint 'kyc provider!': names use letters, digits",
            id="bad-endpoint-name",
        ),
        pytest.param(
            """\
            endpoints:
              reinsurer:RE001:extra: {}
            """,
            2,
            "endpoint 'reinsurer:RE001:extra': names use letters, digits",
            id="endpoint-name-with-two-colons",
        ),
        pytest.param(
            """\
            endpoints:
              reinsurer:: {}
            """,
            2,
            "endpoint 'reinsurer:': names use letters, digits",
            id="family-without-member",
        ),
        pytest.param(
            """\
            endpoints:
              12: {}
            """,
            2,
            "endpoint '12': names must be text (got 12)",
            id="numeric-endpoint-name",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider: {}
              kyc-provider: {retry: {max_attempts: 2}}
            """,
            3,
            "duplicate key 'kyc-provider' (first written on line 2)",
            id="duplicate-endpoint",
        ),
        pytest.param(
            """\
            endpoints:
              kyc-provider:
            """,
            2,
            "'kyc-provider' has no value",
            id="empty-value",
        ),
        pytest.param(
            """\
            defaults:
              retry: {max_attempts: 3
            """,
            3,
            "invalid YAML",
            id="syntax-error",
        ),
        pytest.param("- defaults\n", 1, "the top level must be a mapping", id="top-level-list"),
        pytest.param("# nothing\n", 1, "the file is empty", id="empty-file"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    message = problems_of(text)
    assert f"resilience.yaml:{line}: " in message
    assert fragment in message


def test_every_problem_is_reported_in_line_order() -> None:
    message = problems_of(
        """\
        defaults:
          retry: {max_attempts: 0}
        endpoints:
          kyc-provider:
            timeout: {read_timeout_ms: -1}
          partner-a:
            circut_breaker: {}
        """
    )
    lines = [row.split(": ", 1)[0] for row in message.splitlines()]
    assert lines == ["resilience.yaml:2", "resilience.yaml:5", "resilience.yaml:7"]


def test_an_inherited_violation_is_reported_once_where_it_was_written() -> None:
    message = problems_of(
        """\
        defaults:
          circuit_breaker: {success_threshold: 4}
        endpoints:
          payment-gateway: {}
          kyc-provider: {retry: {max_attempts: 2}}
          partner-a: {circuit_breaker: {half_open_requests: 4}}
        """
    )
    assert message.splitlines() == [
        "resilience.yaml:2: defaults: circuit_breaker.success_threshold (4) must not exceed "
        "half_open_requests (3): at most half_open_requests probes run at once, and that many "
        "successes must be able to close the breaker"
    ]


def test_the_file_name_in_errors_is_the_one_given(tmp_path: Path) -> None:
    file = write(tmp_path / "custom.yaml", "defaults:\n  retry: {max_attempts: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_resilience(file)
    assert str(info.value).startswith(f"{file}:2: ")


def test_a_family_member_falls_back_to_its_family_then_to_the_defaults() -> None:
    config = parse_resilience(
        "endpoints:\n"
        "  reinsurer:\n    retry: {max_attempts: 4}\n"
        "  reinsurer:RE002:\n    retry: {max_attempts: 6}\n"
    )
    assert config.for_endpoint("reinsurer:RE002").retry.max_attempts == 6
    assert config.for_endpoint("reinsurer:RE001").retry.max_attempts == 4
    assert config.for_endpoint("regulator:FCA") == config.defaults
    assert config.for_endpoint("reinsurer:re002").retry.max_attempts == 6  # members ignore case
