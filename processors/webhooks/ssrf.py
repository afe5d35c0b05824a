"""SSRF guard for partner webhook URLs.

A partner chooses the URL we POST to, so a URL is a request to reach into our network unless
proven otherwise.  The guard works in two steps:

* ``check_url`` looks at the text only: scheme, credentials, port, and the host.  A literal IP is
  checked at once, including the legacy spellings the system resolver still accepts
  (``2130706433``, ``0x7f.1``, ``127.1``, ``017700000001``), and local or metadata host names
  are refused.
* ``resolve_checked`` resolves a host name once and refuses it when *any* of its addresses is
  refused.  The transport then connects to exactly those addresses (see ``transport.py``), so a
  second lookup cannot return something else (DNS rebinding).

Addresses refused: loopback, private (RFC 1918, ULA), link-local, multicast, unspecified,
broadcast, reserved and documentation ranges, shared address space (100.64/10), benchmarking
(198.18/15), cloud metadata endpoints, and IPv6 forms that embed a refused IPv4 address
(IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo).  ``SsrfPolicy.allow`` lets chosen networks
or exact host names through.  Refusal reasons are safe to show the API caller: they never
include an address the caller did not write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from yarl import URL

from processors.adapters.http import ConnectFailed
from processors.errors import Permanent

__all__ = [
    "AddressRefused",
    "HostResolver",
    "IPAddress",
    "ParsedTarget",
    "SsrfPolicy",
    "check_ip",
    "check_registration_url",
    "check_url",
    "resolve_checked",
    "system_resolver",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
HostResolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> IP address strings``; raises ``OSError`` when the name does not resolve."""


class AddressRefused(Permanent):
    """The URL or one of its addresses is not allowed.  ``reason`` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- policy

_LABEL: Final = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _normalise_hostname(host: str) -> str | None:
    """Lower-case ASCII (IDNA) form without a trailing dot, or None when not a valid host name."""
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    if all(_LABEL.match(label) for label in host.split(".")):
        return host
    return None


class SsrfPolicy(BaseModel):
    """What partner URLs may point at.  The default allows nothing private."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[str, ...] = ()
    """Networks (CIDR, IPv4 or IPv6; a bare address is a /32 or /128) or exact host names
    (case-insensitive) that are allowed although private, loopback or local."""
    require_https: bool = False
    allowed_ports: tuple[int, ...] | None = None
    """None: any port."""
    max_url_length: int = Field(default=2048, ge=16)

    _networks: tuple[IPNetwork, ...] = PrivateAttr(default=())
    _hostnames: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("allow")
    @classmethod
    def _allow_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned: list[str] = []
        for raw in value:
            entry = raw.strip()
            if not entry:
                raise ValueError("allow entries must not be empty")
            network = _parse_allow_network(entry)
            if network is not None:
                cleaned.append(str(network))
                continue
            if "*" in entry:
                raise ValueError(f"allow entry {entry!r}: wildcards are not supported, list exact names")
            try:
                ascii_host = URL.build(scheme="http", host=entry).raw_host or ""
            except ValueError as exc:
                raise ValueError(f"allow entry {entry!r} is neither a network nor a host name") from exc
            host = _normalise_hostname(ascii_host)
            if host is None:
                raise ValueError(f"allow entry {entry!r} is neither a network nor a host name")
            cleaned.append(host)
        return tuple(cleaned)

    @field_validator("allowed_ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None:
            for port in value:
                if not 1 <= port <= 65535:
                    raise ValueError(f"port {port} is outside 1..65535")
        return value

    def model_post_init(self, __context: object) -> None:
        networks: list[IPNetwork] = []
        hostnames: set[str] = set()
        for entry in self.allow:
            network = _parse_allow_network(entry)
            if network is None:
                hostnames.add(entry)
            else:
                networks.append(network)
        self._networks = tuple(networks)
        self._hostnames = frozenset(hostnames)

    def allows_address(self, ip: IPAddress) -> bool:
        """True when ``ip`` is inside an allowed network."""
        return any(ip in network for network in self._networks)

    def allows_host(self, host: str) -> bool:
        """True when ``host`` is an allowed exact host name (any case, trailing dot ignored)."""
        normalised = _normalise_hostname(host)
        return normalised is not None and normalised in self._hostnames


def _parse_allow_network(entry: str) -> IPNetwork | None:
    """The network an allow entry names; None for a host name; ValueError for a bad network."""
    if "/" in entry or ":" in entry or _ends_in_number(entry):
        try:
            return ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            raise ValueError(f"allow entry {entry!r} is not a valid network: {exc}") from exc
    return None


# --------------------------------------------------------------------------- addresses

_METADATA: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_network("169.254.170.2/32"),  # AWS ECS task metadata
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IMDS over IPv6
)

