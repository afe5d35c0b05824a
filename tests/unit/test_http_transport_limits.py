"""Answers of the gateway, KYC provider and reinsurer are read up to a limit, never whole."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from processors.adapters.http import (
    AiohttpTransport,
    HttpRequest,
    HttpResponse,
    ResponseTooLarge,
    TimeoutSettings,
    client_timeout,
)
from processors.errors import Retriable

LIMIT = 64 * 1024
TIMEOUTS = TimeoutSettings(connect_timeout_s=5, read_timeout_s=5)


async def _declared(_request: web.Request) -> web.Response:
    return web.Response(body=b"x" * (LIMIT * 4), content_type="application/json")


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(20):  # no Content-Length: only counting the bytes can stop it
        await response.write(b"y" * 16 * 1024)
    await response.write_eof()
    return response


async def _bomb(_request: web.Request) -> web.Response:
    body = gzip.compress(b"0" * (LIMIT * 50))  # small on the wire, large once decompressed
    return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def _small(_request: web.Request) -> web.Response:
    return web.json_response({"status": "COMPLETED"})


async def _chunked_small(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Retry-After": "7", "X-Request-Id": "r-1"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"a" * 10_000, b"b" * 10_000, b"c" * 10_000):
        await response.write(part)
    await response.write_eof()
    return response


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/declared", _declared)
    app.router.add_post("/chunked", _chunked)
    app.router.add_post("/bomb", _bomb)
    app.router.add_post("/small", _small)
    app.router.add_post("/chunked-small", _chunked_small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/declared", "/chunked", "/bomb"])
async def test_an_answer_over_the_limit_is_refused_as_retriable(base_url: str, path: str) -> None:
    transport = AiohttpTransport(max_response_bytes=LIMIT)
    try:
        with pytest.raises(ResponseTooLarge, match=f"limit {LIMIT}|over {LIMIT} bytes") as caught:
            await transport.send(HttpRequest("POST", base_url + path, {}, b"{}"), timeouts=TIMEOUTS)
    finally:
        await transport.close()
    assert isinstance(caught.value, Retriable)  # the idempotency key makes a retry safe


async def test_an_answer_under_the_limit_is_read_whole(base_url: str) -> None:
    transport = AiohttpTransport(max_response_bytes=LIMIT)
    try:
        response = await transport.send(
            HttpRequest("POST", base_url + "/small", {}, b"{}"), timeouts=TIMEOUTS
        )
    finally:
        await transport.close()
    assert response.status == 200
    assert response.body == b'{"status": "COMPLETED"}'


async def test_a_chunked_answer_under_the_limit_is_read_whole_with_its_headers(base_url: str) -> None:
    transport = AiohttpTransport(max_response_bytes=LIMIT)
    try:
        response = await transport.send(
            HttpRequest("POST", base_url + "/chunked-small", {}, b"{}"), timeouts=TIMEOUTS
        )
    finally:
        await transport.close()
    assert response.body == b"a" * 10_000 + b"b" * 10_000 + b"c" * 10_000
    assert response.header("retry-after") == "7"  # whatever case the caller asks in
    assert response.header("X-REQUEST-ID") == "r-1"
    assert response.retry_after_s() == 7.0
    assert response.header("absent") is None


def test_a_plain_mapping_of_headers_is_searched_whatever_the_case() -> None:
    response = HttpResponse(status=429, headers={"retry-after": "3"}, body=b"")
    assert response.header("Retry-After") == "3"
    assert response.header("retry-after") == "3"
    assert response.header("Other") is None


def test_client_timeouts_carry_the_settings_and_are_built_once_per_pair() -> None:
    first = client_timeout(TimeoutSettings(connect_timeout_s=2, read_timeout_s=9))
    assert (first.total, first.sock_connect, first.sock_read) == (None, 2, 9)
    assert client_timeout(TimeoutSettings(connect_timeout_s=2, read_timeout_s=9)) is first
    other = client_timeout(TimeoutSettings(connect_timeout_s=2, read_timeout_s=10))
    assert other.sock_read == 10
