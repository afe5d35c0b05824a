"""Pieces of the sandbox payment gateway that need no server: parsing, config, rate limit, CLI."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

from processors.adapters import jsonwire
from processors.errors import ConfigError, DecodeError, ValidationFailed
from processors_dev.sandbox.cli import TOKEN_ENV, config_to_argv, gateway_config_from_args, register_cli
from processors_dev.sandbox.gateway import (
    GATEWAY_APP_KEY,
    GatewayConfig,
    PaymentGatewaySim,
    parse_payment_request,
)
from processors_dev.sandbox.server import build_sandbox_app


def body(**changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "policy_id": "POL-1",
        "amount": Decimal("1185.50"),
        "currency": "USD",
        "payment_method": {
            "type": "CREDIT_CARD",
            "card_token": "tok_visa_4242",
            "billing_address": {"city": "X"},
        },
        "idempotency_key": "idem_1",
    }
    payload.update(changes)
    return jsonwire.dumps(payload)


class TestParsePaymentRequest:
    def test_reads_the_amount_exactly_and_defaults_to_charge(self) -> None:
        request = parse_payment_request(body(), "idem_1")

        assert request.amount == Decimal("1185.50")
        assert str(request.amount) == "1185.50"
        assert request.transaction_type == "CHARGE"
        assert request.reference_id is None

    def test_repr_hides_the_card_token(self) -> None:
        assert "tok_visa" not in repr(parse_payment_request(body(), "idem_1"))

    def test_fingerprint_ignores_how_an_equal_amount_is_written(self) -> None:
        a = parse_payment_request(body(amount=Decimal("1185.50")), "idem_1")
        b = parse_payment_request(body(amount=Decimal("1185.5")), "idem_1")

        assert a.fingerprint == b.fingerprint

    @pytest.mark.parametrize(
        "change",
        [
            {"amount": Decimal("1185.51")},
            {"currency": "EUR"},
            {"policy_id": "POL-2"},
            {"transaction_type": "REFUND"},
            {
                "payment_method": {
                    "type": "CREDIT_CARD",
                    "card_token": "tok_visa_4242",
                    "billing_address": {"city": "Y"},
                }
            },
        ],
    )
    def test_fingerprint_covers_the_charge_parameters(self, change: dict[str, Any]) -> None:
        assert (
            parse_payment_request(body(**change), "idem_1").fingerprint
            != parse_payment_request(body(), "idem_1").fingerprint
        )

    def test_reference_id_is_not_part_of_the_fingerprint(self) -> None:
        assert (
            parse_payment_request(body(reference_id="R-1"), "idem_1").fingerprint
            == parse_payment_request(body(reference_id="R-2"), "idem_1").fingerprint
        )

    def test_undecodable_bytes_raise_decode_error(self) -> None:
        with pytest.raises(DecodeError):
            parse_payment_request(b"\xff\xfe", "idem_1")

    def test_reasons_never_echo_the_value(self) -> None:
        with pytest.raises(ValidationFailed) as caught:
            parse_payment_request(
                body(payment_method={"type": "CREDIT_CARD", "card_token": "tok_\x00secret"}), "idem_1"
            )

        assert "secret" not in caught.value.reason
        assert "card_token" in caught.value.reason


class TestGatewayConfig:
    def test_defaults(self) -> None:
        config = GatewayConfig()

        assert config.token.get_secret_value() == "sandbox-token"
        assert (config.latency_ms, config.error_rate, config.outage, config.rate_limit_per_s) == (
            0,
            0,
            False,
            None,
        )

    def test_is_frozen(self) -> None:
        with pytest.raises(ValidationError):
            GatewayConfig().outage = True

    def test_token_is_masked_in_repr_and_public_dict(self) -> None:
        config = GatewayConfig(token=SecretStr("very-secret"))

        assert "very-secret" not in repr(config)
        assert "very-secret" not in str(config.public_dict())

    def test_updated_validates_and_keeps_other_fields(self) -> None:
        config = GatewayConfig(latency_ms=5, seed=3).updated({"error_rate": 0.5})

        assert (config.latency_ms, config.seed, config.error_rate) == (5, 3, 0.5)

    @pytest.mark.parametrize(
        "changes",
        [
            {"error_rate": 2},
            {"latency_ms": float("nan")},
            {"rate_limit_per_s": -1},
            {"token": " x"},
            {"typo": 1},
        ],
    )
    def test_updated_rejects_bad_values_with_config_error(self, changes: dict[str, Any]) -> None:
        with pytest.raises(ConfigError) as caught:
            GatewayConfig().updated(changes)

        assert next(iter(changes)) in str(caught.value)


class TestSimState:
    def test_rate_limit_refills_with_the_clock(self) -> None:
        now = [100.0]
        sim = PaymentGatewaySim(GatewayConfig(rate_limit_per_s=2), clock=lambda: now[0])
        bucket = sim._bucket
        assert bucket is not None

        assert [bucket.take(), bucket.take()] == [0.0, 0.0]  # a burst of one second's worth
        assert bucket.take() == pytest.approx(0.5)
        now[0] += 0.5
        assert bucket.take() == 0.0
        assert bucket.take() == pytest.approx(0.5)

    def test_app_exposes_the_sim_under_its_key(self) -> None:
        app = build_sandbox_app(GatewayConfig(latency_ms=7))

        assert isinstance(app, web.Application)
        assert app[GATEWAY_APP_KEY].config.latency_ms == 7


class TestCli:
    @staticmethod
    def parse(argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        register_cli(parser.add_subparsers(dest="command"))
        return parser.parse_args(["sandbox", *argv])

    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        args = self.parse([])

        assert (args.host, args.port) == ("127.0.0.1", 8600)
        assert gateway_config_from_args(args) == GatewayConfig()
        assert callable(args.func)

    def test_knobs_and_token_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(TOKEN_ENV, "env-token")
        args = self.parse(["--latency-ms", "20", "--error-rate", "0.1", "--outage", "--seed", "4"])

        config = gateway_config_from_args(args)

        assert (config.latency_ms, config.error_rate, config.outage, config.seed) == (20, 0.1, True, 4)
        assert config.token.get_secret_value() == "env-token"

    def test_token_flag_wins_over_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(TOKEN_ENV, "env-token")

        config = gateway_config_from_args(self.parse(["--token", "flag-token"]))

        assert config.token.get_secret_value() == "flag-token"

    def test_out_of_range_knob_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="error_after_charge_rate"):
            gateway_config_from_args(self.parse(["--error-after-charge-rate", "1.5"]))

    @pytest.mark.parametrize(
        "config",
        [
            GatewayConfig(),
            GatewayConfig(
                latency_ms=20.5,
                latency_jitter_ms=3,
                error_rate=0.1,
                error_after_charge_rate=0.05,
                outage=True,
                rate_limit_per_s=250,
                seed=9,
            ),
        ],
    )
    def test_config_to_argv_round_trips_every_knob_but_the_token(
        self, config: GatewayConfig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        argv = config_to_argv(config)

        assert gateway_config_from_args(self.parse(argv)) == config
        assert "--token" not in argv