_V4_RANGES: Final[tuple[tuple[str, str], ...]] = (
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("192.0.0.0/24", "a reserved address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "a broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)

_V6_RANGES: Final[tuple[tuple[str, str], ...]] = (
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a private address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a reserved address"),
    ("64:ff9b:1::/48", "a local NAT64 address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001:2::/48", "a benchmarking address"),
)


def _compile(ranges: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in ranges)


_V4_TABLE: Final = _compile(_V4_RANGES)
_V6_TABLE: Final = _compile(_V6_RANGES)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")


def _refusal(ip: IPAddress, policy: SsrfPolicy) -> str | None:
    """Why ``ip`` is refused (``"a loopback address"``), or None when it may be used."""
    if policy.allows_address(ip):
        return None
    if any(ip in network for network in _METADATA):
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _refusal_v4(ip)
    return _refusal_v6(ip, policy)


def _refusal_v4(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_TABLE:
        if ip in network:
            return reason
    if ip.is_private or ip.is_reserved or ip.is_multicast or not ip.is_global:
        return "not a public address"
    return None


def _refusal_v6(ip: ipaddress.IPv6Address, policy: SsrfPolicy) -> str | None:
    # Translation forms: the connection really goes to the embedded IPv4 address.
    embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped
    if embedded is None and int(ip) >> 32 == 0 and int(ip) > 1:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # IPv4-compatible (deprecated)
    if embedded is None and ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if embedded is not None:
        inner = _refusal(embedded, policy)
        return None if inner is None else f"an IPv6 form of {inner}"
    # Tunnel forms: refuse when they carry a refused IPv4 address, then judge the IPv6 address.
    tunnelled: list[ipaddress.IPv4Address] = []
    if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
        tunnelled.append(ip.sixtofour)
    if ip in _TEREDO and ip.teredo is not None:
        tunnelled.extend(ip.teredo)
    for inner_ip in tunnelled:
        inner = _refusal(inner_ip, policy)
        if inner is not None:
            return f"a tunnelled form of {inner}"
    for network, reason in _V6_TABLE:
        if ip in network:
            return reason
    if (
        ip.is_private
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_link_local
        or ip.is_site_local
        or not ip.is_global
    ):
        return "not a public address"
    return None


def check_ip(ip: IPAddress, policy: SsrfPolicy) -> None:
    """Raise ``AddressRefused`` unless ``ip`` is public or inside an allowed network."""
    reason = _refusal(ip, policy)
    if reason is not None:
        raise AddressRefused(f"{ip} is {reason}")


# --------------------------------------------------------------------------- URLs

_BLOCKED_HOSTNAMES: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata.google.internal",
    }
)
_CONTROL_OR_SPACE: Final = re.compile(r"[\x00-\x20\x7f]")
_HEX_PART: Final = re.compile(r"^0[xX][0-9a-fA-F]*$")


@dataclass(frozen=True, slots=True)
class ParsedTarget:
    """Where a checked URL points."""

    scheme: str
    """``http`` or ``https``."""
    host: str
    """Lower-case ASCII host (IDNA-encoded name, or the IP address), no brackets or trailing dot."""
    port: int
    ip: IPAddress | None
    """The address when the URL names an IP literal; None for a host name (resolve it)."""

    @property
    def origin(self) -> str:
        """``scheme://host:port``: the URL without path, query or credentials (safe to log)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _ends_in_number(host: str) -> bool:
    """WHATWG's "ends in a number": such a host can only be an IPv4 address."""
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    return bool(last) and ((last.isascii() and last.isdigit()) or _HEX_PART.match(last) is not None)


