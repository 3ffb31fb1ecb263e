"""Allow and deny lists of networks, and what a client is banned as."""

from __future__ import annotations

import pytest

from bastion.exceptions import ConfigurationError
from bastion.protection import NetworkList, ban_key
from bastion.protection._networks import ALLOWED, DENIED


def test_verdicts_for_ipv4_and_ipv6() -> None:
    """Denied networks deny; the allow list wins inside them; others are on neither."""
    networks = NetworkList(
        allow=["203.0.113.7", "2001:db8:1::/48"], deny=["203.0.113.0/24", "2001:db8::/32"]
    )
    assert DENIED == networks.verdict("203.0.113.8")
    assert ALLOWED == networks.verdict("203.0.113.7")
    assert DENIED == networks.verdict("2001:db8:2::1")
    assert ALLOWED == networks.verdict("2001:db8:1:5::1")
    assert 0 == networks.verdict("198.51.100.1")
    assert 0 == networks.verdict("testclient")


def test_ipv4_mapped_ipv6_addresses_are_their_ipv4_address() -> None:
    """A dual-stack socket's ::ffff:a.b.c.d is matched as a.b.c.d."""
    assert DENIED == NetworkList(deny=["203.0.113.0/24"]).verdict("::ffff:203.0.113.9")


def test_an_empty_list_is_falsy_so_the_guard_skips_it() -> None:
    """No networks configured: no lookup per request."""
    assert False is bool(NetworkList())
    assert True is bool(NetworkList(deny=["10.0.0.0/8"]))


def test_invalid_networks_are_refused_with_the_option_name() -> None:
    """A typo fails at startup, naming the list it is in."""
    with pytest.raises(ConfigurationError, match=r"deny: '10\.0\.0\.300'"):
        NetworkList(deny=["10.0.0.300"])


@pytest.mark.parametrize(
    ("client", "options", "expected"),
    [
        ("203.0.113.7", {}, "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", {}, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", {"ipv6_prefix": 48}, "2001:db8:1::/48"),
        ("2001:db8:1:2:3:4:5:6", {"ipv6_prefix": 128}, "2001:db8:1:2:3:4:5:6"),
        ("::ffff:203.0.113.7", {}, "203.0.113.7"),
        ("127.0.0.1", {}, None),
        ("10.2.3.4", {}, None),
        ("192.168.1.1", {}, None),
        ("fd00::1", {}, None),
        ("::1", {}, None),
        ("10.2.3.4", {"internal": True}, "10.2.3.4"),
        ("testclient", {"internal": True}, None),
    ],
)
def test_ban_keys(client: str, options: dict[str, object], expected: str | None) -> None:
    """IPv4 by address, IPv6 by network, internal and non-IP clients never (by default)."""
    assert expected == ban_key(client, **options)  # type: ignore[arg-type]
