"""The HTTP transport for partner deliveries: SSRF-checked, DNS-pinned, bounded.

Per request: ``check_url``, one checked resolution (``resolve_checked``), then aiohttp connects
to exactly those addresses.  aiohttp asks its resolver for the URL's host name; the resolver
here answers only with the addresses checked for this request (held in a context variable), so
there is no second lookup a rebinding DNS server could answer differently.  The URL keeps its
host name, so the ``Host`` header, TLS SNI and certificate verification all use the name.

Redirects are never followed (a 3xx comes back as the response), at most
``max_response_bytes`` of a body are read, proxies from the environment are ignored, and no
cookies are kept between requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from processors.adapters.http import (
    ConnectFailed,
    HttpRequest,
    HttpResponse,
    HttpTimeout,
    TimeoutSettings,
    client_timeout,
)
from processors.observability import tracing
from processors.webhooks.ssrf import (
    AddressRefused,
    HostResolver,
    ParsedTarget,
    SsrfPolicy,
    check_url,
    resolve_checked,
)

__all__ = ["WEBHOOK_TIMEOUTS", "PinnedTransport"]

WEBHOOK_TIMEOUTS = TimeoutSettings(connect_timeout_s=5.0, read_timeout_s=15.0)
"""Partner endpoints should answer quickly; a slow one must not hold a delivery slot for long."""

_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[str, ...]


_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("webhook_pinned_addresses", default=None)


def _same_host(a: str, b: str) -> bool:
    return a.rstrip(".").lower() == b.rstrip(".").lower()


class _PinnedResolver(AbstractResolver):
    """Answers aiohttp's lookup with the addresses already checked for the current request."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pin = _PIN.get()
        if pin is None or not _same_host(pin.host, host) or pin.port != port:
            # Fail closed: a lookup this transport did not check itself is never answered.
            raise AddressRefused(f"host {host} was not checked for this request")
        results: list[ResolveResult] = []
        for address in pin.addresses:
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=address_family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(f"no checked address of host {host} in the requested address family")
        return results

    async def close(self) -> None:
        return None


class PinnedTransport:
    """``HttpTransport`` for partner URLs; construct freely, ``start()`` (or ``async with``) opens it.

    ``timeouts`` apply when ``send`` is given none; ``total_timeout_s`` bounds a whole exchange
    (resolution, connect, headers and body), so a partner trickling bytes cannot hold it
    forever.  ``resolver`` replaces the system resolver (tests, custom DNS).  ``ssl_context``
    replaces the default verifying context (e.g. a private CA); verification is never off.
    """

    def __init__(
        self,
        *,
        policy: SsrfPolicy | None = None,
        timeouts: TimeoutSettings = WEBHOOK_TIMEOUTS,
        total_timeout_s: float | None = 60.0,
        max_response_bytes: int = 64 * 1024,
        max_connections: int = 1_000,
        max_connections_per_host: int = 100,
        resolver: HostResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        address_cache_s: float = 0.0,
    ) -> None:
        """``address_cache_s`` > 0 reuses a host's *checked* addresses for that long instead of
        resolving it for every request (connections still go only to addresses that passed the
        guard, so this does not open the door to DNS rebinding)."""
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must be >= 0")
        if max_connections < 1 or max_connections_per_host < 1:
            raise ValueError("connection limits must be >= 1")
        if total_timeout_s is not None and total_timeout_s <= 0:
            raise ValueError("total_timeout_s must be > 0")
        self.policy = policy if policy is not None else SsrfPolicy()
        self.timeouts = timeouts
        self.total_timeout_s = total_timeout_s
        self.max_response_bytes = max_response_bytes
        self._max_connections = max_connections
        self._max_connections_per_host = max_connections_per_host
        self._resolver = resolver
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        if address_cache_s < 0:
            raise ValueError("address_cache_s must be >= 0")
        self.address_cache_s = address_cache_s
        self._targets: dict[str, ParsedTarget] = {}
        """URL checks already made (the policy does not change): parsing is not repeated per request."""
        self._addresses: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_PinnedResolver(),
                use_dns_cache=False,
                limit=self._max_connections,
                limit_per_host=self._max_connections_per_host,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close(self) -> None:
        """Same as ``stop`` (the ``HttpTransport`` protocol's name)."""
        await self.stop()

    async def __aenter__(self) -> PinnedTransport:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ sending

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings | None = None) -> HttpResponse:
        """Send ``request``; raises ``AddressRefused`` (permanent), ``ConnectFailed`` or ``HttpTimeout``.

        Error messages name only ``scheme://host:port``: a partner URL's path or query may
        carry a token.
        """
        limits = timeouts if timeouts is not None else self.timeouts
        target = self._targets.get(request.url)
        if target is None:
            target = check_url(request.url, self.policy)  # raises for a refused URL: never cached
            if len(self._targets) >= _MAX_CACHED:
                self._targets.clear()
            self._targets[request.url] = target
        where = f"{request.method} {target.origin}"
        if self._session is None:
            await self.start()
        session = self._session
        assert session is not None
        try:
            async with asyncio.timeout(self.total_timeout_s):
                return await self._exchange(session, request, target.host, target.port, limits, where)
        except TimeoutError as exc:
            raise HttpTimeout(f"{where}: timed out") from exc

    async def _checked_addresses(
        self, host: str, port: int, limits: TimeoutSettings, where: str
    ) -> Sequence[str]:
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with asyncio.timeout(limits.connect_timeout_s):
                addresses = await resolve_checked(host, port, self.policy, self._resolver)
        except TimeoutError as exc:
            raise HttpTimeout(f"{where}: resolving the host timed out") from exc
        if self.address_cache_s > 0:
            if len(self._addresses) >= _MAX_CACHED:
                self._addresses.clear()
            self._addresses[(host, port)] = (now + self.address_cache_s, tuple(addresses))
        return addresses

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        request: HttpRequest,
        host: str,
        port: int,
        limits: TimeoutSettings,
        where: str,
    ) -> HttpResponse:
        addresses = await self._checked_addresses(host, port, limits, where)

        headers = dict(request.headers)
        traceparent = tracing.outbound_traceparent()
        if traceparent is not None:
            headers["traceparent"] = traceparent  # the delivery's call span (or the event's, untraced)
        if not any(name.lower() == "accept-encoding" for name in headers):
            headers["Accept-Encoding"] = "identity"  # the body cap then counts bytes on the wire
        token = _PIN.set(_Pin(host, port, tuple(addresses)))
        try:
            async with session.request(
                request.method,
                request.url,
                headers=headers,
                data=request.body,
                timeout=client_timeout(limits),
                allow_redirects=False,
            ) as resp:
                body = await _read_capped(resp, self.max_response_bytes)
                # aiohttp's read-only, case-insensitive view of the answer's headers (no copy)
                return HttpResponse(status=resp.status, headers=resp.headers, body=body)
        except TimeoutError as exc:
            raise HttpTimeout(f"{where}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"{where}: {type(exc).__name__}") from exc
        finally:
            _PIN.reset(token)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is never read (the connection is dropped)."""
    chunks: list[bytes] = []
    remaining = limit
    content = resp.content
    while remaining > 0 and not content.at_eof():
        chunk = await content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
