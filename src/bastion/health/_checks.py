"""Ready-made checks for the core's own dependencies."""

from __future__ import annotations

from bastion.health._model import CheckResult, HealthCheck, HealthStatus
from bastion.stores.base import Store

__all__ = ["store_check"]


def store_check(store: Store) -> HealthCheck:
    """A check that pings ``store``: UP when it answers, DOWN when ``ping`` raises.

    A ``RedisStore`` behind an open health gate fails at once instead of waiting for a timeout,
    so the check stays cheap during an outage. Register it for ``ready``, never ``live``.

    Args:
        store: the store to ping.
    """

    async def check() -> CheckResult:
        await store.ping()
        return CheckResult(HealthStatus.UP, {"store": store.name})

    return check
