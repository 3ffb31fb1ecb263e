"""The three algorithms, multi-quota atomicity and cost, on memory and on Redis alike.

Every test runs on both stores (the ``store`` fixture) with the same injected clock, so memory
and the Lua script are held to one specification. Time moves only when a test advances it.
"""

from __future__ import annotations

import random

import pytest

from bastion._clock import ManualClock
from bastion.ratelimit import (
    Algorithm,
    Check,
    Decision,
    Limit,
    MemoryBackend,
    QuotaState,
    RateLimiter,
)
from bastion.stores.redis import RedisStore

pytestmark = pytest.mark.anyio


def summary(decision: Decision) -> tuple[bool, list[tuple[int, float, float]]]:
    """``(allowed, [(remaining, reset_s, retry_after_s) per quota])``."""
    return decision.allowed, [
        (quota.remaining, quota.reset_s, quota.retry_after_s) for quota in decision.quotas
    ]


# ---------------------------------------------------------------------------------- fixed window


async def test_fixed_window_admits_the_quota_then_refuses_until_the_window_ends(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """3/minute: three requests pass (2, 1, 0 left); the fourth waits for the next window."""
    limit = Limit("3/minute", algorithm="fixed_window")
    results = [summary(await limiter.hit(limit, "alice")) for _ in range(4)]
    assert [
        (True, [(2, 60.0, 0.0)]),
        (True, [(1, 60.0, 0.0)]),
        (True, [(0, 60.0, 0.0)]),
        (False, [(0, 60.0, 60.0)]),
    ] == results
    clock.advance(45)
    assert (False, [(0, 15.0, 15.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(15)
    assert (True, [(2, 60.0, 0.0)]) == summary(await limiter.hit(limit, "alice"))


async def test_fixed_window_allows_a_double_burst_across_its_edge(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """The known weakness: 3/minute admits 6 requests within two seconds around an edge."""
    limit = Limit("3/minute", algorithm="fixed_window")
    clock.advance(59)
    before = [(await limiter.hit(limit, "alice")).allowed for _ in range(4)]
    clock.advance(1)
    after = [(await limiter.hit(limit, "alice")).allowed for _ in range(4)]
    assert [True, True, True, False] * 2 == before + after


async def test_clients_have_separate_budgets(limiter: RateLimiter) -> None:
    """One client spending its quota leaves another's untouched."""
    limit = Limit("1/minute", algorithm="fixed_window")
    results = [(await limiter.hit(limit, key)).allowed for key in ("alice", "alice", "bob", "bob")]
    assert [True, False, True, False] == results


# -------------------------------------------------------------------------------- sliding window


async def test_sliding_window_weighs_the_previous_window_by_its_overlap(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """10/minute: the previous window's count decays linearly across the current window."""
    limit = Limit("10/minute")
    for _ in range(10):
        await limiter.hit(limit, "alice")
    clock.advance(60)  # next window: previous = 10, weight 1.0
    # Refused: admitting needs 10 * weight + 1 <= 10, i.e. weight <= 0.9, 6 s into the window.
    assert (False, [(0, 6.0, 6.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(6)  # weight 0.9: estimate 9, one request fits
    assert (True, [(0, 6.0, 0.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(24)  # 30 s in, weight 0.5: estimate 10 * 0.5 + 1 = 6
    assert (True, [(3, 6.0, 0.0)]) == summary(await limiter.hit(limit, "alice"))
    assert [2, 1] == [(await limiter.hit(limit, "alice")).quotas[0].remaining for _ in range(2)]


async def test_sliding_window_closes_the_double_burst_of_fixed_windows(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """Around a window edge the sliding window admits no second burst."""
    limit = Limit("3/minute")
    clock.advance(59)
    before = [(await limiter.hit(limit, "alice")).allowed for _ in range(4)]
    clock.advance(1)
    after = [(await limiter.hit(limit, "alice")).allowed for _ in range(4)]
    assert [True, True, True, False, False, False, False, False] == before + after


async def test_sliding_window_refusal_may_wait_into_the_next_window(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """When the current window alone is full, the retry lands in the next window's decay."""
    limit = Limit("4/minute")
    clock.advance(30)
    for _ in range(4):
        await limiter.hit(limit, "alice")
    # 30 s to the edge; then previous = 4 must decay to 3: 15 s into the next window.
    assert (False, [(0, 30.0, 45.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(45)
    assert True is (await limiter.hit(limit, "alice")).allowed


# -------------------------------------------------------------------------------------- GCRA


async def test_gcra_allows_the_burst_then_one_request_per_emission_interval(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """10/minute as a bucket: 10 at once, then one every 6 s."""
    limit = Limit("10/minute", algorithm="gcra")
    burst = [summary(await limiter.hit(limit, "alice")) for _ in range(10)]
    assert [(True, [(9 - n, 6.0, 0.0)]) for n in range(10)] == burst
    assert (False, [(0, 6.0, 6.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(3)
    assert (False, [(0, 3.0, 3.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(3)
    assert (True, [(0, 6.0, 0.0)]) == summary(await limiter.hit(limit, "alice"))
    clock.advance(60)
    assert (True, [(9, 6.0, 0.0)]) == summary(await limiter.hit(limit, "alice"))


async def test_gcra_burst_is_separate_from_the_sustained_rate(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """1/second burst 5: five at once, then one per second, and the bucket refills in 5 s."""
    limit = Limit("1/second burst 5", algorithm="gcra")
    assert [True] * 5 + [False] == [(await limiter.hit(limit, "a")).allowed for _ in range(6)]
    sustained = []
    for _ in range(4):
        clock.advance(1)
        sustained.append([(await limiter.hit(limit, "a")).allowed for _ in range(2)])
    assert [[True, False]] * 4 == sustained
    clock.advance(5)
    assert [True] * 5 + [False] == [(await limiter.hit(limit, "a")).allowed for _ in range(6)]


async def test_gcra_with_an_uneven_interval_stays_exact(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """7/minute (an interval of 8.571428 s, rounded up to the microsecond) still admits 7."""
    limit = Limit("7/minute", algorithm="gcra")
    assert [True] * 7 + [False] == [(await limiter.hit(limit, "a")).allowed for _ in range(8)]
    clock.advance(8.571429)
    assert [True, False] == [(await limiter.hit(limit, "a")).allowed for _ in range(2)]


# ------------------------------------------------------------------------- several quotas, cost


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_a_refused_quota_charges_no_other_quota(
    limiter: RateLimiter, clock: ManualClock, algorithm: Algorithm
) -> None:
    """2/second; 3/minute: a request refused by one quota leaves the other untouched."""
    limit = Limit("2/second; 3/minute", name="api", algorithm=algorithm)
    assert [True, True, False] == [(await limiter.hit(limit, "a")).allowed for _ in range(3)]
    refused = await limiter.hit(limit, "a")
    assert (("api-1s",), 1) == (refused.violated, refused.quotas[1].remaining)
    clock.advance(2)  # a clean slate for the per-second quota under every algorithm
    assert True is (await limiter.hit(limit, "a")).allowed  # minute quota: 3 of 3 spent now
    refused = await limiter.hit(limit, "a")
    assert (("api-1m",), 1) == (refused.violated, refused.quotas[0].remaining)
    clock.advance(2)
    # The per-second quota was not charged by the refusals: it still has both units.
    refused = await limiter.hit(limit, "a")
    assert (False, 2) == (refused.allowed, refused.quotas[0].remaining)


async def test_limits_in_one_decision_are_charged_together_or_not_at_all(
    limiter: RateLimiter,
) -> None:
    """A route limit refusing leaves the global limit of the same decision uncharged."""
    shared = Limit("100/minute", name="global", per_route=False)
    route = Limit("1/minute", name="search")
    checks = [Check(shared, "alice"), Check(route, "alice", "GET /search")]
    first, second = await limiter.decide(checks), await limiter.decide(checks)
    assert ([99, 0], [99, 0]) == (
        [quota.remaining for quota in first.quotas],
        [quota.remaining for quota in second.quotas],
    )
    assert (True, False, ("search",)) == (first.allowed, second.allowed, second.violated)


async def test_cost_spends_several_units_and_a_refusal_spends_none(limiter: RateLimiter) -> None:
    """Cost 4 of 10 leaves 6, then 2; a third cost-4 request is refused; cost 2 still fits."""
    limit = Limit("10/minute", algorithm="fixed_window")
    results = [
        (decision.allowed, decision.quotas[0].remaining)
        for decision in [await limiter.hit(limit, "a", cost=cost) for cost in (4, 4, 4, 2)]
    ]
    assert [(True, 6), (True, 2), (False, 2), (True, 0)] == results


async def test_a_cost_above_the_quota_is_always_refused(limiter: RateLimiter) -> None:
    """A request costing more than a quota holds can never pass; nothing is charged."""
    limit = Limit("5/minute")
    refused = await limiter.hit(limit, "a", cost=6)
    allowed = await limiter.hit(limit, "a")
    assert (False, True, 4) == (refused.allowed, allowed.allowed, allowed.quotas[0].remaining)


async def test_cost_zero_reports_without_spending(limiter: RateLimiter) -> None:
    """A cost of 0 reads the remaining quota and charges nothing."""
    limit = Limit("5/minute", algorithm="gcra")
    await limiter.hit(limit, "a", cost=2)
    peeks = [(await limiter.hit(limit, "a", cost=0)).quotas[0].remaining for _ in range(3)]
    assert [3, 3, 3] == peeks


async def test_a_negative_cost_is_a_programming_error(limiter: RateLimiter) -> None:
    """Negative costs would refill a quota: they raise instead."""
    with pytest.raises(ValueError, match="negative"):
        await limiter.hit(Limit("5/minute"), "a", cost=-1)


async def test_quota_states_carry_the_policy_limit_and_window(limiter: RateLimiter) -> None:
    """Each quota's state names its policy, quota and window, as the headers will."""
    decision = await limiter.hit(Limit("10/second; 1000/hour", name="api"), "a")
    assert (
        QuotaState("api-1s", 10, 1, 9, 1.0, 0.0),
        QuotaState("api-1h", 1000, 3600, 999, 3600.0, 0.0),
    ) == decision.quotas


async def test_algorithms_never_share_state(limiter: RateLimiter) -> None:
    """The same name and window under two algorithms count separately (the key says which)."""
    fixed = Limit("1/minute", algorithm="fixed_window")
    gcra = Limit("1/minute", algorithm="gcra")
    results = [(await limiter.hit(limit, "a")).allowed for limit in (fixed, gcra, fixed, gcra)]
    assert [True, True, False, False] == results


# ------------------------------------------------------------------------- memory versus Redis


async def test_memory_and_redis_decide_identically_on_a_random_workload(
    redis_store: RedisStore, clock: ManualClock
) -> None:
    """1500 random requests, costs and pauses: both backends return the same numbers."""
    rng = random.Random(20240601)
    limits = [
        Limit("5/second; 40/minute", name="w", algorithm="sliding_window"),
        Limit("7/10s", name="f", algorithm="fixed_window"),
        Limit("3/second burst 9; 50/minute", name="g", algorithm="gcra"),
        # Single quotas take the memory backend's one-pass path: held to the script as well.
        Limit("4/2s", name="w1", algorithm="sliding_window"),
        Limit("2/second burst 4", name="g1", algorithm="gcra"),
    ]
    memory = RateLimiter(clock=clock)
    redis = RateLimiter(redis_store, clock=clock)
    assert isinstance(memory.backend, MemoryBackend)
    mismatches = []
    refusals = 0
    for step in range(1500):
        clock.advance(rng.choice((0, 0, 0, 0, 0, 0.001, 0.05, 0.3, 1.7, 6.0)))
        limit = rng.choice(limits)
        key = rng.choice(("alice", "bob"))
        cost = rng.choice((0, 1, 1, 1, 2, 5))
        on_memory = await memory.hit(limit, key, cost=cost)
        on_redis = await redis.hit(limit, key, cost=cost)
        refusals += not on_memory.allowed
        if summary(on_memory) != summary(on_redis):
            mismatches.append((step, summary(on_memory), summary(on_redis)))
    assert ([], True) == (mismatches[:3], refusals > 100)
