"""``Bans``: counts offences per client, bans bursts for a growing time, and tells every worker.

An offence is a response with a 4xx status (401 and 403 also count as auth failures). The
counts are sliding-window counters in the store; the offence that makes one reach its threshold
bans the client for ``ban_s * 2^(n-1)`` seconds (capped at ``max_ban_s``), where ``n`` counts the
client's bans within ``memory_s``.

Checking a request costs one dict lookup in this process's table of active bans: no store round
trip. The table learns bans three ways: from the reply of the script that recorded the offence
(this worker), from a Redis pub/sub message the script publishes (every other worker, within
milliseconds), and from the list of active bans loaded whenever the subscription (re)starts (a
worker that starts late, or missed messages during an outage). Only 4xx responses touch the
store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Literal

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.events import ClientBanned
from bastion.exceptions import ConfigurationError, StoreError
from bastion.protection._networks import ban_key
from bastion.stores import follow_channel

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bastion.events import Hooks
    from bastion.stores import Store
    from bastion.stores.gate import GateGuard
    from bastion.stores.redis import RedisStore

__all__ = ["Bans", "OnBanStoreError"]

logger = logging.getLogger("bastion.protection")

OnBanStoreError = Literal["fail_open", "local_fallback"]
"""What recording an offence does when the store fails: nothing (``fail_open``: nobody is
banned wrongly), or count in this process until the store answers (``local_fallback``)."""

_POLICIES: tuple[OnBanStoreError, ...] = ("fail_open", "local_fallback")
_TRIGGERS = ("", "auth_failures", "client_errors", "")
_AUTH_FAILURES = frozenset((401, 403))

_STOP_TIMEOUT_S = 5.0

_SCRIPT = resources.files("bastion.protection").joinpath("lua/guard.lua").read_text("utf-8")


class _Policy:
    """The ban arithmetic's parameters, in microseconds."""

    __slots__ = ("auth", "base_us", "errors", "max_us", "memory_us", "window_us")

    def __init__(
        self,
        auth: int,
        errors: int,
        window_s: float,
        ban_s: float,
        max_ban_s: float,
        memory_s: float,
    ) -> None:
        self.auth = auth
        self.errors = errors
        self.window_us = round(window_s * 1_000_000)
        self.base_us = round(ban_s * 1_000_000)
        self.max_us = round(max_ban_s * 1_000_000)
        self.memory_us = round(memory_s * 1_000_000)


class _MemoryBackend:
    """Offence counters and bans in this process: the same arithmetic as ``lua/guard.lua``.

    Each operation runs without an ``await``, so it is atomic on the event loop. At most
    ``max_clients`` clients are tracked; the least recently seen are forgotten first.
    """

    __slots__ = ("_clock", "_max", "_states")

    name = "memory"

    def __init__(self, clock: Clock, max_clients: int) -> None:
        self._clock = clock
        self._max = max_clients
        # key -> [window, a0, a1, e0, e1, offences, last_ban_start, ban_end] (µs and counts)
        self._states: OrderedDict[str, list[int]] = OrderedDict()

    def record(self, key: str, auth: bool, policy: _Policy) -> tuple[int, int, int, int]:
        now = int(self._clock.monotonic() * 1_000_000)
        states = self._states
        state = states.get(key)
        if state is None:
            state = [-1, 0, 0, 0, 0, 0, 0, 0]
            states[key] = state
            if len(states) > self._max:
                states.popitem(last=False)
        else:
            states.move_to_end(key)
        window, a0, a1, e0, e1, offences, last, until = state
        if until > now:
            return 1, until - now, offences, 3
        index = now // policy.window_us
        if window == index - 1:
            a0, a1, e0, e1 = a1, 0, e1, 0
        elif window != index:
            a0 = a1 = e0 = e1 = 0
        e1 += 1
        a1 += 1 if auth else 0
        weight = (policy.window_us - (now - index * policy.window_us)) / policy.window_us
        trigger = 0
        if policy.auth > 0 and a0 * weight + a1 >= policy.auth:
            trigger = 1
        elif policy.errors > 0 and e0 * weight + e1 >= policy.errors:
            trigger = 2
        ban = 0
        if trigger:
            if last > 0 and now - last > policy.memory_us:
                offences = 0
            offences += 1
            ban = min(policy.base_us * 2 ** (offences - 1), policy.max_us)
            last, until = now, now + ban
            a0 = a1 = e0 = e1 = 0
        state[:] = [index, a0, a1, e0, e1, offences, last, until]
        return (1 if trigger else 0), ban, offences, trigger

    def unban(self, key: str) -> bool:
        state = self._states.pop(key, None)
        return state is not None and state[7] > int(self._clock.monotonic() * 1_000_000)


