"""``RateLimiter``: one atomic decision over several limits, and the store-outage policy.

The limiter owns a backend (memory or Redis), turns the backend's raw answer into a ``Decision``,
publishes ``RateLimited`` and ``RateLimitStoreFailure`` events, and applies the outage policy
when the store fails. It knows nothing about HTTP: the middleware and the FastAPI dependency
build keys from the request and turn decisions into responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.events import RateLimited, RateLimitStoreFailure
from bastion.exceptions import ConfigurationError, StoreError
from bastion.ratelimit._memory import MemoryBackend
from bastion.ratelimit._rates import CompiledQuota, Limit

if TYPE_CHECKING:
    from bastion.events import Hooks
    from bastion.stores import Store

__all__ = [
    "Check",
    "Decision",
    "STATE_ITEM",
    "OnStoreError",
    "QuotaState",
    "RateLimitBackend",
    "RateLimiter",
    "key_base",
    "key_tail",
    "state_field",
]

logger = logging.getLogger("bastion.ratelimit")

OnStoreError = Literal["fail_open", "fail_closed", "local_fallback"]
"""What a decision does when its store fails: admit (``fail_open``), refuse with 503
(``fail_closed``), or count in this process with the quotas divided by the expected number of
workers (``local_fallback``)."""

_POLICIES: tuple[OnStoreError, ...] = ("fail_open", "fail_closed", "local_fallback")

_POLICY_CACHE_SIZE = 1024
_POLICY_BYTES: dict[tuple[CompiledQuota, ...], bytes] = {}


class RateLimitBackend(Protocol):
    """Where rate-limit state lives; both implementations run the same arithmetic."""

    @property
    def name(self) -> str:
        """``"memory"`` or ``"redis"``."""
        ...

    async def decide(
        self, keys: Sequence[str], quotas: Sequence[CompiledQuota], costs: Sequence[int]
    ) -> list[float]:
        """Check every quota and charge all of them only if all admit, atomically.

        Returns:
            ``[allowed, r1, t1, retry1, r2, ...]``: ``allowed`` is 1 or 0, ``r`` the quota left,
            ``t`` microseconds until ``r`` next grows, ``retry`` microseconds until the quota
            would admit the request (0 if it does now).
        """
        ...


@dataclass(frozen=True, slots=True)
class QuotaState:
    """One quota's verdict on a request."""

    policy: str
    """The quota's policy name (``RateLimit-Policy``)."""
    limit: int
    """Its quota per window (``q``)."""
    window_s: int
    """Its window in seconds (``w``)."""
    remaining: int
    """Units left after this request (``r``); unchanged by a refused request."""
    reset_s: float
    """Seconds until ``remaining`` next grows (``t``, before rounding up)."""
    retry_after_s: float
    """Seconds until this quota would admit the request; ``0.0`` when it admits it now."""

    @property
    def exceeded(self) -> bool:
        """Whether this quota refused the request."""
        return self.retry_after_s > 0


