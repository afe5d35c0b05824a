"""Runnable simulators of the external services, with fault injection (latency, errors, outages).

Tests, the demo and the benchmarks talk to them over real HTTP.
"""

from processors_dev.sandbox.gateway import GatewayConfig, PaymentGatewaySim
from processors_dev.sandbox.server import (
    SandboxProcess,
    SandboxServer,
    build_sandbox_app,
    run_sandbox_forever,
)

__all__ = [
    "GatewayConfig",
    "PaymentGatewaySim",
    "SandboxProcess",
    "SandboxServer",
    "build_sandbox_app",
    "run_sandbox_forever",
]
