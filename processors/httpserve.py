"""Serving an aiohttp application on a host and port: the API and the sandbox servers share it."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from processors.errors import ConfigError

__all__ = ["base_url", "listen"]

_WILDCARD_HOSTS: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def base_url(host: str, port: int) -> str:
    """``http://host:port`` for a bound address (wildcards become loopback, IPv6 in brackets)."""
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def listen(
    app: web.Application,
    host: str,
    port: int,
    *,
    what: str,
    access_log: bool = False,
    shutdown_timeout_s: float = 5.0,
    backlog: int = 1024,
) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner (``cleanup()`` stops it) and the base URL.

    A port that cannot be bound is a :class:`ConfigError` naming ``what`` and the address.
    """
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=backlog).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, base_url(str(bound_host), int(bound_port))