class Decision:
    """The verdict on one request: allowed or not, and every quota's state.

    A refused request is not charged to any quota. A ``degraded`` decision was taken without the
    store (by the outage policy): a fail-open one is allowed and has no quotas, a fail-closed one
    is refused and ``unavailable`` (a 503, not a 429), and a local-fallback one carries the local
    quotas.
    """

    __slots__ = (
        "_quotas",
        "_retry_after_s",
        "_values",
        "_violated",
        "allowed",
        "degraded",
        "unavailable",
    )

    def __init__(
        self,
        allowed: bool,
        quotas: Sequence[CompiledQuota] = (),
        values: Sequence[float] = (),
        *,
        degraded: bool = False,
        unavailable: bool = False,
        retry_after_s: float | None = None,
        violated: tuple[str, ...] | None = None,
    ) -> None:
        self.allowed = allowed
        """Whether the request may proceed."""
        self.degraded = degraded
        """Whether the store failed and the outage policy decided."""
        self.unavailable = unavailable
        """Whether the request was refused only because the store failed (``fail_closed``)."""
        self._quotas = quotas
        self._values = values
        self._retry_after_s = retry_after_s
        self._violated = violated

    @property
    def quotas(self) -> tuple[QuotaState, ...]:
        """Every quota's state, in the order the limits declared them."""
        values = self._values
        return tuple(
            QuotaState(
                quota.policy,
                quota.limit,
                quota.period_s,
                int(values[1 + 3 * index]),
                values[2 + 3 * index] / 1_000_000,
                values[3 + 3 * index] / 1_000_000,
            )
            for index, quota in enumerate(self._quotas)
        )

    @property
    def retry_after_s(self) -> float:
        """Seconds until the request would be admitted; ``0.0`` when it is allowed."""
        if self._retry_after_s is not None:
            return self._retry_after_s
        values = self._values
        retry = max((values[3 + 3 * index] for index in range(len(self._quotas))), default=0)
        return retry / 1_000_000

    @property
    def violated(self) -> tuple[str, ...]:
        """Names of the quotas that refused the request (all of them when the store failed
        closed)."""
        if self._violated is not None:
            return self._violated
        values = self._values
        return tuple(
            quota.policy for index, quota in enumerate(self._quotas) if values[3 + 3 * index] > 0
        )

    @property
    def policy_header(self) -> str:
        """The ``RateLimit-Policy`` value for this decision's quotas (``""`` without quotas)."""
        quotas = self._quotas
        if len(quotas) == 1:
            return quotas[0].policy_item
        return ", ".join([quota.policy_item for quota in quotas])

    def encoded_headers(self) -> tuple[bytes, bytes] | None:
        """``(RateLimit-Policy, RateLimit)`` values as bytes; ``None`` without quotas.

        The policy value depends on the quotas only, so it is encoded once per set of quotas.
        """
        quotas = self._quotas
        if not quotas:
            return None
        key = tuple(quotas)
        policy = _POLICY_BYTES.get(key)
        if policy is None:
            if len(_POLICY_BYTES) >= _POLICY_CACHE_SIZE:
                _POLICY_BYTES.clear()  # only dynamic limits made per request can fill it
            policy = _POLICY_BYTES[key] = self.policy_header.encode("latin-1")
        return policy, state_field(self._quotas, self._values)

    @property
    def state_header(self) -> str:
        """The ``RateLimit`` value: each quota's remaining units and seconds to grow."""
        return state_field(self._quotas, self._values).decode("latin-1")

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed}, degraded={self.degraded}, quotas={self.quotas!r})"


class Check:
    """One limit to apply in a decision: the limit, whose budget, and what the request costs.

    Args:
        limit: the limit.
        partition: whose budget: the client (``"p:alice"``, ``"ip:203.0.113.7"``) or any key.
        scope: which part of the app shares it (``"GET /items/{id}"``; ``""`` for everything).
        cost: units this request spends (``0`` only checks).
    """

    __slots__ = ("cost", "limit", "partition", "scope")

    def __init__(self, limit: Limit, partition: str, scope: str = "", cost: int = 1) -> None:
        self.limit = limit
        self.partition = partition
        self.scope = scope
        self.cost = cost


