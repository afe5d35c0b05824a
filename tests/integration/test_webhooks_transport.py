"""PinnedTransport against real local aiohttp servers (no Kafka needed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from processors.adapters.http import ConnectFailed, HttpRequest, HttpTimeout, HttpTransport, TimeoutSettings
from processors.webhooks.ssrf import AddressRefused, SsrfPolicy
from processors.webhooks.transport import PinnedTransport

LOOPBACK = SsrfPolicy(allow=("127.0.0.0/8",))
BODY = b'{"webhook_id":"msg_1","event_type":"policy.issued","data":{}}'


@dataclass
class Partner:
    """A local partner endpoint recording what it receives."""

    port: int = 0
    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(path, Host header, body) per request."""
    stream_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.received]


def make_app(partner: Partner) -> web.Application:
    async def record(request: web.Request) -> None:
        partner.received.append((request.path, request.headers.get("Host", ""), await request.read()))

    async def hook(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True})

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/target")

    async def target(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="should never be reached")

    async def endless(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while True:  # streams until the client goes away
                await response.write(chunk)
        except (ConnectionError, OSError):
            partner.stream_stopped.set()
        return response

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await partner.release_slow.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/redirect", redirect)
    app.router.add_route("*", "/target", target)
    app.router.add_post("/endless", endless)
    app.router.add_post("/slow", slow)
    return app


async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


@pytest.fixture
async def partner() -> AsyncIterator[Partner]:
    state = Partner()
    runner, state.port = await serve(make_app(state))
    try:
        yield state
    finally:
        state.release_slow.set()
        await runner.cleanup()


class CountingResolver:
    """Answers from a script, one answer list per call, and counts the calls."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self._answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self._answers[min(len(self.calls), len(self._answers)) - 1]


def post(url: str, body: bytes = BODY) -> HttpRequest:
    return HttpRequest("POST", url, {"Content-Type": "application/json"}, body)


def test_constructing_needs_no_event_loop_and_satisfies_the_protocol() -> None:
    transport: HttpTransport = PinnedTransport()
    assert isinstance(transport, PinnedTransport)
    assert transport.policy == SsrfPolicy()
    assert transport.timeouts == TimeoutSettings(connect_timeout_s=5.0, read_timeout_s=15.0)
    assert transport.max_response_bytes == 64 * 1024


async def test_loopback_is_refused_with_an_empty_allow_list(partner: Partner) -> None:
    async with PinnedTransport() as transport:
        with pytest.raises(AddressRefused):
            await transport.send(post(partner.url("/hook")))
        with pytest.raises(AddressRefused):
            await transport.send(post(partner.url("/hook", host="[::ffff:127.0.0.1]")))
        with pytest.raises(AddressRefused):
            await transport.send(post(partner.url("/hook", host="2130706433")))
    assert partner.received == []


async def test_hostname_resolving_to_loopback_is_refused(partner: Partner) -> None:
    resolver = CountingResolver(["127.0.0.1"])
    async with PinnedTransport(resolver=resolver) as transport:
        with pytest.raises(AddressRefused) as info:
            await transport.send(post(partner.url("/hook", host="partner.example")))
    assert "loopback" in info.value.reason
    assert partner.received == []


async def test_allowed_loopback_delivers(partner: Partner) -> None:
    async with PinnedTransport(policy=LOOPBACK) as transport:
        response = await transport.send(post(partner.url("/hook")))
    assert response.status == 200
    assert response.body == b'{"ok": true}'
    assert partner.received == [("/hook", f"127.0.0.1:{partner.port}", BODY)]


async def test_hostname_is_kept_for_the_host_header_and_resolved_once(partner: Partner) -> None:
    # partner.example does not exist in real DNS: delivery only works through the pinned answer.
    resolver = CountingResolver(["127.0.0.1"])
    async with PinnedTransport(policy=LOOPBACK, resolver=resolver) as transport:
        response = await transport.send(post(partner.url("/hook", host="Partner.Example")))
    assert response.status == 200
    assert resolver.calls == [("partner.example", partner.port)]
    assert partner.received == [("/hook", f"partner.example:{partner.port}", BODY)]


async def test_redirect_is_returned_not_followed(partner: Partner) -> None:
    async with PinnedTransport(policy=LOOPBACK) as transport:
        response = await transport.send(post(partner.url("/redirect")))
    assert response.status == 302
    assert response.header("Location") == "/target"
    assert partner.paths() == ["/redirect"]  # /target never saw a request


async def test_huge_body_is_truncated_at_the_cap(partner: Partner) -> None:
    async with PinnedTransport(policy=LOOPBACK, max_response_bytes=100_000) as transport:
        response = await transport.send(post(partner.url("/endless")))
        assert response.status == 200
        assert response.body == b"x" * 100_000
        # The rest is never read: the connection is dropped and the endless stream stops.
        await asyncio.wait_for(partner.stream_stopped.wait(), timeout=30)


async def test_default_cap_is_64_kib(partner: Partner) -> None:
    async with PinnedTransport(policy=LOOPBACK) as transport:
        response = await transport.send(post(partner.url("/endless")))
    assert len(response.body) == 64 * 1024


async def test_dns_rebinding_is_resolved_once_per_request(partner: Partner) -> None:
    # First answer acceptable (loopback is allowed here), second the metadata endpoint.
    resolver = CountingResolver(["127.0.0.1"], ["169.254.169.254"])
    url = partner.url("/hook", host="rebind.example")
    async with PinnedTransport(policy=LOOPBACK, resolver=resolver) as transport:
        first = await transport.send(post(url))
        assert first.status == 200
        assert len(resolver.calls) == 1  # aiohttp connected without asking DNS again

        with pytest.raises(AddressRefused) as info:
            await transport.send(post(url))
        assert len(resolver.calls) == 2
    assert "metadata" in info.value.reason
    assert partner.paths() == ["/hook"]


async def test_concurrent_requests_each_use_their_own_checked_answer(partner: Partner) -> None:
    resolvers: dict[str, list[str]] = {"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]}
    calls: list[str] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        await asyncio.sleep(0)  # let the other request interleave
        return resolvers[host]

    async with PinnedTransport(policy=LOOPBACK, resolver=resolve) as transport:
        responses = await asyncio.gather(
            *(transport.send(post(partner.url("/hook", host=h))) for h in ["a.example", "b.example"] * 5)
        )
    assert [r.status for r in responses] == [200] * 10
    assert sorted(calls) == ["a.example"] * 5 + ["b.example"] * 5
    hosts = sorted(host for _, host, _ in partner.received)
    assert hosts == [f"a.example:{partner.port}"] * 5 + [f"b.example:{partner.port}"] * 5


async def test_read_timeout_maps_to_http_timeout(partner: Partner) -> None:
    quick = TimeoutSettings(connect_timeout_s=5.0, read_timeout_s=0.2)
    async with PinnedTransport(policy=LOOPBACK, timeouts=quick) as transport:
        with pytest.raises(HttpTimeout):
            await transport.send(post(partner.url("/slow")))
    assert partner.paths() == ["/slow"]


async def test_connection_refused_maps_to_connect_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with PinnedTransport(policy=LOOPBACK) as transport:
        with pytest.raises(ConnectFailed) as info:
            await transport.send(post(f"http://127.0.0.1:{closed_port}/hook?token=secret"))
    assert "secret" not in str(info.value)
    assert "/hook" not in str(info.value)


async def test_unresolvable_host_maps_to_connect_failed() -> None:
    async def nxdomain(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with PinnedTransport(resolver=nxdomain) as transport:
        with pytest.raises(ConnectFailed):
            await transport.send(post("https://missing.example/hook"))


# ---------------------------------------------------------------- TLS


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_partner(tmp_path: Path) -> AsyncIterator[tuple[Partner, ssl.SSLContext]]:
    """An HTTPS partner on 127.0.0.1 whose certificate names partner.test only."""
    cert_path, key_path = self_signed(tmp_path, "partner.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    state = Partner()
    runner, state.port = await serve(make_app(state), server_ctx)
    try:
        yield state, client_ctx
    finally:
        await runner.cleanup()


async def test_tls_verifies_the_hostname_not_the_pinned_address(
    tls_partner: tuple[Partner, ssl.SSLContext],
) -> None:
    partner, client_ctx = tls_partner
    resolver = CountingResolver(["127.0.0.1"])
    async with PinnedTransport(policy=LOOPBACK, resolver=resolver, ssl_context=client_ctx) as transport:
        response = await transport.send(post(partner.url("/hook", host="partner.test", scheme="https")))
    assert response.status == 200
    assert partner.received == [("/hook", f"partner.test:{partner.port}", BODY)]
    assert resolver.calls == [("partner.test", partner.port)]


async def test_tls_certificate_for_another_name_fails(tls_partner: tuple[Partner, ssl.SSLContext]) -> None:
    partner, client_ctx = tls_partner
    resolver = CountingResolver(["127.0.0.1"])
    async with PinnedTransport(policy=LOOPBACK, resolver=resolver, ssl_context=client_ctx) as transport:
        with pytest.raises(ConnectFailed):
            await transport.send(post(partner.url("/hook", host="impostor.test", scheme="https")))
        with pytest.raises(ConnectFailed):  # the address itself is not a name on the certificate
            await transport.send(post(partner.url("/hook", scheme="https")))
    assert partner.received == []


def test_loopback_allowance_is_what_lets_local_servers_through() -> None:
    # Guard for the tests above: without the allowance 127.0.0.1 is refused.
    assert not SsrfPolicy().allows_address(ipaddress.ip_address("127.0.0.1"))
    assert LOOPBACK.allows_address(ipaddress.ip_address("127.0.0.1"))


async def test_a_checked_answer_can_be_reused_for_a_while_and_only_checked_ones_are(partner: Partner) -> None:
    resolver = CountingResolver(["127.0.0.1"], ["169.254.169.254"])
    url = partner.url("/hook", host="cached.example")
    async with PinnedTransport(policy=LOOPBACK, resolver=resolver, address_cache_s=3600) as transport:
        for _ in range(3):
            assert (await transport.send(post(url))).status == 200
    assert len(resolver.calls) == 1  # the checked loopback answer was reused, the metadata one never asked
    refusing = CountingResolver(["169.254.169.254"], ["127.0.0.1"])
    async with PinnedTransport(policy=LOOPBACK, resolver=refusing, address_cache_s=3600) as transport:
        with pytest.raises(AddressRefused):
            await transport.send(post(partner.url("/hook", host="refused.example")))
        # A refused answer is not cached: the next request asks again (and gets a good one).
        assert (await transport.send(post(partner.url("/hook", host="refused.example")))).status == 200
    assert len(refusing.calls) == 2
