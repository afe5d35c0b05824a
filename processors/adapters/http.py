"""The HTTP seam every adapter talks through.

Adapters build an ``HttpRequest`` and get an ``HttpResponse``; they never import an HTTP
library.  ``AiohttpTransport`` is the production transport (measured fastest under
concurrency, see ``bench/``); tests swap in any object with the same ``send``.

Transport failures are translated here: connection errors and timeouts become ``Retriable``
subclasses, so the retry decision stays with the exception type.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from processors.errors import Retriable
from processors.observability import tracing

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AiohttpTransport",
    "ConnectFailed",
    "HttpRequest",
    "HttpResponse",
    "HttpTimeout",
    "HttpTransport",
    "ResponseTooLarge",
    "TimeoutSettings",
    "client_timeout",
]


class TimeoutSettings(BaseModel):
    """Seed defaults: connect 5 s, read 30 s, per attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name``, whatever its case (one lookup in aiohttp's own
        case-insensitive mapping; a scan of a plain mapping)."""
        value = self.headers.get(name)
        if value is not None:
            return value
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def retry_after_s(self) -> float | None:
        """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
        value = self.header("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if seconds >= 0 else None

    def error_reason(self, max_chars: int = 200) -> str:
        """``error: message`` from a JSON error body, for error messages (never the whole body)."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return "no readable body"
        if isinstance(payload, dict):
            text = ": ".join(str(x) for x in (payload.get("error"), payload.get("message")) if x)
            return text[:max_chars] or "no reason given"
        return "no reason given"


def client_timeout(limits: TimeoutSettings) -> aiohttp.ClientTimeout:
    """aiohttp's per-attempt timeouts for ``limits``: connect, then each read; no total (the
    message deadline bounds the whole).  One immutable object per pair of values, built once."""
    return _client_timeout(limits.connect_timeout_s, limits.read_timeout_s)


@functools.lru_cache(maxsize=1024)  # endpoints' settings are few; never unbounded
def _client_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


class HttpTransport(Protocol):
    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class ConnectFailed(Retriable):
    """The connection could not be made (refused, reset, DNS)."""


class HttpTimeout(Retriable):
    """Connect or read timed out."""


class ResponseTooLarge(Retriable):
    """The service answered with a body over the transport's limit (nothing past it was read)."""


MAX_RESPONSE_BYTES: Final = 1024 * 1024
"""The largest body a service's answer may have: gateway, KYC and reinsurer answers are small
JSON documents; anything bigger is a fault, and reading it whole would let one answer exhaust
the process's memory (decompressed size counts: a compressed bomb is cut off too)."""


class AiohttpTransport:
    """aiohttp client session with a bounded connection pool.  Redirects are never followed;
    an answer's body is read up to ``max_response_bytes`` (else :class:`ResponseTooLarge`)."""

    def __init__(self, *, max_connections: int = 100, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be >= 1")
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        session = self._session
        if session is None:
            await self.start()
            session = self._session
            assert session is not None
        try:
            async with session.request(
                request.method,
                request.url,
                headers=_with_traceparent(request.headers),
                data=request.body,
                timeout=client_timeout(timeouts),
                allow_redirects=False,
            ) as resp:
                body = await _read_bounded(resp, self._max_response_bytes, request)
                # aiohttp's read-only, case-insensitive view of the answer's headers (no copy)
                return HttpResponse(status=resp.status, headers=resp.headers, body=body)
        except TimeoutError as exc:
            raise HttpTimeout(f"{request.method} {_safe_url(request.url)}: timed out") from exc
        except aiohttp.ClientConnectionError as exc:
            raise ConnectFailed(f"{request.method} {_safe_url(request.url)}: {type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"{request.method} {_safe_url(request.url)}: {type(exc).__name__}") from exc


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, request: HttpRequest) -> bytes:
    """The whole body, or :class:`ResponseTooLarge` as soon as it passes ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise ResponseTooLarge(
            f"{request.method} {_safe_url(request.url)}: answered {resp.status} with a "
            f"{declared}-byte body (limit {limit})"
        )
    chunks: list[bytes] = []
    size = 0
    content = resp.content
    while not content.at_eof():
        chunk = await content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(
                f"{request.method} {_safe_url(request.url)}: answered {resp.status} with a body "
                f"over {limit} bytes"
            )
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _safe_url(url: str) -> str:
    """The URL without query string or credentials (either may carry secrets)."""
    base = url.split("?", 1)[0]
    if "@" in base:
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://{rest.split('@', 1)[1]}"
    return base


def _with_traceparent(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The request's headers plus the W3C ``traceparent`` of the call (tracing), if there is one
    (the request's own mapping, not a copy, when there is none)."""
    traceparent = tracing.outbound_traceparent()
    if traceparent is None:
        return headers
    return {**headers, "traceparent": traceparent}
