"""``RateLimiter`` and ``MemoryBackend`` details: validation, bounds, keys and decisions."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.context import SCOPE_KEY, RequestContext
from bastion.exceptions import ConfigurationError
from bastion.ratelimit import Decision, Limit, MemoryBackend, RateLimiter, client_key
from bastion.ratelimit._limiter import key_base
from bastion.types import Scope

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"on_store_error": "retry"}, "unknown on_store_error 'retry'"),
        ({"expected_workers": 0}, "expected_workers must be at least 1"),
        ({"memory_max_keys": 0}, "memory_max_keys must be at least 1"),
    ],
)
def test_invalid_limiter_options_are_configuration_errors(
    options: dict[str, object], fragment: str
) -> None:
    """Unknown policies and non-positive counts fail at construction."""
    with pytest.raises(ConfigurationError) as caught:
        RateLimiter(**options)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


async def test_the_memory_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    """With room for two clients, a third evicts the one seen longest ago."""
    limiter = RateLimiter(clock=ManualClock(864_000.0), memory_max_keys=2)
    limit = Limit("1/minute", algorithm="fixed_window")
    for key in ("a", "b"):
        await limiter.hit(limit, key)
    await limiter.hit(limit, "a")  # refused, but "a" is now the most recently used
    await limiter.hit(limit, "c")  # evicts "b"
    assert isinstance(limiter.backend, MemoryBackend)
    results = [(await limiter.hit(limit, key)).allowed for key in ("a", "b")]
    assert (2, [False, True]) == (len(limiter.backend), results)


def test_client_key_prefers_the_principal_then_the_context_client_then_the_peer() -> None:
    """Principal first, then the context's client (trusted-proxy aware), then the socket peer."""
    context = RequestContext("id", "trace", "GET", "/", client="198.51.100.4")
    with_principal = RequestContext("id", "trace", "GET", "/", client="198.51.100.4")
    with_principal.principal = "key_42"
    scopes: list[Scope] = [
        {SCOPE_KEY: with_principal, "client": ("10.0.0.1", 1)},
        {SCOPE_KEY: context, "client": ("10.0.0.1", 1)},
        {"client": ("10.0.0.1", 1)},
        {"client": None},
    ]
    assert ["p:key_42", "ip:198.51.100.4", "ip:10.0.0.1", "ip:unknown"] == [
        client_key(scope) for scope in scopes
    ]


def test_keys_tag_the_partition_for_redis_cluster() -> None:
    """Every key of one client starts with {partition}: one Cluster slot per decision."""
    assert "{ip:203.0.113.7}:api|GET /items/{id}:" == key_base(
        "ip:203.0.113.7", Limit("1/s", name="api"), "GET /items/{id}"
    )


async def test_a_decision_without_limits_allows() -> None:
    """No checks: allowed, no quotas, nothing to retry."""
    decision = await RateLimiter().decide([])
    assert (True, (), 0.0, ()) == (
        decision.allowed,
        decision.quotas,
        decision.retry_after_s,
        decision.violated,
    )


async def test_a_refused_decision_reports_each_quota() -> None:
    """QuotaState.exceeded marks the quota that refused; the repr shows them all."""
    limiter = RateLimiter(clock=ManualClock(864_000.0))
    limit = Limit("1/second; 10/minute", name="api", algorithm="fixed_window")
    await limiter.hit(limit, "a")
    refused = await limiter.hit(limit, "a")
    assert [True, False] == [quota.exceeded for quota in refused.quotas]
    assert repr(refused).startswith("Decision(allowed=False, degraded=False, quotas=(QuotaState(")


def test_a_fail_closed_decision_names_every_policy() -> None:
    """A decision refused for an outage carries its retry delay and the policies it covered."""
    decision = Decision(
        False, degraded=True, unavailable=True, retry_after_s=3.0, violated=("api",)
    )
    assert (False, True, 3.0, ("api",), "") == (
        decision.allowed,
        decision.unavailable,
        decision.retry_after_s,
        decision.violated,
        decision.policy_header,
    )
