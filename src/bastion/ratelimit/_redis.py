"""The Redis backend: one ``EVALSHA`` per decision, however many quotas it covers.

``lua/ratelimit.lua`` reads every quota's state, decides, and writes only if all admit, in one
atomic script run, so workers and hosts sharing the Redis share exact counters. The script is sent
by SHA1 (``EVALSHA``); after a ``NOSCRIPT`` (``SCRIPT FLUSH``, a restart, a failover) it is loaded
again and the call retried. Decisions of concurrent requests go out together through the store's
``CommandBatcher``: one pipeline per event-loop turn instead of one connection checkout, write and
read per decision.

Time comes from the Redis server's ``TIME`` inside the script, so hosts with skewed clocks still
agree on windows. An injected clock replaces it (tests, simulations): its ``time()`` is sent as
an argument.

Keys live under the store's prefix and the ``ratelimit`` namespace. The client part of a key is a
hash tag (``{client}``), so every key of one decision lands in the same Redis Cluster slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

from bastion._clock import Clock
from bastion.exceptions import StoreDataError
from bastion.ratelimit._rates import CompiledQuota

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bastion.stores.gate import GateGuard
    from bastion.stores.redis import RedisStore

__all__ = ["RedisBackend"]

_SCRIPT = (
    resources.files("bastion.ratelimit").joinpath("lua/ratelimit.lua").read_text(encoding="utf-8")
)


class RedisBackend:
    """Rate-limit state in Redis, decided by one Lua script call.

    Args:
        store: the ``RedisStore`` (or a namespaced view of it) whose client, key prefix and
            health gate are used. Failures surface as ``StoreError`` through the store's gate.
        clock: ``None`` to use the Redis server's clock (the default, right for several hosts);
            a clock to send ``clock.time()`` instead.
    """

    __slots__ = ("_batcher", "_clock", "_guard", "_prefix", "_script", "store")

    name = "redis"

    def __init__(self, store: RedisStore, *, clock: Clock | None = None) -> None:
        self.store = store
        self._clock = clock
        self._prefix: str = store.key_prefix
        self._guard: GateGuard = store.guard
        self._script: AsyncScript = store.client.register_script(_SCRIPT)
        # Decisions of concurrent requests share one pipeline (one write, one read).
        self._batcher = store.batcher

    @property
    def key_prefix(self) -> str:
        """What every key this backend writes starts with (``"{prefix}:ratelimit:"``)."""
        return self._prefix

    async def decide(
        self, keys: Sequence[str], quotas: Sequence[CompiledQuota], costs: Sequence[int]
    ) -> list[float]:
        """Decide in one round trip: ``[allowed, r1, t1, retry1, ...]`` (times in µs).

        Raises:
            StoreError: the script failed or Redis is unavailable (``StoreUnavailable``).
        """
        clock = self._clock
        args: list[int | str | bytes] = ["" if clock is None else int(clock.time() * 1_000_000)]
        for quota, cost in zip(quotas, costs, strict=True):
            args += (quota.spec, cost)
        prefix = self._prefix
        full_keys = [prefix + key for key in keys]
        with self._guard:
            reply = await self._batcher.script(self._script, full_keys, args)
        try:
            return [int(value) for value in reply.split()]
        except (AttributeError, ValueError) as exc:  # not our script's reply: a broken server
            raise StoreDataError(f"unexpected rate-limit reply {reply!r}") from exc
