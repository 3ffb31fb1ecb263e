"""IP networks: the allow and deny lists, and the ban key of a client address.

Lists are parsed once. Lookups are memoized per address in a bounded table, because the same
clients come back again and again and ``ipaddress`` parsing costs microseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bastion.exceptions import ConfigurationError

__all__ = ["ALLOWED", "DENIED", "Network", "NetworkList", "ban_key", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED = 1
"""``NetworkList.verdict``: the address is on the allow list."""
DENIED = -1
"""``NetworkList.verdict``: the address is on the deny list (and not on the allow list)."""

_MEMO_LIMIT = 8192

# Addresses that are usually a proxy or a neighbour rather than a client on the internet:
# loopback, RFC 1918 private, link-local, IPv6 unique-local and link-local.
_INTERNAL = tuple(
    ipaddress.ip_network(network)
    for network in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def parse_networks(values: Iterable[str | Network], *, option: str) -> tuple[Network, ...]:
    """Parse addresses and CIDR networks (IPv4 and IPv6; host bits are ignored).

    Raises:
        ConfigurationError: naming ``option`` and the value that is not a network.
    """
    networks = []
    for value in values:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(value)
            continue
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigurationError(
                f"{option}: {value!r} is not an IP address or CIDR network (e.g. 203.0.113.0/24)"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:203.0.113.7 is 203.0.113.7 (dual-stack sockets)
    return address


class NetworkList:
    """Allow and deny lists compiled for lookups by address.

    The allow list wins: it carves exceptions out of denied networks, and its addresses are never
    banned. Addresses that are not IP addresses (Starlette's ``TestClient`` says
    ``"testclient"``) are on neither list.

    Args:
        allow: addresses or networks always let through.
        deny: addresses or networks refused with 403.

    Raises:
        ConfigurationError: for a value that is not an address or network.
    """

    __slots__ = ("_allow", "_deny", "_memo")

    def __init__(self, allow: Iterable[str | Network] = (), deny: Iterable[str | Network] = ()):
        self._allow = parse_networks(allow, option="allow")
        self._deny = parse_networks(deny, option="deny")
        self._memo: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._allow or self._deny)

    def verdict(self, client: str) -> int:
        """``ALLOWED``, ``DENIED`` or ``0`` (on neither list) for the address ``client``."""
        memo = self._memo
        found = memo.get(client)
        if found is not None:
            return found
        address = _address(client)
        verdict = 0
        if address is not None:
            if any(address in network for network in self._allow):
                verdict = ALLOWED
            elif any(address in network for network in self._deny):
                verdict = DENIED
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[client] = verdict
        return verdict


def ban_key(client: str, *, ipv6_prefix: int = 64, internal: bool = False) -> str | None:
    """What a client is banned as: its IPv4 address, or its IPv6 network of ``ipv6_prefix`` bits.

    Returns ``None`` for clients that are never banned: addresses that are not IP addresses, and,
    unless ``internal``, loopback, private and link-local ones (see ``GuardSettings``).
    """
    address = _address(client)
    if address is None:
        return None
    if not internal and any(address in network for network in _INTERNAL):
        return None
    if isinstance(address, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return str(address)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
