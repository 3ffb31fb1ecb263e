"""store_check: UP against a live store, DOWN against an unreachable Redis."""

from __future__ import annotations

import pytest

from bastion.health import (
    HealthCheck,
    HealthRegistry,
    HealthReport,
    HealthStatus,
    sqlalchemy_check,
    store_check,
)
from bastion.stores import Store
from tests.servers import free_port


async def ready_report(name: str, check: HealthCheck) -> HealthReport:
    """The readiness report of a registry holding only ``check``."""
    registry = HealthRegistry()
    registry.add(name, check)
    return await registry.evaluate("ready")


@pytest.mark.anyio
async def test_store_check_is_up(store: Store) -> None:
    """A store that answers its ping is UP, named in the details."""
    report = await ready_report("store", store_check(store))
    assert HealthStatus.UP == report.status
    assert {"store": store.name} == dict(report.checks[0].details)


@pytest.mark.anyio
async def test_store_check_is_down_when_redis_is_unreachable() -> None:
    """A RedisStore on a closed port is DOWN with the store error's type, not a crash."""
    pytest.importorskip("redis")
    from bastion.stores import RedisStore

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        report = await ready_report("redis", store_check(store))
    finally:
        await store.aclose()
    assert HealthStatus.DOWN == report.status
    assert "StoreUnavailable" == report.checks[0].error


@pytest.mark.anyio
async def test_sqlalchemy_check_is_up_with_pool_details() -> None:
    """An engine that runs SELECT 1 is UP; the details name the backend and the pool."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        report = await ready_report("database", sqlalchemy_check(engine))
    finally:
        await engine.dispose()
    assert HealthStatus.UP == report.status
    assert "sqlite" == report.checks[0].details["database"]
    assert "pool" in report.checks[0].details


@pytest.mark.anyio
async def test_sqlalchemy_check_is_down_when_postgres_is_unreachable() -> None:
    """A PostgreSQL engine on a closed port is DOWN with the driver's error type."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    try:
        report = await ready_report("database", sqlalchemy_check(engine))
    finally:
        await engine.dispose()
    assert HealthStatus.DOWN == report.status
    assert report.checks[0].error is not None
