"""``store_from_url`` picks the backend from configuration; ``redact_url`` keeps secrets out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bastion._clock import ManualClock
from bastion._urls import redact_url
from bastion.events import Hooks
from bastion.exceptions import ConfigurationError
from bastion.stores import MemoryStore, StoreHealthGate, store_from_url

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("url", [None, ""])
async def test_no_url_means_memory(url: str | None) -> None:
    """Without a URL, state stays in this process: a MemoryStore with the memory options."""
    clock = ManualClock()
    store = store_from_url(url, max_entries=7, max_bytes=1_000, clock=clock, socket_timeout_s=9)
    assert isinstance(store, MemoryStore)
    assert (7, 1_000) == (store.stats().max_entries, store.stats().max_bytes)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/1", "unix:///run/redis.sock?db=2"],
)
async def test_redis_schemes_mean_redis(url: str) -> None:
    """redis://, rediss:// and unix:// build a RedisStore that owns its pool (no I/O yet)."""
    from bastion.stores.redis import RedisStore

    store = store_from_url(url, prefix="app", max_entries=7)
    try:
        assert (RedisStore, "redis") == (type(store), store.name)
    finally:
        await store.aclose()


async def test_redis_options_reach_the_store_and_its_gate() -> None:
    """Pool, prefix and gate options are applied to the Redis store."""
    from bastion.stores.redis import RedisStore

    clock, hooks = ManualClock(), Hooks()
    store = store_from_url(
        "redis://127.0.0.1:6379/0",
        prefix="app",
        max_connections=5,
        failure_threshold=1,
        hooks=hooks,
        clock=clock,
    )
    try:
        assert isinstance(store, RedisStore)
        assert 5 == store.client.connection_pool.max_connections
        assert "RedisStore(keys='app:', owns_client=True, gate='closed')" == repr(store)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "url", ["memcached://:hunter2@cache:11211", "postgresql://db/app", "cache:6379"]
)
def test_other_schemes_are_refused_with_the_accepted_ones(url: str) -> None:
    """An unsupported URL is a ConfigurationError that lists the schemes and hides the password."""
    with pytest.raises(ConfigurationError, match=r"redis://, rediss:// and unix://") as caught:
        store_from_url(url)
    assert "hunter2" not in str(caught.value)


def test_gate_options_and_an_explicit_gate_are_exclusive() -> None:
    """Gate options next to a ready-made gate would be ignored, so they are refused."""
    from bastion.stores.redis import RedisStore

    with pytest.raises(ConfigurationError, match="StoreHealthGate"):
        RedisStore.from_url("redis://127.0.0.1:6379/0", gate=StoreHealthGate(), max_delay_s=5)


def test_importing_stores_does_not_import_redis() -> None:
    """redis is an optional extra: bastion.stores loads it only when RedisStore is used."""
    code = (
        "import sys, bastion.stores; "
        "assert 'redis' not in sys.modules, 'redis imported eagerly'; "
        "bastion.stores.RedisStore; "
        "assert 'redis' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (0, "") == (result.returncode, result.stderr)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:****@cache:6379/0"),
        ("redis://user:hunter2@cache/0", "redis://user:****@cache/0"),
        (
            "postgresql://app:hunter2@db/app?sslmode=require",
            "postgresql://app:****@db/app?sslmode=require",
        ),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache/0", "redis://user@cache/0"),
        (
            "unix:///run/redis.sock?db=0&password=hunter2",
            "unix:///run/redis.sock?db=0&password=****",
        ),
        ("rediss://cache/0?ssl_password=hunter2", "rediss://cache/0?ssl_password=****"),
        ("redis://:hun@ter/2?x@cache:6379/0", "redis://:****@cache:6379/0"),
        ("host=db password=hunter2", "****"),
        ("", ""),
    ],
    ids=[
        "password",
        "user-and-password",
        "postgres-with-query",
        "no-credentials",
        "user-only",
        "query-password",
        "ssl-password",
        "password-with-delimiters",
        "not-a-url",
        "empty",
    ],
)
def test_redact_url_masks_passwords_only(url: str, expected: str) -> None:
    """Passwords are masked wherever they hide; host, port, path and user stay readable."""
    assert expected == redact_url(url)