class RateLimiter:
    """Decides whether requests fit their limits, on memory or on Redis.

    Example::

        limiter = RateLimiter(RedisStore.from_url("redis://localhost:6379/0"))
        decision = await limiter.hit(Limit("10/second; 1000/hour"), "user:42")
        if not decision.allowed:
            ...  # 429, Retry-After: decision.retry_after_s

    Args:
        store: ``None`` or a ``MemoryStore`` for process-local limits; a ``RedisStore`` for limits
            shared by every worker and host using it (keys under its prefix, namespace
            ``ratelimit``).
        on_store_error: what to do when the store fails (see ``OnStoreError``).
        expected_workers: how many processes share the Redis limits; ``local_fallback`` divides
            every quota by it, so the sum over the workers stays near the real limit.
        hooks: where ``RateLimited`` and ``RateLimitStoreFailure`` are published.
        clock: time source. Memory uses its ``monotonic()``. Redis uses the server's clock
            unless a clock other than the system clock is given; then its ``time()`` is sent.
        memory_max_keys: the bound of the memory table (and of the local fallback's).

    Raises:
        ConfigurationError: for an unknown policy or a non-positive count.
    """

    __slots__ = (
        "_clock",
        "_expected_workers",
        "_fallback",
        "_hooks",
        "_in_outage",
        "_max_keys",
        "_scaled",
        "backend",
        "decide_now",
        "decide_one_now",
        "on_store_error",
        "store",
    )

    def __init__(
        self,
        store: Store | None = None,
        *,
        on_store_error: OnStoreError = "fail_open",
        expected_workers: int = 1,
        hooks: Hooks | None = None,
        clock: Clock | None = None,
        memory_max_keys: int = 100_000,
    ) -> None:
        if on_store_error not in _POLICIES:
            raise ConfigurationError(
                f"unknown on_store_error {on_store_error!r}; use one of {', '.join(_POLICIES)}"
            )
        if expected_workers < 1:
            raise ConfigurationError(f"expected_workers must be at least 1, not {expected_workers}")
        if memory_max_keys < 1:
            raise ConfigurationError(f"memory_max_keys must be at least 1, not {memory_max_keys}")
        self.store = store
        self.on_store_error: OnStoreError = on_store_error
        self._expected_workers = expected_workers
        self._hooks = hooks
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._max_keys = memory_max_keys
        self._fallback: MemoryBackend | None = None
        self._scaled: dict[CompiledQuota, CompiledQuota] = {}
        self._in_outage = False
        self.backend: RateLimitBackend
        if store is not None and store.name == "redis":
            from bastion.ratelimit._redis import RedisBackend  # the redis extra, only when used
            from bastion.stores.redis import RedisStore

            if not isinstance(store, RedisStore):
                raise ConfigurationError(f"a store named 'redis' must be a RedisStore: {store!r}")
            redis_clock = None if clock is None or clock is SYSTEM_CLOCK else clock
            self.backend = RedisBackend(store.with_namespace("ratelimit"), clock=redis_clock)
        else:
            self.backend = MemoryBackend(clock=self._clock, max_keys=memory_max_keys)
        # Memory decides without awaiting anything; calling it directly saves a coroutine.
        backend = self.backend
        self.decide_now: (
            Callable[[Sequence[str], Sequence[CompiledQuota], Sequence[int]], list[float]] | None
        ) = None
        """The memory backend's synchronous decision, or ``None`` for a store that needs I/O.
        With it the middleware decides without creating a coroutine; pass its result to
        ``settle``."""
        self.decide_one_now: Callable[[str, CompiledQuota, int], list[float]] | None = None
        """``decide_now`` for one key and quota, the common case, or ``None``."""
        if isinstance(backend, MemoryBackend):
            self.decide_now = backend.decide_now
            self.decide_one_now = backend.decide_one

    @property
    def hooks(self) -> Hooks | None:
        """Where events are published."""
        return self._hooks

    async def hit(self, limit: Limit, key: str, *, cost: int = 1) -> Decision:
        """Spend ``cost`` units of ``limit`` for ``key``; refused requests spend nothing.

        Args:
            limit: the limit to apply.
            key: whose budget (a user id, an API key id, a tenant).
            cost: units to spend.
        """
        return await self.decide((Check(limit, key, "", cost),))

    async def decide(
        self,
        checks: Sequence[Check],
        *,
        method: str = "",
        route: str | None = None,
        principal: str | None = None,
    ) -> Decision:
        """Apply several limits in one atomic decision (one round trip on Redis).

        Either every quota of every check admits the request and all are charged, or it is
        refused and nothing is charged.

        Args:
            checks: the limits to apply, each with its partition, scope and cost.
            method: the request's method, for the ``RateLimited`` event.
            route: the request's route template, for the event.
            principal: the authenticated caller, for the event.

        Raises:
            ValueError: if a cost is negative.
        """
        keys: list[str] = []
        quotas: Sequence[CompiledQuota]
        costs: list[int] = []
        if len(checks) == 1:
            check = checks[0]
            cost = check.cost
            if cost < 0:
                raise ValueError(f"a request's cost must not be negative, not {cost}")
            quotas = check.limit.compiled
            base = key_base(check.partition, check.limit, check.scope)
            for quota in quotas:
                keys.append(base + quota.suffix)
                costs.append(cost)
        else:
            quotas = []
            for check in checks:
                cost = check.cost
                if cost < 0:
                    raise ValueError(f"a request's cost must not be negative, not {cost}")
                base = key_base(check.partition, check.limit, check.scope)
                for quota in check.limit.compiled:
                    keys.append(base + quota.suffix)
                    quotas.append(quota)
                    costs.append(cost)
            if not quotas:
                return Decision(True)
        partition = checks[0].partition
        sync_decide = self.decide_now
        if sync_decide is not None:
            values = sync_decide(keys, quotas, costs)
            return self.settle(values, quotas, costs, partition, method, route, principal)
        return await self.decide_keys(keys, quotas, costs, partition, method, route, principal)

    async def decide_keys(
        self,
        keys: list[str],
        quotas: Sequence[CompiledQuota],
        costs: list[int],
        partition: str,
        method: str,
        route: str | None,
        principal: str | None,
    ) -> Decision:
        """``decide`` with the keys already built (see ``key_base``): the middleware's hot path."""
        try:
            values = await self.backend.decide(keys, quotas, costs)
        except StoreError as exc:
            return self._degraded(exc, keys, quotas, costs)
        if self._in_outage:
            self._in_outage = False
            logger.info(
                "rate limiting: the %s store answers again; limits apply", self.backend.name
            )
        return self.settle(values, quotas, costs, partition, method, route, principal)

    def settle(
        self,
        values: list[float],
        quotas: Sequence[CompiledQuota],
        costs: list[int],
        partition: str,
        method: str,
        route: str | None,
        principal: str | None,
    ) -> Decision:
        """Turn a backend's answer into a ``Decision``; publish ``RateLimited`` on a refusal."""
        allowed = values[0] == 1
        decision = Decision(allowed, quotas, values)
        if not allowed:
            hooks = self._hooks
            if hooks is not None and hooks.wants(RateLimited):
                hooks.publish(
                    RateLimited(
                        policies=decision.violated,
                        method=method,
                        route=route,
                        principal=principal,
                        partition=_digest(partition),
                        retry_after_s=decision.retry_after_s,
                        cost=max(costs),
                    )
                )
        return decision

    def _degraded(
        self,
        error: StoreError,
        keys: list[str],
        quotas: Sequence[CompiledQuota],
        costs: list[int],
    ) -> Decision:
        policy = self.on_store_error
        if not self._in_outage:
            self._in_outage = True
            logger.warning(
                "rate limiting: the %s store failed (%s); applying %s until it answers",
                self.backend.name,
                error,
                policy,
            )
        hooks = self._hooks
        if hooks is not None and hooks.wants(RateLimitStoreFailure):
            hooks.publish(
                RateLimitStoreFailure(
                    store=self.backend.name, on_store_error=policy, error=str(error)
                )
            )
        if policy == "fail_open":
            return Decision(True, degraded=True)
        if policy == "fail_closed":
            return Decision(
                False,
                degraded=True,
                unavailable=True,
                retry_after_s=self._gate_delay_s(),
                violated=tuple(dict.fromkeys(quota.policy for quota in quotas)),
            )
        fallback = self._fallback
        if fallback is None:
            fallback = self._fallback = MemoryBackend(clock=self._clock, max_keys=self._max_keys)
        local = [self._local(quota) for quota in quotas]
        values = fallback.decide_now(keys, local, costs)
        return Decision(values[0] == 1, local, values, degraded=True)

    def _local(self, quota: CompiledQuota) -> CompiledQuota:
        scaled = self._scaled.get(quota)
        if scaled is None:
            scaled = self._scaled[quota] = quota.scaled(self._expected_workers)
        return scaled

    def _gate_delay_s(self) -> float:
        """When to try again after a fail-closed refusal: when the store's gate next probes."""
        gate = getattr(self.store, "gate", None)
        delay = getattr(gate, "retry_in_s", 0.0)
        return max(1.0, float(delay))

    def __repr__(self) -> str:
        return f"RateLimiter(backend={self.backend.name!r}, on_store_error={self.on_store_error!r})"


