"""Ready-made checks for the core's own dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.health._model import CheckResult, HealthCheck, HealthStatus
from bastion.stores.base import Store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["sqlalchemy_check", "store_check"]


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


def sqlalchemy_check(engine: AsyncEngine) -> HealthCheck:
    """A check that runs ``SELECT 1`` on a SQLAlchemy async engine: UP when it answers.

    The admin view shows the database backend and the connection pool's state. A check that
    cannot get a connection within the check's timeout is DOWN, so an exhausted pool shows up
    here too. Register it for ``ready``.

    Args:
        engine: the application's engine (``create_async_engine(...)``).
    """

    async def check() -> CheckResult:
        from sqlalchemy import text

        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return CheckResult(
            HealthStatus.UP,
            {"database": engine.url.get_backend_name(), "pool": engine.pool.status()},
        )

    return check
