"""The sandbox: one aiohttp application hosting the simulated external services.

In the caller's event loop (tests, demo)::

    async with SandboxServer(gateway=GatewayConfig(latency_ms=10), kyc=KycConfig(mode="sync")) as sandbox:
        sandbox.url                       # http://127.0.0.1:<bound port>
        sandbox.gateway.charges_by_key    # the simulators' live state
        sandbox.kyc.verifications_by_key
        sandbox.reinsurer.reports         # bordereaux received, by report id
        sandbox.partners.add("acme", PartnerBehaviour(), ["whsec_..."])   # simulated partner receivers
        sandbox.partners.url("acme")      # http://127.0.0.1:<bound port>/partners/acme

In a process of its own (benchmarks: the server must not share the client's loop or CPU)::

    with SandboxProcess(gateway=GatewayConfig(latency_ms=20)) as sandbox:
        sandbox.url

or ``processors sandbox`` on the command line (:func:`run_sandbox_forever`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from processors.errors import ProcessorsError
from processors.httpserve import listen
from processors_dev.sandbox.gateway import GATEWAY_APP_KEY, TOKEN_ENV, GatewayConfig, PaymentGatewaySim
from processors_dev.sandbox.kyc import KYC_APP_KEY, KycConfig, KycProviderSim
from processors_dev.sandbox.kyc import TOKEN_ENV as KYC_TOKEN_ENV
from processors_dev.sandbox.kyc import WEBHOOK_SECRET_ENV as KYC_WEBHOOK_SECRET_ENV
from processors_dev.sandbox.partners import PARTNERS_APP_KEY, PartnerReceivers, PartnersConfig
from processors_dev.sandbox.reinsurer import REINSURER_APP_KEY, ReinsurerConfig, ReinsurerSim

__all__ = [
    "HEALTH_PATH",
    "SandboxProcess",
    "SandboxServer",
    "build_sandbox_app",
    "run_sandbox_forever",
]

log = logging.getLogger(__name__)

HEALTH_PATH: Final = "/_sandbox/health"


def build_sandbox_app(
    gateway: GatewayConfig | None = None,
    kyc: KycConfig | None = None,
    partners: PartnersConfig | None = None,
    reinsurer: ReinsurerConfig | None = None,
) -> web.Application:
    """The sandbox application: ``GET /_sandbox/health`` and every simulated service's routes."""
    app = web.Application()
    app.router.add_get(HEALTH_PATH, _health)
    PaymentGatewaySim(gateway).add_to(app)
    KycProviderSim(kyc).add_to(app)
    PartnerReceivers(partners).add_to(app)
    ReinsurerSim(reinsurer).add_to(app)
    return app


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class SandboxServer:
    """The sandbox application served on ``host:port`` (``port=0``: any free port; see :attr:`url`).

    One-shot: ``start()`` once, ``stop()`` once (or use ``async with``).  No I/O happens before
    ``start()``.  The aiohttp access log is off unless ``access_log=True``; request bodies are never
    logged.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway: GatewayConfig | None = None,
        *,
        kyc: KycConfig | None = None,
        partners: PartnersConfig | None = None,
        reinsurer: ReinsurerConfig | None = None,
        access_log: bool = False,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.app = build_sandbox_app(gateway, kyc, partners, reinsurer)
        self._access_log = access_log
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._used = False

    @property
    def gateway(self) -> PaymentGatewaySim:
        """The payment gateway simulator (state readable and configurable in-process)."""
        return self.app[GATEWAY_APP_KEY]

    @property
    def kyc(self) -> KycProviderSim:
        """The KYC provider simulator (state readable and configurable in-process)."""
        return self.app[KYC_APP_KEY]

    @property
    def reinsurer(self) -> ReinsurerSim:
        """The reinsurer simulator (received bordereaux readable, knobs configurable in-process)."""
        return self.app[REINSURER_APP_KEY]

    @property
    def partners(self) -> PartnerReceivers:
        """The simulated partner receivers (``add``, ``update``, ``remove``, ``url``, ``partner``)."""
        return self.app[PARTNERS_APP_KEY]

    @property
    def url(self) -> str:
        """Base URL with the bound port, e.g. ``http://127.0.0.1:40123``."""
        if self._url is None:
            raise RuntimeError("the sandbox server is not running")
        return self._url

    async def start(self) -> None:
        if self._used:
            raise RuntimeError("a SandboxServer starts once; create a new one")
        self._used = True
        self._runner, self._url = await listen(
            self.app,
            self.host,
            self.port,
            what="the sandbox",
            access_log=self._access_log,
            shutdown_timeout_s=self._shutdown_timeout_s,
        )
        self.partners.base_url = self._url
        log.info("sandbox listening on %s", self._url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._url = None
        await runner.cleanup()
        self.partners.base_url = None
        log.info("sandbox stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def run_sandbox_forever(
    host: str = "127.0.0.1",
    port: int = 8600,
    config: GatewayConfig | None = None,
    *,
    kyc: KycConfig | None = None,
    partners: PartnersConfig | None = None,
    reinsurer: ReinsurerConfig | None = None,
    on_started: Callable[[str], None] | None = None,
    access_log: bool = False,
) -> None:
    """Serve the sandbox in a new event loop until SIGINT or SIGTERM, then stop gracefully.

    ``on_started`` receives the base URL once the socket is listening.  Must run in the main
    thread (it installs signal handlers).
    """
    asyncio.run(
        _serve_until_signalled(
            host,
            port,
            config,
            kyc=kyc,
            partners=partners,
            reinsurer=reinsurer,
            on_started=on_started,
            access_log=access_log,
        )
    )


async def _serve_until_signalled(
    host: str,
    port: int,
    config: GatewayConfig | None,
    *,
    kyc: KycConfig | None = None,
    partners: PartnersConfig | None = None,
    reinsurer: ReinsurerConfig | None = None,
    on_started: Callable[[str], None] | None,
    access_log: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with SandboxServer(
            host, port, config, kyc=kyc, partners=partners, reinsurer=reinsurer, access_log=access_log
        ) as server:
            if on_started is not None:
                on_started(server.url)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class SandboxProcess:
    """The sandbox in a child process (``python -m processors_dev.sandbox.cli``), for benchmarks.

    The child has its own interpreter and event loop, so it never shares a loop (or the GIL) with
    the caller.  ``start()`` returns the base URL once the child listens; ``stop()`` sends SIGTERM
    (graceful) and kills the child only if it has not exited within ``stop_timeout_s``.  Drive the
    simulators through their HTTP control APIs (``/_sandbox/gateway/...``, ``/_sandbox/kyc/...``,
    ``/_sandbox/reinsurer/...``, ``/_control/partners``).
    Tokens and the KYC webhook secret reach the child through its environment, not its command
    line.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway: GatewayConfig | None = None,
        *,
        kyc: KycConfig | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.gateway_config = gateway or GatewayConfig()
        self.kyc_config = kyc or KycConfig()
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the sandbox process is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        from processors_dev.sandbox.cli import READY_PREFIX, config_to_argv, kyc_config_to_argv

        if self._process is not None:
            raise RuntimeError("the sandbox process is already started")
        command = [
            sys.executable,
            "-m",
            "processors_dev.sandbox.cli",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *config_to_argv(self.gateway_config),
            *kyc_config_to_argv(self.kyc_config),
        ]
        env = {
            **os.environ,
            TOKEN_ENV: self.gateway_config.token.get_secret_value(),
            KYC_TOKEN_ENV: self.kyc_config.token.get_secret_value(),
            KYC_WEBHOOK_SECRET_ENV: self.kyc_config.webhook_secret.get_secret_value(),
        }
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)  # noqa: S603
        self._process = process
        assert process.stdout is not None
        try:
            ready, _, _ = select.select([process.stdout], [], [], self._start_timeout_s)
            line = process.stdout.readline() if ready else None
        except BaseException:
            self.stop()
            raise
        if line is None:
            self.stop()
            raise ProcessorsError(f"the sandbox process did not listen within {self._start_timeout_s} s")
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise ProcessorsError(f"the sandbox process exited (code {process.returncode}) before listening")
        self._url = line[len(READY_PREFIX) :].strip()
        return self._url

    def stop(self) -> None:
        process, self._process = self._process, None
        self._url = None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("sandbox process %s ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.communicate()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