STATE_ITEM = b"%s;r=%d;t=%d"
"""One quota's item of the ``RateLimit`` field: its quoted name, remaining units, reset seconds."""


def state_field(quotas: Sequence[CompiledQuota], values: Sequence[float]) -> bytes:
    """The ``RateLimit`` field value for a backend's answer: ``"name";r=R;t=T`` per quota.

    ``t`` is rounded up: the quota grows no earlier than announced. Bytes formatted with ``%``,
    not an f-string encoded afterwards, and loops, not comprehensions (a frame of their own on
    Python 3.11): this runs on every response.
    """
    if len(quotas) == 1:
        return STATE_ITEM % (
            quotas[0].quoted_bytes,
            values[1],
            -(-int(values[2]) // 1_000_000),
        )
    items = []
    index = 1
    for quota in quotas:
        reset = int(values[index + 1])
        items.append(STATE_ITEM % (quota.quoted_bytes, values[index], -(-reset // 1_000_000)))
        index += 3
    return b", ".join(items)


def key_base(partition: str, limit: Limit, scope: str) -> str:
    """The start of a limit's keys: ``{partition}:name|scope:``, then each quota's suffix.

    The partition is a Redis Cluster hash tag, so all keys of one client share a slot and one
    script can touch them together.
    """
    return "{" + partition + key_tail(limit, scope)


def key_tail(limit: Limit, scope: str) -> str:
    """What follows the partition in a limit's keys: ``}:name|scope:``."""
    return f"}}:{limit.name}|{scope}:"


def _digest(partition: str) -> str:
    import hashlib  # only refusals with a subscriber get here; keep the import off startup

    return hashlib.blake2b(partition.encode(), digest_size=8).hexdigest()
