"""SSRF guard: URL syntax, address ranges, odd IPv4 spellings, allow-list, checked resolution."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pydantic
import pytest

from processors.adapters.http import ConnectFailed
from processors.errors import Permanent
from processors.webhooks.ssrf import (
    AddressRefused,
    HostResolver,
    ParsedTarget,
    SsrfPolicy,
    check_ip,
    check_registration_url,
    check_url,
    resolve_checked,
)

OPEN = SsrfPolicy()


def fixed(*answers: str) -> HostResolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return list(answers)

    return resolve


def refused_reason(url: str, policy: SsrfPolicy = OPEN) -> str:
    with pytest.raises(AddressRefused) as info:
        check_url(url, policy)
    return info.value.reason


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.64.0.1", "shared"),
        ("100.127.255.255", "shared"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "documentation"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    with pytest.raises(AddressRefused) as info:
        check_ip(ipaddress.ip_address(address), OPEN)
    assert why in info.value.reason
    assert isinstance(info.value, Permanent)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    check_ip(ipaddress.ip_address(address), OPEN)  # no exception


def test_allowed_network_lets_a_private_address_through() -> None:
    policy = SsrfPolicy(allow=("10.20.0.0/16", "fd00:1::/32"))
    check_ip(ipaddress.ip_address("10.20.3.4"), policy)
    check_ip(ipaddress.ip_address("fd00:1::5"), policy)
    check_ip(ipaddress.ip_address("::ffff:10.20.3.4"), policy)  # mapped form of an allowed address
    with pytest.raises(AddressRefused):
        check_ip(ipaddress.ip_address("10.21.0.1"), policy)
    with pytest.raises(AddressRefused):
        check_ip(ipaddress.ip_address("127.0.0.1"), policy)


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:8080/",
        "http://[::]/",
        "http://0/",
    ],
)
def test_literal_private_addresses_refused(url: str) -> None:
    refused_reason(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # decimal
        "http://0x7f000001/",  # hex
        "http://0x7f.1/",  # hex, short
        "http://127.1/",  # short
        "http://127.0.1/",
        "http://017700000001/",  # octal
        "http://0177.0.0.1/",  # octal first part
        "http://0x7F.0x00.0x00.0x01/",
        "http://127.0.0.1./",  # trailing dot
        "http://0xa9fea9fe/",  # 169.254.169.254
        "http://167772161/",  # 10.0.0.1
    ],
)
def test_odd_ipv4_spellings_are_normalised_and_refused(url: str) -> None:
    reason = refused_reason(url)
    assert "127.0.0.1" in reason or "169.254.169.254" in reason or "10.0.0.1" in reason


def test_odd_spelling_of_a_public_address_is_refused_too() -> None:
    # 1572395042 is 93.184.216.34: public, but the HTTP client would not connect to this spelling.
    assert "four decimal numbers" in refused_reason("http://1572395042/")


@pytest.mark.parametrize(
    "url", ["http://1.2.3.256/", "http://0x1ffffffff/", "http://08.0.0.1/", "http://1.2.3.4.5/"]
)
def test_invalid_numeric_hosts_refused(url: str) -> None:
    assert "not a valid IPv4" in refused_reason(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://LOCALHOST:8080/",
        "http://localhost./",
        "http://api.localhost/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://Metadata.Google.Internal./",
    ],
)
def test_local_host_names_refused(url: str) -> None:
    refused_reason(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://user:secret@partner.example/", "credentials"),
        ("http://user@partner.example/", "credentials"),
        ("http://@partner.example/", "credentials"),
        ("http://127.0.0.1:80@partner.example/", "credentials"),
        ("ftp://partner.example/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://partner.example/", "scheme"),
        ("partner.example/hook", "scheme"),
        ("http:///hook", "no host"),
        ("http://partner.example:0/", "port"),
        ("http://partner.example:99999/", "not valid"),
        ("http://evil.example\\@127.0.0.1/", "not valid"),
        ("http://partner .example/", "whitespace"),
        ("http://partner.example/\r\nX-Injected: 1", "whitespace"),
        ("http://%31%32%37.0.0.1/", "host"),
        ("http://[fe80::1%25eth0]/", "host"),
        ("http://under_score-.example/", "host name"),
    ],
)
def test_bad_urls_refused(url: str, why: str) -> None:
    assert why in refused_reason(url)


def test_https_required() -> None:
    policy = SsrfPolicy(require_https=True)
    assert "https" in refused_reason("http://partner.example/hook", policy)
    assert check_url("https://partner.example/hook", policy).scheme == "https"


def test_allowed_ports() -> None:
    policy = SsrfPolicy(allowed_ports=(443, 8443))
    assert "port 8080" in refused_reason("https://partner.example:8080/", policy)
    assert "port 80" in refused_reason("http://partner.example/", policy)  # default port counts
    assert check_url("https://partner.example/", policy).port == 443
    assert check_url("https://partner.example:8443/", policy).port == 8443


def test_url_length_cap() -> None:
    policy = SsrfPolicy(max_url_length=64)
    assert "longer than 64" in refused_reason("https://partner.example/" + "a" * 64, policy)


def test_parsed_target_of_public_urls() -> None:
    assert check_url("HTTPS://Partner.Example./hooks?x=1", OPEN) == ParsedTarget(
        "https", "partner.example", 443, None
    )
    assert check_url("http://93.184.216.34:8080/", OPEN) == ParsedTarget(
        "http", "93.184.216.34", 8080, ipaddress.IPv4Address("93.184.216.34")
    )
    target = check_url("https://[2606:4700::1111]/h", OPEN)
    assert target.ip == ipaddress.IPv6Address("2606:4700::1111")
    assert target.origin == "https://[2606:4700::1111]:443"
    assert check_url("https://bücher.example/", OPEN).host == "xn--bcher-kva.example"


def test_allow_list_by_cidr_and_hostname() -> None:
    policy = SsrfPolicy(allow=("127.0.0.0/8", "::1", "LocalHost", "partner.internal."))
    assert check_url("http://127.0.0.1:8080/", policy).ip == ipaddress.IPv4Address("127.0.0.1")
    assert check_url("http://[::1]/", policy).ip == ipaddress.IPv6Address("::1")
    assert check_url("http://[::ffff:127.0.0.1]/", policy).ip is not None
    assert check_url("http://localhost/", policy).host == "localhost"
    # Exact names only: a sub-domain of an allowed name is not allowed.
    refused_reason("http://api.localhost/", policy)
    refused_reason("http://10.0.0.1/", policy)


def test_policy_normalises_and_validates_entries() -> None:
    policy = SsrfPolicy(allow=(" 10.0.0.0/8 ", "Partner.Example.", "fd00::1"))
    assert policy.allow == ("10.0.0.0/8", "partner.example", "fd00::1/128")
    assert policy.allows_host("PARTNER.example.")
    assert not policy.allows_host("other.example")


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.1/8", "10.0.0.0/33", "300.1.2.3", "127.1", "fd00::/129", "*.partner.example", "bad host", ""],
)
def test_policy_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        SsrfPolicy(allow=(entry,))


def test_policy_rejects_bad_ports_and_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        SsrfPolicy(allowed_ports=(0,))
    with pytest.raises(pydantic.ValidationError):
        SsrfPolicy(unknown=True)  # type: ignore[call-arg]
    policy = SsrfPolicy()
    with pytest.raises(pydantic.ValidationError):
        policy.require_https = True


# ---------------------------------------------------------------- resolution


async def test_hostname_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(AddressRefused) as info:
        await resolve_checked("partner.example", 443, OPEN, fixed("10.1.2.3"))
    assert info.value.reason == "host partner.example resolves to a private address"
    assert "10.1.2.3" not in info.value.reason  # the caller learns nothing about internal DNS


async def test_one_private_address_among_public_ones_is_refused() -> None:
    with pytest.raises(AddressRefused) as info:
        await resolve_checked("partner.example", 443, OPEN, fixed("93.184.216.34", "127.0.0.1"))
    assert "loopback" in info.value.reason


@pytest.mark.parametrize("answer", ["::ffff:169.254.169.254", "fe80::1%1", "::1"])
async def test_resolved_ipv6_forms_are_checked(answer: str) -> None:
    with pytest.raises(AddressRefused):
        await resolve_checked("partner.example", 443, OPEN, fixed("2606:4700::1111", answer))


async def test_public_resolution_returns_the_checked_addresses() -> None:
    answers = await resolve_checked(
        "partner.example", 443, OPEN, fixed("93.184.216.34", "2606:4700::1111", "93.184.216.34")
    )
    assert answers == ["93.184.216.34", "2606:4700::1111"]


async def test_allowed_network_passes_resolution() -> None:
    policy = SsrfPolicy(allow=("10.0.0.0/8",))
    assert await resolve_checked("partner.example", 443, policy, fixed("10.1.2.3")) == ["10.1.2.3"]


async def test_allowed_hostname_skips_the_address_check() -> None:
    policy = SsrfPolicy(allow=("partner.internal",))
    answers = await resolve_checked("Partner.Internal", 443, policy, fixed("10.1.2.3", "127.0.0.1"))
    assert answers == ["10.1.2.3", "127.0.0.1"]


async def test_literal_address_is_checked_without_resolving() -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        return ["93.184.216.34"]

    assert await resolve_checked("93.184.216.34", 80, OPEN, resolver) == ["93.184.216.34"]
    with pytest.raises(AddressRefused):
        await resolve_checked("::1", 80, OPEN, resolver)
    assert calls == []


async def test_resolution_failure_is_retriable() -> None:
    async def failing(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ConnectFailed):
        await resolve_checked("partner.example", 443, OPEN, failing)
    with pytest.raises(ConnectFailed):
        await resolve_checked("partner.example", 443, OPEN, fixed())


async def test_system_resolver_is_the_default() -> None:
    # localhost resolves locally (hosts file) to loopback, and is refused on its address.
    with pytest.raises(AddressRefused) as info:
        await resolve_checked("localhost", 80, OPEN)
    assert "loopback" in info.value.reason


# ---------------------------------------------------------------- registration


async def test_registration_check_refuses_a_private_resolution() -> None:
    with pytest.raises(AddressRefused) as info:
        await check_registration_url("https://partner.example/hook", OPEN, fixed("192.168.0.10"))
    assert "private" in info.value.reason


async def test_registration_check_refuses_syntax_before_resolving() -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        return ["93.184.216.34"]

    with pytest.raises(AddressRefused):
        await check_registration_url("http://user:pw@partner.example/", OPEN, resolver)
    assert calls == []


async def test_registration_check_accepts_a_public_resolution() -> None:
    seen: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        seen.append((host, port))
        return ["93.184.216.34"]

    await check_registration_url("https://Partner.Example:8443/hook", OPEN, resolver)
    assert seen == [("partner.example", 8443)]


async def test_registration_check_dns_failure_is_refused() -> None:
    async def failing(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(AddressRefused) as info:
        await check_registration_url("https://partner.example/hook", OPEN, failing)
    assert info.value.reason == "cannot resolve host"
