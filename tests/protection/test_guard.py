"""Auto-bans: bursts of auth failures or client errors ban a client for a growing time."""

from __future__ import annotations

from typing import Any

import pytest

from bastion._clock import ManualClock
from bastion.events import BannedRequest, ClientBanned, Event, Hooks, NetworkDenied
from bastion.exceptions import ConfigurationError
from bastion.protection import Bans
from bastion.stores import Store
from bastion.types import Message, Scope
from tests.protection.conftest import CLIENT, client_for, guarded_app, recorder, statuses

pytestmark = pytest.mark.anyio


def tracked(store: Store, clock: ManualClock, hooks: Hooks | None = None, **options: Any) -> Bans:
    """Bans on ``store`` with small thresholds, driven by ``clock``."""
    settings: dict[str, Any] = {"auth_failures": 3, "client_errors": 5, "window_s": 60.0}
    settings.update(options)
    return Bans(store, clock=clock, hooks=hooks, **settings)


async def test_auth_failures_beyond_the_threshold_ban_the_client(
    store: Store, manual_clock: ManualClock
) -> None:
    """The third 401 in a window bans: the next request is refused with 403 and Retry-After."""
    app = guarded_app(bans=tracked(store, manual_clock))
    async with client_for(app) as client:
        assert [401, 401, 401] == [(await client.get("/login")).status_code for _ in range(3)]
        refused = await client.get("/ok")
    assert 403 == refused.status_code
    assert "60" == refused.headers["retry-after"]
    assert "application/problem+json" == refused.headers["content-type"]
    assert 403 == refused.json()["status"]


async def test_a_ban_ends_after_its_length(store: Store, manual_clock: ManualClock) -> None:
    """Once ban_s has passed, the client is served again."""
    app = guarded_app(bans=tracked(store, manual_clock, ban_s=30.0))
    assert [401, 401, 401, 403] == await statuses(app, ["/login"] * 3 + ["/ok"])
    manual_clock.advance(29.0)
    assert [403] == await statuses(app, ["/ok"])
    manual_clock.advance(1.5)
    assert [200] == await statuses(app, ["/ok"])


async def test_bans_double_with_each_offence_up_to_the_cap(
    store: Store, manual_clock: ManualClock
) -> None:
    """Ban lengths go base, 2 x base, 4 x base, ... and never beyond max_ban_s."""
    hooks, banned = recorder(ClientBanned)
    app = guarded_app(bans=tracked(store, manual_clock, hooks, ban_s=10.0, max_ban_s=25.0))
    for _ in range(4):
        await statuses(app, ["/login"] * 3)
        manual_clock.advance(30.0)
    assert [10.0, 20.0, 25.0, 25.0] == [event.ban_s for event in banned]
    assert [1, 2, 3, 4] == [event.offences for event in banned]


async def test_offences_are_forgotten_after_the_memory_period(
    store: Store, manual_clock: ManualClock
) -> None:
    """A ban longer ago than memory_s does not lengthen the next one."""
    hooks, banned = recorder(ClientBanned)
    app = guarded_app(bans=tracked(store, manual_clock, hooks, ban_s=10.0, memory_s=100.0))
    await statuses(app, ["/login"] * 3)
    manual_clock.advance(101.0)
    await statuses(app, ["/login"] * 3)
    assert [(10.0, 1), (10.0, 1)] == [(event.ban_s, event.offences) for event in banned]


async def test_client_errors_ban_but_ignored_statuses_do_not(
    store: Store, manual_clock: ManualClock
) -> None:
    """Five 404s ban; any number of 429s (ignored by default) does not."""
    app = guarded_app(bans=tracked(store, manual_clock))
    assert [429] * 10 + [200] == await statuses(app, ["/limited"] * 10 + ["/ok"])
    assert [404] * 5 + [403] == await statuses(app, ["/missing"] * 5 + ["/ok"])


async def test_offences_spread_over_windows_do_not_ban(
    store: Store, manual_clock: ManualClock
) -> None:
    """The count slides: two failures now and two once the window has passed never reach 3."""
    app = guarded_app(bans=tracked(store, manual_clock))
    assert [401, 401] == await statuses(app, ["/login"] * 2)
    manual_clock.advance(120.0)
    assert [401, 401, 200] == await statuses(app, ["/login"] * 2 + ["/ok"])


async def test_the_previous_window_still_counts(store: Store) -> None:
    """Failures just before a window edge count with those just after it."""
    # Both clocks 20 s into a minute: memory counts on monotonic(), Redis on time().
    clock = ManualClock(1_040.0)
    app = guarded_app(bans=tracked(store, clock))
    clock.advance(38.0)  # 2 s before the edge
    await statuses(app, ["/login"] * 2)
    clock.advance(4.0)
    assert [401, 401, 403] == await statuses(app, ["/login", "/login", "/ok"])


async def test_a_ban_concerns_only_its_client(store: Store, manual_clock: ManualClock) -> None:
    """Another address is served while one is banned."""
    app = guarded_app(bans=tracked(store, manual_clock))
    await statuses(app, ["/login"] * 3)
    assert [403] == await statuses(app, ["/ok"])
    assert [200] == await statuses(app, ["/ok"], address="198.51.100.9")