class _RedisBackend:
    """Offence counters and bans in Redis: one ``guard.lua`` call per offence, shared by all."""

    __slots__ = ("_clock", "_guard", "_prefix", "_script", "_zset", "channel", "store")

    name = "redis"

    def __init__(self, store: RedisStore, clock: Clock | None) -> None:
        self.store = store
        self._clock = clock
        self._prefix = store.key_prefix
        self._zset = self._prefix + "bans"
        self.channel = self._prefix + "bans"
        self._guard: GateGuard = store.guard
        self._script: AsyncScript = store.client.register_script(_SCRIPT)

    def _now(self) -> int | str:
        clock = self._clock
        return "" if clock is None else int(clock.time() * 1_000_000)

    async def record(self, key: str, auth: bool, policy: _Policy) -> tuple[int, int, int, int]:
        args = [
            "record", self._now(), policy.window_us, policy.auth, policy.errors, int(auth),
            policy.base_us, policy.max_us, policy.memory_us, self.channel, key,
        ]  # fmt: skip
        with self._guard:
            reply = await self._script(keys=[self._prefix + "c:" + key, self._zset], args=args)
        banned, remaining, offences, trigger = (int(value) for value in reply)
        return banned, remaining, offences, trigger

    async def unban(self, key: str) -> bool:
        args = ["unban", self._now(), self.channel, key]
        with self._guard:
            removed = await self._script(keys=[self._prefix + "c:" + key, self._zset], args=args)
        return int(removed) == 1

    async def active(self) -> list[tuple[str, float]]:
        """Every active ban: ``(key, seconds left)``."""
        with self._guard:
            reply = await self._script(keys=[self._zset], args=["bans", self._now()])
        now = int(reply[0])
        return [
            (_text(member), (int(until) - now) / 1_000_000)
            for member, until in zip(reply[1::2], reply[2::2], strict=True)
        ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Bans:
    """Bans clients that produce bursts of auth failures or client errors.

    Example::

        bans = Bans(RedisStore.from_url(url), auth_failures=10, window_s=60, ban_s=300)
        app.add_middleware(GuardMiddleware, bans=bans)

    With a ``RedisStore``, bans hold for every worker and host sharing it (cluster scope); call
    ``start()`` at startup and ``aclose()`` at shutdown (``Bastion`` does) so that this process
    hears of bans decided elsewhere. Without, state is per process.

    Args:
        store: ``None`` or a ``MemoryStore`` for bans in this process; a ``RedisStore`` to share
            them (keys under its prefix, namespace ``guard``).
        auth_failures: 401/403 responses within ``window_s`` that ban a client (``0``: never).
        client_errors: 4xx responses (not ``ignored_statuses``) within ``window_s`` that ban a
            client (``0``: never). 401 and 403 count here too.
        window_s: the sliding window offences are counted in.
        ban_s: the first ban's length; it doubles with each further ban within ``memory_s``.
        max_ban_s: the cap on a ban's length.
        memory_s: how long past bans make the next one longer.
        ignored_statuses: 4xx statuses that are not offences (by default 429).
        ban_private_networks: also ban loopback, private and link-local addresses.
        ipv6_prefix: IPv6 clients are banned by network of this many bits.
        on_store_error: see ``OnBanStoreError``.
        hooks: where ``ClientBanned`` is published.
        clock: time source. Memory uses its ``monotonic()``; Redis uses the server's clock
            unless a clock other than the system clock is given, whose ``time()`` is sent.
        max_clients: the most clients tracked in memory (and the most bans known locally).

    Raises:
        ConfigurationError: for an option out of range.
    """

    __slots__ = (
        "_backend",
        "_banned",
        "_clock",
        "_fallback",
        "_hooks",
        "_ignored",
        "_in_outage",
        "_internal",
        "_ipv6_prefix",
        "_keys",
        "_listener",
        "_max_clients",
        "_policy",
        "listening",
        "on_store_error",
    )

    def __init__(
        self,
        store: Store | None = None,
        *,
        auth_failures: int = 20,
        client_errors: int = 200,
        window_s: float = 60.0,
        ban_s: float = 60.0,
        max_ban_s: float = 3600.0,
        memory_s: float = 86_400.0,
        ignored_statuses: Sequence[int] = (429,),
        ban_private_networks: bool = False,
        ipv6_prefix: int = 64,
        on_store_error: OnBanStoreError = "fail_open",
        hooks: Hooks | None = None,
        clock: Clock | None = None,
        max_clients: int = 100_000,
    ) -> None:
        for option, value in (
            ("window_s", window_s),
            ("ban_s", ban_s),
            ("max_ban_s", max_ban_s),
            ("memory_s", memory_s),
            ("max_clients", max_clients),
        ):
            if not value > 0:
                raise ConfigurationError(f"{option} must be positive, not {value}")
        if auth_failures < 0 or client_errors < 0:
            raise ConfigurationError("auth_failures and client_errors must be >= 0 (0: never)")
        if max_ban_s < ban_s:
            raise ConfigurationError(f"max_ban_s ({max_ban_s}) must not be less than ban_s")
        if not 1 <= ipv6_prefix <= 128:
            raise ConfigurationError(f"ipv6_prefix must be 1 to 128 bits, not {ipv6_prefix}")
        if on_store_error not in _POLICIES:
            raise ConfigurationError(
                f"unknown on_store_error {on_store_error!r}; use one of {', '.join(_POLICIES)}"
            )
        if any(not 400 <= status <= 499 for status in ignored_statuses):
            raise ConfigurationError(f"ignored_statuses must be 4xx, not {list(ignored_statuses)}")
        self._policy = _Policy(auth_failures, client_errors, window_s, ban_s, max_ban_s, memory_s)
        self._ignored = frozenset(ignored_statuses)
        self._internal = ban_private_networks
        self._ipv6_prefix = ipv6_prefix
        self.on_store_error: OnBanStoreError = on_store_error
        self._hooks = hooks
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._max_clients = max_clients
        self._banned: dict[str, float] = {}
        self._keys: dict[str, str | None] = {}
        self._fallback: _MemoryBackend | None = None
        self._in_outage = False
        self._listener: asyncio.Task[None] | None = None
        self.listening = False
        """Whether this process is subscribed to the bans other workers decide (Redis only)."""
        self._backend: _MemoryBackend | _RedisBackend
        if store is not None and store.name == "redis":
            from bastion.stores.redis import RedisStore

            if not isinstance(store, RedisStore):
                raise ConfigurationError(f"a store named 'redis' must be a RedisStore: {store!r}")
            redis_clock = None if clock is None or clock is SYSTEM_CLOCK else clock
            self._backend = _RedisBackend(store.with_namespace("guard"), redis_clock)
        else:
            self._backend = _MemoryBackend(self._clock, max_clients)

    @property
    def backend(self) -> str:
        """``"memory"`` or ``"redis"``."""
        return self._backend.name

    @property
    def enabled(self) -> bool:
        """Whether any threshold can ban (both ``0`` disables banning)."""
        return bool(self._policy.auth or self._policy.errors)

    def key(self, client: str | None) -> str | None:
        """What ``client`` is banned as (an IPv4 address or an IPv6 network), or ``None`` for a
        client that is never banned (no IP address, or an internal one; see the options)."""
        if client is None:
            return None
        keys = self._keys
        try:
            return keys[client]
        except KeyError:
            pass
        key = ban_key(client, ipv6_prefix=self._ipv6_prefix, internal=self._internal)
        if len(keys) >= 8192:
            keys.clear()
        keys[client] = key
        return key

    def banned_for(self, key: str) -> float:
        """Seconds left of ``key``'s ban as this process knows it; ``0.0`` when not banned.

        No store round trip: this reads the local table of active bans.
        """
        until = self._banned.get(key)
        if until is None:
            return 0.0
        left = until - self._clock.monotonic()
        if left > 0:
            return left
        self._banned.pop(key, None)
        return 0.0

    def counts(self, status: int) -> bool:
        """Whether a response with ``status`` is an offence."""
        return 400 <= status <= 499 and status not in self._ignored

    async def record(
        self, key: str, status: int, *, method: str = "", route: str | None = None
    ) -> float:
        """Count an offence by ``key``; return the length of the ban it caused, else ``0.0``.

        Never raises for a store failure: the outage policy applies (see ``on_store_error``).
        """
        if not self.counts(status):
            return 0.0
        auth = status in _AUTH_FAILURES
        backend = self._backend
        try:
            if isinstance(backend, _MemoryBackend):
                banned, remaining_us, offences, trigger = backend.record(key, auth, self._policy)
            else:
                banned, remaining_us, offences, trigger = await backend.record(
                    key, auth, self._policy
                )
                if self._in_outage:
                    self._in_outage = False
                    logger.info("abuse guard: the %s store answers again", backend.name)
        except StoreError as exc:
            fallback = self._degraded(exc)
            if fallback is None:
                return 0.0
            banned, remaining_us, offences, trigger = fallback.record(key, auth, self._policy)
        if not banned:
            return 0.0
        remaining_s = remaining_us / 1_000_000
        self._learn(key, remaining_s)
        if trigger in (1, 2):
            logger.warning(
                "abuse guard: banned %s for %gs (%s; ban %d within the memory period)",
                key,
                remaining_s,
                _TRIGGERS[trigger],
                offences,
            )
            hooks = self._hooks
            if hooks is not None and hooks.wants(ClientBanned):
                hooks.publish(
                    ClientBanned(
                        client=key,
                        trigger=_TRIGGERS[trigger],
                        offences=offences,
                        ban_s=remaining_s,
                        method=method,
                        route=route,
                    )
                )
            return remaining_s
        return 0.0

    async def unban(self, key: str) -> bool:
        """Lift ``key``'s ban and forget its offences, everywhere; return whether it was banned.

        Raises:
            StoreError: the store failed (an operator action should know it did not happen).
        """
        self._banned.pop(key, None)
        backend = self._backend
        if isinstance(backend, _MemoryBackend):
            return backend.unban(key)
        return await backend.unban(key)

    async def start(self) -> None:
        """Subscribe to bans decided by other workers (Redis only; idempotent)."""
        if isinstance(self._backend, _RedisBackend) and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(self._backend), name="bastion-guard-bans"
            )

    async def aclose(self) -> None:
        """Stop listening for other workers' bans."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            # Bounded, like every wait at shutdown: a listener stuck in a dead connection's read
            # must not hold the server's exit.
            await asyncio.wait({listener}, timeout=_STOP_TIMEOUT_S)
        self.listening = False

    # -- internals ----------------------------------------------------------------------------

    def _learn(self, key: str, remaining_s: float) -> None:
        banned = self._banned
        if key not in banned and len(banned) >= self._max_clients:
            now = self._clock.monotonic()
            for stale in [k for k, until in banned.items() if until <= now]:
                del banned[stale]
            if len(banned) >= self._max_clients:
                del banned[next(iter(banned))]
        banned[key] = self._clock.monotonic() + remaining_s

    def _degraded(self, error: StoreError) -> _MemoryBackend | None:
        if not self._in_outage:
            self._in_outage = True
            logger.warning(
                "abuse guard: the %s store failed (%s); applying %s until it answers",
                self._backend.name,
                error,
                self.on_store_error,
            )
        if self.on_store_error == "fail_open":
            return None
        if self._fallback is None:
            self._fallback = _MemoryBackend(self._clock, self._max_clients)
        return self._fallback

    def _on_message(self, data: bytes) -> None:
        kind, _, rest = data.partition(b" ")
        remaining, _, member = rest.partition(b" ")
        key = member.decode()
        if kind == b"B":
            self._learn(key, int(remaining) / 1_000_000)
        elif kind == b"U":
            self._banned.pop(key, None)

    async def _listen(self, backend: _RedisBackend) -> None:
        """Follow the bans channel (``follow_channel``: resubscribes after failures and
        notices a link gone silent); each subscription starts from a snapshot of the bans."""

        async def subscribed() -> None:
            # Confirmed subscription first, then the snapshot: a ban decided in between arrives
            # twice rather than not at all.
            for key, left in await backend.active():
                if left > 0:
                    self._learn(key, left)
            if not self.listening:
                logger.debug("abuse guard: following bans on %s", backend.channel)
            self.listening = True

        def lost(exc: BaseException) -> None:
            logger.warning(
                "abuse guard: lost the bans channel (%s); other workers' bans reach this one "
                "again once it is back",
                exc,
            )
            self.listening = False

        await follow_channel(
            backend.store.client,
            backend.channel,
            self._on_message,
            on_subscribed=subscribed,
            on_lost=lost,
        )
