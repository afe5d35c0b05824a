"""Choosing a development broker: order, restrictions, forcing.  No real broker is involved."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from processors.errors import ConfigError
from processors_dev.devbroker import (
    Availability,
    BrokerInfo,
    BrokerKind,
    BrokerOption,
    BrokerUnavailableError,
    DevBroker,
    provide_broker,
)

ORDER = (BrokerKind.EXTERNAL, BrokerKind.DOCKER, BrokerKind.APACHE, BrokerKind.EMBEDDED)


class FakeBroker(DevBroker):
    def __init__(self, kind: BrokerKind) -> None:
        super().__init__()
        self.fake_kind = kind

    @property
    def running(self) -> bool:
        return self._info is not None

    def start(self) -> BrokerInfo:
        self._info = BrokerInfo("127.0.0.1:1", self.fake_kind, self.fake_kind is not BrokerKind.EMBEDDED)
        return self._info

    def stop(self, *, keep_data: bool = False) -> None:
        self._info = None


class Table:
    """Availability probes with a record of which ones were consulted."""

    def __init__(self, available: dict[BrokerKind, bool]) -> None:
        self.available = available
        self.checked: list[BrokerKind] = []

    def options(self) -> dict[BrokerKind, BrokerOption]:
        return {kind: BrokerOption(kind, self._check(kind), self._create(kind)) for kind in ORDER}

    def _check(self, kind: BrokerKind) -> Callable[[], Availability]:
        def check() -> Availability:
            self.checked.append(kind)
            if self.available[kind]:
                return Availability(True, f"{kind} is here")
            return Availability(False, f"no {kind} on this machine")

        return check

    @staticmethod
    def _create(kind: BrokerKind) -> Callable[[], DevBroker]:
        return lambda: FakeBroker(kind)


def chosen(broker: DevBroker) -> BrokerKind:
    assert isinstance(broker, FakeBroker)
    return broker.fake_kind


@pytest.fixture(autouse=True)
def _no_forcing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCESSORS_BROKER", raising=False)


def table(*available: BrokerKind) -> Table:
    return Table({kind: kind in available for kind in ORDER})


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (ORDER, BrokerKind.EXTERNAL),
        ((BrokerKind.DOCKER, BrokerKind.APACHE, BrokerKind.EMBEDDED), BrokerKind.DOCKER),
        ((BrokerKind.APACHE, BrokerKind.EMBEDDED), BrokerKind.APACHE),
        ((BrokerKind.EMBEDDED,), BrokerKind.EMBEDDED),
    ],
)
def test_first_available_kind_in_order_wins(available: tuple[BrokerKind, ...], expected: BrokerKind) -> None:
    probes = table(*available)
    broker = provide_broker(options=probes.options())
    assert chosen(broker) is expected
    # Nothing after the chosen kind is probed.
    assert probes.checked == list(ORDER[: ORDER.index(expected) + 1])


def test_allow_restricts_the_candidates_but_not_the_order() -> None:
    probes = table(*ORDER)
    broker = provide_broker(allow=(BrokerKind.EMBEDDED, BrokerKind.APACHE), options=probes.options())
    assert chosen(broker) is BrokerKind.APACHE
    assert probes.checked == [BrokerKind.APACHE]


def test_prefer_forces_a_kind_even_when_an_earlier_one_is_available() -> None:
    probes = table(*ORDER)
    broker = provide_broker(prefer=BrokerKind.EMBEDDED, options=probes.options())
    assert chosen(broker) is BrokerKind.EMBEDDED
    assert probes.checked == [BrokerKind.EMBEDDED]


def test_forced_kind_that_is_unavailable_is_an_error_with_the_reason() -> None:
    probes = table(BrokerKind.EMBEDDED)
    with pytest.raises(BrokerUnavailableError, match="no apache on this machine"):
        provide_broker(prefer=BrokerKind.APACHE, options=probes.options())


def test_environment_forces_a_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_BROKER", "Apache")
    broker = provide_broker(options=table(*ORDER).options())
    assert chosen(broker) is BrokerKind.APACHE


def test_prefer_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_BROKER", "apache")
    broker = provide_broker(prefer=BrokerKind.DOCKER, options=table(*ORDER).options())
    assert chosen(broker) is BrokerKind.DOCKER


def test_unknown_kind_in_the_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_BROKER", "redpanda")
    with pytest.raises(ConfigError, match="redpanda"):
        provide_broker(options=table(*ORDER).options())


def test_forcing_a_kind_outside_allow_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="embedded"):
        provide_broker(
            allow=(BrokerKind.APACHE,),
            prefer=BrokerKind.EMBEDDED,
            options=table(*ORDER).options(),
        )


def test_nothing_available_lists_every_reason() -> None:
    with pytest.raises(BrokerUnavailableError) as caught:
        provide_broker(allow=ORDER[:3], options=table().options())
    message = str(caught.value)
    for reason in ("no external", "no docker", "no apache", "embedded: not allowed"):
        assert reason in message


def test_the_choice_and_the_skips_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processors_dev.devbroker")
    provide_broker(options=table(BrokerKind.APACHE).options())
    text = caplog.text
    assert "skipping the external broker: no external on this machine" in text
    assert "skipping the docker broker: no docker on this machine" in text
    assert "using the apache broker: apache is here" in text


def test_the_broker_is_returned_unstarted() -> None:
    broker = provide_broker(options=table(*ORDER).options())
    assert not broker.running
    with broker:
        assert broker.info.kind is BrokerKind.EXTERNAL
    assert not broker.running


@pytest.mark.parametrize("kind", list(BrokerKind))
def test_only_the_embedded_broker_needs_client_overrides(kind: BrokerKind) -> None:
    info = BrokerInfo("127.0.0.1:1", kind, kind is not BrokerKind.EMBEDDED)
    expected = {"session.timeout.ms": "6000"} if kind is BrokerKind.EMBEDDED else {}
    assert info.client_overrides() == expected


def test_default_probes_never_hang_and_report_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from processors_dev.devbroker import default_options

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    options = default_options()
    assert list(options) == list(ORDER)
    external = options[BrokerKind.EXTERNAL].check()
    assert not external.available
    assert "KAFKA_BOOTSTRAP_SERVERS" in external.reason
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert options[BrokerKind.EXTERNAL].check().available