async def test_ipv6_clients_are_banned_by_their_64_network(
    store: Store, manual_clock: ManualClock
) -> None:
    """Hopping addresses within one /64 does not escape a ban."""
    app = guarded_app(bans=tracked(store, manual_clock))
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3"):
        await statuses(app, ["/login"], address=host)
    assert [403] == await statuses(app, ["/ok"], address="2001:db8:1:2:ffff::9")
    assert [200] == await statuses(app, ["/ok"], address="2001:db8:1:3::1")


async def test_internal_addresses_are_never_banned_by_default(
    memory_store: Store, manual_clock: ManualClock
) -> None:
    """Loopback and private clients are likely a proxy: banning them would ban everybody."""
    app = guarded_app(bans=tracked(memory_store, manual_clock))
    assert [401] * 6 + [200] == await statuses(app, ["/login"] * 6 + ["/ok"], address="10.1.2.3")
    strict = guarded_app(bans=tracked(memory_store, manual_clock, ban_private_networks=True))
    assert [401] * 3 + [403] == await statuses(strict, ["/login"] * 3 + ["/ok"], "10.1.2.3")


async def test_a_client_that_is_no_ip_address_is_never_banned(
    memory_store: Store, manual_clock: ManualClock
) -> None:
    """Starlette's TestClient reports 'testclient': a test suite never bans itself."""
    app = guarded_app(bans=tracked(memory_store, manual_clock))
    assert [401] * 6 + [200] == await statuses(app, ["/login"] * 6 + ["/ok"], "testclient")


async def test_the_allow_list_bypasses_bans(store: Store, manual_clock: ManualClock) -> None:
    """An allow-listed client is never banned, however many failures it produces."""
    app = guarded_app(bans=tracked(store, manual_clock), allow=["203.0.113.0/24"])
    assert [401] * 6 + [200] == await statuses(app, ["/login"] * 6 + ["/ok"])


async def test_the_deny_list_refuses_and_the_allow_list_wins(memory_store: Store) -> None:
    """Denied networks get 403; an allowed address inside one is served; IPv6 works alike."""
    hooks, denied = recorder(NetworkDenied)
    app = guarded_app(deny=["203.0.113.0/24", "2001:db8::/32"], allow=["203.0.113.99"], hooks=hooks)
    assert [403] == await statuses(app, ["/ok"])
    assert [403] == await statuses(app, ["/ok"], address="2001:db8::5")
    assert [200] == await statuses(app, ["/ok"], address="203.0.113.99")
    assert [200] == await statuses(app, ["/ok"], address="198.51.100.1")
    assert [CLIENT, "2001:db8::5"] == [event.client for event in denied]


async def test_unban_lifts_a_ban(store: Store, manual_clock: ManualClock) -> None:
    """bans.unban(key) serves the client again and forgets its offences."""
    bans = tracked(store, manual_clock)
    app = guarded_app(bans=bans)
    await statuses(app, ["/login"] * 3)
    assert True is await bans.unban(CLIENT)
    assert [200, 401, 401, 200] == await statuses(app, ["/ok", "/login", "/login", "/ok"])
    assert False is await bans.unban("198.51.100.1")


async def test_bans_publish_events(store: Store, manual_clock: ManualClock) -> None:
    """ClientBanned names the client and trigger; BannedRequest each refused request."""
    hooks, events = recorder(Event)
    app = guarded_app(bans=tracked(store, manual_clock, hooks), hooks=hooks)
    await statuses(app, ["/missing"] * 5 + ["/ok"])
    banned, refused = events
    assert isinstance(banned, ClientBanned)
    assert (CLIENT, "client_errors", 1, 60.0) == (
        banned.client, banned.trigger, banned.offences, banned.ban_s
    )  # fmt: skip
    assert isinstance(refused, BannedRequest)
    assert (CLIENT, 403, "GET") == (refused.client, refused.status, refused.method)
    assert 60.0 == pytest.approx(refused.retry_after_s)


async def test_a_banned_client_cannot_open_a_websocket(
    memory_store: Store, manual_clock: ManualClock
) -> None:
    """The handshake of a banned client is closed before it is accepted (HTTP 403)."""
    bans = tracked(memory_store, manual_clock)
    await bans.record(CLIENT, 401)
    await bans.record(CLIENT, 401)
    await bans.record(CLIENT, 401)
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    from bastion.protection import GuardMiddleware

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    guard = GuardMiddleware(app, bans=bans)
    scope: Scope = {"type": "websocket", "path": "/ws", "headers": [], "client": (CLIENT, 1)}
    await guard(scope, receive, send)
    assert ([], [{"type": "websocket.close", "code": 1008}]) == (called, sent)
    await guard({**scope, "client": ("198.51.100.1", 1)}, receive, send)
    assert ["websocket"] == called


def test_invalid_options_are_refused() -> None:
    """Out-of-range options fail at construction with the option's name."""
    for options, word in (
        ({"window_s": 0}, "window_s"),
        ({"ban_s": 10, "max_ban_s": 5}, "max_ban_s"),
        ({"ipv6_prefix": 0}, "ipv6_prefix"),
        ({"ignored_statuses": (500,)}, "ignored_statuses"),
        ({"on_store_error": "fail_closed"}, "on_store_error"),
        ({"auth_failures": -1}, "auth_failures"),
    ):
        with pytest.raises(ConfigurationError, match=word):
            Bans(**options)
