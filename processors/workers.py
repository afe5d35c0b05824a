"""``processors run APP… --workers N``: N member processes of the apps' groups, one supervisor.

One CPython process runs its apps on one core.  With ``--workers N`` the supervisor starts N
copies of ``processors run APP…`` (worker ``0`` … ``N-1``); each joins the same consumer groups
as any other instance would, so Kafka spreads the partitions over them — exactly as it does
over instances on several hosts.  The supervisor

* forwards SIGTERM/SIGINT to every worker, each of which drains, commits and exits, and exits
  with one code: 0 when every worker stopped cleanly, else the first failure's;
* stops every worker when one exits on its own (a crashed member), so the orchestrator sees
  the failure and restarts the whole unit instead of running degraded unnoticed;
* with ``--api``, serves ``/healthz``, ``/readyz`` and ``/metrics`` on the API port for the
  whole unit: ready when every worker is ready; the workers' metrics merged, each sample
  labelled ``worker="<index>"``.  Each worker's own API listens on loopback on a port of its
  own (the API port + 1 + index), reachable for its status.

Exactly-once apps (bordereaux) need a stable instance id per member: worker *i* appends
``-w<i>`` to ``bordereaux.instance_id`` and ``engine.instance_id`` (default: the host name).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from processors.errors import ConfigError
from processors.httpserve import listen

__all__ = ["WorkerSpec", "merge_metrics", "run_workers"]

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "PROCESSORS_WORKER_INDEX"


@dataclass(frozen=True)
class WorkerSpec:
    apps: tuple[str, ...]
    workers: int
    api: bool
    api_host: str
    api_port: int
    auth_token: str | None
    instance_id: str
    passthrough: tuple[str, ...] = ()
    """Other ``run`` flags given to every worker (``--bootstrap-servers``, ``--topics-file``)."""
    grace_s: float = 60.0


def merge_metrics(by_worker: Sequence[tuple[int, str]]) -> str:
    """One exposition of several workers': each sample gets ``worker="<index>"``; a metric's
    HELP and TYPE lines appear once."""
    seen_meta: set[str] = set()
    order: list[str] = []
    samples: dict[str, list[str]] = {}
    meta: dict[str, list[str]] = {}
    for index, text in by_worker:
        current = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                current = line.split(" ", 3)[2]
                if current not in meta:
                    meta[current] = []
                    samples[current] = []
                    order.append(current)
                if line not in seen_meta:
                    seen_meta.add(line)
                    meta[current].append(line)
                continue
            if not line or line.startswith("#"):
                continue
            samples.setdefault(current, []).append(_labelled(line, index))
            if current not in meta:
                meta[current] = []
                order.append(current)
    out: list[str] = []
    for name in order:
        out.extend(meta[name])
        out.extend(samples.get(name, []))
    return "\n".join(out) + "\n"


def _labelled(line: str, index: int) -> str:
    """``line`` (``name{labels} value`` or ``name value``) with ``worker="<index>"`` added."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, rest = line[:brace], line[brace + 1 :]
        if rest.startswith("}"):
            return f'{name}{{worker="{index}"}}{rest[1:]}'
        return f'{name}{{worker="{index}",{rest}'
    return f'{line[:space]}{{worker="{index}"}}{line[space:]}'


def _worker_env(spec: WorkerSpec, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env[WORKER_INDEX_ENV] = str(index)
    env["PROCESSORS_BORDEREAUX__INSTANCE_ID"] = f"{spec.instance_id}-w{index}"
    env["PROCESSORS_ENGINE__INSTANCE_ID"] = f"{spec.instance_id}-w{index}"
    if spec.api:
        env["PROCESSORS_API__ENABLED"] = "true"
        env["PROCESSORS_API__HOST"] = "127.0.0.1"
        env["PROCESSORS_API__PORT"] = str(spec.api_port + 1 + index)
    return env


async def _start(spec: WorkerSpec, index: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processors.cli",
        "run",
        *spec.apps,
        *spec.passthrough,
        env=_worker_env(spec, index),
    )


class _UnitApi:
    """The supervisor's HTTP face: health of the unit and the workers' metrics merged."""

    def __init__(self, spec: WorkerSpec, workers: list[asyncio.subprocess.Process]) -> None:
        self.spec = spec
        self.workers = workers
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None

    def _url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.spec.api_port + 1 + index}{path}"

    async def _get(self, index: int, path: str) -> tuple[int, str]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.spec.auth_token}"} if self.spec.auth_token else {}
        try:
            async with self.session.get(self._url(index, path), headers=headers) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return 503, ""

    async def healthz(self, _request: web.Request) -> web.Response:
        alive = all(worker.returncode is None for worker in self.workers)
        return web.json_response({"status": "ok" if alive else "failing"}, status=200 if alive else 503)

    async def readyz(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(i, "/readyz") for i in range(len(self.workers))))
        waiting = [i for i, (status, _) in enumerate(answers) if status != 200]
        if waiting:
            reasons = [f"worker {i} is not ready" for i in waiting]
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response({"ready": True})

    async def metrics(self, request: web.Request) -> web.Response:
        token = self.spec.auth_token
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response(
                {"error": "unauthorized", "message": "a bearer token is required"}, status=401
            )
        answers = await asyncio.gather(*(self._get(i, "/metrics") for i in range(len(self.workers))))
        merged = merge_metrics([(i, text) for i, (status, text) in enumerate(answers) if status == 200])
        return web.Response(text=merged, content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self.runner, _url = await listen(app, self.spec.api_host, self.spec.api_port, what="the workers' API")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


async def run_workers(spec: WorkerSpec) -> int:
    """Run the unit until SIGTERM/SIGINT or a worker's own exit; the unit's exit code."""
    if spec.workers < 2:
        raise ConfigError("--workers needs 2 or more (1 is `processors run` itself)")
    if spec.api and spec.api_port == 0:
        raise ConfigError(
            "--workers with --api needs a fixed --api-port (the workers listen on the ports after it)"
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workers = [await _start(spec, index) for index in range(spec.workers)]
    log.info(
        "started %d workers of %s: pids %s", spec.workers, ", ".join(spec.apps), [w.pid for w in workers]
    )
    api = _UnitApi(spec, workers) if spec.api else None
    if api is not None:
        await api.start()
    exits = [asyncio.create_task(worker.wait()) for worker in workers]
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*exits, stopping], return_when=asyncio.FIRST_COMPLETED)
        crashed = [i for i, task in enumerate(exits) if task in done]
        if crashed:
            log.error(
                "worker %s exited on its own (code %s): stopping the others",
                crashed[0],
                workers[crashed[0]].returncode,
            )
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*exits), spec.grace_s)
        except TimeoutError:
            for worker in workers:
                if worker.returncode is None:
                    log.error("worker pid %s did not stop within %.0f s: killed", worker.pid, spec.grace_s)
                    worker.kill()
            await asyncio.gather(*exits)
    finally:
        stopping.cancel()
        if api is not None:
            await api.stop()
    codes = [worker.returncode or 0 for worker in workers]
    failed = [code for code in codes if code != 0]
    if crashed and not failed:
        return 1  # a member left on its own: the unit did not run as asked
    return failed[0] if failed else 0