def _parse_ipv4_part(part: str) -> int | None:
    if not part:
        return None
    if _HEX_PART.match(part):
        return int(part[2:] or "0", 16)
    if not (part.isascii() and part.isdigit()):
        return None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def _parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` the way ``inet_aton`` does (1 to 4 parts, decimal, octal or hex; the last
    part fills the remaining bytes).  None when it is not a valid address."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    values = [_parse_ipv4_part(p) for p in parts]
    numbers = [v for v in values if v is not None]
    if len(numbers) != len(values):
        return None
    *head, last = numbers
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, byte in enumerate(head):
        value |= byte << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _raw_authority(url: str) -> str:
    """The authority as written (parsers differ on odd input; judge the text itself too)."""
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def check_url(url: str, policy: SsrfPolicy) -> ParsedTarget:
    """Check a partner URL without any network access; raise ``AddressRefused`` when refused."""
    if len(url) > policy.max_url_length:
        raise AddressRefused(f"URL is longer than {policy.max_url_length} characters")
    if _CONTROL_OR_SPACE.search(url):
        raise AddressRefused("URL contains whitespace or control characters")
    try:
        parsed = URL(url)
        raw_host = parsed.raw_host
        port = parsed.port
    except ValueError as exc:
        raise AddressRefused("URL is not valid") from exc
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise AddressRefused("URL scheme must be http or https")
    if policy.require_https and scheme != "https":
        raise AddressRefused("URL must use https")
    if "@" in _raw_authority(url) or "@" in (parsed.raw_authority or "") or parsed.raw_user is not None:
        raise AddressRefused("credentials in the URL are not allowed")
    if not raw_host:
        raise AddressRefused("URL has no host")
    if port is None or not 1 <= port <= 65535:
        raise AddressRefused("URL port is not valid")
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise AddressRefused(f"port {port} is not allowed")
    if "%" in raw_host:
        raise AddressRefused("URL host is not valid")

    if ":" in raw_host:
        try:
            ip6 = ipaddress.IPv6Address(raw_host)
        except ValueError as exc:
            raise AddressRefused("URL host is not a valid IPv6 address") from exc
        check_ip(ip6, policy)
        return ParsedTarget(scheme, str(ip6), port, ip6)

    if _ends_in_number(raw_host):
        ip4 = _parse_legacy_ipv4(raw_host)
        if ip4 is None:
            raise AddressRefused("URL host is not a valid IPv4 address")
        check_ip(ip4, policy)
        if raw_host.rstrip(".") != str(ip4):
            raise AddressRefused(f"write the address {ip4} as four decimal numbers")
        return ParsedTarget(scheme, str(ip4), port, ip4)

    host = _normalise_hostname(raw_host)
    if host is None:
        raise AddressRefused("URL host is not a valid host name")
    local = host in _BLOCKED_HOSTNAMES or host.endswith(".localhost")
    if local and not policy.allows_host(host):
        raise AddressRefused(f"host {host} refers to this machine or its cloud metadata service")
    return ParsedTarget(scheme, host, port, None)


# --------------------------------------------------------------------------- resolution


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (``getaddrinfo`` in the loop's executor)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in infos]


def _as_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


async def resolve_checked(
    host: str, port: int, policy: SsrfPolicy, resolver: HostResolver | None = None
) -> list[str]:
    """Resolve ``host`` once and return its addresses, all of them checked.

    Refused (``AddressRefused``) when any address is refused, unless ``host`` is an allowed
    exact host name.  A name that does not resolve raises ``ConnectFailed`` (retriable).
    """
    literal = _as_ip(host.strip("[]"))
    if literal is not None:
        check_ip(literal, policy)
        return [str(literal)]
    resolve = resolver or system_resolver
    try:
        answers = await resolve(host, port)
    except OSError as exc:
        raise ConnectFailed(f"cannot resolve host {host}") from exc
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = _as_ip(answer)
        if ip is None:
            raise ConnectFailed(f"cannot resolve host {host}: the resolver returned a non-address")
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ConnectFailed(f"cannot resolve host {host}: no address")
    if not policy.allows_host(host):
        for ip in addresses:
            reason = _refusal(ip, policy)
            if reason is not None:
                raise AddressRefused(f"host {host} resolves to {reason}")
    return [str(ip) for ip in addresses]


async def check_registration_url(
    url: str, policy: SsrfPolicy, resolver: HostResolver | None = None, *, timeout_s: float = 5.0
) -> None:
    """Check a URL a partner wants to register: ``check_url`` and one checked resolution.

    Raises ``AddressRefused`` (with a reason for the caller) when refused or unresolvable.
    """
    target = check_url(url, policy)
    try:
        async with asyncio.timeout(timeout_s):
            await resolve_checked(target.host, target.port, policy, resolver)
    except (ConnectFailed, TimeoutError) as exc:
        raise AddressRefused("cannot resolve host") from exc
